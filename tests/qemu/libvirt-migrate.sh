#!/bin/sh
# libvirt-migrate.sh — make libvirt-migrate: two libvirt hosts in namespaces
# on this machine, `virsh migrate --live --p2p --tls` between them with the
# rekeyguard launcher as <emulator> (tests/qemu/libvirt-migrate.py says
# what is checked).
#
#   tests/qemu/libvirt-migrate.sh           precopy and postcopy, both ways,
#                                           then 2 runs with the library off
#   tests/qemu/libvirt-migrate.sh --quick   one precopy each way, 1 run off
#   ... -- ARGS                             passed on to libvirt-migrate.py
#
# Needs root. Environment: RG_QEMU_KEEP=1 keeps the work directory (hosts'
# /etc, logs) even when everything passed. Installs libvirt-daemon-system,
# libvirt-clients, qemu-system-x86, gnutls-bin, iproute2 through
# tests/ensure-deps.sh.
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
TOP=$(cd "$HERE/../.." && pwd)

args=
while [ "$#" -gt 0 ]; do
	case $1 in
	--quick) args=--quick; shift ;;
	--help|-h) sed -n '2,/^set -eu/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
	--) shift; break ;;
	*) echo "libvirt-migrate.sh: unknown option '$1' (try --help)" >&2; exit 2 ;;
	esac
done
if [ "$(id -u)" != 0 ]; then
	echo "libvirt-migrate.sh: needs root (it makes network and mount namespaces and runs libvirtd)" >&2
	exit 2
fi

"$TOP/tests/ensure-deps.sh" libvirt-daemon-system libvirt-clients qemu-system-x86 gnutls-bin \
	iproute2 util-linux gcc binutils python3 make pkg-config libgnutls28-dev scdoc

# shellcheck source=SCRIPTDIR/workdir.sh
. "$HERE/workdir.sh"
rg_workdir rekeyguard-libvirt-migrate "libvirt-migrate.sh: hosts and logs"
chmod 755 "$work"

# rekeyguard as an operator installs it, into a staging root both hosts see
# as /usr/local
make -s -C "$TOP" install DESTDIR="$work/inst" PREFIX=/usr/local >"$work/install.log" 2>&1 ||
	{ cat "$work/install.log"; exit 1; }
chmod -R a+rX "$work/inst"
"$HERE/build-guest.sh" "$work/guest.elf"

set +e
python3 "$HERE/libvirt-migrate.py" --workdir "$work" --install "$work/inst" \
	--guest "$work/guest.elf" $args "$@"
status=$?
exit $status
