#!/usr/bin/env bash
# The reduction table of issue 5: how much of a reference workload's changed
# memory and disk each step removes (zero/unchanged, dedup, delta), and the
# packed overlay per delta mode and codec. Needs the tools on PATH and the
# guest kit (CLOUDLET_GUEST_DIR). Usage: scripts/reduction.sh [MEM_MIB]
set -euo pipefail
KIT=${CLOUDLET_GUEST_DIR:-.cache/guest}
MEM=${1:-256}
work=$(mktemp -d /tmp/cl-red-XXXX)
runs=()
cleanup() { for r in "${runs[@]}"; do vm-resume stop "$r" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
run_of() { sed 's/.*"run_dir":"\([^"]*\)".*/\1/'; }

r=$(vm-resume launch --kit "$KIT" --mem "$MEM" --name red --run-dir "$work/l" | run_of); runs+=("$r")
vm-console --timeout 2m --wait-ready "$r" sync >/dev/null
vm-capture --run "$r" --quit | cloudlet-base create --image "$KIT/rootfs.img" --kit "$KIT" "$work/base" >/dev/null
r=$(cloudlet-base stream "$work/base" | vm-resume --base "$work/base" --kit "$KIT" --run-dir "$work/o" | run_of); runs+=("$r")
vm-console "$r" true >/dev/null
# reference workload: write and unpack files, run a server, fill memory
vm-console --script "$r" >/dev/null <<'GUEST'
set -e
clwork writefiles --mib 24 --dir /root/app --seed 7 >/dev/null
cd /root && tar czf app.tgz app && mkdir -p /opt && cd /opt && tar xzf /root/app.tgz
clwork fillmem --mib 24 --seed 8 >/dev/null
cp /root/app/* /run/mem/ 2>/dev/null || true
clwork serve >/dev/null 2>&1 &
clwork counter --file /run/counter &
sync
GUEST
vm-capture --run "$r" --quit > "$work/full.stream"
full=$(stat -c %s "$work/full.stream")

printf '%-7s %-5s %12s %12s %12s %12s %12s %12s %12s\n' delta space in unchanged zero copy delta raw+delta zstd/xz
for mode in none xor ops best; do
	mem-diff --base "$work/base" --delta $mode --stats < "$work/full.stream" 2>"$work/m.json" |
		disk-diff --base "$work/base" --delta $mode --stats 2>"$work/d.json" > "$work/diff.$mode"
	z=$(overlay-pack --codec zstd --level 19 < "$work/diff.$mode" | wc -c)
	x=$(overlay-pack --codec xz < "$work/diff.$mode" | wc -c)
	for sp in memory disk; do
		f="$work/m.json"; [ $sp = disk ] && f="$work/d.json"
		python3 - "$f" "$sp" "$mode" "$z" "$x" <<'PY'
import json, sys
f, sp, mode, z, x = sys.argv[1:]
s = json.load(open(f))[sp]
mb = lambda n: "%.1f MB" % (n / 1e6)
copy = s["copy_mem"] + s["copy_disk"] + s["copy_self"]
sizes = "%s/%s" % (mb(int(z)), mb(int(x))) if sp == "disk" else ""
print("%-7s %-6s %11s %12s %12s %12s %12s %12s %14s" % (mode, sp, mb(s["in"]), mb(s["unchanged"]), mb(s["zero"]), mb(copy), mb(s["delta"]), mb(s["raw"] + s["delta_out"]), sizes))
PY
	done
done
echo "full capture: $(python3 -c "print('%.1f MB' % ($full/1e6))")  (zstd -19 and xz of the raw full stream for reference: $(zstd -19 -T0 -c "$work/full.stream" | wc -c) / $(xz -6 -T0 -c "$work/full.stream" | wc -c) bytes)"
# The default (xor) diff stream packed by overlay-pack, beside the command-line
# codecs at their strongest settings on the very same bytes.
d=$work/diff.xor
# pieces FILE CMD...: the bytes of CMD (stdin to stdout) on FILE cut into 4 MiB
# pieces, each compressed alone, as overlay-pack's segments are.
pieces() {
	local f=$1 n=0 p
	shift
	rm -rf "$work/pc" && mkdir "$work/pc" && split -b 4M -a 5 "$f" "$work/pc/p"
	for p in "$work"/pc/p*; do n=$((n + $("$@" <"$p" | wc -c))); done
	echo "$n"
}
printf 'diff stream (xor): %s bytes; overlay-pack zstd-3 %s, zstd-19 %s, xz %s (%s); whole stream: xz -9 %s, zstd -19 %s; 4 MiB pieces: xz -9 %s, zstd -19 %s\n' \
	"$(stat -c %s "$d")" "$(overlay-pack --codec zstd <"$d" | wc -c)" "$(overlay-pack --codec zstd --level 19 <"$d" | wc -c)" \
	"$(overlay-pack --codec xz <"$d" | wc -c)" "$(overlay-pack --codecs | sed -n 's/^xz.*: //p')" \
	"$(xz -9 -T0 -c "$d" | wc -c)" "$(zstd -19 -T0 -q -c "$d" | wc -c)" "$(pieces "$d" xz -9 -c)" "$(pieces "$d" zstd -19 -q -c)"
