#!/bin/sh
# man-check.sh — the man pages (man/*.scd) and the programs agree: every
# long option a program's --help lists is an item of its page's OPTIONS
# section and the reverse; every REKEYGUARD_* variable the library reads
# is in rekeyguard(7); every page builds with scdoc. Run by make check.
set -u
cd "$(dirname "$0")/.." || exit 2
fail=0
bad() { echo "man-check: FAIL: $*"; fail=1; }

# help_options CMD...: long options at the start of --help's lines
help_options() {
	"$@" --help 2>&1 | sed -n 's/^ \{1,\}\(--[a-z][a-z-]*\).*/\1/p' | sort -u
}
# page_options PAGE: the items of its OPTIONS section
page_options() {
	sed -n '/^# OPTIONS/,/^# /p' "$1" | sed -n 's/^\*\(--[a-z][a-z-]*\)\*.*/\1/p' | sort -u
}
compare() {   # compare PAGE CMD...
	page=$1; shift
	h=$(help_options "$@"); p=$(page_options "$page")
	[ -n "$h" ] || bad "$*: --help lists no options"
	for o in $h; do echo "$p" | grep -qx -- "$o" || bad "$page lacks $o (in $* --help)"; done
	for o in $p; do echo "$h" | grep -qx -- "$o" || bad "$page documents $o, which $* --help does not list"; done
	[ "$fail" = 1 ] || echo "man-check: $page: options agree with $* --help ($(echo $h | wc -w) options)"
}

compare man/rekeyguard-status.8.scd ./rekeyguard-status
[ -x ./rekeyguard-inject ] && compare man/rekeyguard-inject.8.scd ./rekeyguard-inject
compare man/run-qemu-with-shim.1.scd ./run-qemu-with-shim.sh
compare man/rekeyguard-selftest.8.scd selftest/rekeyguard-selftest.sh

for v in $(grep -o '"REKEYGUARD_[A-Z_]*"' shim/config.c | tr -d '"' | sort -u); do
	grep -q "$v" man/rekeyguard.7.scd || bad "rekeyguard(7) does not document $v (shim/config.c reads it)"
done
echo "man-check: rekeyguard(7) documents $(grep -o '"REKEYGUARD_[A-Z_]*"' shim/config.c | sort -u | wc -l) variables the library reads"

for f in man/*.scd; do
	scdoc < "$f" > /dev/null || bad "scdoc rejects $f"
done
[ "$fail" = 0 ] && echo "man-check: all checks passed"
exit "$fail"
