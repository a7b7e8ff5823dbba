-- textbook.sql: one order as a textbook writes it, for the orders and
-- hot-order scenarios of bench/shop_bench.py.  Every product costs 1 (the
-- harness creates them so), which is why the price is a constant here
-- rather than read back from the RETURNING.  version is bumped like the
-- service's updates do, so both write the same rows.
-- Variables (pgbench -D): afirst, naccounts, pfirst, nproducts; hot-order
-- passes nproducts=1 and pfirst=<the hot product>.
\set aid random(:afirst, :afirst + :naccounts - 1)
\set pid random(:pfirst, :pfirst + :nproducts - 1)
BEGIN;
UPDATE product SET stock = stock - 1, version = version + 1 WHERE id = :pid RETURNING price;
UPDATE account SET balance = balance - 1, version = version + 1 WHERE id = :aid;
INSERT INTO orders (account_id, product_id, quantity, unit_price, discount, total)
    VALUES (:aid, :pid, 1, 1, 0, 1);
INSERT INTO ledger (account_id, amount, kind, order_id)
    VALUES (:aid, -1, 'order', currval('orders_id_seq'));
COMMIT;
