/* store.c — running a request's transaction, rows as JSON, and the counters that each strategy changes its own way. */
#include "app_internal.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Type oids of the columns the shop selects (pg_type.h is server-side). */
#define OID_BOOL 16
#define OID_INT8 20
#define OID_INT2 21
#define OID_INT4 23

shop_num num_of(int64_t v)
{
    shop_num n;
    snprintf(n.s, sizeof n.s, "%lld", (long long)v);
    return n;
}

pgtx_engine *engine_for(const shop_ctx *ctx)
{
    return ctx->strategy == PGTX_STRATEGY_SERIALIZABLE ? ctx->app->serializable
                                              : ctx->app->writer;
}

void result_reset(PGresult **r)
{
    PQclear(*r);
    *r = NULL;
}

/* ---- running ------------------------------------------------------------- */

void note_commit_lsn(shop_response *res, pgtx_status st, const pgtx_run_info *info)
{
    if (st == PGTX_OK && info->commit_lsn > res->commit_lsn)
        res->commit_lsn = info->commit_lsn;
}

pgtx_status run_counted(shop_ctx *ctx, pgtx_engine *engine, pgtx_tx_fn fn,
                        void *arg, bool (*wrote)(const void *arg),
                        pgtx_run_info *info, pgtx_error *err)
{
    memset(info, 0, sizeof *info);
    memset(err, 0, sizeof *err);
    pgtx_status st = pgtx_run(engine, fn, arg, info, err);
    if (ctx->write) {
        int retries = info->attempts > 1 ? info->attempts - 1 : 0;
        /* A request may run more than one transaction (an order that
           re-reads a concurrent winner): its retries add up. */
        ctx->res->retries = (ctx->res->retries > 0 ? ctx->res->retries : 0) + retries;
        bool committed = st == PGTX_OK && (wrote == NULL || wrote(arg));
        note_commit_lsn(ctx->res, st, info);
        if (ctx->app->metrics)
            shop_metrics_tx(ctx->app->metrics, ctx->strategy,
                            committed ? SHOP_TX_COMMITTED : SHOP_TX_FAILED, retries);
    }
    return st;
}

pgtx_status run_raw(shop_ctx *ctx, pgtx_engine *engine, pgtx_tx_fn fn,
                    void *arg, pgtx_run_info *info, pgtx_error *err)
{
    return run_counted(ctx, engine, fn, arg, NULL, info, err);
}

/* Tries in all when a refusal keeps having no reason the reads can see
   (what refused it kept rolling back before they looked). */
#define REFUSABLE_TRIES 3

pgtx_status run_refusable(shop_ctx *ctx, const shop_refusable *w, void *arg,
                          bool *answered, pgtx_run_info *info, pgtx_error *err)
{
    return run_refusable_from(ctx, w, arg, SHOP_NOT_RUN, answered, info, err);
}

pgtx_status run_refusable_from(shop_ctx *ctx, const shop_refusable *w, void *arg,
                               pgtx_status first, bool *answered,
                               pgtx_run_info *info, pgtx_error *err)
{
    *answered = false;
    for (int i = 0; i < REFUSABLE_TRIES; i++) {
        pgtx_status st = i == 0 && first != SHOP_NOT_RUN
                             ? first
                             : run_counted(ctx, engine_for(ctx), w->write, arg,
                                           w->wrote, info, err);
        if (!w->refused(st, err, arg))
            return st;
        /* read-only and not the request's write: not counted as one */
        pgtx_run_info why;
        st = pgtx_run(ctx->app->reader, w->explain, arg, &why, err);
        if (st != PGTX_OK || w->wrote(arg))
            return st;
    }
    char why[96];
    snprintf(why, sizeof why, "the %s kept being refused for a reason that did "
             "not last", w->what);
    reply_retry_exhausted(ctx->res, why);
    *answered = true;
    return PGTX_ABORTED;
}

