#!/bin/bash
# glib-networking.sh — GIO's GnuTLS backend (glib-networking) in full duplex
# on one GTlsConnection per endpoint, plain or with librekeyguard.so.
# See usage below and tests/peer/README.md.
PEER_NAME=glib-networking
source "$(dirname "$0")/common.sh"

usage() {
	cat <<'EOF'
Usage: tests/peer/glib-networking.sh [--mb N] [--client-cert] [common options]

One python3-gi (Gio) process: a GTlsServerConnection and a
GTlsClientConnection over a TCP connection on 127.0.0.1, TLS 1.3 with
AES-GCM (G_TLS_GNUTLS_PRIORITY), certificates made now with certtool. Each
endpoint writes its output stream from one thread and reads its input
stream from another, blocking, on the same GTlsConnection; every byte of
both seeded streams is checked (tests/peer/glib-duplex.py).

  --mb N          MiB per direction (default 256)
  --client-cert   the server requires a client certificate, the client
                  presents one (glib-networking's certificate callbacks)
  --timeout S     give up after S seconds (default 90)

Expected: plain passes; --preload LIB --mode off --provoke 64 fails
(Decryption has failed); --preload LIB --provoke 64 passes.
EOF
}

peer_parse "$@"
MB=256 CLIENT_CERT="" TIMEOUT=90
set -- "${PEER_ARGS[@]+"${PEER_ARGS[@]}"}"
while [ $# -gt 0 ]; do
	case "$1" in
	--mb) MB=$2; shift 2 ;;
	--client-cert) CLIENT_CERT=--client-cert; shift ;;
	--timeout) TIMEOUT=$2; shift 2 ;;
	*) echo "$PEER_NAME: unknown option $1 (see --help)" >&2; exit 2 ;;
	esac
done
peer_netns
peer_workdir

PY=/usr/bin/python3
[ -x "$PY" ] && "$PY" -c 'import gi' 2>/dev/null ||
	{ echo "$PEER_NAME: $PY with python3-gi is needed" >&2; exit 2; }
peer_certs "$PEER_WORK/certs"

# TLS 1.3 only, AES-GCM only: the ciphers GnuTLS rekeys automatically.
export G_TLS_GNUTLS_PRIORITY="NORMAL:-VERS-ALL:+VERS-TLS1.3:-CIPHER-ALL:+AES-128-GCM:+AES-256-GCM"
echo "$PEER_NAME: $(peer_label) seed=$PEER_SEED mb=$MB ${CLIENT_CERT:-no-client-cert}" \
     "glib-networking $(peer_dpkg_version glib-networking) libglib2.0-0 $(peer_dpkg_version libglib2.0-0)" \
     "libgnutls30 $(peer_dpkg_version libgnutls30)"

rc=0
t0=$(date +%s.%N)
under_test "$PY" "$PEER_DIR/glib-duplex.py" --certs "$PEER_WORK/certs" --mb "$MB" \
	--seed "$PEER_SEED" --timeout "$TIMEOUT" $CLIENT_CERT \
	> "$PEER_WORK/out" 2> "$PEER_WORK/err" || rc=$?
secs=$(echo "$(date +%s.%N) - $t0" | bc)
grep -v '^rekeyguard: provoked key update' "$PEER_WORK/err" | tail -n 15 >&2 || true
cat "$PEER_WORK/out"
line=$(grep '^GLIB ' "$PEER_WORK/out" | tail -n 1) || true
ku=$(peer_keyupdates "$PEER_WORK/err")
loaded=$(peer_loaded_log "$PEER_WORK/err")
how="exit $rc"
[ "$rc" -lt 128 ] || how="killed by signal $((rc - 128))"
err=$(sed -n 's/.* error=//p' <<<"$line")
[ -n "$err" ] || [ "$rc" = 0 ] || err="$how, no result line"
fields="keyupdates=$ku loaded=$loaded wall=$secs $(sed 's/^GLIB //; s/ error=.*//; s/ seed=[0-9]*//; s/^ok=[01] //' <<<"$line")"

if [ -n "$PEER_PRELOAD" ] && [ "$loaded" != yes ]; then
	peer_result FAIL "$fields error=the library did not start in the program (LD_PRELOAD did not take)"
fi
if [ "$rc" != 0 ] || ! grep -q ' ok=1 ' <<<"$line"; then
	peer_result FAIL "$fields how=$(tr ' ' _ <<<"$how") error=$err"
fi
grep -q ' protocol=TLS1.3 ' <<<"$line" && grep -q ' cipher=TLS_AES_[0-9]*_GCM' <<<"$line" ||
	peer_result FAIL "$fields error=not TLS 1.3 with AES-GCM"
if [ -n "$PEER_PROVOKE" ] && [ "$ku" = 0 ]; then
	peer_result FAIL "$fields error=no provoked key update happened: the run proves nothing"
fi
peer_result PASS "$fields"
