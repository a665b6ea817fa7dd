# tests/peer/common.sh — shared by the program tests in tests/peer/ (sourced,
# bash).  Owns: the common options (--preload, --mode, --provoke, --seed,
# --keep, --workdir), the private network namespace, the throw-away
# certificates, running a program under test with or without the library,
# proving that the library was really loaded into it, and the RESULT line.
#
# A script that sources this sets PEER_NAME first, defines usage(), calls
# peer_parse "$@", handles its own options (left in PEER_ARGS), then calls
# peer_netns and peer_workdir.
#
# Conventions (same as the rg-* programs, so tests/check_peers can judge):
#   - everything the test measured goes to stdout; the last line is
#     "RESULT <test> PASS|FAIL key=value ...";
#   - exit 0 only on PASS;
#   - seeds are printed and can be given back with --seed N (or RG_SEED=N).

set -euo pipefail

PEER_DIR=$(cd -P "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TESTS_DIR=$(cd "$PEER_DIR/.." && pwd)

PEER_PRELOAD=""          # absolute path of the library, or "" for plain
PEER_MODE="guard"        # REKEYGUARD_MODE for the programs under test
PEER_PROVOKE=""          # REKEYGUARD_PROVOKE_REKEY, "" for none
PEER_SEED="${RG_SEED:-}"
PEER_KEEP=0
PEER_WORK=""
PEER_ARGS=()

peer_common_help() {
	cat <<'EOF'
Common options:
  --preload LIB   load LIB (librekeyguard.so) into the programs under test
                  with LD_PRELOAD; without it they run plain
  --mode M        REKEYGUARD_MODE for them: guard (default), auto or off
                  (off = pure pass-through: with --provoke it shows the race)
  --provoke N     REKEYGUARD_PROVOKE_REKEY=N (N or N:peer): a TLS 1.3 key
                  update every N records sent; needs --preload
  --seed N        seed for the data (default: random, printed; RG_SEED=N too)
  --workdir DIR   work there (default: a new directory under /var/tmp, removed
                  at the end unless --keep; after a failure only the data
                  files are removed, the logs stay)
  --keep          keep the work directory
  -h, --help      this text
As root the test re-runs itself in a private network namespace (unshare -n,
loopback only); set RG_PEER_NO_NETNS=1 to stay in the current one.
EOF
}

PEER_ORIG_ARGS=()
peer_parse() {
	PEER_ORIG_ARGS=("$@")
	PEER_ARGS=()
	while [ $# -gt 0 ]; do
		case "$1" in
		--preload) PEER_PRELOAD=$(realpath "$2"); shift 2 ;;
		--mode) PEER_MODE=$2; shift 2 ;;
		--provoke) PEER_PROVOKE=$2; shift 2 ;;
		--seed) PEER_SEED=$2; shift 2 ;;
		--workdir) PEER_WORK=$2; shift 2 ;;
		--keep) PEER_KEEP=1; shift ;;
		-h|--help) usage; peer_common_help; exit 0 ;;
		*) PEER_ARGS+=("$1"); shift ;;
		esac
	done
	if [ -n "$PEER_PROVOKE" ] && [ -z "$PEER_PRELOAD" ]; then
		echo "$PEER_NAME: --provoke needs --preload (only the library provokes key updates)" >&2
		exit 2
	fi
	if [ -n "$PEER_PRELOAD" ] && [ ! -r "$PEER_PRELOAD" ]; then
		echo "$PEER_NAME: $PEER_PRELOAD: not readable" >&2
		exit 2
	fi
	[ -n "$PEER_SEED" ] || PEER_SEED=$(( (RANDOM << 15 | RANDOM) % 1000000000 ))
}

# Re-exec the calling script, with the arguments peer_parse saw, inside a
# private network namespace (root only).
peer_netns() {
	if [ "${RG_PEER_IN_NETNS:-}" = 1 ]; then
		ip link set lo up 2>/dev/null || true
		return 0
	fi
	if [ "$(id -u)" = 0 ] && [ "${RG_PEER_NO_NETNS:-}" != 1 ] &&
	   unshare -n true 2>/dev/null; then
		RG_PEER_IN_NETNS=1 RG_SEED=$PEER_SEED exec unshare -n "$BASH" "$0" \
			"${PEER_ORIG_ARGS[@]+"${PEER_ORIG_ARGS[@]}"}"
	fi
}

# The label of this run, for messages: plain, guard, off, ... (+provoke).
peer_label() {
	local l
	if [ -z "$PEER_PRELOAD" ]; then l=plain; else l="preload-$PEER_MODE"; fi
	[ -z "$PEER_PROVOKE" ] || l="$l+provoke=$PEER_PROVOKE"
	echo "$l"
}

peer_workdir() {
	if [ -z "$PEER_WORK" ]; then
		PEER_WORK=$(mktemp -d /var/tmp/rg-peer-"$PEER_NAME".XXXXXX)
	else
		mkdir -p "$PEER_WORK"
	fi
	PEER_WORK=$(cd "$PEER_WORK" && pwd)
	PEER_CLEAN=1
	trap peer_cleanup EXIT
}

