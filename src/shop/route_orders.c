/*
 * route_orders.c — POST /v1/orders, GET /v1/orders/{id} and
 * GET /v1/accounts/{id}/orders.
 *
 * An order is one transaction: stock, coupon claim, balance, the order row
 * and its ledger row change together, or not at all.  It is written by one
 * statement that leaves with BEGIN and COMMIT (atomic: one round trip; the
 * others after one round trip of reads).  Since COMMIT is already on its
 * way, a rule that says no must make that statement change nothing or
 * fail: the stock guard leaves every part of it empty, and a refused
 * balance (its CHECK), a claim that cannot be spent or a row that is not
 * there (a NOT NULL of the order row) fail it, so the server skips COMMIT
 * and the runner rolls back.  Then the same reads the read-modify-write
 * strategies make say which rule it was.
 *
 * With an Idempotency-Key the order row's (account_id, idempotency_key)
 * index claims the key: a concurrent twin waits for the first to commit,
 * fails on the index and answers with the order that won.  A key always
 * wins over the business rules: a replay is answered even when the stock
 * has run out since.
 */
#include "app_internal.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const shop_field ORDER_FIELDS[] = {
    {"account_id", SHOP_FIELD_INT, 1, false},
    {"product_id", SHOP_FIELD_INT, 1, false},
    {"quantity", SHOP_FIELD_INT, 1, false},
    {"coupon_id", SHOP_FIELD_INT, 1, true},
};

/* Columns of ORDER_COLUMNS; a query may add more after them. */
#define ORDER_NCOLS 8

/* What the reads found: one result per read, owned. */
typedef struct order_reads {
    PGresult *key;     /* the key's earlier order (with a key) */
    PGresult *product; /* stock, version, price */
    PGresult *claim;   /* the claim's order_id (with a coupon) */
    PGresult *coupon;  /* discount (with a coupon) */
    PGresult *account; /* balance, version */
} order_reads;

/* What the order does, as the reads decided it. */
typedef struct order_plan {
    int64_t unit_price, discount, total;
    int64_t stock, product_version;  /* the product after it */
    int64_t balance, account_version; /* the account after it */
} order_plan;

typedef struct order_arg {
    shop_batch *batch; /* first: see shop_combinable */
    /* the request, its parameters as text */
    int64_t account, product, quantity;
    int64_t coupon;                       /* 0: none */
    const char *key;                      /* Idempotency-Key or NULL; borrowed */
    char hash[SHOP_BYTEA_HEX_LEN + 1];    /* the request's hash, with a key */
    shop_num account_s, product_s, quantity_s, coupon_s;
    pgtx_strategy strategy;
    /* what the last attempt did */
    order_reads reads;
    PGresult *row;  /* the order (ORDER_COLUMNS first), owned */
    bool replayed;  /* row is the earlier order of this key */
    shop_fault fault;
} order_arg;

static void order_reset(order_arg *a)
{
    result_reset(&a->reads.key);
    result_reset(&a->reads.product);
    result_reset(&a->reads.claim);
    result_reset(&a->reads.coupon);
    result_reset(&a->reads.account);
    result_reset(&a->row);
    a->replayed = false;
    fault_reset(&a->fault);
}

static const char *coupon_param(const order_arg *a)
{
    return a->coupon ? a->coupon_s.s : NULL;
}

/* ---- the reads ------------------------------------------------------------------ */

static const char FIND_KEY_SQL[] =
    "SELECT " ORDER_COLUMNS ", request_hash = $3 FROM orders"
    " WHERE account_id = $1 AND idempotency_key = $2";

/* The lock strategy locks what it will write, in the order every order
   locks it: product, claim, account (FOR NO KEY UPDATE: see store.c). */
#define CLAIM_READ_SQL                                                         \
    "SELECT order_id FROM coupon_claim"                                        \
    " WHERE coupon_id = $1::bigint AND account_id = $2::bigint"
#define PRODUCT_READ_SQL                                                       \
    "SELECT stock, version, price FROM product WHERE id = $1::bigint"
#define LOCKED " FOR NO KEY UPDATE"

/* Queue every read the order's rules need, and send them in one round trip
   (with BEGIN, when they come first). */
