-- 003_trim_repeated_constraints.sql: drop the constraints that only repeat
-- another, since every order pays for each of them.
--
-- PostgreSQL compiles a table's CHECK expressions anew for every statement
-- that writes it, and checks a foreign key with a query of its own per row:
-- an order wrote product, account, orders and ledger under 13 CHECKs and 4
-- foreign keys.  Each dropped here is implied by one that stays:
--   orders.unit_price >= 0   the order's unit_price is its product's price,
--                            copied by the same statement: product.price >= 0
--   orders.discount >= 0     the discount is 0 or its coupon's:
--                            coupon.discount >= 0
--   product.initial_stock >= 0
--                            set equal to stock at creation and never
--                            changed: product.stock >= 0
--   ledger.order_id -> orders
--                            an order's ledger row is inserted by the order's
--                            own statement, from the order row it returns;
--                            ledger's CHECK keeps kind = 'order' exactly the
--                            rows with an order_id
-- The invariants of the contract keep their constraints as the last line:
-- stock >= 0, balance >= 0, 0 <= remaining <= quantity, one claim per
-- (coupon, account), one order per (account, Idempotency-Key).

ALTER TABLE orders
    DROP CONSTRAINT orders_unit_price_check,
    DROP CONSTRAINT orders_discount_check;
ALTER TABLE product DROP CONSTRAINT product_initial_stock_check;
ALTER TABLE ledger DROP CONSTRAINT ledger_order_id_fkey;
