#!/usr/bin/env bash
# The high-availability lab (scripts/ha.sh) as the failover tests use it:
# `ha.sh run --replica -- CMD` brings up a monitor, node1 and node2 in
# synchronous replication and the read replica node3, and CMD (this script
# with --inside) checks that a write on the write URI reaches the replica,
# that a planned failover and a killed primary each move the primary to the
# other node without losing the row, and that writes work afterwards.  The
# lab's own figures (time to come up, to a new primary, to rejoin) are
# printed, never asserted: the machine may be busy.
# usage: test_ha_lab.sh [CMD...]: CMD runs after those checks, on the same
# lab, with its PGTX_HA_* variables (ctest passes tests/test_standby.c's
# binary).
# Needs pg_autoctl (Debian's postgresql-15-auto-failover, scripts/deps.sh);
# exits 77 (skipped) without it.  Uses its own state folder and free ports,
# and none of libpq's PG* variables (scripts/with-pg.sh's cluster is unused).
set -euo pipefail

fail() { echo "FAIL: $*" >&2; exit 1; }

# psql against a URI: one unaligned value
q() { PGCONNECT_TIMEOUT=5 psql -X -q -A -t -v ON_ERROR_STOP=1 -d "$1" -c "$2"; }

# Runs "$@" every 0.2 s until it succeeds, for at most $1 seconds.
eventually() {
  local secs=$1 i
  shift
  for ((i = 0; i < secs * 5; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  return 1
}

row_on() { [ "$(q "$1" "select note from ha_lab where id = $2")" = "$3" ]; }

inside() {
  local w=$PGTX_HA_WRITE_URI r=$PGTX_HA_READ_URI ha=$PGTX_HA_SCRIPT
  local base=${PGTX_HA_PORT:?} p0 p1 p2 names
  [ -x "$ha" ] || fail "PGTX_HA_SCRIPT is not the script: $ha"
  [ -d "$PGTX_HA_DIR" ] || fail "PGTX_HA_DIR does not exist: $PGTX_HA_DIR"
  q "$PGTX_HA_MONITOR_URI" "select count(*) from pgautofailover.node" | grep -qx 3 \
    || fail "the monitor does not list 3 nodes"

  q "$w" "create table ha_lab (id int primary key, note text not null)" >/dev/null
  q "$w" "insert into ha_lab values (1, 'before')" >/dev/null
  p0=$(q "$w" "select inet_server_port()")
  [ "$(q "$w" "select pg_is_in_recovery()")" = f ] || fail "the write URI reached a standby"

  # node3 is asynchronous: the row gets there soon, not at commit
  [ "$(q "$r" "select inet_server_port()")" = $((base + 3)) ] || fail "the read URI is not node3"
  [ "$(q "$r" "select pg_is_in_recovery()")" = t ] || fail "the read URI reached a primary"
  eventually 30 row_on "$r" 1 before || fail "the row did not reach the replica"

  names=$(q "$w" "show synchronous_standby_names")
  [ -n "$names" ] || fail "synchronous_standby_names is empty on the primary"
  [ "$(q "$w" "show synchronous_commit")" = on ] || fail "synchronous_commit is not on"
  echo "ha_lab: primary on port $p0, synchronous_standby_names = '$names'"

  "$ha" failover || fail "ha.sh failover"
  p1=$(q "$w" "select inet_server_port()")
  [ "$p1" != "$p0" ] || fail "planned failover: the primary is still on port $p0"
  [ "$("$ha" primary | cut -d' ' -f2)" = "$p1" ] || fail "ha.sh primary is not port $p1"
  row_on "$w" 1 before || fail "the row is gone after the planned failover"

  "$ha" kill-primary || fail "ha.sh kill-primary"
  p2=$(q "$w" "select inet_server_port()")
  [ "$p2" != "$p1" ] || fail "unplanned failover: the primary is still on port $p1"
  row_on "$w" 1 before || fail "the row is gone after the unplanned failover"
  q "$w" "insert into ha_lab values (2, 'after')" >/dev/null || fail "no write after the failover"
  [ "$(q "$w" "select count(*) from ha_lab")" = 2 ] || fail "not 2 rows after the failover"
  [ -n "$(q "$w" "show synchronous_standby_names")" ] \
    || fail "synchronous_standby_names is empty after the rejoin"
  eventually 30 row_on "$r" 2 after || fail "the new row did not reach the replica"
  "$ha" status
  echo "ha_lab: primary moved $p0 -> $p1 (planned) -> $p2 (killed); rows kept"
}

if [ "${1:-}" = --inside ]; then
  shift
  inside
  # then the commands given (libpgtx's test_standby), on the same lab: one
  # formation brought up for both
  [ $# -eq 0 ] || "$@"
  exit $?
fi

command -v pg_autoctl >/dev/null || { echo "SKIP: pg_autoctl not installed (scripts/deps.sh)"; exit 77; }
HA=$(cd "$(dirname "$0")/../scripts" && pwd)/ha.sh
SELF=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")

# four consecutive free ports, away from the lab's default 6540 that a user
# may have up
base=""
for try in 6560 6570 6580 6590 6600 6610 6620 6630; do
  free=1
  for p in "$try" $((try + 1)) $((try + 2)) $((try + 3)); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then free=0; fi
  done
  if [ "$free" -eq 1 ]; then base=$try; break; fi
done
[ -n "$base" ] || fail "no 4 free ports from 6560 to 6633"
export PGTX_HA_PORT=$base PGTX_HA_DIR=/tmp/pgtx-ha-lab-test.$$
# ha.sh downs the lab itself, on failure and on the timeout's SIGTERM too;
# this is for a SIGKILL after the grace period
trap '"$HA" down >/dev/null 2>&1 || true' EXIT

start=$(date +%s)
rc=0
timeout -k 20 480 "$HA" run --replica -- "$SELF" --inside "$@" || rc=$?
echo "ha_lab: whole run $(($(date +%s) - start)) s, status $rc"
[ "$rc" -eq 0 ] || fail "the run ended with status $rc (124: timed out)"
[ ! -e "$PGTX_HA_DIR" ] || fail "$PGTX_HA_DIR is left after down"
for p in "$base" $((base + 1)) $((base + 2)) $((base + 3)); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then fail "port $p still listens after down"; fi
done
echo "ha_lab: OK"
