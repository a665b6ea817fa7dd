#!/usr/bin/env bash
# tests/peer/gnutls-suite.sh — run GnuTLS's own test suite twice, plain and
# with librekeyguard.so preloaded, and report every test whose result differs.
#
# The GnuTLS source is the Debian source package of the installed
# libgnutls30, built in a cache directory outside the project tree and
# reused by later runs (stamp files).  See tests/peer/README.md and --help.
set -euo pipefail

PROG=gnutls-suite
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TOP=$(cd "$HERE/../.." && pwd)

CACHE_ROOT=${GNUTLS_SUITE_CACHE:-/var/cache/rekeyguard-gnutls-suite}
LIB=${GNUTLS_SUITE_LIB:-$TOP/librekeyguard.so}
JOBS=${GNUTLS_SUITE_JOBS:-2}
TEST_TIMEOUT=${GNUTLS_SUITE_TIMEOUT:-900}   # seconds per test, then killed (FAIL)
RECHECK=${GNUTLS_SUITE_RECHECK:-1}          # reruns of each differing test, each way
MODE=full                                   # full | subset | tests
TEST_LIST=""
BUILD_ONLY=0
LABEL=""                                    # results subdirectory, default = MODE
SHIM_ENV=()
APT=(apt-get -o DPkg::Lock::Timeout=600)
SRC_LIST_NAME=rekeyguard-src                 # /etc/apt/sources.list.d/<name>.{sources,list}

usage() {
	cat <<'EOF'
Usage: tests/peer/gnutls-suite.sh [OPTIONS]

Runs GnuTLS's own test suite (the Debian source package of the installed
libgnutls30, built in a cache directory) once plain and once with
LD_PRELOAD=librekeyguard.so REKEYGUARD_MODE=guard, and fails (exit 1)
unless every test has the same result both ways.  Each difference is
printed with the tail of its log from the preloaded run.

The first run needs root and Debian's archive: it adds a deb-src entry
derived from the existing apt sources (/etc/apt/sources.list.d/
rekeyguard-src.sources or .list), runs apt-get update, apt-get source
gnutls28=<version>, apt-get build-dep gnutls28=<version>, then configures
and builds GnuTLS and its tests (about 10 minutes on 2 cores).  Later runs
reuse the build (stamp files in the cache).

Options:
  --subset        run a curated subset (records, handshakes, resumption,
                  early data, key update, rehandshake, alerts, timeouts,
                  non-blocking I/O, DTLS, session tickets, mini-*), ~10 min
  --tests "A B"   run only these tests (names relative to GnuTLS's tests/,
                  e.g. "tls13-resume-psk tls13/key_update cert-tests/pem-decoding.sh")
  --jobs N        make -jN for the build and for make check (default 2)
  --lib PATH      the library to preload (default: librekeyguard.so at the
                  top of the tree); copied into the cache at the start
  --timeout S     kill a test after S seconds (counts as FAIL; default 900)
  --recheck N     rerun each differing test N more times both ways to tell
                  reproducible from flaky differences (default 1, 0 = off);
                  informational only, the exit status follows the main runs
  --shim-env V=X  extra environment for the preloaded run only (repeatable),
                  e.g. --shim-env REKEYGUARD_LOG=debug
  --label NAME    keep the results in results/NAME/ (default: full, subset
                  or tests), e.g. to compare two library builds
  --build-only    prepare and build, run nothing
  --cache DIR     cache root (default /var/cache/rekeyguard-gnutls-suite,
                  or $GNUTLS_SUITE_CACHE); the build is in DIR/<version>/
  -h, --help      this text

Results: DIR/<version>/results/<full|subset|tests|LABEL>/{plain,preloaded}/
hold every test's .log and .trs, results.tsv (test, result) and make.log;
summary.txt and differences.txt sit next to them.

Exit status: 0 same results both ways, 1 differences, 2 usage or setup error.
EOF
}

die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 2; }
T0=$(date +%s)
phase() { printf '[%s +%4ds] %s\n' "$PROG" "$(( $(date +%s) - T0 ))" "$*"; }

