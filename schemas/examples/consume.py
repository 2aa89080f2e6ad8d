"""Follow Stowage's events from Python: any AMQP client plus MessagePack (or JSON).

    pip install -r schemas/examples/requirements.txt
    python3 schemas/examples/consume.py                         # every event, until Ctrl-C
    python3 schemas/examples/consume.py --bind 'job.*' --bind rp.vaulted
    python3 schemas/examples/consume.py --until failed:vault-transfer-rp-1 --timeout 60

Events go to the `stowage.events` topic exchange (`<prefix>.events`, prefix from
STOWAGE_TOPOLOGY_PREFIX), keyed by event name: rp.created, rp.vaulted, rp.vault-skipped,
rp.replicated, restore.hydrated, restore.completed (a cluster's restore.hydrated is followed by
`.<cluster>`), job.progress and job.failed. Bind a queue of your own with the keys you want
(`#` for all); this example uses a server-named, exclusive queue that goes away with it.

Each event prints as one JSON line: routing key, message type, message id, job id, recovery
point id and payload. Bodies are MessagePack maps unless `content_type` says
application/json; ids and timestamps are strings in both. Delivery is at least once: the
message id (the AMQP property, repeated in the envelope) tells a duplicate from a new event.

--until TYPE:JOB_ID (repeatable) exits 0 once an event of that type (the part after `event.`,
e.g. `job.failed`, or a suffix of it such as `failed`) has arrived for that job; --timeout
exits 1 naming what never came.
"""

import argparse
import json
import os
import sys
import time

import msgpack
import pika


def decode(properties, body):
    if (properties.content_type or "").split(";")[0].strip().lower() == "application/json":
        return json.loads(body)
    return msgpack.unpackb(body, raw=False)


def main() -> None:
    parser = argparse.ArgumentParser(description="Print Stowage events as JSON lines.")
    parser.add_argument("--bind", action="append", help="routing key pattern (default: #)")
    parser.add_argument("--until", action="append", default=[], metavar="TYPE:JOB_ID")
    parser.add_argument("--timeout", type=float, help="seconds to wait for --until")
    args = parser.parse_args()
    url = os.environ.get("STOWAGE_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
    prefix = os.environ.get("STOWAGE_TOPOLOGY_PREFIX", "stowage")
    exchange = f"{prefix}.events"
    waiting = {tuple(u.split(":", 1)) for u in args.until}
    if any(len(w) != 2 for w in waiting):
        sys.exit("--until takes TYPE:JOB_ID, e.g. job.failed:vault-transfer-rp-1")

    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    # Idempotent: the same declaration the workers make.
    channel.exchange_declare(exchange=exchange, exchange_type="topic", durable=True)
    queue = channel.queue_declare(queue="", exclusive=True, auto_delete=True).method.queue
    for key in args.bind or ["#"]:
        channel.queue_bind(queue=queue, exchange=exchange, routing_key=key)
    print(f"listening on {queue}, bound to {exchange}", file=sys.stderr, flush=True)

    seen_ids = set()
    deadline = time.monotonic() + args.timeout if args.timeout else None
    for method, properties, body in channel.consume(queue, inactivity_timeout=0.5):
        if deadline is not None and time.monotonic() > deadline:
            missing = ", ".join(f"{t}:{j}" for t, j in sorted(waiting))
            sys.exit(f"timed out after {args.timeout}s waiting for {missing}")
        if method is None:
            continue
        envelope = decode(properties, body)
        channel.basic_ack(method.delivery_tag)
        message_id = properties.message_id or envelope.get("message_id")
        if message_id in seen_ids:
            continue  # a redelivery of an event already handled
        seen_ids.add(message_id)
        kind = properties.type or envelope["message"]["type"]
        event = {
            "routing_key": method.routing_key,
            "type": kind,
            "message_id": message_id,
            "job_id": envelope.get("job_id"),
            "recovery_point_id": envelope.get("recovery_point_id"),
            "payload": envelope["message"]["payload"],
        }
        print(json.dumps(event, sort_keys=True), flush=True)
        waiting = {
            (t, j)
            for t, j in waiting
            if not (j == event["job_id"] and kind.endswith(t))
        }
        if args.until and not waiting:
            break
    connection.close()


if __name__ == "__main__":
    main()
