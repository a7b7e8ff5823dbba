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

/* ---- pool internals used by the runner ---- */
/* Counters the runner bumps; atomics so that no lock is taken for them. */
typedef struct pgtx__tx_counters {
    atomic_uint_fast64_t round_trips;
    atomic_uint_fast64_t commits;
    atomic_uint_fast64_t rollbacks;
    atomic_uint_fast64_t retries_serialization;
    atomic_uint_fast64_t retries_deadlock;
    atomic_uint_fast64_t retries_stale;
    atomic_uint_fast64_t retries_connection;
    atomic_uint_fast64_t commit_unknown;
    atomic_uint_fast64_t socket_timeouts;
} pgtx__tx_counters;

pgtx__tx_counters *pgtx__pool_counters(pgtx_pool *pool);
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

/* ---- engines ---- */
const pgtx_engine_options *pgtx__engine_options(const pgtx_engine *engine);
/* SELECT set_config(...) for the engine's timeouts, or NULL when none. */
const char *pgtx__engine_setup_sql(const pgtx_engine *engine);

#endif
