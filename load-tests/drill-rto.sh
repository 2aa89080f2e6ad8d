#!/usr/bin/env bash
# RTO per tier, measured by restore drills (README "Restore drills"): the sandbox's sample app
# (`demo`: its shop-data volume, 64 MiB with 32 MiB written) or the same app with shop-data grown
# to 1 GiB (`1g`: 512 MiB random, 512 MiB repetitive), backed up through snapshot, vault transfer
# and geo replication by real workers on RabbitMQ, then one drill per tier (operational, vault,
# secondary) restoring into drill-shop, verifying every object and byte, cleaning up.
#
#   load-tests/drill-rto.sh demo|1g        (STOWAGE=path/to/stowage, default: stowage on PATH)
#
# Prints one line per tier: RTO, the restore's and the verification's share, bytes moved (as the
# restore's stages report them) and bytes verified. Needs kubectl, python3 and RabbitMQ at
# STOWAGE_AMQP_URL (default amqp://guest:guest@127.0.0.1:5672/%2f).
set -euo pipefail
case="${1:-demo}"
stowage="${STOWAGE:-stowage}"
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d /tmp/drill-rto.XXXXXX)
cd "$work"
trap 'kill $(jobs -p) 2>/dev/null; wait; rm -rf "$work"' EXIT
export STOWAGE_TOPOLOGY_PREFIX="drill-rto-$$"
export STOWAGE_VAULT=$PWD/vault STOWAGE_SECONDARY=$PWD/secondary STOWAGE_DISK_ROOT=$PWD/disks
export STOWAGE_LOG=warn
"$stowage" sandbox --disk-root disks --kubeconfig-dir kube > sandbox.log 2>&1 &
export KUBECONFIG=$PWD/kube/admin.kubeconfig
until kubectl get namespaces >/dev/null 2>&1; do sleep 0.5; done
kubectl create namespace stowage >/dev/null
kubectl apply -n stowage -f "$repo/infra/k8s/base/rbac.yaml" >/dev/null
mkdir -p secondary
if [ "$case" = 1g ]; then
    # Before the first backup, which reads the whole disk: grown to 1 GiB and filled.
    img=disks/disks/shop-data.img
    truncate -s 1G "$img"
    head -c 512M /dev/urandom | dd of="$img" bs=4M conv=notrunc iflag=fullblock status=none
    { yes 'stowage drill benchmark row' || true; } | head -c 512M |
        dd of="$img" bs=4M seek=128 conv=notrunc iflag=fullblock status=none
fi
openssl rand -hex 32 > vault.key && export STOWAGE_VAULT_KEY_FILE=$PWD/vault.key
"$stowage" vault init --name bench --region local --redundancy geo \
    --secondary "$STOWAGE_SECONDARY" --secondary-region paired >/dev/null
"$stowage" policy create daily --frequency-hours 24 --start 02:00 --operational-days 7 \
    --vault-rule day=30 >/dev/null
"$stowage" instance create shop --cluster sandbox --policy daily --snapshot-location local \
    --namespaces shop >/dev/null
"$stowage" worker --stage snapshot,restore,vault-transfer,geo-replication,restore-hydration \
    --cluster-name sandbox --kubeconfig kube/admin.kubeconfig --health-addr 127.0.0.1:0 \
    > worker.log 2>&1 &
job=$("$stowage" backup now shop 2>/dev/null)
"$stowage" jobs watch "$job" > /dev/null
until "$stowage" jobs show "$job" -o json | python3 -c '
import json, sys
job = json.load(sys.stdin)
runs = {s["stage"]: s["status"] for s in job["stages"]}
sys.exit(0 if runs.get("geo-replication") == "succeeded" else 1)'; do sleep 0.5; done
for tier in operational vault secondary; do
    sync
    "$stowage" drill run --instance shop --tier "$tier" --kubeconfig kube/admin.kubeconfig \
        -o json > "drill-$tier.json" 2> "drill-$tier.log" || true
    python3 - "$case" "$tier" "drill-$tier.json" <<'EOF'
import json, sys
case, tier, path = sys.argv[1:]
d = json.load(open(path))
mib = lambda b: b / 2**20
print(f"{case:5} {tier:12} {d['status']:9} rto {d['rto_seconds']:6.2f} s  restore "
      f"{d['restore_seconds']:6.2f} s  verify {d['rto_seconds'] - d['restore_seconds']:6.2f} s  "
      f"moved {mib(d['bytes_moved']):7.1f} MiB  verified {mib(d['bytes_verified']):7.1f} MiB  "
      f"objects {d['objects_verified']}")
EOF
done
