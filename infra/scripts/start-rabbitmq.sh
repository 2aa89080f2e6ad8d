#!/usr/bin/env bash
# Make sure a RabbitMQ broker answers on 127.0.0.1:5672: install it (Debian) if missing, start
# the node if it is down, start the app if the node runs with the app stopped.
set -euo pipefail
# shellcheck source=port.sh
. "$(dirname "$0")/port.sh"

exit_if_running RabbitMQ 5672

if ! command -v rabbitmq-server >/dev/null 2>&1; then
  echo "RabbitMQ: not installed; installing from Debian packages"
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq rabbitmq-server >/dev/null
fi

if rabbitmqctl -q status >/dev/null 2>&1; then
  echo "RabbitMQ: node is up but the app is stopped; starting it"
  rabbitmqctl -q start_app
else
  echo "RabbitMQ: starting the node"
  rabbitmq-server -detached
fi
timeout 120 rabbitmqctl -q await_startup
await_port RabbitMQ 5672 60 1 "see /var/log/rabbitmq/ for why"
