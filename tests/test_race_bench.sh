#!/bin/sh
# test_race_bench.sh — smoke test of `pgtx-race bench`: every scenario and strategy, with write combining off and on, for 1 s (counter) or 0.5 s, then checks that the report tells the truth.
# Exit statuses: 0 for a good run (every safe strategy kept its invariants),
# 2 for a bad option or value (a bad connection string too, from the flag or
# DATABASE_URL, unless a flag overrides the variable), 3 when the database
# cannot be reached; each non-zero one with one line on stderr.
# usage: test_race_bench.sh PGTX_RACE_BINARY   (database: PGTX_TEST_DSN, else libpq's PG* environment)
set -eu
BIN=$1
DB=${PGTX_TEST_DSN:-} # "" means libpq's environment, never the embedded cluster
unset DATABASE_URL PGTX_DATA_DIR PGTX_RACE_DATA_DIR
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*"; exit 1; }

. "$(dirname "$0")/expect_exit.sh"

# Bad options exit 2 before any database is touched.
for bad in "--scenario nope" "--clients 0" "--clients 257" "--clients 8,x" \
           "--strategy fast" "--duration soon" "--ops 0" "--pool-size" "--bogus" \
           "--combining" "--combining yes" "--combining=both,on"; do
  # shellcheck disable=SC2086 # each case is several words on purpose
  expect 2 "bench $bad" -- "$BIN" bench $bad
done
expect 2 "bench --data-dir ''" -- "$BIN" bench --data-dir ""
for bad in "host=localhost port=notaport" "foo" "postgresql://[bad"; do
  expect 2 "bench --database '$bad'" -- "$BIN" bench --database "$bad" --duration 1
  grep -q -- '--database' "$tmp/err" || fail "--database '$bad': the line does not name --database"
  expect 2 "DATABASE_URL='$bad' bench" -- env DATABASE_URL="$bad" "$BIN" bench --duration 1
  grep -q 'DATABASE_URL' "$tmp/err" || fail "DATABASE_URL='$bad': the line does not name it"
done
"$BIN" bench --help | grep -q -- '--pgbench'
"$BIN" bench --help | grep -q -- '--data-dir'
"$BIN" bench --help | grep -q -- '--combining MODE'
echo "bad options and connection strings: exit 2, one stderr line each"

# The database cannot be reached: 3.
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
expect 3 "bench, no server in /nonexistent" -- "$BIN" bench --database "host=/nonexistent" --duration 1
expect 3 "bench, nobody on 127.0.0.1:$port" -- "$BIN" bench --duration 1 \
  --database "host=127.0.0.1 port=$port connect_timeout=5"
echo "unreachable database: exit 3, one stderr line"

# A valid flag overrides a bad variable, which is then not read; a good
# run is exit 0.
rc=0
DATABASE_URL=foo "$BIN" bench --database "$DB" --strategy atomic --clients 2 --ops 20 \
  >"$tmp/out" 2>"$tmp/err" || rc=$?
[ "$rc" -eq 0 ] || fail "DATABASE_URL=foo with a valid --database: exit $rc: $(cat "$tmp/err")"
echo "good run: exit 0 (a bad DATABASE_URL overridden by --database)"

