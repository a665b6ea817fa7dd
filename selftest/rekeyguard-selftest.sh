#!/bin/sh
# rekeyguard-selftest — validate this host: TLS live migrations between two
# throw-away QEMUs started through the installed launcher, with key updates
# forced every few thousand records (REKEYGUARD_PROVOKE_REKEY), a tiny
# guest that checks its own memory, and certificates made on the fly.
#
# Installed by `make install` (the Debian package: /usr/sbin); the
# @...@ placeholders are replaced then. In the source tree it runs the
# tree's launcher, library and test files (make selftest).
#
# Only 127.0.0.1 is used; every QEMU is killed when the run ends, however
# it ends, and the work directory is removed (--keep keeps it).
set -eu

RG_PKGLIBDIR=@PKGLIBDIR@
RG_LAUNCHER=@LIBEXECDIR@/run-qemu-with-shim
prog=${0##*/}
case $RG_PKGLIBDIR in *@*)   # not installed: the source tree
	top=$(cd "$(dirname "$0")/.." && pwd)
	RG_PKGLIBDIR=$top/tests/qemu
	RG_LAUNCHER=$top/run-qemu-with-shim.sh
	RG_GUEST=$top/build/selftest-guest.elf ;;
*)
	RG_GUEST=$RG_PKGLIBDIR/guest.elf ;;
esac

usage() {
	cat <<EOF
usage: $prog [--control] [--qemu PATH] [--keep] [--help]

Validates this host in about a minute: two TLS live migrations (precopy
with the return path, then postcopy) between two throw-away QEMUs started
through the launcher ($RG_LAUNCHER),
with a key update forced every 10000 records on the source and requested
by the destination, a tiny guest that checks its memory, and certificates
made for the run. Prints one line per migration (mode, bytes, key updates,
result) and PASS or FAIL.

  --control    also migrate twice with the library switched off
               (REKEYGUARD_MODE=off): those runs are expected to fail on
               GnuTLS releases that race, and are reported, not asserted
  --qemu PATH  the QEMU to test (default: qemu-system-x86_64 in PATH)
  --keep       keep the work directory with the QEMU logs
  --help       this text

Needs qemu-system-x86_64 (qemu-system-x86), certtool (gnutls-bin) and
python3. Uses 127.0.0.1 only and leaves nothing behind.
Exit status: 0 PASS, 1 FAIL, 2 cannot run here (a missing program).
EOF
}

control=0
keep=0
qemu=qemu-system-x86_64
while [ "$#" -gt 0 ]; do
	case $1 in
	--control) control=1; shift ;;
	--keep) keep=1; shift ;;
	--qemu) [ "$#" -ge 2 ] || { echo "$prog: --qemu needs a PATH (see --help)" >&2; exit 2; }
		qemu=$2; shift 2 ;;
	--qemu=*) qemu=${1#--qemu=}; shift ;;
	--help|-h) usage; exit 0 ;;
	*) echo "$prog: unknown argument '$1' (see --help)" >&2; exit 2 ;;
	esac
done

missing=
command -v "$qemu" >/dev/null 2>&1 || missing="$missing $qemu (apt-get install qemu-system-x86)"
command -v certtool >/dev/null 2>&1 || missing="$missing certtool (apt-get install gnutls-bin)"
command -v python3 >/dev/null 2>&1 || missing="$missing python3 (apt-get install python3)"
for f in "$RG_LAUNCHER" "$RG_PKGLIBDIR/migrate.py" "$RG_PKGLIBDIR/mkcerts.sh" "$RG_GUEST"; do
	[ -e "$f" ] || missing="$missing $f"
done
if [ -n "$missing" ]; then
	echo "$prog: cannot run: missing$missing" >&2
	exit 2
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/rekeyguard-selftest.XXXXXX")
cleanup() {
	if [ "$keep" = 1 ]; then
		echo "$prog: logs kept in $work"
	else
		rm -rf "$work"
	fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

start=$(date +%s)
echo "$prog: $("$qemu" --version | head -n 1); launcher $RG_LAUNCHER"
sh "$RG_PKGLIBDIR/mkcerts.sh" "$work/certs"
set -- --suite selftest --launcher "$RG_LAUNCHER" --qemu "$qemu" --guest "$RG_GUEST" \
	--certs "$work/certs" --workdir "$work/runs" --run-seconds 3 --cores none \
	--no-backtraces --json "$work/results.json"
[ "$control" = 1 ] && set -- "$@" --control --unprotected-runs 2 --unprotected-timeout 25
rc=0
python3 "$RG_PKGLIBDIR/migrate.py" "$@" >"$work/migrate.log" 2>&1 || rc=$?

# One line per migration, then the verdict.
python3 - "$work/results.json" "$rc" "$(( $(date +%s) - start ))" <<'EOF' || rc=1
import json, sys
path, rc, secs = sys.argv[1], int(sys.argv[2]), sys.argv[3]
try:
    results = json.load(open(path))
except (OSError, ValueError):
    results = []
for r in results:
    m = r.get("migration", {})
    ku = r.get("key_updates", {})
    kus = ", ".join("%s %d" % (n, k.get("ok", 0)) for n, k in sorted(ku.items())) or "none seen"
    kind = "library on" if r["protection"] == "guard" else "library off (control)"
    verdict = "ok" if r["ok"] else "FAILED (%s)" % (r.get("failure") or "?")
    print("  %-9s %-22s %6.2f GB  key updates: %-18s %s" % (
        r["variant"], kind, m.get("transferred", 0) / 1e9, kus, verdict))
guarded = [r for r in results if r["protection"] == "guard"]
control = [r for r in results if r["protection"] != "guard"]
if control:
    failed = sum(1 for r in control if not r["ok"])
    print("  control: %d of %d unprotected migrations failed%s" % (
        failed, len(control), "" if failed else " (reported, not asserted: the race did not show)"))
ok = rc == 0 and len(guarded) == 2 and all(r["ok"] for r in guarded)
print("%s (%s s)" % ("PASS" if ok else "FAIL", secs))
sys.exit(0 if ok else 1)
EOF
if [ "$rc" != 0 ]; then
	echo "$prog: the migration driver said:" >&2
	tail -n 25 "$work/migrate.log" >&2
	exit 1
fi
exit 0
