#!/bin/sh
# Every replay scenario under every strategy ends as the strategy promises,
# and the timeline shows the mechanism (a wait, a retry, a refusal).
set -eu
B="$1"
DB="${PGTX_TEST_DSN:-}"
fail() { echo "FAIL: $*"; exit 1; }
# --version prints the version kept in include/pgtx.h
want=$(sed -n 's/^#define PGTX_VERSION_\(MAJOR\|MINOR\|PATCH\) \([0-9]*\)$/\2/p' \
       "$(dirname "$0")/../include/pgtx.h" | paste -sd.)
[ "$("$B" --version)" = "pgtx-race $want" ] || fail "pgtx-race --version: $("$B" --version), want $want"
runs=0
for sc in lost-update coupon-limit double-claim oversell; do
  for st in naive atomic lock optimistic serializable; do
    "$B" replay "$sc" --strategy "$st" --database "$DB" --json > /tmp/replay.$$.json \
      || fail "$sc/$st did not end as promised: $(cat /tmp/replay.$$.json)"
    runs=$((runs + 1))
  done
done
# What each timeline must show, read from its JSON.
check() { # scenario strategy python-expression-over-d
  "$B" replay "$1" --strategy "$2" --database "$DB" --json > /tmp/replay.$$.json || true
  python3 - "$3" /tmp/replay.$$.json <<'PY' || fail "$1/$2: $3"
import json, sys
d = json.load(open(sys.argv[2]))
kinds = [s["kind"] for s in d["steps"]]
tx = {t["tx"]: t for t in d["transactions"]}
if not eval(sys.argv[1]):
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
rm -f /tmp/replay.$$.json
# Usage errors are exit 2 and touch nothing.
set +e
"$B" replay nosuch --strategy naive --database "$DB" >/dev/null 2>&1; [ $? -eq 2 ] || fail "unknown scenario"
"$B" replay lost-update --strategy nosuch --database "$DB" >/dev/null 2>&1; [ $? -eq 2 ] || fail "unknown strategy"
"$B" replay lost-update >/dev/null 2>&1; [ $? -eq 2 ] || fail "missing strategy"
echo "replay: $runs runs as promised, 11 timelines checked"
