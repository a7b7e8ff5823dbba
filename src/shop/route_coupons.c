/* route_coupons.c — POST /v1/coupons, GET /v1/coupons/{id}, POST /v1/coupons/{id}/claims. */
#include "app_internal.h"

#include <string.h>

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
    pgtx_strategy strategy;
    PGresult *coupon_row;   /* read: remaining, version */
    PGresult *facts;        /* read: account exists, already claimed */
    PGresult *claimed;      /* out: the claim row's coupon_id, when written */
    shop_fault fault;
} claim_arg;

/* What the read-modify-write strategies read first, and what explains an
   atomic claim that changed nothing. */
static const char FACTS_SQL[] =
    "SELECT EXISTS (SELECT FROM account WHERE id = $2::bigint),"
    " EXISTS (SELECT FROM coupon_claim WHERE coupon_id = $1::bigint"
    " AND account_id = $2::bigint)";

/* atomic: one off the coupon, guarded, and the claim row, in one
   statement; none left changes nothing and returns no row.  The
   (coupon, account) key refuses a second claim (23505, and a concurrent
   twin waits for the first to commit first); the account's foreign key,
   checked at COMMIT, refuses an unknown account. */
static const char CLAIM_ATOMIC_SQL[] =
    "WITH c AS (UPDATE coupon SET remaining = remaining - 1, version = version + 1"
    " WHERE id = $1::bigint AND remaining >= 1 RETURNING id)"
    " INSERT INTO coupon_claim (coupon_id, account_id)"
    " SELECT id, $2::bigint FROM c RETURNING coupon_id";

/* The others: the remaining count computed here ($3), version-checked for
   optimistic ($4). */
static const char CLAIM_SET_SQL[] =
    "WITH c AS (UPDATE coupon SET remaining = $3::bigint, version = version + 1"
    " WHERE id = $1::bigint AND ($4::bigint IS NULL OR version = $4::bigint)"
    " RETURNING id)"
    " INSERT INTO coupon_claim (coupon_id, account_id)"
    " SELECT id, $2::bigint FROM c RETURNING coupon_id";

static void claim_reset(claim_arg *a)
{
    result_reset(&a->coupon_row);
    result_reset(&a->facts);
    result_reset(&a->claimed);
    fault_reset(&a->fault);
}

/* Both reads, in one round trip (with BEGIN, when they come first). */
static pgtx_status claim_read(pgtx_tx *tx, claim_arg *a, pgtx_error *err)
{
    shop_num coupon = num_of(a->coupon), account = num_of(a->account);
    const char *p[2] = {coupon.s, account.s};
    pgtx_status st = counter_queue_read(tx, &COUNTER_REMAINING, a->strategy, p[0],
                                        &a->coupon_row, err);
    st = st != PGTX_OK ? st : pgtx_queue(tx, FACTS_SQL, 2, p, &a->facts, err);
    return st != PGTX_OK ? st : pgtx_flush(tx, err);
}

/* The reads' verdict, in the order the errors are reported: a missing
   coupon or account, a claim already made, none left.  OK with the new
   remaining count and the version read. */
static pgtx_status claim_judge(claim_arg *a, int64_t *next, int64_t *version,
                               pgtx_error *err)
{
    counter_result cr = counter_next(a->coupon_row, -1, next, version);
    if (cr == COUNTER_MISSING)
        return counter_fault(&a->fault, err, &COUNTER_REMAINING, a->coupon, cr,
                             "coupon_exhausted", "none left");
    if (PQgetvalue(a->facts, 0, 0)[0] != 't')
        return fault_abort(&a->fault, err, 404, "not_found", "account %lld not found",
                           (long long)a->account);
    if (PQgetvalue(a->facts, 0, 1)[0] == 't')
        return fault_abort(&a->fault, err, 409, "coupon_already_claimed",
                           "account %lld already claimed coupon %lld",
                           (long long)a->account, (long long)a->coupon);
    return counter_fault(&a->fault, err, &COUNTER_REMAINING, a->coupon, cr,
                         "coupon_exhausted", "none left");
}

