#!/bin/sh
# Every replay scenario under every strategy ends as the strategy promises
# (exit 0), and the timeline shows the mechanism (a wait, a retry, a
# refusal).  Exit statuses: 2 for bad usage or a bad value (a bad connection
# string included, from the flag or DATABASE_URL, unless a flag overrides
# the variable), 3 when it cannot run (no database there; a data folder in
# use).  With no database given, the lab's own cluster in
# ./.pgtx/race/pgdata runs beside pgtx-shop's embedded one in
# ./.pgtx/pgdata of the same folder.
# usage: test_race_replay.sh PGTX_RACE_BINARY   (pgtx-shop beside it;
#        database: PGTX_TEST_DSN, else libpq's PG* environment)
set -eu
B="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")" # the tests change folders
SHOP="$(dirname "$B")/pgtx-shop"
DB="${PGTX_TEST_DSN:-}"
fail() { echo "FAIL: $*"; exit 1; }
unset DATABASE_URL PGTX_DATA_DIR PGTX_RACE_DATA_DIR
tmp=$(mktemp -d /tmp/pgtx-race-replay.XXXXXX)
shop_pid=""
cleanup() {
  if [ -n "$shop_pid" ] && kill -0 "$shop_pid" 2>/dev/null; then
    kill -TERM "$shop_pid" 2>/dev/null || true
    wait "$shop_pid" 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 1' INT TERM
# --version prints the version kept in include/pgtx.h
want=$(sed -n 's/^#define PGTX_VERSION_\(MAJOR\|MINOR\|PATCH\) \([0-9]*\)$/\2/p' \
       "$(dirname "$0")/../include/pgtx.h" | paste -sd.)
[ "$("$B" --version)" = "pgtx-race $want" ] || fail "pgtx-race --version: $("$B" --version), want $want"
runs=0
for sc in lost-update coupon-limit double-claim oversell combined-batch; do
  for st in naive atomic lock optimistic serializable; do
    "$B" replay "$sc" --strategy "$st" --database "$DB" --json > "$tmp/replay.json" \
      || fail "$sc/$st did not end as promised: $(cat "$tmp/replay.json")"
    runs=$((runs + 1))
  done
done
# What each timeline must show, read from its JSON.
check() { # scenario strategy python-expression-over-d
  "$B" replay "$1" --strategy "$2" --database "$DB" --json > "$tmp/replay.json" || true
  python3 - "$3" "$tmp/replay.json" <<'PY' || fail "$1/$2: $3"
import json, sys
d = json.load(open(sys.argv[2]))
kinds = [s["kind"] for s in d["steps"]]
tx = {t["tx"]: t for t in d["transactions"]}
# what the library sent, statement by statement (combined-batch)
stmts = [x for s in d["steps"] if s["kind"] == "sql" for x in s["sql"].split("; ")]
reads = [s["text"] for s in d["steps"] if s["tx"] == 2 and s["kind"] == "read"]
status = [c["status"] for c in d.get("calls", [])]
if not eval("(" + sys.argv[1] + ")"):  # parenthesised: it may span lines
    print(json.dumps(d, indent=1)); sys.exit(1)
PY
}
check lost-update naive 'd["final"].startswith("balance = 200") and not d["correct"] and d["as_promised"]'
check lost-update atomic 'd["final"].startswith("balance = 300") and d["correct"]'
check lost-update lock '"waiting" in kinds and "resumed" in kinds and d["correct"]'
check lost-update optimistic '"retry" in kinds and tx[2]["attempts"] == 2 and d["correct"]'
check lost-update serializable '"retry" in kinds and tx[2]["attempts"] == 2 and d["correct"]'
check coupon-limit naive 'd["final"].startswith("claims = 3") and not d["correct"]'
check coupon-limit lock '"waiting" in kinds and tx[2]["state"] == "refused"'
check coupon-limit serializable '"retry" in kinds and tx[2]["state"] == "refused"'
check double-claim naive 'tx[2]["state"] == "refused" and d["correct"]'
check oversell naive 'd["final"].startswith("stock = 0, orders = 2") and not d["correct"]'
check oversell atomic 'tx[2]["state"] == "refused" and d["final"].startswith("stock = 0, orders = 1")'
# combined-batch: ONE transaction, a savepoint per call; the refused order
# alone rolled back to its savepoint (its queued order row with it), the
# three deposits in by one COMMIT, nothing visible before it.
for st in naive atomic lock optimistic serializable; do
  check combined-batch "$st" 'd["correct"] and d["as_promised"]
    and d["final"].startswith("balance = 275 ") and "stock = 2 " in d["final"] and "orders = 0 " in d["final"]
    and d["batch"]["status"] == "PGTX_OK" and d["batch"]["attempts"] == 1
    and status == ["PGTX_OK", "PGTX_OK", "PGTX_ABORTED", "PGTX_OK"]
    and "out_of_stock" in d["calls"][2]["error"]
    and stmts.count("SAVEPOINT pgtx_call") == 4 and stmts.count("RELEASE SAVEPOINT pgtx_call") == 3
    and stmts.count("ROLLBACK TO SAVEPOINT pgtx_call") == 1 and stmts.count("COMMIT") == 1
    and stmts[-1] == "COMMIT" and d["batch"]["commits"] == 1
    and stmts.index("ROLLBACK TO SAVEPOINT pgtx_call") > [i for i, x in enumerate(stmts) if x.startswith("INSERT INTO replay_order")][0]
    and not any(x.startswith("ROLLBACK") and x != "ROLLBACK TO SAVEPOINT pgtx_call" for x in stmts)
    and reads == ["before the COMMIT: balance = 100, stock = 2, orders = 0",
                  "after the COMMIT: balance = 275, stock = 2, orders = 0"]'
done
check combined-batch lock 'any("FOR NO KEY UPDATE" in x for x in stmts)'
check combined-batch atomic 'stmts[0].startswith("BEGIN ISOLATION LEVEL READ COMMITTED")'
check combined-batch serializable 'stmts[0].startswith("BEGIN ISOLATION LEVEL SERIALIZABLE")'
"$B" replay combined-batch --strategy atomic --database "$DB" > "$tmp/replay.txt" \
  || fail "combined-batch (table): $(cat "$tmp/replay.txt")"
grep -q 'ROLLBACK TO SAVEPOINT pgtx_call' "$tmp/replay.txt" && grep -q '^as promised' "$tmp/replay.txt" \
  && grep -q '^call 3, order .*: PGTX_ABORTED' "$tmp/replay.txt" \
  || fail "combined-batch (table) does not show the rollback to the savepoint: $(cat "$tmp/replay.txt")"
"$B" replay --help | grep -q 'combined-batch' || fail "replay --help does not list combined-batch"
echo "replay: $runs runs as promised (exit 0), 19 timelines checked"

. "$(dirname "$0")/expect_exit.sh"

# 2: bad usage or a bad value, before any database is touched.
expect 2 "unknown scenario" -- "$B" replay nosuch --strategy naive --database "$DB"
expect 2 "unknown strategy" -- "$B" replay lost-update --strategy nosuch --database "$DB"
expect 2 "missing strategy" -- "$B" replay lost-update
expect 2 "--strategy without a value" -- "$B" replay lost-update --strategy
expect 2 "unknown option" -- "$B" replay lost-update --strategy lock --bogus
expect 2 "no subcommand" -- "$B"
expect 2 "unknown subcommand" -- "$B" nosuch
expect 2 "empty --data-dir" -- "$B" replay lost-update --strategy lock --data-dir ""
for bad in "host=localhost port=notaport" "foo" "postgresql://[bad" "port=70000"; do
  expect 2 "--database '$bad'" -- "$B" replay lost-update --strategy lock --database "$bad"
  grep -q -- '--database' "$tmp/err" || fail "--database '$bad': the line does not name --database"
  expect 2 "DATABASE_URL='$bad'" -- env DATABASE_URL="$bad" "$B" replay lost-update --strategy lock
  grep -q 'DATABASE_URL' "$tmp/err" || fail "DATABASE_URL='$bad': the line does not name it"
done
expect 2 "a password in a bad URI" -- "$B" replay lost-update --strategy lock \
  --database "postgresql://u:s3cret@[bad"
if grep -q s3cret "$tmp/err"; then fail "a bad URI's password was printed: $(cat "$tmp/err")"; fi
# A valid flag overrides a bad variable, which is then not read.
DATABASE_URL=foo "$B" replay lost-update --strategy atomic --database "$DB" >/dev/null \
  || fail "DATABASE_URL=foo with a valid --database did not run"
echo "exit 2: bad usage and bad connection strings, one stderr line each; a flag overrides a bad DATABASE_URL"

# 3: could not run.
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
expect 3 "no server in /nonexistent" -- "$B" replay lost-update --strategy lock --database "host=/nonexistent"
expect 3 "nobody on 127.0.0.1:$port" -- "$B" replay lost-update --strategy lock \
  --database "host=127.0.0.1 port=$port connect_timeout=5"
grep -q "$port" "$tmp/err" || fail "unreachable: the line does not name the port: $(cat "$tmp/err")"
echo "exit 3: an unreachable database, one stderr line"

# The lab's own cluster beside pgtx-shop's, in one working folder: the
# shop's embedded cluster holds ./.pgtx/pgdata while a replay with no
# database given starts, uses and stops ./.pgtx/race/pgdata; PGTX_DATA_DIR
# (the shop's variable) is not read.  The cluster may run as the postgres
# user, who must be able to reach the folder.
[ -x "$SHOP" ] || fail "no pgtx-shop beside $B"
chmod 755 "$tmp"
(cd "$tmp" && exec "$SHOP" --listen 127.0.0.1:0 --admin-token race-test >shop.out 2>shop.err) &
shop_pid=$!
i=0
until grep -q '^pgtx-shop: listening on' "$tmp/shop.out" 2>/dev/null; do
  kill -0 "$shop_pid" 2>/dev/null || fail "pgtx-shop with its embedded cluster exited: $(cat "$tmp/shop.err")"
  i=$((i + 1)); [ "$i" -le 600 ] || fail "pgtx-shop did not listen within 120 s: $(cat "$tmp/shop.err")"
  sleep 0.2
done
[ -f "$tmp/.pgtx/pgdata/PG_VERSION" ] || fail "pgtx-shop's cluster is not in $tmp/.pgtx/pgdata"
rc=0
(cd "$tmp" && PGTX_DATA_DIR="$tmp/.pgtx/pgdata" "$B" replay lost-update --strategy lock --json) \
  >"$tmp/replay.json" 2>"$tmp/err" || rc=$?
[ "$rc" -eq 0 ] || fail "replay beside pgtx-shop's cluster: exit $rc: $(cat "$tmp/err")"
grep -q "embedded PostgreSQL in $tmp/.pgtx/race/pgdata" "$tmp/err" \
  || fail "replay did not use ./.pgtx/race/pgdata: $(cat "$tmp/err")"
python3 -c 'import json, sys; d = json.load(open(sys.argv[1])); sys.exit(0 if d["as_promised"] else 1)' \
  "$tmp/replay.json" || fail "replay beside pgtx-shop's cluster: $(cat "$tmp/replay.json")"
# Pointed at the shop's folder (its variable, then the bench), the lab
# cannot start a cluster there: 3; a --data-dir overrides the variable.
expect 3 "PGTX_RACE_DATA_DIR on the shop's folder" -- env -C "$tmp" \
  PGTX_RACE_DATA_DIR="$tmp/.pgtx/pgdata" "$B" replay lost-update --strategy lock
grep -q "in use" "$tmp/err" || fail "busy folder: $(cat "$tmp/err")"
expect 3 "bench --data-dir on the shop's folder" -- env -C "$tmp" \
  "$B" bench --data-dir .pgtx/pgdata --strategy atomic --duration 1
(cd "$tmp" && PGTX_RACE_DATA_DIR="$tmp/.pgtx/pgdata" "$B" replay lost-update --strategy atomic \
  --data-dir .pgtx/race/pgdata >/dev/null 2>"$tmp/err") \
  || fail "--data-dir did not override PGTX_RACE_DATA_DIR: $(cat "$tmp/err")"
kill -0 "$shop_pid" 2>/dev/null || fail "pgtx-shop died while the lab ran: $(cat "$tmp/shop.err")"
python3 - "$tmp/shop.out" <<'PY' || fail "pgtx-shop stopped serving while the lab ran"
import re, sys, urllib.request
port = re.search(r"listening on http://127\.0\.0\.1:(\d+)", open(sys.argv[1]).read()).group(1)
with urllib.request.urlopen("http://127.0.0.1:%s/healthz" % port, timeout=10) as r:
    sys.exit(0 if r.status == 200 else 1)
PY
kill -TERM "$shop_pid"
i=0
while kill -0 "$shop_pid" 2>/dev/null; do
  i=$((i + 1)); [ "$i" -le 300 ] || fail "pgtx-shop did not stop within 60 s of SIGTERM"
  sleep 0.2
done
rc=0; wait "$shop_pid" || rc=$?
shop_pid=""
[ "$rc" -eq 0 ] || fail "pgtx-shop exited $rc after SIGTERM: $(cat "$tmp/shop.err")"
echo "own cluster: replay in ./.pgtx/race/pgdata beside pgtx-shop's ./.pgtx/pgdata (exit 0, PGTX_DATA_DIR ignored);" \
  "the shop's folder through PGTX_RACE_DATA_DIR or --data-dir: exit 3; --data-dir overrides the variable"