while [ $# -gt 0 ]; do
	case $1 in
	--subset) MODE=subset ;;
	--tests) [ $# -ge 2 ] || die "--tests needs a list"; MODE=tests; TEST_LIST=$2; shift ;;
	--tests=*) MODE=tests; TEST_LIST=${1#*=} ;;
	--jobs) [ $# -ge 2 ] || die "--jobs needs a number"; JOBS=$2; shift ;;
	--jobs=*) JOBS=${1#*=} ;;
	--lib) [ $# -ge 2 ] || die "--lib needs a path"; LIB=$2; shift ;;
	--lib=*) LIB=${1#*=} ;;
	--timeout) [ $# -ge 2 ] || die "--timeout needs seconds"; TEST_TIMEOUT=$2; shift ;;
	--timeout=*) TEST_TIMEOUT=${1#*=} ;;
	--recheck) [ $# -ge 2 ] || die "--recheck needs a number"; RECHECK=$2; shift ;;
	--recheck=*) RECHECK=${1#*=} ;;
	--shim-env) [ $# -ge 2 ] || die "--shim-env needs VAR=VALUE"; SHIM_ENV+=("$2"); shift ;;
	--shim-env=*) SHIM_ENV+=("${1#*=}") ;;
	--build-only) BUILD_ONLY=1 ;;
	--label) [ $# -ge 2 ] || die "--label needs a name"; LABEL=$2; shift ;;
	--label=*) LABEL=${1#*=} ;;
	--cache) [ $# -ge 2 ] || die "--cache needs a directory"; CACHE_ROOT=$2; shift ;;
	--cache=*) CACHE_ROOT=${1#*=} ;;
	-h|--help) usage; exit 0 ;;
	*) printf '%s: unknown option %s (see --help)\n' "$PROG" "$1" >&2; exit 2 ;;
	esac
	shift
done
case $JOBS in ''|*[!0-9]*|0) die "--jobs wants a positive number, not '$JOBS'" ;; esac
case $TEST_TIMEOUT in ''|*[!0-9]*|0) die "--timeout wants seconds, not '$TEST_TIMEOUT'" ;; esac
case $RECHECK in ''|*[!0-9]*) die "--recheck wants a number, not '$RECHECK'" ;; esac
for kv in ${SHIM_ENV[@]+"${SHIM_ENV[@]}"}; do
	case $kv in [A-Za-z_]*=*) ;; *) die "--shim-env wants VAR=VALUE, not '$kv'" ;; esac
