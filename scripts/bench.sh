#!/usr/bin/env bash
# bench.sh: the benchmark of issue 10 (`make bench`), in one command.
#
#   PATH=$PWD/bin:$PATH bash scripts/bench.sh            # full: 1 GiB guest, 3 runs (about 40 min)
#   PATH=$PWD/bin:$PATH bash scripts/bench.sh -short     # smoke: 256 MiB guest, 1 run, tiny workloads
#   (or BENCH_SHORT=1; BENCH_RUNS=N overrides the runs; BENCH_OUT=DIR where results go, default bench/)
#
# Workloads (run in the guest through vm-console, deterministic content from clwork):
#   small   ~4 MiB of files + ~8 MiB in tmpfs + a page served by busybox httpd (like FLUID)
#   medium  50 MiB of files written, tar+gzip'ed and unpacked again, 100 MiB kept in tmpfs (like OBJECT);
#           clwork's default content: half text, half random bytes (the worst case for compressors)
#   medium-app  the same with program-like content (clwork --content app: ~3x compressible,
#           like installed binaries)
# Systems:
#   cloudlet-zstd, cloudlet-xz   vm-capture | mem-diff | disk-diff | overlay-pack --codec zstd|xz;
#                                synthesis = overlay-apply | vm-resume, until the app answers
#   elijah2009-xdelta3-xz        xdelta3 -9 -B 1GiB of the whole memory image and the whole disk image
#                                against the base's (images materialized with cloudlet-base create from
#                                the customized VM's full stream), tar, xz -9; synthesis = xz -d + tar x
#                                + xdelta3 -d of both images (timed), then the resume from those images,
#                                timed as vm-resume of the customized VM's full stream (the same state)
#                                until the app answers
#   xz9-segments                 size only, a reference: C `xz -9` of the cloudlet diff stream cut into
#                                4 MiB pieces, each compressed alone (what overlay-pack's segments are)
#   qemu-migrate-xz, -zstd       a plain QEMU started by hand (anonymous -m RAM, qcow2 top layer over the
#                                kit image), the workload, QMP migrate to exec:cat > FILE, then
#                                tar(migration file + qcow2 top layer) | xz -9 / zstd -3; synthesis =
#                                decompress + qemu -incoming defer -S + migrate-incoming + cont, until
#                                the app answers
# Links: local (overlay read from local disk), 38mbit and 1gbit (the overlay goes through
# bench/ratelimit, a token bucket, into the first synthesis stage; decompression is pipelined
# with the transfer wherever the system's tools allow it).
# Also: many instances of the medium workload's overlay at once (N = 1, 4, 8, 16: synthesis time
# of each, host memory per instance; scripts/instances.sh), resume scaling (same small change
# resumed against a 256 MiB and a 2 GiB base), per-stage
# MB/s and peak RSS (/usr/bin/time) of each tool on the medium workload, and the semantic gap
# (overlay bytes of a write-delete / fill-free workload with TRIM and init_on_free on and off).
# Output: a table on stdout, bench/results.json, bench/synthesis.svg (progress on stderr).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
SHORT=${BENCH_SHORT:-0}
for a in "$@"; do
	case $a in
	-short | --short) SHORT=1 ;;
	-h | --help)
		sed -n '2,30p' "$0"
		exit 0
		;;
	*)
		echo "bench: unknown argument $a" >&2
		exit 2
		;;
	esac
done
[ "$SHORT" = 1 ] || SHORT=0
KIT=${CLOUDLET_GUEST_DIR:-$ROOT/.cache/guest}
KIT=$(cd "$KIT" 2>/dev/null && pwd) || {
	echo "bench: no guest kit in ${CLOUDLET_GUEST_DIR:-.cache/guest} (make kit)" >&2
	exit 1
}
export CLOUDLET_GUEST_DIR=$KIT
OUT=${BENCH_OUT:-$ROOT/bench}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

if [ "$SHORT" = 1 ]; then
	MEM=256 RUNS=${BENCH_RUNS:-1} SCALE_SMALL=256 SCALE_LARGE=512 GAP=4 INSTANCES="1 2"
