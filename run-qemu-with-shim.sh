#!/bin/sh
# run-qemu-with-shim.sh — start QEMU with librekeyguard.so preloaded.
#
#   run-qemu-with-shim.sh [--lib PATH] [--check] [--] QEMU_BINARY [QEMU_ARGS...]
#
# Finds librekeyguard.so (--lib PATH, else next to this script, else the
# directory `make install` wrote below), puts it first in LD_PRELOAD and
# execs QEMU, so the PID, signals, stdio and exit status are QEMU's own. A
# missing or unreadable library is an error: QEMU is never started
# unprotected by accident.
#
# Installed under a QEMU-like name (qemu-system-*, qemu-kvm), for example as
# a libvirt <emulator>, it takes no options of its own: it execs the real
# QEMU named by REKEYGUARD_QEMU or by QEMU= in the configuration file with
# all arguments untouched. The configuration file is REKEYGUARD_QEMU_CONF,
# else rekeyguard-qemu.conf next to the launcher, else
# /etc/rekeyguard/qemu.conf (libvirt clears the environment of the QEMU it
# starts, so the file is what works there). There, --rekeyguard-check as the only argument does
# what --check does. The file may also set the library's REKEYGUARD_MODE,
# REKEYGUARD_LOG, REKEYGUARD_NOTICE and REKEYGUARD_PROVOKE_REKEY for the
# QEMU it starts (the environment, where it reaches the launcher, wins).
#
# Exit status: QEMU's, or 125 when the launcher itself fails (bad option,
# library missing or unreadable, no real QEMU configured), or the shell's
# 126/127 when the exec of QEMU itself fails.
# POSIX sh. Starting QEMU runs no other program (readlink only when the
# launcher is a symlink), so a confined launcher (AppArmor, SELinux) needs
# nothing but its shell; --check also uses ldd, sed, cut, grep, dpkg-query
# or rpm.

# Replaced by `make install` (sed); left as is, the placeholder is ignored.
RG_LIBDIR=@LIBDIR@
RG_LIBNAME=librekeyguard.so
RG_CONF_DEFAULT=/etc/rekeyguard/qemu.conf
# The first GnuTLS release with the key-update rework (auto: keyupdate
# mode): REKEYGUARD_GNUTLS_REWORKED in include/rekeyguard.h, substituted by
# `make install`; in the source tree read from the header beside the script.
RG_FIXED_GNUTLS=@GNUTLS_REWORKED@
case $RG_LIBDIR in *@*) RG_LIBDIR= ;; esac   # not installed: no prefix
case $RG_FIXED_GNUTLS in *@*)
	RG_FIXED_GNUTLS=$(sed -n 's/^#define REKEYGUARD_GNUTLS_REWORKED "\(.*\)"$/\1/p' \
		"$(dirname -- "$0")/include/rekeyguard.h" 2>/dev/null)
	RG_FIXED_GNUTLS=${RG_FIXED_GNUTLS:-unknown} ;;
esac

