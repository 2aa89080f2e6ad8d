#!/usr/bin/env bash
# Every test Stowage has: formatting, lints, unit tests, and the integration tests against a
# real RabbitMQ and Azurite, which this script installs and starts when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."

infra/scripts/start-rabbitmq.sh
infra/scripts/start-azurite.sh
# The sandbox cluster is checked with a standard client, kubectl.
if ! command -v kubectl >/dev/null 2>&1; then
  echo "kubectl: installing from Debian packages (kubernetes-client)"
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq kubernetes-client >/dev/null
fi
# The cross-language example (schemas/examples/submit.py) is tested too.
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore -r schemas/examples/requirements.txt

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --all-targets --locked
cargo test --workspace --doc --locked