static pgtx_status order_read(pgtx_tx *tx, order_arg *a, pgtx_error *err)
{
    bool lock = a->strategy == PGTX_STRATEGY_LOCK;
    const char *kp[3] = {a->account_s.s, a->key, a->hash};
    const char *cp[2] = {a->coupon_s.s, a->account_s.s};
    const char *pp[1] = {a->product_s.s};
    pgtx_status st = a->key ? pgtx_queue(tx, FIND_KEY_SQL, 3, kp, &a->reads.key, err)
                            : PGTX_OK;
    if (st == PGTX_OK)
        st = pgtx_queue(tx, lock ? PRODUCT_READ_SQL LOCKED : PRODUCT_READ_SQL, 1, pp,
                        &a->reads.product, err);
    if (st == PGTX_OK && a->coupon)
        st = pgtx_queue(tx, lock ? CLAIM_READ_SQL LOCKED : CLAIM_READ_SQL, 2, cp,
                        &a->reads.claim, err);
    if (st == PGTX_OK && a->coupon)
        st = pgtx_queue(tx, "SELECT discount FROM coupon WHERE id = $1::bigint", 1, cp,
                        &a->reads.coupon, err);
    if (st == PGTX_OK)
        st = counter_queue_read(tx, &COUNTER_BALANCE, a->strategy, a->account_s.s,
                                &a->reads.account, err);
    return st != PGTX_OK ? st : pgtx_flush(tx, err);
}

/* The faults of an order, in the order they are reported; each message
   is written once, for the reads' verdict and for shop_order_batch's. */
typedef enum order_refusal {
    ORDER_KEY_REUSED,
    ORDER_NO_ACCOUNT,
    ORDER_NO_PRODUCT,
    ORDER_NO_COUPON,
    ORDER_OVERFLOW,
    ORDER_OUT_OF_STOCK,
    ORDER_COUPON_NOT_CLAIMED,
    ORDER_COUPON_ALREADY_USED,
    ORDER_INSUFFICIENT_FUNDS,
    ORDER_REFUSALS
} order_refusal;

/* `order` is the key's earlier order (KEY_REUSED), `total` the order's
   total (INSUFFICIENT_FUNDS). */
static pgtx_status order_fault(order_arg *a, order_refusal why, const char *order,
                               int64_t total, pgtx_error *err)
{
    shop_fault *f = &a->fault;
    switch (why) {
    case ORDER_KEY_REUSED:
        return fault_abort(f, err, 422, "idempotency_key_reused",
                           "this Idempotency-Key was used for order %s, "
                           "with a different request", order);
    case ORDER_NO_ACCOUNT:
        return fault_abort(f, err, 404, "not_found", "account %s not found",
                           a->account_s.s);
    case ORDER_NO_PRODUCT:
        return fault_abort(f, err, 404, "not_found", "product %s not found",
                           a->product_s.s);
    case ORDER_NO_COUPON:
        return fault_abort(f, err, 404, "not_found", "coupon %s not found",
                           a->coupon_s.s);
    case ORDER_OVERFLOW:
        return fault_abort(f, err, 422, "out_of_range",
                           "price * quantity would not fit in 64 bits");
    case ORDER_OUT_OF_STOCK: {
        char why_text[64];
        snprintf(why_text, sizeof why_text, "fewer than %lld left", (long long)a->quantity);
        return counter_fault(f, err, &COUNTER_STOCK, a->product, COUNTER_FLOOR,
                             "out_of_stock", why_text);
    }
    case ORDER_COUPON_NOT_CLAIMED:
        return fault_abort(f, err, 409, "coupon_not_claimed",
                           "account %s has not claimed coupon %s", a->account_s.s,
                           a->coupon_s.s);
    case ORDER_COUPON_ALREADY_USED:
        return fault_abort(f, err, 409, "coupon_already_used",
                           "account %s already used coupon %s on an order",
                           a->account_s.s, a->coupon_s.s);
    case ORDER_INSUFFICIENT_FUNDS:
    case ORDER_REFUSALS:
        break;
    }
    char why_text[80];
    snprintf(why_text, sizeof why_text, "the balance is below the total %lld",
             (long long)total);
    return counter_fault(f, err, &COUNTER_BALANCE, a->account, COUNTER_FLOOR,
                         "insufficient_funds", why_text);
}

/* An earlier order under this key: replayed when it was asked with the
   same request, else 422.  Nothing found changes nothing. */