bool run_tx(shop_ctx *ctx, pgtx_engine *engine, pgtx_tx_fn fn, void *arg,
            const shop_fault *fault)
{
    pgtx_run_info info;
    pgtx_error err;
    pgtx_status st = run_raw(ctx, engine, fn, arg, &info, &err);
    if (st != PGTX_OK)
        reply_failure(ctx->res, st, &info, &err, fault);
    return st == PGTX_OK;
}

/* ---- rows as JSON --------------------------------------------------------- */

static json_t *field_json(const PGresult *r, int row, int col)
{
    if (PQgetisnull(r, row, col))
        return json_null();
    Oid type = PQftype(r, col);
    if (type == OID_INT8 || type == OID_INT4 || type == OID_INT2) {
        int64_t v;
        return pgtx_result_int64(r, row, col, &v) == PGTX_OK ? json_integer(v)
                                                             : NULL;
    }
    if (type == OID_BOOL)
        return json_boolean(PQgetvalue(r, row, col)[0] == 't');
    return json_stringn(PQgetvalue(r, row, col), (size_t)PQgetlength(r, row, col));
}

json_t *row_json(const PGresult *r, int row, int ncols)
{
    if (r == NULL || row < 0 || row >= PQntuples(r))
        return NULL;
    if (ncols < 0 || ncols > PQnfields(r))
        ncols = PQnfields(r);
    json_t *o = json_object();
    for (int c = 0; o && c < ncols; c++) {
        json_t *v = field_json(r, row, c);
        if (v == NULL || json_object_set_new(o, PQfname(r, c), v) != 0) {
            json_decref(o);
            return NULL;
        }
    }
    return o;
}

void reply_row(shop_response *res, int status, const PGresult *r)
{
    reply_json(res, status, row_json(r, 0, -1));
}

/* ---- GET by id -------------------------------------------------------------- */

/* A read on a standby, with the check that it has replayed the client's
   last commit in the same round trip. */
typedef struct standby_read {
    stmt_arg *read;
    const char *lsn;  /* pg_lsn text, or NULL: any standby will do */
    PGresult *caught_up;
} standby_read;

static pgtx_status standby_tx(pgtx_tx *tx, void *p, pgtx_error *err)
{
    standby_read *r = p;
    result_reset(&r->caught_up);
    pgtx_status st = PGTX_OK;
    if (r->lsn)
        st = pgtx_queue(tx, "SELECT NOT pg_is_in_recovery()"
                            " OR pg_last_wal_replay_lsn() >= $1::pg_lsn",
                        1, &r->lsn, &r->caught_up, err);
    return st != PGTX_OK ? st : stmt_tx(tx, r->read, err);
}

/* Did the standby's answer come from far enough along? */
static bool standby_fresh(const standby_read *r)
{
    return r->lsn == NULL ||
           (PQntuples(r->caught_up) == 1 && PQgetvalue(r->caught_up, 0, 0)[0] == 't');
}

/* After a standby could not be had, reads go straight to the primary for
   this long: a standby that is down must not cost every read a connect
   attempt. */
#define STANDBY_BACKOFF_MS 1000

static bool standby_skipped(shop_app *app)
{
    return atomic_load_explicit(&app->standby_down_until_ms, memory_order_relaxed) >
           shop_now_ms();
}

static void standby_failed(shop_app *app, pgtx_status st)
{
    pgtx_class c = pgtx_status_class(st);
    if (c == PGTX_CLASS_CONNECTION || c == PGTX_CLASS_POOL)
        atomic_store_explicit(&app->standby_down_until_ms,
                              shop_now_ms() + STANDBY_BACKOFF_MS, memory_order_relaxed);
}

/* Where the read ran, for the metrics and Pgtx-Read-From (which goes
   only on the answers the read decides, 200 and 404). */
static void read_from(shop_ctx *ctx, bool standby, shop_read_outcome o)
{
    if (ctx->app->metrics)
        shop_metrics_read(ctx->app->metrics, o);
    ctx->res->read_from = standby ? "standby" : "primary";
}

/* A GET by id: on a standby when there are some, the one it gets has
   replayed the client's Pgtx-Commit-LSN, and it finds the row; else on
   the primary, which has everything committed.  A row missing on a
   standby may just not have arrived yet (it was created a moment ago, and
   the client sent no position): the primary says whether it exists. */
