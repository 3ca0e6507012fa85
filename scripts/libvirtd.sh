#!/usr/bin/env bash
# libvirtd.sh install|start|stop|status: run Debian's libvirt daemon (and virtlogd,
# which keeps each domain's QEMU log) on a host without systemd, as the
# tests and `vm-resume --libvirt` need it. On a host where systemd runs
# libvirtd, use that instead (`systemctl start libvirtd`); this script
# then finds it running and does nothing.
#
#   install install the packages if missing (root), create the users and
#           folders the packages' scripts make under systemd
#   start   install, then start virtlogd and libvirtd unless they run;
#           prints "started" when it started libvirtd, "running" when it
#           was already up
#   stop    stop the daemons this script started (their pids are in
#           /run/cloudlet-libvirtd/)
set -euo pipefail
STATE=/run/cloudlet-libvirtd
SOCK=/run/libvirt/libvirt-sock
PKGS=(libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients)

up() { virsh -c qemu:///system version >/dev/null 2>&1; }

install() {
	[ "$(id -u)" = 0 ] || { echo "libvirtd.sh: run as root" >&2; exit 1; }
	local missing=() p
	for p in "${PKGS[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
	if [ "${#missing[@]}" -gt 0 ]; then
		echo "libvirtd.sh: installing ${missing[*]}" >&2
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
	fi
	getent group kvm >/dev/null || groupadd -r kvm
	getent group libvirt-qemu >/dev/null || groupadd -r libvirt-qemu
	id libvirt-qemu >/dev/null 2>&1 || useradd -r -g kvm -d /var/lib/libvirt -s /usr/sbin/nologin libvirt-qemu
	# What udev does on a regular host. Without it libvirt finds KVM usable
	# when it probes QEMU (as root) but not when it checks (as
	# libvirt-qemu), throws its capability cache away on every call, and
	# each domain start takes a minute of re-probing.
	if [ -c /dev/kvm ]; then chgrp kvm /dev/kvm && chmod 0660 /dev/kvm; fi
	mkdir -p /var/log/libvirt/qemu /var/lib/libvirt/qemu /var/cache/libvirt/qemu "$STATE"
}

start() {
	if up; then echo running; return; fi
	install
	if [ ! -S /run/libvirt/virtlogd-sock ]; then
		virtlogd -d -p "$STATE/virtlogd.pid"
	fi
	libvirtd -d -p "$STATE/libvirtd.pid" >>"$STATE/libvirtd.log" 2>&1
	local i
	for i in $(seq 1 100); do
		if up; then echo started; return; fi
		sleep 0.2
	done
	echo "libvirtd.sh: libvirtd did not answer in 20 s; see $STATE/libvirtd.log" >&2
	exit 1
}

stop() {
	local f pid i
	for f in libvirtd virtlogd; do
		pid=$(cat "$STATE/$f.pid" 2>/dev/null) || continue
		kill "$pid" 2>/dev/null || true
		for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
		kill -9 "$pid" 2>/dev/null || true
		rm -f "$STATE/$f.pid"
	done
}

case ${1:-} in
install) install ;;
start) start ;;
stop) stop ;;
status) if up; then echo running; else echo stopped; exit 1; fi ;;
*) echo "usage: $0 install|start|stop|status" >&2; exit 2 ;;
esac
