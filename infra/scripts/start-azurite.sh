#!/usr/bin/env bash
# Make sure Azurite (the Azure Storage emulator) serves blobs on 127.0.0.1:10000: install it
# from npm into infra/azurite/node_modules if missing, then start it in memory, in the background.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)/azurite"
log="${AZURITE_LOG:-${TMPDIR:-/tmp}/stowage-azurite.log}"
# shellcheck source=port.sh
. "$(dirname "$0")/port.sh"

exit_if_running Azurite 10000

if ! command -v npm >/dev/null 2>&1; then
  echo "Azurite needs Node.js and npm: apt-get install nodejs npm" >&2
  exit 1
fi

if [ ! -x "$here/node_modules/.bin/azurite-blob" ]; then
  echo "Azurite: installing from npm (pinned in infra/azurite/package-lock.json)"
  (cd "$here" && npm ci --no-audit --no-fund --loglevel=error)
fi

echo "Azurite: starting (log: $log)"
nohup "$here/node_modules/.bin/azurite-blob" --inMemoryPersistence --blobHost 127.0.0.1 --blobPort 10000 \
  --skipApiVersionCheck --loose >"$log" 2>&1 &
await_port Azurite 10000 60 0.5 "see $log"
