#!/usr/bin/env bash
# The Debian packages as a user gets them: install the .deb files of
# DEB_DIR (scripts/package.sh made them), check what landed, build the
# README's example against libpgtx-dev with pkg-config, run the installed
# pgtx-shop (the unit under systemd, else the binary as its user with
# /etc/default/pgtx-shop's settings) on its own cluster and on DATABASE_URL,
# one order each, then purge everything.  Needs root (sudo otherwise) and a
# database in libpq's PG* environment (scripts/with-pg.sh gives one).
# Usage: scripts/deb-smoke.sh [DEB_DIR]     (default build/deb)
set -euo pipefail
cd "$(dirname "$0")/.."
DEB_DIR=${1:-${DEB_DIR:-build/deb}}
PACKAGES=(libpgtx0 libpgtx-dev pgtx-shop pgtx-race)
SHOP_STATE=/var/lib/pgtx-shop
SHOP_DEFAULT=/etc/default/pgtx-shop

systemd_running() {
  local state
  state=$(systemctl is-system-running 2>/dev/null || true)
  case $state in running|degraded|starting|initializing) return 0 ;; esac
  return 1
}

# Ours that dpkg knows in any state but purged (half-installed and
# config-files included).
installed_packages() {
  local p st
  for p in "${PACKAGES[@]}"; do
    st=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    case $st in "" | *not-installed) ;; *) echo "$p" ;; esac
  done
}

fail() { echo "deb-smoke: $*" >&2; exit 1; }

SMOKE_PID=
SMOKE_LOG=
SMOKE_TMP=
HAD_USER=1

# The service as it would run without systemd: as pgtx-shop, in its state
# folder, with nothing in its environment but /etc/default/pgtx-shop's
# settings and the unit's own.
start_direct() {
  local settings
  mapfile -t settings < <(grep -E '^[A-Za-z_][A-Za-z0-9_]*=' "$SHOP_DEFAULT" || true)
  SMOKE_LOG=$SMOKE_TMP/shop.log
  (cd "$SHOP_STATE" &&
    exec setpriv --reuid=pgtx-shop --regid=pgtx-shop --init-groups \
      env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME="$SHOP_STATE" LANG=C.UTF-8 \
        PGTX_DATA_DIR="$SHOP_STATE/pgdata" "${settings[@]}" /usr/bin/pgtx-shop) \
    >"$SMOKE_LOG" 2>&1 &
  SMOKE_PID=$!
  local deadline=$((SECONDS + 120))
  until grep -q '^pgtx-shop: listening on ' "$SMOKE_LOG"; do
    kill -0 "$SMOKE_PID" 2>/dev/null || { cat "$SMOKE_LOG" >&2; fail "pgtx-shop exited before listening"; }
    [ $SECONDS -lt $deadline ] || { cat "$SMOKE_LOG" >&2; fail "pgtx-shop not listening after 120 s"; }
    sleep 0.2
  done
}

stop_direct() {
  kill -TERM "$SMOKE_PID"
  local rc=0
  wait "$SMOKE_PID" || rc=$?
  SMOKE_PID=
  [ $rc -eq 0 ] || { cat "$SMOKE_LOG" >&2; fail "pgtx-shop exited $rc after SIGTERM"; }
}

# POST $1 with bearer $2 and body $3 (and header $5): sets BODY, fails
# unless the status is $4.
post() {
  local out
  out=$(curl -sS --max-time 30 -w '\n%{http_code}' -X POST "$BASE$1" \
        -H "Authorization: Bearer $2" -H 'Content-Type: application/json' \
        ${5:+-H "$5"} -d "$3")
  BODY=${out%$'\n'*}
  [ "${out##*$'\n'}" = "$4" ] || fail "POST $1: HTTP ${out##*$'\n'} $BODY, want $4"
}

