#!/bin/sh
# launcher-test.sh — tests of run-qemu-with-shim.sh (a few seconds).
#
# A fake QEMU (a shell script) reports its PID, arguments and LD_PRELOAD, so
# most cases need no QEMU at all; the last ones use the real
# qemu-system-x86_64 when it is installed (--check, /proc/PID/maps).
# Run from anywhere; exits non-zero if a case fails.
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
TOP=$(cd "$HERE/../.." && pwd)
LAUNCHER=$TOP/run-qemu-with-shim.sh
LIB=$TOP/librekeyguard.so
T=$(mktemp -d)
qpid=
trap '[ -n "$qpid" ] && kill -9 "$qpid" 2>/dev/null; rm -rf "$T"' EXIT INT TERM

pass=0
failed=0
ok() { pass=$((pass + 1)); echo "ok   - $1"; }
no() { failed=$((failed + 1)); echo "FAIL - $1"; [ -n "${2-}" ] && sed 's/^/       /' "$2"; }
check() {  # check NAME COMMAND... : COMMAND exit 0 = pass; output kept in $T/out
	name=$1; shift
	if "$@" >"$T/check.out" 2>&1; then ok "$name"; else no "$name" "$T/check.out"; fi
}

[ -r "$LIB" ] || { echo "launcher-test: build $LIB first (make)" >&2; exit 2; }

# The fake QEMU: prints what it got, exits 42.
cat > "$T/fake-qemu" <<'EOF'
#!/bin/sh
echo "pid=$$"
echo "preload=${LD_PRELOAD-}"
for a in "$@"; do echo "arg=[$a]"; done
[ -n "${FAKE_QEMU_MARK-}" ] && : > "$FAKE_QEMU_MARK"
exit 42
EOF
chmod +x "$T/fake-qemu"
unset LD_PRELOAD REKEYGUARD_QEMU REKEYGUARD_QEMU_CONF REKEYGUARD_MODE REKEYGUARD_LOG
export REKEYGUARD_QEMU_CONF="$T/no-such.conf"   # never read the host's /etc file

# --help
check "--help exits 0 and shows the usage" sh -c "'$LAUNCHER' --help | grep -q '^usage: '"

# direct use: exec, arguments, exit status, LD_PRELOAD first
"$LAUNCHER" "$T/fake-qemu" -name 'a b' '' -x >"$T/run.out" 2>"$T/run.err" &
lpid=$!
wait "$lpid"
rc=$?
check "exit status is QEMU's (42)" test "$rc" = 42
check "exec: QEMU runs with the launcher's PID" grep -qx "pid=$lpid" "$T/run.out"
check "arguments pass through untouched" sh -c "grep '^arg=' '$T/run.out' | tr '\n' '|' | grep -qxF 'arg=[-name]|arg=[a b]|arg=[]|arg=[-x]|'"
check "LD_PRELOAD is exactly the library" grep -qx "preload=$LIB" "$T/run.out"
check "no output on stderr by default" test ! -s "$T/run.err"

LD_PRELOAD=libm.so.6 "$LAUNCHER" "$T/fake-qemu" >"$T/run.out" 2>"$T/run.err"
check "prepends to an existing LD_PRELOAD" grep -qx "preload=$LIB libm.so.6" "$T/run.out"

LD_PRELOAD="$LIB:libm.so.6" "$LAUNCHER" "$T/fake-qemu" >"$T/run.out" 2>"$T/run.err"
check "already preloaded: loaded once, first" grep -qx "preload=$LIB libm.so.6" "$T/run.out"
check "already preloaded: warns on stderr" grep -q "^rekeyguard: .*LD_PRELOAD already contained" "$T/run.err"

( cd "$TOP" && "$LAUNCHER" --lib ./librekeyguard.so "$T/fake-qemu" ) >"$T/run.out" 2>&1
check "--lib with a relative path is made absolute" grep -qx "preload=$LIB" "$T/run.out"

# failures: never a silent unprotected start
export FAKE_QEMU_MARK="$T/started"
expect_refusal() {  # NAME COMMAND...
	name=$1; shift
	rm -f "$FAKE_QEMU_MARK"
	"$@" >"$T/ref.out" 2>&1
	rc=$?
	if [ "$rc" = 125 ] && [ ! -e "$FAKE_QEMU_MARK" ] && grep -q '^rekeyguard: ' "$T/ref.out"; then
		ok "$name"
	else
		echo "exit $rc, started: $([ -e "$FAKE_QEMU_MARK" ] && echo yes || echo no)" >> "$T/ref.out"
		no "$name" "$T/ref.out"
	fi
}
expect_refusal "missing --lib: error, QEMU not started" "$LAUNCHER" --lib "$T/nope.so" "$T/fake-qemu"
mkdir "$T/dir.so"
expect_refusal "--lib not a regular file: error" "$LAUNCHER" --lib "$T/dir.so" "$T/fake-qemu"
mkdir "$T/alone"
cp "$LAUNCHER" "$T/alone/run-qemu-with-shim.sh"
expect_refusal "no library next to an uninstalled launcher: error" "$T/alone/run-qemu-with-shim.sh" "$T/fake-qemu"
expect_refusal "unknown option: error" "$LAUNCHER" --bogus "$T/fake-qemu"
expect_refusal "QEMU binary not found: error" "$LAUNCHER" "$T/no-such-qemu"
if [ "$(id -u)" != 0 ]; then
	cp "$LIB" "$T/unreadable.so"; chmod 000 "$T/unreadable.so"
	expect_refusal "unreadable library: error" "$LAUNCHER" --lib "$T/unreadable.so" "$T/fake-qemu"
