"""Submit a Stowage job from Python: any AMQP client plus MessagePack (or JSON).

    pip install -r schemas/examples/requirements.txt
    python3 schemas/examples/submit.py shop-prod rp-2026-11-22-0300          # MessagePack
    python3 schemas/examples/submit.py shop-prod rp-2026-11-22-0300 --json   # JSON

The envelope's fields are documented in schemas/json/envelope.schema.json, each job's payload
in schemas/json/job.<stage>.schema.json. Jobs go to the `stowage.jobs` exchange with the stage
as routing key; publish with confirms and `mandatory` so a missing topology is an error.
"""

import datetime
import json
import os
import sys
import uuid

import msgpack
import pika


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    if len(args) != 2:
        sys.exit("usage: submit.py INSTANCE RECOVERY_POINT_ID [--json]")
    instance, rp = args
    use_json = "--json" in sys.argv
    url = os.environ.get("STOWAGE_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
    prefix = os.environ.get("STOWAGE_TOPOLOGY_PREFIX", "stowage")

    envelope = {
        "message_id": str(uuid.uuid4()),
        "schema_version": 1,
        "job_id": f"vault-transfer-{rp}",
        "recovery_point_id": rp,
        "attempt": 0,
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "message": {
            "type": "job.vault-transfer",
            "payload": {"instance": instance, "recovery_point_id": rp},
        },
    }
    body = json.dumps(envelope).encode() if use_json else msgpack.packb(envelope)
    content_type = "application/json" if use_json else "application/msgpack"

    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.confirm_delivery()  # basic_publish now raises if the broker nacks or cannot route
    channel.basic_publish(
        exchange=f"{prefix}.jobs",
        routing_key="vault-transfer",
        body=body,
        properties=pika.BasicProperties(
            content_type=content_type,
            delivery_mode=2,  # persistent
            message_id=envelope["message_id"],
            type=envelope["message"]["type"],
        ),
        mandatory=True,
    )
    connection.close()
    print(envelope["job_id"])


if __name__ == "__main__":
    main()
