#!/usr/bin/env bash
# early-start.sh: the early-start benchmark of issue 16 (part of `make bench`).
#
#   PATH=$PWD/bin:$PATH bash scripts/early-start.sh            # 1 GiB guest, medium-app and kv (~15 min)
#   PATH=$PWD/bin:$PATH bash scripts/early-start.sh -short     # smoke: 256 MiB guest, tiny workloads
#   (BENCH_OUT=DIR: where results.json is, default bench/; EARLY_RAW=FILE: append the raw rows
#   there instead of updating results.json, as scripts/bench.sh does)
#
# For each workload (medium-app: the app page of `make bench`; kv: a page and a key lookup
# through a CGI that reads a 5 MB table in the guest), it captures the customized VM, makes
# the diff stream, records an access log (an early start at full speed from the overlay in
# offset order, then one through the 38 Mbit/s link from the overlay in access order, the
# logs merged; --warm asks the app), and packs the overlay (xz) in offset and in access
# order. Then, through bench/ratelimit at 38 and 100 Mbit/s, it times from the first overlay
# byte to the app's first correct answer:
#   overlay-apply | vm-resume --early-start   (first_response_s; arrived_s when vm-resume exits)
#   overlay-apply | vm-resume                 (plain_synthesis_s, the same overlay)
# and the host memory (PSS) of one instance each way, after the app answered.
# Rows: results.json "early_start" {workload, link_mbit, order, overlay_bytes, transfer_s,
# first_response_s, plain_synthesis_s, arrived_s} and "early_start_memory".
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
SHORT=${BENCH_SHORT:-0}
for a in "$@"; do
	case $a in
	-short | --short) SHORT=1 ;;
	-h | --help)
		sed -n '2,20p' "$0"
		exit 0
		;;
	*)
		echo "early-start: unknown argument $a" >&2
		exit 2
		;;
	esac
done
KIT=${CLOUDLET_GUEST_DIR:-$ROOT/.cache/guest}
KIT=$(cd "$KIT" 2>/dev/null && pwd) || {
	echo "early-start: no guest kit in ${CLOUDLET_GUEST_DIR:-.cache/guest} (make kit)" >&2
	exit 1
}
export CLOUDLET_GUEST_DIR=$KIT
OUT=$(cd "${BENCH_OUT:-$ROOT/bench}" && pwd)
MEM=1024
[ "$SHORT" = 1 ] && MEM=256
# shellcheck source=bench-workloads.sh
. "$HERE/bench-workloads.sh"
bench_workloads "$SHORT"
WORKLOADS=(medium-app kv)
LINKS=(38 100)
for t in vm-resume vm-capture vm-console cloudlet-base mem-diff disk-diff overlay-pack overlay-apply curl; do
	command -v "$t" >/dev/null || {
		echo "early-start: $t not on PATH (make build; PATH=\$PWD/bin:\$PATH)" >&2
		exit 1
	}
done
GO=${GO:-go}
command -v "$GO" >/dev/null || GO=/usr/local/go/bin/go

W=$(mktemp -d "${BENCH_TMP:-/tmp}/cloudlet-early.XXXXXX")
export CLOUDLET_CATALOG=$W/catalog.json CLOUDLET_RUN_DIR=$W/run
mkdir -p "$CLOUDLET_RUN_DIR"
RAW=${EARLY_RAW:-$W/raw.tsv}
cleanup() {
	local rc=$? r
	trap - EXIT INT TERM
	for r in "$CLOUDLET_RUN_DIR"/*/; do
		[ -d "$r" ] && vm-resume stop "${r%/}" >/dev/null 2>&1 || true
	done
	rm -rf -- "$W"
	[ "$rc" = 0 ] || echo "early-start: failed (exit $rc); cleaned up" >&2
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

T0=$(now)
log() { printf '[early %5.0fs] %s\n' "$(since "$T0")" "$*" >&2; }
# answered WL PORT: the app gives its correct answer now (one try; a request may wait
# for pages still in flight, up to 60 s).
answered() {
	[ "$(curl -fsS --max-time 60 "http://127.0.0.1:$2/" 2>/dev/null || true)" = "$1" ] || return 1
	[ "$1" != kv ] || [ "$(kv_answer "$2")" = "$KV_WANT" ]
}
# wait_answer WL PORT: until answered (10 minutes at most).
wait_answer() {
	local i
	for i in $(seq 12000); do
		answered "$1" "$2" && return 0
		sleep 0.05
	done
	echo "early-start: the $1 app on port $2 never answered" >&2
	return 1
}
pss() { # PID...: summed PSS in MiB
	local p s=0
	for p in "$@"; do
		s=$((s + $(awk '/^Pss:/ { print $2 }' "/proc/$p/smaps_rollup")))
	done
	awk -v k="$s" 'BEGIN { printf "%.1f", k / 1024 }'
}

log "helpers: bench/ratelimit, bench/report"
(cd "$ROOT" && "$GO" build -o "$W/" ./bench/ratelimit ./bench/report)

log "base: ${MEM} MiB guest"
B=$W/base
j=$W/launch.json
vm-resume launch --kit "$KIT" --mem "$MEM" --name ebase >"$j"
run=$(jget run_dir <"$j")
vm-console --wait-ready "$run" sync >/dev/null
vm-capture --run "$run" --quit | cloudlet-base create --image "$KIT/rootfs.img" --kit "$KIT" --name early "$B" >/dev/null 2>"$W/create.log" || {
	cat "$W/create.log" >&2
	exit 1
}
vm-resume stop "$run" >/dev/null 2>&1 || true

# synth WL OV MBIT EARLY(0|1): one synthesis through the link; sets FIRST (first correct
# answer), ARRIVED (vm-resume exited) and PSSM (MiB, after both).
synth() {
	local wl=$1 ov=$2 mbit=$3 early=$4 port t j pids
	free_port port
	local args=(--base "$B" --kit "$KIT" --name "s-$wl" --forward "tcp:$port:80")
	[ "$early" = 1 ] && args+=(--early-start)
	j=$W/synth.json
	: >"$j"
	t=$(now)
	("$W/ratelimit" -rate "${mbit}mbit" <"$ov" | overlay-apply --base "$B" 2>"$W/apply.err" | vm-resume "${args[@]}" >"$j" 2>"$W/synth.err") &
	local bg=$!
	# Ask once the guest runs (the JSON line): a connection made before
	# would wait for user-mode networking's SYN retries (1, 2, 4 s ...).
	until [ -s "$j" ]; do
		kill -0 "$bg" 2>/dev/null || break
		sleep 0.01
	done
	wait_answer "$wl" "$port"
	FIRST=$(since "$t")
	wait "$bg" || {
		cat "$W/apply.err" "$W/synth.err" >&2
		return 1
	}
	ARRIVED=$(since "$t")
	pids=$(sed -n 's/.*"pid":\([0-9]*\).*/\1/p' "$j")
	pids="$pids $(sed -n 's/.*"server_pid":\([0-9]*\).*/\1/p' "$j")"
	answered "$wl" "$port" # the answer holds after the rest arrived
	# shellcheck disable=SC2086
	PSSM=$(pss $pids)
	vm-resume stop "$(jget run_dir <"$j")" >/dev/null 2>&1 || true
}