static pgtx_status judge_key(order_arg *a, pgtx_error *err)
{
    PGresult *r = a->reads.key;
    if (r == NULL || PQntuples(r) == 0)
        return PGTX_OK;
    if (PQgetvalue(r, 0, ORDER_NCOLS)[0] != 't')
        return order_fault(a, ORDER_KEY_REUSED, PQgetvalue(r, 0, 0), 0, err);
    a->row = r;
    a->reads.key = NULL;
    a->replayed = true;
    return PGTX_OK;
}

/* Every row the order names exists, and what it costs fits in 64 bits. */
static pgtx_status judge_price(order_arg *a, order_plan *plan, pgtx_error *err)
{
    int64_t stock;
    if (PQntuples(a->reads.account) != 1)
        return order_fault(a, ORDER_NO_ACCOUNT, NULL, 0, err);
    if (pgtx_result_int64(a->reads.product, 0, 0, &stock) != PGTX_OK ||
        pgtx_result_int64(a->reads.product, 0, 1, &plan->product_version) != PGTX_OK ||
        pgtx_result_int64(a->reads.product, 0, 2, &plan->unit_price) != PGTX_OK)
        return order_fault(a, ORDER_NO_PRODUCT, NULL, 0, err);
    plan->discount = 0;
    if (a->coupon &&
        pgtx_result_int64(a->reads.coupon, 0, 0, &plan->discount) != PGTX_OK)
        return order_fault(a, ORDER_NO_COUPON, NULL, 0, err);
    if (plan->unit_price > 0 && a->quantity > INT64_MAX / plan->unit_price)
        return order_fault(a, ORDER_OVERFLOW, NULL, 0, err);
    int64_t gross = plan->unit_price * a->quantity;
    plan->total = gross > plan->discount ? gross - plan->discount : 0;
    return PGTX_OK;
}

static pgtx_status judge_claim(order_arg *a, pgtx_error *err)
{
    if (!a->coupon)
        return PGTX_OK;
    if (PQntuples(a->reads.claim) == 0)
        return order_fault(a, ORDER_COUPON_NOT_CLAIMED, NULL, 0, err);
    if (!PQgetisnull(a->reads.claim, 0, 0))
        return order_fault(a, ORDER_COUPON_ALREADY_USED, NULL, 0, err);
    return PGTX_OK;
}

/* The reads' verdict, in the order the errors are reported: the key, a
   missing row, an overflow, the stock, the claim, the balance.  OK with
   the plan when every rule holds (or the key's order is replayed). */
static pgtx_status order_judge(order_arg *a, order_plan *plan, pgtx_error *err)
{
    pgtx_status st = judge_key(a, err);
    if (st != PGTX_OK || a->replayed || (st = judge_price(a, plan, err)) != PGTX_OK)
        return st;
    /* stock and balance: both >= 0 and the changes <= 0, so only FLOOR */
    counter_result cr = counter_next(a->reads.product, -a->quantity, &plan->stock,
                                     &plan->product_version);
    if (cr != COUNTER_DONE)
        return order_fault(a, ORDER_OUT_OF_STOCK, NULL, 0, err);
    if ((st = judge_claim(a, err)) != PGTX_OK)
        return st;
    cr = counter_next(a->reads.account, -plan->total, &plan->balance,
                      &plan->account_version);
    if (cr != COUNTER_DONE)
        return order_fault(a, ORDER_INSUFFICIENT_FUNDS, NULL, plan->total, err);
    return PGTX_OK;
}

/* ---- the write -------------------------------------------------------------------- */

/* The ledger row of the order, and the order's columns for the answer. */
#define ORDER_TAIL                                                             \
    " RETURNING " ORDER_COLUMNS "),"                                           \
    " l AS (INSERT INTO ledger (account_id, amount, kind, order_id)"           \
    " SELECT account_id, -total, 'order', id FROM o)"                          \
    " SELECT * FROM o"

#define ORDER_INSERT                                                           \
    " o AS (INSERT INTO orders (id, account_id, product_id, quantity,"        \
    " unit_price, discount, total, coupon_id, idempotency_key, request_hash)"

/*
 * atomic: $1 account, $2 product, $3 quantity, $4 coupon, $5 key, $6 hash.
 * The price comes back from the product's own UPDATE.  Out of stock (or no
 * product) leaves p empty and so every other part.  A claim that is not
 * there to spend leaves c empty and the discount NULL; no account leaves a
 * empty and account_id NULL: both fail a NOT NULL.  A balance that would go
 * below 0 fails its CHECK.
 */
