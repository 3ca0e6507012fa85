#!/usr/bin/env bash
# codec-choice.sh: the measurement behind overlay-pack's default codec (issue 6).
# It synthesizes one workload's overlay, packed with zstd and with xz, through a
# link of RATE (default 100mbit), RUNS times each. Each run times the whole
# path, from the first overlay byte to the guest's app answering, and prints
# the medians.
#
#   PATH=$PWD/bin:$PATH bash scripts/codec-choice.sh [RATE] [WORKLOAD]
#
# WORKLOAD is small, medium or medium-app (default), the same guest commands
# as scripts/bench.sh (scripts/bench-workloads.sh), in a guest of MEM MiB
# (default 1024). It needs the guest kit and the tools on PATH.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
RATE=${1:-100mbit}
WL=${2:-medium-app}
MEM=${MEM:-1024}
RUNS=${RUNS:-3}
KIT=$(cd "${CLOUDLET_GUEST_DIR:-$ROOT/.cache/guest}" && pwd)
# shellcheck source=bench-workloads.sh
. "$HERE/bench-workloads.sh"
bench_workloads 0
case $WL in
small | medium | medium-app) ;;
*)
	echo "codec-choice: unknown workload $WL (small, medium or medium-app)" >&2
	exit 2
	;;
esac
W=$(mktemp -d /tmp/cloudlet-codec.XXXXXX)
export CLOUDLET_CATALOG=$W/catalog.json CLOUDLET_RUN_DIR=$W/run
cleanup() {
	for r in "$CLOUDLET_RUN_DIR"/*/; do [ -d "$r" ] && vm-resume stop "${r%/}" >/dev/null 2>&1; done
	rm -rf "$W"
}
trap cleanup EXIT
now() { printf '%s' "${EPOCHREALTIME/,/.}"; }
log() { echo "codec-choice: $*" >&2; }
(cd "$ROOT" && "${GO:-go}" build -o "$W/" ./bench/ratelimit)

log "base: $MEM MiB guest"
vm-resume launch --kit "$KIT" --mem "$MEM" --name base >"$W/l.json"
run=$(jget run_dir <"$W/l.json")
vm-console --wait-ready "$run" sync >/dev/null
vm-capture --run "$run" --quit | cloudlet-base create --image "$KIT/rootfs.img" --kit "$KIT" "$W/base" >/dev/null
vm-resume stop "$run" >/dev/null 2>&1 || true

log "workload $WL"
cloudlet-base stream "$W/base" | vm-resume --base "$W/base" --kit "$KIT" --name cust --forward tcp:18480:80 >"$W/c.json"
run=$(jget run_dir <"$W/c.json")
vm-console --timeout 20m "$run" "$(app_script "$WL")" >/dev/null
vm-capture --run "$run" --quit | mem-diff --base "$W/base" | disk-diff --base "$W/base" >"$W/diff"
vm-resume stop "$run" >/dev/null 2>&1 || true
for c in zstd xz; do overlay-pack --codec "$c" <"$W/diff" >"$W/$c.ov"; done

for c in zstd xz; do
	times=()
	for i in $(seq "$RUNS"); do
		t=$(now)
		"$W/ratelimit" -rate "$RATE" <"$W/$c.ov" | overlay-apply --base "$W/base" |
			vm-resume --base "$W/base" --kit "$KIT" --name syn --forward tcp:18481:80 >"$W/s.json"
		until [ "$(curl -fsS --max-time 2 http://127.0.0.1:18481/ 2>/dev/null)" = "$WL" ]; do sleep 0.02; done
		times+=("$(awk -v a="$t" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }')")
		vm-resume stop "$(jget run_dir <"$W/s.json")" >/dev/null 2>&1 || true
	done
	med=$(printf '%s\n' "${times[@]}" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }')
	printf '%-5s overlay %6.1f MB  synthesis at %s: median %s s (runs: %s)\n' "$c" \
		"$(awk -v b="$(stat -c %s "$W/$c.ov")" 'BEGIN { print b / 1e6 }')" "$RATE" "$med" "${times[*]}"
done