rg_prog=${0##*/}

rg_say() { printf 'rekeyguard: %s\n' "$*" >&2; }
rg_die() { rg_say "$rg_prog: $*"; exit 125; }   # 125: like env(1), the launcher failed

rg_usage() {
	cat <<EOF
usage: $rg_prog [options] [--] QEMU_BINARY [QEMU_ARGS...]

Start QEMU with librekeyguard.so preloaded (LD_PRELOAD), so that TLS live
migration, NBD, VNC and chardev TLS survive TLS 1.3 key updates. QEMU
replaces this script (exec): PID, signals, stdio and exit status are QEMU's.

options:
  --lib PATH   use this librekeyguard.so (default: LIB= in the
               configuration file, else next to this script or its symlink
               target, else ${RG_LIBDIR:-the install directory})
  --check      print what would run, which library, which GnuTLS the QEMU
               binary links and whether guarding would activate; run nothing
  --help       this text

Installed under a QEMU-like name (qemu-system-*, qemu-kvm), e.g. as a
libvirt <emulator>, it execs the QEMU named by \$REKEYGUARD_QEMU or by
QEMU=/path in the configuration file (\$REKEYGUARD_QEMU_CONF, else
rekeyguard-qemu.conf next to the launcher, else ${RG_CONF_DEFAULT};
LIB=/path there picks the library) and passes every argument on.
The configuration file may also set REKEYGUARD_MODE, REKEYGUARD_LOG,
REKEYGUARD_NOTICE and REKEYGUARD_PROVOKE_REKEY for QEMU (the environment
wins over the file).

environment (read by the library): REKEYGUARD_MODE=auto|guard|keyupdate|off,
REKEYGUARD_LOG=error|warn|info|debug, REKEYGUARD_NOTICE=auto|on|off,
REKEYGUARD_PROVOKE_REKEY=N[:peer] (validation only). See rekeyguard(7).
EOF
}

# ---- configuration file: KEY=VALUE lines, '#' comments, never sourced ----
rg_conf_qemu=
rg_conf_lib=
rg_conf_vars=   # the library's settings found in the file, exported below
rg_trim() {   # sets rg_trimmed to $1 without leading and trailing blanks
	rg_trimmed=${1#"${1%%[![:space:]]*}"}
	rg_trimmed=${rg_trimmed%"${rg_trimmed##*[![:space:]]}"}
}
rg_read_conf() {
	rg_conf_file=${REKEYGUARD_QEMU_CONF:-}
	if [ -z "$rg_conf_file" ]; then   # next to the launcher, else /etc
		case $0 in */*) rg_conf_file=${0%/*}/rekeyguard-qemu.conf ;; esac
		[ -n "$rg_conf_file" ] && [ -e "$rg_conf_file" ] || rg_conf_file=$RG_CONF_DEFAULT
	fi
	[ -e "$rg_conf_file" ] || return 0
	[ -r "$rg_conf_file" ] || rg_die "cannot read $rg_conf_file"
	while IFS= read -r rg_line || [ -n "$rg_line" ]; do
		rg_trim "$rg_line"; rg_line=$rg_trimmed
		case $rg_line in ''|'#'*) continue ;; esac
		rg_trim "${rg_line%%=*}"; rg_key=$rg_trimmed
		rg_trim "${rg_line#*=}"; rg_val=$rg_trimmed
		case $rg_val in
		\"*\") rg_val=${rg_val#\"}; rg_val=${rg_val%\"} ;;
		\'*\') rg_val=${rg_val#\'}; rg_val=${rg_val%\'} ;;
		esac
		case $rg_key in
		QEMU) rg_conf_qemu=$rg_val ;;
		LIB) rg_conf_lib=$rg_val ;;
		REKEYGUARD_MODE|REKEYGUARD_LOG|REKEYGUARD_NOTICE|REKEYGUARD_PROVOKE_REKEY)
			# the environment wins, a later line over an earlier one;
			# the library validates the value
			case " $rg_conf_vars " in
			*" $rg_key "*) rg_set= ;;                  # set by an earlier line
			*) eval "rg_set=\${$rg_key+set}"        # set in the environment?
			   [ -n "$rg_set" ] || rg_conf_vars="$rg_conf_vars $rg_key" ;;
			esac
			if [ -z "$rg_set" ]; then
				eval "$rg_key=\$rg_val"
				# shellcheck disable=SC2163  # exports the variable rg_key names
				export "$rg_key"
			fi ;;
		*) rg_say "$rg_prog: $rg_conf_file: unknown setting '$rg_key' ignored (known: QEMU, LIB, REKEYGUARD_MODE, REKEYGUARD_LOG, REKEYGUARD_NOTICE, REKEYGUARD_PROVOKE_REKEY)" ;;
		esac
	done < "$rg_conf_file"
}

# ---- arguments ----------------------------------------------------------
rg_lib=
rg_lib_how=
rg_check=0
rg_emulator=0
case $rg_prog in
qemu-system-*|qemu-kvm) rg_emulator=1 ;;
esac

rg_read_conf

if [ "$rg_emulator" = 1 ]; then
	if [ "$#" = 1 ] && [ "$1" = --rekeyguard-check ]; then
		rg_check=1
		shift
	fi
	rg_qemu=${REKEYGUARD_QEMU:-$rg_conf_qemu}
	[ -n "$rg_qemu" ] || rg_die "installed as a QEMU binary: set QEMU=/path/to/the/real/qemu in $rg_conf_file or REKEYGUARD_QEMU"
	case $rg_qemu in /*) ;; *) rg_die "QEMU='$rg_qemu' must be an absolute path" ;; esac
	# Never exec ourselves (a loop that libvirt would spin in).
	if [ "$rg_qemu" -ef "$0" ]; then
		rg_die "QEMU=$rg_qemu is this launcher itself; name the real QEMU binary"
	fi
	[ -n "$rg_conf_lib" ] && { rg_lib=$rg_conf_lib; rg_lib_how="LIB= in $rg_conf_file"; }
else
	while [ "$#" -gt 0 ]; do
		case $1 in
		--help|-h) rg_usage; exit 0 ;;
		--check) rg_check=1; shift ;;
		--lib) [ "$#" -ge 2 ] || rg_die "--lib needs a PATH"
		       rg_lib=$2; rg_lib_how="--lib"; shift 2 ;;
		--lib=*) rg_lib=${1#--lib=}; rg_lib_how="--lib"; shift ;;
		--) shift; break ;;
		-*) rg_die "unknown option '$1' (try --help)" ;;
		*) break ;;
		esac
	done
	[ "$#" -ge 1 ] || { rg_usage >&2; exit 125; }
	rg_qemu=$1
	shift
	if [ -z "$rg_lib" ] && [ -n "$rg_conf_lib" ]; then
		rg_lib=$rg_conf_lib; rg_lib_how="LIB= in $rg_conf_file"
	fi
fi

# ---- find the library ---------------------------------------------------
if [ -z "$rg_lib" ]; then
	case $0 in
	*/*) rg_self=$0 ;;
	*) if [ -f "$0" ]; then rg_self=./$0; else rg_self=$(command -v -- "$0" 2>/dev/null) || rg_self=./$0; fi ;;
	esac
	rg_self_dir=$(cd "${rg_self%/*}" 2>/dev/null && pwd -P)
	rg_real_dir=
	if [ -L "$rg_self" ]; then   # a symlink: also look next to its target
		rg_real=$(readlink -f "$rg_self" 2>/dev/null) && rg_real_dir=${rg_real%/*}
	fi
	for rg_dir in "$rg_self_dir" "$rg_real_dir" "$RG_LIBDIR"; do
		[ -n "$rg_dir" ] || continue
		if [ -e "$rg_dir/$RG_LIBNAME" ]; then
			rg_lib=$rg_dir/$RG_LIBNAME
			if [ "$rg_dir" = "$RG_LIBDIR" ]; then
				rg_lib_how="install directory"
			else
				rg_lib_how="next to the launcher"
			fi
			break
		fi
	done
	[ -n "$rg_lib" ] || rg_die "$RG_LIBNAME not found (looked in: ${rg_self_dir:-?}${RG_LIBDIR:+ $RG_LIBDIR}); use --lib PATH or LIB= in $rg_conf_file. Not starting QEMU unprotected."
fi
[ -e "$rg_lib" ] || rg_die "library $rg_lib does not exist. Not starting QEMU unprotected."
[ -f "$rg_lib" ] && [ -r "$rg_lib" ] || rg_die "library $rg_lib is not a readable file. Not starting QEMU unprotected."
case $rg_lib in
/*) ;;
*/*) rg_lib=$(cd "${rg_lib%/*}" && pwd -P)/${rg_lib##*/} ;;
*) rg_lib=$(pwd -P)/$rg_lib ;;
esac
case $rg_lib in *[\ :]*) rg_die "library path '$rg_lib' contains a space or colon, which LD_PRELOAD cannot carry" ;; esac

