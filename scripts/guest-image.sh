#!/usr/bin/env bash
# guest-image.sh [KIT] [OUTDIR] - build *regular* VM disk images from the
# guest kit and Debian packages only: images that boot through their own
# bootloader, the way a user's VM image does, with no -kernel.
#
# Output (default OUTDIR: KIT/images):
#   regular.raw    MBR partition table (syslinux-common's mbr.bin), partition 1
#                  FAT16 with SYSLINUX, Debian's *generic* kernel (it has the
#                  VM generation ID driver, which the kit's cloud kernel
#                  lacks) with the kit's initramfs made for it, and
#                  syslinux.cfg (console on ttyS0, root=/dev/vda2); partition
#                  2 ext4 with the kit's root file system. Its init prints
#                  "regular-image login: root shell on ttyS0", never the kit's
#                  CLOUDLET-GUEST-READY marker, and keeps a root shell on
#                  ttyS0.
#   regular.qcow2  the same disk as qcow2 (qemu-img convert)
#   uefi.raw       GPT with an EFI system partition (syslinux-efi's
#                  syslinux.efi as EFI/BOOT/BOOTX64.EFI) and the same root on
#                  partition 2: boots with --firmware uefi (OVMF)
#
# Needs root on Debian 12 (installs syslinux, syslinux-common, syslinux-efi,
# mtools, dosfstools, fdisk if missing). Idempotent: a stamp over the inputs
# makes a second run a no-op.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KIT="${1:-${CLOUDLET_GUEST_DIR:-$ROOT/.cache/guest}}"
OUT="${2:-$KIT/images}"
log() { echo "guest-image: $*" >&2; }
for f in vmlinuz initrd.img rootfs.img; do
	[ -f "$KIT/$f" ] || { log "$KIT/$f missing: build the kit first (make kit)"; exit 1; }
done
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"

need=()
for p in syslinux syslinux-common syslinux-efi mtools dosfstools fdisk; do
	dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
