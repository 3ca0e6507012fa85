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
candidate() { apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2}'; }
if [ -z "$(candidate linux-image-cloud-amd64)" ] || [ "$(candidate linux-image-cloud-amd64)" = "(none)" ]; then
	log "apt knows no linux-image-cloud-amd64; running apt-get update"
	apt-get update >&2
fi
# fetch PKG: print the path of PKG's candidate .deb in $DL, downloading it
# with apt-get download when it is not there yet.
fetch() {
	local v f
	v="$(candidate "$1")"
	[ -n "$v" ] && [ "$v" != "(none)" ] || { log "no candidate version for $1"; return 1; }
	f="$DL/${1}_${v//:/%3a}_amd64.deb"
	[ -f "$f" ] || f="$DL/${1}_${v//:/%3a}_all.deb"
	if [ ! -f "$f" ]; then
		(cd "$DL" && apt-get download "$1=$v" >&2)
		f="$(ls "$DL/${1}_${v//:/%3a}"_*.deb | head -n1)"
	fi
	echo "$f"
}

# Learn the real kernel package from the metapackage's Depends.
meta_deb="$(fetch linux-image-cloud-amd64)"
KPKG="$(dpkg-deb -f "$meta_deb" Depends | tr ',' '\n' | grep -o 'linux-image-[0-9][^ ]*-cloud-amd64' | head -n1)"
[ -n "$KPKG" ] || { log "cannot find the kernel package in $meta_deb Depends"; exit 1; }
KVER="${KPKG#linux-image-}"
kdeb="$(fetch "$KPKG")"
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
MODS="virtio virtio_ring virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk failover net_failover virtio_net virtio_balloon"
IR="$WORK/initrd"
mkdir -p "$IR"/{bin,dev,proc,sys,newroot,etc} "$IR/lib/modules/$KVER"
cp "$BUSYBOX" "$IR/bin/busybox"
ln -s busybox "$IR/bin/sh"
for m in $MODS; do
	f="$(find "$KSRC/kernel" -name "$m.ko*" | head -n1)"
	[ -n "$f" ] || { log "module $m not found in $KPKG"; exit 1; }
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
for m in $MODS; do
	line="$(grep -E "(^|/)$m\.ko(\.[a-z]+)?:" "$DEP" | head -n1)"
	[ -n "$line" ] || { log "module $m missing from modules.dep"; exit 1; }
	self="${line%%:*}"
	read -r -a deps <<<"${line#*:}"
	for ((i = ${#deps[@]} - 1; i >= 0; i--)); do have "${deps[i]}" || ORDER+=("${deps[i]}"); done
	have "$self" || ORDER+=("$self")
done
printf '%s\n' "${ORDER[@]}" >"$IR/etc/modules.load"
log "module load order: $(tr '\n' ' ' <"$IR/etc/modules.load")"
sed "s/@KVER@/$KVER/g" "$ROOT/scripts/guest/initrd-init.sh" >"$IR/init"
chmod 0755 "$IR/init"
(cd "$IR" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet | gzip -6 -n) >"$OUT/initrd.img.tmp"

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
