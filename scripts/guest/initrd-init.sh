#!/bin/sh
# cloudlet initramfs /init: load the virtio modules, mount the root disk
# (ext4 on /dev/vda unless root= says otherwise) and switch_root into it.
export PATH=/bin
/bin/busybox --install -s /bin
mount -t devtmpfs devtmpfs /dev
exec 0</dev/console 1>/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
echo 1 >/proc/sys/kernel/printk 2>/dev/null

root=/dev/vda
for a in $(cat /proc/cmdline); do
	case "$a" in root=/dev/*) root="${a#root=}" ;; esac
done

M=/lib/modules/@KVER@
tries=0
while :; do
	for m in $(cat /etc/modules.load); do
		insmod "$M/$m" 2>/dev/null
	done
	i=0
	while [ ! -b "$root" ] && [ $i -lt 10 ]; do
		sleep 0.1
		i=$((i + 1))
	done
	[ -b "$root" ] && break
	tries=$((tries + 1))
	if [ $tries -ge 5 ]; then
		echo "cloudlet-initrd: ERROR: root disk $root did not appear after $tries module passes"
		echo "cloudlet-initrd: loaded modules:"; cat /proc/modules
		echo "cloudlet-initrd: dropping to a shell"
		exec sh
	fi
	echo "cloudlet-initrd: $root missing, retrying module load ($tries)"
done

# Deleted files' blocks are discarded (TRIM) so they read as zero in the
# VM's qcow2 top layer and never enter an overlay; cloudlet.nodiscard on the
# kernel command line turns that off (to measure what it saves).
opts=rw,discard
grep -qw cloudlet.nodiscard /proc/cmdline && opts=rw
if ! mount -t ext4 -o "$opts" "$root" /newroot; then
	echo "cloudlet-initrd: ERROR: cannot mount $root; dropping to a shell"
	exec sh
fi
umount /proc /sys
mount --move /dev /newroot/dev
exec switch_root /newroot /sbin/init