command -v debugfs >/dev/null || need+=(e2fsprogs)
command -v qemu-img >/dev/null || need+=(qemu-utils)
if ((${#need[@]})); then
	log "installing ${need[*]}"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >&2 || {
		apt-get update -qq >&2
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
	}
fi

# Debian's generic kernel (apt helpers shared with guest-kit.sh).
DL="$KIT/dl"
mkdir -p "$DL"
chmod 0755 "$DL" 2>/dev/null || true
[ "$(id -u)" = 0 ] && chown _apt "$DL" 2>/dev/null || true
source "$ROOT/scripts/guest/apt.sh"
if [ -z "$(candidate linux-image-amd64)" ] || [ "$(candidate linux-image-amd64)" = "(none)" ]; then
	apt-get update -qq >&2
fi
kernel_deb linux-image-amd64 amd64 # sets KPKG, KVER, kdeb

STAMP="$({
	sha256sum "$ROOT/scripts/guest-image.sh" "$ROOT/scripts/guest/mkinitrd.sh" "$ROOT/scripts/guest/initrd-init.sh"
	basename "$kdeb"
	cut -d' ' -f1 <"$KIT/.stamp" 2>/dev/null || sha256sum "$KIT/rootfs.img"
	dpkg-query -W syslinux syslinux-common syslinux-efi
} | sha256sum | cut -d' ' -f1)"
if [ -f "$OUT/.stamp" ] && [ "$(cat "$OUT/.stamp")" = "$STAMP" ] &&
	[ -f "$OUT/regular.raw" ] && [ -f "$OUT/regular.qcow2" ] && [ -f "$OUT/uefi.raw" ]; then
	log "up to date in $OUT"
	exit 0
fi
rm -f "$OUT/.stamp"
WORK="$(mktemp -d "$OUT/.work.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
T0=$(date +%s.%N)

# --- root file system: the kit's, with an init that is not the kit's -------
RF="$WORK/rootfs"
mkdir -p "$RF"
debugfs -R "rdump / $RF" "$KIT/rootfs.img" 2>/dev/null
[ -x "$RF/sbin/init" ] || { log "could not extract the kit's root file system"; exit 1; }
rm -rf "$RF/lost+found"
sed -i 's/^echo "CLOUDLET-GUEST-READY.*$/echo "regular-image login: root shell on ttyS0"/' "$RF/sbin/init"
if grep -q CLOUDLET-GUEST-READY "$RF/sbin/init"; then
	log "the kit's init changed: cannot replace its ready marker"
	exit 1
fi
echo regular-image >"$RF/etc/hostname"
echo "$KVER" >"$RF/etc/cloudlet-kernel"
find "$RF" -exec touch -h -d @1700000000 {} +

# --- the generic kernel and an initramfs for it -------------------------------
log "kernel: $KPKG"
mkdir -p "$WORK/kernel"
dpkg-deb --fsys-tarfile "$kdeb" | tar -x -C "$WORK/kernel" --wildcards \
	'./boot/vmlinuz-*' './lib/modules/*/modules.*' './lib/modules/*/kernel/drivers/virtio/*' \
	'./lib/modules/*/kernel/drivers/block/virtio_blk.ko' './lib/modules/*/kernel/drivers/net/*' \
	'./lib/modules/*/kernel/net/core/failover.ko' './lib/modules/*/kernel/fs/*' './lib/modules/*/kernel/lib/*' './lib/modules/*/kernel/crypto/*'
KSRC="$WORK/kernel/lib/modules/$KVER"
grep -q 'vmgenid' "$KSRC/modules.builtin" || [ -n "$(find "$KSRC" -name 'vmgenid.ko*')" ] || log "warning: $KPKG has no vmgenid driver"
VMLINUZ="$WORK/kernel/boot/vmlinuz-$KVER"
INITRD="$WORK/initrd.img"
bash "$ROOT/scripts/guest/mkinitrd.sh" "$KSRC" "$KVER" "$RF/bin/busybox" "$WORK" "$INITRD"

APPEND="console=ttyS0 root=/dev/vda2 rw quiet init_on_free=1 no_timer_check"
cat >"$WORK/syslinux.cfg" <<EOF
SERIAL 0 115200
PROMPT 0
TIMEOUT 0
DEFAULT linux
LABEL linux
  KERNEL /vmlinuz
  INITRD /initrd.img
  APPEND $APPEND
EOF

MiB=$((1024 * 1024))
BOOT_MIB=32
ROOT_MIB=400
# mkpart FILE MiB: an empty file of that size.
mkpart() { rm -f "$1" && truncate -s "$(($2 * MiB))" "$1"; }
# place PART IMAGE START_MIB: copy a partition into the disk image.
place() { dd if="$1" of="$2" bs=1M seek="$3" conv=notrunc,sparse status=none; }

E2FSPROGS_FAKE_TIME=1700000000 mke2fs -q -t ext4 -L regular-root \
	-U 5e1f0c1e-0000-4000-8000-0000000000e2 \
	-E lazy_itable_init=0,lazy_journal_init=0,root_owner=0:0,hash_seed=5e1f0c1e-0000-4000-8000-000000000002 \
	-d "$RF" "$WORK/root.part" "${ROOT_MIB}M" >&2

# --- BIOS: MBR + SYSLINUX on FAT ---------------------------------------------
mkpart "$WORK/boot.part" $BOOT_MIB
mkfs.vfat -F 16 -n BOOT -i 5e1f0c1e "$WORK/boot.part" >/dev/null
mcopy -i "$WORK/boot.part" "$VMLINUZ" ::/vmlinuz
mcopy -i "$WORK/boot.part" "$INITRD" ::/initrd.img
mcopy -i "$WORK/boot.part" "$WORK/syslinux.cfg" ::/syslinux.cfg
syslinux --install "$WORK/boot.part"
IMG="$WORK/regular.raw"
mkpart "$IMG" $((1 + BOOT_MIB + ROOT_MIB))
sfdisk -q "$IMG" <<EOF
label: dos
label-id: 0x5e1f0c1e
start=1MiB, size=${BOOT_MIB}MiB, type=6, bootable
start=$((1 + BOOT_MIB))MiB, type=83
EOF
dd if=/usr/lib/syslinux/mbr/mbr.bin of="$IMG" bs=440 count=1 conv=notrunc status=none
place "$WORK/boot.part" "$IMG" 1
place "$WORK/root.part" "$IMG" $((1 + BOOT_MIB))
qemu-img convert -q -f raw -O qcow2 "$IMG" "$WORK/regular.qcow2"

# --- UEFI: GPT + EFI system partition with syslinux.efi ----------------------
EFI=/usr/lib/SYSLINUX.EFI/efi64/syslinux.efi
LDL=/usr/lib/syslinux/modules/efi64/ldlinux.e64
mkpart "$WORK/esp.part" $BOOT_MIB
mkfs.vfat -F 16 -n ESP -i 5e1f0c1f "$WORK/esp.part" >/dev/null
mmd -i "$WORK/esp.part" ::/EFI ::/EFI/BOOT
mcopy -i "$WORK/esp.part" "$EFI" ::/EFI/BOOT/BOOTX64.EFI
mcopy -i "$WORK/esp.part" "$LDL" ::/EFI/BOOT/ldlinux.e64
mcopy -i "$WORK/esp.part" "$WORK/syslinux.cfg" ::/EFI/BOOT/syslinux.cfg
mcopy -i "$WORK/esp.part" "$VMLINUZ" ::/vmlinuz
mcopy -i "$WORK/esp.part" "$INITRD" ::/initrd.img
UIMG="$WORK/uefi.raw"
# One MiB more at the end for the backup GPT.
mkpart "$UIMG" $((1 + BOOT_MIB + ROOT_MIB + 1))
sfdisk -q "$UIMG" <<EOF
label: gpt
label-id: 5E1F0C1E-0000-4000-8000-0000000000EF
start=1MiB, size=${BOOT_MIB}MiB, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, uuid=5E1F0C1E-0000-4000-8000-0000000000E1
start=$((1 + BOOT_MIB))MiB, size=${ROOT_MIB}MiB, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, uuid=5E1F0C1E-0000-4000-8000-0000000000E2
EOF
place "$WORK/esp.part" "$UIMG" 1
place "$WORK/root.part" "$UIMG" $((1 + BOOT_MIB))

# --- publish ------------------------------------------------------------------
for f in regular.raw regular.qcow2 uefi.raw; do
	chmod 0444 "$WORK/$f"
	mv -f "$WORK/$f" "$OUT/$f"
done
echo "$STAMP" >"$OUT/.stamp"
log "done in $(awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}') s: $OUT/regular.raw, regular.qcow2, uefi.raw"
