#!/usr/bin/env bash
# synthesis-listener.sh: VM synthesis over plain TCP, the successor of the
# original's `synthesis -c config.json` server and rapid_client.py.
#
# Protocol (one connection = one synthesis):
#   client -> server   the overlay file, byte for byte, then a half-close
#                      (shutdown of the client's sending side: EOF)
#   server -> client   one JSON line: vm-resume's instance description
#                      {name, pid, run_dir, forwards:[{host_addr, host_port,
#                      guest_port}], timings, ...} plus "listener": {bytes,
#                      eof_to_running}, or {"error": "...", "status": N}
#   then the server closes.
#
# Server:
#   scripts/synthesis-listener.sh [--bind ADDR] [--base DIR] [--catalog FILE]
#                                 [--forward tcp:H:G ...] [--max-instances N] [--once] PORT
#   which runs
#   socat -t 300 TCP-LISTEN:PORT,reuseaddr,fork EXEC:'synthesis-listener.sh --handle'
#   and, per connection,   overlay-apply [--base DIR] | vm-resume [--base DIR] [--forward ...]
#   The base comes from --base or from the catalog ($CLOUDLET_CATALOG or
#   --catalog) by the overlay's base ID. Every instance gets free host ports
#   for the overlay's recorded forwards (vm-resume --ports free), so many
#   clients can synthesize the same overlay at once; the answer says which
#   ports. --forward replaces the recorded forwards (tcp:0:GUEST for a free
#   port); CLOUDLET_PORTS=recorded keeps the recorded host ports.
#   Admission (vm-resume): --max-instances N (CLOUDLET_MAX_INSTANCES) refuses
#   a synthesis while N instances run or start under the run root, and
#   CLOUDLET_RESERVE_MIB (default 256) refuses one when the host's available
#   memory would fall below it; the client gets {"error": ...}.
#
# Client (any of):
#   socat -t 120 - TCP:HOST:PORT < app.overlay          # -t: wait for the answer after our EOF
#   nc -N HOST PORT < app.overlay                       # OpenBSD nc: -N half-closes at EOF
#   scripts/cloudlet synthesis app.overlay --tcp HOST:PORT   # also times it
#
# Half-close matters: the client must keep its receiving side open after
# sending (socat -t, nc -N), and the server answers only once it has seen
# EOF, so a truncated upload is never mistaken for a complete one (overlay-apply
# and vm-resume also reject a stream without its verified END record).
#
# Under systemd, socket activation replaces socat: see
# scripts/systemd/cloudlet-synthesis.socket and cloudlet-synthesis@.service,
# which run `synthesis-listener.sh --handle` once per connection.
#
# There is no authentication: bind to a trusted network (default 127.0.0.1).
# For strangers, run cloudletd (the same protocol over SSH, with a clients
# file and per-client limits), or use `cloudlet synthesis --remote` (ssh).
set -euo pipefail

PROG=synthesis-listener
say() { printf '%s[%s]: %s\n' "$PROG" "$$" "$*" >&2; }
now() { printf '%s' "${EPOCHREALTIME/,/.}"; }
if [ -n "${CLOUDLET_BIN:-}" ]; then PATH=$CLOUDLET_BIN:$PATH; fi
# One catalog for every tool (overlay-apply has no default of its own).
export CLOUDLET_CATALOG=${CLOUDLET_CATALOG:-$HOME/.cloudlet/catalog.json}

