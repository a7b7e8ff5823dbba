#!/bin/sh
# Runs the README's example where its table does not exist yet (it creates
# it), then once more (its seed leaves the balances alone), and checks what
# each run did.
set -eu
q() { psql -X -q -At -v ON_ERROR_STOP=1 ${PGTX_TEST_DSN:+"$PGTX_TEST_DSN"} -c "$1"; }
balances() { q "SELECT string_agg(bal::text, ' ' ORDER BY id) FROM acct"; }
run() {
  out=$("$1")
  echo "$out"
  echo "$out" | grep -q '^PGTX_OK after 1 attempt'
}
q "DROP TABLE IF EXISTS acct"
run "$1"
[ "$(balances)" = "90 10" ] || { echo "after one run: $(balances), want 90 10"; exit 1; }
run "$1"
[ "$(balances)" = "80 20" ] || { echo "after two runs: $(balances), want 80 20"; exit 1; }
q "DROP TABLE acct"
echo "quickstart: created acct, moved 10 from account 1 to 2, twice"
