#!/bin/bash
# tests/matrix/qemu-matrix.sh — real QEMU against each distribution's QEMU and
# GnuTLS: the TLS live-migration smoke test and the injector's QEMU test.
#
#   qemu-matrix.sh [options] TARGET...
#
#   TARGET   host (this Debian 12 machine: QEMU 7.2, GnuTLS 3.7.9) or a Debian
#            suite with a chroot made by chroot.sh (trixie: QEMU 10.0 + 3.8.9,
#            sid: its QEMU + 3.8.13; created when missing, QEMU installed in
#            it from Debian's archive)
#   --guarded-runs N      guarded precopy + postcopy pairs per target (default 2)
#   --unprotected-runs N  runs with the library loaded but REKEYGUARD_MODE=off
#                         and the same provoked key updates, alternating
#                         precopy and postcopy (default 4)
#   --quick               4 s migrations instead of 8, no injector test
#   --no-inject           skip tests/inject/inject-test.sh --qemu
#   --table DIR TARGET... print the table of an earlier run's results DIR
#   -h, --help            this text
#
# Per target: copies the work tree (without ELF files) to
# MATRIX_CACHE/qemu/host or the chroot's /build/qemu-matrix, builds the
# library and the injector there against that system's GnuTLS, runs
# tests/qemu/smoke.sh (guarded = the library in its default mode, which is
# "keyupdate" on GnuTLS 3.8.11 and later) and tests/inject/inject-test.sh --qemu
# --only qemu (attach, refusal during a migration, injected migrations).
# "guarded" runs must all pass; the unprotected counts are measured, not
# asserted.  Logs and results.json per target go to
# MATRIX_CACHE/results/qemu-<UTC time>/; the table (markdown) is printed at
# the end and saved there as table.md.
#
# Exit status: 0 when every guarded migration and every injector test
# passed on every target, 1 otherwise, 2 on a usage or set-up error.
# Needs root (chroot, ptrace); `make qemu-matrix` runs it.
set -u

here=$(cd "$(dirname "$0")" && pwd)
CACHE=${MATRIX_CACHE:-/var/cache/rekeyguard-matrix}
QEMU_PKGS="qemu-system-x86 gnutls-bin python3 gcc binutils make gdb procps"

die() { echo "qemu-matrix: $*" >&2; exit 2; }

# ------------------------------------------------------------ inside a target
# --inside SRC OUT GUARDED UNPROTECTED QUICK INJECT: runs in the target's
# root; writes OUT/row (tab-separated fields for the table), OUT/smoke.log,
# OUT/results.json, OUT/inject.log.
if [ "${1:-}" = --inside ]; then
	src=$2 out=$3 guarded=$4 unprot=$5 quick=$6 inject=$7
	cd "$src" || exit 2
	mkdir -p "$out"
	if ! make -s --no-print-directory librekeyguard.so rekeyguard-inject tests/inject/rg-inject-target \
		> "$out/build.log" 2>&1 &&
	   ! make -s --no-print-directory librekeyguard.so rekeyguard-inject tests/inject/rg-inject-target \
		WARN="-Wall -Wextra" >> "$out/build.log" 2>&1; then
		tail -n 20 "$out/build.log" >&2; die "build failed"
	fi
	. /etc/os-release
	dist=${PRETTY_NAME/ GNU\/Linux/}       # "Debian 13 (trixie)", "Debian forky/sid"
	qver=$(qemu-system-x86_64 --version | sed -n '1s/.*version \([^ ]*\).*/\1/p')
	gver=$(dpkg-query -W -f '${Version}' libgnutls30t64 2>/dev/null ||
	       dpkg-query -W -f '${Version}' libgnutls30 2>/dev/null)
	guarding=$(./run-qemu-with-shim.sh --check qemu-system-x86_64 2>&1 |
		   sed -n 's/^guarding: *//p')
	echo "qemu-matrix $TARGET: $dist, QEMU $qver, GnuTLS $gver"
	echo "qemu-matrix $TARGET: default mode: $guarding"

	sargs=(--guarded-runs "$guarded" --unprotected-runs "$unprot" --json "$out/results.json")
	[ "$quick" = 1 ] && sargs+=(--run-seconds 4)
	t0=$(date +%s)
	RG_QEMU_KEEP=0 RG_QEMU_TIMEOUT=$((300 + 60 * (2 * guarded + unprot))) \
		tests/qemu/smoke.sh -- "${sargs[@]}" > "$out/smoke.log" 2>&1
	smoke_rc=$?
	t1=$(date +%s)
	awk '/ summary \(/ {p = 1; next} p && /^(  [a-z]|PASS|FAIL)/' "$out/smoke.log" |
		sed "s/^/  $TARGET smoke: /"
	inj=skipped inj_rc=0
	if [ "$inject" = 1 ]; then
		tests/inject/inject-test.sh --qemu --only qemu > "$out/inject.log" 2>&1
		inj_rc=$?
		if [ $inj_rc = 0 ]; then inj=yes; else inj=FAIL; fi
		grep -E '^  (attach|in-flight|  (source|destination)|(guard|off)-|unprotected)|PROBLEM|^inject-qemu.py' \
			"$out/inject.log" | sed "s/^/  $TARGET inject: /" | head -n 40
	fi
	t2=$(date +%s)
	python3 - "$out/results.json" "$TARGET" "$dist" "$qver" "$gver" "$guarding" "$inj" \
		"$((t1 - t0))" "$((t2 - t1))" "$smoke_rc" > "$out/row" <<'EOF'
