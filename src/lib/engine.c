/* engine.c — engines: a pool plus the options every transaction begins with. */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct pgtx_engine {
    pgtx_pool *pool;
    pgtx_engine_options opt;
    char begin_sql[96];  /* "BEGIN ISOLATION LEVEL ..., READ ONLY, ..." */
    char setup_sql[160]; /* set_config(...) for timeouts, "" when none */
};

void pgtx_engine_options_init(pgtx_engine_options *opt)
{
    memset(opt, 0, sizeof *opt);
    opt->isolation = PGTX_READ_COMMITTED;
    opt->retry.max_attempts = 50;
    opt->retry.budget_ms = 10000;
    opt->retry.base_delay_ms = 1;
    opt->retry.max_delay_ms = 100;
    opt->retry.retry_on = PGTX_RETRY_DEFAULT;
}

static const char *options_problem(const pgtx_engine_options *o)
{
    if (o->isolation < PGTX_READ_COMMITTED || o->isolation > PGTX_SERIALIZABLE)
        return "unknown isolation level";
    if (o->statement_timeout_ms < 0 || o->lock_timeout_ms < 0)
        return "timeouts must not be negative";
    if (o->retry.max_attempts < 1)
        return "retry.max_attempts must be at least 1";
    if (o->retry.budget_ms < 0 || o->retry.base_delay_ms < 0 ||
        o->retry.max_delay_ms < 0)
        return "retry times must not be negative";
    return NULL;
}

static const char *isolation_sql(pgtx_isolation iso)
{
    switch (iso) {
    case PGTX_SERIALIZABLE:
        return "SERIALIZABLE";
    case PGTX_REPEATABLE_READ:
        return "REPEATABLE READ";
    default:
        return "READ COMMITTED";
    }
}

/* Every option is spelled out, the defaults too: the session's own defaults
   (default_transaction_isolation...) may be anything, behind PgBouncer
   especially, and must not decide what a transaction gets. */
static void build_begin(pgtx_engine *e)
{
    const pgtx_engine_options *o = &e->opt;
    snprintf(e->begin_sql, sizeof e->begin_sql,
             "BEGIN ISOLATION LEVEL %s, READ %s, %sDEFERRABLE",
             isolation_sql(o->isolation), o->read_only ? "ONLY" : "WRITE",
             o->deferrable ? "" : "NOT ");
}

/* Timeouts are transaction-local (set_config(..., true) is SET LOCAL), so
   they end with the transaction and never stay on a pooled connection. */
static void build_setup(pgtx_engine *e)
{
    const pgtx_engine_options *o = &e->opt;
    char st[64] = "", lk[64] = "";
    if (o->statement_timeout_ms > 0)
        snprintf(st, sizeof st, "set_config('statement_timeout', '%d', true)",
                 o->statement_timeout_ms);
    if (o->lock_timeout_ms > 0)
        snprintf(lk, sizeof lk, "set_config('lock_timeout', '%d', true)",
                 o->lock_timeout_ms);
    e->setup_sql[0] = '\0';
    if (st[0] || lk[0])
        snprintf(e->setup_sql, sizeof e->setup_sql, "SELECT %s%s%s", st,
                 (st[0] && lk[0]) ? ", " : "", lk);
}

pgtx_status pgtx_engine_create(pgtx_pool *pool, const pgtx_engine_options *opt,
                               pgtx_engine **out, pgtx_error *err)
{
    if (pool == NULL || out == NULL)
        return pgtx_fail(err, PGTX_INVALID, "pool and out are required");
    pgtx_engine_options defaults;
    if (opt == NULL) {
        pgtx_engine_options_init(&defaults);
        opt = &defaults;
    }
    const char *problem = options_problem(opt);
    if (problem)
        return pgtx_fail(err, PGTX_INVALID, "%s", problem);
    pgtx_engine *e = calloc(1, sizeof *e);
    if (e == NULL)
        return pgtx_fail(err, PGTX_NOMEM, "out of memory creating an engine");
    e->pool = pool;
    e->opt = *opt;
    build_begin(e);
    build_setup(e);
    *out = e;
    return PGTX_OK;
}

void pgtx_engine_destroy(pgtx_engine *engine) { free(engine); }

pgtx_pool *pgtx_engine_pool_borrow(pgtx_engine *engine) { return engine->pool; }

const char *pgtx_engine_begin_sql_borrow(pgtx_engine *engine)
{
    return engine->begin_sql;
}

const pgtx_engine_options *pgtx__engine_options(const pgtx_engine *engine)
{
    return &engine->opt;
}

const char *pgtx__engine_setup_sql(const pgtx_engine *engine)
{
    return engine->setup_sql[0] ? engine->setup_sql : NULL;
}
