#!/bin/sh
# SELinux (sVirt) labels for rekeyguard with libvirt. Run as root on every
# host that runs or receives the domains; needs policycoreutils
# (semanage, restorecon).
#
# Way (a) works under sVirt: libvirt execs the launcher, the domain
# transition into svirt_t happens on that exec (it must be labelled
# qemu_exec_t), and the launcher's own exec of QEMU stays in svirt_t, so
# AT_SECURE is not set there and LD_PRELOAD with a path is honoured.
# Way (b) (<qemu:env name='LD_PRELOAD'>) does nothing under sVirt: the
# transition sets AT_SECURE and glibc ignores preload paths with a slash.
set -eu
PREFIX=${PREFIX:-/usr/local}

# the launcher under its QEMU-like name, and the installed launcher
semanage fcontext -a -t qemu_exec_t "$PREFIX/libexec/rekeyguard/qemu-system-.*"
semanage fcontext -a -t qemu_exec_t "$PREFIX/bin/run-qemu-with-shim"
# the library: an ordinary shared library
semanage fcontext -a -t lib_t "$PREFIX/lib(64)?(/[^/]+)?/librekeyguard\.so"
# the configuration file
semanage fcontext -a -t etc_t "/etc/rekeyguard(/.*)?"

restorecon -Rv "$PREFIX/libexec/rekeyguard" "$PREFIX/bin/run-qemu-with-shim" /etc/rekeyguard
restorecon -v "$PREFIX"/lib*/librekeyguard.so "$PREFIX"/lib*/*/librekeyguard.so 2>/dev/null || true

# Check: ls -Z shows qemu_exec_t / lib_t; a running domain maps the library:
#   grep librekeyguard /proc/$(pgrep -f 'guest=NAME')/maps