else
	MEM=1024 RUNS=${BENCH_RUNS:-3} SCALE_SMALL=256 SCALE_LARGE=2048 GAP=64 INSTANCES="1 4 8 16"
fi
# shellcheck source=bench-workloads.sh
. "$HERE/bench-workloads.sh"
bench_workloads "$SHORT" # WL_small, WL_medium, WL_medium_app; app_script, jget
WORKLOADS=(small medium medium-app)
LINKS=(local 38mbit 1gbit)
XDELTA_WINDOW=1073741824 # -B: source window covering the whole memory image (<= 1 GiB is xdelta3's max)

for t in vm-resume vm-capture vm-console cloudlet-base mem-diff disk-diff overlay-pack overlay-apply; do
	command -v "$t" >/dev/null || {
		echo "bench: $t not on PATH (make build; PATH=\$PWD/bin:\$PATH)" >&2
		exit 1
	}
done
for t in qemu-system-x86_64 qemu-img xdelta3 xz zstd curl tar; do
	command -v "$t" >/dev/null || {
		echo "bench: $t missing (apt-get install qemu-system-x86 qemu-utils xdelta3 xz-utils zstd curl)" >&2
		exit 1
	}
done
[ -x /usr/bin/time ] || {
	echo "bench: /usr/bin/time missing (apt-get install time)" >&2
	exit 1
}
GO=${GO:-go}
command -v "$GO" >/dev/null || GO=/usr/local/go/bin/go

W=$(mktemp -d "${BENCH_TMP:-/tmp}/cloudlet-bench.XXXXXX")
export CLOUDLET_CATALOG=$W/catalog.json CLOUDLET_RUN_DIR=$W/run
mkdir -p "$CLOUDLET_RUN_DIR" "$W/qemu" "$W/hbin"
RAW=$W/raw.tsv
: >"$RAW"

cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	local r p
	for r in "$CLOUDLET_RUN_DIR"/*/; do
		[ -d "$r" ] || continue
		vm-resume stop "${r%/}" >/dev/null 2>&1 || true
	done
	# plain QEMUs of the qemu-migrate system, by their pid files
	for p in "$W"/qemu/*/qemu.pid; do
		[ -f "$p" ] || continue
		r=$(cat "$p" 2>/dev/null || true)
		[ -n "$r" ] && kill "$r" 2>/dev/null || true
	done
	sleep 0.2
	for p in "$W"/qemu/*/qemu.pid; do
		[ -f "$p" ] || continue
		r=$(cat "$p" 2>/dev/null || true)
		[ -n "$r" ] && kill -9 "$r" 2>/dev/null || true
	done
	rm -rf -- "$W"
	[ "$rc" = 0 ] || echo "bench: failed (exit $rc); cleaned up" >&2
	exit "$rc"
}
trap cleanup EXIT
trap 'echo "bench: interrupted" >&2; exit 130' INT
trap 'exit 143' TERM

T0=${EPOCHREALTIME/,/.}
log() { printf '[bench %6ss] %s\n' "$(awk -v a="$T0" -v b="$(now)" 'BEGIN { printf "%.0f", b - a }')" "$*" >&2; }

# wait_http PORT WANT: until http://127.0.0.1:PORT/ answers WANT (the app answers).
wait_http() {
	local i body
	for i in $(seq 6000); do
		body=$(curl -fsS --max-time 2 "http://127.0.0.1:$1/" 2>/dev/null || true)
		[ "$body" = "$2" ] && return 0
		sleep 0.02
	done
	echo "bench: app on port $1 did not answer '$2'" >&2
	return 1
}

# feed FILE LINK: the overlay as it arrives over LINK.
feed() {
	if [ "$2" = local ]; then
		cat "$1"
	else
		"$W/hbin/ratelimit" -rate "$2" <"$1"
	fi
}

# timed OUTFILE CMD...: run CMD under /usr/bin/time, OUTFILE gets "peakKiB seconds".
timed() {
	local o=$1
	shift
	/usr/bin/time -f '%M %e' -o "$o" "$@"
}
# stage NAME BYTES TIMEFILE: record MB/s (BYTES / elapsed) and peak RSS.
stage() {
	local kib secs
	read -r kib secs <"$3"
	rec stage "$1" "$(awk -v b="$2" -v s="$secs" 'BEGIN { if (s < 0.01) s = 0.01; printf "%.1f", b / 1e6 / s }')" \
		"$(awk -v k="$kib" 'BEGIN { printf "%.1f", k / 1024 }')"
}

log "helpers: building bench/ratelimit, bench/qmpc, bench/report"
(cd "$ROOT" && "$GO" build -o "$W/hbin/" ./bench/ratelimit ./bench/qmpc ./bench/report)
RATELIMIT=$W/hbin/ratelimit QMPC=$W/hbin/qmpc

# make_base MIB DIR [APPEND]: boot the kit (with kernel command line APPEND, default the
# kit's), capture it as a base.
make_base() {
	local mib=$1 dir=$2 j run
	local app=()
	[ -z "${3:-}" ] || app=(--append "$3")
	j=$W/launch-$mib.json
	vm-resume launch --kit "$KIT" --mem "$mib" --name "base$mib" "${app[@]}" >"$j"
	run=$(jget run_dir <"$j")
	vm-console --wait-ready "$run" 'sync' >/dev/null
	vm-capture --run "$run" --quit | cloudlet-base create --image "$KIT/rootfs.img" --kit "$KIT" --name "bench$mib" "$dir" >/dev/null 2>"$W/create.log" || {
		cat "$W/create.log" >&2
		return 1
	}
	vm-resume stop "$run" >/dev/null 2>&1 || true
}

# customize BASE WORKLOAD FULL [STAGES]: resume the base, run the workload, capture a full stream.
customize() {
	local base=$1 wl=$2 full=$3 st=${4:-} j run port
	free_port port
	j=$W/cust-$wl.json
	cloudlet-base stream "$base" | vm-resume --base "$base" --kit "$KIT" --name "cust-$wl" --forward "tcp:$port:80" >"$j"
	run=$(jget run_dir <"$j")
	vm-console --timeout 20m "$run" "$(app_script "$wl")" >/dev/null
	wait_http "$port" "$wl"
	timed "$W/t.capture" vm-capture --run "$run" --quit >"$full"
	vm-resume stop "$run" >/dev/null 2>&1 || true
	[ -z "$st" ] || stage vm-capture "$(fsize "$full")" "$W/t.capture"
}

# xz9_segments FILE: the bytes of C `xz -9` of FILE cut into 4 MiB pieces,
# each compressed alone (as overlay-pack's segments are), on all cores.
xz9_segments() {
	local d=$W/xzseg
	rm -rf "$d" && mkdir -p "$d"
	split -b 4M -a 5 "$1" "$d/p"
	printf '%s\0' "$d"/p* | xargs -0 -P "$(nproc)" -I{} sh -c 'xz -9 -c <"$1" | wc -c >"$1.n"' _ {}
	cat "$d"/*.n | awk '{ s += $1 } END { print s }'
	rm -rf "$d"
}

# ---------------------------------------------------------------------------
B=$W/base
log "base: ${MEM} MiB guest from $KIT/rootfs.img"
make_base "$MEM" "$B"

for wl in "${WORKLOADS[@]}"; do
	D=$W/$wl
	mkdir -p "$D"
	STG=""
	[ "$wl" = medium ] && STG=1
	# ---- cloudlet ----------------------------------------------------------
	log "$wl: customize (resume base, run the workload, capture)"
	customize "$B" "$wl" "$D/full" "$STG"
	log "$wl: cloudlet overlay (mem-diff, disk-diff, overlay-pack zstd and xz)"
	timed "$W/t.md" mem-diff --base "$B" <"$D/full" >"$D/md"
	timed "$W/t.dd" disk-diff --base "$B" <"$D/md" >"$D/dd"
	timed "$W/t.pz" overlay-pack --codec zstd <"$D/dd" >"$D/cloudlet-zstd.ov"
	timed "$W/t.px" overlay-pack --codec xz <"$D/dd" >"$D/cloudlet-xz.ov"
	timed "$W/t.ap" overlay-apply --base "$B" <"$D/cloudlet-zstd.ov" >"$D/resolved"
	free_port p
	timed "$W/t.vr" vm-resume --base "$B" --kit "$KIT" --name "stage-$wl" --forward "tcp:$p:80" <"$D/resolved" >"$D/stage.json"
	wait_http "$p" "$wl"
	vm-resume stop "$(jget run_dir <"$D/stage.json")" >/dev/null 2>&1 || true
	if [ -n "$STG" ]; then
		stage mem-diff "$(fsize "$D/full")" "$W/t.md"
		stage disk-diff "$(fsize "$D/md")" "$W/t.dd"
		stage overlay-pack-zstd "$(fsize "$D/dd")" "$W/t.pz"
		stage overlay-pack-xz "$(fsize "$D/dd")" "$W/t.px"
		stage overlay-apply "$(fsize "$D/resolved")" "$W/t.ap"
		stage vm-resume "$(fsize "$D/resolved")" "$W/t.vr"
	fi
	rec note "$wl" cloudlet "full stream MB" "$(awk -v b="$(fsize "$D/full")" 'BEGIN{printf "%.1f", b/1e6}')"
	rec note "$wl" cloudlet "diff stream MB" "$(awk -v b="$(fsize "$D/dd")" 'BEGIN{printf "%.1f", b/1e6}')"
	rm -f "$D/md" "$D/resolved"
	for s in cloudlet-zstd cloudlet-xz; do rec size "$wl" "$s" "$(fsize "$D/$s.ov")"; done
	log "$wl: xz9-segments (C xz -9 of the diff stream in 4 MiB pieces, size only)"
	rec size "$wl" xz9-segments "$(xz9_segments "$D/dd")"

	# ---- elijah2009-xdelta3-xz ---------------------------------------------
	log "$wl: elijah2009 overlay (whole images, xdelta3 -9 -B $XDELTA_WINDOW, xz -9)"
	C=$D/custimg
	cloudlet-base create --image "$B/disk.img" --kit "$KIT" "$C" <"$D/full" >/dev/null 2>"$W/create.log" || {
		cat "$W/create.log" >&2
		exit 1
	}
	mkdir -p "$D/el"
	t=$(now)
	xdelta3 -9 -B "$XDELTA_WINDOW" -e -f -s "$B/mem.ram" "$C/mem.ram" "$D/el/mem.xd3" &
	xp=$!
	xdelta3 -9 -B "$XDELTA_WINDOW" -e -f -s "$B/disk.img" "$C/disk.img" "$D/el/disk.xd3"
	wait "$xp"
	cp "$C/devstate.bin" "$D/el/devstate.bin"
	tar -C "$D/el" -cf - mem.xd3 disk.xd3 devstate.bin | xz -9 -T2 >"$D/elijah2009-xdelta3-xz.ov"
	rec note "$wl" elijah2009-xdelta3-xz "encode s (xdelta3+xz)" "$(since "$t")"
	rec note "$wl" elijah2009-xdelta3-xz "xdelta3 mem+disk MB" "$(awk -v a="$(fsize "$D/el/mem.xd3")" -v b="$(fsize "$D/el/disk.xd3")" 'BEGIN{printf "%.1f", (a+b)/1e6}')"
	rec size "$wl" elijah2009-xdelta3-xz "$(fsize "$D/elijah2009-xdelta3-xz.ov")"
	rm -rf "$D/el"

	# ---- qemu-migrate -------------------------------------------------------
	log "$wl: qemu-migrate (plain QEMU boot, workload, migrate to a file)"
	Q=$W/qemu/src-$wl
	mkdir -p "$Q"
	free_port qport
	qemu-img create -q -f qcow2 -F raw -b "$KIT/rootfs.img" "$Q/top.qcow2"
	qemu_plain() { # DIR PORT [extra args]: the user's QEMU command line
		local d=$1 port=$2
		shift 2
		qemu-system-x86_64 -name plain -nodefaults -no-user-config -accel tcg -cpu qemu64 -smp 1 \
			-m "${MEM}M" -machine pc-i440fx-7.2 -vga none -display none \
			-chardev "socket,id=qmp0,path=$d/qmp.sock,server=on,wait=off" -mon chardev=qmp0,mode=control \
			-chardev "socket,id=ser0,path=$d/serial.sock,server=on,wait=off,logfile=$d/serial.log" -serial chardev:ser0 \
			-kernel "$KIT/vmlinuz" -initrd "$KIT/initrd.img" -append "console=ttyS0 root=/dev/vda rw quiet init_on_free=1" \
			-blockdev "driver=qcow2,node-name=disk0,discard=unmap,file.driver=file,file.filename=$d/top.qcow2" \
			-device virtio-blk-pci,id=vblk0,drive=disk0 \
			-netdev "user,id=net0,hostfwd=tcp:127.0.0.1:$port-:80" -device virtio-net-pci,id=vnet0,netdev=net0,mac=52:54:00:c1:0d:01,romfile= \
			-daemonize -pidfile "$d/qemu.pid" "$@"
	}
	qemu_plain "$Q" "$qport"
	# vm-console only takes a run folder with an instance.json (it cannot be given a
	# serial socket); describe the plain QEMU's sockets in one.
	printf '{"name":"plain","run_dir":"%s","qmp":"%s/qmp.sock","serial":"%s/serial.sock","serial_log":"%s/serial.log"}\n' \
		"$Q" "$Q" "$Q" "$Q" >"$Q/instance.json"
	vm-console --wait-ready "$Q" 'sync' >/dev/null
	vm-console --timeout 20m "$Q" "$(app_script "$wl")" >/dev/null
	wait_http "$qport" "$wl"
	"$QMPC" "$Q/qmp.sock" "{\"execute\":\"migrate\",\"arguments\":{\"uri\":\"exec:cat > $Q/mig.bin\"}}" >/dev/null
	"$QMPC" --wait-migration "$Q/qmp.sock" >/dev/null
	"$QMPC" "$Q/qmp.sock" '{"execute":"quit"}' >/dev/null 2>&1 || true
	for _ in $(seq 100); do kill -0 "$(cat "$Q/qemu.pid" 2>/dev/null)" 2>/dev/null || break; sleep 0.1; done
	rec note "$wl" qemu-migrate "migration file MB" "$(awk -v b="$(fsize "$Q/mig.bin")" 'BEGIN{printf "%.1f", b/1e6}')"
	rec note "$wl" qemu-migrate "qcow2 top layer MB" "$(awk -v b="$(fsize "$Q/top.qcow2")" 'BEGIN{printf "%.1f", b/1e6}')"
	tar -C "$Q" -cSf - mig.bin top.qcow2 | xz -9 -T2 >"$D/qemu-migrate-xz.ov"
	tar -C "$Q" -cSf - mig.bin top.qcow2 | zstd -3 -q -T2 >"$D/qemu-migrate-zstd.ov"
	rm -rf "$Q"
	for s in qemu-migrate-xz qemu-migrate-zstd; do rec size "$wl" "$s" "$(fsize "$D/$s.ov")"; done

	# ---- synthesis ----------------------------------------------------------
	for link in "${LINKS[@]}"; do
		for run in $(seq "$RUNS"); do
			for s in cloudlet-zstd cloudlet-xz; do
				free_port p
				t=$(now)
				feed "$D/$s.ov" "$link" | overlay-apply --base "$B" | vm-resume --base "$B" --kit "$KIT" --name "syn" --forward "tcp:$p:80" >"$D/syn.json"
				wait_http "$p" "$wl"
				sec=$(since "$t")
				rec syn "$wl" "$s" "$link" "$sec"
				rec note "$wl" "$s" "vm-resume timings $link #$run" "$(sed -n 's/.*"timings":\({[^}]*}\).*/\1/p' "$D/syn.json")"
				vm-resume stop "$(jget run_dir <"$D/syn.json")" >/dev/null 2>&1 || true
				log "$wl $s $link run $run: ${sec}s"
			done

			s=elijah2009-xdelta3-xz
			S=$D/elsyn
			rm -rf "$S" && mkdir -p "$S"
			free_port p
			t=$(now)
			feed "$D/$s.ov" "$link" | xz -dc -T0 | tar -C "$S" -xf -
			t1=$(now)
			xdelta3 -d -f -s "$B/mem.ram" "$S/mem.xd3" "$S/mem.ram" &
			xp=$!
			xdelta3 -d -f -s "$B/disk.img" "$S/disk.xd3" "$S/disk.img"
			wait "$xp"
			t2=$(now)
			vm-resume --image "$B/disk.img" --kit "$KIT" --name "syn" --forward "tcp:$p:80" <"$D/full" >"$D/syn.json"
			wait_http "$p" "$wl"
			sec=$(since "$t")
			rec syn "$wl" "$s" "$link" "$sec"
			rec note "$wl" "$s" "$link #$run: transfer+unxz, xdelta3 -d, resume s" "$(awk -v a="$t" -v b="$t1" -v c="$t2" -v d="$sec" 'BEGIN{printf "%.2f %.2f %.2f", b-a, c-b, d-(c-a)}')"
			vm-resume stop "$(jget run_dir <"$D/syn.json")" >/dev/null 2>&1 || true
			if [ "$link" = local ] && [ "$run" = 1 ]; then # the decoded images are the customized VM's
				cmp -s "$S/mem.ram" "$C/mem.ram" && cmp -s "$S/disk.img" "$C/disk.img" || {
					echo "bench: xdelta3 round trip differs from the customized images" >&2
					exit 1
				}
			fi
			rm -rf "$S"
			log "$wl $s $link run $run: ${sec}s"

			for s in qemu-migrate-xz qemu-migrate-zstd; do
				S=$W/qemu/syn
				rm -rf "$S" && mkdir -p "$S"
				free_port p
				if [ "$s" = qemu-migrate-xz ]; then dec=(xz -dc -T0); else dec=(zstd -dc -q); fi
				t=$(now)
				feed "$D/$s.ov" "$link" | "${dec[@]}" | tar -C "$S" -xSf -
				t1=$(now)
				qemu_plain "$S" "$p" -S -incoming defer
				"$QMPC" "$S/qmp.sock" "{\"execute\":\"migrate-incoming\",\"arguments\":{\"uri\":\"exec:cat $S/mig.bin\"}}" >/dev/null
				"$QMPC" --wait-migration "$S/qmp.sock" >/dev/null
				"$QMPC" "$S/qmp.sock" '{"execute":"cont"}' >/dev/null
				wait_http "$p" "$wl"
				sec=$(since "$t")
				rec syn "$wl" "$s" "$link" "$sec"
				rec note "$wl" "$s" "$link #$run: transfer+decompress, incoming+cont+app s" "$(awk -v a="$t" -v b="$t1" -v d="$sec" 'BEGIN{printf "%.2f %.2f", b-a, d-(b-a)}')"
				"$QMPC" "$S/qmp.sock" '{"execute":"quit"}' >/dev/null 2>&1 || true
				for _ in $(seq 100); do kill -0 "$(cat "$S/qemu.pid" 2>/dev/null)" 2>/dev/null || break; sleep 0.1; done
				kill "$(cat "$S/qemu.pid" 2>/dev/null)" 2>/dev/null || true
				rm -rf "$S"
				log "$wl $s $link run $run: ${sec}s"
			done
		done
	done
	rm -rf "$C" "$D/full" "$D/dd"
