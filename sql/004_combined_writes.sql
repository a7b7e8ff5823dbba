-- 004_combined_writes.sql: the combined forms of a coupon claim and an
-- order, for write combining (pgtx-shop runs the requests of one coupon or
-- one product that wait together as one transaction).
--
-- Each takes the calls of one hot row as arrays, in arrival order, decides
-- in order which of them the rules admit (first come, first served: as if
-- they had run one after the other), writes the hot row once and the other
-- rows in one statement each, and returns one row per call with its
-- outcome.  A refused call changes nothing.  The hot row is locked first
-- and the accounts in id order, as every writer of them does, so that two
-- batches never wait for each other in a cycle.

CREATE FUNCTION shop_claim_batch(p_coupon bigint, p_accounts bigint[])
RETURNS TABLE (o_n integer, o_outcome text)
LANGUAGE plpgsql AS $$
DECLARE
    v_remaining bigint;
    v_known bigint[];
    v_claimed bigint[];
    v_won bigint[] := '{}';
    v_account bigint;
BEGIN
    SELECT c.remaining INTO v_remaining FROM coupon c
     WHERE c.id = p_coupon FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT g::integer, 'no_coupon'::text
                       FROM generate_subscripts(p_accounts, 1) AS g;
        RETURN;
    END IF;
    SELECT coalesce(array_agg(a.id), '{}') INTO v_known
      FROM account a WHERE a.id = ANY (p_accounts);
    SELECT coalesce(array_agg(cc.account_id), '{}') INTO v_claimed
      FROM coupon_claim cc
     WHERE cc.coupon_id = p_coupon AND cc.account_id = ANY (p_accounts);
    FOR i IN 1 .. coalesce(cardinality(p_accounts), 0) LOOP
        v_account := p_accounts[i];
        o_n := i;
        IF NOT v_account = ANY (v_known) THEN
            o_outcome := 'no_account';
        ELSIF v_account = ANY (v_claimed) OR v_account = ANY (v_won) THEN
            o_outcome := 'claimed_before';
        ELSIF cardinality(v_won) >= v_remaining THEN
            o_outcome := 'exhausted';
        ELSE
            v_won := v_won || v_account;
            o_outcome := 'claimed';
        END IF;
        RETURN NEXT;
    END LOOP;
    IF cardinality(v_won) > 0 THEN
        UPDATE coupon SET remaining = remaining - cardinality(v_won),
                          version = version + cardinality(v_won)
         WHERE id = p_coupon;
        INSERT INTO coupon_claim (coupon_id, account_id)
        SELECT p_coupon, w FROM unnest(v_won) AS w;
    END IF;
END
$$;

-- Outcomes, in the order a single order reports its errors: replayed or
-- key_reused (an earlier order under the key, in the database or in this
-- batch), no_account, no_product, no_coupon, overflow (price * quantity),
-- out_of_stock, coupon_not_claimed, coupon_already_used,
-- insufficient_funds, created.  The order's columns are set for created
-- and replayed; o_id for key_reused; o_total for insufficient_funds.
CREATE FUNCTION shop_order_batch(p_product bigint, p_accounts bigint[],
                                 p_quantities bigint[], p_coupons bigint[],
                                 p_keys text[], p_hashes bytea[])
RETURNS TABLE (o_id bigint, o_account_id bigint, o_product_id bigint,
               o_quantity bigint, o_unit_price bigint, o_discount bigint,
               o_total bigint, o_coupon_id bigint, o_n integer, o_outcome text)
LANGUAGE plpgsql AS $$
DECLARE
    n_calls integer := coalesce(cardinality(p_accounts), 0);
    v_stock bigint;
    v_price bigint;
    v_product boolean;
    v_ids bigint[];       -- the accounts, locked, in id order
    v_bal bigint[];       -- their balances as the admitted calls leave them
    v_k integer;
    v_disc bigint;
    v_gross numeric;
    v_claim record;
    v_prior record;
    v_keyed boolean;       -- an earlier order under the call's key
    v_j integer;
    -- the admitted calls
    a_oid bigint[] := '{}';
    a_acc bigint[] := '{}';
    a_qty bigint[] := '{}';
    a_disc bigint[] := '{}';
    a_total bigint[] := '{}';
    a_coupon bigint[] := '{}';
    a_key text[] := '{}';
    a_hash bytea[] := '{}';
