#!/bin/bash
# nbdkit-nbdcopy.sh — nbdkit (memory plugin, --tls=require) and nbdcopy
# (libnbd) over NBD with TLS on 127.0.0.1, many requests in flight: a seeded
# random file copied to the server and back, sha256 compared.  The library
# (when --preload) is loaded into both nbdkit and nbdcopy.
PEER_NAME=nbdkit-nbdcopy
source "$(dirname "$0")/common.sh"

usage() {
	cat <<'EOF'
Usage: tests/peer/nbdkit-nbdcopy.sh [--mb N] [--requests N] [common options]

nbdkit -f --tls=require --tls-certificates=DIR --tls-verify-peer memory
on 127.0.0.1, then nbdcopy --connections=1 --requests=R FILE nbds://... and
back nbdcopy nbds://... COPY; sha256 of FILE and COPY must match. nbdkit
reads requests in one thread while its worker threads send replies on the
same TLS session (its own read and write locks), so key updates race there.

  --mb N             size of the seeded random file in MiB (default 256)
  --requests N       nbdcopy --requests (default 16)
  --provoke-client X REKEYGUARD_PROVOKE_REKEY for nbdcopy only (default: the
                     --provoke value; use N:peer on ONE side at most)
  --timeout S        each nbdcopy is killed after S seconds (default 120); on
                     a timeout the stacks of nbdkit and nbdcopy go to the
                     work directory (gdb, if installed)

Expected: plain passes; --preload LIB --mode off --provoke 64 fails in some
runs (nbdkit: "Decryption has failed"); --preload LIB --provoke 64 passes.
EOF
}

peer_parse "$@"
MB=256 REQUESTS=16 PROVOKE_CLIENT=unset TIMEOUT=120
set -- "${PEER_ARGS[@]+"${PEER_ARGS[@]}"}"
while [ $# -gt 0 ]; do
	case "$1" in
	--mb) MB=$2; shift 2 ;;
	--requests) REQUESTS=$2; shift 2 ;;
	--provoke-client) PROVOKE_CLIENT=$2; shift 2 ;;
	--timeout) TIMEOUT=$2; shift 2 ;;
	*) echo "$PEER_NAME: unknown option $1 (see --help)" >&2; exit 2 ;;
	esac
done
peer_netns
peer_workdir
W=$PEER_WORK
for p in nbdkit nbdcopy; do
	command -v $p >/dev/null || { echo "$PEER_NAME: $p is needed" >&2; exit 2; }
done

peer_certs "$W/certs"
echo "$PEER_NAME: $(peer_label) seed=$PEER_SEED mb=$MB requests=$REQUESTS" \
     "nbdkit $(peer_dpkg_version nbdkit) libnbd-bin $(peer_dpkg_version libnbd-bin)" \
     "libgnutls30 $(peer_dpkg_version libgnutls30)"
peer_random "$W/in.raw" "$MB" "$PEER_SEED"
want=$(sha256sum < "$W/in.raw" | cut -d' ' -f1)

PORT=$(peer_port 10809)
t0=$(date +%s.%N)
under_test nbdkit -f --exit-with-parent -i 127.0.0.1 -p "$PORT" -P "$W/nbdkit.pid" \
	--tls=require --tls-certificates="$W/certs" --tls-verify-peer \
	memory size="${MB}M" 2> "$W/nbdkit.err" &
PEER_PIDS+=($!)
peer_wait_file "$W/nbdkit.pid" 20
nbdkit_pid=$(cat "$W/nbdkit.pid")
PEER_PIDS+=("$nbdkit_pid")
URI="nbds://localhost:$PORT/?tls-certificates=$W/certs"