done

# ---------------------------------------------------------------------------
# Resume scaling: the same (small) change, resumed against a small and a large base.
scale_one() { # LABEL MIB
	local label=$1 mib=$2 sb=$W/scale-$2 p j
	if [ "$mib" = "$MEM" ]; then
		sb=$B
	else
		log "scaling: ${mib} MiB base"
		make_base "$mib" "$sb"
	fi
	customize "$sb" small "$W/scale.full"
	mem-diff --base "$sb" <"$W/scale.full" | disk-diff --base "$sb" | overlay-pack --codec zstd >"$W/scale.ov"
	rec note scaling "$label" "overlay MB (${mib} MiB base)" "$(awk -v b="$(fsize "$W/scale.ov")" 'BEGIN{printf "%.2f", b/1e6}')"
	for run in $(seq "$RUNS"); do
		free_port p
		j=$W/scale.json
		t=$(now)
		overlay-apply --base "$sb" <"$W/scale.ov" | vm-resume --base "$sb" --kit "$KIT" --name scale --forward "tcp:$p:80" >"$j"
		sec=$(since "$t")
		wait_http "$p" small
		rec scale "$label" "$mib" "$sec"
		rec note scaling "$label" "vm-resume timings #$run" "$(sed -n 's/.*"timings":\({[^}]*}\).*/\1/p' "$j")"
		vm-resume stop "$(jget run_dir <"$j")" >/dev/null 2>&1 || true
		log "scaling ${mib} MiB run $run: ${sec}s (overlay-apply | vm-resume)"
	done
	[ "$sb" = "$B" ] || rm -rf "$sb"
	rm -f "$W/scale.full" "$W/scale.ov"
}
scale_one small "$SCALE_SMALL"
scale_one large "$SCALE_LARGE"