check() { # check FILE.json: what every run must satisfy
  python3 - "$1" <<'EOF'
import json, shutil, sys
doc = json.load(open(sys.argv[1]))
sc, pool = doc["scenario"], doc["pool_size"]
runs = doc["runs"]
assert {r["strategy"] for r in runs} == {"naive", "atomic", "lock", "optimistic", "serializable"}, runs
# the combining column: every strategy ran with combining off and on
assert doc["combining"] == "both" and doc["max_batch"] == 64, doc["combining"]
assert sorted((r["strategy"], r["combining"]) for r in runs) == sorted(
    (s, c) for s in ("naive", "atomic", "lock", "optimistic", "serializable")
    for c in ("off", "on")), runs
for r in runs:
    who = "%s/%s/%d/combining %s" % (sc, r["strategy"], r["clients"], r["combining"])
    if r["combining"] == "on":
        # every call went through a batch; none took more than max_batch
        assert r["batches"] > 0 and r["largest_batch"] <= 64, who
        assert 1 <= r["batch_mean"] <= r["largest_batch"], who
        assert r["vs_off"] is not None and r["vs_off"] > 0, who
    else:
        assert r["batches"] == 0 and r["largest_batch"] is None and r["vs_off"] is None, who
    assert r["ops"] == r["committed"] + r["refused"] + r["errors"], who
    # the flag is the check's verdict: a visible mismatch is never "correct"
    if r["final"] != r["committed"]:
        assert not r["correct"], who + " reports correct with final != committed"
    if sc in ("counter", "spread"):
        assert r["correct"] == (r["final"] == r["committed"]), who
    if r["safe"]:
        assert r["correct"], who + ": " + r["detail"]
        assert r["committed"] > 0, who
        assert r["errors"] == 0 and r["failures"]["retry_exhausted"] == 0, (who, r["error_sample"])
        if sc == "coupon":
            assert r["committed"] == doc["quantity"], who  # the coupon ran out, exactly
        if sc == "order":
            assert r["committed"] == doc["stock"], who
    # one shared pool: never more than --pool-size, plus the set-up connection
    assert r["connections_created"] <= pool, who
    assert 1 <= r["max_backends"] <= pool + 1, (who, r["max_backends"])
    lat = r["latency_ms"]
    assert lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"], who
    if doc["pgbench"] and shutil.which("pgbench"):
        assert r["vs_pgbench"] is not None and r["vs_pgbench"] > 0, (who, doc["pgbench_note"])
assert doc["all_safe_correct"]
def one(strategy, combining):
    return [r for r in runs if r["strategy"] == strategy and r["combining"] == combining][0]
naive = one("naive", "off")
if sc == "counter":  # the lost update still shows with combining off
    assert not naive["correct"] and naive["final"] < naive["committed"], naive
for s in ("naive", "atomic", "lock", "optimistic", "serializable"):
    off, on = one(s, "off"), one(s, "on")
    print("%-8s %-12s ops/s off %7.0f on %7.0f (x%.2f), batch mean %5.1f max %2d, correct %s/%s"
          % (sc, s, off["ops_per_s"], on["ops_per_s"], on["vs_off"], on["batch_mean"],
             on["largest_batch"], "yes" if off["correct"] else "NO",
             "yes" if on["correct"] else "NO"))
print("%-8s ok: naive, combining off: %s (%s)" % (sc, "correct" if naive["correct"] else "NO", naive["detail"]))
EOF
}

for sc in counter coupon order spread; do
  extra="--duration 0.5"
  if [ "$sc" = counter ]; then extra="--duration 1 --plot $tmp/plot.svg --pgbench"; fi
  rc=0
  # shellcheck disable=SC2086
  "$BIN" bench --database "$DB" --scenario "$sc" --strategy all --clients 8 \
      --pool-size 4 --json $extra >"$tmp/$sc.json" || rc=$?
  [ "$rc" -eq 0 ] || fail "bench --scenario $sc: exit $rc (want 0: every safe strategy kept its invariants)"
  check "$tmp/$sc.json"
done
grep -q '<svg' "$tmp/plot.svg"
grep -q 'pgbench, atomic SQL\|p99 latency' "$tmp/plot.svg"
grep -q 'atomic, combining on' "$tmp/plot.svg" || fail "the plot has no combined series"
echo "plot: ok"

# --ops: the count is exact, combined or not, and the table form prints one
# row per run and combining mode; --combining off|on keeps only that mode.
"$BIN" bench --database "$DB" --strategy atomic,lock --clients 1,4 --ops 200 >"$tmp/table"
cat "$tmp/table"
for mode in off on; do
  n=$(grep -c "^| \(atomic\|lock\) *| *[14] | $mode *| yes *| *200 |" "$tmp/table" || true)
  [ "$n" -eq 4 ] || fail "--ops 200: $n rows of 200 committed with combining $mode, want 4"
done
grep -q '^| atomic *| *4 | on .*| *[0-9.]*/[1-4] |' "$tmp/table" || fail "no batch mean/max cell"
for mode in off on; do
  "$BIN" bench --database "$DB" --strategy atomic --clients 2 --ops 50 --combining "$mode" \
    >"$tmp/table"
  [ "$(grep -c '^| atomic ' "$tmp/table")" -eq 1 ] && grep -q "^| atomic *| *2 | $mode " "$tmp/table" \
    || fail "--combining $mode: $(cat "$tmp/table")"
done
echo "test_race_bench: all ok"