static const char ORDER_ATOMIC_SQL[] =
    "WITH p AS (UPDATE product SET stock = stock - $3::bigint, version = version + 1"
    " WHERE id = $2::bigint AND stock >= $3::bigint RETURNING price),"
    " i AS (SELECT nextval('orders_id_seq') AS id FROM p),"
    " c AS (UPDATE coupon_claim SET order_id = i.id FROM i"
    " WHERE coupon_id = $4::bigint AND account_id = $1::bigint AND order_id IS NULL"
    " RETURNING (SELECT discount FROM coupon WHERE id = $4::bigint) AS discount),"
    " m AS (SELECT price, d.discount,"
    " greatest(price * $3::bigint - d.discount, 0) AS total FROM p,"
    " (SELECT CASE WHEN $4::bigint IS NULL THEN 0"
    " ELSE (SELECT discount FROM c) END AS discount) d),"
    " a AS (UPDATE account SET balance = balance - m.total, version = version + 1"
    " FROM m WHERE account.id = $1::bigint RETURNING account.id),"
    ORDER_INSERT
    " SELECT i.id, (SELECT id FROM a), $2::bigint, $3::bigint, m.price, m.discount,"
    " m.total, $4::bigint, $5::text, $6::bytea FROM i, m"
    ORDER_TAIL;

/*
 * lock, optimistic, serializable, naive: the values computed from the
 * reads: $7 price, $8 discount, $9 total, $10 stock, $11 product version,
 * $12 balance, $13 account version (versions NULL but for optimistic).  A
 * version that no longer matches leaves p or a empty, a claim spent
 * meanwhile leaves c empty: a NOT NULL of the order row fails.
 */
static const char ORDER_SET_SQL[] =
    "WITH p AS (UPDATE product SET stock = $10::bigint, version = version + 1"
    " WHERE id = $2::bigint AND ($11::bigint IS NULL OR version = $11::bigint)"
    " RETURNING id),"
    " i AS (SELECT nextval('orders_id_seq') AS id),"
    " c AS (UPDATE coupon_claim SET order_id = i.id FROM i"
    " WHERE coupon_id = $4::bigint AND account_id = $1::bigint AND order_id IS NULL"
    " RETURNING coupon_id),"
    " a AS (UPDATE account SET balance = $12::bigint, version = version + 1"
    " WHERE id = $1::bigint AND ($13::bigint IS NULL OR version = $13::bigint)"
    " RETURNING id),"
    ORDER_INSERT
    " SELECT i.id, (SELECT id FROM a), (SELECT id FROM p), $3::bigint, $7::bigint,"
    " CASE WHEN $4::bigint IS NULL THEN $8::bigint"
    " ELSE (SELECT $8::bigint FROM c) END, $9::bigint, $4::bigint, $5::text,"
    " $6::bytea FROM i"
    ORDER_TAIL;

static pgtx_status order_write(pgtx_tx *tx, order_arg *a, const order_plan *q,
                               pgtx_error *err)
{
    shop_num price = num_of(q->unit_price), discount = num_of(q->discount),
             total = num_of(q->total), stock = num_of(q->stock),
             pv = num_of(q->product_version), balance = num_of(q->balance),
             av = num_of(q->account_version);
    const char *p[13] = {a->account_s.s, a->product_s.s, a->quantity_s.s,
                         coupon_param(a), a->key, a->key ? a->hash : NULL,
                         price.s, discount.s, total.s, stock.s,
                         rmw_version(a->strategy, &pv), balance.s,
                         rmw_version(a->strategy, &av)};
    pgtx_status st = rmw_write(tx, a->strategy, ORDER_SET_SQL, 13, p, &a->row, err);
    /* optimistic: a version check that failed (a NOT NULL here) is STALE */
    if (a->strategy == PGTX_STRATEGY_OPTIMISTIC && st == PGTX_CONSTRAINT &&
        err && strcmp(err->sqlstate, "23502") == 0)
        return pgtx_fail(err, PGTX_STALE, "the order's rows changed since they were read");
    return st;
}

