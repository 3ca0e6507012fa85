# bench-workloads.sh: the benchmark workloads, sourced by scripts/bench.sh and
# scripts/codec-choice.sh so both run the very same guest commands.
#
# bench_workloads SHORT: sets WL_small, WL_medium and WL_medium_app (SHORT=1:
# the tiny variants of bench.sh -short). Content comes from clwork and is
# deterministic from the seeds.
bench_workloads() {
	local files=4 fill=8 src=50 mem=100
	[ "$1" = 1 ] && files=1 fill=2 src=2 mem=4
	WL_small="clwork writefiles --mib $files --dir /opt/app --seed 1 >/dev/null && clwork fillmem --mib $fill --seed 2 >/dev/null"
	WL_medium=$(medium_workload mixed "$src" "$mem" 3 4)
	WL_medium_app=$(medium_workload app "$src" "$mem" 5 6)
	# kv: a key-value lookup behind the page (busybox httpd CGI): a table
	# of `keys` lines, the lookup reads it (scripts/early-start.sh).
	local keys=400000 kvmem=60
	[ "$1" = 1 ] && keys=20000 kvmem=4
	WL_kv="mkdir -p /opt/kv /www/cgi-bin && seq 1 $keys | awk '{ print \"key\" \$1, \$1 * 7 }' > /opt/kv/table && printf '#!/bin/sh\\necho Content-type: text/plain\\necho\\ngrep -m1 \"^\$QUERY_STRING \" /opt/kv/table\\n' > /www/cgi-bin/get && chmod +x /www/cgi-bin/get && clwork fillmem --content app --mib $kvmem --seed 7 >/dev/null"
}

# kv_answer PORT: the kv workload's lookup answer (key 4242), or nothing.
kv_answer() { curl -fsS --max-time 60 "http://127.0.0.1:$1/cgi-bin/get?key4242" 2>/dev/null || true; }
KV_WANT="key4242 29694"

# medium_workload CONTENT SRC_MIB MEM_MIB SEED1 SEED2: write SRC_MIB of files,
# tar+gzip them, unpack them again, keep MEM_MIB in tmpfs.
medium_workload() {
	printf 'clwork writefiles --content %s --mib %s --dir /root/src --seed %s >/dev/null && cd /root && tar czf app.tgz src && mkdir -p /opt/app && tar xzf app.tgz -C /opt/app && clwork fillmem --content %s --mib %s --seed %s >/dev/null' \
		"$1" "$2" "$4" "$1" "$3" "$5"
}

# app_script WORKLOAD: the guest commands of a workload, ending with its page
# (the workload's name) served by busybox httpd on port 80.
app_script() {
	local v="WL_${1//-/_}"
	printf '%s && mkdir -p /www && echo %s > /www/index.html && clwork serve && sync' "${!v}" "$1"
}

# jget KEY: a string field of the one-line JSON on stdin.
jget() { sed -n "s/.*\"$1\":\"\\([^\"]*\\)\".*/\\1/p"; }

# Helpers both benchmarks use (RAW: the raw rows file).
now() { printf '%s' "${EPOCHREALTIME/,/.}"; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }'; }
rec() { (
	IFS=$'\t'
	echo "$*"
) >>"$RAW"; }
fsize() { stat -c %s "$1"; }
# shellcheck source=free-port.sh
. "$(dirname "${BASH_SOURCE[0]}")/free-port.sh"
