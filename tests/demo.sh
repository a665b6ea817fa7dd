#!/bin/sh
# demo.sh — `make demo`: run real GnuTLS workloads once without and once
# with librekeyguard.so preloaded, and print a one-line verdict for each.
# Scenarios: full-duplex traffic with forced TLS 1.3 key updates, and the
# QEMU migration shape (bulk one way, a blocked receiver on the same
# session) with key updates.
cd "$(dirname "$0")/.." || exit 2
lib="$(pwd)/librekeyguard.so"
scenario=tests/rg-scenario
[ -r "$lib" ] || { echo "rekeyguard: $lib is missing; run make" >&2; exit 2; }

# verdict LABEL ARGS... — runs one scenario, prints one line.
verdict() {
    label=$1; shift
    out=$("$@" 2>/dev/null); status=$?
    line=$(printf '%s\n' "$out" | grep '^RESULT' | tail -n 1)
    get() { printf '%s\n' "$line" | tr ' ' '\n' | sed -n "s/^$1=//p"; }
    if [ "$status" -gt 128 ]; then
        printf '  %-22s CRASHED (signal %d)\n' "$label" $((status - 128))
    elif printf '%s' "$line" | grep -q ' PASS'; then
        printf '  %-22s PASS: %s s, %s key updates, %s MB/s, every byte checked\n' \
            "$label" "$(get elapsed)" "$(get keyupdates)" "$(get throughput_mbs)"
    else
        printf '  %-22s FAIL after %s s: %s %s\n' "$label" "$(get elapsed)" \
            "$(get reason)" "$(get detail)"
    fi
    return 0
}

version=$(dpkg-query -W -f='${Version}' libgnutls30 2>/dev/null || echo unknown)
echo "rekeyguard demo — GnuTLS $version, $(nproc) CPUs"
echo
echo "1. Two threads per endpoint (one sends, one receives) on one TLS 1.3 session,"
echo "   blocking sockets, forced key updates (gnutls_session_key_update):"
verdict "without rekeyguard:" "$scenario" duplex --seconds 3
verdict "with rekeyguard:" env LD_PRELOAD="$lib" "$scenario" duplex --seconds 3
echo
echo "2. QEMU live-migration shape: bulk one way while a return-path thread waits"
echo "   in gnutls_record_recv on the same session, custom push/pull, key updates:"
verdict "without rekeyguard:" "$scenario" qemu-shape --keyupdates --seconds 3
verdict "with rekeyguard:" env LD_PRELOAD="$lib" "$scenario" qemu-shape --keyupdates --seconds 3
echo
echo "Preload it into any program: LD_PRELOAD=$lib program ..."
