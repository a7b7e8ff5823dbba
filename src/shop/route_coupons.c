/* route_coupons.c — POST /v1/coupons, GET /v1/coupons/{id}, POST /v1/coupons/{id}/claims. */
#include "app_internal.h"

#include <stdio.h>
#include <stdlib.h>
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
    shop_batch *batch; /* first: see shop_combinable */
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

/* Why a claim is refused, in the order the errors are reported. */
typedef enum claim_refusal {
    CLAIM_NO_COUPON,
    CLAIM_NO_ACCOUNT,
    CLAIM_CLAIMED_BEFORE,
    CLAIM_EXHAUSTED
} claim_refusal;

static pgtx_status claim_fault(claim_arg *a, claim_refusal why, pgtx_error *err)
{
    switch (why) {
    case CLAIM_NO_COUPON:
        return counter_fault(&a->fault, err, &COUNTER_REMAINING, a->coupon,
                             COUNTER_MISSING, "coupon_exhausted", "none left");
    case CLAIM_NO_ACCOUNT:
        return fault_abort(&a->fault, err, 404, "not_found", "account %lld not found",
                           (long long)a->account);
    case CLAIM_CLAIMED_BEFORE:
        return fault_abort(&a->fault, err, 409, "coupon_already_claimed",
                           "account %lld already claimed coupon %lld",
                           (long long)a->account, (long long)a->coupon);
    case CLAIM_EXHAUSTED:
        break;
    }
    return counter_fault(&a->fault, err, &COUNTER_REMAINING, a->coupon,
                         COUNTER_FLOOR, "coupon_exhausted", "none left");
}

/* The reads' verdict, in the order the errors are reported: a missing
   coupon or account, a claim already made, none left.  OK with the new
   remaining count and the version read. */
static pgtx_status claim_judge(claim_arg *a, int64_t *next, int64_t *version,
                               pgtx_error *err)
{
    counter_result cr = counter_next(a->coupon_row, -1, next, version);
    if (cr == COUNTER_MISSING)
        return claim_fault(a, CLAIM_NO_COUPON, err);
    if (PQgetvalue(a->facts, 0, 0)[0] != 't')
        return claim_fault(a, CLAIM_NO_ACCOUNT, err);
    if (PQgetvalue(a->facts, 0, 1)[0] == 't')
        return claim_fault(a, CLAIM_CLAIMED_BEFORE, err);
    if (cr == COUNTER_FLOOR)
        return claim_fault(a, CLAIM_EXHAUSTED, err);
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

static bool claim_prepare(shop_ctx *ctx, const void *data, void *p)
{
    (void)data;
    claim_arg *a = p;
    shop_body b;
    if (!body_parse(ctx, CLAIM_FIELDS, 1, &b))
        return false;
    *a = (claim_arg){.coupon = ctx->id, .account = b.num[0], .strategy = ctx->strategy};
    body_free(&b);
    return auth_may_act_for(ctx, a->account);
}

static bool claim_reply_created(shop_ctx *ctx, const claim_arg *a)
{
    reply_json(ctx->res, 201, json_pack("{s:I,s:I}", "coupon_id", (json_int_t)a->coupon,
                                        "account_id", (json_int_t)a->account));
    return true;
}

/* The answer once the claim's write ran (`first`: its status, `err` its
   error), or ran again alone when it changed nothing for a reason that did
   not last.  True when it committed. */
static bool claim_conclude(shop_ctx *ctx, claim_arg *a, pgtx_status first,
                           pgtx_run_info *info, pgtx_error *err)
{
    bool answered;
    pgtx_status st = run_refusable_from(ctx, &CLAIM_WRITE, a, first, &answered,
                                        info, err);
    if (answered)
        return false;
    if (st == PGTX_OK)
        return claim_reply_created(ctx, a);
    if (!claim_refused(ctx, a, st, err))
        reply_failure(ctx->res, st, info, err, &a->fault);
    return false;
}

static void claim_alone(shop_ctx *ctx, void *p)
{
    pgtx_run_info info;
    pgtx_error err;
    claim_conclude(ctx, p, SHOP_NOT_RUN, &info, &err);
}

/* shop_claim_batch's outcomes, as claim_refusal (-1: claimed). */
static int claim_outcome(const char *o)
{
    static const char *const REFUSALS[] = {
        [CLAIM_NO_COUPON] = "no_coupon", [CLAIM_NO_ACCOUNT] = "no_account",
        [CLAIM_CLAIMED_BEFORE] = "claimed_before", [CLAIM_EXHAUSTED] = "exhausted"};
    for (int i = 0; i < (int)(sizeof REFUSALS / sizeof REFUSALS[0]); i++)
        if (strcmp(o, REFUSALS[i]) == 0)
            return i;
    return -1;
}

static bool claim_finish(shop_ctx *ctx, void *p, const pgtx_call *call, int row,
                         const pgtx_run_info *info)
{
    claim_arg *a = p;
    const PGresult *rows = a->batch->rows;
    if (call->status == PGTX_OK && rows && row < PQntuples(rows)) {
        int why = claim_outcome(PQgetvalue(rows, row, 1));
        if (why < 0)
            return claim_reply_created(ctx, a);
        pgtx_error e;
        reply_failure(ctx->res, claim_fault(a, (claim_refusal)why, &e), info, &e,
                      &a->fault);
        return false;
    }
    pgtx_run_info inf = *info;
    pgtx_error err = call->err;
    return claim_conclude(ctx, a, call->status, &inf, &err);
}

static const char *claim_account(const void *p, char buf[BATCH_ELEM_BUF])
{
    snprintf(buf, BATCH_ELEM_BUF, "%lld", (long long)((const claim_arg *)p)->account);
    return buf;
}

static pgtx_status claim_set(pgtx_tx *tx, pgtx_call *calls, int n, pgtx_error *err)
{
    const claim_arg *first = calls[0].arg;
    const batch_elem_fn elems[1] = {claim_account};
    shop_num coupon = num_of(first->coupon);
    return batch_queue(tx, calls, n, "SELECT o_n, o_outcome FROM shop_claim_batch"
                       "($1::bigint, $2::bigint[]) ORDER BY o_n",
                       coupon.s, elems, NULL, 1, err);
}

/* One call of a batch (see batch_one). */
static pgtx_status claim_one(pgtx_tx *tx, pgtx_call *call, pgtx_error *err)
{
    claim_arg *a = call->arg;
    return batch_one(tx, call, claim_tx, &a->strategy, err);
}

static int64_t claim_key(const void *p)
{
    return ((const claim_arg *)p)->coupon;
}

static void claim_release(void *p)
{
    claim_reset(p);
}

const shop_combinable CLAIM_COMBINABLE = {
    .arg_size = sizeof(claim_arg),
    .prepare = claim_prepare,
    .key = claim_key,
    .atomic_ops = {claim_set, claim_one},
    .rmw_ops = {NULL, claim_one},
    .alone = claim_alone,
    .finish = claim_finish,
    .release = claim_release,
};

void coupons_claim(shop_ctx *ctx)
{
    combinable_handle(ctx, &CLAIM_COMBINABLE);
}
