#!/bin/bash
# run-programs.sh — the driver for the real-program tests in tests/peer/:
# runs each program plain, preloaded in guard mode with provoked key updates
# and unprotected (preloaded with REKEYGUARD_MODE=off plus provocation), N
# times each, and prints pass counts and the first error of each kind.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)

usage() {
	cat <<'EOF'
Usage: tests/peer/run-programs.sh [--lib LIB] [--runs N] [--only LIST] [--mb N] [--seed N]

  --lib LIB    the library (default: ../../librekeyguard.so); copied first,
               so a rebuild during the run does not matter
  --runs N     preloaded and unprotected runs per program (default 3)
  --only LIST  comma-separated subset of: glib, glib-cc, nbdkit, qemu, resume
  --mb N       transfer size for glib/nbdkit/qemu (default 256)
  --seed N     one seed for everything (default: a new one per program,
               printed; plain and preloaded runs of a program share it)
  -h, --help   this text
Exit status 0 when every plain and every guarded run passed.
EOF
}

LIB="$HERE/../../librekeyguard.so" RUNS=3 ONLY="glib,glib-cc,nbdkit,qemu,resume" MB=256 SEED=""
while [ $# -gt 0 ]; do
	case "$1" in
	--lib) LIB=$2; shift 2 ;;
	--runs) RUNS=$2; shift 2 ;;
	--only) ONLY=$2; shift 2 ;;
	--mb) MB=$2; shift 2 ;;
	--seed) SEED=$2; shift 2 ;;
	-h|--help) usage; exit 0 ;;
	*) echo "run-programs: unknown option $1" >&2; usage >&2; exit 2 ;;
	esac
done
[ -r "$LIB" ] || { echo "run-programs: $LIB: not found (make librekeyguard.so)" >&2; exit 2; }
COPY=$(mktemp -d /var/tmp/rg-run-programs.XXXXXX)
trap 'rm -rf "$COPY"' EXIT
cp "$LIB" "$COPY/librekeyguard.so"
echo "run-programs: library $(realpath "$LIB"), $(stat -c '%s bytes, mtime %y' "$LIB"), copied to $COPY"
echo "run-programs: GnuTLS $(dpkg-query -W -f='${Version}' libgnutls30 2>/dev/null), $RUNS runs per kind"

bad=0
summary=()
# one NAME SCRIPT KIND ARGS...: run it once, print the RESULT line.
one() {
	local out rc=0
	out=$("$@" 2>&1) || rc=$?
	grep '^RESULT ' <<<"$out" | tail -n 1 || echo "RESULT (none) FAIL exit $rc: $(tail -n 2 <<<"$out" | tr '\n' ' ')"
	return "$rc"
}
program() {
	local key=$1 script=$2
	shift 2
	local seed=${SEED:-$(( (RANDOM << 15 | RANDOM) % 1000000000 ))}
	local kind p pass line first t0
	echo "== $key (seed $seed): $script $*"
	for kind in plain guard off; do
		local n=$RUNS extra=()
		case $kind in
		plain) n=1 ;;
		guard) extra=(--preload "$COPY/librekeyguard.so" --mode guard --provoke 64) ;;
		off) extra=(--preload "$COPY/librekeyguard.so" --mode off --provoke 64) ;;
		esac
		[ "$script" != gnutls-resume.sh ] || [ "$kind" = plain ] || extra=("${extra[@]:0:4}")
		pass=0 first=""
		t0=$(date +%s)
		for ((p = 1; p <= n; p++)); do
			if line=$(one "$HERE/$script" "$@" --seed "$seed" "${extra[@]+"${extra[@]}"}"); then
				pass=$((pass + 1))
			else
				[ -n "$first" ] || first=$(sed -n 's/.* error=//p' <<<"$line" | cut -c1-200)
				[ -n "$first" ] || first=$(cut -c1-200 <<<"$line")
			fi
			echo "   $kind $p/$n: $line"
		done
		summary+=("$(printf '%-10s %-6s %d/%d passed in %3ds%s' "$key" "$kind" "$pass" "$n" \
			$(( $(date +%s) - t0 )) "${first:+  first error: $first}")")
		if [ "$kind" != off ] && [ "$pass" != "$n" ]; then bad=1; fi
	done
}

IFS=, read -r -a want <<<"$ONLY"
for w in "${want[@]}"; do
	case "$w" in
	glib) program glib glib-networking.sh --mb "$MB" ;;
	glib-cc) program glib-cc glib-networking.sh --mb "$MB" --client-cert ;;
	nbdkit) program nbdkit nbdkit-nbdcopy.sh --mb "$MB" --timeout 60 ;;
	qemu) program qemu qemu-nbd.sh --mb "$MB" --timeout 60 ;;
	resume) program resume gnutls-resume.sh --runs 5 --side both ;;
	*) echo "run-programs: unknown program $w" >&2; exit 2 ;;
	esac
done
echo
echo "summary (off = preloaded with REKEYGUARD_MODE=off: the unprotected stack; guard and"
echo "off runs provoke a key update every 64 records; resume runs do not provoke):"
printf '  %s\n' "${summary[@]}"
exit "$bad"
