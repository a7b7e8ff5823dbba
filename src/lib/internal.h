/* internal.h — what the pieces of libpgtx share and the public header hides. */
#ifndef PGTX_INTERNAL_H
#define PGTX_INTERNAL_H

#include "pgtx.h"

#include <pthread.h>
#include <stdatomic.h>

/* ---- time ---- */
int64_t pgtx__now_us(void); /* CLOCK_MONOTONIC */
void pgtx__sleep_ms(int ms);
/* Uniform in [0, 1), thread-safe, seeded per thread. */
double pgtx__random01(void);

/* ---- errors ---- */
/* Copy status, SQLSTATE and primary message out of `res` (may be NULL: then
   from the connection's error message) and return the status.  A result
   without SQLSTATE on a broken connection is CONNECTION_LOST. */
pgtx_status pgtx__error_from_result(pgtx_error *err, PGconn *pg,
                                    const PGresult *res);
/* Fill *err from the connection's error message with status `st`. */
pgtx_status pgtx__error_from_conn(pgtx_error *err, PGconn *pg, pgtx_status st);
void pgtx__error_clear(pgtx_error *err);

/* ---- logging ---- */
void pgtx__log(pgtx_pool *pool, pgtx_log_level level, const char *fmt, ...)
    PGTX_PRINTF(3, 4);
bool pgtx__echo_on(const pgtx_pool *pool);
void pgtx__echo(pgtx_pool *pool, const pgtx_conn *conn, const char *sql,
                int64_t us);

/* ---- connections ---- */
/*
 * A pooled connection is in exactly one state, and the state is the list it
 * is on (see conn_move in pool.c).  Connections being opened have no object
 * yet and are counted by pool->connecting; connections being closed have
 * left every list.
 */
typedef enum conn_state { CONN_IDLE = 0, CONN_USED, CONN_STATE_COUNT } conn_state;

typedef struct pgtx__stmt_cache pgtx__stmt_cache;

struct pgtx_conn {
    PGconn *pg;
    pgtx_pool *pool;
    conn_state state;
    pgtx_conn *prev, *next; /* links in pool->lists[state] */
    uint64_t id;            /* for log lines */
    int64_t created_us;
    int64_t expires_us;   /* recycle after this (INT64_MAX: never) */
    int64_t last_used_us; /* when it was last returned */
    atomic_bool doomed;   /* the server sent FATAL: do not reuse */
    bool timed_out;       /* socket_timeout_ms ran out: its socket is shut */
    bool read_only_node;  /* its server is a standby: close it on return */
    char node[PGTX_NODE_SIZE]; /* "host:port" of its server, set when opened */
    pgtx__stmt_cache *cache; /* owned; NULL when the cache is off */
};

/* ---- the wire (wire.c): statements on one connection ---- */
/* A new cache of `capacity` statements, or NULL (off, or out of memory:
   then statements simply go unprepared). */
pgtx__stmt_cache *pgtx__stmt_cache_create(int capacity);
void pgtx__stmt_cache_destroy(pgtx__stmt_cache *cache);

/* How one statement went out in a pipeline, to read its results back. */
typedef struct pgtx__sent {
    unsigned prepared; /* != 0: a Parse of this name precedes its execution */
    unsigned name;     /* != 0: executed as this prepared statement */
    bool cached;       /* prepared in an earlier round (a cache hit) */
} pgtx__sent;

/* Queue one statement on a connection in pipeline mode: prepared by name
   (and its Parse sent first) on a cache miss, by name on a hit, unnamed
   when the cache is off.  False when libpq could not queue it. */
bool pgtx__wire_send(pgtx_conn *conn, const char *sql, int nparams,
                     const char *const *params, pgtx__sent *how);
/* Read what pgtx__wire_send queued: its Parse's result (keeping the cache
   true to the server) and its own.  Returns the result to check (caller
   PQclears; NULL when the connection broke), and sets *stale when a cached
   statement was gone or had changed (the cache has been corrected). */
PGresult *pgtx__wire_take(pgtx_conn *conn, const pgtx__sent *how, bool *stale);
/* Queue the DEALLOCATEs of evicted statements, each with its own Sync so
   that one that fails (already gone) stops nothing; returns how many. */
int pgtx__wire_send_deallocs(pgtx_conn *conn);
/* Read the results of `n` of them; false when the connection broke. */
bool pgtx__wire_take_deallocs(pgtx_conn *conn, int n);

/* ---- pool internals used by the runner ---- */

/*
 * The statuses the runner may retry, each with the PGTX_RETRY_* bit that
 * allows it and the pgtx_pool_stats counter of its retries (retries_NAME).
 * The runner's choice, its counting and the statistics are all generated
 * from this one list: a status is retried and counted under its own name,
 * or neither (a status once fell through to retries_connection).
 */