done
[ "$MODE" != tests ] || [ -n "${TEST_LIST// /}" ] || die "--tests got an empty list"
LABEL=${LABEL:-$MODE}
case $LABEL in ''|*/*|.|..) die "--label wants a plain name, not '$LABEL'" ;; esac

# ---- the subset -------------------------------------------------------------
# Names are relative to GnuTLS's tests/ directory; one reason per group.
SUBSET_GROUPS=(
	# records: send/recv of every size and range, corking, padding, retvals
	"mini-record mini-record-2 mini-record-range record-sizes record-sizes-range record-retvals record-pad tls-record-size-limit tls-record-size-limit-asym tls12-max-record gnutls_record_overhead send-data-before-handshake recv-data-before-handshake"
	# handshakes: the whole gnutls_handshake loop over the shim's transport
	"mini-x509 mini-x509-2 handshake-large-packet handshake-large-cert handshake-versions handshake-write handshake-false-start tls13-compat-mode tls13-cipher-neg tls13/hello_retry_request tls13/change_cipher_spec tls13/post-handshake-with-cert tls13/post-handshake-without-cert tls13/post-handshake-with-cert-ticket tls13-early-start"
	# TLS 1.3 resumption and PRF: gnutls_session_get_data2 after the ticket arrives
	"tls13-resume-psk tls13-resume-x509 tls13/hello_retry_request_resume tls13/prf tls13/prf-early tls12-resume-psk tls12-resume-x509 resume-with-false-start resume-lifetime"
	# early data: gnutls_record_send_early_data / recv_early_data and the ticket
	"tls13-early-data tls13-early-data-neg tls13-early-data-neg2 tls13/anti_replay"
	# key update: gnutls_session_key_update in both directions, the race itself
	"tls13/key_update tls13/key_update_multiple tls13/key_limits"
	# rehandshake / reauth: gnutls_rehandshake, post-handshake auth
	"tls12-rehandshake-cert tls12-rehandshake-cert-2 tls12-rehandshake-cert-3 tls12-rehandshake-cert-auto tls12-rehandshake-set-prio tls13-rehandshake-cert rehandshake-ext-secret rehandshake-switch-cert"
	# alerts and termination: gnutls_alert_send, gnutls_bye
	"alerts multi-alerts naked-alerts mini-termination mini-record-failure"
	# timeouts: gnutls_record_set_timeout and the pull-timeout callback
	"record-timeouts handshake-timeout mini-loss-time tls13-without-timeout-func"
	# non-blocking I/O: GNUTLS_E_AGAIN everywhere, custom push/pull
	"mini-tls-nonblock eagain eagain-auto-auth mini-x509-callbacks-intr tls-pthread"
	# DTLS: sessions the shim leaves alone must stay untouched
	"mini-dtls-record mini-dtls-hello-verify mini-eagain-dtls resume-dtls dtls-rehandshake-anon dtls-pthread dtls-session-ticket-lost dtls/dtls.sh"
	# session tickets and STEK rotation
	"session-tickets-ok session-tickets-missing resume-with-stek-expiration resume-with-previous-stek tls13/no-auto-send-ticket"
	# gnutls-cli/serv end to end: resumption and the stderr-parsing debug mode
	"gnutls-cli-resume.sh gnutls-cli-debug.sh"
)

# ---- version and cache ------------------------------------------------------
command -v dpkg-query >/dev/null || die "dpkg-query not found: this script needs Debian or a derivative"
# Debian 13 and later ship the library as libgnutls30t64 (the 64-bit time_t
# transition); libgnutls30 is then only a name dpkg remembers, installed or
# not: take the first of the two that is really installed.
DEB_VERSION="" GNUTLS_PKG=""
for p in libgnutls30t64 libgnutls30; do
	st=$(dpkg-query -W -f='${Status}\t${Version}' "$p" 2>/dev/null || true)
	case $st in
	"install ok installed"$'\t'?*) GNUTLS_PKG=$p; DEB_VERSION=${st#*$'\t'}; break ;;
	esac
done
[ -n "$DEB_VERSION" ] || die "neither libgnutls30 nor libgnutls30t64 is installed (apt-get install libgnutls30)"
UPSTREAM=${DEB_VERSION#*:}; UPSTREAM=${UPSTREAM%%-*}
CACHE=$CACHE_ROOT/$DEB_VERSION
SRC=$CACHE/src
STAMPS=$CACHE/stamps
mkdir -p "$STAMPS" 2>/dev/null || die "cannot create $STAMPS (run as root, or --cache DIR)"
[ -w "$CACHE" ] || die "$CACHE is not writable (run as root, or --cache DIR)"

exec 9>"$CACHE/lock"
flock -n 9 || die "another $PROG run holds $CACHE/lock"

need_root() {
	[ "$(id -u)" = 0 ] || die "$1 needs root (or run once as root to fill $CACHE): $2"
}

# ---- 1. source and build ----------------------------------------------------
# A deb-src entry for every enabled deb entry, same URIs/Suites/Components/
# Signed-By, in a file of our own.  Nothing is written if one exists already.
have_deb_src() {
	local f
	for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
		[ -r "$f" ] && grep -Eq '^[[:space:]]*deb-src[[:space:]]' "$f" && return 0
	done
	for f in /etc/apt/sources.list.d/*.sources; do
		[ -r "$f" ] && grep -Eiq '^Types:.*deb-src' "$f" && return 0
	done
	return 1
}

add_deb_src() {
	local f out822=/etc/apt/sources.list.d/$SRC_LIST_NAME.sources
	local outlist=/etc/apt/sources.list.d/$SRC_LIST_NAME.list tmp
	tmp=$(mktemp)
	for f in /etc/apt/sources.list.d/*.sources; do
		[ -r "$f" ] && [ "$f" != "$out822" ] || continue
		# deb822: one paragraph per blank-line-separated block; skip
		# disabled ones, drop comments, keep continuation lines.
		awk 'BEGIN { RS = ""; FS = "\n" }
		{
			types = 0; enabled = 1; out = ""
			for (i = 1; i <= NF; i++) {
				line = $i
				if (line ~ /^#/) continue
				if (tolower(line) ~ /^types:/) {
					if (line ~ /[ \t:]deb([ \t]|$)/) types = 1
					line = "Types: deb-src"
				}
				if (tolower(line) ~ /^enabled:[ \t]*no/) enabled = 0
				out = out line "\n"
			}
			if (types && enabled) printf "%s\n", out
		}' "$f" >>"$tmp"
	done
	if [ -s "$tmp" ]; then
		mv "$tmp" "$out822"; chmod 0644 "$out822"
		phase "added $out822 (deb-src for the existing deb sources)"
		return 0
	fi
	for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
		[ -r "$f" ] && [ "$f" != "$outlist" ] || continue
		sed -n -E 's/^[[:space:]]*deb([[:space:]]+)/deb-src\1/p' "$f" >>"$tmp"
	done
	if [ -s "$tmp" ]; then
		mv "$tmp" "$outlist"; chmod 0644 "$outlist"
		phase "added $outlist (deb-src for the existing deb lines)"
		return 0
	fi
	rm -f "$tmp"
	die "no enabled 'deb' source in /etc/apt/sources.list{,.d/}: cannot derive a deb-src entry"
}

src_version_known() {   # (no grep -q on a pipe: pipefail and SIGPIPE)
	local out
	out=$(apt-cache showsrc gnutls28 2>/dev/null) || return 1
	grep -qx "Version: $DEB_VERSION" <<<"$out"
}

step_sources() {
	[ -e "$STAMPS/download" ] && return 0
	need_root "adding a deb-src entry and apt-get source" "apt-get source gnutls28=$DEB_VERSION"
	if ! have_deb_src; then
		add_deb_src
	fi
	if ! src_version_known; then
		phase "apt-get update"
		"${APT[@]}" update >"$CACHE/apt-update.log" 2>&1 ||
			die "apt-get update failed, see $CACHE/apt-update.log"
	fi
	src_version_known || die "gnutls28 $DEB_VERSION is not in the configured archive's Sources (superseded? try snapshot.debian.org)"
	phase "apt-get source gnutls28=$DEB_VERSION"
	if ! (cd "$CACHE" && apt-get source --download-only "gnutls28=$DEB_VERSION") \
		>"$CACHE/apt-source.log" 2>&1; then
		# Some mirrors lack the upstream signature (orig.tar.xz.asc: 404)
		# although the .dsc lists it.  It is only upstream's signature of
		# the tarball, whose hash apt has checked against the signed
		# Sources index: go on when it is the only thing missing.
		sources_complete_but_asc ||
			die "apt-get source failed, see $CACHE/apt-source.log"
		phase "note: the archive has no $(missing_asc | paste -sd' ' -) (404); the other files are there, going on without it"
	fi
	touch "$STAMPS/download"
}

# The files a .dsc lists (Checksums-Sha256), one per line.
dsc_files() {
	awk '/^Checksums-Sha256:/ { on = 1; next } on && /^ / { print $3; next } on { exit }' "$1"
}
missing_asc() {   # the .asc files the .dsc lists that are not in the cache
	local dsc f
	dsc=$(ls "$CACHE"/gnutls28_*.dsc 2>/dev/null | head -n1)
	[ -n "$dsc" ] || return 0
	for f in $(dsc_files "$dsc"); do
		case $f in *.asc) [ -e "$CACHE/$f" ] || printf '%s\n' "$f" ;; esac
	done
}
# apt-get source failed: true if every failed fetch was an .asc and every
# other file the .dsc lists is present.
sources_complete_but_asc() {
	local dsc f errs
	dsc=$(ls "$CACHE"/gnutls28_*.dsc 2>/dev/null | head -n1)
	[ -n "$dsc" ] || return 1
	# every "E:" line but apt's closing "E: Failed to fetch some archives."
	errs=$(grep '^E: ' "$CACHE/apt-source.log" | grep -vx 'E: Failed to fetch some archives\.' || true)
	[ -n "$errs" ] || return 1
	[ -z "$(grep -v '^E: Failed to fetch [^ ]*\.asc ' <<<"$errs" || true)" ] || return 1
	for f in $(dsc_files "$dsc"); do
		case $f in *.asc) ;; *) [ -s "$CACHE/$f" ] || return 1 ;; esac
	done
	[ -n "$(missing_asc)" ]
}

step_build_dep() {
	[ -e "$STAMPS/build-dep" ] && return 0
	need_root "installing the build dependencies" "apt-get build-dep gnutls28=$DEB_VERSION"
	phase "apt-get build-dep gnutls28=$DEB_VERSION"
	"${APT[@]}" build-dep -y "gnutls28=$DEB_VERSION" >"$CACHE/build-dep.log" 2>&1 ||
		die "apt-get build-dep failed, see $CACHE/build-dep.log"
	touch "$STAMPS/build-dep"
}

# Tools some tests need that gnutls28's build-deps lack: socat and chat
# (ppp) for the starttls*.sh tests (gnutls-cli --starttls-proto).  No
# rebuild needed.  (libzstd-dev would also enable tls13/compress-cert*,
# but changes configure; left out.)
TEST_EXTRAS=(socat ppp)
step_test_extras() {
	local p missing=()
	for p in "${TEST_EXTRAS[@]}"; do
		[ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)" = "install ok installed" ] ||
			missing+=("$p")
	done
	[ ${#missing[@]} -gt 0 ] || return 0
	need_root "installing ${missing[*]} for the starttls tests" "apt-get install ${missing[*]}"
	phase "apt-get install ${missing[*]} (the starttls tests need them)"
	"${APT[@]}" install -y --no-install-recommends "${missing[@]}" >"$CACHE/test-extras.log" 2>&1 ||
		die "apt-get install ${missing[*]} failed, see $CACHE/test-extras.log"
}

step_extract() {
	[ -e "$STAMPS/extract" ] && return 0
	local dsc
	dsc=$(ls "$CACHE"/gnutls28_*.dsc 2>/dev/null | head -n1)
	[ -n "$dsc" ] || die "no gnutls28 .dsc in $CACHE (remove $STAMPS/download and rerun)"
	command -v dpkg-source >/dev/null || die "dpkg-source not found (apt-get install dpkg-dev)"
	phase "unpack $(basename "$dsc") into $SRC"
	rm -rf "$SRC"
	# dpkg-source refuses a .dsc whose listed files are not all there: when
	# the archive lacked the .asc (see step_sources), unpack a copy without
	# its lines (and without the signature they invalidate).  dpkg-source
	# still checks the other files' sizes and hashes.
	local asc
	asc=$(missing_asc)
	if [ -n "$asc" ]; then
		local nosig=$CACHE/unsigned-$(basename "$dsc")
		awk -v drop="$(printf '%s\n' $asc)" '
			BEGIN { n = split(drop, d, "\n"); for (i = 1; i <= n; i++) if (d[i] != "") skip[d[i]] = 1 }
			/^-----BEGIN PGP SIGNED MESSAGE-----/ { hdr = 1; next }
			hdr && /^$/ { hdr = 0; next }
			hdr { next }
			/^-----BEGIN PGP SIGNATURE-----/ { exit }
			/^ / && ($NF in skip) { next }
			{ print }' "$dsc" >"$nosig"
		phase "note: unpacking $(basename "$nosig") (the .dsc without $(printf '%s' "$asc" | paste -sd' ' -))"
		dsc=$nosig
	fi
	dpkg-source -x "$dsc" "$SRC" >"$CACHE/extract.log" 2>&1 ||
		die "dpkg-source -x failed, see $CACHE/extract.log"
	touch "$STAMPS/extract"
}

# Debian's patches touch Makefile.am and configure.ac: regenerate as
# debian/rules does (its stale gettext m4 files first, no gtk-doc).
step_autoreconf() {
	[ -e "$STAMPS/autoreconf" ] && return 0
	phase "autoreconf (Debian's patches change Makefile.am)"
	(
		cd "$SRC"
		grep -rl 'gettext-0.20' m4/ 2>/dev/null | xargs -r rm -f
		GTKDOCIZE="echo gtkdocize disabled:" autoreconf -fi
	) >"$CACHE/autoreconf.log" 2>&1 || die "autoreconf failed, see $CACHE/autoreconf.log"
	touch "$STAMPS/autoreconf"
}

# The fewest features the test suite needs: no docs, guile, C++, DANE, TPM,
# valgrind, and no -fanalyzer developer warnings (they triple the build).
CONFIGURE_FLAGS=(--disable-gcc-warnings --disable-doc --disable-gtk-doc --disable-guile
	--disable-valgrind-tests --without-tpm --without-tpm2 --disable-cxx --disable-libdane
	--disable-rpath --enable-ld-version-script --disable-silent-rules
	--with-default-trust-store-file=/etc/ssl/certs/ca-certificates.crt)

step_configure() {
	if [ -e "$STAMPS/configure" ] && [ "$(cat "$STAMPS/configure")" = "${CONFIGURE_FLAGS[*]}" ]; then
		return 0
	fi
	rm -f "$STAMPS/configure" "$STAMPS/build" "$STAMPS/build-tests"
	phase "configure ${CONFIGURE_FLAGS[*]}"
	(cd "$SRC" && ./configure "${CONFIGURE_FLAGS[@]}") >"$CACHE/configure.log" 2>&1 ||
		die "configure failed, see $CACHE/configure.log"
	printf '%s\n' "${CONFIGURE_FLAGS[*]}" >"$STAMPS/configure"
}

step_build() {
	if [ ! -e "$STAMPS/build" ]; then
		phase "make -j$JOBS (GnuTLS)"
		(cd "$SRC" && env -u LD_PRELOAD make -j"$JOBS") >"$CACHE/build.log" 2>&1 ||
			die "the GnuTLS build failed, see $CACHE/build.log"
		touch "$STAMPS/build"
		rm -f "$STAMPS/build-tests"
	fi
	if [ ! -e "$STAMPS/build-tests" ]; then
		phase "make -j$JOBS -C tests check TESTS= (build the tests, run none)"
		(cd "$SRC" && env -u LD_PRELOAD make -j"$JOBS" -C tests check TESTS=) \
			>"$CACHE/build-tests.log" 2>&1 ||
			die "building GnuTLS's tests failed, see $CACHE/build-tests.log"
		touch "$STAMPS/build-tests"
	fi
}

phase "GnuTLS $DEB_VERSION ($GNUTLS_PKG), cache $CACHE"
step_sources
step_build_dep
step_test_extras
step_extract
step_autoreconf
step_configure
step_build
phase "build ready ($SRC)"
[ "$BUILD_ONLY" = 0 ] || exit 0

# ---- 2. the library ---------------------------------------------------------
[ -f "$LIB" ] && [ -r "$LIB" ] || die "library $LIB not found or unreadable (make librekeyguard.so, or --lib PATH)"
RESULTS=$CACHE/results/$LABEL
rm -rf "$RESULTS"
mkdir -p "$RESULTS"
LIBCOPY=$RESULTS/librekeyguard.so
cp "$LIB" "$LIBCOPY"
LIB_INFO="$LIB ($(stat -c '%y' "$LIB" | cut -d. -f1), sha256 $(sha256sum "$LIBCOPY" | cut -c1-16))"
# ld.so only warns and goes on when a preload cannot be loaded: catch that.
preload_err=$(LD_PRELOAD=$LIBCOPY /bin/true 2>&1) || true
[ -z "$preload_err" ] || die "$LIB cannot be preloaded: $preload_err"
phase "library: $LIB_INFO, copied to $LIBCOPY"

# The per-test timeout wrapper: GnuTLS's LOG_COMPILER and SH_LOG_COMPILER
# are replaced on make's command line (LOG_COMPILER is empty without
# valgrind, SH_LOG_COMPILER is the shell).  timeout(1) kills the test's
# whole process group, forked servers included.
mkdir -p "$CACHE/bin"
cat >"$CACHE/bin/test-timeout" <<'EOF'
#!/bin/sh
exec timeout -k 10 "${GNUTLS_SUITE_TIMEOUT:-900}" "$@"
EOF
chmod 0755 "$CACHE/bin/test-timeout"
TEST_SHELL=$(sed -n 's/^SHELL = //p' "$SRC/tests/Makefile" | head -n1)
[ -n "$TEST_SHELL" ] || TEST_SHELL=/bin/bash

# ---- 3. test lists ----------------------------------------------------------
if [ "$MODE" = subset ]; then
	TEST_LIST="${SUBSET_GROUPS[*]}"
fi
# Drop names this build does not have (configure-dependent tests).
filter_tests() {
	local t kept=""
	for t in $1; do
		if [ -e "$SRC/tests/$t" ]; then kept="$kept $t"
		else printf '%s: note: %s is not in this build, skipped\n' "$PROG" "$t" >&2; fi
	done
	printf '%s' "${kept# }"
}
if [ "$MODE" != full ]; then
	TEST_LIST=$(filter_tests "$TEST_LIST")
	[ -n "$TEST_LIST" ] || die "none of the requested tests exists in $SRC/tests"
fi

# make invocations for a list: tests in a subdirectory that has its own
# Makefile (cert-tests/, slow/, suite/) run there, the rest in tests/.
# Prints "dir<TAB>tests..." lines.
group_tests() {
	local t d
	declare -A groups=()
	for t in $1; do
		d=.
		if [[ $t == */* ]] && [ -f "$SRC/tests/${t%%/*}/Makefile" ]; then
			d=${t%%/*}; t=${t#*/}
		fi
		groups[$d]="${groups[$d]:-} $t"
	done
	for d in "${!groups[@]}"; do printf '%s\t%s\n' "$d" "${groups[$d]# }"; done
}

