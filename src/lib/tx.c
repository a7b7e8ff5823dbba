/* tx.c — the transaction runner: begin, statements, commit/rollback, retry. */
#include "internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct pgtx_tx {
    pgtx_engine *engine;
    pgtx_pool *pool;
    pgtx_conn *conn;
    PGconn *pg;
    int attempt;
    bool begun;         /* BEGIN went out and succeeded */
    pgtx_status failed; /* first error inside the transaction, or OK */
    pgtx_error failed_err;
};

/* ---- statements ---------------------------------------------------------- */

static bool result_ok(const PGresult *r)
{
    ExecStatusType s = PQresultStatus(r);
    return s == PGRES_COMMAND_OK || s == PGRES_TUPLES_OK ||
           s == PGRES_EMPTY_QUERY;
}

/* Remember the first failure: the server has aborted the transaction, and
   the runner must roll back whatever the callback returns. */
static pgtx_status tx_fail(pgtx_tx *tx, pgtx_status st, const pgtx_error *e,
                           pgtx_error *err)
{
    if (tx->failed == PGTX_OK) {
        tx->failed = st;
        tx->failed_err = *e;
    }
    if (err)
        *err = *e;
    return st;
}

/* libpq would only say "server closed the connection": say what did. */
static pgtx_status socket_timeout(pgtx_tx *tx, pgtx_status st, pgtx_error *e)
{
    if (!pgtx__conn_timed_out(tx->conn) || pgtx_status_class(st) != PGTX_CLASS_CONNECTION)
        return st;
    return pgtx_fail(e, PGTX_SOCKET_TIMEOUT, "no answer from the server within "
                     "socket_timeout_ms (%d ms); the connection was closed",
                     pgtx__socket_timeout_ms(tx->pool));
}

static pgtx_status tx_fail_result(pgtx_tx *tx, const PGresult *r, pgtx_error *err)
{
    pgtx_error e;
    pgtx_status st = socket_timeout(tx, pgtx__error_from_result(&e, tx->pg, r), &e);
    return tx_fail(tx, st, &e, err);
}

/* Read one pipelined query's result and its NULL terminator.  Keeps the
   result in *keep when asked and it succeeded; returns OK or the failure. */
static pgtx_status pipeline_take(pgtx_tx *tx, PGresult **keep, pgtx_error *err)
{
    PGresult *r = pgtx__get_result(tx->conn);
    if (r == NULL)
        return tx_fail_result(tx, NULL, err);
    pgtx_status st = PGTX_OK;
    if (!result_ok(r) && PQresultStatus(r) != PGRES_PIPELINE_ABORTED)
        st = tx_fail_result(tx, r, err);
    else if (PQresultStatus(r) == PGRES_PIPELINE_ABORTED)
        st = tx->failed != PGTX_OK ? tx->failed : PGTX_SQL;
    if (st == PGTX_OK && keep) {
        *keep = r;
        r = NULL;
    }
    PQclear(r);
    PGresult *end = pgtx__get_result(tx->conn);
    PQclear(end); /* NULL, unless the query returned several results */
    return st;
}

/* After a pipeline: consume the sync point and leave pipeline mode, so that
   the connection is usable (or visibly broken) for what follows. */
static void pipeline_finish(pgtx_tx *tx)
{
    if (PQstatus(tx->pg) == CONNECTION_OK) {
        PGresult *r = pgtx__get_result(tx->conn);
        PQclear(r);
    }
    if (PQstatus(tx->pg) == CONNECTION_OK)
        (void)PQexitPipelineMode(tx->pg);
}

static bool pipeline_send(pgtx_tx *tx, const char *setup, const char *sql,
                          int n, const char *const *params)
{
    const char *begin = pgtx_engine_begin_sql_borrow(tx->engine);
    if (!PQenterPipelineMode(tx->pg))
        return false;
    bool ok = PQsendQueryParams(tx->pg, begin, 0, NULL, NULL, NULL, NULL, 0);
    if (ok && setup)
        ok = PQsendQueryParams(tx->pg, setup, 0, NULL, NULL, NULL, NULL, 0);
    ok = ok && PQsendQueryParams(tx->pg, sql, n, NULL, params, NULL, NULL, 0);
    return ok && PQpipelineSync(tx->pg);
}

static void echo_pipeline(pgtx_tx *tx, const char *setup, const char *sql,
                          int64_t us)
{
    char line[768];
    snprintf(line, sizeof line, "%s; %s%s%s", pgtx_engine_begin_sql_borrow(tx->engine),
             setup ? setup : "", setup ? "; " : "", sql);
    pgtx__echo(tx->pool, tx->conn, line, us);
}

