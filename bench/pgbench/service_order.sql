-- service_order.sql: the order exactly as pgtx-shop's atomic strategy sends
-- it (src/shop/route_orders.c, ORDER_ATOMIC_SQL): one statement between
-- BEGIN and COMMIT, no coupon and no Idempotency-Key, so that pgbench
-- measures the service's SQL without HTTP.  pgtx-shop sends BEGIN, it and
-- COMMIT in one round trip; pgbench sends them one by one.
-- Variables (pgbench -D): afirst, naccounts, pfirst, nproducts; hot-order
-- passes nproducts=1 and pfirst=<the hot product>.
\set aid random(:afirst, :afirst + :naccounts - 1)
\set pid random(:pfirst, :pfirst + :nproducts - 1)
BEGIN ISOLATION LEVEL READ COMMITTED, READ WRITE, NOT DEFERRABLE;
WITH p AS (UPDATE product SET stock = stock - 1::bigint, version = version + 1
           WHERE id = :pid::bigint AND stock >= 1::bigint RETURNING price),
 i AS (SELECT nextval('orders_id_seq') AS id FROM p),
 c AS (UPDATE coupon_claim SET order_id = i.id FROM i
       WHERE coupon_id = NULL::bigint AND account_id = :aid::bigint AND order_id IS NULL
       RETURNING (SELECT discount FROM coupon WHERE id = NULL::bigint) AS discount),
 m AS (SELECT price, d.discount, greatest(price * 1::bigint - d.discount, 0) AS total
       FROM p, (SELECT CASE WHEN NULL::bigint IS NULL THEN 0
                ELSE (SELECT discount FROM c) END AS discount) d),
 a AS (UPDATE account SET balance = balance - m.total, version = version + 1
       FROM m WHERE account.id = :aid::bigint RETURNING account.id),
 o AS (INSERT INTO orders (id, account_id, product_id, quantity, unit_price, discount,
                           total, coupon_id, idempotency_key, request_hash)
       SELECT i.id, (SELECT id FROM a), :pid::bigint, 1::bigint, m.price, m.discount,
              m.total, NULL::bigint, NULL::text, NULL::bytea FROM i, m
       RETURNING id, account_id, product_id, quantity, unit_price, discount, total,
                 coupon_id),
 l AS (INSERT INTO ledger (account_id, amount, kind, order_id)
       SELECT account_id, -total, 'order', id FROM o)
SELECT * FROM o;
COMMIT;