static bool run_read(shop_ctx *ctx, stmt_arg *a)
{
    shop_app *app = ctx->app;
    if (app->standby == NULL)
        return run_tx(ctx, app->reader, stmt_tx, a, NULL);
    shop_read_outcome o = SHOP_READ_UNAVAILABLE;
    if (!standby_skipped(app)) {
        char lsn[PGTX_LSN_SIZE];
        standby_read r = {a, ctx->min_lsn ? pgtx_lsn_format(ctx->min_lsn, lsn) : NULL, NULL};
        pgtx_run_info info;
        pgtx_error err;
        pgtx_status st = pgtx_run(app->standby, standby_tx, &r, &info, &err);
        bool fresh = st == PGTX_OK && standby_fresh(&r);
        result_reset(&r.caught_up);
        if (st != PGTX_OK)
            standby_failed(app, st);
        if (fresh && PQntuples(a->rows) > 0) {
            read_from(ctx, true, SHOP_READ_STANDBY);
            return true;
        }
        o = fresh ? SHOP_READ_MISSING : st == PGTX_OK ? SHOP_READ_BEHIND : SHOP_READ_UNAVAILABLE;
    }
    /* a standby's failure (counted) is not the request's: the primary
       answers instead */
    if (!run_tx(ctx, app->reader, stmt_tx, a, NULL))
        return false;
    read_from(ctx, false, o);
    return true;
}

bool fetch_by_id(shop_ctx *ctx, const char *sql, const char *what, PGresult **out)
{
    shop_num id = num_of(ctx->id);
    stmt_arg a = {.sql = sql, .n = 1, .params = {id.s}};
    if (!run_read(ctx, &a)) {
        PQclear(a.rows);
        return false;
    }
    if (PQntuples(a.rows) == 0) {
        reply_error(ctx->res, 404, "not_found", "%s %s not found", what, id.s);
        PQclear(a.rows);
        return false;
    }
    if (out) {
        *out = a.rows;
        return true;
    }
    reply_row(ctx->res, 200, a.rows);
    PQclear(a.rows);
    return true;
}

/* ---- counters ------------------------------------------------------------------ */

/* The lock is FOR NO KEY UPDATE: inserting an order, claim or ledger row
   takes a KEY SHARE lock on the row it references, which FOR UPDATE would
   wait for — and two orders each waiting for the other's KEY SHARE is a
   deadlock.  Table and column are compile-time text, never input. */
#define COUNTER(what, table, col)                                              \
    {                                                                          \
        what, "SELECT " col ", version FROM " table " WHERE id = $1::bigint",  \
        "SELECT " col ", version FROM " table " WHERE id = $1::bigint"         \
        " FOR NO KEY UPDATE"                                                   \
    }

const counter_sql COUNTER_BALANCE = COUNTER("account", "account", "balance");
const counter_sql COUNTER_STOCK = COUNTER("product", "product", "stock");
const counter_sql COUNTER_REMAINING = COUNTER("coupon", "coupon", "remaining");

pgtx_status counter_queue_read(pgtx_tx *tx, const counter_sql *sql,
                               pgtx_strategy s, const char *id, PGresult **out,
                               pgtx_error *err)
{
    return pgtx_queue(tx, s == PGTX_STRATEGY_LOCK ? sql->lock : sql->read, 1, &id, out, err);
}

counter_result counter_next(const PGresult *read, int64_t delta, int64_t *next,
                            int64_t *version)
{
    int64_t value;
    if (pgtx_result_int64(read, 0, 0, &value) != PGTX_OK ||
        pgtx_result_int64(read, 0, 1, version) != PGTX_OK)
        return COUNTER_MISSING;
    if ((delta > 0 && value > INT64_MAX - delta) ||
        (delta < 0 && value < INT64_MIN - delta))
        return COUNTER_OVERFLOW;
    *next = value + delta;
    return *next < 0 ? COUNTER_FLOOR : COUNTER_DONE;
}

