#!/bin/sh
# smoke.sh — QEMU TLS live migration with rekeyguard, end to end.
#
#   tests/qemu/smoke.sh            make qemu-smoke: launcher tests, then
#                                  guarded precopy + postcopy with provoked
#                                  key updates, a no-library baseline, and
#                                  unprotected runs (reported, not asserted)
#   tests/qemu/smoke.sh --quick    shorter migrations, 2 unprotected runs
#   tests/qemu/smoke.sh --soak     make qemu-soak: no provocation, precopy with
#                                  the return path past two automatic GnuTLS
#                                  rekeys (~72 GB, 5+ minutes; not for CI)
#   tests/qemu/smoke.sh --bench    throughput: rounds of precopy without the
#                                  library, guarded, guarded + provoked
#   ... -- ARGS                    passed on to migrate.py (see its --help),
#                                  e.g. -- --soak-gb 10, -- --unprotected-runs 8
#
# Environment: RG_QEMU_QUICK=1 (same as --quick), RG_QEMU_KEEP=1 (keep the
# work directory with the QEMU logs even when everything passed),
# RG_QEMU_TIMEOUT=SECONDS (hard limit for the whole run).
#
# Installs what it needs (qemu-system-x86, gnutls-bin, gcc, binutils,
# python3) through tests/ensure-deps.sh. Only 127.0.0.1 is used. Every QEMU
# is killed when the run ends, however it ends.
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
TOP=$(cd "$HERE/../.." && pwd)

suite=smoke
quick=${RG_QEMU_QUICK:-0}
while [ "$#" -gt 0 ]; do
	case $1 in
	--quick) quick=1; shift ;;
	--soak) suite=soak; shift ;;
	--bench) suite=bench; shift ;;
	--help|-h) sed -n '2,/^set -eu/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
	--) shift; break ;;
	*) echo "smoke.sh: unknown option '$1' (try --help)" >&2; exit 2 ;;
	esac
done

"$TOP/tests/ensure-deps.sh" qemu-system-x86 gnutls-bin gcc binutils python3 make
[ -r "$TOP/librekeyguard.so" ] || make -s -C "$TOP" librekeyguard.so

# shellcheck source=SCRIPTDIR/workdir.sh
. "$HERE/workdir.sh"
rg_workdir rekeyguard-qemu "smoke.sh: logs"

start=$(date +%s)
if [ "$suite" = smoke ]; then
	echo "== run-qemu-with-shim.sh"
	"$HERE/launcher-test.sh"
fi
echo "== building the guest and the certificates"
"$HERE/build-guest.sh" "$work/guest.elf"
"$HERE/mkcerts.sh" "$work/certs"

if [ "$suite" = soak ]; then
	set -- --suite soak "$@"
	limit=${RG_QEMU_TIMEOUT:-3600}
elif [ "$suite" = bench ]; then
	set -- --suite bench "$@"
	limit=${RG_QEMU_TIMEOUT:-1800}
elif [ "$quick" = 1 ]; then
	set -- --suite smoke --run-seconds 4 --unprotected-runs 2 "$@"
	limit=${RG_QEMU_TIMEOUT:-300}
else
	set -- --suite smoke "$@"
	limit=${RG_QEMU_TIMEOUT:-600}
fi
echo "== TLS live migration ($suite$([ "$quick" = 1 ] && echo ", quick"); hard limit ${limit} s)"
# migrate.py kills its QEMUs on SIGTERM and they die with it otherwise
# (PR_SET_PDEATHSIG); timeout(1) is the last resort.
set +e
timeout --foreground --kill-after=15 "$limit" /usr/bin/python3 "$HERE/migrate.py" \
	--guest "$work/guest.elf" --certs "$work/certs" --workdir "$work/runs" \
	--json "$work/results.json" "$@"
status=$?
set -e
echo "smoke.sh: $suite finished in $(( $(date +%s) - start )) s, exit $status"
exit "$status"