clean_results() {   # remove every .trs/.log pair and test-suite.log under tests/
	local trs
	find "$SRC/tests" -name '*.trs' -print0 | while IFS= read -r -d '' trs; do
		rm -f "$trs" "${trs%.trs}.log"
	done
	find "$SRC/tests" -name test-suite.log -delete
}

# run_suite LABEL OUTDIR LIST — LABEL plain|preloaded; LIST empty = full.
run_suite() {
	local label=$1 out=$2 list=$3 marker rc=0 hb start n
	local -a envcmd
	mkdir -p "$out"
	clean_results
	marker=$out/.start
	touch "$marker"
	envcmd=(env -u LD_PRELOAD)
	while IFS='=' read -r v _; do envcmd+=(-u "$v"); done < <(env | grep '^REKEYGUARD_' || true)
	envcmd+=(GNUTLS_SUITE_TIMEOUT="$TEST_TIMEOUT")
	if [ "$label" = preloaded ]; then
		envcmd+=(LD_PRELOAD="$LIBCOPY" REKEYGUARD_MODE=guard ${SHIM_ENV[@]+"${SHIM_ENV[@]}"})
	fi
	local -a mk=(make -k -j"$JOBS" LOG_COMPILER="$CACHE/bin/test-timeout"
		SH_LOG_COMPILER="$CACHE/bin/test-timeout $TEST_SHELL")
	start=$(date +%s)
	# heartbeat: one line a minute with the number of finished tests
	( while sleep 60; do
		n=$(find "$SRC/tests" -name '*.trs' -newer "$marker" 2>/dev/null | wc -l)
		phase "  $label: $n tests finished"
	  done ) 9>&- &
	hb=$!
	{
		if [ -z "$list" ]; then
			(cd "$SRC" && "${envcmd[@]}" "${mk[@]}" -C tests check) || rc=$?
		else
			while IFS=$'\t' read -r d tests; do
				(cd "$SRC/tests/$d" && "${envcmd[@]}" "${mk[@]}" check SUBDIRS=. TESTS="$tests") || rc=$?
			done < <(group_tests "$list")
		fi
	} >"$out/make.log" 2>&1 9>&-
	kill "$hb" 2>/dev/null || true
	wait "$hb" 2>/dev/null || true
	# copy every .trs/.log this run wrote, keeping the directory layout
	(cd "$SRC/tests" && find . \( -name '*.trs' -o -name '*.log' \) -newer "$marker" -print0 |
		tar --null -T - -cf -) | tar -xf - -C "$out"
	results_tsv "$out" >"$out/results.tsv"
	n=$(wc -l <"$out/results.tsv")
	if [ "$n" = 0 ]; then
		die "$label run produced no test results (make exit $rc), see $out/make.log"
	fi
	phase "$label run done in $(( $(date +%s) - start ))s: $(counts "$out/results.tsv") (make exit $rc)"
}