pgtx_status rmw_write(pgtx_tx *tx, pgtx_strategy s, const char *sql, int n,
                      const char *const *params, PGresult **out, pgtx_error *err)
{
    if (s != PGTX_STRATEGY_OPTIMISTIC)
        return pgtx_queue(tx, sql, n, params, out, err);
    return pgtx_query_expect(tx, sql, n, params, 1, out, err);
}

const char *rmw_version(pgtx_strategy s, const shop_num *version)
{
    return s == PGTX_STRATEGY_OPTIMISTIC ? version->s : NULL;
}

pgtx_status counter_fault(shop_fault *f, pgtx_error *err, const counter_sql *sql,
                          int64_t id, counter_result cr, const char *floor_code,
                          const char *floor_message)
{
    switch (cr) {
    case COUNTER_MISSING:
        return fault_abort(f, err, 404, "not_found", "%s %lld not found",
                           sql->what, (long long)id);
    case COUNTER_OVERFLOW:
        return fault_abort(f, err, 422, "out_of_range",
                           "%s would not fit in 64 bits",
                           f->overflow ? f->overflow : "the result");
    case COUNTER_FLOOR:
        return fault_abort(f, err, 409, floor_code, "%s %lld: %s", sql->what,
                           (long long)id, floor_message);
    default:
        return PGTX_OK;
    }
}

/* ---- one statement ------------------------------------------------------------- */

pgtx_status stmt_tx(pgtx_tx *tx, void *p, pgtx_error *err)
{
    stmt_arg *a = p;
    result_reset(&a->rows);
    /* with BEGIN and COMMIT: one round trip */
    return pgtx_queue(tx, a->sql, a->n, a->params, &a->rows, err);
}

void bytea_hex(const unsigned char hash[SHOP_HASH_BYTES],
               char out[SHOP_BYTEA_HEX_LEN + 1])
{
    static const char HEX[] = "0123456789abcdef";
    out[0] = '\\';
    out[1] = 'x';
    for (int i = 0; i < SHOP_HASH_BYTES; i++) {
        out[2 + 2 * i] = HEX[hash[i] >> 4];
        out[3 + 2 * i] = HEX[hash[i] & 15];
    }
    out[SHOP_BYTEA_HEX_LEN] = '\0';
}

/* ---- a counter and the record of its change (deposit, restock) ------------------ */

typedef struct bump_arg {
    shop_batch *batch; /* first: see shop_combinable */
    const shop_bump *bump;
    int64_t id, delta;
    pgtx_strategy strategy;
    PGresult *read;  /* the read-modify-write strategies' read, owned */
    PGresult *row;   /* out, owned: the row after the change */
    shop_fault fault;
} bump_arg;

/* Read, compute, write: the write leaves with COMMIT (optimistic: before
   it, checked). */
static pgtx_status bump_rmw(pgtx_tx *tx, bump_arg *a, const shop_num *id,
                            const shop_num *delta, pgtx_error *err)
{
    const counter_sql *counter = a->bump->counter;
    pgtx_status st = counter_queue_read(tx, counter, a->strategy, id->s, &a->read, err);
    st = st != PGTX_OK ? st : pgtx_flush(tx, err);
    if (st != PGTX_OK)
        return st;
    int64_t next = 0, version = 0;
    counter_result cr = counter_next(a->read, a->delta, &next, &version);
    if (cr != COUNTER_DONE)
        return counter_fault(&a->fault, err, counter, a->id, cr, "conflict",
                             "it would go below 0");
    shop_num n = num_of(next), v = num_of(version);
    const char *params[4] = {id->s, delta->s, n.s, rmw_version(a->strategy, &v)};
    return rmw_write(tx, a->strategy, a->bump->set, 4, params, &a->row, err);
}

static pgtx_status bump_tx(pgtx_tx *tx, void *p, pgtx_error *err)
{
    bump_arg *a = p;
    result_reset(&a->row);
    result_reset(&a->read);
    fault_reset(&a->fault);
    a->fault.overflow = a->bump->overflow;
    shop_num id = num_of(a->id), delta = num_of(a->delta);
    if (a->strategy != PGTX_STRATEGY_ATOMIC)
        return bump_rmw(tx, a, &id, &delta, err);
    /* one statement, sent with BEGIN and COMMIT: one round trip */
    const char *params[2] = {id.s, delta.s};
    return pgtx_queue(tx, a->bump->atomic, 2, params, &a->row, err);
}

