#!/usr/bin/env bash
# libvirtd.sh install|start|stop|status: run Debian's libvirt daemon (and virtlogd,
# which keeps each domain's QEMU log) on a host without systemd, as the
# tests and `vm-resume --libvirt` need it. On a host where systemd runs
# libvirtd, use that instead (`systemctl start libvirtd`); this script
# then finds it running and does nothing.
#
#   install install the packages if missing (root), create the users and
#           folders the packages' scripts make under systemd
#   start   install, then start virtlogd and libvirtd unless they answer
#           on their sockets (a socket file a killed daemon left is
#           removed, a hung daemon of ours is stopped first); prints
#           "started" when it started libvirtd, "running" when it was
#           already up
#   stop    stop the daemons this script started (their pids are in
#           /run/cloudlet-libvirtd/)
set -euo pipefail
STATE=/run/cloudlet-libvirtd
SOCK=/run/libvirt/libvirt-sock
LOGSOCK=/run/libvirt/virtlogd-sock
PKGS=(libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients socat)

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

# answers SOCKET: a daemon accepts connections on SOCKET (a socket file a
# killed daemon left behind refuses them).
answers() { socat -u OPEN:/dev/null "UNIX-CONNECT:$1" 2>/dev/null; }

# is PID NAME: process PID is a live NAME (not a zombie, not a recycled pid).
is() {
	[ "$(cat "/proc/$1/comm" 2>/dev/null)" = "$2" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null
}

# ours NAME: the pid in $STATE/NAME.pid, if that process is a live NAME.
ours() {
	local pid
	pid=$(cat "$STATE/$1.pid" 2>/dev/null) || return 1
	is "$pid" "$1" || return 1
	echo "$pid"
}

# end NAME: stop the NAME this script started (TERM, then KILL after 5 s)
# and forget its pidfile.
end() {
	local pid i
	if pid=$(ours "$1"); then
		kill "$pid" 2>/dev/null || true
		for i in $(seq 1 50); do is "$pid" "$1" || break; sleep 0.1; done
		if is "$pid" "$1"; then kill -9 "$pid" 2>/dev/null || true; fi
		for i in $(seq 1 50); do is "$pid" "$1" || break; sleep 0.1; done
	fi
	rm -f "$STATE/$1.pid"
}

# launch NAME SOCKET... : start daemon NAME unless it answers on its first
# SOCKET. A NAME of ours that does not answer (hung) is stopped, and
# socket files no daemon answers on are removed first.
launch() {
	local name=$1 s
	shift
	if answers "$1"; then return; fi
	end "$name"
	for s in "$@"; do
		if [ -e "$s" ] && ! answers "$s"; then
			echo "libvirtd.sh: removing $s: no $name answers on it" >&2
			rm -f "$s"
		fi
	done
	"$name" -d -p "$STATE/$name.pid" >>"$STATE/$name.log" 2>&1
	for s in $(seq 1 100); do
		if answers "$1"; then return; fi
		sleep 0.1
	done
	echo "libvirtd.sh: $name did not answer on $1 in 10 s; see $STATE/$name.log" >&2
	exit 1
}

start() {
	if up && answers "$LOGSOCK"; then echo running; return; fi
	install
	launch virtlogd "$LOGSOCK" /run/libvirt/virtlogd-admin-sock
	if up; then echo running; return; fi
	launch libvirtd "$SOCK" /run/libvirt/libvirt-sock-ro /run/libvirt/libvirt-admin-sock
	local i
	for i in $(seq 1 100); do
		if up; then echo started; return; fi
		sleep 0.2
	done
	echo "libvirtd.sh: libvirtd did not answer in 20 s; see $STATE/libvirtd.log" >&2
	exit 1
}

stop() {
	end libvirtd
	end virtlogd
}

case ${1:-} in
install) install ;;
start) start ;;
stop) stop ;;
status) if up; then echo running; else echo stopped; exit 1; fi ;;
*) echo "usage: $0 install|start|stop|status" >&2; exit 2 ;;
esac