fi

# installed copy: `make install` substitutes the library directory
if make -s -C "$TOP" install PREFIX="$T/prefix" LIBDIR="$T/prefix/lib" >"$T/install.out" 2>&1; then
	"$T/prefix/bin/run-qemu-with-shim" "$T/fake-qemu" >"$T/run.out" 2>&1
	check "installed launcher finds the installed library" grep -qx "preload=$T/prefix/lib/librekeyguard.so" "$T/run.out"
else
	no "make install PREFIX=... works" "$T/install.out"
fi
check "uninstalled launcher ignores the placeholder" sh -c "'$LAUNCHER' --check '$T/fake-qemu' | grep -q 'next to the launcher'"

# a QEMU that passes the checks but cannot be executed: the shell's 126
printf '\177ELF but not a program' > "$T/bad-format"   # binary: no shell fallback
chmod +x "$T/bad-format"
"$LAUNCHER" "$T/bad-format" >"$T/run.out" 2>&1
rc=$?
check "exec failure: the shell's status 126, as env(1)" test "$rc" = 126
# libvirt <emulator> mode: installed under a QEMU-like name
mkdir "$T/emu"
cp "$LAUNCHER" "$T/emu/qemu-system-x86_64"
ln -s "$LIB" "$T/emu/librekeyguard.so"
unset FAKE_QEMU_MARK
REKEYGUARD_QEMU="$T/fake-qemu" "$T/emu/qemu-system-x86_64" --help -S >"$T/run.out" 2>&1
rc=$?
check "emulator mode: REKEYGUARD_QEMU is run, options untouched" sh -c "test $rc = 42 && grep -qx 'arg=\[--help\]' '$T/run.out' && grep -qx 'arg=\[-S\]' '$T/run.out'"
check "emulator mode: library next to it preloaded" grep -qx "preload=$T/emu/librekeyguard.so" "$T/run.out"
printf '# test\nQEMU="%s"\n' "$T/fake-qemu" > "$T/qemu.conf"
REKEYGUARD_QEMU_CONF="$T/qemu.conf" "$T/emu/qemu-system-x86_64" -machine none >"$T/run.out" 2>&1
check "emulator mode: QEMU= from the configuration file" sh -c "grep -qx 'arg=\[-machine\]' '$T/run.out' && grep -qx 'preload=$T/emu/librekeyguard.so' '$T/run.out'"
printf 'QEMU=%s\nLIB=%s\n' "$T/fake-qemu" "$LIB" > "$T/qemu2.conf"
mkdir "$T/emu2"; cp "$LAUNCHER" "$T/emu2/qemu-kvm"
REKEYGUARD_QEMU_CONF="$T/qemu2.conf" "$T/emu2/qemu-kvm" >"$T/run.out" 2>&1
check "emulator mode (qemu-kvm): LIB= from the configuration file" grep -qx "preload=$LIB" "$T/run.out"
mkdir "$T/emu3"; cp "$LAUNCHER" "$T/emu3/qemu-system-x86_64"
printf 'QEMU=%s\nLIB=%s\n' "$T/fake-qemu" "$LIB" > "$T/emu3/rekeyguard-qemu.conf"
env -u REKEYGUARD_QEMU_CONF "$T/emu3/qemu-system-x86_64" -S >"$T/run.out" 2>&1
check "emulator mode: rekeyguard-qemu.conf next to the launcher" sh -c "grep -qx 'arg=\[-S\]' '$T/run.out' && grep -qx 'preload=$LIB' '$T/run.out'"
# the library's settings from the file reach QEMU; the environment wins
printf '#!/bin/sh\necho "mode=${REKEYGUARD_MODE-unset} provoke=${REKEYGUARD_PROVOKE_REKEY-unset} log=${REKEYGUARD_LOG-unset}"\n' > "$T/env-qemu"
chmod +x "$T/env-qemu"
printf 'QEMU=%s\nREKEYGUARD_MODE=guard\nREKEYGUARD_PROVOKE_REKEY = "1000"\nREKEYGUARD_MODE=off\n' "$T/env-qemu" > "$T/qemu4.conf"
REKEYGUARD_QEMU_CONF="$T/qemu4.conf" "$T/emu/qemu-system-x86_64" >"$T/run.out" 2>&1
check "emulator mode: REKEYGUARD_* from the file reach QEMU (a later line wins)" grep -qx 'mode=off provoke=1000 log=unset' "$T/run.out"
REKEYGUARD_MODE=guard REKEYGUARD_QEMU_CONF="$T/qemu4.conf" "$T/emu/qemu-system-x86_64" >"$T/run.out" 2>&1
check "emulator mode: the environment wins over the file" grep -qx 'mode=guard provoke=1000 log=unset' "$T/run.out"
if command -v qemu-system-x86_64 >/dev/null 2>&1; then
	sed "s|^QEMU=.*|QEMU=$(command -v qemu-system-x86_64)|" "$T/qemu4.conf" > "$T/qemu6.conf"
	REKEYGUARD_QEMU_CONF="$T/qemu6.conf" "$T/emu/qemu-system-x86_64" --rekeyguard-check >"$T/run.out" 2>&1
	check "emulator mode: --rekeyguard-check names the file as the settings' origin" sh -c "grep -qx 'mode: *off (REKEYGUARD_MODE from $T/qemu6.conf)' '$T/run.out' && grep -q '^provocation: *REKEYGUARD_PROVOKE_REKEY=1000 from $T/qemu6.conf' '$T/run.out'"