field() { /usr/bin/python3 -c 'import json, sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$BODY" "$1"; }

# One account, one product, one order through the installed service.
smoke_round() {
  echo "-- pgtx-shop from the package, $1"
  if systemd_running; then
    systemctl restart pgtx-shop.service # Type=notify: returns once it serves
    systemctl is-active --quiet pgtx-shop.service || fail "pgtx-shop.service is not active"
  else
    start_direct
  fi
  local admin account token product
  admin=$(cat "$SHOP_STATE/admin-token")
  post /v1/accounts "$admin" '{"name":"deb-smoke","balance":10000}' 201
  account=$(field id)
  token=$(field token)
  post /v1/products "$admin" '{"name":"deb-smoke widget","price":2500,"stock":3}' 201
  product=$(field id)
  post /v1/orders "$token" "{\"account_id\":$account,\"product_id\":$product,\"quantity\":2}" 201 \
    'Idempotency-Key: deb-smoke-1'
  [ "$(field total)" = 5000 ] || fail "the order's total is $(field total), want 5000"
  if systemd_running; then
    systemctl stop pgtx-shop.service
    [ "$(systemctl show -p Result --value pgtx-shop.service)" = success ] || fail "pgtx-shop.service did not stop cleanly"
  else
    stop_direct
  fi
  # (zombies aside: the cluster's postmaster is reparented to PID 1, which
  # may take a moment to reap it)
  local left
  left=$(ps -u pgtx-shop -o stat=,pid=,args= | awk '$1 !~ /^Z/' || true)
  [ -z "$left" ] || fail "processes of pgtx-shop left after it stopped: $left"
  echo "$1: account $account, product $product, order 201 (total 5000); stopped cleanly"
}

# Whatever happens, the machine is left as it was: the service stopped,
# the packages purged, the user gone if this run made it.
smoke_cleanup() {
  if [ -n "$SMOKE_PID" ]; then
    kill -TERM "$SMOKE_PID" 2>/dev/null || true
    local deadline=$((SECONDS + 30))
    while kill -0 "$SMOKE_PID" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
    kill -KILL "$SMOKE_PID" 2>/dev/null || true
  fi
  if [ -f "$SHOP_STATE/pgdata/postmaster.pid" ]; then # its cluster, if it was killed
    local pg_ctl
    for pg_ctl in /usr/lib/postgresql/*/bin/pg_ctl; do
      setpriv --reuid=pgtx-shop --regid=pgtx-shop --init-groups \
        "$pg_ctl" stop -D "$SHOP_STATE/pgdata" -m immediate >/dev/null 2>&1 && break
    done
  fi
  local left
  mapfile -t left < <(installed_packages)
  [ ${#left[@]} -eq 0 ] || apt-get purge -y -qq "${left[@]}" >/dev/null || true
  if [ "$HAD_USER" -eq 0 ] && getent passwd pgtx-shop >/dev/null; then
    userdel pgtx-shop || true
  fi
  if [ "$HAD_USER" -eq 0 ] && getent group pgtx-shop >/dev/null; then
    groupdel pgtx-shop || true
  fi
  [ -z "$SMOKE_TMP" ] || rm -rf "$SMOKE_TMP"
}

deb_smoke() {
  [ "$(id -u)" -eq 0 ] || exec sudo -E "$0" "$DEB_DIR"
  local debs=() f
  for f in "$DEB_DIR"/*.deb; do
    case $f in *-dbgsym_*) ;; *) debs+=("$(realpath "$f")") ;; esac
  done
  [ ${#debs[@]} -eq ${#PACKAGES[@]} ] || fail "want ${#PACKAGES[@]} packages in $DEB_DIR, found ${debs[*]}"
  [ -z "$(installed_packages)" ] || fail "pgtx packages already installed: $(installed_packages | tr '\n' ' ')"
  getent passwd pgtx-shop >/dev/null || HAD_USER=0
  SMOKE_TMP=$(mktemp -d)
  trap smoke_cleanup EXIT

  apt-get install -y -qq "${debs[@]}" >/dev/null
  echo "installed: $(installed_packages | tr '\n' ' ')"
  [ "$(stat -c %U:%G:%a "$SHOP_STATE")" = pgtx-shop:pgtx-shop:750 ] || fail "$SHOP_STATE: $(stat -c %U:%G:%a "$SHOP_STATE")"
  [ "$(stat -c %a "$SHOP_DEFAULT")" = 600 ] || fail "$SHOP_DEFAULT: mode $(stat -c %a "$SHOP_DEFAULT")"
  /usr/bin/pgtx-race --version
  for f in man1/pgtx-shop.1.gz man1/pgtx-race.1.gz man3/pgtx.3.gz; do
    dpkg-query -L "${PACKAGES[@]}" | grep -qx "/usr/share/man/$f" || fail "no $f in the packages"
  done

  # libpgtx-dev: the README's example, built with pkg-config alone.
  # shellcheck disable=SC2046
  cc -o "$SMOKE_TMP/quickstart" examples/quickstart.c $(pkg-config --cflags --libs pgtx)
  PGOPTIONS="-c search_path=deb_smoke" psql -X -q -c 'CREATE SCHEMA deb_smoke'
  PGOPTIONS="-c search_path=deb_smoke" "$SMOKE_TMP/quickstart"
  psql -X -q -c 'DROP SCHEMA deb_smoke CASCADE'

  local port
  port=$(/usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  BASE=http://127.0.0.1:$port
  echo "PGTX_LISTEN=127.0.0.1:$port" >>"$SHOP_DEFAULT"
  smoke_round "its own cluster in $SHOP_STATE/pgdata"
  echo "DATABASE_URL=postgresql://$PGUSER:$PGPASSWORD@$PGHOST:$PGPORT/$PGDATABASE" >>"$SHOP_DEFAULT"
  smoke_round "DATABASE_URL from $SHOP_DEFAULT"

  apt-get purge -y -qq "${PACKAGES[@]}" >/dev/null
  for f in /usr/bin/pgtx-shop /usr/bin/pgtx-race "$SHOP_DEFAULT" "$SHOP_STATE" \
           /lib/systemd/system/pgtx-shop.service /usr/include/pgtx.h; do
    [ ! -e "$f" ] || fail "$f is still there after the purge"
  done
  [ -z "$(installed_packages)" ] || fail "still installed after the purge: $(installed_packages)"
  echo "purged: nothing of the packages is left"
}

deb_smoke
