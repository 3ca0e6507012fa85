#!/usr/bin/env bash
# libvirt-bench.sh [RUNS]: synthesis into a libvirt domain against the plain
# path, on the kit base with the bench's `small` workload as the overlay.
# Runs alternate (plain, libvirt, plain, ...); each is one
# `overlay-apply | vm-resume` from a local file, then `vm-resume stop`.
# Prints the medians of vm-resume's own synthesis time (timings.total: its
# start to the guest running) and of the stop. Starts libvirtd with
# scripts/libvirtd.sh when it does not run, and stops it again.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/bench-workloads.sh"
runs=${1:-10}
kit=${CLOUDLET_GUEST_DIR:-$here/../.cache/guest}
work=$(mktemp -d /tmp/libvirt-bench.XXXXXX)
started=$(bash "$here/libvirtd.sh" start)
cleanup() {
	for r in "$work"/run/*; do [ -e "$r" ] && vm-resume stop "$r" >/dev/null 2>&1 || true; done
	[ "$started" != started ] || bash "$here/libvirtd.sh" stop
	rm -rf "$work"
}
trap cleanup EXIT
export CLOUDLET_CATALOG=$work/catalog.json CLOUDLET_RUN_DIR=$work/run CLOUDLET_GUEST_DIR=$kit
mkdir -p "$work/run"
bench_workloads 0
bash "$here/cloudlet" base "$kit/rootfs.img" --name kit --out "$work/base" --cmd sync >/dev/null 2>"$work/log"
bash "$here/cloudlet" overlay "$work/base" --out "$work/app.overlay" --forward tcp:0:80 --cmd "$(app_script small)" >/dev/null 2>>"$work/log"

one() { # MODE: one synthesis and stop; appends "total stop" to $work/MODE
	local t0 j
	j=$(overlay-apply --base "$work/base" <"$work/app.overlay" | vm-resume --base "$work/base" --ports free "${@:2}")
	t0=$(now)
	vm-resume stop "$(jget run_dir <<<"$j")"
	printf '%s %s\n' "$(sed -n 's/.*"total":\([0-9.]*\).*/\1/p' <<<"$j")" "$(since "$t0")" >>"$work/$1"
}
for _ in $(seq 1 "$runs"); do
	one plain
	one libvirt --libvirt
done
median() { sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
printf 'overlay: %s bytes (small workload, kit base), %s runs each\n' "$(fsize "$work/app.overlay")" "$runs"
printf '| path | synthesis s (median) | stop s (median) |\n| --- | ---: | ---: |\n'
for m in plain libvirt; do
	printf '| %s | %.3f | %.3f |\n' "$m" "$(cut -d' ' -f1 "$work/$m" | median)" "$(cut -d' ' -f2 "$work/$m" | median)"
done