# ---- LD_PRELOAD: ours first, exactly once -------------------------------
rg_rest=
rg_had=
rg_ifs=$IFS
IFS=': '      # ld.so splits LD_PRELOAD at spaces and colons
set -f
for rg_entry in ${LD_PRELOAD-}; do
	case ${rg_entry##*/} in
	"$RG_LIBNAME"|"$RG_LIBNAME".*) rg_had="$rg_had $rg_entry" ;;
	*) rg_rest="${rg_rest:+$rg_rest }$rg_entry" ;;
	esac
done
set +f
IFS=$rg_ifs
if [ -n "$rg_had" ]; then
	rg_say "$rg_prog: LD_PRELOAD already contained$rg_had; preloading $rg_lib once, first"
fi
rg_preload="$rg_lib${rg_rest:+ $rg_rest}"

# ---- --check ------------------------------------------------------------
rg_version_of_lib() {   # $1: path of libgnutls.so.N; prints x.y.z or nothing
	rg_real=$(readlink -f "$1" 2>/dev/null || printf '%s' "$1")
	rg_v=
	if command -v dpkg-query >/dev/null 2>&1; then
		rg_pkg=$(dpkg-query -S "$rg_real" 2>/dev/null | sed -n '1s/:.*//p')
		[ -n "$rg_pkg" ] || rg_pkg=$(dpkg-query -S "$1" 2>/dev/null | sed -n '1s/:.*//p')
		[ -n "$rg_pkg" ] && rg_v=$(dpkg-query -W -f '${Version}' "$rg_pkg" 2>/dev/null)
	fi
	if [ -z "$rg_v" ] && command -v rpm >/dev/null 2>&1; then
		rg_v=$(rpm -qf --qf '%{VERSION}' "$rg_real" 2>/dev/null)
	fi
	if [ -z "$rg_v" ]; then   # GnuTLS embeds "Enabled GnuTLS <version> logging..."
		rg_v=$(LC_ALL=C grep -aoE 'Enabled GnuTLS [0-9]+\.[0-9]+\.[0-9]+' "$rg_real" 2>/dev/null | sed -n '1s/.* //p')
	fi
	# Debian "3.7.9-2+deb12u5", epochs "1:3.7.9": keep x.y.z
	printf '%s' "$rg_v" | sed -n 's/^\([0-9]*:\)\{0,1\}\([0-9][0-9]*\.[0-9][0-9]*\.[0-9][0-9]*\).*/\2/p'
}