results_tsv() {   # test<TAB>result for every .trs under $1, sorted
	local trs name res
	(cd "$1" && find . -name '*.trs' | sed 's|^\./||' | LC_ALL=C sort) | while IFS= read -r trs; do
		name=${trs%.trs}
		# automake drops a registered extension (.sh in tests/): put it back
		# so that the name can be passed to --tests again
		[ -e "$SRC/tests/$name" ] || [ ! -e "$SRC/tests/$name.sh" ] || name=$name.sh
		res=$(sed -n 's/^:test-result: *//p' "$1/$trs" | tr -d ' ' | paste -sd, -)
		printf '%s\t%s\n' "$name" "${res:-NONE}"
	done
}

counts() {   # "N pass / N fail / N skip[ / N xfail / N xpass / N error]"
	awk -F'\t' '{ c[$2]++ }
	END {
		s = sprintf("%d pass / %d fail / %d skip", c["PASS"], c["FAIL"], c["SKIP"])
		if (c["XFAIL"]) s = s sprintf(" / %d xfail", c["XFAIL"])
		if (c["XPASS"]) s = s sprintf(" / %d xpass", c["XPASS"])
		if (c["ERROR"]) s = s sprintf(" / %d error", c["ERROR"])
		other = 0
		for (k in c) if (k !~ /^(PASS|FAIL|SKIP|XFAIL|XPASS|ERROR)$/) other += c[k]
		if (other) s = s sprintf(" / %d other", other)
		print s
	}' "$1"
}

