# shellcheck shell=bash
# free_port VAR: sets VAR to a TCP port on 127.0.0.1 that nothing listens on
# and that stays this script's until it exits (sourced by bench.sh, demo.sh,
# early-start.sh). Like guesttest.FreePort in the Go tests: the port is below
# the kernel's ephemeral range, so no port-0 listener or outgoing connection
# takes it meanwhile, and held by a lock on ${TMPDIR:-/tmp}/cloudlet-ports/PORT
# (an fd of this shell), so no other picker does. Calling it again for the same
# VAR gives up the port VAR held.
declare -gA FREE_PORT_FD=()
free_port() {
	local _fp_var=$1 _fp_dir=${TMPDIR:-/tmp}/cloudlet-ports _fp_lo=10000 _fp_hi=32768 _fp_p _fp_fd _fp_r
	read -r _fp_r _ </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null && [ "$_fp_r" -gt 11000 ] && _fp_hi=$_fp_r
	mkdir -p "$_fp_dir"
	if [ -n "${FREE_PORT_FD[$_fp_var]:-}" ]; then
		_fp_fd=${FREE_PORT_FD[$_fp_var]}
		exec {_fp_fd}>&-
		unset "FREE_PORT_FD[$_fp_var]"
	fi
	for _ in $(seq 1000); do
		_fp_p=$((_fp_lo + (RANDOM * 32768 + RANDOM) % (_fp_hi - _fp_lo)))
		exec {_fp_fd}>>"$_fp_dir/$_fp_p"
		if flock -n "$_fp_fd" && ! (exec 3<>"/dev/tcp/127.0.0.1/$_fp_p") 2>/dev/null; then
			FREE_PORT_FD[$_fp_var]=$_fp_fd
			printf -v "$_fp_var" '%s' "$_fp_p"
			return 0
		fi
		exec {_fp_fd}>&-
	done
	echo "free_port: no free port in $_fp_lo-$((_fp_hi - 1))" >&2
	return 1
}