import json, sys
path, target, dist, qver, gver, guarding, inj, smoke_s, inject_s, smoke_rc = sys.argv[1:]
try:
    res = json.load(open(path))
except (OSError, ValueError):
    res = []
guard = [r for r in res if r["protection"] == "guard"]
off = [r for r in res if r["protection"] == "off"]
plain = [r for r in res if r["protection"] == "plain"]
def fails(rs):
    bad = [r for r in rs if not r["ok"]]
    kinds = {}
    for r in bad:
        k = "%s %s" % (r["variant"], r["failure"])
        kinds[k] = kinds.get(k, 0) + 1
    return len(bad), ", ".join("%s %d" % kv for kv in sorted(kinds.items()))
gbad, gkinds = fails(guard)
obad, okinds = fails(off)
pbad, _ = fails(plain)
kus = sum(k["ok"] for r in guard for k in r.get("key_updates", {}).values())
# run-qemu-with-shim.sh --check: "yes, every GnuTLS call serialised: ..." (guard)
# or "yes, key changes serialised: ..." (keyupdate)
mode = ("keyupdate" if "key changes" in guarding or "keyupdate" in guarding else
        "guard" if "every GnuTLS call" in guarding else guarding or "?")
print("\t".join([
    target, dist, qver, gver, mode,
    "%d of %d failed%s" % (obad, len(off), " (%s)" % okinds if okinds else ""),
    "%d of %d%s" % (len(guard) - gbad, len(guard), " (%s)" % gkinds if gkinds else ""),
    str(kus),
    "%d of %d" % (len(plain) - pbad, len(plain)),
    inj, smoke_s, inject_s,
    "ok" if smoke_rc == "0" and guard and not gbad else "FAIL"]))
EOF
	[ $smoke_rc = 0 ] && [ $inj_rc = 0 ] && exit 0
	[ $smoke_rc != 0 ] && echo "qemu-matrix $TARGET: smoke test failed (exit $smoke_rc): $out/smoke.log" >&2
	[ $inj_rc != 0 ] && echo "qemu-matrix $TARGET: injector test failed (exit $inj_rc): $out/inject.log" >&2
	exit 1
fi