diff_results() {   # test<TAB>plain<TAB>preloaded for every differing test
	LC_ALL=C join -t "$(printf '\t')" -a1 -a2 -e MISSING -o 0,1.2,2.2 "$1" "$2" |
		awk -F'\t' '$2 != $3'
}

# ---- 4. bind check ------------------------------------------------------
# GnuTLS's C tests are linked -no-install (real executables with a RUNPATH
# to the in-tree lib/.libs); gnutls-cli/-serv used by the .sh tests are
# libtool wrappers that set LD_LIBRARY_PATH.  Before the preloaded run,
# prove that the shim really sits between each of them and the GnuTLS under
# test, with the dynamic linker's own debug output (LD_DEBUG_OUTPUT files):
#  - a TLS 1.3 C test (tls13/key_update): its gnutls_record_recv binds to
#    the shim, the shim's dlsym(RTLD_NEXT) lookups bind to
#    $SRC/lib/.libs/libgnutls.so.30, nothing binds to /usr/lib's libgnutls,
#    and with REKEYGUARD_LOG=debug the shim logs that it is guarding;
#  - gnutls-cli: the process initialises both the shim and the in-tree
#    libgnutls.so.30 and no other libgnutls.
bind_check() {
	local probe=tls13/key_update dir=$RESULTS/bind-check ok=1 f other
	local intree=$SRC/lib/.libs/libgnutls.so.30
	mkdir -p "$dir"
	rm -f "$dir"/ld.* "$dir"/cli.*
	if [ -x "$SRC/tests/$probe" ]; then
		(cd "$SRC/tests" && env -u LD_PRELOAD srcdir=. builddir=. top_builddir=.. \
			LD_PRELOAD="$LIBCOPY" REKEYGUARD_MODE=guard REKEYGUARD_LOG=debug \
			LD_DEBUG=bindings LD_DEBUG_OUTPUT="$dir/ld" "./$probe") >"$dir/test.log" 2>&1 9>&- || true
		grep -l 'librekeyguard' "$dir"/ld.* 2>/dev/null | xargs -r grep -h 'binding file' |
			grep '`gnutls_' >"$dir/bindings.txt" || true
		grep -q "binding file $LIBCOPY .* to $intree .*\`gnutls_record_recv'" "$dir/bindings.txt" || {
			printf '%s: bind check: the shim did not bind gnutls_record_recv to %s\n' "$PROG" "$intree" >&2; ok=0; }
		grep -q "binding file [^ ]*$probe .* to $LIBCOPY .*\`gnutls_record_recv'" "$dir/bindings.txt" || {
			printf '%s: bind check: %s does not call the shim for gnutls_record_recv\n' "$PROG" "$probe" >&2; ok=0; }
		other=$(grep ' to [^ ]*libgnutls\.so' "$dir/bindings.txt" | grep -v " to $intree " || true)
		if [ -n "$other" ]; then
			printf '%s: bind check: %s bound to another libgnutls:\n' "$PROG" "$probe" >&2
			printf '%s\n' "$other" | head -n3 >&2
			ok=0
		fi
		grep -q '^rekeyguard: .*guarding' "$dir/test.log" || {
			printf '%s: bind check: no "rekeyguard: ... guarding" line from %s (%s)\n' "$PROG" "$probe" "$dir/test.log" >&2; ok=0; }
	else
		printf '%s: bind check: no %s in this build; C-test check skipped\n' "$PROG" "$probe" >&2
	fi
	if [ -x "$SRC/src/gnutls-cli" ]; then
		env -u LD_PRELOAD LD_PRELOAD="$LIBCOPY" LD_DEBUG=files LD_DEBUG_OUTPUT="$dir/cli" \
			"$SRC/src/gnutls-cli" --version >/dev/null 2>&1 9>&- || true
		f=$(grep -l "calling init: $intree\$" "$dir"/cli.* 2>/dev/null | head -n1)
		if [ -z "$f" ] || ! grep -q "calling init: $LIBCOPY\$" "$f"; then
			printf '%s: bind check: gnutls-cli does not load both the shim and %s\n' "$PROG" "$intree" >&2; ok=0
		elif [ -n "$(grep 'calling init: [^ ]*libgnutls\.so' "$f" | grep -v "calling init: $intree\$" || true)" ]; then
			printf '%s: bind check: gnutls-cli loads another libgnutls too\n' "$PROG" >&2; ok=0
		else
			grep -h 'calling init:' "$f" >"$dir/gnutls-cli-objects.txt"
		fi
	fi
	rm -f "$dir"/ld.* "$dir"/cli.*
	[ "$ok" = 1 ] || die "the preloaded library does not guard the in-tree GnuTLS; see $dir"
	phase "bind check: the tests and gnutls-cli call the shim, the shim calls $intree (see $dir)"
}