/* The reads and their verdict: what the read-modify-write strategies do
   before writing, and what explains an atomic claim that changed nothing. */
static pgtx_status claim_check(pgtx_tx *tx, claim_arg *a, int64_t *next,
                               int64_t *version, pgtx_error *err)
{
    claim_reset(a);
    pgtx_status st = claim_read(tx, a, err);
    return st != PGTX_OK ? st : claim_judge(a, next, version, err);
}

static pgtx_status claim_tx(pgtx_tx *tx, void *p, pgtx_error *err)
{
    claim_arg *a = p;
    shop_num coupon = num_of(a->coupon), account = num_of(a->account);
    const char *params[2] = {coupon.s, account.s};
    int64_t next = 0, version = 0;
    if (a->strategy == PGTX_STRATEGY_ATOMIC) { /* with BEGIN and COMMIT: one round trip */
        claim_reset(a);
        return pgtx_queue(tx, CLAIM_ATOMIC_SQL, 2, params, &a->claimed, err);
    }
    pgtx_status st = claim_check(tx, a, &next, &version, err);
    if (st != PGTX_OK)
        return st;
    shop_num n = num_of(next), v = num_of(version);
    const char *wp[4] = {coupon.s, account.s, n.s, rmw_version(a->strategy, &v)};
    return rmw_write(tx, a->strategy, CLAIM_SET_SQL, 4, wp, &a->claimed, err);
}

/* Why an atomic claim changed nothing, read after it: the fault, or OK
   when nothing is wrong any more (a claim that held the last one rolled
   back meanwhile): then it is tried again. */
static pgtx_status claim_explain_tx(pgtx_tx *tx, void *p, pgtx_error *err)
{
    int64_t next = 0, version = 0;
    return claim_check(tx, p, &next, &version, err);
}

/* A refusal the server made for the one statement, as the API's answer;
   false when it is not one of those. */
static bool claim_refused(shop_ctx *ctx, const claim_arg *a, pgtx_status st,
                          const pgtx_error *err)
{
    if (st == PGTX_UNIQUE_VIOLATION && strcmp(err->constraint_name, "coupon_claim_pkey") == 0)
        reply_error(ctx->res, 409, "coupon_already_claimed",
                    "account %lld already claimed coupon %lld",
                    (long long)a->account, (long long)a->coupon);
    else if (st == PGTX_CONSTRAINT &&
             strcmp(err->constraint_name, "coupon_claim_account_id_fkey") == 0)
        reply_error(ctx->res, 404, "not_found", "account %lld not found",
                    (long long)a->account);
    else
        return false;
    return true;
}

static bool claim_wrote(const void *p)
{
    return PQntuples(((const claim_arg *)p)->claimed) == 1;
}

/* atomic: the statement ran and changed nothing (none left, no coupon). */
static bool claim_changed_nothing(pgtx_status st, const pgtx_error *err, const void *p)
{
    (void)err;
    return st == PGTX_OK && !claim_wrote(p);
}

static const shop_refusable CLAIM_WRITE = {claim_tx, claim_explain_tx, claim_wrote,
                                           claim_changed_nothing, "claim"};

void coupons_claim(shop_ctx *ctx)
{
    shop_body b;
    if (!body_parse(ctx, CLAIM_FIELDS, 1, &b))
        return;
    claim_arg a = {.coupon = ctx->id, .account = b.num[0], .strategy = ctx->strategy};
    body_free(&b);
    if (!auth_may_act_for(ctx, a.account))
        return;
    pgtx_run_info info;
    pgtx_error err;
    bool answered;
    pgtx_status st = run_refusable(ctx, &CLAIM_WRITE, &a, &answered, &info, &err);
    if (answered)
        ;
    else if (st == PGTX_OK)
        reply_json(ctx->res, 201, json_pack("{s:I,s:I}", "coupon_id", (json_int_t)a.coupon,
                                            "account_id", (json_int_t)a.account));
    else if (!claim_refused(ctx, &a, st, &err))
        reply_failure(ctx->res, st, &info, &err, &a.fault);
    claim_reset(&a);
}
