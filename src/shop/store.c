/* store.c — running a request's transaction, rows as JSON, and the counters that each strategy changes its own way. */
#include "app_internal.h"

#include <stdio.h>
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
    return ctx->strategy == SHOP_SERIALIZABLE ? ctx->app->serializable
                                              : ctx->app->writer;
}

void result_reset(PGresult **r)
{
    PQclear(*r);
    *r = NULL;
}

/* ---- running ------------------------------------------------------------- */

pgtx_status run_raw(shop_ctx *ctx, pgtx_engine *engine, pgtx_tx_fn fn,
                    void *arg, pgtx_run_info *info, pgtx_error *err)
{
    memset(info, 0, sizeof *info);
    memset(err, 0, sizeof *err);
    pgtx_status st = pgtx_run(engine, fn, arg, info, err);
    if (ctx->write) {
        int retries = info->attempts > 1 ? info->attempts - 1 : 0;
        /* A request may run more than one transaction (an order that
           re-reads a concurrent winner): its retries add up. */
        ctx->res->retries = (ctx->res->retries > 0 ? ctx->res->retries : 0) + retries;
        if (ctx->app->metrics)
            shop_metrics_tx(ctx->app->metrics, ctx->strategy,
                            st == PGTX_OK ? SHOP_TX_COMMITTED : SHOP_TX_FAILED,
                            retries);
    }
    return st;
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

bool fetch_by_id(shop_ctx *ctx, const char *sql, const char *what, PGresult **out)
{
    shop_num id = num_of(ctx->id);
    stmt_arg a = {.sql = sql, .n = 1, .params = {id.s}};
    if (!run_tx(ctx, ctx->app->reader, stmt_tx, &a, NULL)) {
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

/* Every statement a strategy needs for one counter column; table, column
   and RETURNING list are compile-time text, never input.  The lock is FOR
   NO KEY UPDATE: inserting an order, claim or ledger row takes a KEY SHARE
   lock on the row it references, which FOR UPDATE would wait for — and two
   orders each waiting for the other's KEY SHARE is a deadlock. */
#define COUNTER(what, table, col, ret)                                          \
    {                                                                          \
        what,                                                                  \
        "UPDATE " table " SET " col " = " col " + $2, version = version + 1 "  \
        "WHERE id = $1 AND " col " + $2 >= 0 RETURNING " ret,                  \
        "SELECT " col " FROM " table " WHERE id = $1",                         \
        "SELECT " col ", version FROM " table " WHERE id = $1",                \
        "SELECT " col ", version FROM " table " WHERE id = $1 "                \
        "FOR NO KEY UPDATE",                                                   \
        "UPDATE " table " SET " col " = $2, version = version + 1 "            \
        "WHERE id = $1 RETURNING " ret,                                        \
        "UPDATE " table " SET " col " = $2, version = version + 1 "            \
        "WHERE id = $1 AND version = $3 RETURNING " ret                        \
    }

const counter_sql COUNTER_BALANCE =
    COUNTER("account", "account", "balance", ACCOUNT_COLUMNS);
const counter_sql COUNTER_STOCK =
    COUNTER("product", "product", "stock", PRODUCT_COLUMNS);
const counter_sql COUNTER_REMAINING =
    COUNTER("coupon", "coupon", "remaining", COUPON_COLUMNS);

static void keep_row(PGresult **row, PGresult *r)
{
    if (row)
        *row = r;
    else
        PQclear(r);
}

/* atomic: one guarded statement, no read; zero rows is explained after. */
static pgtx_status counter_atomic(pgtx_tx *tx, const counter_sql *sql,
                                  const char *const params[2], counter_result *out,
                                  PGresult **row, pgtx_error *err)
{
    PGresult *r = NULL;
    pgtx_status st = pgtx_query(tx, sql->atomic, 2, params, &r, err);
    if (st != PGTX_OK)
        return st;
    if (PQntuples(r) == 1) {
        *out = COUNTER_DONE;
        keep_row(row, r);
        return PGTX_OK;
    }
    PQclear(r);
    st = pgtx_query(tx, sql->peek, 1, params, &r, err);
    if (st != PGTX_OK)
        return st;
    *out = PQntuples(r) == 1 ? COUNTER_FLOOR : COUNTER_MISSING;
    PQclear(r);
    return PGTX_OK;
}

/* The value and version of the row (locked for the lock strategy). */
static pgtx_status counter_read(pgtx_tx *tx, const counter_sql *sql,
                                shop_strategy s, const char *id, bool *found,
                                int64_t value_version[2], pgtx_error *err)
{
    PGresult *r = NULL;
    pgtx_status st = pgtx_query(tx, s == SHOP_LOCK ? sql->lock : sql->read, 1,
                                &id, &r, err);
    if (st != PGTX_OK)
        return st;
    *found = PQntuples(r) == 1 &&
             pgtx_result_int64(r, 0, 0, &value_version[0]) == PGTX_OK &&
             pgtx_result_int64(r, 0, 1, &value_version[1]) == PGTX_OK;
    PQclear(r);
    return PGTX_OK;
}

static counter_result counter_next(int64_t value, int64_t delta, int64_t *next)
{
    if ((delta > 0 && value > INT64_MAX - delta) ||
        (delta < 0 && value < INT64_MIN - delta))
        return COUNTER_OVERFLOW;
    *next = value + delta;
    return *next < 0 ? COUNTER_FLOOR : COUNTER_DONE;
}

/* lock, optimistic, serializable and naive: read, compute here, write the
   new value back.  What keeps it correct differs: the row lock, the version
   check (a lost race is STALE, retried), SERIALIZABLE's 40001 — and for
   naive nothing, which is the point of it. */
static pgtx_status counter_rmw(pgtx_tx *tx, const counter_sql *sql,
                               shop_strategy s, const char *id, int64_t delta,
                               counter_result *out, PGresult **row,
                               pgtx_error *err)
{
    bool found = false;
    int64_t vv[2], next = 0;
    pgtx_status st = counter_read(tx, sql, s, id, &found, vv, err);
    if (st != PGTX_OK || !found) {
        *out = COUNTER_MISSING;
        return st;
    }
    *out = counter_next(vv[0], delta, &next);
    if (*out != COUNTER_DONE)
        return PGTX_OK;
    shop_num n = num_of(next), v = num_of(vv[1]);
    const char *p[3] = {id, n.s, v.s};
    PGresult *r = NULL;
    st = s == SHOP_OPTIMISTIC
             ? pgtx_query_expect(tx, sql->write_if, 3, p, 1, &r, err)
             : pgtx_query(tx, sql->write, 2, p, &r, err);
    if (st == PGTX_OK)
        keep_row(row, r);
    return st;
}

pgtx_status counter_add(pgtx_tx *tx, const counter_sql *sql, shop_strategy s,
                        int64_t id, int64_t delta, counter_result *out,
                        PGresult **row, pgtx_error *err)
{
    shop_num i = num_of(id), d = num_of(delta);
    const char *params[2] = {i.s, d.s};
    if (row)
        *row = NULL;
    if (s == SHOP_ATOMIC)
        return counter_atomic(tx, sql, params, out, row, err);
    return counter_rmw(tx, sql, s, i.s, delta, out, row, err);
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
    return pgtx_query(tx, a->sql, a->n, a->params, &a->rows, err);
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
    const shop_bump *bump;
    int64_t id, delta;
    shop_strategy strategy;
    PGresult *row;   /* out, owned: the row after the change */
    shop_fault fault;
} bump_arg;

static pgtx_status bump_tx(pgtx_tx *tx, void *p, pgtx_error *err)
{
    bump_arg *a = p;
    counter_result cr;
    result_reset(&a->row);
    fault_reset(&a->fault);
    a->fault.overflow = a->bump->overflow;
    pgtx_status st = counter_add(tx, a->bump->counter, a->strategy, a->id,
                                 a->delta, &cr, &a->row, err);
    if (st == PGTX_OK && cr != COUNTER_DONE)
        return counter_fault(&a->fault, err, a->bump->counter, a->id, cr,
                             "conflict", "it would go below 0");
    if (st != PGTX_OK)
        return st;
    shop_num id = num_of(a->id), delta = num_of(a->delta);
    const char *params[2] = {id.s, delta.s};
    return pgtx_query(tx, a->bump->history, 2, params, NULL, err);
}

void bump_handle(shop_ctx *ctx, const shop_bump *bump)
{
    shop_body b;
    shop_field field = {bump->field, SHOP_FIELD_INT, 1, false};
    if (!body_parse(ctx, &field, 1, &b))
        return;
    bump_arg a = {.bump = bump, .id = ctx->id, .delta = b.num[0],
                  .strategy = ctx->strategy};
    body_free(&b);
    if (run_tx(ctx, engine_for(ctx), bump_tx, &a, &a.fault))
        reply_row(ctx->res, 200, a.row);
    PQclear(a.row);
}