static bool bump_wrote(const void *p)
{
    return PQntuples(((const bump_arg *)p)->row) == 1;
}

static bool bump_prepare(shop_ctx *ctx, const void *data, void *p)
{
    const shop_bump *bump = data;
    bump_arg *a = p;
    shop_body b;
    shop_field field = {bump->field, SHOP_FIELD_INT, 1, false};
    if (!body_parse(ctx, &field, 1, &b))
        return false;
    *a = (bump_arg){.bump = bump, .id = ctx->id, .delta = b.num[0],
                    .strategy = ctx->strategy};
    body_free(&b);
    return true;
}

/* The answer of a bump that ran: the row it left, or 404. */
static bool bump_reply(shop_ctx *ctx, bump_arg *a, const PGresult *rows, int row)
{
    if (row < PQntuples(rows)) {
        reply_json(ctx->res, 200, row_json(rows, row, -1));
        return true;
    }
    /* no such row, so nothing was changed */
    reply_error(ctx->res, 404, "not_found", "%s %lld not found",
                a->bump->counter->what, (long long)a->id);
    return false;
}

static void bump_alone(shop_ctx *ctx, void *p)
{
    bump_arg *a = p;
    pgtx_run_info info;
    pgtx_error err;
    pgtx_status st = run_counted(ctx, engine_for(ctx), bump_tx, a, bump_wrote,
                                 &info, &err);
    if (st != PGTX_OK)
        reply_failure(ctx->res, st, &info, &err, &a->fault);
    else
        bump_reply(ctx, a, a->row, 0);
}

static bool bump_finish(shop_ctx *ctx, void *p, const pgtx_call *call, int row,
                        const pgtx_run_info *info)
{
    bump_arg *a = p;
    if (call->status != PGTX_OK) {
        reply_failure(ctx->res, call->status, info, &call->err, &a->fault);
        return false;
    }
    if (a->batch->rows)
        return bump_reply(ctx, a, a->batch->rows, row);
    return bump_reply(ctx, a, a->row, 0);
}

static void bump_release(void *p)
{
    bump_arg *a = p;
    result_reset(&a->row);
    result_reset(&a->read);
}

static int64_t bump_key(const void *p)
{
    return ((const bump_arg *)p)->id;
}

static const char *bump_delta(const void *p, char buf[BATCH_ELEM_BUF])
{
    snprintf(buf, BATCH_ELEM_BUF, "%lld", (long long)((const bump_arg *)p)->delta);
    return buf;
}

/* Every call's delta in one statement; its rows are read once the batch
   has run.  An overflow fails it: the calls then run one by one, and only
   the one that overflows is refused. */
static pgtx_status bump_set(pgtx_tx *tx, pgtx_call *calls, int n, pgtx_error *err)
{
    const bump_arg *first = calls[0].arg;
    const batch_elem_fn elems[1] = {bump_delta};
    shop_num id = num_of(first->id);
    return batch_queue(tx, calls, n, first->bump->batch, id.s, elems, NULL, 1, err);
}

static pgtx_status bump_one(pgtx_tx *tx, pgtx_call *call, pgtx_error *err)
{
    return batch_one(tx, call, bump_tx, NULL, err);
}

void bump_handle(shop_ctx *ctx, const shop_bump *bump)
{
    bump_arg a;
    if (bump_prepare(ctx, bump, &a)) {
        bump_alone(ctx, &a);
        bump_release(&a);
    }
}

const shop_combinable DEPOSIT_COMBINABLE = {
    .arg_size = sizeof(bump_arg),
    .data = &DEPOSIT_BUMP,
    .prepare = bump_prepare,
    .key = bump_key,
    .atomic_ops = {bump_set, bump_one},
    .rmw_ops = {NULL, bump_one},
    .alone = bump_alone,
    .finish = bump_finish,
    .release = bump_release,
};
