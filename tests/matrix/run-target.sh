#!/bin/bash
# tests/matrix/run-target.sh — one column of the GnuTLS version matrix
# Runs INSIDE the target system (the host, or a Debian
# chroot made by chroot.sh), in a copy of the sources, against that system's
# GnuTLS.  Called by matrix.sh; usable by hand:
#
#   run-target.sh SRC OUT PLAIN_RUNS GUARD_RUNS [quick]
#
#   SRC         a copy of the repository (built here with make)
#   OUT         directory for logs and results (created)
#   PLAIN_RUNS  runs of each race scenario without the shim
#   GUARD_RUNS  runs of each scenario with the shim, REKEYGUARD_MODE=guard
#   quick       pass --quick to duplex and qemu-shape (shorter runs)
#
# Writes OUT/info (key=value), OUT/runs.tsv (one line per scenario run:
# mode scenario run result reason elapsed keyupdates) and OUT/logs/.
set -u

src=$1 out=$2 plain_runs=$3 guard_runs=$4 quick=${5:-}
mkdir -p "$out/logs"
info=$out/info runs=$out/runs.tsv
: > "$info"; : > "$runs"
say() { echo "[matrix $(cat "$out/target" 2>/dev/null)] $*" >&2; }
kv() { echo "$1=$2" >> "$info"; }

cd "$src" || exit 2

# ---------------------------------------------------------------- system
kv os "$(. /etc/os-release; echo "${PRETTY_NAME:-unknown}")"
kv gnutls_pkgconfig "$(pkg-config --modversion gnutls 2>/dev/null || echo none)"
pkgver=$(dpkg-query -W -f '${Package} ${Version}\n' 'libgnutls30*' 2>/dev/null | awk '$2 != "" {print $1 "=" $2}' | head -n1)
kv gnutls_package "${pkgver:-none}"
kv gcc "$(gcc -dumpfullversion 2>/dev/null || echo none)"

# ---------------------------------------------------------------- build
# Build against this system's GnuTLS.  The project builds with -Werror; a
# newer compiler's new warnings must not hide the matrix result, so on
# failure retry without -Werror and say so.
build="make -s --no-print-directory librekeyguard.so tests/rg-scenario tests/rg-differential"
if $build > "$out/logs/build.log" 2>&1; then
	kv build ok
else
	say "build with -Werror failed; retrying without -Werror (see logs/build.log)"
	mv "$out/logs/build.log" "$out/logs/build-werror.log"
	if $build WARN="-Wall -Wextra" > "$out/logs/build.log" 2>&1; then
		kv build ok-without-Werror
	else
		kv build FAILED
		say "build failed:"; tail -n 20 "$out/logs/build.log" >&2
		exit 1
	fi
fi
lib=$src/librekeyguard.so
scen=$src/tests/rg-scenario
diffp=$src/tests/rg-differential
kv needed "$(readelf -d "$lib" 2>/dev/null | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | tr '\n' ' ')"

