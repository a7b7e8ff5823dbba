/* tx.c — the transaction runner: begin, statements, commit/rollback, retry. */
#include "internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Statements in one round trip at most; a few more slots for BEGIN, the
   engine's SET LOCALs and COMMIT. */
#define TX_ROUND_MAX 64
#define TX_ROUND_SLOTS (TX_ROUND_MAX + 4)

typedef enum item_kind { ITEM_BEGIN, ITEM_SETUP, ITEM_STMT, ITEM_COMMIT,
                         ITEM_ROLLBACK, ITEM_LSN } item_kind;

/* What one round sent, in order, so that its results can be read back. */
typedef struct tx_item {
    item_kind kind;
    pgtx__sent how;
    PGresult **out; /* STMT: where its result goes; NULL: cleared */
    PGresult *held; /* STMT in a COMMIT round: kept until COMMIT says OK */
} tx_item;

/* How a round ends. */
typedef enum round_end { END_NONE, END_COMMIT, END_ROLLBACK } round_end;

struct pgtx_tx {
    pgtx_engine *engine;
    pgtx_pool *pool;
    pgtx_conn *conn;
    PGconn *pg;
    int attempt;
    bool begun;         /* BEGIN went out and succeeded */
    bool committed;     /* COMMIT said COMMIT */
    uint64_t commit_lsn; /* report_commit_lsn: read after COMMIT, or 0 */
    pgtx_status failed; /* first error inside the transaction, or OK */
    pgtx_error failed_err;
    /* The open round: queued in libpq (pipeline mode), not yet synced.
       BEGIN is queued with the first statement and COMMIT with the last
       one when nothing in between needs the client's decision. */
    bool piping;
    int n_items;
    int n_deallocs; /* evicted statements' DEALLOCATEs ahead of BEGIN */
    tx_item items[TX_ROUND_SLOTS];
    int64_t round_t0;
    char echo[1024]; /* the round's SQL, for pgtx_pool_config.echo */
    size_t echo_len;
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

/* 25006 in a read-write transaction, from a server that does not say it
   is a primary: BEGIN READ WRITE or a write refused by a standby.  Nothing
   ran, and this connection will never do: it is closed on return. */
static pgtx_status read_only_node(pgtx_tx *tx, pgtx_status st, pgtx_error *e)
{
    if (strcmp(e->sqlstate, "25006") != 0 ||
        pgtx__engine_options(tx->engine)->read_only || !pgtx__maybe_standby(tx->pg))
        return st;
    tx->conn->read_only_node = true; /* closed on return (read_only_closed) */
    e->status = PGTX_READ_ONLY_NODE;
    return PGTX_READ_ONLY_NODE;
}

/* The failure `r` describes (NULL: the connection's own error). */
static pgtx_status describe(pgtx_tx *tx, const PGresult *r, pgtx_error *e)
{
    pgtx_status st = socket_timeout(tx, pgtx__error_from_result(e, tx->pg, r), e);
    return r ? read_only_node(tx, st, e) : st;
}

static void echo_add(pgtx_tx *tx, const char *sql)
{
    if (!pgtx__echo_on(tx->pool) || tx->echo_len >= sizeof tx->echo - 1)
        return;
    int n = snprintf(tx->echo + tx->echo_len, sizeof tx->echo - tx->echo_len,
                     "%s%s", tx->echo_len ? "; " : "", sql);
    if (n > 0)
        tx->echo_len += (size_t)n;
    if (tx->echo_len >= sizeof tx->echo)
        tx->echo_len = sizeof tx->echo - 1;
}

/* The round's next item, blank but for its kind. */
static tx_item *item_add(pgtx_tx *tx, item_kind kind, const char *sql)
{
    tx_item *it = &tx->items[tx->n_items++];
    memset(it, 0, sizeof *it);
    it->kind = kind;
    echo_add(tx, sql);
    return it;
}

/* Queue a statement that is never cached (BEGIN, SET LOCALs, COMMIT). */
static bool queue_plain(pgtx_tx *tx, item_kind kind, const char *sql)
{
    (void)item_add(tx, kind, sql);
    return PQsendQueryParams(tx->pg, sql, 0, NULL, NULL, NULL, NULL, 0) == 1;
}

/* libpq could not queue or send: the connection's own error, remembered. */
static pgtx_status fail_from_conn(pgtx_tx *tx, pgtx_error *err)
{
    pgtx_error e;
    return tx_fail(tx, describe(tx, NULL, &e), &e, err);
}

/* Start a round if none is open: pipeline mode, and BEGIN with the
   engine's SET LOCALs ahead of the first statement of the transaction. */
static bool round_open(pgtx_tx *tx)
{
    if (tx->piping)
        return true;
    if (!PQenterPipelineMode(tx->pg))
        return false;
    tx->piping = true;
    tx->n_items = 0;
    tx->echo_len = 0;
    tx->round_t0 = pgtx__echo_on(tx->pool) ? pgtx__now_us() : 0;
    if (tx->begun)
        return true;
    tx->n_deallocs = pgtx__wire_send_deallocs(tx->conn);
    const char *setup = pgtx__engine_setup_sql(tx->engine);
    bool ok = queue_plain(tx, ITEM_BEGIN, pgtx_engine_begin_sql_borrow(tx->engine));
    return ok && (setup == NULL || queue_plain(tx, ITEM_SETUP, setup));
}

/* ---- reading a round back ------------------------------------------------- */

/* How reading a result (or a round) went.  GONE: the connection was found
   dead before the server began our transaction (its goodbye arrived where
   BEGIN's answer was due), so nothing of this round ran: a retry is safe,
   even with COMMIT in the round.  BROKE: it died somewhere after. */
typedef enum taken { TAKEN_OK, TAKEN_SKIPPED, TAKEN_ERROR, TAKEN_GONE,
                     TAKEN_BROKE } taken;

/* The server said goodbye (FATAL, with a SQLSTATE) in BEGIN's place: it
   answers in order, so it never got to BEGIN. */
static bool gone_before_begin(const tx_item *it, const PGresult *r)
{
    return it->kind == ITEM_BEGIN && r != NULL &&
           PQresultErrorField(r, PG_DIAG_SQLSTATE) != NULL;
}

/* One item's result, booked: BEGIN and COMMIT change the transaction's
   state, a statement's result is held, a failure is remembered (except in a
   round that rolls back, whose failures are expected). */
static taken take_item(pgtx_tx *tx, tx_item *it, round_end end, pgtx_error *e)
{
    bool stale = false;
    taken t = TAKEN_OK;
    PGresult *r = pgtx__wire_take(tx->conn, &it->how, &stale);
    if (r == NULL || PQstatus(tx->pg) != CONNECTION_OK) {
        describe(tx, r, e);
        t = gone_before_begin(it, r) ? TAKEN_GONE : TAKEN_BROKE;
    } else if (PQresultStatus(r) == PGRES_PIPELINE_ABORTED) {
        t = TAKEN_SKIPPED; /* after an earlier failure, the one to report */
    } else if (!result_ok(r) && it->kind == ITEM_LSN) {
        t = TAKEN_OK; /* the commit stands; only its position is unknown */
    } else if (!result_ok(r)) {
        pgtx_status st = describe(tx, r, e);
        if (stale)
            st = pgtx_fail(e, PGTX_PREPARED_STALE, "%s (prepared statement "
                           "dropped from the cache; it is prepared again)", e->message);
        /* A COMMIT that the server answers with "going away" may have run. */
        t = it->kind == ITEM_COMMIT && pgtx_status_class(st) == PGTX_CLASS_CONNECTION
                ? TAKEN_BROKE : TAKEN_ERROR;
        if (end != END_ROLLBACK && t == TAKEN_ERROR)
            tx_fail(tx, st, e, NULL);
    } else if (it->kind == ITEM_BEGIN) {
        tx->begun = true;
    } else if (it->kind == ITEM_COMMIT) {
        tx->committed = strcmp(PQcmdStatus(r), "COMMIT") == 0;
    } else if (it->kind == ITEM_LSN) {
        if (PQntuples(r) != 1 || PQnfields(r) != 1 ||
            pgtx_lsn_parse(PQgetvalue(r, 0, 0), &tx->commit_lsn) != PGTX_OK)
            tx->commit_lsn = 0;
    } else if (it->kind == ITEM_STMT) {
        it->held = r; /* handed over by deliver(), once the round is read */
        r = NULL;
    }
    PQclear(r);
    return t;
}

/* Results go to their callers' slots, except a COMMIT round's, which only
   count if the transaction committed. */
static void deliver(pgtx_tx *tx, round_end end)
{
    bool keep = end == END_NONE ? tx->failed == PGTX_OK : tx->committed;
    for (int i = 0; i < tx->n_items; i++) {
        tx_item *it = &tx->items[i];
        if (it->kind != ITEM_STMT)
            continue;
        if (keep && it->out)
            *it->out = it->held;
        else
            PQclear(it->held);
        it->held = NULL;
    }
}

/* The COMMIT was queued but its answer never came: it may have run. */
static void commit_unknown(pgtx_tx *tx, const pgtx_error *why)
{
    pgtx_error e;
    pgtx_fail(&e, PGTX_COMMIT_UNKNOWN, "connection lost during COMMIT; the "
              "transaction may have committed: %s", why->message);
    tx->failed = PGTX_OK; /* this, not the lost connection, is the outcome */
    tx_fail(tx, PGTX_COMMIT_UNKNOWN, &e, NULL);
    atomic_fetch_add(&pgtx__pool_counters(tx->pool)->commit_unknown, 1);
}

/* Read every result of the round in order.  Returns how it ended: BROKE
   (the connection gave out), ERROR (the server refused something, and so
   skipped the rest, COMMIT included) or OK. */
static taken round_read(pgtx_tx *tx, round_end end, pgtx_error *e)
{
    taken worst = TAKEN_OK;
    if (!pgtx__wire_take_deallocs(tx->conn, tx->n_deallocs)) {
        describe(tx, NULL, e);
        return TAKEN_GONE; /* dead before BEGIN was even reached */
    }
    for (int i = 0; i < tx->n_items && worst < TAKEN_GONE; i++) {
        taken t = take_item(tx, &tx->items[i], end, e);
        if (t >= TAKEN_GONE || (t == TAKEN_ERROR && worst == TAKEN_OK))
            worst = t;
    }
    if (worst < TAKEN_GONE)
        PQclear(pgtx__get_result(tx->conn)); /* the Sync */
    return worst;
}

static bool wants_lsn(const pgtx_tx *tx)
{
    return pgtx__engine_options(tx->engine)->report_commit_lsn;
}

/* The insert position, not pg_current_wal_lsn(): that one is where WAL
   was written, which with synchronous_commit off can be short of the
   commit record; the insert position never is.  A read-only transaction
   may run on a standby, where that function fails: there, what it saw is
   what was replayed. */
static const char *lsn_sql(const pgtx_tx *tx)
{
    return pgtx__engine_options(tx->engine)->read_only
               ? "SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()"
                 " ELSE pg_current_wal_insert_lsn() END"
               : "SELECT pg_current_wal_insert_lsn()";
}

/* Send the round (ending it as `end` says) and read every result back:
   one round trip.  Returns OK or the first failure. */
static pgtx_status round_sync(pgtx_tx *tx, round_end end, pgtx_error *err)
{
    pgtx_error e;
    pgtx__error_clear(&e);
    bool sent = true;
    if (end != END_NONE)
        sent = queue_plain(tx, end == END_COMMIT ? ITEM_COMMIT : ITEM_ROLLBACK,
                           end == END_COMMIT ? "COMMIT" : "ROLLBACK");
    if (end == END_COMMIT && wants_lsn(tx))
        sent = queue_plain(tx, ITEM_LSN, lsn_sql(tx)) && sent;
    pgtx__count_round_trip(tx->pool);
    sent = PQpipelineSync(tx->pg) == 1 && sent;
    /* ERROR before the COMMIT means the server skipped it: not unknown. */
    taken how = sent ? round_read(tx, end, &e) : TAKEN_BROKE;
    tx->n_deallocs = 0;
    if (how >= TAKEN_GONE && e.status == PGTX_OK)
        describe(tx, NULL, &e);
    /* A READ ONLY transaction changed nothing, whether its COMMIT ran or
       not: its lost connection is just that (and retried as such). */
    if (how == TAKEN_BROKE && end == END_COMMIT && !tx->committed &&
        tx->failed == PGTX_OK && !pgtx__engine_options(tx->engine)->read_only)
        commit_unknown(tx, &e);
    else if (how >= TAKEN_GONE && end != END_ROLLBACK && !tx->committed)
        tx_fail(tx, e.status, &e, NULL);
    deliver(tx, end);
    if (PQstatus(tx->pg) == CONNECTION_OK)
        (void)PQexitPipelineMode(tx->pg);
    tx->piping = false;
    if (tx->echo_len)
        pgtx__echo(tx->pool, tx->conn, tx->echo, pgtx__now_us() - tx->round_t0);
    if (tx->failed != PGTX_OK && err)
        *err = tx->failed_err;
    return tx->failed;
}

/* Queue one statement in the open round (opening one if needed). */
static pgtx_status queue_stmt(pgtx_tx *tx, const char *sql, int n,
                              const char *const *params, PGresult **out,
                              pgtx_error *err)
{
    if (out)
        *out = NULL;
    if (tx->piping && tx->n_items >= TX_ROUND_MAX)
        return pgtx_fail(err, PGTX_INVALID, "more than %d statements queued in "
                         "one round trip: pgtx_flush() first", TX_ROUND_MAX);
    if (!round_open(tx))
        return fail_from_conn(tx, err);
    tx_item *it = item_add(tx, ITEM_STMT, sql);
    it->out = out;
    if (!pgtx__wire_send(tx->conn, sql, n, params, &it->how))
        return fail_from_conn(tx, err);
    return PGTX_OK;
}

/* The first error inside the transaction, again: the server would only say
   "current transaction is aborted"; the first is the one worth reporting. */
static pgtx_status already_failed(const pgtx_tx *tx, pgtx_error *err)
{
    if (err)
        *err = tx->failed_err;
    return tx->failed;
}

static bool args_ok(const pgtx_tx *tx, const char *sql, int nparams,
                    const char *const *params)
{
    return tx != NULL && sql != NULL && nparams >= 0 && (nparams == 0 || params);
}

pgtx_status pgtx_queue(pgtx_tx *tx, const char *sql, int nparams,
                       const char *const *params, PGresult **out,
                       pgtx_error *err)
{
    if (!args_ok(tx, sql, nparams, params))
        return pgtx_fail(err, PGTX_INVALID, "tx, sql and params are required");
    if (tx->failed != PGTX_OK)
        return already_failed(tx, err);
    return queue_stmt(tx, sql, nparams, params, out, err);
}

pgtx_status pgtx_flush(pgtx_tx *tx, pgtx_error *err)
{
    if (tx == NULL)
        return pgtx_fail(err, PGTX_INVALID, "tx is required");
    if (tx->failed != PGTX_OK)
        return already_failed(tx, err);
    return tx->piping ? round_sync(tx, END_NONE, err) : PGTX_OK;
}

pgtx_status pgtx_query(pgtx_tx *tx, const char *sql, int nparams,
                       const char *const *params, PGresult **out,
                       pgtx_error *err)
{
    pgtx_status st = pgtx_queue(tx, sql, nparams, params, out, err);
    return st != PGTX_OK ? st : round_sync(tx, END_NONE, err);
}

/* BEGIN on its own, for callers that want the raw PGconn first.  The
   engine's SET LOCALs go in the same simple-protocol message, so this is one
   round trip like the pipelined BEGIN; the server stops at the first error,
   which is the result kept. */
static void begin_alone(pgtx_tx *tx)
{
    const char *setup = pgtx__engine_setup_sql(tx->engine);
    const char *begin = pgtx_engine_begin_sql_borrow(tx->engine);
    char sql[384];
    snprintf(sql, sizeof sql, "%s%s%s", begin, setup ? "; " : "", setup ? setup : "");
    pgtx_error e;
    pgtx__count_round_trip(tx->pool);
    PGresult *r = pgtx__exec(tx->conn, sql, -1, NULL);
    if (result_ok(r))
        tx->begun = true;
    else
        tx_fail(tx, describe(tx, r, &e), &e, NULL);
    PQclear(r);
}

PGconn *pgtx_tx_pg_borrow(pgtx_tx *tx)
{
    if (tx == NULL)
        return NULL;
    if (tx->piping && tx->failed == PGTX_OK)
        (void)round_sync(tx, END_NONE, NULL);
    if (!tx->begun && tx->failed == PGTX_OK)
        begin_alone(tx);
    return tx->begun && tx->failed == PGTX_OK ? tx->pg : NULL;
}

int pgtx_tx_attempt(const pgtx_tx *tx) { return tx->attempt; }

const pgtx_engine_options *pgtx__tx_options(const pgtx_tx *tx)
{
    return pgtx__engine_options(tx->engine);
}

pgtx_status pgtx__tx_fail(pgtx_tx *tx, const pgtx_error *e, pgtx_error *err)
{
    return tx_fail(tx, e->status, e, err);
}

pgtx_status pgtx__tx_settle(pgtx_tx *tx, pgtx_error *err)
{
    if (tx->piping)
        (void)round_sync(tx, END_NONE, NULL);
    return tx->failed == PGTX_OK ? PGTX_OK : already_failed(tx, err);
}

pgtx_status pgtx__tx_undo(pgtx_tx *tx, const char *sql, pgtx_error *err)
{
    if (tx->piping || !tx->begun || PQstatus(tx->pg) != CONNECTION_OK)
        return tx->failed == PGTX_OK ? fail_from_conn(tx, err)
                                     : already_failed(tx, err);
    tx->failed = PGTX_OK;
    pgtx__error_clear(&tx->failed_err);
    return queue_stmt(tx, sql, 0, NULL, NULL, err);
}

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

/* COMMIT, with whatever the callback left queued (and BEGIN, if nothing
   ran yet) in the same round trip. */
static pgtx_status tx_commit(pgtx_tx *tx, pgtx_error *err)
{
    if (tx->begun && lost_before_commit(tx))
        return pgtx__error_from_conn(err, tx->pg, PGTX_CONNECTION_LOST);
    if (!round_open(tx))
        return fail_from_conn(tx, err);
    pgtx_status st = round_sync(tx, END_COMMIT, err);
    if (st == PGTX_OK && !tx->committed)
        /* "ROLLBACK": an error inside was swallowed by the callback. */
        st = pgtx_fail(err, PGTX_SQL, "COMMIT rolled back an aborted transaction");
    return st;
}

static void tx_rollback(pgtx_tx *tx)
{
    if (tx->piping) {
        /* libpq cannot take back what it queued: send it, then ROLLBACK */
        (void)round_sync(tx, END_ROLLBACK, NULL);
        return;
    }
    if (!tx->begun || PQstatus(tx->pg) != CONNECTION_OK ||
        PQtransactionStatus(tx->pg) == PQTRANS_IDLE)
        return;
    int64_t t0 = pgtx__echo_on(tx->pool) ? pgtx__now_us() : 0;
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

/* A read-write transaction on a connection whose server says it is a
   standby would only be refused: close it unused. */
static pgtx_status standby_refused(pgtx_tx *tx, pgtx_error *e)
{
    tx->conn->read_only_node = true;
    pgtx__log(tx->pool, PGTX_LOG_INFO, "pgtx: a read-write transaction found a "
              "standby (in_hot_standby=on) at checkout; closing that connection");
    return pgtx_fail(e, PGTX_READ_ONLY_NODE, "the server is a standby "
                     "(in_hot_standby=on); the connection was closed");
}

static pgtx_status run_attempt(pgtx_engine *engine, pgtx_tx_fn fn, void *arg,
                               int attempt, pgtx_run_info *where, pgtx_error *e)
{
    pgtx_pool *pool = pgtx_engine_pool_borrow(engine);
    pgtx_tx tx = {.engine = engine, .pool = pool, .attempt = attempt};
    pgtx_status st = pgtx__pool_checkout_for_runner(pool, &tx.conn, e);
    if (st != PGTX_OK)
        return st;
    tx.pg = pgtx_conn_pg_borrow(tx.conn);
    memcpy(where->node, tx.conn->node, sizeof where->node);
    if (!pgtx__engine_options(engine)->read_only && pgtx__on_standby(tx.pg))
        st = standby_refused(&tx, e);
    else
        st = attempt_outcome(&tx, fn(&tx, arg, e), e);
    if (st == PGTX_OK && (tx.begun || tx.piping))
        st = tx_commit(&tx, e);
    if (st != PGTX_OK)
        tx_rollback(&tx);
    /* READ_ONLY_NODE is of this class too: the others on its server are
       standbys as well */
    if (pgtx_status_class(st) == PGTX_CLASS_CONNECTION)
        pgtx__pool_suspect(pool);
    where->commit_lsn = st == PGTX_OK ? tx.commit_lsn : 0;
    pgtx__tx_counters *k = pgtx__pool_counters(pool);
    atomic_fetch_add(st == PGTX_OK ? &k->commits : &k->rollbacks, 1);
    pgtx_pool_return(tx.conn);
    return st;
}

/* The PGTX_RETRY_* bit that allows retrying st; 0: never retried. */
static unsigned retry_bit(pgtx_status st)
{
    switch (st) {
#define PGTX__X_RETRY_BIT(status, bit, name) case PGTX_##status: return bit;
        PGTX__RETRY_MAP(PGTX__X_RETRY_BIT)
#undef PGTX__X_RETRY_BIT
    default:
        return 0;
    }
}

/* Only for a status retry_bit allowed: each has its own counter. */
static void count_retry(pgtx_pool *pool, pgtx_status st)
{
    pgtx__tx_counters *k = pgtx__pool_counters(pool);
    switch (st) {
#define PGTX__X_RETRY_COUNT(status, bit, name)                                 \
    case PGTX_##status:                                                        \
        atomic_fetch_add(&k->retries_##name, 1);                               \
        return;
        PGTX__RETRY_MAP(PGTX__X_RETRY_COUNT)
#undef PGTX__X_RETRY_COUNT
    default:
        return;
    }
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
    pgtx_run_info where = {.attempts = 0};
    pgtx_error e;
    pgtx_status st;
    for (;;) {
        pgtx__error_clear(&e);
        st = run_attempt(engine, fn, arg, ++attempt, &where, &e);
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
        *info = where;
        info->attempts = attempt;
        info->exhausted = exhausted;
        info->elapsed_us = pgtx__now_us() - started;
    }
    if (st != PGTX_OK && err)
        *err = e;
    return st;
}
