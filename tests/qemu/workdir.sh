# shellcheck shell=sh
# workdir.sh — sourced by the QEMU test scripts (POSIX sh).
#
#   rg_workdir NAME WHAT   makes $work (mktemp -d "$TMPDIR/NAME.XXXXXX") and
#                          sets status=1; at exit the directory is removed
#                          when the script has set status=0 and RG_QEMU_KEEP
#                          is not 1, else it is kept and "WHAT kept in DIR"
#                          is printed. INT, TERM and HUP exit with 130.
rg_workdir() {
	work=$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX") || exit 1
	rg_workdir_what=$2
	status=1
	trap rg_workdir_cleanup EXIT
	trap 'exit 130' INT TERM HUP
}

rg_workdir_cleanup() {
	if [ "$status" = 0 ] && [ "${RG_QEMU_KEEP:-0}" != 1 ]; then
		rm -rf "$work"
	else
		echo "$rg_workdir_what kept in $work"
	fi
}
