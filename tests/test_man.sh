#!/bin/sh
# The manual pages render without a warning, fit 80 columns, and cannot
# drift from the programs: every function libpgtx exports is named in
# pgtx.3, and every long option the programs' --help prints is in their page.
# Usage: test_man.sh MANDIR LIBPGTX.so PGTX-SHOP PGTX-RACE
set -eu
mandir="$1" lib="$2" shop="$3" race="$4"
width=80
failed=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

fail() { echo "FAIL: $*"; failed=1; }

need() {
  command -v "$1" >/dev/null 2>&1 ||
    { echo "FAIL: $1 not found (Debian package $2)"; exit 1; }
}
need man man-db
need groff groff-base
need nm binutils

# Both renderers, every groff warning on: man-db as a reader would run it,
# and groff itself.  Any output on stderr is a failure.
render() {
  page="$1"
  if ! LC_ALL=C.UTF-8 MANWIDTH=$width man --warnings=w -l "$page" \
        >"$tmp/out" 2>"$tmp/err"; then
    fail "man -l $page exited non-zero"; cat "$tmp/err"
  fi
  if [ -s "$tmp/err" ]; then
    fail "man -l $page warned:"; cat "$tmp/err"
  fi
  if ! groff -man -Tutf8 -ww -z "$page" 2>"$tmp/gerr" || [ -s "$tmp/gerr" ]; then
    fail "groff -ww $page warned or failed:"; cat "$tmp/gerr"
  fi
  grep -q '^NAME' "$tmp/out" || fail "$page has no NAME section"
  long=$(expand "$tmp/out" | awk -v w=$width 'length($0) > w' | head -3)
  [ -z "$long" ] || { fail "$page has lines wider than $width columns:"; echo "$long"; }
}

# The roff source with scdoc's font changes and escapes taken out, so that a
# name is found however it is set (bold, italic) and never split by
# hyphenation as the rendered text can be.
plain() {
  sed -e 's/\\f[BIRP]//g' -e 's/\\-/-/g' -e 's/\\&//g' -e 's/\\e/\\/g' "$1"
}

# Whole words only: pgtx_run must not pass on pgtx_run_info, nor --data on
# --data-dir.
mentions() {
  grep -Eq -- "(^|[^A-Za-z0-9_-])$2([^A-Za-z0-9_-]|\$)" "$1"
}

long_options() {
  grep -Eo -- '--[a-z][a-z0-9-]*' | sort -u
}

# what: a description for messages; page: the plain text; then the names.
covered() {
  what="$1" page="$2"
  shift 2
  for name in "$@"; do
    mentions "$page" "$name" || fail "$what $name is not in $(basename "$page" .txt)"
  done
}

pages="pgtx-shop.1 pgtx-race.1 pgtx.3"
for p in $pages; do
  if [ -f "$mandir/$p" ]; then
    render "$mandir/$p"
    plain "$mandir/$p" >"$tmp/$p.txt"
  else
    fail "$mandir/$p was not built"
    : >"$tmp/$p.txt"
  fi
done

# Exports, listed as tests/check_exports.sh lists them.
exports=$(nm -D --defined-only "$lib" | awk '$2 ~ /^[TDBR]$/ {print $3}' | sort -u)
count=$(echo "$exports" | grep -c '^pgtx_' || true)
[ "$count" -gt 20 ] || fail "only $count pgtx_ exports found in $lib"
# shellcheck disable=SC2086 # one word per export
covered "exported function" "$tmp/pgtx.3.txt" $exports

"$shop" --help >"$tmp/shop-help" || fail "$shop --help exited non-zero"
# shellcheck disable=SC2046
covered "pgtx-shop option" "$tmp/pgtx-shop.1.txt" $(long_options <"$tmp/shop-help")

: >"$tmp/race-help"
for sub in "" bench replay; do
  # shellcheck disable=SC2086 # no subcommand: the top-level --help
  "$race" $sub --help >>"$tmp/race-help" || fail "pgtx-race $sub --help exited non-zero"
done
# shellcheck disable=SC2046
covered "pgtx-race option" "$tmp/pgtx-race.1.txt" $(long_options <"$tmp/race-help")

# The subcommands, scenarios and strategies the programs name.
# shellcheck disable=SC2046
covered "pgtx-race word" "$tmp/pgtx-race.1.txt" replay bench \
  $(sed -n 's/^scenarios: //p; s/^strategies: //p' "$tmp/race-help")

if [ "$failed" -ne 0 ]; then
  echo "man: the pages above need fixing (docs/man/*.scd)"
  exit 1
fi
echo "man: $pages render cleanly; $count exports and every --help option documented"
