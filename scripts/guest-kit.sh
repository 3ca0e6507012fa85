#!/usr/bin/env bash
# guest-kit.sh [OUTDIR] - build the cloudlet test guest from Debian packages.
#
# Output (default ${CLOUDLET_GUEST_DIR:-<repo>/.cache/guest}):
#   vmlinuz        Debian cloud kernel (linux-image-<ver>-cloud-amd64)
#   initrd.img     gzip cpio: busybox + virtio modules; /init mounts /dev/vda
#                  (ext4) and switch_roots into it
#   rootfs.img     raw ext4, 512 MiB sparse: busybox, /sbin/init, clwork,
#                  /www/index.html. This is the BASE disk image: never write
#                  it, layer a qcow2 over it.
#   manifest.json  kernel version, package names, sha256 of the three files
#
# Needs root on Debian 12 (apt-get download/install). Idempotent: a stamp
# over the inputs (this script, scripts/guest/, chosen packages) makes a
# second run a no-op. Only Debian mirrors and the Go module proxy are used.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-${CLOUDLET_GUEST_DIR:-$ROOT/.cache/guest}}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
DL="$OUT/dl"
WORK="$OUT/work"
mkdir -p "$DL"

log() { echo "guest-kit: $*" >&2; }
T0=$(date +%s.%N)

