/*
 * route_orders.c — POST /v1/orders, GET /v1/orders/{id} and
 * GET /v1/accounts/{id}/orders.
 *
 * An order is one transaction: stock, coupon claim, balance, the order row
 * and its ledger row change together, or a business rule rolls all of it
 * back.  With an Idempotency-Key the order row is inserted first, which
 * claims the key: the (account_id, idempotency_key) index makes a concurrent
 * twin wait for the first to commit and then insert nothing, and the twin
 * answers with the order that won.  A key always wins over the business
 * rules: a replay is answered even when the stock has run out since.
 */
#include "app_internal.h"

#include <sodium.h>
#include <stdio.h>
#include <string.h>

static const shop_field ORDER_FIELDS[] = {
    {"account_id", SHOP_FIELD_INT, 1, false},
    {"product_id", SHOP_FIELD_INT, 1, false},
    {"quantity", SHOP_FIELD_INT, 1, false},
    {"coupon_id", SHOP_FIELD_INT, 1, true},
};

/* Columns of ORDER_COLUMNS; a query may add more after them. */
#define ORDER_NCOLS 8

typedef struct order_arg {
    /* the request */
    int64_t account, product, quantity;
    int64_t coupon;                       /* 0: none */
    const char *key;                      /* Idempotency-Key or NULL; borrowed */
    char hash[SHOP_BYTEA_HEX_LEN + 1];    /* the request's hash, with a key */
    shop_strategy strategy;
    /* what the last attempt did */
    PGresult *row;  /* the order (ORDER_COLUMNS first), owned */
    bool replayed;  /* row is the earlier order of this key */
    shop_fault fault;
} order_arg;

/* What the order costs.  Price and discount never change once created,
   so they are read without a lock under every strategy. */
typedef struct order_quote {
    int64_t unit_price, discount, total;
} order_quote;

/* ---- the key ---------------------------------------------------------------- */

static const char FIND_KEY_SQL[] =
    "SELECT " ORDER_COLUMNS ", request_hash = $3 FROM orders"
    " WHERE account_id = $1 AND idempotency_key = $2";

/* An earlier order under this key: replayed when it was asked with the same
   request, else 422.  Nothing found leaves a->row NULL. */
static pgtx_status order_find_key(pgtx_tx *tx, order_arg *a, pgtx_error *err)
{
    shop_num account = num_of(a->account);
    const char *p[3] = {account.s, a->key, a->hash};
    PGresult *r = NULL;
    pgtx_status st = pgtx_query(tx, FIND_KEY_SQL, 3, p, &r, err);
    if (st != PGTX_OK || PQntuples(r) == 0) {
        PQclear(r);
        return st;
    }
    if (PQgetvalue(r, 0, ORDER_NCOLS)[0] != 't') {
        char id[24];
        snprintf(id, sizeof id, "%s", PQgetvalue(r, 0, 0));
        PQclear(r);
        return fault_abort(&a->fault, err, 422, "idempotency_key_reused",
                           "this Idempotency-Key was used for order %s, "
                           "with a different request", id);
    }
    result_reset(&a->row);
    a->row = r;
    a->replayed = true;
    return PGTX_OK;
}

/* ---- the steps of an order ------------------------------------------------------ */

static pgtx_status order_quote_get(pgtx_tx *tx, order_arg *a, order_quote *q,
                                   pgtx_error *err)
{
    shop_num account = num_of(a->account), product = num_of(a->product),
             coupon = num_of(a->coupon);
    const char *p[3] = {account.s, product.s, a->coupon ? coupon.s : NULL};
    PGresult *r = NULL;
    pgtx_status st = pgtx_query(tx, "SELECT EXISTS (SELECT FROM account WHERE id = $1),"
                                    " (SELECT price FROM product WHERE id = $2),"
                                    " (SELECT discount FROM coupon WHERE id = $3)",
                                3, p, &r, err);
    if (st != PGTX_OK)
        return st;
    bool has_account = PQgetvalue(r, 0, 0)[0] == 't';
    bool has_product = pgtx_result_int64(r, 0, 1, &q->unit_price) == PGTX_OK;
    q->discount = 0;
    bool has_coupon = !a->coupon || pgtx_result_int64(r, 0, 2, &q->discount) == PGTX_OK;
    PQclear(r);
    if (!has_account)
        return fault_abort(&a->fault, err, 404, "not_found", "account %s not found", account.s);
    if (!has_product)
        return fault_abort(&a->fault, err, 404, "not_found", "product %s not found", product.s);
    if (!has_coupon)
        return fault_abort(&a->fault, err, 404, "not_found", "coupon %s not found", coupon.s);
    if (q->unit_price > 0 && a->quantity > INT64_MAX / q->unit_price)
        return fault_abort(&a->fault, err, 422, "out_of_range",
                           "price * quantity would not fit in 64 bits");
    int64_t gross = q->unit_price * a->quantity;
    q->total = gross > q->discount ? gross - q->discount : 0;
    return PGTX_OK;
}

