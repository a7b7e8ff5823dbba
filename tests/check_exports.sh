#!/bin/sh
# Fails if the shared library exports a symbol without the pgtx_ prefix.
set -eu
lib="$1"
bad=$(nm -D --defined-only "$lib" | awk '$2 ~ /^[TDBR]$/ {print $3}' | grep -v '^pgtx_' || true)
count=$(nm -D --defined-only "$lib" | awk '$2 ~ /^[TDBR]$/' | grep -c ' pgtx_' || true)
if [ -n "$bad" ]; then
  echo "symbols exported without the pgtx_ prefix:"; echo "$bad"; exit 1
fi
[ "$count" -gt 20 ] || { echo "only $count pgtx_ symbols exported"; exit 1; }
echo "exports: $count pgtx_ symbols, no others"
