/* route_coupons.c — POST /v1/coupons, GET /v1/coupons/{id}, POST /v1/coupons/{id}/claims. */
#include "app_internal.h"

static const shop_field COUPON_FIELDS[] = {
    {"code", SHOP_FIELD_TEXT, 0, false},
    {"discount", SHOP_FIELD_INT, 0, false},
    {"quantity", SHOP_FIELD_INT, 0, false},
};

static const shop_field CLAIM_FIELDS[] = {
    {"account_id", SHOP_FIELD_INT, 1, false},
};

void coupons_create(shop_ctx *ctx)
{
    shop_body b;
    if (!body_parse(ctx, COUPON_FIELDS, 3, &b))
        return;
    shop_num discount = num_of(b.num[1]), quantity = num_of(b.num[2]);
    /* DO NOTHING rather than an error: a taken code is an answer, and a
       concurrent insert of the same code waits here for the first. */
    stmt_arg a = {
        .sql = "INSERT INTO coupon (code, discount, quantity, remaining)"
               " VALUES ($1, $2, $3, $3) ON CONFLICT (code) DO NOTHING"
               " RETURNING " COUPON_COLUMNS,
        .n = 3,
        .params = {b.text[0], discount.s, quantity.s}};
    if (run_tx(ctx, engine_for(ctx), stmt_tx, &a, NULL)) {
        if (PQntuples(a.rows) == 1)
            reply_row(ctx->res, 201, a.rows);
        else
            reply_error(ctx->res, 409, "coupon_code_taken",
                        "a coupon with this code already exists");
    }
    PQclear(a.rows);
    body_free(&b);
}

void coupons_get(shop_ctx *ctx)
{
    fetch_by_id(ctx, "SELECT " COUPON_COLUMNS " FROM coupon WHERE id = $1",
                "coupon", NULL);
}

typedef struct claim_arg {
    int64_t coupon, account;
    shop_strategy strategy;
    shop_fault fault;
} claim_arg;

/* Both rows must exist before the claim row can reference them. */
static pgtx_status claim_check(pgtx_tx *tx, claim_arg *a, const char *const p[2],
                               pgtx_error *err)
{
    PGresult *r = NULL;
    pgtx_status st = pgtx_query(tx, "SELECT EXISTS (SELECT FROM coupon WHERE id = $1),"
                                    " EXISTS (SELECT FROM account WHERE id = $2)",
                                2, p, &r, err);
    if (st != PGTX_OK)
        return st;
    bool coupon = PQgetvalue(r, 0, 0)[0] == 't', account = PQgetvalue(r, 0, 1)[0] == 't';
    PQclear(r);
    if (!coupon)
        return fault_abort(&a->fault, err, 404, "not_found", "coupon %s not found", p[0]);
    if (!account)
        return fault_abort(&a->fault, err, 404, "not_found", "account %s not found", p[1]);
    return PGTX_OK;
}

/* The claim row first: the (coupon, account) key stops a second claim
   whatever the strategy (a concurrent twin waits for the first to commit,
   then inserts nothing); then one off the coupon's remaining count, the
   strategy's way, which says when there is none left. */
static pgtx_status claim_tx(pgtx_tx *tx, void *p, pgtx_error *err)
{
    claim_arg *a = p;
    shop_num coupon = num_of(a->coupon), account = num_of(a->account);
    const char *params[2] = {coupon.s, account.s};
    PGresult *r = NULL;
    counter_result cr;
    fault_reset(&a->fault);
    pgtx_status st = claim_check(tx, a, params, err);
    if (st == PGTX_OK)
        st = pgtx_query(tx, "INSERT INTO coupon_claim (coupon_id, account_id)"
                            " VALUES ($1, $2) ON CONFLICT DO NOTHING",
                        2, params, &r, err);
    if (st != PGTX_OK)
        return st;
    int64_t inserted = pgtx_result_affected(r);
    PQclear(r);
    if (inserted != 1)
        return fault_abort(&a->fault, err, 409, "coupon_already_claimed",
                           "account %s already claimed coupon %s", account.s,
                           coupon.s);
    st = counter_add(tx, &COUNTER_REMAINING, a->strategy, a->coupon, -1, &cr,
                     NULL, err);
    if (st != PGTX_OK || cr == COUNTER_DONE)
        return st;
    return counter_fault(&a->fault, err, &COUNTER_REMAINING, a->coupon, cr,
                         "coupon_exhausted", "none left");
}

void coupons_claim(shop_ctx *ctx)
{
    shop_body b;
    if (!body_parse(ctx, CLAIM_FIELDS, 1, &b))
        return;
    claim_arg a = {.coupon = ctx->id, .account = b.num[0], .strategy = ctx->strategy};
    body_free(&b);
    if (!auth_may_act_for(ctx, a.account) ||
        !run_tx(ctx, engine_for(ctx), claim_tx, &a, &a.fault))
        return;
    reply_json(ctx->res, 201, json_pack("{s:I,s:I}", "coupon_id", (json_int_t)a.coupon,
                                        "account_id", (json_int_t)a.account));
}