BEGIN
    SELECT p.stock, p.price INTO v_stock, v_price FROM product p
     WHERE p.id = p_product FOR NO KEY UPDATE;
    v_product := FOUND;
    SELECT array_agg(l.id ORDER BY l.id), array_agg(l.balance ORDER BY l.id)
      INTO v_ids, v_bal
      FROM (SELECT a.id, a.balance FROM account a
             WHERE a.id = ANY (p_accounts) ORDER BY a.id FOR NO KEY UPDATE) l;
    FOR i IN 1 .. n_calls LOOP
        o_n := i;
        o_id := NULL; o_account_id := NULL; o_product_id := NULL;
        o_quantity := NULL; o_unit_price := NULL; o_discount := NULL;
        o_total := NULL; o_coupon_id := NULL;
        -- an earlier order under the key: in this batch, then stored
        v_keyed := false;
        IF p_keys[i] IS NOT NULL THEN
            v_j := NULL;
            FOR j IN 1 .. coalesce(cardinality(a_oid), 0) LOOP
                IF a_acc[j] = p_accounts[i] AND a_key[j] = p_keys[i] THEN
                    v_j := j;
                END IF;
            END LOOP;
            IF v_j IS NOT NULL THEN
                SELECT a_oid[v_j] AS id, a_acc[v_j] AS account_id,
                       p_product AS product_id, a_qty[v_j] AS quantity,
                       v_price AS unit_price, a_disc[v_j] AS discount,
                       a_total[v_j] AS total, a_coupon[v_j] AS coupon_id,
                       a_hash[v_j] AS request_hash
                  INTO v_prior;
                v_keyed := true;
            ELSE
                SELECT o.id, o.account_id, o.product_id, o.quantity, o.unit_price,
                       o.discount, o.total, o.coupon_id, o.request_hash
                  INTO v_prior FROM orders o
                 WHERE o.account_id = p_accounts[i] AND o.idempotency_key = p_keys[i];
                v_keyed := FOUND;
            END IF;
        END IF;
        IF v_keyed THEN
            o_id := v_prior.id;
            IF v_prior.request_hash = p_hashes[i] THEN
                o_account_id := v_prior.account_id;
                o_product_id := v_prior.product_id;
                o_quantity := v_prior.quantity;
                o_unit_price := v_prior.unit_price;
                o_discount := v_prior.discount; o_total := v_prior.total;
                o_coupon_id := v_prior.coupon_id;
                o_outcome := 'replayed';
            ELSE
                o_outcome := 'key_reused';
            END IF;
            RETURN NEXT;
            CONTINUE;
        END IF;
        v_k := array_position(v_ids, p_accounts[i]);
        v_disc := 0;
        IF p_coupons[i] IS NOT NULL THEN
            SELECT c.discount INTO v_disc FROM coupon c WHERE c.id = p_coupons[i];
        END IF;
        IF v_k IS NULL THEN
            o_outcome := 'no_account';
        ELSIF NOT v_product THEN
            o_outcome := 'no_product';
        ELSIF v_disc IS NULL THEN
            o_outcome := 'no_coupon';
        ELSE
            v_gross := v_price::numeric * p_quantities[i];
            IF v_gross > 9223372036854775807 THEN
                o_outcome := 'overflow';
            ELSIF p_quantities[i] > v_stock THEN
                o_outcome := 'out_of_stock';
            ELSE
                o_total := greatest(v_gross - v_disc, 0);
                o_outcome := NULL;
                IF p_coupons[i] IS NOT NULL THEN
                    SELECT cc.order_id INTO v_claim FROM coupon_claim cc
                     WHERE cc.coupon_id = p_coupons[i]
                       AND cc.account_id = p_accounts[i] FOR UPDATE;
                    IF NOT FOUND THEN
                        o_outcome := 'coupon_not_claimed';
                    ELSIF v_claim.order_id IS NOT NULL THEN
                        o_outcome := 'coupon_already_used';
                    ELSE
                        FOR j IN 1 .. coalesce(cardinality(a_oid), 0) LOOP
                            IF a_acc[j] = p_accounts[i] AND a_coupon[j] = p_coupons[i] THEN
                                o_outcome := 'coupon_already_used';
                            END IF;
                        END LOOP;
                    END IF;
                END IF;
                IF o_outcome IS NULL AND o_total > v_bal[v_k] THEN
                    o_outcome := 'insufficient_funds';
                END IF;
            END IF;
        END IF;
        IF o_outcome IS NULL THEN
            v_stock := v_stock - p_quantities[i];
            v_bal[v_k] := v_bal[v_k] - o_total;
            o_id := nextval('orders_id_seq');
            o_account_id := p_accounts[i]; o_product_id := p_product;
            o_quantity := p_quantities[i]; o_unit_price := v_price;
            o_discount := v_disc; o_coupon_id := p_coupons[i];
            o_outcome := 'created';
            a_oid := a_oid || o_id; a_acc := a_acc || o_account_id;
            a_qty := a_qty || o_quantity; a_disc := a_disc || o_discount;
            a_total := a_total || o_total; a_coupon := a_coupon || o_coupon_id;
            a_key := a_key || p_keys[i]; a_hash := a_hash || p_hashes[i];
        END IF;
        RETURN NEXT;
    END LOOP;
    IF cardinality(a_oid) > 0 THEN
        UPDATE product SET stock = v_stock, version = version + cardinality(a_oid)
         WHERE id = p_product;
        UPDATE account a SET balance = a.balance - s.spent, version = a.version + s.k
          FROM (SELECT u.acc, sum(u.total)::bigint AS spent, count(*) AS k
                  FROM unnest(a_acc, a_total) AS u(acc, total) GROUP BY u.acc) s
         WHERE a.id = s.acc;
        INSERT INTO orders (id, account_id, product_id, quantity, unit_price,
                            discount, total, coupon_id, idempotency_key, request_hash)
        SELECT u.oid, u.acc, p_product, u.qty, v_price, u.disc, u.total, u.coupon,
               u.key, u.hash
          FROM unnest(a_oid, a_acc, a_qty, a_disc, a_total, a_coupon, a_key, a_hash)
               AS u(oid, acc, qty, disc, total, coupon, key, hash)
         ORDER BY u.oid;
        -- after the orders: coupon_claim.order_id references them
        UPDATE coupon_claim cc SET order_id = u.oid
          FROM unnest(a_coupon, a_acc, a_oid) AS u(coupon, acc, oid)
         WHERE u.coupon IS NOT NULL AND cc.coupon_id = u.coupon AND cc.account_id = u.acc;
        INSERT INTO ledger (account_id, amount, kind, order_id)
        SELECT u.acc, -u.total, 'order', u.oid
          FROM unnest(a_acc, a_total, a_oid) AS u(acc, total, oid) ORDER BY u.oid;
    END IF;
END
$$;
