#!/bin/bash
# package-test.sh SUITE... — the Debian package (build/deb, from make deb)
# in clean Debian chroots: for each suite (bookworm, trixie), a fresh copy
# of a bare minbase system (tests/matrix/chroot.sh, MATRIX_PKGS=""), then
#   apt install ./rekeyguard_*.deb   (with its Recommends: QEMU, certtool)
#   man rekeyguard-inject, rekeyguard-status --prometheus
#   rekeyguard-selftest              (timed; must print PASS)
#   apt purge rekeyguard             (nothing of the package may be left)
# Prints one line per check and the self-test's own lines. Needs root.
# Environment: PACKAGE_CACHE (default /var/cache/rekeyguard-package) holds
# the base chroots, reused between runs.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ "$(id -u)" = 0 ] || { echo "package-test.sh: needs root (chroots)"; exit 2; }
[ $# -ge 1 ] || set -- bookworm trixie
deb=$(ls build/deb/rekeyguard_*_amd64.deb 2>/dev/null | tail -n 1)
[ -n "$deb" ] || { echo "package-test.sh: no build/deb/rekeyguard_*.deb (run make deb)"; exit 2; }
export MATRIX_CACHE=${PACKAGE_CACHE:-/var/cache/rekeyguard-package} MATRIX_PKGS=
failed=0
ok() { echo "  ok   $*"; }
no() { echo "  FAIL $*"; failed=1; }

for suite in "$@"; do
	echo "== $suite: $(basename "$deb")"
	tests/matrix/chroot.sh create "$suite"
	base=$(tests/matrix/chroot.sh path "$suite")
	run=$suite-pkgtest
	root=$(tests/matrix/chroot.sh path "$run")
	rm -rf --one-file-system "$root"
	cp -a "$base" "$root"
	trap 'rm -rf --one-file-system "$root"' EXIT
	cp "$deb" "$root/root/"
	inch() { tests/matrix/chroot.sh run "$run" "$@"; }

	t0=$(date +%s)
	if inch sh -c 'apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q /root/'"$(basename "$deb")"' man-db >/root/apt.log 2>&1'; then
		ok "apt install ./$(basename "$deb") ($(( $(date +%s) - t0 )) s, with QEMU $(inch sh -c 'dpkg-query -W -f="\${Version}" qemu-system-x86') and GnuTLS $(inch sh -c 'dpkg-query -W -f="\${Version}" "libgnutls30*"' | head -c 40))"
	else
		no "apt install"; tail -n 20 "$root/root/apt.log"; continue
	fi
	inch dpkg -L rekeyguard | sort > "$root.files"
	for f in /usr/lib/x86_64-linux-gnu/librekeyguard.so /usr/sbin/rekeyguard-inject \
		 /usr/sbin/rekeyguard-status /usr/sbin/rekeyguard-selftest \
		 /usr/libexec/rekeyguard/run-qemu-with-shim /usr/libexec/rekeyguard/qemu-system-x86_64 \
		 /usr/bin/run-qemu-with-shim /etc/rekeyguard/qemu.conf \
		 /etc/apparmor.d/abstractions/libvirt-qemu.d/rekeyguard; do
		grep -qx "$f" "$root.files" || no "the package lacks $f"
	done
	inch dpkg-query -W -f='${Conffiles}\n' rekeyguard | grep -q /etc/rekeyguard/qemu.conf &&
		ok "/etc/rekeyguard/qemu.conf is a conffile" || no "/etc/rekeyguard/qemu.conf is not a conffile"
	inch sh -c 'man -P cat rekeyguard-inject 2>/dev/null | grep -q "rekeyguard-inject - "' &&
		ok "man rekeyguard-inject" || no "man rekeyguard-inject"
	inch sh -c 'for p in rekeyguard rekeyguard-status rekeyguard-selftest run-qemu-with-shim; do man -w $p >/dev/null || exit 1; done' &&
		ok "man pages rekeyguard(7), rekeyguard-status(8), rekeyguard-selftest(8), run-qemu-with-shim(1)" ||
		no "a man page is missing"
	inch sh -c 'rekeyguard-status --prometheus | grep -qx "rekeyguard_scrape_success 1"' &&
		ok "rekeyguard-status --prometheus" || no "rekeyguard-status --prometheus"
	inch sh -c '/usr/libexec/rekeyguard/qemu-system-x86_64 --rekeyguard-check >/root/check.out 2>&1' &&
		ok "the libvirt emulator symlink: --rekeyguard-check" || { no "emulator --rekeyguard-check"; cat "$root/root/check.out"; }

	t0=$(date +%s)
	# Its work directory under /root (the chroot's /tmp is a tmpfs that goes
	# with each command), kept so that a failure shows the QEMU logs.
	if inch env TMPDIR=/root rekeyguard-selftest --keep > "$root.selftest" 2>&1; then
		sed 's/^/       /' "$root.selftest"
		ok "rekeyguard-selftest: PASS in $(( $(date +%s) - t0 )) s"
	else
		rc=$?
		sed 's/^/       /' "$root.selftest"
		for f in "$root"/root/rekeyguard-selftest.*/runs/*/*.log; do
			[ -e "$f" ] || continue
			echo "       --- ${f#"$root"}"; tail -n 15 "$f" | sed 's/^/       /'
		done
		no "rekeyguard-selftest (exit status $rc)"
	fi
	rm -rf "$root"/root/rekeyguard-selftest.*

	inch sh -c 'DEBIAN_FRONTEND=noninteractive apt-get purge -y -q rekeyguard >/root/purge.log 2>&1' &&
		ok "apt purge rekeyguard" || no "apt purge rekeyguard"
	left=
	while read -r f; do
		[ -d "$root$f" ] && continue    # directories other packages share
		[ -e "$root$f" ] || [ -L "$root$f" ] && left="$left $f"
	done < "$root.files"
	[ -e "$root/etc/rekeyguard" ] && left="$left /etc/rekeyguard"
	[ -e "$root/usr/lib/rekeyguard" ] && left="$left /usr/lib/rekeyguard"
	[ -e "$root/usr/libexec/rekeyguard" ] && left="$left /usr/libexec/rekeyguard"
	ls "$root/tmp" 2>/dev/null | grep -q rekeyguard && left="$left /tmp/rekeyguard-*"
	[ -z "$left" ] && ok "nothing of the package left after purge" || no "left after purge:$left"
	rm -rf --one-file-system "$root" "$root.files" "$root.selftest"
	trap - EXIT
done
[ "$failed" = 0 ] && echo "package-test: all checks passed" || echo "package-test: FAILED"
exit "$failed"
