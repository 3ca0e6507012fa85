#!/usr/bin/env bash
# Placeholder until scripts/cloudlet lands: boot the kit guest and show it answering.
set -euo pipefail
KIT=${CLOUDLET_GUEST_DIR:-.cache/guest}
port=$(( 20000 + RANDOM % 20000 ))
start=$(date +%s.%N)
info=$(vm-resume launch --kit "$KIT" --name demo --forward tcp:$port:80)
run=$(sed 's/.*"run_dir":"\([^"]*\)".*/\1/' <<<"$info")
trap 'vm-resume stop "$run" 2>/dev/null || true' EXIT
vm-console --wait-ready "$run" 'clwork serve >/dev/null 2>&1 &' >/dev/null
sleep 1
curl -s http://127.0.0.1:$port/ | head -20
echo "guest answered after $(echo "$(date +%s.%N) - $start" | bc) s" >&2
