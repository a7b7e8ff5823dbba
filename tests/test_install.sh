#!/bin/sh
# `cmake --install` into a throw-away prefix, then use it as a user would:
# build the README's example with pkg-config from that prefix (never the
# build tree), run it with LD_LIBRARY_PATH and once with an RPATH, check its
# transfers in the database, and run both installed programs, also after the
# whole prefix has moved (their RPATH is $ORIGIN-relative, the .pc file
# finds its prefix from its own folder).
# Usage: test_install.sh BUILD_DIR path/to/quickstart.c
set -eu
build=$1
example=$2
tmp=$(mktemp -d)
tmp=$(realpath "$tmp") # compared with what pkg-config and ldd print
# The example's table lives in a schema of this run: the quickstart test and
# a user's own acct table are left alone.
schema=pgtx_install_$$
export PGOPTIONS="${PGOPTIONS:-} -c search_path=$schema"
q() { psql -X -q -At -v ON_ERROR_STOP=1 ${PGTX_TEST_DSN:+"$PGTX_TEST_DSN"} -c "$1"; }
cleanup() {
  q "DROP SCHEMA IF EXISTS $schema CASCADE" || true
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 1' INT TERM
die() { echo "install: $*" >&2; exit 1; }

prefix=$tmp/prefix
env -u DESTDIR cmake --install "$build" --prefix "$prefix" >/dev/null
outside=$(grep -v "^$prefix/" "$build/install_manifest.txt" || true)
[ -z "$outside" ] || die "installed outside the prefix: $outside"

pc=$(find "$prefix" -name pgtx.pc)
[ -n "$pc" ] || die "no pgtx.pc under $prefix"
pcdir=$(dirname "$pc")
libdir=$(realpath "$(PKG_CONFIG_PATH=$pcdir pkg-config --variable=libdir pgtx)")
case $libdir in "$prefix"/*) ;; *) die "pkg-config's libdir $libdir is not under $prefix";; esac
[ -f "$libdir/libpgtx.so.0" ] || die "no libpgtx.so.0 in $libdir"
flags=$(PKG_CONFIG_PATH=$pcdir pkg-config --cflags --libs pgtx)
# A sanitizer build's libpgtx.so needs the sanitizer runtimes loaded first:
# a program that links it is built with the same flags.
if readelf -d "$libdir/libpgtx.so.0" | grep -q 'libasan'; then
  flags="$flags -fsanitize=address,undefined"
fi
case $flags in *"$(realpath "$build")"*) die "pkg-config points into the build tree: $flags";; esac

# The shared library from the prefix: found through LD_LIBRARY_PATH...
# (flags unquoted: pkg-config's words)
# shellcheck disable=SC2086
cc -o "$tmp/qs" "$example" $flags
LD_LIBRARY_PATH=$libdir ldd "$tmp/qs" | grep -q "libpgtx.so.0 => $libdir/libpgtx.so.0" ||
  die "quickstart does not load $libdir/libpgtx.so.0"
q "CREATE SCHEMA $schema"
LD_LIBRARY_PATH=$libdir "$tmp/qs"
[ "$(q 'SELECT string_agg(bal::text, $$ $$ ORDER BY id) FROM acct')" = "90 10" ] ||
  die "after the first run the balances are not 90 10"

# ... and through an RPATH, with no LD_LIBRARY_PATH.
# shellcheck disable=SC2086
cc -o "$tmp/qs-rpath" "$example" $flags -Wl,-rpath,"$libdir"
env -u LD_LIBRARY_PATH ldd "$tmp/qs-rpath" | grep -q "libpgtx.so.0 => $libdir/libpgtx.so.0" ||
  die "quickstart with -rpath does not load $libdir/libpgtx.so.0"
env -u LD_LIBRARY_PATH "$tmp/qs-rpath"
[ "$(q 'SELECT string_agg(bal::text, $$ $$ ORDER BY id) FROM acct')" = "80 20" ] ||
  die "after the second run the balances are not 80 20"

# The programs, where they were installed and after moving the prefix.
version=$(PKG_CONFIG_PATH=$pcdir pkg-config --modversion pgtx)
programs() {
  for p in pgtx-shop pgtx-race; do
    bin=$1/bin/$p
    [ "$(env -u LD_LIBRARY_PATH "$bin" --version)" = "$p $version" ] ||
      die "$bin --version does not print '$p $version'"
    ! env -u LD_LIBRARY_PATH ldd "$bin" | grep -q 'not found' || die "$bin: a library is not found"
    # $ORIGIN/../LIBDIR must name the folder that holds libpgtx.so.0.
    runpath=$(readelf -d "$bin" | sed -n 's/.*(RUNPATH).*\[\(.*\)\]/\1/p')
    [ -n "$runpath" ] || die "$bin has no RUNPATH"
    [ -f "$(echo "$runpath" | sed "s|\\\$ORIGIN|$1/bin|")/libpgtx.so.0" ] ||
      die "$bin: RUNPATH $runpath does not lead to libpgtx.so.0"
  done
}
programs "$prefix"
mv "$prefix" "$tmp/moved"
programs "$tmp/moved"
moved_libdir=$(PKG_CONFIG_PATH=$tmp/moved/${pcdir#"$prefix"/} pkg-config --variable=libdir pgtx)
[ "$(realpath "$moved_libdir")" = "$tmp/moved/${libdir#"$prefix"/}" ] ||
  die "the moved pgtx.pc says libdir $moved_libdir"
echo "install: libpgtx from $prefix built and ran the quickstart; pgtx-shop and pgtx-race $version ran from it and from a moved copy"
