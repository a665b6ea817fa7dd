#!/bin/bash
# gnutls-resume.sh — TLS 1.3 session resumption between gnutls-cli and
# gnutls-serv (gnutls-bin) on 127.0.0.1, plain or with librekeyguard.so in
# the client, the server or both: every connection must really resume.
PEER_NAME=gnutls-resume
source "$(dirname "$0")/common.sh"

usage() {
	cat <<'EOF'
Usage: tests/peer/gnutls-resume.sh [--runs N] [--side client|server|both] [common options]

gnutls-serv (TLS 1.3 only, session tickets on by default) and N times
gnutls-cli --resume --priority NORMAL:-VERS-ALL:+VERS-TLS1.3: a full
handshake, then a second connection that must print "*** This is a resumed
session". A TLS 1.3 client gets its ticket only after the handshake, so
gnutls_session_get_data2 right after it must wait for the ticket; a shim
that makes it return early silently turns resumption off.

  --runs N      client runs (default 5)
  --side S      where the library goes with --preload: client, server or
                both (default both)
PASS only when all N runs resumed.
EOF
}

peer_parse "$@"
RUNS=5 SIDE=both
set -- "${PEER_ARGS[@]+"${PEER_ARGS[@]}"}"
while [ $# -gt 0 ]; do
	case "$1" in
	--runs) RUNS=$2; shift 2 ;;
	--side) SIDE=$2; shift 2 ;;
	*) echo "$PEER_NAME: unknown option $1 (see --help)" >&2; exit 2 ;;
	esac
done
case "$SIDE" in client|server|both) ;; *) echo "$PEER_NAME: --side client|server|both" >&2; exit 2 ;; esac
peer_netns
peer_workdir
W=$PEER_WORK
peer_certs "$W/certs"
PRIO="NORMAL:-VERS-ALL:+VERS-TLS1.3"
echo "$PEER_NAME: $(peer_label) side=${PEER_PRELOAD:+$SIDE} runs=$RUNS" \
     "gnutls-bin $(peer_dpkg_version gnutls-bin) libgnutls30 $(peer_dpkg_version libgnutls30)"

# side_run client|server CMD...: with the library only on the chosen side(s).
side_run() {
	local who=$1
	shift
	if [ -n "$PEER_PRELOAD" ] && { [ "$SIDE" = both ] || [ "$SIDE" = "$who" ]; }; then
		under_test "$@"
	else
		env -u LD_PRELOAD "$@"
	fi
}

PORT=$(peer_port 15600)
side_run server gnutls-serv --port "$PORT" --priority "$PRIO" \
	--x509certfile "$W/certs/server-cert.pem" --x509keyfile "$W/certs/server-key.pem" \
	> "$W/serv.out" 2> "$W/serv.err" &
PEER_PIDS+=($!)
srv=$!
peer_wait_port "$PORT" 20

resumed=0 full=0 failed=0 loaded=0 first_err=""
t0=$(date +%s.%N)
for ((i = 1; i <= RUNS; i++)); do
	rc=0
	side_run client timeout 30 gnutls-cli --resume --priority "$PRIO" \
		--x509cafile "$W/certs/ca-cert.pem" -p "$PORT" localhost \
		< /dev/null > "$W/cli.$i.out" 2> "$W/cli.$i.err" || rc=$?
	[ "$(peer_loaded_log "$W/cli.$i.err")" = yes ] && loaded=$((loaded + 1))
	if grep -q '^\*\*\* This is a resumed session' "$W/cli.$i.out"; then
		resumed=$((resumed + 1))
	elif grep -q 'Resume Handshake was completed' "$W/cli.$i.out"; then
		full=$((full + 1))	# reconnected fine, but with a full handshake
	fi
	if [ "$rc" != 0 ]; then
		failed=$((failed + 1))
		[ -n "$first_err" ] || first_err="run $i: gnutls-cli exit $rc: $( { grep -i 'error\|fatal' "$W/cli.$i.out" "$W/cli.$i.err" || true; } | head -n 1)"
	fi
	echo "  run $i: exit $rc, $(grep -c 'Handshake was completed' "$W/cli.$i.out" || true) handshakes," \
	     "resumed=$(grep -c '^\*\*\* This is a resumed session' "$W/cli.$i.out" || true)"
done
secs=$(echo "$(date +%s.%N) - $t0" | bc)
server_loaded=$(peer_loaded_pid "$srv")
[ "$server_loaded" = yes ] || server_loaded=$(peer_loaded_log "$W/serv.err")
alive=yes
kill -0 "$srv" 2>/dev/null || alive=no

fields="resumed=$resumed runs=$RUNS not_resumed=$full failed=$failed client_loaded=$loaded/$RUNS server_loaded=$server_loaded side=${PEER_PRELOAD:+$SIDE} secs=$secs"
if [ -n "$PEER_PRELOAD" ]; then
	case "$SIDE" in
	client|both) [ "$loaded" = "$RUNS" ] || peer_result FAIL "$fields error=the library did not start in every gnutls-cli" ;;
	esac
	case "$SIDE" in
	server|both) [ "$server_loaded" = yes ] || peer_result FAIL "$fields error=the library did not start in gnutls-serv" ;;
	esac
fi
[ "$alive" = yes ] || peer_result FAIL "$fields error=gnutls-serv died"
[ "$failed" = 0 ] || peer_result FAIL "$fields error=$first_err"
[ "$resumed" = "$RUNS" ] ||
	peer_result FAIL "$fields error=only $resumed of $RUNS second connections resumed the session ($full made a full handshake)"
peer_result PASS "$fields"
