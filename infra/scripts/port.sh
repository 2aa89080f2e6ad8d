#!/usr/bin/env bash
# Shared by the start-*.sh scripts (sourced, not run): wait for a service on a local TCP port.

# True when something accepts connections on 127.0.0.1:$1.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# If $1 already answers on port $2, say so and end the calling script.
exit_if_running() {
  if port_open "$2"; then
    echo "$1: already running on 127.0.0.1:$2"
    exit 0
  fi
}

# Poll port $2 every $4 s, $3 times, then end the calling script: ready, or failed with hint $5.
await_port() {
  local name="$1" port="$2" tries="$3" every="$4" hint="$5"
  for _ in $(seq 1 "$tries"); do
    if port_open "$port"; then echo "$name: ready on 127.0.0.1:$port"; exit 0; fi
    sleep "$every"
  done
  echo "$name did not open 127.0.0.1:$port within $(awk "BEGIN { print $tries * $every }") s; $hint" >&2
  exit 1
}
