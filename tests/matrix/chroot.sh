#!/bin/sh
# tests/matrix/chroot.sh — Debian chroots for the GnuTLS version matrix.
# Packages come only from Debian's archive.
#
#   chroot.sh create SUITE     debootstrap SUITE (once; reused afterwards)
#   chroot.sh run SUITE CMD..  run CMD inside SUITE's chroot, in a private
#                              mount namespace with /proc, /dev, /dev/pts
#                              (mounts vanish when CMD exits)
#   chroot.sh path SUITE       print the chroot directory
#   chroot.sh remove SUITE     delete the chroot
#
# Environment:
#   MATRIX_CACHE   cache directory (default /var/cache/rekeyguard-matrix)
#   MATRIX_MIRROR  Debian mirror (default: the host's deb.debian.org URI)
#   MATRIX_PKGS    packages debootstrap adds (comma-separated; default: the
#                  build and test tools; empty: a bare minbase system)
#
# Needs root and debootstrap (installed with apt-get when missing).
set -eu

CACHE=${MATRIX_CACHE:-/var/cache/rekeyguard-matrix}
MIRROR=${MATRIX_MIRROR:-http://deb.debian.org/debian}
# What the chroot needs to build and run the shim and its test programs;
# MATRIX_PKGS="" gives a bare minbase system (the package test).
PKGS=${MATRIX_PKGS-gcc,make,pkg-config,libc6-dev,libgnutls28-dev,check,binutils}

die() { echo "chroot.sh: $*" >&2; exit 2; }

[ "$(id -u)" = 0 ] || die "must run as root (debootstrap, chroot, mount)"
[ $# -ge 2 ] || die "usage: chroot.sh create|run|path|remove SUITE [CMD...]"
cmd=$1 suite=$2
shift 2
case $suite in *[!a-z0-9-]*|'') die "bad suite name '$suite'";; esac
root=$CACHE/$suite

# apt options: sid's Release file may be past Valid-Until on a snapshot.
APT_OPTS="-o Acquire::Check-Valid-Until=false -o APT::Install-Recommends=false"

case $cmd in
path)
	echo "$root"
	;;
create)
	mkdir -p "$CACHE"
	# One creator per suite: a second matrix run waits instead of deleting
	# a chroot that is still being made.
	if [ -z "${MATRIX_CHROOT_LOCKED:-}" ]; then
		MATRIX_CHROOT_LOCKED=1 exec flock "$CACHE/$suite.lock" "$0" create "$suite"
	fi
	if [ -f "$root/.matrix-ready" ]; then
		echo "chroot.sh: $suite: reusing $root" >&2
		exit 0
	fi
	command -v debootstrap >/dev/null 2>&1 || {
		echo "chroot.sh: installing debootstrap" >&2
		apt-get install -y debootstrap >&2
	}
	mkdir -p "$CACHE"
	if [ -d "$root" ]; then
		echo "chroot.sh: $suite: removing incomplete $root" >&2
		rm -rf --one-file-system "$root"
	fi
	log=$CACHE/$suite.debootstrap.log
	echo "chroot.sh: $suite: debootstrap --variant=minbase from $MIRROR (log $log)" >&2
	if ! debootstrap --variant=minbase ${PKGS:+--include="$PKGS"} "$suite" "$root" "$MIRROR" >"$log" 2>&1; then
		tail -n 20 "$log" >&2
		die "$suite: debootstrap failed (full log: $log)"
	fi
	# Later apt use inside the chroot (updates) tolerates an expired sid Release.
	echo 'Acquire::Check-Valid-Until "false";' > "$root/etc/apt/apt.conf.d/99matrix-valid-until"
	touch "$root/.matrix-ready"
	echo "chroot.sh: $suite: ready" >&2
	;;
run)
	[ -f "$root/.matrix-ready" ] || die "$suite: no chroot at $root (run: chroot.sh create $suite)"
	[ $# -ge 1 ] || die "run: no command"
	exec unshare --mount --propagation private -- sh -eu -c '
		r=$1; shift
		mount -t proc proc "$r/proc"
		mount --rbind /dev "$r/dev"
		mount -t tmpfs tmpfs "$r/tmp"
		exec chroot "$r" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 "$@"
	' sh "$root" "$@"
	;;
remove)
	rm -rf --one-file-system "$root"
	;;
*)
	die "unknown command '$cmd'"
	;;
esac