# ---------------------------------------------------------------------------
# Many instances of one overlay (issue 14): the medium workload's overlay, N at once.
log "instances: the medium workload's overlay, ${INSTANCES// /, } at once"
customize "$B" medium "$W/inst.full"
mem-diff --base "$B" <"$W/inst.full" | disk-diff --base "$B" | overlay-pack --codec zstd >"$W/inst.ov"
# shellcheck disable=SC2086 # INSTANCES is a list of numbers
bash "$HERE/instances.sh" "$B" "$W/inst.ov" 80 $INSTANCES >"$W/inst.tsv"
while IFS=$'\t' read -r -a f; do rec "inst_${f[0]}" "${f[@]:1}"; done <"$W/inst.tsv"
rm -f "$W/inst.full" "$W/inst.ov"

# ---------------------------------------------------------------------------
# Semantic gap (issue 8): one workload writes then deletes GAP MiB of files and fills then
# frees GAP MiB of tmpfs memory, under the four settings of the two switches:
#   TRIM      the kit mounts its root with discard (the disk is attached with discard=unmap)
#             and the workload runs fstrim; off: `mount -o remount,nodiscard /`, no fstrim
#   freemem   the guest kernel zeroes freed pages (init_on_free=1, the kit's default);
#             off: a base booted without it
# Overlay bytes (zstd) of each; the report gives what each setting saves against both off.
gap_one() { # VARIANT BASE TRIM(on|off)
	local v=$1 gb=$2 trim=$3 pre="" post=""
	if [ "$trim" = on ]; then post=" && fstrim /"; else pre="mount -o remount,nodiscard / && "; fi
	printf -v "WL_gap_${v//-/_}" '%sdd if=/dev/urandom of=/root/big bs=1M count=%s 2>/dev/null && sync && rm /root/big && sync%s && dd if=/dev/urandom of=/run/mem/blob bs=1M count=%s 2>/dev/null && rm /run/mem/blob' \
		"$pre" "$GAP" "$post" "$GAP"
	customize "$gb" "gap_${v//-/_}" "$W/gap.full"
	mem-diff --base "$gb" <"$W/gap.full" | disk-diff --base "$gb" | overlay-pack --codec zstd >"$W/gap.ov"
	rec gap "$GAP" "$v" "$(fsize "$W/gap.ov")"
	log "semantic gap $v: overlay $(fsize "$W/gap.ov") bytes"
	rm -f "$W/gap.full" "$W/gap.ov"
}
log "semantic gap: ${GAP} MiB deleted and ${GAP} MiB freed, switches on and off"
gap_one both-on "$B" on
gap_one trim-off "$B" off
# the kit's kernel command line, as the base recorded it, without init_on_free=1
gap_append=$(sed -n 's/.*"append": *"\([^"]*\)".*/\1/p' "$B/base.json" | sed 's/ *init_on_free=1//')
[ -n "$gap_append" ] || {
	echo "bench: no kernel command line in $B/base.json" >&2
	exit 1
}
make_base "$MEM" "$W/gapbase" "$gap_append"
gap_one freemem-off "$W/gapbase" on
gap_one both-off "$W/gapbase" off
rm -rf "$W/gapbase"

log "report"
cp "$RAW" "$OUT/raw.tsv"
"$W/hbin/report" -raw "$RAW" -json "$OUT/results.json" -svg "$OUT/synthesis.svg" -mem "$MEM" -runs "$RUNS"
echo
echo "written: $OUT/results.json $OUT/synthesis.svg $OUT/raw.tsv (short=$SHORT, $(since "$T0")s)"
