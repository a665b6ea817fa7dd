# copy-tree.sh — sourced by the matrix scripts (matrix.sh, kurace.sh,
# bench-target.sh, gnutls-suite-target.sh).
#
# matrix_copy_sources REPO DEST: replaces DEST with the work tree's sources
# as git lists them (tracked and untracked, ignored files left out; without
# git: Makefile, shim, tests, tools, bench), minus ELF files, so that a
# build inside a chroot never picks up the host's objects.
matrix_copy_sources() {
	local repo=$1 dest=$2
	rm -rf "$dest"; mkdir -p "$dest"
	(cd "$repo" && { git ls-files -co --exclude-standard -z 2>/dev/null ||
			 find Makefile shim tests tools bench -type f -print0 2>/dev/null; } |
		while IFS= read -r -d '' f; do
			[ -f "$f" ] || continue
			[ "$(head -c4 "$f" | od -An -tx1 | tr -d ' \n')" = 7f454c46 ] && continue
			printf '%s\0' "$f"
		done | tar cf - --null -T -) | tar xf - -C "$dest"
}
