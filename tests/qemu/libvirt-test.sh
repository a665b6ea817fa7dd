#!/bin/sh
# test.sh — check the libvirt examples in this directory.
#
#   1. both domain XML files validate (virt-xml-validate, libvirt-clients);
#   2. the AppArmor rules parse (apparmor_parser -Q, no kernel needed);
#   3. selinux-fcontext.sh is valid sh (SELinux itself is not available here);
#   4. live, unless RG_LIBVIRT_LIVE=0: libvirt's embedded QEMU driver
#      (qemu:///embed, no daemon, private root directory) defines and starts
#      both example domains booting the test guest, (a) with the launcher as
#      <emulator> (libvirt also runs it to probe QEMU's capabilities) and
#      (b) with <qemu:env name='LD_PRELOAD'>; each running QEMU must have
#      librekeyguard.so mapped and its guest must run.
#
# As root the embedded driver runs as "nobody": as root it would insist on
# the libvirt-qemu user of libvirt-daemon-system, which this test does not
# install. Needs libvirt-clients libvirt-daemon libvirt-daemon-driver-qemu
# qemu-system-x86 apparmor (installed through tests/ensure-deps.sh).
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
TOP=$(cd "$HERE/../.." && pwd)
EXAMPLES=$TOP/examples/libvirt   # what this checks
LIB=$TOP/librekeyguard.so

pass=0
failed=0
ok() { pass=$((pass + 1)); echo "ok   - $1"; }
no() { failed=$((failed + 1)); echo "FAIL - $1"; [ -n "${2-}" ] && [ -f "$2" ] && sed 's/^/       /' "$2"; }

pkgs="libvirt-clients apparmor"
[ "${RG_LIBVIRT_LIVE:-1}" = 0 ] || pkgs="$pkgs libvirt-daemon libvirt-daemon-driver-qemu qemu-system-x86 gcc binutils"
"$TOP/tests/ensure-deps.sh" $pkgs || exit 2
[ -r "$LIB" ] || make -s -C "$TOP" librekeyguard.so || exit 2