fi
printf 'QEMU=%s\nREKEYGUARD_BOGUS=1\n' "$T/env-qemu" > "$T/qemu5.conf"
REKEYGUARD_QEMU_CONF="$T/qemu5.conf" "$T/emu/qemu-system-x86_64" >"$T/run.out" 2>"$T/run.err"
check "emulator mode: an unknown setting gives one rekeyguard: line naming the known ones" sh -c "test \$(wc -l < '$T/run.err') = 1 && grep -q \"^rekeyguard: .*unknown setting 'REKEYGUARD_BOGUS' ignored (known: QEMU, LIB, REKEYGUARD_MODE\" '$T/run.err' && grep -qx 'mode=unset provoke=unset log=unset' '$T/run.out'"
export FAKE_QEMU_MARK="$T/started"
expect_refusal "emulator mode without a configured QEMU: error" "$T/emu/qemu-system-x86_64" -S
expect_refusal "emulator mode pointing at itself: error" env REKEYGUARD_QEMU="$T/emu/qemu-system-x86_64" "$T/emu/qemu-system-x86_64" -S
REKEYGUARD_QEMU="$T/fake-qemu" "$T/emu/qemu-system-x86_64" --rekeyguard-check >"$T/run.out" 2>&1
check "emulator mode: --rekeyguard-check" sh -c "grep -q '^launcher: .*emulator' '$T/run.out' && test ! -e '$FAKE_QEMU_MARK'"
unset FAKE_QEMU_MARK

# --check
"$LAUNCHER" --check "$T/fake-qemu" >"$T/run.out" 2>&1
check "--check on a program without GnuTLS" grep -q '^QEMU GnuTLS:  none' "$T/run.out"
QEMU=$(command -v qemu-system-x86_64 || true)
if [ -n "$QEMU" ]; then
	"$LAUNCHER" --check qemu-system-x86_64 -m 64 >"$T/run.out" 2>&1
	check "--check names the library and QEMU's GnuTLS" sh -c "grep -q '^library: *$LIB' '$T/run.out' && grep -q '^QEMU GnuTLS: *[^ ]*libgnutls' '$T/run.out'"
	gv=$(sed -n 's/^QEMU GnuTLS: .*(\([0-9.]*\))$/\1/p' "$T/run.out")
	case $gv in
	3.[0-7].*|3.8.[0-9]|3.8.10) want="yes, every GnuTLS call serialised" ;;
	'') want="yes, decided at run time" ;;
	*) want="yes, key changes serialised" ;;
	esac
	check "--check: auto mode guards GnuTLS $gv: $want" grep -q "^guarding: *$want" "$T/run.out"
	REKEYGUARD_MODE=OFF "$LAUNCHER" --check qemu-system-x86_64 >"$T/run.out" 2>&1
	check "--check honours REKEYGUARD_MODE=off" grep -q '^guarding: *no: REKEYGUARD_MODE=off' "$T/run.out"
	REKEYGUARD_MODE=guard "$LAUNCHER" --check qemu-system-x86_64 >"$T/run.out" 2>&1
	check "--check honours REKEYGUARD_MODE=guard" grep -q '^guarding: *yes' "$T/run.out"

	# a real QEMU through the launcher has the library mapped (the operator's check)
	"$LAUNCHER" qemu-system-x86_64 -S -nodefaults -display none -machine none \
		>"$T/qemu.out" 2>&1 &
	qpid=$!
	mapped=no
	for _ in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do
		if grep -q "$LIB" "/proc/$qpid/maps" 2>/dev/null; then mapped=yes; break; fi
		sleep 0.25
	done
	comm=$(cat "/proc/$qpid/comm" 2>/dev/null)
	kill -9 "$qpid" 2>/dev/null; wait "$qpid" 2>/dev/null; qpid=
	check "real QEMU: launcher PID is QEMU ($comm) and /proc/PID/maps shows the library" test "$mapped-$comm" = "yes-qemu-system-x86"
else
	echo "skip - qemu-system-x86_64 not installed: --check and /proc/PID/maps cases"
fi

echo "launcher-test: $pass passed, $failed failed"
[ "$failed" = 0 ]
