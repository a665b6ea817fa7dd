#!/bin/sh
# build-guest.sh OUT.elf — build the smoke-test guest (guest/) with the
# plain Debian gcc and binutils: -m32 -ffreestanding -nostdlib needs no
# multilib packages because the guest uses no C library at all.
set -eu
out=${1:?usage: build-guest.sh OUT.elf}
src=$(cd "$(dirname "$0")/guest" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
CFLAGS="-m32 -march=i686 -ffreestanding -nostdlib -fno-pic -fno-pie -fno-stack-protector
        -fno-asynchronous-unwind-tables -mgeneral-regs-only -O2 -Wall -Wextra -Werror"
${CC:-gcc} $CFLAGS -c "$src/boot.S" -o "$tmp/boot.o"
${CC:-gcc} $CFLAGS -c "$src/guest.c" -o "$tmp/guest.o"
${LD:-ld} -m elf_i386 -nostdlib --no-warn-rwx-segments -T "$src/guest.ld" -o "$out" "$tmp/boot.o" "$tmp/guest.o"
