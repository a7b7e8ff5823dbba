#!/bin/sh
# Runs the README's example on a fresh table and checks what it did.
set -eu
q() { psql -X -q -At -v ON_ERROR_STOP=1 ${PGTX_TEST_DSN:+"$PGTX_TEST_DSN"} -c "$1"; }
q "DROP TABLE IF EXISTS acct; CREATE TABLE acct (id int PRIMARY KEY, bal int);
   INSERT INTO acct VALUES (1, 100), (2, 0)"
out=$("$1")
echo "$out"
echo "$out" | grep -q '^PGTX_OK after 1 attempt'
[ "$(q 'SELECT bal FROM acct WHERE id = 1')" = 90 ]
[ "$(q 'SELECT bal FROM acct WHERE id = 2')" = 10 ]
q "DROP TABLE acct"
echo "quickstart: moved 10 from account 1 to 2"
