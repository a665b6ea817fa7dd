#!/bin/bash
# bench/profile-call.sh — where the instructions of one guarded GnuTLS call
# go (make bench-profile): workload g (1-byte send + recv, one thread,
# in-memory transport) under callgrind, plain GnuTLS against the library.
#
# Instruction counts, not seconds: repeatable whatever else the machine
# does. Each configuration runs twice (1 s and 3 s of traffic under
# valgrind) and every figure is the difference divided by the difference
# in calls, so start-up and handshakes cancel out. The release library is
# one LTO unit, which inlines across files; a build of the same sources
# without LTO (bench/librekeyguard-nolto.so) says which file of the shim
# the instructions belong to.
#
# Writes bench/results/profile-call.md (and prints it).
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
	cat <<'EOF'
usage: bench/profile-call.sh [--out FILE]
  Runs workload g under callgrind: plain GnuTLS, the release library
  (librekeyguard.so), the same sources without LTO (per-file split) and
  the naive-lock baseline. Needs valgrind; about a minute.
  --out FILE   where the table goes (default bench/results/profile-call.md)
EOF
}

out=bench/results/profile-call.md
while [ $# -gt 0 ]; do
	case "$1" in
	--out) out=$2; shift 2 ;;
	-h|--help) usage; exit 0 ;;
	*) echo "rekeyguard: profile-call.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
	esac
done
for f in bench/rg-bench librekeyguard.so bench/librekeyguard-nolto.so bench/libnaivelock.so; do
	[ -e "$f" ] || { echo "rekeyguard: $f is missing: run make bench-profile" >&2; exit 1; }
done
command -v valgrind >/dev/null || { echo "rekeyguard: valgrind is missing: apt-get install -y valgrind" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# categorize FILE: "category instructions" lines from one callgrind file.
categorize() {
	callgrind_annotate --auto=no --threshold=100 "$1" 2>/dev/null | awk '
	/PROGRAM TOTALS/ { next }
	/^ *[0-9,]+ +\(/ {
		c = $1; gsub(",", "", c)
		name = $0; sub(/^[^)]*\) +/, "", name)
		if (name ~ /\[.*librekeyguard[^]]*\]/ || name ~ /\[.*libnaivelock[^]]*\]/) {
			file = name; sub(/:.*/, "", file); sub(/.*\//, "", file)
			if (file ~ /^(wrappers|wrappers-short|symbols|binding|config|provoke)\./ || file == "???")
				file = "entry and dispatch (wrappers, binding, config)"
			else if (file ~ /^(outbound|buffers)\./)
				file = "output queue and chunk cache (outbound.c, buffers.c)"
			cat = "shim: " file
		} else if (name ~ /pthread_mutex|pthread_once|pthread_cond|lll_lock/)
			cat = "libc: locks"
		else if (name ~ /memmove|memcpy|memset/)
			cat = "libc: memcpy"
		else if (name ~ /malloc|free|unlink_chunk|realloc|calloc/)
			cat = "libc: malloc"
		else if (name ~ /libc\.so/)
			cat = "libc: other"
		else if (name ~ /libgnutls|libnettle|libhogweed|libgmp|libtasn1|libp11|libidn|libunistring|libffi/)
			cat = "GnuTLS and crypto"
		else if (name ~ /rg-bench/)
			cat = "application (its in-memory transport)"
		else
			cat = "other"
		sum[cat] += c
	}
	END { for (k in sum) printf "%s\t%d\n", k, sum[k] }'
}