# print_table RESULTS TARGET...: the support table (markdown) from each
# target's row file.
print_table() {
	local results=$1 target row date t dist qver gver mode off guard kus plain inj ss is ok
	shift
	date=$(date -u -r "$results" +%Y-%m-%d)
	echo "| distribution | QEMU | GnuTLS | default mode | exposed: unprotected runs (\`REKEYGUARD_MODE=off\`, provoked) | protected: guarded runs passed | key updates in guarded runs | injection works | measured |"
	echo "|---|---|---|---|---|---|--:|---|---|"
	for target in "$@"; do
		row=$results/$target/row
		if [ ! -s "$row" ]; then
			echo "| $target | ? | ? | ? | no result | no result | | | $date |"
			continue
		fi
		IFS=$'\t' read -r t dist qver gver mode off guard kus plain inj ss is ok < "$row"
		echo "| $dist | $qver | $gver | $mode | $off | $guard | $kus | $inj | $date |"
	done
}

# ------------------------------------------------------------ driver
guarded=2 unprot=4 quick=0 inject=1
while [ $# -gt 0 ]; do
	case $1 in
	--table) shift; print_table "$@"; exit 0;;
	--guarded-runs) guarded=${2:?}; shift 2;;
	--unprotected-runs) unprot=${2:?}; shift 2;;
	--quick) quick=1 inject=0; shift;;
	--no-inject) inject=0; shift;;
	-h|--help) sed -n '2,/^set -u/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0;;
	-*) die "unknown option '$1' (try --help)";;
	*) break;;
	esac
done
[ $# -ge 1 ] || die "usage: qemu-matrix.sh [options] TARGET... (try --help)"
for n in "$guarded" "$unprot"; do
	case $n in ''|*[!0-9]*) die "run counts must be numbers, got '$n'";; esac
done
[ "$(id -u)" = 0 ] || die "must run as root (chroot, ptrace)"

repo=$(cd "$here/../.." && pwd)
. "$here/copy-tree.sh"
stamp=$(date -u +%Y%m%dT%H%M%SZ)
results=$CACHE/results/qemu-$stamp
mkdir -p "$results"
rc=0
start=$(date +%s)
for target in "$@"; do
	echo "== qemu-matrix: $target"
	t0=$(date +%s)
	if [ "$target" = host ]; then
		"$repo/tests/ensure-deps.sh" $QEMU_PKGS || { rc=2; continue; }
		work=$CACHE/qemu/host
		matrix_copy_sources "$repo" "$work"
		TARGET=host "$0" --inside "$work" "$results/host" "$guarded" "$unprot" "$quick" "$inject" ||
			rc=1
	else
		"$here/chroot.sh" create "$target" || { rc=2; continue; }
		root=$("$here/chroot.sh" path "$target")
		"$here/chroot.sh" run "$target" /bin/sh -c "
			for p in $QEMU_PKGS; do
				dpkg-query -W -f='\${Status}' \$p 2>/dev/null | grep -q 'ok installed' || missing=\"\${missing:-} \$p\"
			done
			[ -z \"\${missing:-}\" ] && exit 0
			echo \"qemu-matrix: $target: installing\$missing\" >&2
			export DEBIAN_FRONTEND=noninteractive
			{ apt-get update -q && apt-get install -y -q -o APT::Install-Recommends=false \$missing; } \
				> /var/log/qemu-matrix-apt.log 2>&1 || { tail -n 20 /var/log/qemu-matrix-apt.log; exit 1; }
		" || { echo "qemu-matrix: $target: installing QEMU in the chroot failed" >&2; rc=2; continue; }
		matrix_copy_sources "$repo" "$root/build/qemu-matrix"
		cp "$0" "$root/build/qemu-matrix-run.sh"
		rm -rf "$root/build/qemu-matrix-out"
		"$here/chroot.sh" run "$target" /usr/bin/env TARGET="$target" /bin/bash \
			/build/qemu-matrix-run.sh --inside /build/qemu-matrix /build/qemu-matrix-out \
			"$guarded" "$unprot" "$quick" "$inject" || rc=1
		rm -rf "$results/$target"
		cp -r "$root/build/qemu-matrix-out" "$results/$target"
	fi
	echo "== qemu-matrix: $target took $(( $(date +%s) - t0 )) s"
done

print_table "$results" "$@" > "$results/table.md"
echo
echo "qemu-matrix: $(( $(date +%s) - start )) s in all; results in $results"
echo
cat "$results/table.md"
exit $rc
