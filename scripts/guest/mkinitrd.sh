#!/usr/bin/env bash
# mkinitrd.sh KSRC KVER BUSYBOX WORK OUT - the cloudlet initramfs for one
# Debian kernel: busybox, the virtio modules from KSRC (the kernel's
# lib/modules/KVER, unpacked from its .deb) in load order, and
# scripts/guest/initrd-init.sh as /init. Modules the kernel has built in are
# skipped. Used by guest-kit.sh (cloud kernel) and guest-image.sh (generic).
set -euo pipefail
KSRC=$1 KVER=$2 BUSYBOX=$3 WORK=$4 OUT=$5
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
log() { echo "mkinitrd: $*" >&2; }

# ext4 and crc32c (metadata checksums) are modules in the generic kernel,
# built in in the cloud kernel.
MODS="virtio virtio_ring virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk failover net_failover virtio_net virtio_balloon crc16 mbcache jbd2 crc32c_generic ext4"
IR="$WORK/initrd"
rm -rf "$IR"
mkdir -p "$IR"/{bin,dev,proc,sys,newroot,etc} "$IR/lib/modules/$KVER"
cp "$BUSYBOX" "$IR/bin/busybox"
ln -s busybox "$IR/bin/sh"
WANT=()
for m in $MODS; do
	f="$(find "$KSRC/kernel" -name "$m.ko*" | head -n1)"
	if [ -z "$f" ]; then
		if grep -qE "(^|/)$m\.ko$" "$KSRC/modules.builtin" 2>/dev/null; then
			continue # built in
		fi
		log "module $m not found for kernel $KVER"
		exit 1
	fi
	WANT+=("$m")
	rel="${f#"$KSRC"/}"
	mkdir -p "$IR/lib/modules/$KVER/$(dirname "$rel")"
	cp "$f" "$IR/lib/modules/$KVER/$rel"
done
cp "$KSRC"/modules.builtin* "$KSRC"/modules.order "$IR/lib/modules/$KVER/" 2>/dev/null || true
depmod -b "$IR" "$KVER"
# Load order: for each wanted module, its dependencies (modules.dep lists them
# so that the last must load first), then itself; no duplicates.
DEP="$IR/lib/modules/$KVER/modules.dep"
ORDER=()
have() { local x; for x in "${ORDER[@]:-}"; do [ "$x" = "$1" ] && return 0; done; return 1; }
for m in "${WANT[@]}"; do
	line="$(grep -E "(^|/)$m\.ko(\.[a-z]+)?:" "$DEP" | head -n1)"
	[ -n "$line" ] || { log "module $m missing from modules.dep"; exit 1; }
	self="${line%%:*}"
	read -r -a deps <<<"${line#*:}"
	for ((i = ${#deps[@]} - 1; i >= 0; i--)); do have "${deps[i]}" || ORDER+=("${deps[i]}"); done
	have "$self" || ORDER+=("$self")
done
printf '%s\n' "${ORDER[@]}" >"$IR/etc/modules.load"
log "kernel $KVER, module load order: $(tr '\n' ' ' <"$IR/etc/modules.load")"
sed "s/@KVER@/$KVER/g" "$HERE/initrd-init.sh" >"$IR/init"
chmod 0755 "$IR/init"
(cd "$IR" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet | gzip -6 -n) >"$OUT"
