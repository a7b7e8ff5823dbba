-- 002_deferred_foreign_keys.sql: the foreign keys that point at hot rows
-- (account, product, coupon) are checked at COMMIT instead of at each
-- INSERT.
--
-- Checked at INSERT, every order, claim and ledger row took FOR KEY SHARE
-- on its account, product or coupon before the transaction updated that
-- row, so a hot row's xmax was a multixact of every transaction in flight.
-- When one of them had updated the row and then rolled back (a business
-- rule said no, a stale version, a serialization failure), PostgreSQL could
-- build a multixact with two updating members and fail the next update
-- with "new multixact has more than one updating member" (XX000).  Checked
-- at COMMIT, the key-share lock is taken after the transaction's own
-- updates, on a row version it has mostly updated itself, and held only
-- for the end of COMMIT: measured with pgbench (32 clients, one hot parent,
-- half the transactions rolling back) the error went from 11 to 1 in three
-- 8-second rounds.  libpgtx retries the rest like a serialization failure.
--
-- Nothing else changes: the service checks that every referenced row
-- exists inside the same transaction before it inserts, and rows are never
-- deleted, so these checks do not fail in practice.

ALTER TABLE orders
    ALTER CONSTRAINT orders_account_id_fkey DEFERRABLE INITIALLY DEFERRED,
    ALTER CONSTRAINT orders_product_id_fkey DEFERRABLE INITIALLY DEFERRED,
    ALTER CONSTRAINT orders_coupon_id_fkey DEFERRABLE INITIALLY DEFERRED;
ALTER TABLE coupon_claim
    ALTER CONSTRAINT coupon_claim_account_id_fkey DEFERRABLE INITIALLY DEFERRED,
    ALTER CONSTRAINT coupon_claim_coupon_id_fkey DEFERRABLE INITIALLY DEFERRED;
ALTER TABLE ledger
    ALTER CONSTRAINT ledger_account_id_fkey DEFERRABLE INITIALLY DEFERRED;
ALTER TABLE restock
    ALTER CONSTRAINT restock_product_id_fkey DEFERRABLE INITIALLY DEFERRED;