# json_string TEXT -> TEXT as a JSON string
json_string() {
	local s=$1
	s=${s//\\/\\\\}
	s=${s//\"/\\\"}
	s=${s//$'\n'/\\n}
	s=${s//$'\t'/ }
	s=${s//$'\r'/}
	printf '"%s"' "$s"
}

# handle: one connection on stdin/stdout (socat EXEC or systemd Accept=yes).
handle() {
	local -a apply=(overlay-apply) resume=(vm-resume) fwd=()
	local base=${CLOUDLET_LISTENER_BASE:-}
	if [ -n "$base" ]; then
		apply+=(--base "$base")
		resume+=(--base "$base")
	fi
	if [ -n "${CLOUDLET_LISTENER_FORWARDS:-}" ]; then
		local f
		for f in $CLOUDLET_LISTENER_FORWARDS; do resume+=(--forward "$f"); done
	fi
	resume+=(--ports "${CLOUDLET_PORTS:-free}")
	local peer=${SOCAT_PEERADDR:-${REMOTE_ADDR:-?}}:${SOCAT_PEERPORT:-${REMOTE_PORT:-?}}
	local tmp t0 rc
	tmp=$(mktemp -d "${TMPDIR:-/tmp}/cloudlet-listener.XXXXXX")
	# shellcheck disable=SC2064 # expand now: $tmp is local
	trap "rm -rf -- '$tmp'" EXIT
	t0=$(now)
	say "connection from $peer: ${apply[*]} | ${resume[*]}"
	# `dd` passes the overlay through as it arrives (synthesis starts on the
	# first byte) and notes when EOF came and how many bytes; the pipeline
	# ends only after that EOF, so the answer always follows the client's
	# half-close.
	set +e
	{ dd bs=65536 2>"$tmp/dd" && now >"$tmp/eof"; } |
		"${apply[@]}" 2>"$tmp/apply.err" |
		"${resume[@]}" >"$tmp/out" 2>"$tmp/resume.err"
	local -a rcs=("${PIPESTATUS[@]}")
	set -e
	local t_end
	t_end=$(now)
	cat "$tmp/apply.err" "$tmp/resume.err" >&2
	rc=0
	local i
	for i in 1 2 0; do
		if [ "${rcs[$i]}" != 0 ]; then
			rc=${rcs[$i]}
			break
		fi
	done
	if [ "$rc" != 0 ] || [ ! -s "$tmp/out" ]; then
		local msg
		msg=$(cat "$tmp/apply.err" "$tmp/resume.err" | grep -v '^$' | tail -n 3)
		[ -n "$msg" ] || msg="synthesis failed (statuses ${rcs[*]})"
		say "failed (statuses ${rcs[*]}): $msg"
		printf '{"error":%s,"status":%s}\n' "$(json_string "$msg")" "${rc/#0/1}"
		return 0
	fi
	local bytes eof since
	bytes=$(awk '/bytes/ { n = $1 } END { print n + 0 }' "$tmp/dd" 2>/dev/null || echo 0)
	eof=$(cat "$tmp/eof" 2>/dev/null || echo "$t_end")
	since=$(awk -v a="$eof" -v b="$t_end" 'BEGIN { d = b - a; if (d < 0) d = 0; printf "%.3f", d }')
	local json
	json=$(cat "$tmp/out")
	say "synthesized in $(awk -v a="$t0" -v b="$t_end" 'BEGIN { printf "%.3f", b - a }')s from ${bytes:-?} bytes; EOF -> running ${since}s: $json"
	# vm-resume's JSON plus what the listener measured
	printf '%s,"listener":{"bytes":%s,"eof_to_running":%s}}\n' "${json%\}}" "${bytes:-0}" "$since"
}

serve() {
	local bind=127.0.0.1 port="" once=""
	local -a fwds=()
	while [ "$#" -gt 0 ]; do
		case $1 in
		--bind) bind=$2; shift 2 ;;
		--base) export CLOUDLET_LISTENER_BASE=$2; shift 2 ;;
		--catalog) export CLOUDLET_CATALOG=$2; shift 2 ;;
		--forward) fwds+=("$2"); shift 2 ;;
		--max-instances) export CLOUDLET_MAX_INSTANCES=$2; shift 2 ;;
		--once) once=1; shift ;;
		-h | --help) sed -n '2,/^set -euo/p' "$0" | sed 's/^# \{0,1\}//; $d'; exit 0 ;;
		-*) say "unknown option $1"; exit 2 ;;
		*) port=$1; shift ;;
		esac
	done
	[ -n "$port" ] || { say "usage: $0 [--bind ADDR] [--base DIR] [--catalog FILE] [--forward tcp:H:G ...] [--max-instances N] [--once] PORT"; exit 2; }
	command -v socat >/dev/null || { say "socat not found (apt-get install socat)"; exit 1; }
	local t
	for t in overlay-apply vm-resume; do
		command -v "$t" >/dev/null || { say "$t not found on PATH (make build; PATH=\$PWD/bin:\$PATH)"; exit 1; }
	done
	export CLOUDLET_LISTENER_FORWARDS="${fwds[*]}"
	local self
	self=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")
	case $self in *[[:space:],:\'\"\\]*) say "the script's path must not contain spaces, commas, colons or quotes (socat EXEC): $self"; exit 1 ;; esac
	local listen="TCP-LISTEN:$port,bind=$bind,reuseaddr"
	[ -n "$once" ] || listen+=",fork"
	say "listening on $bind:$port (base: ${CLOUDLET_LISTENER_BASE:-from the catalog ${CLOUDLET_CATALOG:-~/.cloudlet/catalog.json}})"
	say "+ socat -t 300 $listen EXEC:'$self --handle'"
	# -t 300: after the client's EOF, wait up to 5 minutes for the answer.
	exec socat -t 300 "$listen" "EXEC:$self --handle"
}

if [ "${1:-}" = --handle ]; then
	handle
else
	serve "$@"
fi