# profile NAME PRELOAD: per-call instructions by category in $tmp/NAME.percall
profile() {
	local name=$1 preload=$2 s
	for s in 1 3; do
		LD_PRELOAD=$preload valgrind --tool=callgrind --callgrind-out-file="$tmp/$name.$s.cg" \
			bench/rg-bench worker g --warmup 0 --seconds $s >"$tmp/$name.$s.out" 2>/dev/null
		grep -o 'pairs_total=[0-9]*' "$tmp/$name.$s.out" | cut -d= -f2 >"$tmp/$name.$s.pairs"
		categorize "$tmp/$name.$s.cg" >"$tmp/$name.$s.cat"
	done
	local dp=$(( $(cat "$tmp/$name.3.pairs") - $(cat "$tmp/$name.1.pairs") ))
	[ "$dp" -gt 0 ] || { echo "rekeyguard: $name: no calls counted" >&2; exit 1; }
	awk -F'\t' -v dp="$dp" 'FNR == NR { a[$1] = $2; next } { b[$1] = $2 }
		END { for (k in b) printf "%s\t%.0f\n", k, (b[k] - a[k]) / dp / 2;
		      for (k in a) if (!(k in b)) printf "%s\t%.0f\n", k, -a[k] / dp / 2 }' \
		"$tmp/$name.1.cat" "$tmp/$name.3.cat" >"$tmp/$name.percall"
	echo "  $name: $(awk -F'\t' '{ t += $2 } END { print t }' "$tmp/$name.percall") instructions per call" >&2
}

echo "profiling workload g under callgrind (4 configurations, 2 runs each)..." >&2
profile plain ""
profile release "$PWD/librekeyguard.so"
profile nolto "$PWD/bench/librekeyguard-nolto.so"
profile naive "$PWD/bench/libnaivelock.so"

get() { awk -F'\t' -v k="$2" '$1 == k { v = $2 } END { print v + 0 }' "$tmp/$1.percall"; }
total() { awk -F'\t' '{ t += $2 } END { print t + 0 }' "$tmp/$1.percall"; }
shim() { awk -F'\t' '$1 ~ /^shim: / { t += $2 } END { print t + 0 }' "$tmp/$1.percall"; }

gnutls_version=$(bench/rg-bench worker g --seconds 0.01 2>/dev/null | grep -o 'gnutls=[^ ]*' | cut -d= -f2 || true)
[ -n "$gnutls_version" ] || gnutls_version=$(pkg-config --modversion gnutls 2>/dev/null || echo unknown)
mkdir -p "$(dirname "$out")"
{
	echo "# Where a guarded call's instructions go (workload g)"
	echo
	echo "$(date -u '+%Y-%m-%d %H:%M UTC') · $(uname -m) · GnuTLS $gnutls_version · rekeyguard commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown) · \`make bench-profile\`"
	echo
	echo "Instructions per GnuTLS call (half of a 1-byte \`gnutls_record_send\` +"
	echo "\`gnutls_record_recv\` pair, one thread, in-memory transport), steady state"
	echo "(the difference between a 1 s and a 3 s run under callgrind)."
	echo
	echo "| part | plain GnuTLS | rekeyguard (release, LTO) | rekeyguard without LTO | naive lock |"
	echo "|---|--:|--:|--:|--:|"
	for c in "GnuTLS and crypto" "libc: malloc" "libc: memcpy" "libc: locks" "libc: other" \
		 "application (its in-memory transport)"; do
		echo "| $c | $(get plain "$c") | $(get release "$c") | $(get nolto "$c") | $(get naive "$c") |"
	done
	echo "| the library's own code | 0 | $(shim release) | $(shim nolto) | $(shim naive) |"
	echo "| **total** | **$(total plain)** | **$(total release)** | **$(total nolto)** | **$(total naive)** |"
	echo "| added per call | — | **+$(( $(total release) - $(total plain) ))** | +$(( $(total nolto) - $(total plain) )) | +$(( $(total naive) - $(total plain) )) |"
	echo
	echo "The library's own code without LTO, by file:"
	echo
	echo "| file | instructions per call |"
	echo "|---|--:|"
	awk -F'\t' '$1 ~ /^shim: / { sub(/^shim: /, "", $1); printf "%s\t%s\n", $2, $1 }' "$tmp/nolto.percall" |
		sort -rn | awk -F'\t' '$1 != 0 { printf "| %s | %s |\n", $2, $1 }'
} >"$out"
cat "$out"
