#!/bin/sh
# cloudlet guest /sbin/init (PID 1): mount the pseudo file systems, bring up
# eth0 with DHCP (QEMU user-mode net, 10.0.2.x), print the ready marker and
# keep a root shell on ttyS0 forever.
export PATH=/usr/local/bin:/bin:/sbin:/usr/bin:/usr/sbin
export HOME=/root
mounted() { grep -q " $1 " /proc/mounts 2>/dev/null; }

mounted /proc || mount -t proc proc /proc
mounted /sys || mount -t sysfs sysfs /sys
mounted /dev || mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mounted /dev/pts || mount -t devpts devpts /dev/pts
mounted /run || mount -t tmpfs -o mode=0755 tmpfs /run
mounted /tmp || mount -t tmpfs -o mode=1777 tmpfs /tmp
mkdir -p /run/mem
# Memory filling lands here: it stays in guest RAM.
mounted /run/mem || mount -t tmpfs -o size=90%,mode=0755 mem /run/mem
exec 0</dev/console 1>/dev/console 2>&1

# Keep kernel messages off the console: it is a command channel.
dmesg -n 1
hostname -F /etc/hostname
ip link set lo up
if ip link show eth0 >/dev/null 2>&1; then
	ip link set eth0 up
	if ! udhcpc -i eth0 -s /etc/udhcpc.script -q -n -t 5 -T 1 >/run/udhcpc.log 2>&1; then
		echo "cloudlet-init: DHCP failed on eth0, using 10.0.2.15/24"
		ip addr add 10.0.2.15/24 dev eth0
		ip route add default via 10.0.2.2
	fi
fi

# Wide terminal: the shell's line editor must not wrap long command lines.
stty -F /dev/ttyS0 cols 4096 rows 50 2>/dev/null
echo "CLOUDLET-GUEST-READY $(uname -r)"
while :; do
	setsid cttyhack /bin/sh -l
	sleep 0.2
done
