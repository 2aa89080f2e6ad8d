#!/usr/bin/env bash
# Every test Stowage has: formatting, lints, unit tests, and the integration tests against a
# real RabbitMQ and Azurite, which this script installs and starts when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."

infra/scripts/start-rabbitmq.sh
# Every test declares its topology under a unique `stowage-test-` prefix; one that fails or
# ends early leaves its queues behind, and hundreds of them exhaust the broker's file handles.
# A policy lets RabbitMQ delete such a queue once nothing has used it for 10 minutes (no test
# runs that long; production names never start with `stowage-test-`).
if ! rabbitmqctl -q set_policy --apply-to queues stowage-test-queues-expire '^stowage-test-' '{"expires": 600000}' >/dev/null; then
  echo "RabbitMQ: cannot set the policy that expires leftover test queues (rabbitmqctl needs the broker's Erlang cookie: run as root or as rabbitmq); tests still run, but their leftover queues stay" >&2
fi
infra/scripts/start-azurite.sh
# The sandbox cluster is checked with a standard client, kubectl.
if ! command -v kubectl >/dev/null 2>&1; then
  echo "kubectl: installing from Debian packages (kubernetes-client)"
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq kubernetes-client >/dev/null
fi
# The cross-language examples (schemas/examples: submit.py, consume.py, consume.mjs) are tested
# too: their Python packages, and the Node.js consumer's as locked in package-lock.json.
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore -r schemas/examples/requirements.txt
# `stowage serve`'s OpenAPI document is checked against the running server with schemathesis
# (workers/cli/tests/it/serve.rs).
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore -r schemas/requirements-api.txt
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "node and npm are needed: the Node.js event consumer (schemas/examples/consume.mjs) is tested; install Node.js 18 or later (e.g. apt-get install nodejs npm)" >&2
  exit 1
fi
npm ci --prefix schemas/examples --no-audit --no-fund --loglevel=error
# The Backup center is tested in a real browser: Debian's Chromium, driven by Playwright
# (playwright-core as locked in workers/cli/tests/ui/package-lock.json; it downloads no browser).
if ! command -v chromium >/dev/null 2>&1; then
  echo "chromium: installing from Debian packages"
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
npm ci --prefix workers/cli/tests/ui --no-audit --no-fund --loglevel=error

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --all-targets --locked
cargo test --workspace --doc --locked