static const char INSERT_ORDER_SQL[] =
    "INSERT INTO orders (account_id, product_id, quantity, unit_price,"
    " discount, total, coupon_id, idempotency_key, request_hash)"
    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
    " ON CONFLICT (account_id, idempotency_key) DO NOTHING"
    " RETURNING " ORDER_COLUMNS;

/* The order row, inserted first to claim the key.  When it inserts
   nothing, a twin with the same key committed meanwhile: answer with its
   order (or 422). */
static pgtx_status order_open(pgtx_tx *tx, order_arg *a, const order_quote *q,
                              pgtx_error *err)
{
    shop_num account = num_of(a->account), product = num_of(a->product),
             quantity = num_of(a->quantity), price = num_of(q->unit_price),
             discount = num_of(q->discount), total = num_of(q->total),
             coupon = num_of(a->coupon);
    const char *p[9] = {account.s, product.s, quantity.s, price.s, discount.s,
                        total.s, a->coupon ? coupon.s : NULL, a->key,
                        a->key ? a->hash : NULL};
    pgtx_status st = pgtx_query(tx, INSERT_ORDER_SQL, 9, p, &a->row, err);
    if (st != PGTX_OK || PQntuples(a->row) == 1)
        return st;
    result_reset(&a->row);
    st = order_find_key(tx, a, err);
    if (st == PGTX_OK && !a->replayed) /* cannot be seen yet: look again */
        return pgtx_fail(err, PGTX_STALE, "the key's order is not visible yet");
    return st;
}

static pgtx_status order_take_stock(pgtx_tx *tx, order_arg *a, pgtx_error *err)
{
    counter_result cr;
    pgtx_status st = counter_add(tx, &COUNTER_STOCK, a->strategy, a->product,
                                 -a->quantity, &cr, NULL, err);
    if (st != PGTX_OK || cr == COUNTER_DONE)
        return st;
    char why[64];
    snprintf(why, sizeof why, "fewer than %lld left", (long long)a->quantity);
    return counter_fault(&a->fault, err, &COUNTER_STOCK, a->product, cr,
                         "out_of_stock", why);
}

static pgtx_status order_charge(pgtx_tx *tx, order_arg *a, int64_t total,
                                pgtx_error *err)
{
    counter_result cr;
    pgtx_status st = counter_add(tx, &COUNTER_BALANCE, a->strategy, a->account,
                                 -total, &cr, NULL, err);
    if (st != PGTX_OK || cr == COUNTER_DONE)
        return st;
    char why[80];
    snprintf(why, sizeof why, "the balance is below the total %lld",
             (long long)total);
    return counter_fault(&a->fault, err, &COUNTER_BALANCE, a->account, cr,
                         "insufficient_funds", why);
}

/* ---- spending the coupon claim ------------------------------------------------- */

#define CLAIM_READ_SQL                                                         \
    "SELECT order_id FROM coupon_claim WHERE coupon_id = $1 AND account_id = $2"
#define CLAIM_SPEND_SQL                                                        \
    "UPDATE coupon_claim SET order_id = $3"                                    \
    " WHERE coupon_id = $1 AND account_id = $2"

typedef enum claim_state { CLAIM_NONE, CLAIM_UNUSED, CLAIM_USED } claim_state;

static pgtx_status claim_read(pgtx_tx *tx, const char *sql, const char *const p[2],
                              claim_state *out, pgtx_error *err)
{
    PGresult *r = NULL;
    pgtx_status st = pgtx_query(tx, sql, 2, p, &r, err);
    if (st != PGTX_OK)
        return st;
    *out = PQntuples(r) == 0 ? CLAIM_NONE
           : PQgetisnull(r, 0, 0) ? CLAIM_UNUSED
                                  : CLAIM_USED;
    PQclear(r);
    return PGTX_OK;
}

static pgtx_status claim_refuse(order_arg *a, claim_state s, pgtx_error *err)
{
    if (s == CLAIM_NONE)
        return fault_abort(&a->fault, err, 409, "coupon_not_claimed",
                           "account %lld has not claimed coupon %lld",
                           (long long)a->account, (long long)a->coupon);
    return fault_abort(&a->fault, err, 409, "coupon_already_used",
                       "account %lld already used coupon %lld on an order",
                       (long long)a->account, (long long)a->coupon);
}

/* atomic: one guarded UPDATE; zero rows is explained by a read after. */
static pgtx_status claim_spend_atomic(pgtx_tx *tx, order_arg *a,
                                      const char *const p[3], pgtx_error *err)
{
    PGresult *r = NULL;
    claim_state s = CLAIM_NONE;
    pgtx_status st = pgtx_query(tx, CLAIM_SPEND_SQL " AND order_id IS NULL", 3,
                                p, &r, err);
    int64_t spent = st == PGTX_OK ? pgtx_result_affected(r) : 0;
    PQclear(r);
    if (st != PGTX_OK || spent == 1)
        return st;
    st = claim_read(tx, CLAIM_READ_SQL, p, &s, err);
    return st != PGTX_OK ? st : claim_refuse(a, s, err);
}

