-- claim.sql: one claim of ONE coupon (the claims scenario of
-- bench/shop_bench.py).  An account may claim a coupon once, so each
-- transaction takes a fresh account from bench_claim_seq, which the harness
-- creates over a range of accounts made for this run (NO CYCLE: running out
-- is an error, never a duplicate).  The remaining >= 1 guard is what keeps
-- the coupon from being over-claimed; the harness sizes the coupon so that
-- it never runs out during a run.
-- Variables (pgbench -D): cid.
SELECT nextval('bench_claim_seq') AS acc \gset
BEGIN;
UPDATE coupon SET remaining = remaining - 1, version = version + 1
    WHERE id = :cid AND remaining >= 1;
INSERT INTO coupon_claim (coupon_id, account_id) VALUES (:cid, :acc);
COMMIT;
