#!/usr/bin/env bash
# codec-choice.sh: the measurement behind overlay-pack's --codec auto (issue
# 15). It makes one workload's diff stream, packs it as zstd 3, zstd 19 and
# xz 9, and synthesizes each through links of each RATE, RUNS times, timing
# the whole path from the first overlay byte to the guest's app answering.
# It also asks --codec auto for its choice at each rate, and prints a table
# (markdown) of the medians with auto's choice.
#
#   PATH=$PWD/bin:$PATH bash scripts/codec-choice.sh [WORKLOAD] [RATE...]
#
# WORKLOAD is small, medium or medium-app (default), the same guest commands
# as scripts/bench.sh (scripts/bench-workloads.sh), in a guest of MEM MiB
# (default 1024); RATEs default to 10mbit 38mbit 100mbit 1gbit. It needs the
# guest kit and the tools on PATH.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
WL=${1:-medium-app}
shift || true
RATES=("$@")
[ "${#RATES[@]}" -gt 0 ] || RATES=(10mbit 38mbit 100mbit 1gbit)
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
SETTINGS=("zstd 3" "zstd 19" "xz 9")
for st in "${SETTINGS[@]}"; do
	set -- $st
	overlay-pack --codec "$1" --level "$2" <"$W/diff" >"$W/$1-$2.ov"
done

# mbit RATE: the rate in Mbit/s, for --bandwidth.
mbit() { case $1 in *gbit) echo $((${1%gbit} * 1000)) ;; *mbit) echo "${1%mbit}" ;; esac; }

printf '| link | %s | --codec auto chose |\n|---|' "$(printf '%s (MB) | ' "${SETTINGS[@]}" | sed 's/ | $//')"
for _ in "${SETTINGS[@]}"; do printf -- '---:|'; done
printf -- '---|\n'
for rate in "${RATES[@]}"; do
	row="| $rate |"
	for st in "${SETTINGS[@]}"; do
		set -- $st
		ov=$W/$1-$2.ov
		times=()
		for _ in $(seq "$RUNS"); do
			t=$(now)
			"$W/ratelimit" -rate "$rate" <"$ov" | overlay-apply --base "$W/base" |
				vm-resume --base "$W/base" --kit "$KIT" --name syn --forward tcp:18481:80 >"$W/s.json"
			until [ "$(curl -fsS --max-time 2 http://127.0.0.1:18481/ 2>/dev/null)" = "$WL" ]; do sleep 0.02; done
			times+=("$(awk -v a="$t" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }')")
			vm-resume stop "$(jget run_dir <"$W/s.json")" >/dev/null 2>&1 || true
		done
		med=$(printf '%s\n' "${times[@]}" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }')
		log "$rate $st: ${times[*]} s"
		row+=" $med s ($(awk -v b="$(stat -c %s "$ov")" 'BEGIN { printf "%.1f", b / 1e6 }')) |"
	done
	# auto decides on the first segment: 16 MB of the stream are enough
	# (overlay-pack then fails on the cut stream, after printing its choice)
	choice=$(head -c 16000000 "$W/diff" | overlay-pack --codec auto --bandwidth "$(mbit "$rate")" 2>&1 >/dev/null |
		sed -n 's/.*--codec auto chose \([a-z]* *[0-9]*\) for.*/\1/p' || true)
	echo "$row $choice |"
done
