-- deposit.sql: one deposit of 1 on ONE account (the deposits scenario of
-- bench/shop_bench.py), with its ledger row so that balance = sum(ledger).
-- Variables (pgbench -D): aid.
BEGIN;
UPDATE account SET balance = balance + 1, version = version + 1 WHERE id = :aid;
INSERT INTO ledger (account_id, amount, kind) VALUES (:aid, 1, 'deposit');
COMMIT;
