-- 001_schema.sql: the shop's tables (accounts, products, coupons, orders and
-- the ledger).  Money and counts are bigint in minor units.  The CHECKs are
-- the last line of defence: the service keeps every rule before the database
-- has to, and a safe strategy never trips one.

CREATE TABLE account (
    id         bigserial PRIMARY KEY,
    name       text NOT NULL,
    balance    bigint NOT NULL CHECK (balance >= 0),
    version    bigint NOT NULL DEFAULT 0,
    -- crypto_generichash (32 bytes) of the secret half of the account's token
    token_hash bytea NOT NULL CHECK (length(token_hash) = 32),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE product (
    id            bigserial PRIMARY KEY,
    name          text NOT NULL,
    price         bigint NOT NULL CHECK (price >= 0),
    stock         bigint NOT NULL CHECK (stock >= 0),
    initial_stock bigint NOT NULL CHECK (initial_stock >= 0),
    version       bigint NOT NULL DEFAULT 0,
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE restock (
    id         bigserial PRIMARY KEY,
    product_id bigint NOT NULL REFERENCES product,
    quantity   bigint NOT NULL CHECK (quantity > 0),
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX restock_product_idx ON restock (product_id);

CREATE TABLE coupon (
    id         bigserial PRIMARY KEY,
    code       text NOT NULL UNIQUE,
    discount   bigint NOT NULL CHECK (discount >= 0),
    quantity   bigint NOT NULL CHECK (quantity >= 0),
    remaining  bigint NOT NULL CHECK (remaining >= 0 AND remaining <= quantity),
    version    bigint NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE orders (
    id              bigserial PRIMARY KEY,
    account_id      bigint NOT NULL REFERENCES account,
    product_id      bigint NOT NULL REFERENCES product,
    quantity        bigint NOT NULL CHECK (quantity > 0),
    unit_price      bigint NOT NULL CHECK (unit_price >= 0),
    discount        bigint NOT NULL CHECK (discount >= 0),
    total           bigint NOT NULL CHECK (total >= 0),
    coupon_id       bigint REFERENCES coupon,
    -- the client's Idempotency-Key and a hash of what it asked for, so that
    -- a replay returns this order and a different request under the same key
    -- is refused; NULL keys never collide
    idempotency_key text CHECK (length(idempotency_key) BETWEEN 1 AND 200),
    request_hash    bytea,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT orders_idempotency_key UNIQUE (account_id, idempotency_key),
    CHECK ((idempotency_key IS NULL) = (request_hash IS NULL))
);
CREATE INDEX orders_product_idx ON orders (product_id);

-- One claim per (coupon, account); order_id is set when an order spends it.
CREATE TABLE coupon_claim (
    coupon_id  bigint NOT NULL REFERENCES coupon,
    account_id bigint NOT NULL REFERENCES account,
    order_id   bigint UNIQUE REFERENCES orders,
    claimed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (coupon_id, account_id)
);
CREATE INDEX coupon_claim_account_idx ON coupon_claim (account_id);

-- Every change of a balance, so that balance = sum(amount) can be checked.
CREATE TABLE ledger (
    id         bigserial PRIMARY KEY,
    account_id bigint NOT NULL REFERENCES account,
    amount     bigint NOT NULL,
    kind       text NOT NULL CHECK (kind IN ('initial', 'deposit', 'order')),
    order_id   bigint REFERENCES orders,
    created_at timestamptz NOT NULL DEFAULT now(),
    CHECK ((kind = 'order') = (order_id IS NOT NULL))
);
CREATE INDEX ledger_account_idx ON ledger (account_id);