PEER_PIDS=()
PEER_CLEAN=0
PEER_STATUS=FAIL
peer_cleanup() {
	local p
	for p in "${PEER_PIDS[@]}"; do
		kill "$p" 2>/dev/null || true
	done
	for p in "${PEER_PIDS[@]}"; do
		wait "$p" 2>/dev/null || true
	done
	if [ "$PEER_CLEAN" = 1 ] && [ "$PEER_KEEP" = 0 ] && [ "$PEER_STATUS" = PASS ]; then
		rm -rf "$PEER_WORK"
	elif [ -n "$PEER_WORK" ] && [ "$PEER_STATUS" != PASS ]; then
		# Keep the logs and stacks, not the data (--keep keeps all).
		[ "$PEER_KEEP" = 1 ] || rm -f "$PEER_WORK"/*.raw
		echo "$PEER_NAME: work directory kept: $PEER_WORK" >&2
	fi
}

# A CA, a server certificate (localhost, 127.0.0.1) and a client certificate,
# made with certtool now: DIR/{ca-cert,server-cert,server-key,client-cert,
# client-key}.pem (the layout nbdkit, libnbd and QEMU's tls-creds-x509 read).
peer_certs() {
	sh "$TESTS_DIR/qemu/mkcerts.sh" "$1"
}

# peer_env: the environment words for a program under test (for env(1)).
peer_env() {
	if [ -n "$PEER_PRELOAD" ]; then
		printf '%s\n' "LD_PRELOAD=$PEER_PRELOAD" "REKEYGUARD_MODE=$PEER_MODE" \
			"REKEYGUARD_LOG=debug"
		[ -z "$PEER_PROVOKE" ] || printf '%s\n' "REKEYGUARD_PROVOKE_REKEY=$PEER_PROVOKE"
	fi
}

# under_test CMD...: run CMD with the library (or plain), stdin untouched.
under_test() {
	local -a e=()
	mapfile -t e < <(peer_env)
	env -u LD_PRELOAD -u REKEYGUARD_MODE -u REKEYGUARD_LOG -u REKEYGUARD_PROVOKE_REKEY \
		"${e[@]}" "$@"
}

# peer_loaded_log FILE: did the library start in the process whose stderr
# went to FILE?  (REKEYGUARD_LOG=debug prints "GnuTLS x, REKEYGUARD_MODE=m"
# on the first GnuTLS call.)  Prints yes/no.
peer_loaded_log() {
	if grep -q "^rekeyguard: GnuTLS .*REKEYGUARD_MODE=" "$1" 2>/dev/null; then echo yes; else echo no; fi
}

# peer_loaded_pid PID: is the library mapped in a running process? yes/no
peer_loaded_pid() {
	if [ -n "$PEER_PRELOAD" ] && grep -qF "$PEER_PRELOAD" "/proc/$1/maps" 2>/dev/null; then
		echo yes
	else
		echo no
	fi
}

# Number of provoked key updates logged in FILE.
peer_keyupdates() {
	local n
	n=$(grep -c -E "^rekeyguard: provoked key update.*: 0$" "$1" 2>/dev/null) || true
	echo "${n:-0}"
}

# Wait until a TCP port or a file exists (up to $2 seconds, default 20).
peer_wait_port() {
	local port=$1 limit=${2:-20} i
	for ((i = 0; i < limit * 10; i++)); do
		if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
		sleep 0.1
	done
	echo "$PEER_NAME: nothing listens on 127.0.0.1:$port after ${limit}s" >&2
	return 1
}
peer_wait_file() {
	local f=$1 limit=${2:-20} i
	for ((i = 0; i < limit * 10; i++)); do
		[ -e "$f" ] && return 0
		sleep 0.1
	done
	echo "$PEER_NAME: $f did not appear after ${limit}s" >&2
	return 1
}

# A free TCP port on 127.0.0.1 (any port is free in a private namespace).
peer_port() {
	local base=$1 p
	if [ "${RG_PEER_IN_NETNS:-}" = 1 ]; then echo "$base"; return; fi
	for ((p = base; p < base + 500; p++)); do
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return; fi
	done
	echo "$base"
}

# A seeded pseudo-random file: peer_random FILE MB SEED (Python's
# random.Random(SEED).randbytes, 1 MiB at a time: ~1 s per 100 MB here).
peer_random() {
	local file=$1 mb=$2 seed=$3
	/usr/bin/python3 - "$file" "$mb" "$seed" <<'PY'
import random, sys
f, mb, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
r = random.Random(seed)
with open(f, "wb") as out:
    for _ in range(mb):
        out.write(r.randbytes(1 << 20))
PY
}

peer_dpkg_version() {
	dpkg-query -W -f='${Version}' "$1" 2>/dev/null || echo unknown
}

# peer_result PASS|FAIL key=value...: the verdict line, then exit.
peer_result() {
	local verdict=$1
	shift
	PEER_STATUS=$verdict
	echo "RESULT $PEER_NAME $verdict run=$(peer_label) seed=$PEER_SEED $*"
	[ "$verdict" = PASS ] && exit 0
	exit 1
}