for wl in "${WORKLOADS[@]}"; do
	D=$W/$wl
	mkdir -p "$D"
	log "$wl: customize (resume the base, run the workload, capture, diff)"
	free_port port
	j=$D/cust.json
	cloudlet-base stream "$B" | vm-resume --base "$B" --kit "$KIT" --name "c-$wl" --forward "tcp:$port:80" >"$j"
	run=$(jget run_dir <"$j")
	vm-console --timeout 20m "$run" "$(app_script "$wl")" >/dev/null
	wait_answer "$wl" "$port"
	vm-capture --run "$run" --quit | mem-diff --base "$B" | disk-diff --base "$B" >"$D/diff"
	vm-resume stop "$run" >/dev/null 2>&1 || true

	log "$wl: record the access order (full speed, then through 38 Mbit/s), pack xz in both orders"
	record() { # OVERLAY RATE(mbit or "")
		local p j2
		free_port p
		j2=$D/rec.json
		if [ -n "$2" ]; then "$W/ratelimit" -rate "$2mbit" <"$1"; else cat "$1"; fi |
			overlay-apply --base "$B" 2>>"$D/rec.err" | vm-resume --early-start --base "$B" --kit "$KIT" --name "r-$wl" \
			--forward "tcp:$p:80" --access-log "$D/access" \
			--warm "$(declare -f answered kv_answer); KV_WANT='$KV_WANT'; i=0; until answered $wl $p; do i=\$((i + 1)); [ \$i -lt 100 ] || exit 1; sleep 0.1; done; sleep 3" \
			>"$j2" 2>"$D/rec.err" || {
			cat "$D/rec.err" >&2
			return 1
		}
		vm-resume stop "$(jget run_dir <"$j2")" >/dev/null 2>&1 || true
	}
	overlay-pack --codec zstd --level 1 <"$D/diff" >"$D/rec.ov"
	record "$D/rec.ov" ""
	overlay-pack --codec zstd --order access --access-log "$D/access" <"$D/diff" >"$D/rec.ov"
	record "$D/rec.ov" 38
	overlay-pack --codec xz <"$D/diff" >"$D/offset.ov"
	overlay-pack --codec xz --order access --access-log "$D/access" <"$D/diff" >"$D/access.ov"
	rm -f "$D/rec.ov"

	for mbit in "${LINKS[@]}"; do
		for order in offset access; do
			ov=$D/$order.ov
			log "$wl: $mbit Mbit/s, $order order ($(fsize "$ov") bytes): early start, then plain"
			synth "$wl" "$ov" "$mbit" 1
			first=$FIRST arrived=$ARRIVED early_pss=$PSSM
			synth "$wl" "$ov" "$mbit" 0
			rec early "$wl" "$mbit" "$order" "$(fsize "$ov")" \
				"$(awk -v b="$(fsize "$ov")" -v m="$mbit" 'BEGIN { printf "%.3f", b * 8 / (m * 1e6) }')" \
				"$first" "$FIRST" "$arrived"
			if [ "$wl" = medium-app ] && [ "$mbit" = 100 ] && [ "$order" = access ]; then
				rec early_pss "$wl" "$PSSM" "$early_pss"
			fi
		done
	done
	rm -rf "$D"
done

if [ -z "${EARLY_RAW:-}" ]; then
	"$W/report" -early-only -raw "$RAW" -json "$OUT/results.json"
fi
log "done"
