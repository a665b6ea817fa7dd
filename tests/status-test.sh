#!/bin/bash
# status-test.sh — rekeyguard-status against real processes: one plain, one
# preloaded, one whose LD_PRELOAD names the library but cannot load it (as
# in secure-execution mode), one preloaded with REKEYGUARD_MODE=off, one
# with REKEYGUARD_MODE=keyupdate; text, --json and --prometheus (checked by
# promtool).
# Prints what it checked; exits non-zero on the first mismatch.
set -u
cd "$(dirname "$0")/.." || exit 2
lib="$(pwd)/librekeyguard.so"
status=./rekeyguard-status
prog=tests/rg-scenario
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null' EXIT

start() {   # start ENV... ; sets $started to the PID
    env "$@" "$prog" qemu-shape --seconds 20 --timeout 30 >/dev/null 2>&1 &
    started=$!
    pids+=("$started")
}
fail() { echo "status-test: FAIL: $*"; exit 1; }

start LD_PRELOAD=;                                   plain=$started
start LD_PRELOAD="$lib";                             guarded=$started
start LD_PRELOAD=/nonexistent/librekeyguard.so;      trap_pid=$started
start LD_PRELOAD="$lib" REKEYGUARD_MODE=off;         off=$started
start LD_PRELOAD="$lib" REKEYGUARD_MODE=keyupdate;   ku=$started
sleep 1   # let each map libgnutls and start its sessions

check() {   # check PID EXPECTED-STATE [TEXT]
    out=$("$status" "$1"); rc=$?
    echo "$out" | sed 's/^/    /'
    echo "$out" | head -n 1 | grep -q ": $2\$" || fail "pid $1: expected state $2"
    [ -z "${3:-}" ] || echo "$out" | grep -q "$3" || fail "pid $1: expected '$3' in the report"
    case $2 in protected|not-affected) [ "$rc" = 0 ] ;; *) [ "$rc" = 1 ] ;; esac ||
        fail "pid $1: exit status $rc for state $2"
}
check "$plain" unprotected "restart it with LD_PRELOAD"
check "$guarded" protected "library: $lib"
check "$guarded" protected "every GnuTLS call serialised"
# keyupdate mode serialises only key changes: not enough before 3.8.11
if [ "$(printf '%s\n' "$("$status" "$ku" | sed -n 's/^  GnuTLS:  \([0-9.]*\).*/\1/p')" 3.8.11 | sort -V | head -n 1)" = 3.8.11 ]; then
    check "$ku" protected "key changes serialised"; ku_state=protected
else
    check "$ku" unprotected "REKEYGUARD_MODE=keyupdate does not protect"; ku_state=unprotected
fi
check "$trap_pid" unprotected "secure-execution mode"
check "$off" unprotected "REKEYGUARD_MODE=off"
check $$ not-affected

# A process in another mount namespace (as in a container) that loads the
# library from a path that exists only there (a tmpfs on /mnt): its files
# are read through /proc/PID/root, the version and counters are still there.
if [ "$(id -u)" = 0 ] && command -v unshare >/dev/null && [ ! -e /mnt/librekeyguard.so ]; then
    unshare --mount --propagation private -- sh -c 'mount -t tmpfs rg-status-test /mnt &&
        cp "$1" /mnt/librekeyguard.so &&
        exec env LD_PRELOAD=/mnt/librekeyguard.so "$2" qemu-shape --seconds 20 --timeout 30' sh "$lib" "$prog" \
        >/dev/null 2>&1 &
    other=$!; pids+=("$other")
    sleep 1
    check "$other" protected "library: /mnt/librekeyguard.so"
    check "$other" protected "another mount namespace"
    check "$other" protected "GnuTLS:  3\.[0-9]"
    check "$other" protected "sessions guarded so far: [1-9]"
else
    echo "    (skipped: a process in another mount namespace needs root and unshare)"
fi

# Another user's process: not readable, and said so (exit 2).
if [ "$(id -u)" = 0 ] && command -v runuser >/dev/null && id nobody >/dev/null 2>&1; then
    out=$(runuser -u nobody -- "$status" "$guarded"); rc=$?
    echo "$out" | sed 's/^/    /'
    [ "$rc" = 2 ] || fail "another user's process: exit $rc, expected 2"
    echo "$out" | head -n 1 | grep -q ": unknown\$" || fail "another user's process: expected state unknown"
    echo "$out" | grep -q "cannot read /proc/$guarded/maps (not permitted" || fail "another user's process: no reason given"
