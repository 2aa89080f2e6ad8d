// Follow Stowage's events from Node.js: amqplib plus MessagePack (or JSON).
//
//     npm ci --prefix schemas/examples      # amqplib and @msgpack/msgpack, as locked
//     node schemas/examples/consume.mjs                                  # every event
//     node schemas/examples/consume.mjs --bind 'job.*' --bind rp.vaulted
//     node schemas/examples/consume.mjs --until failed:vault-transfer-rp-1 --timeout 60
//
// The same contract as consume.py: events go to the `stowage.events` topic exchange
// (`<prefix>.events`, prefix from STOWAGE_TOPOLOGY_PREFIX) keyed by event name (rp.created,
// rp.vaulted, rp.vault-skipped, rp.replicated, restore.hydrated, restore.completed,
// job.progress, job.failed). Bodies are MessagePack maps unless `contentType` says
// application/json. Delivery is at least once: the message id tells a duplicate from a new
// event. Each event prints as one JSON line; --until TYPE:JOB_ID exits 0 once every such event
// arrived, --timeout exits 1 naming what never came.

import amqp from "amqplib";
import { decode as unpack } from "@msgpack/msgpack";

function parseArgs(argv) {
  const args = { bind: [], until: [], timeout: null };
  for (let i = 0; i < argv.length; i += 1) {
    const value = argv[i + 1];
    switch (argv[i]) {
      case "--bind": args.bind.push(value); i += 1; break;
      case "--until": args.until.push(value); i += 1; break;
      case "--timeout": args.timeout = Number(value); i += 1; break;
      default:
        console.error(`unknown argument ${argv[i]}; usage: consume.mjs [--bind KEY]... [--until TYPE:JOB_ID]... [--timeout SECONDS]`);
        process.exit(2);
    }
  }
  return args;
}

function decode(msg) {
  const contentType = (msg.properties.contentType || "").split(";")[0].trim().toLowerCase();
  if (contentType === "application/json") return JSON.parse(msg.content.toString("utf8"));
  return unpack(msg.content);
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const url = process.env.STOWAGE_AMQP_URL || "amqp://guest:guest@127.0.0.1:5672/%2f";
  const prefix = process.env.STOWAGE_TOPOLOGY_PREFIX || "stowage";
  const exchange = `${prefix}.events`;
  const waiting = new Set(args.until);
  for (const w of waiting) {
    if (!w.includes(":")) {
      console.error("--until takes TYPE:JOB_ID, e.g. job.failed:vault-transfer-rp-1");
      process.exit(2);
    }
  }

  const connection = await amqp.connect(url);
  const channel = await connection.createChannel();
  // Idempotent: the same declaration the workers make.
  await channel.assertExchange(exchange, "topic", { durable: true });
  const { queue } = await channel.assertQueue("", { exclusive: true, autoDelete: true });
  for (const key of args.bind.length ? args.bind : ["#"]) {
    await channel.bindQueue(queue, exchange, key);
  }
  console.error(`listening on ${queue}, bound to ${exchange}`);

  let timer = null;
  const finish = async (code, message) => {
    if (timer) clearTimeout(timer);
    if (message) console.error(message);
    await connection.close();
    process.exit(code);
  };
  if (args.timeout) {
    timer = setTimeout(
      () => finish(1, `timed out after ${args.timeout}s waiting for ${[...waiting].sort().join(", ")}`),
      args.timeout * 1000,
    );
  }

  const seenIds = new Set();
  await channel.consume(queue, (msg) => {
    if (msg === null) return;
    const envelope = decode(msg);
    channel.ack(msg);
    const messageId = msg.properties.messageId || envelope.message_id;
    if (seenIds.has(messageId)) return; // a redelivery of an event already handled
    seenIds.add(messageId);
    const type = msg.properties.type || envelope.message.type;
    const event = {
      job_id: envelope.job_id ?? null,
      message_id: messageId,
      payload: envelope.message.payload,
      recovery_point_id: envelope.recovery_point_id ?? null,
      routing_key: msg.fields.routingKey,
      type,
    };
    process.stdout.write(`${JSON.stringify(event)}\n`);
    for (const w of [...waiting]) {
      const at = w.indexOf(":");
      if (w.slice(at + 1) === event.job_id && type.endsWith(w.slice(0, at))) waiting.delete(w);
    }
    if (args.until.length && waiting.size === 0) finish(0);
  });
}

main().catch((err) => {
  console.error(`consume.mjs: ${err.message}`);
  process.exit(1);
});