/* The first statement: BEGIN, the engine's SET LOCALs and the statement go
   out together and come back in one round trip. */
static pgtx_status first_statement(pgtx_tx *tx, const char *sql, int n,
                                   const char *const *params, PGresult **out,
                                   pgtx_error *err)
{
    const char *setup = pgtx__engine_setup_sql(tx->engine);
    int64_t t0 = pgtx__now_us();
    pgtx__count_round_trip(tx->pool);
    if (!pipeline_send(tx, setup, sql, n, params)) {
        pgtx_status st = tx_fail_result(tx, NULL, err);
        if (PQstatus(tx->pg) == CONNECTION_OK)
            pipeline_finish(tx);
        return st;
    }
    pgtx_status st = pipeline_take(tx, NULL, err); /* BEGIN */
    if (st == PGTX_OK)
        tx->begun = true;
    if (setup) {
        pgtx_status s2 = pipeline_take(tx, NULL, err);
        st = st == PGTX_OK ? s2 : st;
    }
    PGresult *res = NULL;
    pgtx_status s3 = pipeline_take(tx, &res, err);
    st = st == PGTX_OK ? s3 : st;
    pipeline_finish(tx);
    if (pgtx__echo_on(tx->pool))
        echo_pipeline(tx, setup, sql, pgtx__now_us() - t0);
    if (st != PGTX_OK) {
        PQclear(res);
        return st;
    }
    if (out)
        *out = res;
    else
        PQclear(res);
    return PGTX_OK;
}

static pgtx_status next_statement(pgtx_tx *tx, const char *sql, int n,
                                  const char *const *params, PGresult **out,
                                  pgtx_error *err)
{
    int64_t t0 = pgtx__now_us();
    pgtx__count_round_trip(tx->pool);
    PGresult *r = pgtx__exec(tx->conn, sql, n, params);
    pgtx__echo(tx->pool, tx->conn, sql, pgtx__now_us() - t0);
    if (!result_ok(r)) {
        pgtx_status st = tx_fail_result(tx, r, err);
        PQclear(r);
        return st;
    }
    if (out)
        *out = r;
    else
        PQclear(r);
    return PGTX_OK;
}

pgtx_status pgtx_query(pgtx_tx *tx, const char *sql, int nparams,
                       const char *const *params, PGresult **out,
                       pgtx_error *err)
{
    if (tx == NULL || sql == NULL || nparams < 0 || (nparams > 0 && !params))
        return pgtx_fail(err, PGTX_INVALID, "tx, sql and params are required");
    if (tx->failed != PGTX_OK) {
        /* The server would only say "current transaction is aborted";
           the first error is the one worth reporting. */
        if (err)
            *err = tx->failed_err;
        return tx->failed;
    }
    if (!tx->begun)
        return first_statement(tx, sql, nparams, params, out, err);
    return next_statement(tx, sql, nparams, params, out, err);
}

/* BEGIN on its own, for callers that want the raw PGconn first. */
static void begin_alone(pgtx_tx *tx)
{
    const char *setup = pgtx__engine_setup_sql(tx->engine);
    const char *begin = pgtx_engine_begin_sql_borrow(tx->engine);
    PGresult *r = NULL;
    pgtx_error e;
    pgtx__count_round_trip(tx->pool);
    r = pgtx__exec(tx->conn, begin, -1, NULL);
    if (result_ok(r) && setup) {
        PQclear(r);
        r = pgtx__exec(tx->conn, setup, -1, NULL);
    }
    if (result_ok(r))
        tx->begun = true;
    else
        tx_fail_result(tx, r, &e);
    PQclear(r);
}

PGconn *pgtx_tx_pg_borrow(pgtx_tx *tx)
{
    if (tx == NULL)
        return NULL;
    if (!tx->begun && tx->failed == PGTX_OK)
        begin_alone(tx);
    return tx->begun ? tx->pg : NULL;
}

int pgtx_tx_attempt(const pgtx_tx *tx) { return tx->attempt; }

pgtx_status pgtx_query_expect(pgtx_tx *tx, const char *sql, int nparams,
                              const char *const *params, int64_t expected,
                              PGresult **out, pgtx_error *err)
{
    PGresult *r = NULL;
    pgtx_status st = pgtx_query(tx, sql, nparams, params, &r, err);
    if (st != PGTX_OK)
        return st;
    int64_t got = pgtx_result_affected(r);
    if (got != expected) {
        PQclear(r);
        pgtx_error e;
        pgtx_fail(&e, PGTX_STALE, "expected %lld row(s) changed, got %lld: the "
                  "data changed since it was read", (long long)expected,
                  (long long)got);
        return tx_fail(tx, PGTX_STALE, &e, err);
    }
    if (out)
        *out = r;
    else
        PQclear(r);
    return PGTX_OK;
}