# nbdcopy with the library (its own provocation value if asked), killed
# after $TIMEOUT seconds; on a hang, both programs' stacks are saved first.
stacks() {
	local p
	# Socket queues and byte counters of both ends: where the bytes are.
	ss -tnpi > "$W/sockets.txt" 2>&1 || true
	command -v gdb >/dev/null || return 0
	for p in "$nbdkit_pid" $(pgrep -x nbdcopy -P "$1" 2>/dev/null); do
		timeout 30 gdb -p "$p" -batch -ex 'thread apply all bt 12' > "$W/stacks.$p.txt" 2>&1 || true
	done
	echo "$PEER_NAME: hung: stacks in $W/stacks.*.txt, sockets in $W/sockets.txt" >&2
}
copy() {
	local err=$1 pid t rc=0
	shift
	(
		if [ "$PROVOKE_CLIENT" != unset ] && [ -n "$PEER_PRELOAD" ]; then
			PEER_PROVOKE=$PROVOKE_CLIENT
		fi
		exec 2> "$err"
		under_test nbdcopy "$@"
	) &
	pid=$!
	for ((t = 0; t < TIMEOUT * 10; t++)); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	if kill -0 "$pid" 2>/dev/null; then
		stacks "$pid"
		pkill -KILL -x nbdcopy -P "$pid" 2>/dev/null || true
		kill -KILL "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
		return 124
	fi
	wait "$pid" || rc=$?
	return "$rc"
}

how() {
	case "$1" in
	124) echo "HUNG (killed after ${TIMEOUT}s)" ;;
	1[2-9][0-9]) echo "killed by signal $(($1 - 128))" ;;
	*) echo "exit $1" ;;
	esac
}
errs() { { grep -v '^rekeyguard:\|Killed' "$1" 2>/dev/null || true; } | head -n 2 | tr '\n' ' '; }
fail=""
rc=0
copy "$W/up.err" --connections=1 --requests="$REQUESTS" "$W/in.raw" "$URI" || rc=$?
[ "$rc" = 0 ] || fail="upload: nbdcopy $(how "$rc"): $(errs "$W/up.err")"
t1=$(date +%s.%N)
if [ -z "$fail" ]; then
	copy "$W/down.err" --connections=1 --requests="$REQUESTS" "$URI" "$W/out.raw" || rc=$?
	[ "$rc" = 0 ] || fail="download: nbdcopy $(how "$rc"): $(errs "$W/down.err")"
fi
t2=$(date +%s.%N)
alive=yes
kill -0 "$nbdkit_pid" 2>/dev/null || alive=no
server_loaded=$(peer_loaded_pid "$nbdkit_pid")
[ "$alive" = yes ] || server_loaded=$(peer_loaded_log "$W/nbdkit.err")
kill "$nbdkit_pid" 2>/dev/null || true
wait "$nbdkit_pid" 2>/dev/null || true
PEER_PIDS=()

ku_server=$(peer_keyupdates "$W/nbdkit.err")
ku_client=$(( $(peer_keyupdates "$W/up.err") + $(peer_keyupdates "$W/down.err" 2>/dev/null || echo 0) ))
client_loaded=$(peer_loaded_log "$W/up.err")
got=none
if [ -z "$fail" ]; then
	got=$(sha256sum < "$W/out.raw" | cut -d' ' -f1)
	[ "$got" = "$want" ] || fail="the copy that came back differs: sha256 $got, sent $want"
fi
srv_err=$( { grep -v '^rekeyguard:' "$W/nbdkit.err" || true; } | { grep -i 'error\|fail' || true; } | head -n 2 | tr '\n' ' ')
[ -z "$fail" ] || [ -z "$srv_err" ] || fail="$fail; nbdkit: $srv_err"
[ "$alive" = yes ] || fail="${fail:+$fail; }nbdkit died"
{ grep -v '^rekeyguard: provoked' "$W/nbdkit.err" || true; } | tail -n 5 >&2

up=$(echo "$t1 - $t0" | bc)
down=$(echo "$t2 - $t1" | bc)
fields="keyupdates_server=$ku_server keyupdates_client=$ku_client server_loaded=$server_loaded client_loaded=$client_loaded up_secs=$up down_secs=$down mb=$MB requests=$REQUESTS sha256=${want:0:16}"
if [ -n "$PEER_PRELOAD" ] && { [ "$server_loaded" != yes ] || [ "$client_loaded" != yes ]; }; then
	fail="${fail:+$fail; }the library did not start in nbdkit or nbdcopy"
fi
[ -z "$fail" ] || peer_result FAIL "$fields error=$fail"
if [ -n "$PEER_PROVOKE" ] && [ $((ku_server + ku_client)) = 0 ]; then
	peer_result FAIL "$fields error=no provoked key update happened: the run proves nothing"
fi
peer_result PASS "$fields"