# --- host tools -------------------------------------------------------------
need=()
command -v cpio >/dev/null || need+=(cpio)
command -v mke2fs >/dev/null || need+=(e2fsprogs)
command -v depmod >/dev/null || need+=(kmod)
command -v gzip >/dev/null || need+=(gzip)
if ((${#need[@]})); then
	log "installing ${need[*]}"
	apt-get install -y --no-install-recommends "${need[@]}" >&2 || {
		apt-get update >&2
		apt-get install -y --no-install-recommends "${need[@]}" >&2
	}
fi
command -v go >/dev/null || { log "go is required to build clwork"; exit 1; }

# apt-get download runs as _apt when it can; give it a folder it may write.
chmod 0755 "$OUT" "$DL" 2>/dev/null || true
[ "$(id -u)" = 0 ] && chown _apt "$DL" 2>/dev/null || true

# --- fast no-op: same sources, same apt lists, outputs present ---------------
quick_in() {
	sha256sum "$ROOT/scripts/guest-kit.sh"
	find "$ROOT/scripts/guest" -type f -print0 | sort -z | xargs -0 sha256sum
	go version
	ls -l --time-style=+%s /var/lib/apt/lists/ 2>/dev/null | grep Packages || true
}
QUICK="$(quick_in | sha256sum | cut -d' ' -f1)"
outputs_ok() {
	[ -f "$OUT/manifest.json" ] && [ -f "$OUT/vmlinuz" ] && [ -f "$OUT/initrd.img" ] && [ -f "$OUT/rootfs.img" ]
}
if [ -f "$OUT/.stamp-quick" ] && [ "$(cat "$OUT/.stamp-quick")" = "$QUICK" ] && outputs_ok; then
	log "up to date in $OUT"
	exit 0
fi

# --- pick the packages (cheap: apt metadata only) ---------------------------
# candidate, fetch, kernel_deb: apt helpers shared with guest-image.sh
source "$ROOT/scripts/guest/apt.sh"
if [ -z "$(candidate linux-image-cloud-amd64)" ] || [ "$(candidate linux-image-cloud-amd64)" = "(none)" ]; then
	log "apt knows no linux-image-cloud-amd64; running apt-get update"
	apt-get update >&2
fi
kernel_deb linux-image-cloud-amd64 cloud-amd64 # sets meta_deb, KPKG, KVER, kdeb
bdeb="$(fetch busybox-static)"

# --- stamp: skip when nothing changed ---------------------------------------
stamp_in() {
	sha256sum "$ROOT/scripts/guest-kit.sh"
	find "$ROOT/scripts/guest" -type f -print0 | sort -z | xargs -0 sha256sum
	basename "$kdeb"
	basename "$bdeb"
	go version
}
STAMP="$(stamp_in | sha256sum | cut -d' ' -f1)"
if [ -f "$OUT/.stamp" ] && [ "$(cat "$OUT/.stamp")" = "$STAMP" ] && outputs_ok; then
	echo "$QUICK" >"$OUT/.stamp-quick"
	log "up to date in $OUT"
	exit 0
fi
rm -f "$OUT/.stamp" "$OUT/.stamp-quick"
rm -rf "$WORK"
mkdir -p "$WORK"

# --- unpack -----------------------------------------------------------------
log "unpacking $(basename "$kdeb") and $(basename "$bdeb")"
dpkg -x "$kdeb" "$WORK/kernel"
dpkg -x "$bdeb" "$WORK/busybox"
BUSYBOX="$WORK/busybox/bin/busybox"
[ -x "$BUSYBOX" ] || BUSYBOX="$(find "$WORK/busybox" -name busybox -type f | head -n1)"
[ -x "$BUSYBOX" ] || { log "busybox not found in $bdeb"; exit 1; }
KSRC="$WORK/kernel/lib/modules/$KVER"
[ -d "$KSRC" ] || KSRC="$WORK/kernel/usr/lib/modules/$KVER"
cp "$WORK/kernel/boot/vmlinuz-$KVER" "$OUT/vmlinuz.tmp"

# --- initrd -----------------------------------------------------------------
bash "$ROOT/scripts/guest/mkinitrd.sh" "$KSRC" "$KVER" "$BUSYBOX" "$WORK" "$OUT/initrd.img.tmp"
IR="$WORK/initrd"

# --- clwork (static Go binary) ---------------------------------------------
log "building clwork"
(cd "$ROOT" && CGO_ENABLED=0 GOOS=linux GOARCH=amd64 go build -trimpath -ldflags='-s -w' \
	-o "$WORK/clwork" ./scripts/guest/clwork)

# --- rootfs -----------------------------------------------------------------
RF="$WORK/rootfs"
mkdir -p "$RF"/{bin,sbin,usr/bin,usr/sbin,usr/local/bin,etc,proc,sys,dev,run,tmp,root,www,var/log,mnt}
chmod 1777 "$RF/tmp"
cp "$BUSYBOX" "$RF/bin/busybox"
"$BUSYBOX" --list-full | while read -r p; do
	case "$p" in sbin/init | linuxrc | bin/busybox) continue ;; esac
	[ -e "$RF/$p" ] || ln -s /bin/busybox "$RF/$p"
done
install -m 0755 "$ROOT/scripts/guest/rootfs-init.sh" "$RF/sbin/init"
install -m 0755 "$ROOT/scripts/guest/udhcpc.script" "$RF/etc/udhcpc.script"
install -m 0755 "$WORK/clwork" "$RF/usr/local/bin/clwork"
for a in cl-writefiles cl-fillmem cl-counter cl-checksum cl-serve; do
	ln -s clwork "$RF/usr/local/bin/$a"
done
install -m 0644 "$ROOT/scripts/guest/index.html" "$RF/www/index.html"
echo cloudlet-guest >"$RF/etc/hostname"
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$RF/etc/passwd"
printf 'root:x:0:\n' >"$RF/etc/group"
printf '127.0.0.1 localhost\n' >"$RF/etc/hosts"
printf 'export PATH=/usr/local/bin:/bin:/sbin:/usr/bin:/usr/sbin\nexport HOME=/root\nPS1='"'"'# '"'"'\n' >"$RF/etc/profile"
echo "$KVER" >"$RF/etc/cloudlet-kernel"
rm -f "$OUT/rootfs.img.tmp"
# Fixed times, UUID and hash seed: the same inputs give the same image.
find "$RF" -exec touch -h -d @1700000000 {} +
E2FSPROGS_FAKE_TIME=1700000000 mke2fs -q -t ext4 -L cloudlet-root \
	-U 5e1f0c1e-0000-4000-8000-000000c10d1e \
	-E lazy_itable_init=0,lazy_journal_init=0,root_owner=0:0,hash_seed=5e1f0c1e-0000-4000-8000-000000000001 \
	-d "$RF" "$OUT/rootfs.img.tmp" 512M >&2
chmod 0444 "$OUT/rootfs.img.tmp"

# --- publish ----------------------------------------------------------------
for f in vmlinuz initrd.img rootfs.img; do
	rm -f "$OUT/$f"
	mv "$OUT/$f.tmp" "$OUT/$f"
done
sum() { sha256sum "$OUT/$1" | cut -d' ' -f1; }
cat >"$OUT/manifest.json.tmp" <<EOF
{
  "kernel_version": "$KVER",
  "kernel_package": "$KPKG",
  "kernel_deb": "$(basename "$kdeb")",
  "kernel_meta_package": "$(basename "$meta_deb")",
  "busybox_deb": "$(basename "$bdeb")",
  "modules": "$(tr '\n' ' ' <"$IR/etc/modules.load" | sed 's/ $//')",
  "sha256": {
    "vmlinuz": "$(sum vmlinuz)",
    "initrd.img": "$(sum initrd.img)",
    "rootfs.img": "$(sum rootfs.img)"
  }
}
EOF
mv "$OUT/manifest.json.tmp" "$OUT/manifest.json"
rm -rf "$WORK"
echo "$STAMP" >"$OUT/.stamp"
echo "$QUICK" >"$OUT/.stamp-quick"
log "done in $(awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}') s: $OUT"
