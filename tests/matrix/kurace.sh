#!/bin/bash
# tests/matrix/kurace.sh — the residual key-update race (tests/rg-kurace.c)
# against one target's GnuTLS, plain and with the library preloaded.
#
#   kurace.sh [--runs N] [--mode MODE] TARGET [-- RG-KURACE-ARGS...]
#
#   TARGET   host (this Debian 12 machine) or a Debian suite with a chroot
#            made by chroot.sh (trixie, sid, ...; created when missing)
#   --runs N       runs of each kind (default 20)
#   --mode MODE    REKEYGUARD_MODE of the preloaded runs (default guard;
#                  "none" skips them)
#
# Copies the work tree (without ELF files) to MATRIX_CACHE/kurace/TARGET
# (host) or the chroot's /build/kurace, builds librekeyguard.so and
# rg-kurace there against that system's GnuTLS, runs rg-kurace N times
# without the library and N times with LD_PRELOAD and REKEYGUARD_MODE=MODE,
# and prints one line per run and the counts:
#
#   kurace TARGET gnutls=V plain: P pass F fail (reasons...) mean=S s
#   kurace TARGET gnutls=V guard: P pass F fail (reasons...) mean=S s
#
# Exit status 0 when every preloaded run passed (or none ran), 1 otherwise,
# 2 on a usage or build error.  The plain count is information: it is
# expected to be mostly FAIL on every GnuTLS up to at least 3.8.13.
set -u

here=$(cd "$(dirname "$0")" && pwd)
CACHE=${MATRIX_CACHE:-/var/cache/rekeyguard-matrix}

die() { echo "kurace.sh: $*" >&2; exit 2; }

# ------------------------------------------------------------ inside a target
if [ "${1:-}" = --inside ]; then
	src=$2 runs=$3 mode=$4; shift 4
	cd "$src" || exit 2
	gnutls_cflags=$(pkg-config --cflags gnutls 2>/dev/null)
	gnutls_libs=$(pkg-config --libs gnutls 2>/dev/null || echo -lgnutls)
	if ! make -s --no-print-directory librekeyguard.so > build.log 2>&1 &&
	   ! make -s --no-print-directory librekeyguard.so WARN="-Wall -Wextra" >> build.log 2>&1; then
		tail -n 20 build.log >&2; die "librekeyguard.so: build failed"
	fi
	# shellcheck disable=SC2086
	gcc -O2 -g -Wall -Wextra -D_GNU_SOURCE -pthread $gnutls_cflags \
	    -o tests/rg-kurace tests/rg-kurace.c tests/harness.c $gnutls_libs -ldl \
	    >> build.log 2>&1 || { tail -n 20 build.log >&2; die "rg-kurace: build failed"; }
	ver=$(dpkg-query -W -f '${Version}' libgnutls30t64 2>/dev/null || dpkg-query -W -f '${Version}' libgnutls30 2>/dev/null)
	[ -n "$ver" ] || ver=$(pkg-config --modversion gnutls 2>/dev/null)
	mkdir -p logs
	kinds=(plain); [ "$mode" != none ] && kinds+=("$mode")
	bad=0
	for kind in "${kinds[@]}"; do
		pass=0 fail=0 total=0; reasons=()
		for ((i = 1; i <= runs; i++)); do
			env=()
			[ "$kind" != plain ] && env=(LD_PRELOAD="$src/librekeyguard.so" REKEYGUARD_MODE="$kind")
			t0=$(date +%s.%N)
			env "${env[@]}" timeout -s KILL 120 tests/rg-kurace "$@" \
				> "logs/$kind.$i.out" 2> "logs/$kind.$i.err"
			rc=$?
			t1=$(date +%s.%N)
			line=$(grep '^RESULT ' "logs/$kind.$i.out" | tail -n1)
			if [ -n "$line" ]; then
				res=$(echo "$line" | awk '{print $3}')
				why=$(echo "$line" | sed -n 's/.* reason=\([^ ]*\).*/\1/p')
				[ "$res" = PASS ] && [ $rc != 0 ] && { res=FAIL why=exit-$rc-after-PASS; }
			elif [ $rc -gt 128 ]; then
				res=FAIL why=signal-$(kill -l $((rc - 128)) 2>/dev/null || echo $((rc - 128)))
			else
				res=FAIL why=no-result-exit-$rc
			fi
			wall=$(echo "$t1 - $t0" | bc 2>/dev/null || awk "BEGIN{print $t1 - $t0}")
			total=$(awk "BEGIN{print $total + $wall}")
			if [ "$res" = PASS ]; then
				pass=$((pass + 1))
			else
				fail=$((fail + 1)); reasons+=("$why")
				# the detail says which thread and call saw it
				det=$(echo "$line" | sed -n 's/.* detail=\([^ ]*\).*/\1/p')
				why="$why ${det:-}"
			fi
			printf '  %s #%d: %s %s wall=%.2fs %s\n' "$kind" "$i" "$res" "${why:-}" "$wall" \
				"$(echo "$line" | grep -o 'elapsed=[^ ]*\|met=[^ ]*\|missed=[^ ]*\|seed=[^ ]*' | tr '\n' ' ')"
		done
		hist=$(printf '%s\n' "${reasons[@]}" | grep -v '^$' | sort | uniq -c | awk '{printf "%s%s=%s", sep, $2, $1; sep=","}')
		printf 'kurace %s gnutls=%s %s: %d pass %d fail (%s) mean=%.2f s\n' \
			"$KURACE_TARGET" "$ver" "$kind" "$pass" "$fail" "${hist:--}" \
			"$(awk "BEGIN{print $total / $runs}")"
		[ "$kind" != plain ] && [ $fail -gt 0 ] && bad=1
	done
	exit $bad
fi

# ------------------------------------------------------------ driver
runs=20 mode=guard
while [ $# -gt 0 ]; do
	case $1 in
	--runs) runs=${2:?}; shift 2;;
	--mode) mode=${2:?}; shift 2;;
	-h|--help) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 0;;
	--) shift; break;;
	-*) die "unknown option $1";;
	*) break;;
	esac
done
[ $# -ge 1 ] || die "usage: kurace.sh [--runs N] [--mode MODE] TARGET [-- ARGS...]"
target=$1; shift
[ "${1:-}" = -- ] && shift
case $runs in ''|*[!0-9]*) die "--runs: not a number";; esac
case $mode in auto|guard|off|none) ;; *) die "--mode: auto, guard, off or none";; esac

repo=$(cd "$here/../.." && pwd)
. "$here/copy-tree.sh"
copy_sources() { matrix_copy_sources "$repo" "$1"; }

if [ "$target" = host ]; then
	work=$CACHE/kurace/host
	copy_sources "$work"
	KURACE_TARGET=host exec "$0" --inside "$work" "$runs" "$mode" "$@"
fi
"$here/chroot.sh" create "$target" || die "$target: no chroot"
root=$("$here/chroot.sh" path "$target")
copy_sources "$root/build/kurace"
cp "$0" "$root/build/kurace-run.sh"
exec "$here/chroot.sh" run "$target" /usr/bin/env KURACE_TARGET="$target" \
	/bin/bash /build/kurace-run.sh --inside /build/kurace "$runs" "$mode" "$@"