pgtx_status pgtx_result_int64(const PGresult *res, int row, int col, int64_t *out)
{
    if (res == NULL || out == NULL || row < 0 || col < 0 ||
        row >= PQntuples(res) || col >= PQnfields(res) ||
        PQgetisnull(res, row, col))
        return PGTX_INVALID;
    const char *s = PQgetvalue(res, row, col);
    char *end = NULL;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0')
        return PGTX_INVALID;
    *out = (int64_t)v;
    return PGTX_OK;
}

int64_t pgtx_result_affected(PGresult *res)
{
    const char *n = res ? PQcmdTuples(res) : "";
    if (n == NULL || *n == '\0')
        return -1;
    return strtoll(n, NULL, 10);
}

/* ---- commit and rollback ------------------------------------------------- */

/* Did the server say goodbye before we send COMMIT?  Then COMMIT never
   left, the transaction is certainly rolled back, and a retry is safe. */
static bool lost_before_commit(pgtx_tx *tx)
{
    return PQstatus(tx->pg) != CONNECTION_OK || !pgtx__conn_healthy(tx->conn);
}

static pgtx_status tx_commit(pgtx_tx *tx, pgtx_error *err)
{
    if (lost_before_commit(tx))
        return pgtx__error_from_conn(err, tx->pg, PGTX_CONNECTION_LOST);
    int64_t t0 = pgtx__now_us();
    pgtx__count_round_trip(tx->pool);
    PGresult *r = pgtx__exec(tx->conn, "COMMIT", -1, NULL);
    pgtx__echo(tx->pool, tx->conn, "COMMIT", pgtx__now_us() - t0);
    pgtx_status st = PGTX_OK;
    if (!result_ok(r)) {
        pgtx_error e;
        st = socket_timeout(tx, pgtx__error_from_result(&e, tx->pg, r), &e);
        if (err && pgtx_status_class(st) != PGTX_CLASS_CONNECTION)
            *err = e;
        /* The server may have committed before the connection broke. */
        if (pgtx_status_class(st) == PGTX_CLASS_CONNECTION) {
            st = pgtx_fail(err, PGTX_COMMIT_UNKNOWN,
                           "connection lost during COMMIT; the transaction "
                           "may have committed: %s", e.message);
            atomic_fetch_add(&pgtx__pool_counters(tx->pool)->commit_unknown, 1);
        }
    } else if (strcmp(PQcmdStatus(r), "COMMIT") != 0) {
        /* "ROLLBACK": an error inside was swallowed by the callback. */
        st = pgtx_fail(err, PGTX_SQL, "COMMIT rolled back an aborted transaction");
    }
    PQclear(r);
    return st;
}

static void tx_rollback(pgtx_tx *tx)
{
    if (!tx->begun || PQstatus(tx->pg) != CONNECTION_OK)
        return;
    int64_t t0 = pgtx__now_us();
    pgtx__count_round_trip(tx->pool);
    PGresult *r = pgtx__exec(tx->conn, "ROLLBACK", -1, NULL);
    pgtx__echo(tx->pool, tx->conn, "ROLLBACK", pgtx__now_us() - t0);
    PQclear(r); /* if it failed, the pool's reset on return discards it */
}

/* ---- the runner ---------------------------------------------------------- */

/* Which status wins when both the callback and the server said something:
   a retryable failure of the transaction itself wins (the callback's choice
   was a consequence of it), else the callback's own status, else the
   failure it ignored. */
static pgtx_status attempt_outcome(pgtx_tx *tx, pgtx_status st, pgtx_error *e)
{
    if (tx->failed != PGTX_OK &&
        (st == PGTX_OK || pgtx_status_is_retryable(tx->failed))) {
        *e = tx->failed_err;
        return tx->failed;
    }
    if (st != PGTX_OK && e->status != st)
        pgtx_fail(e, st, "%s", pgtx_status_text(st));
    return st;
}

