# apt helpers for guest-kit.sh and guest-image.sh (sourced; needs $DL and log).

# candidate PKG: apt's candidate version of PKG.
candidate() { apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2}'; }

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

# kernel_deb META SUFFIX: learn the real kernel package from the
# metapackage META's Depends (linux-image-<ver>-SUFFIX) and fetch it; sets
# meta_deb, KPKG, KVER and kdeb.
kernel_deb() {
	meta_deb="$(fetch "$1")"
	KPKG="$(dpkg-deb -f "$meta_deb" Depends | tr ',' '\n' | grep -o "linux-image-[0-9][^ ]*-$2" | head -n1)"
	[ -n "$KPKG" ] || { log "cannot find the kernel package in $meta_deb Depends"; exit 1; }
	KVER="${KPKG#linux-image-}"
	kdeb="$(fetch "$KPKG")"
}