#define PGTX__RETRY_MAP(X)                                                  \
    X(SERIALIZATION, PGTX_RETRY_SERIALIZATION, serialization)               \
    X(DEADLOCK, PGTX_RETRY_DEADLOCK, deadlock)                              \
    X(STALE, PGTX_RETRY_STALE, stale)                                       \
    X(CONNECTION_LOST, PGTX_RETRY_CONNECTION, connection)                   \
    X(PREPARED_STALE, PGTX_RETRY_PREPARED, prepared)                        \
    X(LOCK_NOT_AVAILABLE, PGTX_RETRY_LOCK_NOT_AVAILABLE, lock_not_available) \
    X(READ_ONLY_NODE, PGTX_RETRY_READ_ONLY, read_only)

/* Counters the runner bumps; atomics so that no lock is taken for them. */
typedef struct pgtx__tx_counters {
    atomic_uint_fast64_t round_trips;
    atomic_uint_fast64_t commits;
    atomic_uint_fast64_t rollbacks;
    atomic_uint_fast64_t commit_unknown;
    atomic_uint_fast64_t socket_timeouts;
    atomic_uint_fast64_t stmt_hits;
    atomic_uint_fast64_t stmt_prepares;
    atomic_uint_fast64_t stmt_evictions;
#define PGTX__X_RETRY_COUNTER(status, bit, name) atomic_uint_fast64_t retries_##name;
    PGTX__RETRY_MAP(PGTX__X_RETRY_COUNTER)
#undef PGTX__X_RETRY_COUNTER
} pgtx__tx_counters;

pgtx__tx_counters *pgtx__pool_counters(pgtx_pool *pool);
/* pgtx_pool_checkout with the pool's timeout that skips the look at the
   socket of a connection returned less than a second ago (pool.c says why). */
pgtx_status pgtx__pool_checkout_for_runner(pgtx_pool *pool, pgtx_conn **out,
                                           pgtx_error *err);
pgtx_pool *pgtx__conn_pool(const pgtx_conn *conn);
/* Drain what the server sent unasked; false if the session is gone. */
bool pgtx__conn_healthy(pgtx_conn *conn);
/* PQgetResult, waiting at most the pool's socket_timeout_ms for the server.
   Past it the socket is shut down, so that libpq reports the connection
   broken (and the pool discards it), and pgtx__conn_timed_out says why. */
PGresult *pgtx__get_result(pgtx_conn *conn);
/* PQexec (nparams < 0: the simple protocol, several statements allowed) or
   PQexecParams, through pgtx__get_result: the last result, or the first
   error.  NULL when it could not be sent. */
PGresult *pgtx__exec(pgtx_conn *conn, const char *sql, int nparams,
                     const char *const *params);
bool pgtx__conn_timed_out(const pgtx_conn *conn);
int pgtx__socket_timeout_ms(const pgtx_pool *pool);
/* One round trip made on `conn`'s pool (for the statistics). */
void pgtx__count_round_trip(pgtx_pool *pool);

/* ---- transactions (tx.c), for the strategies (strategy.c) ---- */
const pgtx_engine_options *pgtx__tx_options(const pgtx_tx *tx);
/* Fail the transaction with `e` (as a failed statement does: the runner
   rolls back whatever the callback returns); copies it to *err. */
pgtx_status pgtx__tx_fail(pgtx_tx *tx, const pgtx_error *e, pgtx_error *err);

/* ---- transactions (tx.c), for a batch's savepoint per call (batch.c) ---- */
/* Send what is queued and wait for it; then the transaction's first
   failure (copied to *err), or OK. */
pgtx_status pgtx__tx_settle(pgtx_tx *tx, pgtx_error *err);
/* After pgtx__tx_settle: forget the transaction's failure and queue
   `sql` (a ROLLBACK TO SAVEPOINT) that undoes it on the server; it leaves
   with the next round.  The failure stays when the connection is gone. */
pgtx_status pgtx__tx_undo(pgtx_tx *tx, const char *sql, pgtx_error *err);

/* ---- servers (node.c) ---- */
/* "host:port" of the connection's server into buf ("" when unknown). */
void pgtx__conn_node(PGconn *pg, char *buf, size_t size);
/* The server says it is a hot standby (in_hot_standby = on). */
bool pgtx__on_standby(PGconn *pg);
/* The server does not say it is a primary (in_hot_standby = off). */
bool pgtx__maybe_standby(PGconn *pg);
/* A transaction of the pool lost its connection or found a standby: the
   connections idle before now get a full look at their next checkout. */
void pgtx__pool_suspect(pgtx_pool *pool);

/* ---- engines ---- */
const pgtx_engine_options *pgtx__engine_options(const pgtx_engine *engine);
/* SELECT set_config(...) for the engine's timeouts, or NULL when none. */
const char *pgtx__engine_setup_sql(const pgtx_engine *engine);

#endif