# ---- 5. run -------------------------------------------------------------
case $MODE in
full) phase "running the full suite: make -k -j$JOBS -C tests check (plain, then preloaded)" ;;
*) phase "running $(wc -w <<<"$TEST_LIST") tests ($MODE): plain, then preloaded" ;;
esac
run_suite plain "$RESULTS/plain" "$([ "$MODE" = full ] || printf '%s' "$TEST_LIST")"
bind_check
run_suite preloaded "$RESULTS/preloaded" "$([ "$MODE" = full ] || printf '%s' "$TEST_LIST")"

diff_results "$RESULTS/plain/results.tsv" "$RESULTS/preloaded/results.tsv" >"$RESULTS/differences.txt"
NDIFF=$(wc -l <"$RESULTS/differences.txt")

if [ "$NDIFF" -gt 0 ]; then
	printf '\n%s: %d tests differ (test: plain -> preloaded)\n' "$PROG" "$NDIFF"
	while IFS=$'\t' read -r t a b; do
		log=$RESULTS/preloaded/$t.log
		[ -f "$log" ] || log=$RESULTS/preloaded/${t%.sh}.log   # automake's name for x.sh
		printf '\n=== %s: plain %s, preloaded %s; tail of %s\n' "$t" "$a" "$b" "$log"
		if [ -f "$log" ]; then
			tail -n 25 "$log" | sed 's/^/    /'
		else
			echo "    (no log)"
		fi
	done <"$RESULTS/differences.txt"
	echo
	if [ "$RECHECK" -gt 0 ]; then
		difflist=$(cut -f1 "$RESULTS/differences.txt" | paste -sd' ' -)
		difflist=$(filter_tests "$difflist" 2>/dev/null)
		if [ -n "$difflist" ]; then
			phase "recheck: $RECHECK more run(s) of the $NDIFF differing tests, each way"
			for i in $(seq 1 "$RECHECK"); do
				run_suite plain "$RESULTS/recheck-$i/plain" "$difflist" >/dev/null
				run_suite preloaded "$RESULTS/recheck-$i/preloaded" "$difflist" >/dev/null
			done
			while IFS=$'\t' read -r t a b; do
				same=0
				for i in $(seq 1 "$RECHECK"); do
					ra=$(awk -F'\t' -v t="$t" '$1 == t { print $2 }' "$RESULTS/recheck-$i/plain/results.tsv")
					rb=$(awk -F'\t' -v t="$t" '$1 == t { print $2 }' "$RESULTS/recheck-$i/preloaded/results.tsv")
					[ "$ra" = "$a" ] && [ "$rb" = "$b" ] && same=$((same + 1))
				done
				if [ "$same" = "$RECHECK" ]; then
					printf '  recheck %s: reproducible (%d/%d)\n' "$t" "$same" "$RECHECK"
				else
					printf '  recheck %s: FLAKY (%d/%d reruns reproduced it; see %s/recheck-*)\n' \
						"$t" "$same" "$RECHECK" "$RESULTS"
				fi
			done <"$RESULTS/differences.txt" | tee "$RESULTS/recheck.txt"
		fi
	fi
fi

SUMMARY="$PROG: $UPSTREAM: plain $(counts "$RESULTS/plain/results.tsv"); preloaded $(counts "$RESULTS/preloaded/results.tsv"); $NDIFF differences"
printf '%s\n' "$SUMMARY" | tee "$RESULTS/summary.txt"
printf 'library %s; GnuTLS %s (%s); results in %s\n' "$LIB_INFO" "$DEB_VERSION" "$MODE" "$RESULTS" >>"$RESULTS/summary.txt"
phase "done; results in $RESULTS"
[ "$NDIFF" = 0 ]