# ---------------------------------------------------------------- helpers
# run_scenario MODE RUN SCENARIO ARGS...   MODE: plain, guard, auto
run_scenario() {
	local mode=$1 i=$2 name=$3; shift 3
	local tag="$mode.$name$(printf '%s' "$*" | tr -c 'a-z0-9' '_').$i"
	local env=()
	case $mode in
	plain) ;;
	guard) env=(LD_PRELOAD="$lib" REKEYGUARD_MODE=guard) ;;
	auto)  env=(LD_PRELOAD="$lib" REKEYGUARD_MODE=auto REKEYGUARD_NOTICE=on) ;;
	esac
	env "${env[@]}" timeout -s KILL 180 "$scen" "$name" "$@" \
		> "$out/logs/$tag.out" 2> "$out/logs/$tag.err"
	local rc=$? line result reason elapsed ku
	line=$(grep '^RESULT ' "$out/logs/$tag.out" | tail -n1)
	if [ -n "$line" ]; then
		result=$(echo "$line" | awk '{print $3}')
		reason=$(echo "$line" | sed -n 's/.* reason=\([^ ]*\).*/\1/p')
		elapsed=$(echo "$line" | sed -n 's/.* elapsed=\([^ ]*\).*/\1/p')
		ku=$(echo "$line" | sed -n 's/.* keyupdates=\([^ ]*\).*/\1/p')
		[ "$result" = PASS ] && [ "$rc" != 0 ] && { result=FAIL; reason="exit-$rc-after-PASS"; }
	elif [ "$rc" -gt 128 ]; then
		result=FAIL reason="signal-$(kill -l $((rc - 128)) 2>/dev/null || echo $((rc - 128)))" elapsed=-
	else
		result=FAIL reason="no-result-exit-$rc" elapsed=-
	fi
	[ -n "$reason" ] || reason=-
	local label=$name; [ $# -gt 0 ] && label="$name $*"
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$mode" "$label" "$i" "$result" "$reason" "${elapsed:--}" "${ku:--}" >> "$runs"
	say "$mode $label #$i: $result $reason elapsed=${elapsed:--} keyupdates=${ku:--}"
	# first line naming the runtime GnuTLS
	if ! grep -q '^gnutls_runtime=' "$info"; then
		local v; v=$(echo "$line" | sed -n 's/.* gnutls=\([^ ]*\).*/\1/p')
		[ -n "$v" ] && kv gnutls_runtime "$v"
	fi
}

q=(); [ -n "$quick" ] && q=(--quick)
RACE=("duplex ${q[*]}" "duplex --custom ${q[*]}" "autorekey --quick" "qemu-shape --keyupdates ${q[*]}")
# tinybuf --quick ends before the first forced KeyUpdate; the full run
# takes well under a second.
ALL=("${RACE[@]}" "tinybuf --keyupdates")

# ---------------------------------------------------------------- (a) guard
for s in "${ALL[@]}"; do
	for ((i = 1; i <= guard_runs; i++)); do
		# shellcheck disable=SC2086
		run_scenario guard "$i" $s
	done
done

# ---------------------------------------------------------------- differential
# diff_run TAG ENV...: transcript on stdout, last stderr line names the mode
diff_run() {
	local tag=$1; shift
	env "$@" timeout -s KILL 300 "$diffp" > "$out/logs/diff.$tag.out" 2> "$out/logs/diff.$tag.err"
	echo $? > "$out/logs/diff.$tag.rc"
}
diff_run plain
diff_run guard LD_PRELOAD="$lib" REKEYGUARD_MODE=guard
# REKEYGUARD_NOTICE=on: the notice (off by default outside QEMU) names the mode.
diff_run auto LD_PRELOAD="$lib" REKEYGUARD_MODE=auto REKEYGUARD_NOTICE=on
kv diff_cases "$("$diffp" --list 2>/dev/null | wc -l)"
kv diff_lines "$(wc -l < "$out/logs/diff.plain.out")"
for t in plain guard auto; do
	kv "diff_${t}_rc" "$(cat "$out/logs/diff.$t.rc")"
	kv "diff_${t}_last" "$(tail -n1 "$out/logs/diff.$t.err")"
done
for t in guard auto; do
	if cmp -s "$out/logs/diff.plain.out" "$out/logs/diff.$t.out"; then
		kv "diff_${t}_transcript" identical
	else
		kv "diff_${t}_transcript" DIFFER
	fi
	kv "diff_${t}_mode" "$(tail -n1 "$out/logs/diff.$t.err" | sed -n 's/.*shim_active_mode=\([^ ]*\).*/\1/p')"
done
kv auto_notice "$(grep -h '^rekeyguard:' "$out/logs/diff.auto.err" | head -n1)"

# ---------------------------------------------------------------- (b) auto
# One race scenario in auto mode: guard (old GnuTLS) or keyupdate (3.8.11+).
run_scenario auto 1 duplex "${q[@]}"
kv auto_scenario_notice "$(grep -h '^rekeyguard:' "$out/logs/auto.duplex"*.1.err | head -n1)"

# ---------------------------------------------------------------- (c) plain
for s in "${RACE[@]}"; do
	for ((i = 1; i <= plain_runs; i++)); do
		# shellcheck disable=SC2086
		run_scenario plain "$i" $s
	done
done
say "done"
exit 0
