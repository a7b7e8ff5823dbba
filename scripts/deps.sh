#!/usr/bin/env bash
# Install the Debian packages pgtx needs to build, test and run, skipping
# those already installed.  Uses sudo when not root.
set -euo pipefail

PACKAGES=(
  gcc clang make cmake pkg-config python3
  libpq-dev libcmocka-dev
  libmicrohttpd-dev libjansson-dev libsodium-dev libsystemd-dev curl
  python3-jsonschema python3-yaml scdoc man-db groff-base
  postgresql postgresql-common postgresql-contrib pgbouncer
  postgresql-15-auto-failover
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
    || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "pgtx: installing ${missing[*]}" >&2
SUDO=
[ "$(id -u)" -eq 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
