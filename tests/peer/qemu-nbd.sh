#!/bin/bash
# qemu-nbd.sh — qemu-nbd (server) and qemu-img convert (client) over NBD with
# TLS (tls-creds-x509 objects) on 127.0.0.1: a seeded random image copied to
# the server and back, sha256 compared.  The library (when --preload) is
# loaded into qemu-nbd and qemu-img.
PEER_NAME=qemu-nbd
source "$(dirname "$0")/common.sh"

usage() {
	cat <<'EOF'
Usage: tests/peer/qemu-nbd.sh [--mb N] [--timeout S] [common options]

qemu-nbd -t --object tls-creds-x509,endpoint=server,verify-peer=on ...
--tls-creds tls0 -b 127.0.0.1 exports a raw file; qemu-img convert -n
(--target-image-opts driver=nbd,...,tls-creds=tls0) uploads a seeded random
image, qemu-img convert --image-opts ... -O raw downloads it; sha256 must
match. Both QEMU tools do their NBD I/O from one thread (coroutines in the
main loop), so the race is not expected to show even unprotected.

  --mb N        image size in MiB (default 256)
  --timeout S   each qemu-img is killed after S seconds (default 120)
EOF
}

peer_parse "$@"
MB=256 TIMEOUT=120
set -- "${PEER_ARGS[@]+"${PEER_ARGS[@]}"}"
while [ $# -gt 0 ]; do
	case "$1" in
	--mb) MB=$2; shift 2 ;;
	--timeout) TIMEOUT=$2; shift 2 ;;
	*) echo "$PEER_NAME: unknown option $1 (see --help)" >&2; exit 2 ;;
	esac
done
peer_netns
peer_workdir
W=$PEER_WORK
for p in qemu-nbd qemu-img; do
	command -v $p >/dev/null || { echo "$PEER_NAME: $p is needed (qemu-utils)" >&2; exit 2; }
done

peer_certs "$W/certs"
echo "$PEER_NAME: $(peer_label) seed=$PEER_SEED mb=$MB" \
     "qemu-utils $(peer_dpkg_version qemu-utils) libgnutls30 $(peer_dpkg_version libgnutls30)"
peer_random "$W/in.raw" "$MB" "$PEER_SEED"
want=$(sha256sum < "$W/in.raw" | cut -d' ' -f1)
truncate -s "${MB}M" "$W/export.raw"

PORT=$(peer_port 10810)
t0=$(date +%s.%N)
under_test qemu-nbd -t -f raw -x exp -b 127.0.0.1 -p "$PORT" --pid-file "$W/qemu-nbd.pid" \
	--object "tls-creds-x509,id=tls0,endpoint=server,dir=$W/certs,verify-peer=on" \
	--tls-creds tls0 "$W/export.raw" 2> "$W/qemu-nbd.err" &
PEER_PIDS+=($!)
peer_wait_file "$W/qemu-nbd.pid" 20
srv_pid=$(cat "$W/qemu-nbd.pid")
PEER_PIDS+=("$srv_pid")

CLIENT_OBJ="tls-creds-x509,id=tls0,endpoint=client,dir=$W/certs"
NBD="driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=$PORT,export=exp,tls-creds=tls0"

# qemu-img with the library, killed after $TIMEOUT seconds.
img() {
	local err=$1 pid t rc=0
	shift
	( exec 2> "$err"; under_test qemu-img "$@" ) &
	pid=$!
	for ((t = 0; t < TIMEOUT * 10; t++)); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	if kill -0 "$pid" 2>/dev/null; then
		if command -v gdb >/dev/null; then
			for p in "$srv_pid" $(pgrep -x qemu-img -P "$pid"); do
				timeout 30 gdb -p "$p" -batch -ex 'thread apply all bt 12' > "$W/stacks.$p.txt" 2>&1 || true
			done
		fi
		pkill -KILL -x qemu-img -P "$pid" 2>/dev/null || true
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

fail="" rc=0
img "$W/up.err" convert -n -f raw "$W/in.raw" --object "$CLIENT_OBJ" \
	--target-image-opts "$NBD" || rc=$?
[ "$rc" = 0 ] || fail="upload: qemu-img $(how "$rc"): $(errs "$W/up.err")"
t1=$(date +%s.%N)
if [ -z "$fail" ]; then
	img "$W/down.err" convert --object "$CLIENT_OBJ" --image-opts "$NBD" -O raw "$W/out.raw" || rc=$?
	[ "$rc" = 0 ] || fail="download: qemu-img $(how "$rc"): $(errs "$W/down.err")"
fi
t2=$(date +%s.%N)
alive=yes
kill -0 "$srv_pid" 2>/dev/null || alive=no
server_loaded=$(peer_loaded_pid "$srv_pid")
[ "$alive" = yes ] || server_loaded=$(peer_loaded_log "$W/qemu-nbd.err")
kill "$srv_pid" 2>/dev/null || true
for ((t = 0; t < 50; t++)); do kill -0 "$srv_pid" 2>/dev/null || break; sleep 0.1; done

ku_server=$(peer_keyupdates "$W/qemu-nbd.err")
ku_client=$(( $(peer_keyupdates "$W/up.err") + $(peer_keyupdates "$W/down.err") ))
client_loaded=$(peer_loaded_log "$W/up.err")
if [ -z "$fail" ]; then
	got=$(sha256sum < "$W/out.raw" | cut -d' ' -f1)
	[ "$got" = "$want" ] || fail="the image that came back differs: sha256 $got, sent $want"
fi
[ "$alive" = yes ] || fail="${fail:+$fail; }qemu-nbd died"
srv_err=$(errs "$W/qemu-nbd.err")
[ -z "$fail" ] || [ -z "$srv_err" ] || fail="$fail; qemu-nbd: $srv_err"
if [ -n "$PEER_PRELOAD" ] && { [ "$server_loaded" != yes ] || [ "$client_loaded" != yes ]; }; then
	fail="${fail:+$fail; }the library did not start in qemu-nbd or qemu-img"
fi

fields="keyupdates_server=$ku_server keyupdates_client=$ku_client server_loaded=$server_loaded client_loaded=$client_loaded up_secs=$(echo "$t1 - $t0" | bc) down_secs=$(echo "$t2 - $t1" | bc) mb=$MB sha256=${want:0:16}"
[ -z "$fail" ] || peer_result FAIL "$fields error=$fail"
if [ -n "$PEER_PROVOKE" ] && [ $((ku_server + ku_client)) = 0 ]; then
	peer_result FAIL "$fields error=no provoked key update happened: the run proves nothing"
fi
peer_result PASS "$fields"