static pgtx_status order_tx(pgtx_tx *tx, void *p, pgtx_error *err)
{
    order_arg *a = p;
    order_plan plan;
    order_reset(a);
    if (a->strategy == PGTX_STRATEGY_ATOMIC) {
        /* one statement, sent with BEGIN and COMMIT: one round trip */
        const char *params[6] = {a->account_s.s, a->product_s.s, a->quantity_s.s,
                                 coupon_param(a), a->key, a->key ? a->hash : NULL};
        return pgtx_queue(tx, ORDER_ATOMIC_SQL, 6, params, &a->row, err);
    }
    pgtx_status st = order_read(tx, a, err);
    st = st != PGTX_OK ? st : order_judge(a, &plan, err);
    if (st != PGTX_OK || a->replayed)
        return st;
    return order_write(tx, a, &plan, err);
}

/* Why an atomic order changed nothing, read after it: the fault, the key's
   order, or OK when every rule holds now (what stopped it rolled back
   meanwhile): then it is tried again. */
static pgtx_status explain_tx(pgtx_tx *tx, void *p, pgtx_error *err)
{
    order_arg *a = p;
    order_plan plan;
    order_reset(a);
    pgtx_status st = order_read(tx, a, err);
    return st != PGTX_OK ? st : order_judge(a, &plan, err);
}

/* After a unique violation on the key (a twin won): the winner's order,
   read in a transaction of its own. */
static pgtx_status replay_tx(pgtx_tx *tx, void *p, pgtx_error *err)
{
    order_arg *a = p;
    const char *kp[3] = {a->account_s.s, a->key, a->hash};
    order_reset(a);
    pgtx_status st = pgtx_query(tx, FIND_KEY_SQL, 3, kp, &a->reads.key, err);
    st = st != PGTX_OK ? st : judge_key(a, err);
    if (st == PGTX_OK && !a->replayed)
        return pgtx_fail(err, PGTX_STALE, "the key's order is not visible yet");
    return st;
}

/* ---- the handlers ------------------------------------------------------------------- */

static bool key_valid(shop_ctx *ctx, const char *key)
{
    size_t len = key ? strlen(key) : 1;
    bool ok = len >= 1 && len <= SHOP_TEXT_MAX;
    for (size_t i = 0; key && ok && i < len; i++)
        ok = key[i] >= 0x20 && key[i] <= 0x7e;
    if (!ok)
        reply_error(ctx->res, 422, "invalid_value",
                    "Idempotency-Key must be 1 to %d printable ASCII characters",
                    SHOP_TEXT_MAX);
    return ok;
}

/* What makes two requests under one key the same order. */
static void request_hash(order_arg *a)
{
    char canon[96];
    unsigned char h[SHOP_HASH_BYTES];
    int n = snprintf(canon, sizeof canon, "order/1 %lld %lld %lld",
                     (long long)a->product, (long long)a->quantity,
                     (long long)a->coupon);
    crypto_generichash(h, sizeof h, (const unsigned char *)canon, (size_t)n,
                       NULL, 0);
    bytea_hex(h, a->hash);
}

static void order_reply(shop_ctx *ctx, const order_arg *a)
{
    reply_json(ctx->res, a->replayed ? 200 : 201, row_json(a->row, 0, ORDER_NCOLS));
}

/* The order's one statement changed nothing (no row back) or the server
   refused it for a rule (a CHECK, a NOT NULL) or an overflow (22003): the
   reads will say why, in the order every strategy reports it (an unknown
   account before an overflowing price, say). */
static bool order_refused(pgtx_status st, const pgtx_error *err, const void *p)
{
    const order_arg *a = p;
    if (st == PGTX_OK)
        return !a->replayed && PQntuples(a->row) == 0;
    return (st == PGTX_CONSTRAINT && (strcmp(err->sqlstate, "23502") == 0 ||
                                      strcmp(err->sqlstate, "23514") == 0)) ||
           strcmp(err->sqlstate, "22003") == 0;
}

static bool key_conflict(pgtx_status st, const pgtx_error *err, const order_arg *a)
{
    return st == PGTX_UNIQUE_VIOLATION && a->key &&
           strcmp(err->constraint_name, "orders_idempotency_key") == 0;
}

static bool order_wrote(const void *p)
{
    const order_arg *a = p;
    return a->replayed || PQntuples(a->row) == 1;
}

static const shop_refusable ORDER_WRITE = {order_tx, explain_tx, order_wrote,
                                           order_refused, "order"};

