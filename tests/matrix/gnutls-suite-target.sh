#!/bin/bash
# gnutls-suite-target.sh SUITE [gnutls-suite.sh options] — GnuTLS's own test
# suite, plain and with the library preloaded (tests/peer/gnutls-suite.sh),
# against another Debian's GnuTLS: copies the work tree's sources (no ELF
# files) into the SUITE chroot (tests/matrix/chroot.sh; created if missing)
# at /root/rekeyguard-suite, builds librekeyguard.so there against the
# chroot's GnuTLS, runs tests/peer/gnutls-suite.sh inside the chroot with
# --lib pointing at that build and its cache at
# /var/cache/rekeyguard-gnutls-suite (inside the chroot, reused by later
# runs), and copies summary.txt, differences.txt (and recheck.txt) to
# $GNUTLS_SUITE_CACHE/SUITE-results/<label>/ on the host
# (default /var/cache/rekeyguard-gnutls-suite/SUITE-results/<label>/).
#
#   tests/matrix/gnutls-suite-target.sh sid --subset
#   tests/matrix/gnutls-suite-target.sh trixie          # the full suite
#   tests/matrix/gnutls-suite-target.sh sid --tests "tls13-resume-psk"
#
# Root is required (chroot).  Exit status: gnutls-suite.sh's (0 same
# results both ways, 1 differences, 2 setup error).
# `make matrix-gnutls-suite[-quick]` runs it for MATRIX_SUITE_TARGETS.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
case ${1:-} in
''|-h|--help) sed -n '2,/^set -euo/p' "$0" | sed 's/^# \{0,1\}//; /^set -euo/d'; exit 0 ;;
esac
suite=$1; shift
args=("$@")
[ "$(id -u)" = 0 ] || { echo "gnutls-suite-target: must run as root (chroot)" >&2; exit 2; }
host_cache=${GNUTLS_SUITE_CACHE:-/var/cache/rekeyguard-gnutls-suite}
inner_cache=/var/cache/rekeyguard-gnutls-suite
t0=$(date +%s)
say() { printf '[gnutls-suite-target %s +%4ds] %s\n' "$suite" "$(( $(date +%s) - t0 ))" "$*" >&2; }

# The label gnutls-suite.sh will use (its results directory's name).
label=full
i=0
while [ $i -lt ${#args[@]} ]; do
	case ${args[$i]} in
	--subset) label=subset ;;
	--tests|--tests=*) label=tests ;;
	esac
	i=$((i + 1))
done
i=0
while [ $i -lt ${#args[@]} ]; do
	case ${args[$i]} in
	--label) label=${args[$((i + 1))]:-$label} ;;
	--label=*) label=${args[$i]#*=} ;;
	esac
	i=$((i + 1))
done

"$here/chroot.sh" create "$suite" >&2
root=$("$here/chroot.sh" path "$suite")
work=$root/root/rekeyguard-suite

# The work tree's sources as git knows them (tracked and untracked, not
# ignored), without ELF files: nothing built on the host reaches the chroot.
say "copying $repo's sources to $work"
. "$here/copy-tree.sh"
matrix_copy_sources "$repo" "$work"
(cd "$repo" && git log -1 --format='%h %cI' 2>/dev/null || true) >"$work/.source-commit"

quoted=""
[ ${#args[@]} -eq 0 ] || quoted=$(printf ' %q' "${args[@]}")
rc=0
"$here/chroot.sh" run "$suite" /usr/bin/env DEBIAN_FRONTEND=noninteractive bash -euc "
	cd /root/rekeyguard-suite
	missing=''
	for p in build-essential pkg-config libgnutls28-dev dpkg-dev; do
		[ \"\$(dpkg-query -W -f='\${Status}' \$p 2>/dev/null || true)\" = 'install ok installed' ] || missing=\"\$missing \$p\"
	done
	if [ -n \"\$missing\" ]; then
		echo \"gnutls-suite-target: apt-get install\$missing\" >&2
		apt-get -o DPkg::Lock::Timeout=600 update -q >/dev/null
		apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends \$missing >/dev/null
	fi
	make -s librekeyguard.so >&2
	echo \"gnutls-suite-target: built /root/rekeyguard-suite/librekeyguard.so from \$(cat .source-commit) (+ work tree)\" >&2
	exec tests/peer/gnutls-suite.sh --lib /root/rekeyguard-suite/librekeyguard.so --cache $inner_cache$quoted
" || rc=$?

# Results: <inner cache>/<version>/results/<label>/ inside the chroot.
res=$(ls -dt "$root$inner_cache"/*/results/"$label" 2>/dev/null | head -n1 || true)
dest=$host_cache/$suite-results/$label
if [ -n "$res" ] && [ -f "$res/summary.txt" ]; then
	mkdir -p "$dest"
	rm -f "$dest"/summary.txt "$dest"/differences.txt "$dest"/recheck.txt
	for f in summary.txt differences.txt recheck.txt; do
		[ -f "$res/$f" ] && cp "$res/$f" "$dest/$f"
	done
	printf 'exit %s; run time %ss; chroot results %s\n' "$rc" "$(( $(date +%s) - t0 ))" "$res" >>"$dest/summary.txt"
	say "results copied to $dest (exit $rc)"
	cat "$dest/summary.txt" >&2
else
	say "no summary.txt in the chroot (exit $rc); nothing copied"
fi
exit "$rc"
