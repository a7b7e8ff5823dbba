#!/usr/bin/env bash
# Build the Debian packages (libpgtx0, libpgtx-dev, pgtx-shop, pgtx-race)
# and check them with lintian.  The build runs in a copy of the source tree
# under OUT_DIR, which is removed afterwards: dpkg-buildpackage leaves
# nothing in the checkout.  The .deb, .changes and .buildinfo files land in
# OUT_DIR.
# Usage: scripts/package.sh [OUT_DIR]     (default build/deb)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-build/deb}
mkdir -p "$out"
out=$(cd "$out" && pwd)

SUDO=
[ "$(id -u)" -eq 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive

# The packaging tools, plus whatever debian/control's Build-Depends names
# that scripts/deps.sh did not install.  Kept out of scripts/deps.sh: only
# packaging needs them.
install_missing() {
  [ $# -eq 0 ] && return 0
  echo "package: installing $*" >&2
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq "$@" >/dev/null
}
tools=()
for p in debhelper dpkg-dev fakeroot lintian; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || tools+=("$p")
done
install_missing "${tools[@]}"
# "Unmet build dependencies: cmake (>= 3.18) scdoc" -> cmake scdoc
mapfile -t unmet < <(dpkg-checkbuilddeps 2>&1 |
  sed -n 's/.*Unmet build dependencies: //p' | sed 's/([^)]*)//g; s/|/ /g' | tr -s ' ' '\n' | sed '/^$/d')
install_missing "${unmet[@]}"

version=$(dpkg-parsechangelog -S Version)
upstream=${version%-*}
work=$out/src
tree=$work/pgtx-$upstream
trap 'rm -rf "$work"' EXIT
rm -rf "$work"
mkdir -p "$tree"

# The tree as it is (uncommitted changes included) less what git ignores:
# build folders, the embedded cluster of `make run`, caches.
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  git ls-files -z --cached --others --exclude-standard |
    while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done |
    tar --null -T - -cf - | tar -C "$tree" -xf -
else
  tar --exclude=./build --exclude=./.pgtx --exclude=./data -cf - . | tar -C "$tree" -xf -
fi

rm -f "$out"/*.deb "$out"/*.changes "$out"/*.buildinfo
echo "== dpkg-buildpackage -b ($version)"
# nocheck: debian/rules says why the tests do not run in a package build.
(cd "$tree" &&
  DEB_BUILD_OPTIONS="nocheck parallel=$(nproc) ${DEB_BUILD_OPTIONS:-}" \
    dpkg-buildpackage -b -us -uc >"$work/build.log" 2>&1) || {
  tail -n 60 "$work/build.log" >&2
  echo "package: dpkg-buildpackage failed (the last lines are above)" >&2
  exit 1
}
mv "$work"/*.deb "$work"/*.changes "$work"/*.buildinfo "$out"/

echo "== lintian"
changes=("$out"/pgtx_"${version}"_*.changes)
# Errors and warnings fail; info tags are shown.  Overrides, each with its
# reason, are in debian/*.lintian-overrides.
lintian --display-info --fail-on error,warning "${changes[@]}"
echo "lintian: no errors, no warnings"
ls -1 "$out"/*.deb