static bool order_prepare(shop_ctx *ctx, const void *data, void *p)
{
    (void)data;
    order_arg *a = p;
    shop_body b;
    if (!body_parse(ctx, ORDER_FIELDS, 4, &b))
        return false;
    *a = (order_arg){.account = b.num[0], .product = b.num[1], .quantity = b.num[2],
                     .coupon = b.present[3] ? b.num[3] : 0,
                     .key = ctx->req->idempotency_key, .strategy = ctx->strategy};
    body_free(&b);
    if (!key_valid(ctx, a->key) || !auth_may_act_for(ctx, a->account))
        return false;
    a->account_s = num_of(a->account);
    a->product_s = num_of(a->product);
    a->quantity_s = num_of(a->quantity);
    a->coupon_s = num_of(a->coupon);
    request_hash(a);
    return true;
}

/* The answer once the order's write ran (`first`: its status, `err` its
   error; SHOP_NOT_RUN: not yet), explained or run again alone when it
   changed nothing.  True when it committed or replayed. */
static bool order_conclude(shop_ctx *ctx, order_arg *a, pgtx_status first,
                           pgtx_run_info *info, pgtx_error *err)
{
    bool answered;
    pgtx_status st = run_refusable_from(ctx, &ORDER_WRITE, a, first, &answered,
                                        info, err);
    if (key_conflict(st, err, a)) /* a twin holds the key: its order */
        st = run_raw(ctx, ctx->app->reader, replay_tx, a, info, err);
    if (answered)
        return false;
    if (st == PGTX_OK) {
        order_reply(ctx, a);
        return true;
    }
    reply_failure(ctx->res, st, info, err, &a->fault);
    return false;
}

static void order_alone(shop_ctx *ctx, void *p)
{
    pgtx_run_info info;
    pgtx_error err;
    order_conclude(ctx, p, SHOP_NOT_RUN, &info, &err);
}

/* shop_order_batch's outcome names, as order_refusal; the two that are
   not refusals after them. */
static const char *const ORDER_OUTCOMES[ORDER_REFUSALS] = {
    [ORDER_KEY_REUSED] = "key_reused", [ORDER_NO_ACCOUNT] = "no_account",
    [ORDER_NO_PRODUCT] = "no_product", [ORDER_NO_COUPON] = "no_coupon",
    [ORDER_OVERFLOW] = "overflow", [ORDER_OUT_OF_STOCK] = "out_of_stock",
    [ORDER_COUPON_NOT_CLAIMED] = "coupon_not_claimed",
    [ORDER_COUPON_ALREADY_USED] = "coupon_already_used",
    [ORDER_INSUFFICIENT_FUNDS] = "insufficient_funds"};

/* The outcome's column in shop_order_batch's rows (as SET_SELECT names
   them: the order's columns, o_n, o_outcome). */
#define SET_COL_OUTCOME (ORDER_NCOLS + 1)

static bool order_set_reply(shop_ctx *ctx, order_arg *a, const PGresult *rows, int row)
{
    const char *outcome = PQgetvalue(rows, row, SET_COL_OUTCOME);
    bool replayed = strcmp(outcome, "replayed") == 0;
    if (replayed || strcmp(outcome, "created") == 0) {
        reply_json(ctx->res, replayed ? 200 : 201, row_json(rows, row, ORDER_NCOLS));
        return true;
    }
    int64_t total = 0;
    (void)pgtx_result_int64(rows, row, 6, &total);
    for (int why = 0; why < ORDER_REFUSALS; why++) {
        if (strcmp(outcome, ORDER_OUTCOMES[why]) != 0)
            continue;
        pgtx_error e;
        pgtx_status st = order_fault(a, (order_refusal)why, PQgetvalue(rows, row, 0),
                                     total, &e);
        reply_failure(ctx->res, st, NULL, &e, &a->fault);
        return false;
    }
    reply_error(ctx->res, 500, "internal", "unknown outcome '%s' of a combined order",
                outcome);
    return false;
}

static bool order_finish(shop_ctx *ctx, void *p, const pgtx_call *call, int row,
                         const pgtx_run_info *info)
{
    order_arg *a = p;
    const PGresult *rows = a->batch->rows;
    if (call->status == PGTX_OK && rows && row < PQntuples(rows))
        return order_set_reply(ctx, a, rows, row);
    pgtx_run_info inf = *info;
    pgtx_error err = call->err;
    return order_conclude(ctx, a, call->status, &inf, &err);
}

