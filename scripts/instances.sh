#!/usr/bin/env bash
# instances.sh BASE OVERLAY GUESTPORT N... - many instances of one overlay on
# one cloudlet: for each N, N syntheses start at the same moment
# (overlay-apply | vm-resume --ports free, each with its own run folder and
# free host port); each is timed until its app answers on GUESTPORT through
# its forwarded port; then the host memory they take (the sum of the QEMUs'
# PSS) is read, and all are stopped.
#
# Output, TSV on stdout (progress on stderr):
#   changed  CHANGED_MIB                     memory the overlay changes
#   inst     N  I  SECONDS                   synthesis time of instance I of N
#   pss      N  PSS_MIB_TOTAL                sum of the N QEMUs' PSS
#   memtotal MEMTOTAL_MIB                    this host's RAM
# `make bench` (scripts/bench.sh) runs it on the medium workload.
set -euo pipefail
[ "$#" -ge 4 ] || { echo "usage: $0 BASE OVERLAY GUESTPORT N..." >&2; exit 2; }
base=$1 ovl=$2 gport=$3
shift 3
now() { printf '%s' "${EPOCHREALTIME/,/.}"; }
log() { echo "instances: $*" >&2; }
W=$(mktemp -d "${TMPDIR:-/tmp}/cloudlet-instances.XXXXXX")
runs=()
cleanup() {
	local r
	for r in "${runs[@]}"; do vm-resume stop "$r" >/dev/null 2>&1 || true; done
	rm -rf "$W"
}
trap cleanup EXIT

mem=$(overlay-apply --base "$base" <"$ovl" | stream-inspect | jq '.records.MEM.bytes // 0')
printf 'changed\t%s\n' "$(awk -v b="$mem" 'BEGIN { printf "%.1f", b / 1048576 }')"
printf 'memtotal\t%s\n' "$(awk '/^MemTotal:/ { printf "%d", $2 / 1024 }' /proc/meminfo)"

# one I N: synthesize instance I, wait for its app, write its time.
one() {
	local i=$1 t0 port k
	t0=$(now)
	overlay-apply --base "$base" <"$ovl" | vm-resume --base "$base" --ports free --name "inst$i" >"$W/$i.json"
	port=$(jq -r --argjson g "$gport" '[.forwards[] | select(.guest_port == $g) | .host_port][0] // empty' "$W/$i.json")
	[ -n "$port" ] || { log "instance $i: no forward to guest port $gport"; return 1; }
	for k in $(seq 600); do
		if curl -sf -o /dev/null --max-time 2 "http://127.0.0.1:$port/"; then
			awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.3f\n", b - a }' >"$W/$i.t"
			return 0
		fi
		sleep 0.1
	done
	log "instance $i: the app never answered on port $port"
	return 1
}

for n in "$@"; do
	log "$n at once"
	rm -f "$W"/*.json "$W"/*.t
	pids=()
	for i in $(seq "$n"); do
		one "$i" &
		pids+=($!)
	done
	fail=0
	for p in "${pids[@]}"; do wait "$p" || fail=1; done
	runs=()
	for i in $(seq "$n"); do
		[ -s "$W/$i.json" ] && runs+=("$(jq -r .run_dir "$W/$i.json")")
	done
	[ "$fail" = 0 ] || { log "$n at once: a synthesis failed"; exit 1; }
	pss=0
	for i in $(seq "$n"); do
		printf 'inst\t%s\t%s\t%s\n' "$n" "$i" "$(cat "$W/$i.t")"
		pid=$(jq -r .pid "$W/$i.json")
		kib=$(awk '/^Pss:/ { print $2 }' "/proc/$pid/smaps_rollup")
		pss=$((pss + kib))
	done
	printf 'pss\t%s\t%s\n' "$n" "$(awk -v k="$pss" 'BEGIN { printf "%.1f", k / 1024 }')"
	for r in "${runs[@]}"; do vm-resume stop "$r" >/dev/null 2>&1 || true; done
	runs=()
done