/* The others read (lock reads FOR NO KEY UPDATE), then write; optimistic
   writes only if the claim is still unused, else STALE and a retry. */
static pgtx_status claim_spend(pgtx_tx *tx, order_arg *a, const char *order_id,
                               pgtx_error *err)
{
    shop_num coupon = num_of(a->coupon), account = num_of(a->account);
    const char *p[3] = {coupon.s, account.s, order_id};
    if (a->strategy == SHOP_ATOMIC)
        return claim_spend_atomic(tx, a, p, err);
    claim_state s = CLAIM_NONE;
    pgtx_status st = claim_read(tx,
                                a->strategy == SHOP_LOCK
                                    ? CLAIM_READ_SQL " FOR NO KEY UPDATE"
                                    : CLAIM_READ_SQL,
                                p, &s, err);
    if (st != PGTX_OK)
        return st;
    if (s != CLAIM_UNUSED)
        return claim_refuse(a, s, err);
    if (a->strategy == SHOP_OPTIMISTIC)
        return pgtx_query_expect(tx, CLAIM_SPEND_SQL " AND order_id IS NULL", 3,
                                 p, 1, NULL, err);
    return pgtx_query(tx, CLAIM_SPEND_SQL, 3, p, NULL, err);
}

/* ---- the transaction ---------------------------------------------------------------- */

static pgtx_status order_ledger(pgtx_tx *tx, const order_arg *a, int64_t total,
                                pgtx_error *err)
{
    shop_num account = num_of(a->account), amount = num_of(-total);
    const char *p[3] = {account.s, amount.s, PQgetvalue(a->row, 0, 0)};
    return pgtx_query(tx, "INSERT INTO ledger (account_id, amount, kind, order_id)"
                          " VALUES ($1, $2, 'order', $3)",
                      3, p, NULL, err);
}

static pgtx_status order_tx(pgtx_tx *tx, void *p, pgtx_error *err)
{
    order_arg *a = p;
    order_quote q;
    result_reset(&a->row);
    a->replayed = false;
    fault_reset(&a->fault);
    pgtx_status st = a->key ? order_find_key(tx, a, err) : PGTX_OK;
    if (st == PGTX_OK && !a->replayed)
        st = order_quote_get(tx, a, &q, err);
    if (st == PGTX_OK && !a->replayed)
        st = order_open(tx, a, &q, err);
    if (st != PGTX_OK || a->replayed)
        return st;
    st = order_take_stock(tx, a, err);
    if (st == PGTX_OK && a->coupon)
        st = claim_spend(tx, a, PQgetvalue(a->row, 0, 0), err);
    if (st == PGTX_OK)
        st = order_charge(tx, a, q.total, err);
    if (st == PGTX_OK)
        st = order_ledger(tx, a, q.total, err);
    return st;
}

/* After a unique violation on the key (a twin won where the index could
   not make us wait): the winner's order, read in a transaction of its own. */
static pgtx_status replay_tx(pgtx_tx *tx, void *p, pgtx_error *err)
{
    order_arg *a = p;
    result_reset(&a->row);
    a->replayed = false;
    fault_reset(&a->fault);
    pgtx_status st = order_find_key(tx, a, err);
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

void orders_create(shop_ctx *ctx)
{
    shop_body b;
    if (!body_parse(ctx, ORDER_FIELDS, 4, &b))
        return;
    order_arg a = {.account = b.num[0], .product = b.num[1], .quantity = b.num[2],
                   .coupon = b.present[3] ? b.num[3] : 0,
                   .key = ctx->req->idempotency_key, .strategy = ctx->strategy};
    body_free(&b);
    if (!key_valid(ctx, a.key) || !auth_may_act_for(ctx, a.account))
        return;
    request_hash(&a);
    pgtx_run_info info;
    pgtx_error err;
    pgtx_status st = run_raw(ctx, engine_for(ctx), order_tx, &a, &info, &err);
    if (st == PGTX_UNIQUE_VIOLATION && a.key &&
        strstr(err.message, "orders_idempotency_key") != NULL)
        st = run_raw(ctx, ctx->app->reader, replay_tx, &a, &info, &err);
    if (st == PGTX_OK)
        order_reply(ctx, &a);
    else
        reply_failure(ctx->res, st, &info, &err, &a.fault);
    PQclear(a.row);
}

void orders_get(shop_ctx *ctx)
{
    PGresult *r = NULL;
    int64_t owner = 0;
    if (!fetch_by_id(ctx, "SELECT " ORDER_COLUMNS " FROM orders WHERE id = $1",
                     "order", &r))
        return;
    if (pgtx_result_int64(r, 0, 1, &owner) == PGTX_OK && auth_may_act_for(ctx, owner))
        reply_row(ctx->res, 200, r);
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