static pgtx_status run_attempt(pgtx_engine *engine, pgtx_tx_fn fn, void *arg,
                               int attempt, pgtx_error *e)
{
    pgtx_pool *pool = pgtx_engine_pool_borrow(engine);
    pgtx_tx tx = {.engine = engine, .pool = pool, .attempt = attempt};
    pgtx_status st = pgtx_pool_checkout(pool, -1, &tx.conn, e);
    if (st != PGTX_OK)
        return st;
    tx.pg = pgtx_conn_pg_borrow(tx.conn);
    st = attempt_outcome(&tx, fn(&tx, arg, e), e);
    if (st == PGTX_OK && tx.begun)
        st = tx_commit(&tx, e);
    else if (st != PGTX_OK)
        tx_rollback(&tx);
    pgtx__tx_counters *k = pgtx__pool_counters(pool);
    atomic_fetch_add(st == PGTX_OK ? &k->commits : &k->rollbacks, 1);
    pgtx_pool_return(tx.conn);
    return st;
}

static unsigned retry_bit(pgtx_status st)
{
    switch (st) {
    case PGTX_SERIALIZATION:
        return PGTX_RETRY_SERIALIZATION;
    case PGTX_DEADLOCK:
        return PGTX_RETRY_DEADLOCK;
    case PGTX_STALE:
        return PGTX_RETRY_STALE;
    case PGTX_CONNECTION_LOST:
        return PGTX_RETRY_CONNECTION;
    case PGTX_LOCK_NOT_AVAILABLE:
        return PGTX_RETRY_LOCK_NOT_AVAILABLE;
    default:
        return 0;
    }
}

static void count_retry(pgtx_pool *pool, pgtx_status st)
{
    pgtx__tx_counters *k = pgtx__pool_counters(pool);
    atomic_uint_fast64_t *c = st == PGTX_SERIALIZATION ? &k->retries_serialization
                              : st == PGTX_DEADLOCK    ? &k->retries_deadlock
                              : st == PGTX_STALE       ? &k->retries_stale
                                                       : &k->retries_connection;
    atomic_fetch_add(c, 1);
}

int pgtx_backoff_ms(const pgtx_retry_policy *p, int attempt, double r)
{
    int64_t cap = p->base_delay_ms;
    for (int i = 1; i < attempt && cap < p->max_delay_ms; i++)
        cap *= 2;
    if (cap > p->max_delay_ms)
        cap = p->max_delay_ms;
    if (r < 0.0 || r >= 1.0)
        r = 0.0;
    return (int)(r * (double)(cap + 1));
}

/* Should attempt number `attempt`, which failed with `st`, be followed by
   another after sleeping *delay_ms?  Sets *exhausted when only the budget
   said no. */
static bool plan_retry(const pgtx_retry_policy *p, pgtx_status st, int attempt,
                       int64_t started_us, int *delay_ms, bool *exhausted)
{
    if ((p->retry_on & retry_bit(st)) == 0)
        return false;
    *delay_ms = pgtx_backoff_ms(p, attempt, pgtx__random01());
    int64_t next_start = pgtx__now_us() + (int64_t)*delay_ms * 1000;
    bool over_time = p->budget_ms > 0 &&
                     next_start - started_us > (int64_t)p->budget_ms * 1000;
    if (attempt >= p->max_attempts || over_time) {
        *exhausted = true;
        return false;
    }
    return true;
}

pgtx_status pgtx_run(pgtx_engine *engine, pgtx_tx_fn fn, void *arg,
                     pgtx_run_info *info, pgtx_error *err)
{
    if (engine == NULL || fn == NULL)
        return pgtx_fail(err, PGTX_INVALID, "engine and fn are required");
    const pgtx_retry_policy *policy = &pgtx__engine_options(engine)->retry;
    pgtx_pool *pool = pgtx_engine_pool_borrow(engine);
    int64_t started = pgtx__now_us();
    int attempt = 0, delay = 0;
    bool exhausted = false;
    pgtx_error e;
    pgtx_status st;
    for (;;) {
        pgtx__error_clear(&e);
        st = run_attempt(engine, fn, arg, ++attempt, &e);
        if (st == PGTX_OK ||
            !plan_retry(policy, st, attempt, started, &delay, &exhausted))
            break;
        count_retry(pool, st);
        pgtx__log(pool, PGTX_LOG_DEBUG, "pgtx: attempt %d failed (%s %s), "
                  "retrying in %d ms", attempt, pgtx_status_name(st),
                  e.sqlstate, delay);
        pgtx__sleep_ms(delay);
    }
    if (info) {
        info->attempts = attempt;
        info->exhausted = exhausted;
        info->elapsed_us = pgtx__now_us() - started;
    }
    if (st != PGTX_OK && err)
        *err = e;
    return st;
}
