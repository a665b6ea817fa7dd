#!/bin/bash
# bench-target.sh SUITE [rg-bench options] — the benchmark against another
# GnuTLS: builds the library and bench/rg-bench inside the Debian SUITE
# chroot (tests/matrix/chroot.sh; created if missing), runs rg-bench there
# with only plain GnuTLS (2, and 2' for the noise floor) and the library in
# its default mode (3), and copies the report to
# bench/results/SUITE/latest.{md,csv}.
#
#   tests/matrix/bench-target.sh sid                       # 5 rounds, 1 s
#   tests/matrix/bench-target.sh sid --rounds 10 --seconds 1
#   tests/matrix/bench-target.sh sid --smoke               # < 30 s
#
# Root is required (chroot).  `make bench-matrix BENCH_SUITE=sid` runs it.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
case ${1:-} in
''|-h|--help) sed -n '2,/^set -euo/p' "$0" | sed 's/^# \{0,1\}//; /^set -euo/d'; exit 0 ;;
esac
suite=$1; shift
args=("$@")
[ ${#args[@]} -gt 0 ] || args=(--rounds 5 --seconds 1)
[ "$(id -u)" = 0 ] || { echo "bench-target: must run as root (chroot)" >&2; exit 2; }

"$here/chroot.sh" create "$suite" >&2
root=$("$here/chroot.sh" path "$suite")
work=$root/root/rekeyguard-bench
. "$here/copy-tree.sh"
matrix_copy_sources "$repo" "$work"

quoted=$(printf ' %q' "${args[@]}")
"$here/chroot.sh" run "$suite" bash -euc "
	cd /root/rekeyguard-bench
	v=\$(dpkg-query -W -f='\${Version}' libgnutls30t64 2>/dev/null || dpkg-query -W -f='\${Version}' libgnutls30)
	make -s librekeyguard.so bench/rg-bench bench/libnaivelock.so bench/libqemustyle.so >/dev/null
	bench/rg-bench --configs \"2,2',3\" --out /root/rekeyguard-bench/out \
		--title \"rekeyguard on GnuTLS \$v (Debian $suite): the default mode against plain\" $quoted
"
dest=$repo/bench/results/$suite
mkdir -p "$dest"
for f in latest.md latest.csv latest-runs.csv; do
	[ -f "$work/out/$f" ] && cp "$work/out/$f" "$dest/$f"
done
echo "bench-target: $suite results in $dest/latest.md" >&2