rg_version_lt() {   # $1 < $2 for x.y.z
	rg_a=$1 rg_b=$2
	for rg_i in 1 2 3; do
		rg_x=$(printf '%s' "$rg_a" | cut -d. -f"$rg_i"); rg_y=$(printf '%s' "$rg_b" | cut -d. -f"$rg_i")
		[ "${rg_x:-0}" -lt "${rg_y:-0}" ] && return 0
		[ "${rg_x:-0}" -gt "${rg_y:-0}" ] && return 1
	done
	return 1
}

rg_origin() {   # where the library setting $1 came from
	case " $rg_conf_vars " in
	*" $1 "*) printf '%s' "$rg_conf_file" ;;
	*) printf 'the environment' ;;
	esac
}

rg_do_check() {
	rg_qemu_path=$rg_qemu
	case $rg_qemu in */*) ;; *) rg_qemu_path=$(command -v "$rg_qemu" 2>/dev/null) ;; esac
	printf 'would run:    LD_PRELOAD=%s %s' "$rg_preload" "${rg_qemu_path:-$rg_qemu}"
	for rg_a in "$@"; do printf " '%s'" "$rg_a"; done
	printf '\n'
	[ "$rg_emulator" = 1 ] && printf 'launcher:     installed as %s (libvirt <emulator> mode)\n' "$rg_prog"
	printf 'library:      %s (%s)\n' "$rg_lib" "$rg_lib_how"
	rg_status=0
	if [ -z "$rg_qemu_path" ] || [ ! -x "$rg_qemu_path" ]; then
		printf 'QEMU:         %s is not an executable file\n' "$rg_qemu"
		return 1
	fi
	rg_gnutls=$(ldd "$rg_qemu_path" 2>/dev/null | sed -n 's/^[[:space:]]*libgnutls\.so\.[0-9]* => \([^ ]*\) .*/\1/p' | head -n 1)
	if [ -z "$rg_gnutls" ]; then
		printf 'QEMU GnuTLS:  none (ldd shows no libgnutls; static or built without TLS)\n'
		printf 'guarding:     no: nothing to guard\n'
		return 0
	fi
	rg_gv=$(rg_version_of_lib "$rg_gnutls")
	printf 'QEMU GnuTLS:  %s (%s)\n' "$rg_gnutls" "${rg_gv:-version unknown}"
	rg_mode=$(printf '%s' "${REKEYGUARD_MODE:-auto}" | tr 'A-Z' 'a-z')
	case $rg_mode in
	auto|guard|keyupdate|off) printf 'mode:         %s%s\n' "$rg_mode" "${REKEYGUARD_MODE:+ (REKEYGUARD_MODE from $(rg_origin REKEYGUARD_MODE))}" ;;
	*) printf "mode:         auto (REKEYGUARD_MODE='%s' is not valid; the library uses auto)\n" "$REKEYGUARD_MODE"
	   rg_mode=auto ;;
	esac
	case $rg_mode in
	off) printf 'guarding:     no: REKEYGUARD_MODE=off (pure pass-through)\n' ;;
	guard) printf 'guarding:     yes, every GnuTLS call serialised: REKEYGUARD_MODE=guard\n' ;;
	keyupdate) printf 'guarding:     yes, key changes serialised: REKEYGUARD_MODE=keyupdate\n' ;;
	auto)
		if [ -z "$rg_gv" ]; then
			printf 'guarding:     yes, decided at run time (GnuTLS version unknown here): every call serialised before %s, key changes serialised from %s on\n' "$RG_FIXED_GNUTLS" "$RG_FIXED_GNUTLS"
		elif rg_version_lt "$rg_gv" "$RG_FIXED_GNUTLS"; then
			printf 'guarding:     yes, every GnuTLS call serialised: GnuTLS %s is older than %s\n' "$rg_gv" "$RG_FIXED_GNUTLS"
		else
			printf 'guarding:     yes, key changes serialised: GnuTLS %s has the %s rework, which still races when both directions change keys at once\n' "$rg_gv" "$RG_FIXED_GNUTLS"
		fi ;;
	esac
	[ -n "${REKEYGUARD_PROVOKE_REKEY-}" ] &&
		printf 'provocation:  REKEYGUARD_PROVOKE_REKEY=%s from %s (validation only, not for production)\n' "$REKEYGUARD_PROVOKE_REKEY" "$(rg_origin REKEYGUARD_PROVOKE_REKEY)"
	return $rg_status
}

if [ "$rg_check" = 1 ]; then
	rg_do_check "$@"
	exit $?
fi

case $rg_qemu in
*/*) [ -f "$rg_qemu" ] && [ -x "$rg_qemu" ] || rg_die "$rg_qemu is not an executable file" ;;
*) command -v "$rg_qemu" >/dev/null 2>&1 || rg_die "$rg_qemu not found in PATH" ;;
esac

case ${REKEYGUARD_LOG-} in
[Ii][Nn][Ff][Oo]|[Dd][Ee][Bb][Uu][Gg]) rg_say "$rg_prog: exec $rg_qemu with LD_PRELOAD=$rg_preload" ;;
esac
LD_PRELOAD=$rg_preload
export LD_PRELOAD
# A failed exec ends the shell itself (126: not executable, e.g. a wrong
# format; 127: not found), as env(1) does; nothing after this line runs.
exec "$rg_qemu" "$@"
