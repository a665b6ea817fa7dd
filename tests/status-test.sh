#!/bin/bash
# status-test.sh — rekeyguard-status against real processes: one plain, one
# preloaded, one whose LD_PRELOAD names the library but cannot load it (as
# in secure-execution mode), one preloaded with REKEYGUARD_MODE=off, one
# with REKEYGUARD_MODE=keyupdate.
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
check "$ku" protected "key changes serialised"
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
"$status" 999999999 >/dev/null 2>&1; [ $? = 2 ] || fail "a missing PID must exit 2"
"$status" --bogus >/dev/null 2>&1; [ $? = 2 ] || fail "an unknown option must exit 2"
echo "status-test: all checks passed"
