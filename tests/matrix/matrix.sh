#!/bin/bash
# tests/matrix/matrix.sh — GnuTLS version matrix.
#
#   matrix.sh [--quick] [--runs N] [--guard-runs N] [TARGET...]
#
# TARGETs: host (this Debian 12 system, GnuTLS 3.7.9), or a Debian suite
# name (trixie = Debian 13, GnuTLS 3.8.9; sid = unstable, GnuTLS 3.8.11+;
# bookworm works too) run in a debootstrap chroot made by chroot.sh and
# cached under MATRIX_CACHE (default /var/cache/rekeyguard-matrix).
# Default targets: host trixie sid.
#
# For each target the sources are copied into the target, the library and
# the test programs are built there against its GnuTLS, and run-target.sh
# reports:
#   (a) REKEYGUARD_MODE=guard: every scenario passes (GUARD_RUNS each) and
#       rg-differential's transcript equals the plain one;
#   (b) REKEYGUARD_MODE=auto: rekeyguard_active_mode() (guard below 3.8.11,
#       keyupdate from 3.8.11 on);
#   (c) the plain failure rate of the race scenarios (N runs each).
# Results: MATRIX_CACHE/results/<time>/<target>/ and a table on stdout
# (also in summary.txt).  Exit 0 when (a) and (b) hold for every target.
#
#   --runs N        plain runs per race scenario (default 10; --quick 3)
#   --guard-runs N  guarded runs per scenario (default 3; --quick 1)
#   --quick         short scenario runs (--quick) and the smaller defaults
set -u

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
CACHE=${MATRIX_CACHE:-/var/cache/rekeyguard-matrix}
export MATRIX_CACHE=$CACHE

quick= runs= gruns= targets=()
while [ $# -gt 0 ]; do
	case $1 in
	--quick) quick=quick ;;
	--runs) runs=$2; shift ;;
	--guard-runs) gruns=$2; shift ;;
	-h|--help) sed -n '2,/^set -u/p' "$0" | sed 's/^# \{0,1\}//; /^set -u/d'; exit 0 ;;
	-*) echo "matrix.sh: unknown option $1" >&2; exit 2 ;;
	*) targets+=("$1") ;;
	esac
	shift
done
[ ${#targets[@]} -gt 0 ] || targets=(host trixie sid)
if [ -n "$quick" ]; then runs=${runs:-3} gruns=${gruns:-1}; else runs=${runs:-10} gruns=${gruns:-3}; fi
[ "$(id -u)" = 0 ] || { echo "matrix.sh: must run as root (debootstrap, chroot)" >&2; exit 2; }

stamp=$(date -u +%Y%m%dT%H%M%SZ)
res=$CACHE/results/$stamp
mkdir -p "$res"
printf '%s\n' "${targets[@]}" > "$res/targets"
echo "matrix: results in $res (plain runs $runs, guard runs $gruns${quick:+, quick})" >&2

# The work tree's sources (tracked and untracked, not ignored: every make
# fragment the top Makefile may include), without ELF files, so that
# nothing built on the host against its GnuTLS reaches a chroot.
. "$here/copy-tree.sh"
copy_sources() { matrix_copy_sources "$repo" "$1"; }

for t in "${targets[@]}"; do
	out=$res/$t
	mkdir -p "$out"; echo "$t" > "$out/target"
	if [ "$t" = host ]; then
		work=$CACHE/host-build
		copy_sources "$work/rekeyguard"
		"$here/run-target.sh" "$work/rekeyguard" "$out" "$runs" "$gruns" $quick
		echo $? > "$out/rc"
	else
		if ! "$here/chroot.sh" create "$t"; then
			echo "create-failed" > "$out/rc"; continue
		fi
		root=$("$here/chroot.sh" path "$t")
		copy_sources "$root/build/rekeyguard"
		cp "$here/run-target.sh" "$root/build/run-target.sh"
		rm -rf "$root/build/out"; mkdir -p "$root/build/out"; echo "$t" > "$root/build/out/target"
		"$here/chroot.sh" run "$t" /bin/bash /build/run-target.sh /build/rekeyguard /build/out "$runs" "$gruns" $quick
		echo $? > "$out/rc"
		cp -a "$root/build/out/." "$out/"
	fi
done

"$here/summary.sh" "$res" | tee "$res/summary.txt"
exit "${PIPESTATUS[0]}"
