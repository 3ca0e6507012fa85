#!/usr/bin/env bash
# demo.sh: cloudlet VM synthesis from nothing, in about a minute (`make demo`).
#
#   1. base       boot the guest kit's image, capture it as a base VM
#   2. overlay    resume the base, install a small web app (a page and a CGI
#                 counter served by busybox httpd), capture only what changed
#   3. synthesis  send the overlay to the "cloudlet" over ssh (a throwaway
#                 sshd on 127.0.0.1) or, without sshd, locally; the VM comes
#                 back running, with the app already serving
#   4. fetch the page through the forwarded port, twice (the counter has
#      carried on across capture and synthesis)
#   5. stop and clean up everything (also on Ctrl-C)
#
# Needs the tools on PATH (make build; PATH=$PWD/bin:$PATH) and the guest kit
# in $CLOUDLET_GUEST_DIR (make kit). Leaves nothing behind: the base, the
# catalog ($CLOUDLET_CATALOG), run folders and sshd all live in a temp folder.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
CLOUDLET=$HERE/cloudlet
KIT=${CLOUDLET_GUEST_DIR:-$HERE/../.cache/guest}
KIT=$(cd "$KIT" 2>/dev/null && pwd) || {
	echo "demo: no guest kit in ${CLOUDLET_GUEST_DIR:-.cache/guest} (make kit)" >&2
	exit 1
}
export CLOUDLET_GUEST_DIR=$KIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*" >&2; }
now() { printf '%s' "${EPOCHREALTIME/,/.}"; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
for t in vm-resume vm-capture vm-console cloudlet-base mem-diff disk-diff overlay-pack overlay-apply; do
	command -v "$t" >/dev/null || {
		echo "demo: $t not on PATH (make build; PATH=\$PWD/bin:\$PATH)" >&2
		exit 1
	}
done
BIN=$(dirname "$(command -v vm-resume)")

W=$(mktemp -d /tmp/cloudlet-demo.XXXXXX)
export CLOUDLET_CATALOG=$W/catalog.json CLOUDLET_RUN_DIR=$W/run
mkdir -p "$CLOUDLET_RUN_DIR"
SSHD_PID=""

cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	local r
	for r in "$CLOUDLET_RUN_DIR"/*/; do
		[ -d "$r" ] || continue
		vm-resume stop "${r%/}" >/dev/null 2>&1 || true
	done
	if [ -n "$SSHD_PID" ]; then
		kill "$SSHD_PID" 2>/dev/null || true
		wait "$SSHD_PID" 2>/dev/null || true
	fi
	# Anything of ours still running (a VM whose run folder is gone)?
	local left
	left=$(pgrep -f -- "$W/" || true)
	if [ -n "$left" ]; then
		echo "demo: stopping leftover processes $left" >&2
		# shellcheck disable=SC2086
		kill $left 2>/dev/null || true
	fi
	rm -rf -- "$W"
	[ "$rc" = 0 ] || echo "demo: failed (exit $rc); cleaned up" >&2
	exit "$rc"
}
trap cleanup EXIT
trap 'echo "demo: interrupted" >&2; exit 130' INT
trap 'exit 143' TERM

# shellcheck source=free-port.sh
. "$(dirname "${BASH_SOURCE[0]}")/free-port.sh"

http_get() {
	if command -v curl >/dev/null; then
		curl -fsS --max-time 10 "$1"
	else
		busybox wget -q -T 10 -O - "$1"
	fi
}

T_ALL=$(now)
free_port PORT

# ---------------------------------------------------------------------------
step "1. base VM from $KIT/rootfs.img"
t=$(now)
BASE_ID=$("$CLOUDLET" base "$KIT/rootfs.img" --name demo-base --out "$W/demo.base" --cmd 'sync')
T_BASE=$(since "$t")
echo "base $BASE_ID" >&2

# ---------------------------------------------------------------------------
step "2. overlay: a web app on guest port 80, forwarded to 127.0.0.1:$PORT"
# The page is made here, on the host; the CGI reads the guest's counter.
PAGE=$(
	cat <<EOF
<!doctype html>
<html><head><title>cloudlet demo</title></head>
<body>
<h1>Hello from a synthesized VM</h1>
<p>This page was installed on $(date -u '+%Y-%m-%d %H:%M:%S UTC') into an overlay of base ${BASE_ID:0:12}.</p>
<p>Live counter: <a href="/cgi-bin/counter">/cgi-bin/counter</a></p>
</body></html>
EOF
)
CGI='#!/bin/sh
printf "Content-Type: text/plain\r\n\r\n"
echo "counter=$(cat /run/counter) uptime=$(cut -d" " -f1 /proc/uptime)s host=$(hostname)"'
t=$(now)
# vm-console runs one line at a time: files travel base64-encoded.
put() { printf 'echo %s | base64 -d > %s' "$(printf '%s\n' "$2" | base64 -w0)" "$1"; }
"$CLOUDLET" overlay "$W/demo.base" --name webapp --out "$W/webapp.overlay" --forward "tcp:$PORT:80" \
	--cmd "$(put /www/index.html "$PAGE")" \
	--cmd "mkdir -p /www/cgi-bin && $(put /www/cgi-bin/counter "$CGI") && chmod 755 /www/cgi-bin/counter" \
	--cmd 'clwork counter --file /run/counter >/dev/null 2>&1 &' \
	--cmd 'clwork serve' \
	--cmd 'wget -q -O - http://127.0.0.1/cgi-bin/counter' >/dev/null
T_OVERLAY=$(since "$t")
SIZE=$(stat -c %s "$W/webapp.overlay")
echo "inside the overlay: $(stream-inspect <"$W/webapp.overlay" | jq -c '{kind: .header.kind, records: (.records | map_values(.records))}' 2>/dev/null || echo '?')" >&2

# ---------------------------------------------------------------------------
SSH_ARGS=()
MODE=local
if [ -x /usr/sbin/sshd ] && command -v ssh >/dev/null && command -v ssh-keygen >/dev/null; then
	MODE=ssh
	step "3. synthesis over ssh (a throwaway sshd on 127.0.0.1)"
	S=$W/ssh
	mkdir -p "$S" /run/sshd
	ssh-keygen -q -t ed25519 -N '' -f "$S/host_key"
	ssh-keygen -q -t ed25519 -N '' -f "$S/user_key"
	free_port SSH_PORT
	cat >"$S/sshd_config" <<EOF
HostKey $S/host_key
ListenAddress 127.0.0.1
PermitRootLogin yes
AuthorizedKeysFile $S/user_key.pub
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PidFile none
EOF
	/usr/sbin/sshd -D -e -p "$SSH_PORT" -f "$S/sshd_config" 2>"$S/sshd.log" &
	SSHD_PID=$!
	for _ in $(seq 50); do
		(exec 3<>"/dev/tcp/127.0.0.1/$SSH_PORT") 2>/dev/null && break
		sleep 0.1
	done
	SSH_ARGS=(--remote root@127.0.0.1
		--ssh-opts "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o BatchMode=yes -i $S/user_key -p $SSH_PORT"
		--remote-bin "$BIN" --remote-catalog "$CLOUDLET_CATALOG" --run-dir "$CLOUDLET_RUN_DIR/synth")
else
	step "3. synthesis (local: no sshd here)"
	SSH_ARGS=(--run-dir "$CLOUDLET_RUN_DIR/synth")
fi
t=$(now)
"$CLOUDLET" synthesis "$W/webapp.overlay" "${SSH_ARGS[@]}" >"$W/instance.json" 2>"$W/synthesis.log" || {
	cat "$W/synthesis.log" >&2
	exit 1
}
T_SYN=$(since "$t")
cat "$W/synthesis.log" >&2
LAST=$(sed -n 's/.*last overlay byte -> guest running: \([0-9.]*\)s.*/\1/p' "$W/synthesis.log")
echo "instance: $(cat "$W/instance.json")" >&2
# The cloudlet picks the host port (a free one over ssh): the instance says which.
PORT=$(jq -r '[.forwards[] | select(.guest_port == 80) | .host_port][0]' "$W/instance.json")

# ---------------------------------------------------------------------------
step "4. the app, through the forwarded port 127.0.0.1:$PORT"
t=$(now)
for _ in $(seq 100); do
	http_get "http://127.0.0.1:$PORT/" >"$W/page.html" 2>/dev/null && break
	sleep 0.1
done
T_FETCH=$(since "$t")
cat "$W/page.html"
echo "--- /cgi-bin/counter (twice, a second apart):"
http_get "http://127.0.0.1:$PORT/cgi-bin/counter"
sleep 1
http_get "http://127.0.0.1:$PORT/cgi-bin/counter"

# ---------------------------------------------------------------------------
step "5. stop and clean up"
RUN=$(sed -n 's/.*"run_dir":"\([^"]*\)".*/\1/p' "$W/instance.json")
"$CLOUDLET" stop "$RUN"
cloudlet-base verify "$W/demo.base" >/dev/null && echo "base verified unchanged" >&2

cat >&2 <<EOF

== summary
  base      ${T_BASE}s   (boot, capture, base folder)
  overlay   ${T_OVERLAY}s   (resume base, install app, capture + diff + pack)
  overlay   $SIZE bytes ($(awk -v s="$SIZE" 'BEGIN { printf "%.2f", s / 1048576 }') MiB)
  synthesis ${T_SYN}s over $MODE; last overlay byte -> guest running ${LAST:-?}s
  first page ${T_FETCH}s after synthesis returned
  total     $(since "$T_ALL")s
EOF