static const char *elem_account(const void *p, char *buf)
{
    (void)buf;
    return ((const order_arg *)p)->account_s.s;
}

static const char *elem_quantity(const void *p, char *buf)
{
    (void)buf;
    return ((const order_arg *)p)->quantity_s.s;
}

static const char *elem_coupon(const void *p, char *buf)
{
    (void)buf;
    return coupon_param(p);
}

static const char *elem_key(const void *p, char *buf)
{
    (void)buf;
    return ((const order_arg *)p)->key;
}

static const char *elem_hash(const void *p, char *buf)
{
    (void)buf;
    const order_arg *a = p;
    return a->key ? a->hash : NULL;
}

static const char SET_SELECT[] =
    "SELECT o_id AS id, o_account_id AS account_id, o_product_id AS product_id,"
    " o_quantity AS quantity, o_unit_price AS unit_price, o_discount AS discount,"
    " o_total AS total, o_coupon_id AS coupon_id, o_n, o_outcome"
    " FROM shop_order_batch($1::bigint, $2::bigint[], $3::bigint[], $4::bigint[],"
    " $5::text[], $6::bytea[]) ORDER BY o_n";

/* Every call in shop_order_batch: one statement, sent with COMMIT. */
static pgtx_status order_set(pgtx_tx *tx, pgtx_call *calls, int n, pgtx_error *err)
{
    const order_arg *first = calls[0].arg;
    const batch_elem_fn elems[5] = {elem_account, elem_quantity, elem_coupon,
                                    elem_key, elem_hash};
    const bool quote[5] = {false, false, false, true, true};
    return batch_queue(tx, calls, n, SET_SELECT, first->product_s.s, elems, quote, 5, err);
}

/* One call of a batch (see batch_one). */
static pgtx_status order_one(pgtx_tx *tx, pgtx_call *call, pgtx_error *err)
{
    order_arg *a = call->arg;
    return batch_one(tx, call, order_tx, &a->strategy, err);
}

static int64_t order_key(const void *p)
{
    return ((const order_arg *)p)->product;
}

static void order_release(void *p)
{
    order_reset(p);
}

const shop_combinable ORDER_COMBINABLE = {
    .arg_size = sizeof(order_arg),
    .prepare = order_prepare,
    .key = order_key,
    .atomic_ops = {order_set, order_one},
    .rmw_ops = {NULL, order_one},
    .alone = order_alone,
    .finish = order_finish,
    .release = order_release,
};

void orders_create(shop_ctx *ctx)
{
    combinable_handle(ctx, &ORDER_COMBINABLE);
}

void orders_get(shop_ctx *ctx)
{
    PGresult *r = NULL;
    int64_t owner = 0;
    if (!fetch_by_id(ctx, "SELECT " ORDER_COLUMNS " FROM orders WHERE id = $1",
                     "order", &r))
        return;
    /* Another account's order is as unknown as a missing one: a 403 would
       tell that the id exists. */
    if (pgtx_result_int64(r, 0, 1, &owner) == PGTX_OK && auth_acts_for(ctx, owner))
        reply_row(ctx->res, 200, r);
    else
        reply_error(ctx->res, 404, "not_found", "order %s not found", num_of(ctx->id).s);
    PQclear(r);
}

/* One row per order, or one row of NULLs for an account without any. */
static const char LIST_SQL[] =
    "SELECT o.id, o.account_id, o.product_id, o.quantity, o.unit_price,"
    " o.discount, o.total, o.coupon_id"
    " FROM account a LEFT JOIN orders o ON o.account_id = a.id"
    " WHERE a.id = $1 ORDER BY o.id";

void accounts_orders(shop_ctx *ctx)
{
    PGresult *r = NULL;
    if (!fetch_by_id(ctx, LIST_SQL, "account", &r))
        return;
    json_t *list = json_array();
    for (int i = 0; list && i < PQntuples(r); i++) {
        if (PQgetisnull(r, i, 0))
            continue;
        if (json_array_append_new(list, row_json(r, i, -1)) != 0) {
            json_decref(list);
            list = NULL;
        }
    }
    PQclear(r);
    reply_json(ctx->res, 200, list ? json_pack("{s:o}", "orders", list) : NULL);
}
