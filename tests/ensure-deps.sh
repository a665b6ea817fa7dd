#!/bin/sh
# ensure-deps.sh PKG... — make sure the Debian packages are installed.
# As root: installs what is missing with apt-get.  Otherwise: prints the
# exact command to run and fails.
missing=""
for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ]; then
    echo "rekeyguard: installing missing Debian packages:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q $missing >/dev/null 2>&1 ||
        { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q $missing; } ||
        { echo "rekeyguard: apt-get install failed for:$missing" >&2; exit 1; }
else
    echo "rekeyguard: missing Debian packages. Run as root:" >&2
    echo "    apt-get install -y$missing" >&2
    exit 1
fi