T=$(mktemp -d "${TMPDIR:-/tmp}/rekeyguard-libvirt.XXXXXX")
vpid=
cleanup() {
	for f in "$T"/root/run/qemu/*.pid "$T"/root/*/*/*.pid; do   # the domains' QEMUs
		[ -f "$f" ] && kill -9 "$(cat "$f")" 2>/dev/null
	done
	[ -n "$vpid" ] && kill -9 "$vpid" 2>/dev/null
	if [ "$failed" = 0 ] || [ "${RG_QEMU_KEEP:-0}" != 1 ]; then rm -rf "$T"; else echo "kept: $T"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

# 1. schemas
for x in "$EXAMPLES"/domain-*.xml; do
	if virt-xml-validate "$x" domain >"$T/v.out" 2>&1; then ok "virt-xml-validate ${x##*/}"; else no "virt-xml-validate ${x##*/}" "$T/v.out"; fi
done

# 2. AppArmor rules inside a profile, as libvirt's per-domain profile includes them
printf 'profile rekeyguard-libvirt-test {\n  #include "%s"\n}\n' "$EXAMPLES/apparmor-libvirt-qemu" > "$T/aa.profile"
if apparmor_parser -Q -K "$T/aa.profile" >"$T/aa.out" 2>&1; then ok "apparmor_parser accepts apparmor-libvirt-qemu"
else no "apparmor_parser accepts apparmor-libvirt-qemu" "$T/aa.out"; fi

# 3. SELinux commands (syntax only)
if sh -n "$EXAMPLES/selinux-fcontext.sh" 2>"$T/se.out"; then ok "selinux-fcontext.sh is valid sh"; else no "selinux-fcontext.sh is valid sh" "$T/se.out"; fi

# 4. live
if [ "${RG_LIBVIRT_LIVE:-1}" = 0 ]; then
	echo "skip - live libvirt (RG_LIBVIRT_LIVE=0)"
else
	chmod 755 "$T"
	mkdir -p "$T/emu" "$T/root"
	"$TOP/tests/qemu/build-guest.sh" "$T/guest.elf"
	cp "$TOP/run-qemu-with-shim.sh" "$T/emu/qemu-system-x86_64"
	cp "$LIB" "$T/emu/librekeyguard.so"
	echo "QEMU=$(command -v qemu-system-x86_64)" > "$T/emu/rekeyguard-qemu.conf"
	chmod -R a+rX "$T"
	run_as=
	if [ "$(id -u)" = 0 ]; then
		chown -R nobody "$T/root"
		run_as="runuser -u nobody --"
	fi
	sed -e "s|/usr/local/libexec/rekeyguard/qemu-system-x86_64|$T/emu/qemu-system-x86_64|" \
	    -e "s|/var/lib/libvirt/images/rekeyguard-guest.elf|$T/guest.elf|" \
	    -e "s|<name>rekeyguard-|<name>rgtest-$$-|" \
	    "$EXAMPLES/domain-emulator.xml" > "$T/a.xml"
	sed -e "s|/usr/local/lib/x86_64-linux-gnu/librekeyguard.so|$T/emu/librekeyguard.so|" \
	    -e "s|/var/lib/libvirt/images/rekeyguard-guest.elf|$T/guest.elf|" \
	    -e "s|<name>rekeyguard-|<name>rgtest-$$-|" \
	    "$EXAMPLES/domain-qemu-env.xml" > "$T/b.xml"
	chmod a+r "$T"/*.xml

	# one virsh, fed commands through a FIFO, keeps the embedded driver alive
	mkfifo "$T/virsh.in"
	$run_as env HOME="$T/root" timeout 120 virsh -c "qemu:///embed?root=$T/root" \
		<"$T/virsh.in" >>"$T/virsh.out" 2>&1 &
	vpid=$!
	exec 3>"$T/virsh.in"

	live_domain() {  # WAY XML NAME
		way=$1 xml=$2 name=$3
		echo "define $xml" >&3
		echo "start $name" >&3
		qpid=
		for _ in $(seq 1 120); do
			f=$(find "$T/root" -name "$name.pid" 2>/dev/null | head -n 1)
			[ -n "$f" ] && qpid=$(cat "$f" 2>/dev/null) && [ -n "$qpid" ] && [ -d "/proc/$qpid" ] && break
			qpid=
			sleep 0.25
		done
		if [ -z "$qpid" ]; then
			no "libvirt ($way) starts the domain" "$T/virsh.out"
			find "$T/root" -name "$name.log" -exec tail -n 20 {} \; 2>/dev/null
			return
		fi
		ok "libvirt ($way) starts the domain (QEMU pid $qpid)"
		if grep -q "/librekeyguard.so" "/proc/$qpid/maps"; then
			ok "libvirt ($way): /proc/$qpid/maps shows librekeyguard.so"
		else
			no "libvirt ($way): /proc/$qpid/maps shows librekeyguard.so"
		fi
		# the guest runs: its status block carries the magic "RGG1" and passes advance
		booted=no
		for _ in $(seq 1 60); do
			echo "qemu-monitor-command $name --hmp 'xp /3wx 0x180000'" >&3
			sleep 1
			if grep -q "00180000: 0x31474752 0x00000001 0x" "$T/virsh.out"; then
				booted=yes
				break
			fi
		done
		if [ "$booted" = yes ]; then
			ok "libvirt ($way): the guest runs"
		else
			no "libvirt ($way): the guest runs" "$T/virsh.out"
		fi
		echo "destroy $name" >&3
		echo "undefine $name" >&3
	}
	live_domain "a: launcher as <emulator>" "$T/a.xml" "rgtest-$$-emulator"
	# forget domain a's output before domain b looks for its guest's magic
	cat "$T/virsh.out" >> "$T/virsh.log"; : > "$T/virsh.out"
	live_domain "b: qemu:env LD_PRELOAD" "$T/b.xml" "rgtest-$$-qemu-env"
	echo "quit" >&3
	exec 3>&-
	wait "$vpid"
	vpid=
fi

echo "libvirt test: $pass passed, $failed failed"
[ "$failed" = 0 ]