else
    echo "    (skipped: another user's process needs root, runuser and the user nobody)"
fi

json=$("$status" --json "$guarded" "$plain"); rc=$?
[ "$rc" = 1 ] || fail "--json with an unprotected process: exit $rc"
echo "$json" | grep -q "\"pid\": $guarded, .*\"state\": \"protected\"" || fail "--json: guarded entry"
echo "$json" | grep -q "\"pid\": $plain, .*\"state\": \"unprotected\"" || fail "--json: plain entry"
[ "$(echo "$json" | head -c 1)" = "[" ] && [ "$(echo "$json" | tail -n 1)" = "]" ] || fail "--json: not an array"
# --prometheus: node_exporter's textfile-collector format, one series per
# process and the per-host counts; promtool (Debian's prometheus) must
# accept it.
prom=$("$status" --prometheus "$guarded" "$plain" "$off" "$ku" $$); rc=$?
echo "$prom" | sed 's/^/    /'
[ "$rc" = 1 ] || fail "--prometheus with an unprotected process: exit $rc"
series() {   # series PID STATE MODE VALUE
    echo "$prom" | grep -Eq "^rekeyguard_process_protected\{pid=\"$1\",name=\"rg-scenario\",state=\"$2\",mode=\"$3\",gnutls_version=\"3\.[0-9]+\.[0-9]+\",injected=\"0\"\} $4\$" ||
        fail "--prometheus: no rekeyguard_process_protected series for pid $1 ($2, $3, $4)"
}
series "$guarded" protected guard 1
series "$plain" unprotected none 0
series "$off" unprotected off 0
series "$ku" "$ku_state" keyupdate "$([ "$ku_state" = protected ] && echo 1 || echo 0)"
echo "$prom" | grep -Eq "^rekeyguard_process_sessions_guarded_total\{pid=\"$guarded\",name=\"rg-scenario\"\} [1-9][0-9]*\$" ||
    fail "--prometheus: sessions guarded of pid $guarded"
echo "$prom" | grep -qx "rekeyguard_process_injected{pid=\"$guarded\",name=\"rg-scenario\"} 0" ||
    fail "--prometheus: injected of pid $guarded"
if [ "$ku_state" = protected ]; then counts="protected 2:unprotected 2"; else counts="protected 1:unprotected 3"; fi
for s in "${counts%%:*}" "${counts#*:}" "not-affected 1" "unknown 0"; do
    echo "$prom" | grep -qx "rekeyguard_processes{state=\"${s% *}\"} ${s#* }" ||
        fail "--prometheus: rekeyguard_processes{state=\"${s% *}\"} should be ${s#* }"
done
echo "$prom" | grep -qx "rekeyguard_scrape_success 1" || fail "--prometheus: scrape success"
if command -v promtool >/dev/null; then
    echo "$prom" | promtool check metrics || fail "promtool check metrics rejects the output"
    echo "    promtool check metrics: accepted"
else
    fail "promtool is missing (Debian package prometheus; make check installs it as root)"
fi
# --output: written atomically, nothing left beside it
dir=$(mktemp -d)
"$status" --prometheus --output "$dir/rekeyguard.prom" "$guarded" >/dev/null; rc=$?
[ "$rc" = 0 ] || fail "--prometheus --output: exit $rc"
[ "$(ls "$dir")" = rekeyguard.prom ] || fail "--output left other files: $(ls "$dir")"
grep -q "^rekeyguard_scrape_success 1\$" "$dir/rekeyguard.prom" || fail "--output: the file lacks the metrics"
[ "$(stat -c %a "$dir/rekeyguard.prom")" = 644 ] || fail "--output: mode $(stat -c %a "$dir/rekeyguard.prom"), expected 644"
"$status" --prometheus --output "$dir/missing/x.prom" >/dev/null 2>&1; [ $? = 2 ] || fail "--output into a missing directory must exit 2"
rm -rf "$dir"
"$status" --json --prometheus >/dev/null 2>&1; [ $? = 2 ] || fail "--json with --prometheus must exit 2"
"$status" 999999999 >/dev/null 2>&1; [ $? = 2 ] || fail "a missing PID must exit 2"
"$status" --bogus >/dev/null 2>&1; [ $? = 2 ] || fail "an unknown option must exit 2"
echo "status-test: all checks passed"
