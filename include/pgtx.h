/*
 * pgtx.h — the whole public API of libpgtx.
 *
 * libpgtx is a thread-safe libpq connection pool, "engines" that are cheap
 * views of one pool with their own transaction options, and a transaction
 * runner that commits, rolls back and retries what PostgreSQL says may simply
 * be run again.
 *
 * Conventions (the same for every function):
 *  - A function that can fail returns pgtx_status: PGTX_OK (0) on success,
 *    a non-zero status otherwise.  When it fails, its out-parameters are left
 *    untouched and, if `err` is not NULL, *err describes the failure (status,
 *    SQLSTATE, message).  The error struct is owned by the caller; the library
 *    never allocates on the error path.
 *  - pgtx_X_create() returns a new object the caller owns and releases with
 *    pgtx_X_destroy().  Functions whose name ends in _borrow hand out a
 *    pointer owned by the library, valid for the lifetime stated beside them.
 *  - Thread-safety is stated per object: a pool and an engine may be shared by
 *    any number of threads; a checked-out connection and a transaction handle
 *    belong to one thread at a time.
 *  - The library writes nothing to stdout or stderr unless asked: see
 *    pgtx_pool_config.log and .echo.
 *
 * Evolution: statuses and classes may gain members at the end; existing
 * values never change.  Config structs are initialised by their _init()
 * function so that new fields get defaults.
 */
#ifndef PGTX_H
#define PGTX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <libpq-fe.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The one place the version is kept: CMake reads these three lines, and
   the programs' --version prints PGTX_VERSION. */
#define PGTX_VERSION_MAJOR 0
#define PGTX_VERSION_MINOR 2
#define PGTX_VERSION_PATCH 0
#define PGTX_STRINGIFY_(x) #x
#define PGTX_STRINGIFY(x) PGTX_STRINGIFY_(x)
/* "0.2.0" */
#define PGTX_VERSION                                                           \
    PGTX_STRINGIFY(PGTX_VERSION_MAJOR) "." PGTX_STRINGIFY(PGTX_VERSION_MINOR) "." \
    PGTX_STRINGIFY(PGTX_VERSION_PATCH)
/* 0xMMmmpp, comparable with < and >. */
#define PGTX_VERSION_HEX                                                       \
    ((PGTX_VERSION_MAJOR << 16) | (PGTX_VERSION_MINOR << 8) | PGTX_VERSION_PATCH)

#if defined(__GNUC__)
#define PGTX_API __attribute__((visibility("default")))
#define PGTX_MUSTCHECK __attribute__((warn_unused_result))
#define PGTX_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define PGTX_API
#define PGTX_MUSTCHECK
#define PGTX_PRINTF(f, a)
#endif

/* ------------------------------------------------------------------------
 * Statuses and errors
 * ------------------------------------------------------------------------ */

/* How a status should be handled by the caller. */
typedef enum pgtx_class {
    PGTX_CLASS_NONE = 0,   /* success */
    PGTX_CLASS_USAGE,      /* the caller passed something invalid, or OOM */
    PGTX_CLASS_POOL,       /* no connection could be had (timeout, closed) */
    PGTX_CLASS_CONNECTION, /* the server could not be reached or went away */
    PGTX_CLASS_RETRYABLE,  /* run the whole transaction again */
    PGTX_CLASS_CONSTRAINT, /* an integrity constraint said no (SQLSTATE 23xxx) */
    PGTX_CLASS_TIMEOUT,    /* a statement or lock wait gave up */
    PGTX_CLASS_ABORT,      /* the caller's callback chose to roll back */
    PGTX_CLASS_SQL         /* any other error reported by the server */
} pgtx_class;

/*
 * X(name, class, text): one table generates the enum, pgtx_status_name(),
 * pgtx_status_text() and pgtx_status_class().
 */
#define PGTX_STATUS_MAP(X)                                                     \
    X(OK, NONE, "success")                                                     \
    X(INVALID, USAGE, "invalid argument")                                      \
    X(NOMEM, USAGE, "out of memory")                                           \
    X(POOL_TIMEOUT, POOL, "timed out waiting for a pooled connection")         \
    X(POOL_CLOSED, POOL, "the pool is closed")                                 \
    X(CONNECT, CONNECTION, "could not connect to the database")                \
    X(CONNECTION_LOST, CONNECTION, "the connection to the database was lost")  \
    X(COMMIT_UNKNOWN, CONNECTION,                                              \
      "the connection was lost during COMMIT: the transaction may or may not " \
      "have committed")                                                        \
    X(SERIALIZATION, RETRYABLE, "serialization failure (40001)")               \
    X(DEADLOCK, RETRYABLE, "deadlock detected (40P01)")                        \
    X(STALE, RETRYABLE, "optimistic version check found stale data")           \
    X(UNIQUE_VIOLATION, CONSTRAINT, "unique constraint violated (23505)")      \
    X(CONSTRAINT, CONSTRAINT, "integrity constraint violated (23xxx)")         \
    X(LOCK_NOT_AVAILABLE, TIMEOUT, "lock not available (55P03)")               \
    X(QUERY_CANCELED, TIMEOUT, "statement canceled or timed out (57014)")      \
    X(ABORTED, ABORT, "the transaction was rolled back by the caller")         \
    X(SQL, SQL, "database error")                                             \
    X(SOCKET_TIMEOUT, CONNECTION,                                              \
      "the server did not answer within socket_timeout_ms; the connection "    \
      "was closed")                                                            \
    X(PREPARED_STALE, RETRYABLE,                                               \
      "a cached prepared statement was gone or stale on the server (26000, "   \
      "or 0A000 after a schema change); it is prepared again")                \
    X(READ_ONLY_NODE, CONNECTION,                                              \
      "the server is a standby (read-only, in recovery): a read-write "        \
      "transaction cannot run there; the connection was closed")

typedef enum pgtx_status {
#define PGTX_X_ENUM(name, cls, text) PGTX_##name,
    PGTX_STATUS_MAP(PGTX_X_ENUM)
#undef PGTX_X_ENUM
        PGTX_STATUS_COUNT_
} pgtx_status;

/* Long enough for PostgreSQL's primary messages; longer ones are truncated. */
#define PGTX_ERROR_MESSAGE_SIZE 256

/*
 * A failure, described without allocation.  Owned by the caller; the library
 * only writes into it.  `sqlstate` is "" when the server sent none (e.g. the
 * connection broke).
 */
/* PostgreSQL's identifiers are at most 63 bytes (NAMEDATALEN - 1). */
#define PGTX_ERROR_NAME_SIZE 64

typedef struct pgtx_error {
    pgtx_status status;
    char sqlstate[6];
    /* One line: libpq's multi-line messages have each run of line breaks
       and tabs made one space. */
    char message[PGTX_ERROR_MESSAGE_SIZE];
    /* The server's error fields, "" when it sent none: the constraint that
       said no (23xxx), and the table and column it concerns (a NOT NULL
       violation names the column).  Match on these, never on `message`,
       which the server may translate. */
    char constraint_name[PGTX_ERROR_NAME_SIZE];
    char table[PGTX_ERROR_NAME_SIZE];
    char column[PGTX_ERROR_NAME_SIZE];
} pgtx_error;

/* "PGTX_POOL_TIMEOUT" etc.; a static string, never NULL. */
PGTX_API const char *pgtx_status_name(pgtx_status st);
/* A human sentence for the status; a static string, never NULL. */
PGTX_API const char *pgtx_status_text(pgtx_status st);
PGTX_API pgtx_class pgtx_status_class(pgtx_status st);
/* "retryable", "constraint", ...; a static string, never NULL. */
PGTX_API const char *pgtx_class_name(pgtx_class cls);
/*
 * True for the statuses the runner retries by default: SERIALIZATION,
 * DEADLOCK, STALE, PREPARED_STALE, CONNECTION_LOST (a connection lost
 * before COMMIT was sent) and READ_ONLY_NODE (nothing ran: see
 * pgtx_run).  Never true for COMMIT_UNKNOWN.  SERIALIZATION also stands for
 * PostgreSQL's internal error "new multixact has more than one updating
 * member" (SQLSTATE XX000, kept in pgtx_error.sqlstate): a race in its row
 * locking under concurrent updates of rows that foreign keys lock, which
 * aborts the transaction and goes away when it runs again.
 */
PGTX_API bool pgtx_status_is_retryable(pgtx_status st);
/* The status libpgtx gives to a SQLSTATE ("40001" -> SERIALIZATION, ...). */
PGTX_API pgtx_status pgtx_status_from_sqlstate(const char *sqlstate);

/*
 * Fill *err (if not NULL) with `st` and a printf-style message, clear its
 * SQLSTATE, and return `st`.  Meant for callbacks: `return pgtx_fail(err,
 * PGTX_ABORTED, "out of stock");`.
 */
PGTX_API pgtx_status pgtx_fail(pgtx_error *err, pgtx_status st, const char *fmt,
                               ...) PGTX_PRINTF(3, 4);

/* ------------------------------------------------------------------------
 * Logging
 * ------------------------------------------------------------------------ */

typedef enum pgtx_log_level {
    PGTX_LOG_ECHO = 0, /* one line per SQL statement, with its duration */
    PGTX_LOG_DEBUG,
    PGTX_LOG_INFO,
    PGTX_LOG_WARNING
} pgtx_log_level;

/*
 * Called from whichever thread did the work; must be thread-safe.  `msg` is
 * borrowed for the duration of the call.
 */
typedef void (*pgtx_log_fn)(void *arg, pgtx_log_level level, const char *msg);

/* ------------------------------------------------------------------------
 * Pool
 * ------------------------------------------------------------------------ */

typedef struct pgtx_pool pgtx_pool;
typedef struct pgtx_conn pgtx_conn;

typedef struct pgtx_pool_config {
    /* libpq connection string or URI (multi-host allowed); "" uses libpq's
       environment (PGHOST...).  Copied by pgtx_pool_create. */
    const char *conninfo;
    /* Overrides conninfo's application_name when not NULL.  Copied. */
    const char *application_name;
    int pool_size;           /* connections kept open (default 5) */
    int max_overflow;        /* extra ones opened under load, closed after
                                idle_timeout_ms unused (default 10) */
    int checkout_timeout_ms; /* wait for a connection at most this long,
                                connecting included (default 30000) */
    int connect_timeout_ms;  /* one connection attempt (default 10000) */
    int check_idle_ms;       /* a connection idle longer than this gets a
                                round trip before it is handed out (default
                                30000; 0 = always; -1 = never) */
    int max_lifetime_ms;     /* recycle connections older than this, staggered
                                so they do not all expire at once (default
                                3600000; 0 = never) */
    int connect_retry_ms;    /* after a failed connect, no new attempt for
                                this long (default 200) */
    bool echo;               /* log every statement and its duration */
    pgtx_log_fn log;         /* NULL: silent, except echo goes to stderr */
    void *log_arg;
    /* The longest the library waits for the server to answer one statement
       (its own round trips, the runner's statements, COMMIT, ROLLBACK; not
       what you send yourself on a borrowed PGconn), default 0 = as long as
       it takes, like libpq.  Past it the connection
       is closed and the call fails with SOCKET_TIMEOUT, or COMMIT_UNKNOWN
       during COMMIT: what bounds a request when the server or the network
       stops answering an open connection (a failover, a partition), which
       a server-side statement_timeout cannot.  Set it above the longest
       statement and lock wait you expect. */
    int socket_timeout_ms;
    /* Statements each connection keeps prepared, least recently used
       evicted first (default 256; 0 = none).  A statement that
       pgtx_query() or pgtx_queue() runs is prepared by name on its first
       use on a connection, in the same round trip as that first execution,
       and reused after: no parse or plan per transaction.  A cached
       statement that the server no longer has (SQLSTATE 26000, e.g. after
       DISCARD ALL) or whose result type changed (0A000, after ALTER TABLE)
       is dropped from the cache and the transaction fails with
       PREPARED_STALE, which the runner retries by default; the retry
       prepares it again.
       NOTE: set 0 behind PgBouncer in transaction mode (before 1.21),
       which moves a client among server connections between transactions:
       a statement prepared on one is unknown on the next. */
    int statement_cache_size;
    /* A connection beyond pool_size (overflow) stays idle this long after
       it is returned before it is closed, so that a burst does not open
       and close a connection per transaction (default 60000; 0 = close it
       as soon as it is returned).  Idle overflow is closed by the next
       checkout, return or pgtx_pool_stats_get() after that time. */
    int idle_timeout_ms;
} pgtx_pool_config;

/* Fill *cfg with the defaults above (conninfo ""). */
PGTX_API void pgtx_pool_config_init(pgtx_pool_config *cfg);

/*
 * Check a connection string (key=value or URI, multi-host included) without
 * connecting: its syntax, and that every port is a number in [1, 65535],
 * which libpq itself finds only when it connects.  NULL and "" (libpq's PG*
 * environment) are OK.  INVALID otherwise, with a one-line reason in
 * err->message that never repeats the string (a URI may hold a password).
 */
PGTX_API pgtx_status pgtx_conninfo_check(const char *conninfo, pgtx_error *err);

/*
 * Create a pool.  Opens no connection (the first checkout does).  Returns
 * INVALID for impossible settings (pool_size < 1, negative values) and for
 * a connection string that pgtx_conninfo_check() refuses.  The pool is
 * thread-safe.  Release with pgtx_pool_destroy().
 */
PGTX_API PGTX_MUSTCHECK pgtx_status pgtx_pool_create(const pgtx_pool_config *cfg,
                                                     pgtx_pool **out,
                                                     pgtx_error *err);

/*
 * Close the pool: checkouts from now on (and threads waiting for one) fail
 * with POOL_CLOSED; waits up to `timeout_ms` (-1: forever) for borrowed
 * connections to come back; closes every connection it holds.  Returns
 * POOL_TIMEOUT if some are still borrowed when the time is up (they are
 * closed when returned).  Idempotent.  Engines stay valid but fail.
 */
PGTX_API pgtx_status pgtx_pool_close(pgtx_pool *pool, int timeout_ms);

/*
 * Close (waiting forever for borrowed connections) and free.  Every engine
 * of the pool must be destroyed before or after, and none used after.
 * NULL is a no-op.
 */
PGTX_API void pgtx_pool_destroy(pgtx_pool *pool);

/*
 * Borrow a connection, waiting first-come-first-served up to `timeout_ms`
 * (-1: the pool's checkout_timeout_ms).  The connection is open, idle and
 * checked to be alive.  Errors: POOL_TIMEOUT, POOL_CLOSED, CONNECT.
 * Give it back with pgtx_pool_return().
 */
PGTX_API PGTX_MUSTCHECK pgtx_status pgtx_pool_checkout(pgtx_pool *pool,
                                                       int timeout_ms,
                                                       pgtx_conn **out,
                                                       pgtx_error *err);

/*
 * Give a borrowed connection back.  A connection left inside a transaction is
 * rolled back; a broken, busy or expired one is closed and replaced later.
 * Never fails.  NULL is a no-op.
 */
PGTX_API void pgtx_pool_return(pgtx_conn *conn);

/* The libpq connection; borrowed, valid until pgtx_pool_return(). */
PGTX_API PGconn *pgtx_conn_pg_borrow(pgtx_conn *conn);

typedef struct pgtx_pool_stats {
    /* gauges */
    int open;     /* connections open or being opened */
    int idle;     /* in the pool */
    int in_use;   /* borrowed */
    int overflow; /* open beyond pool_size */
    int waiting;  /* threads waiting in checkout now */
    /* counters since creation */
    uint64_t checkouts;      /* successful checkouts */
    uint64_t waits;          /* checkouts that had to wait */
    uint64_t wait_us;        /* total time spent waiting */
    uint64_t timeouts;       /* checkouts that gave up with POOL_TIMEOUT */
    uint64_t created;        /* connections opened */
    uint64_t connect_errors; /* failed attempts to open one */
    uint64_t discarded;      /* closed: broken, expired or overflow */
    uint64_t round_trips;    /* waits for the server made by libpgtx */
    /* transaction runner, all engines of this pool */
    uint64_t commits;
    uint64_t rollbacks;
    uint64_t retries_serialization;
    uint64_t retries_deadlock;
    uint64_t retries_stale;
    uint64_t retries_connection;
    uint64_t commit_unknown;
    uint64_t socket_timeouts; /* connections closed by socket_timeout_ms */
    /* statement cache, all connections */
    uint64_t stmt_hits;      /* executions of an already prepared statement */
    uint64_t stmt_prepares;  /* statements prepared (first use, or again) */
    uint64_t stmt_evictions; /* dropped to make room (least recently used) */
    uint64_t retries_prepared; /* retries after PREPARED_STALE */
    uint64_t retries_lock_not_available; /* retries after LOCK_NOT_AVAILABLE */
    uint64_t idle_closed;    /* overflow closed after idle_timeout_ms */
    uint64_t retries_read_only; /* retries after READ_ONLY_NODE */
    /* connections closed because their server turned out to be a standby
       (READ_ONLY_NODE): after a failover, or a host list without
       target_session_attrs=read-write */
    uint64_t read_only_closed;
} pgtx_pool_stats;

/* A consistent snapshot of the pool's statistics.  Thread-safe. */
PGTX_API void pgtx_pool_stats_get(pgtx_pool *pool, pgtx_pool_stats *out);

/* ------------------------------------------------------------------------
 * Engines: one pool, many sets of transaction options
 * ------------------------------------------------------------------------ */

typedef enum pgtx_isolation {
    PGTX_READ_COMMITTED = 0,
    PGTX_REPEATABLE_READ,
    PGTX_SERIALIZABLE
} pgtx_isolation;

/* Which statuses the runner retries: OR these bits. */
enum {
    PGTX_RETRY_SERIALIZATION = 1 << 0,
    PGTX_RETRY_DEADLOCK = 1 << 1,
    PGTX_RETRY_STALE = 1 << 2,
    PGTX_RETRY_CONNECTION = 1 << 3, /* lost before COMMIT was sent */
    PGTX_RETRY_LOCK_NOT_AVAILABLE = 1 << 4,
    PGTX_RETRY_PREPARED = 1 << 5, /* PREPARED_STALE: prepare it again */
    PGTX_RETRY_READ_ONLY = 1 << 6, /* READ_ONLY_NODE: on another connection */
    PGTX_RETRY_DEFAULT = PGTX_RETRY_SERIALIZATION | PGTX_RETRY_DEADLOCK |
                         PGTX_RETRY_STALE | PGTX_RETRY_CONNECTION |
                         PGTX_RETRY_PREPARED | PGTX_RETRY_READ_ONLY
};

/*
 * Retry with exponential backoff and full jitter: before attempt n+1 sleep a
 * random time in [0, min(max_delay_ms, base_delay_ms * 2^(n-1))], and never
 * start an attempt once budget_ms has passed since the first one began.
 */
typedef struct pgtx_retry_policy {
    int max_attempts;  /* attempts in all, >= 1 (default 50) */
    int budget_ms;     /* total time budget (default 10000; 0 = none) */
    int base_delay_ms; /* default 1 */
    int max_delay_ms;  /* default 100 */
    unsigned retry_on; /* PGTX_RETRY_* bits (default PGTX_RETRY_DEFAULT) */
} pgtx_retry_policy;

typedef struct pgtx_engine_options {
    pgtx_isolation isolation; /* default READ COMMITTED */
    bool read_only;
    bool deferrable;          /* only meaningful with SERIALIZABLE READ ONLY */
    int statement_timeout_ms; /* 0 = the server's setting */
    int lock_timeout_ms;      /* 0 = the server's setting */
    pgtx_retry_policy retry;
    /* Read the server's WAL insert position right after COMMIT, in the
       same round trip (one more statement, no more waits), into
       pgtx_run_info.commit_lsn: a position at or past the commit's own
       record, which a standby has applied once its
       pg_last_wal_replay_lsn() reaches it (read-your-writes on replicas).
       A read_only engine's transaction gets the position that covers what
       it read: the insert position on a primary, the replayed one on a
       standby.  Default false. */
    bool report_commit_lsn;
} pgtx_engine_options;

typedef struct pgtx_engine pgtx_engine;

/* Fill *opt with the defaults above. */
PGTX_API void pgtx_engine_options_init(pgtx_engine_options *opt);

/*
 * A view of `pool` that runs transactions with `opt` (copied; NULL =
 * defaults).  Opens no connection.  Any number of engines may share a pool;
 * the pool must outlive them.  Thread-safe.  Errors: INVALID, NOMEM.
 */
PGTX_API PGTX_MUSTCHECK pgtx_status
pgtx_engine_create(pgtx_pool *pool, const pgtx_engine_options *opt,
                   pgtx_engine **out, pgtx_error *err);

/* Free an engine; no transaction of it may be running.  NULL is a no-op. */
PGTX_API void pgtx_engine_destroy(pgtx_engine *engine);

/* The engine's pool, borrowed for the engine's lifetime. */
PGTX_API pgtx_pool *pgtx_engine_pool_borrow(pgtx_engine *engine);

/*
 * The BEGIN statement this engine sends, e.g.
 * "BEGIN ISOLATION LEVEL SERIALIZABLE, READ ONLY"; borrowed, valid for the
 * engine's lifetime.
 */
PGTX_API const char *pgtx_engine_begin_sql_borrow(pgtx_engine *engine);

/* ------------------------------------------------------------------------
 * Transaction runner
 * ------------------------------------------------------------------------ */

typedef struct pgtx_tx pgtx_tx;

/*
 * The body of a transaction.  Runs on a borrowed connection: it must not
 * commit, roll back, or keep `tx` after returning — the runner does all of
 * that.  Return PGTX_OK to commit; any other status rolls back (PGTX_STALE
 * asks for a retry; use pgtx_fail() to describe your own abort in *err).
 * It may run several times, so it must not have effects outside the
 * database that cannot be repeated, and should reset `arg`'s results first.
 */
typedef pgtx_status (*pgtx_tx_fn)(pgtx_tx *tx, void *arg, pgtx_error *err);

/* "host:port" of a server, as libpq names it: a unix socket's folder or a
   host name may be long; longer ones are truncated. */
#define PGTX_NODE_SIZE 128

/* What a pgtx_run() did, for reporting and metrics. */
typedef struct pgtx_run_info {
    int attempts;       /* 1 = no retry */
    bool exhausted;     /* ended on a retryable status: budget used up */
    int64_t elapsed_us; /* from the first checkout to the end */
    /* The server the last attempt ran on ("127.0.0.1:5433"; "" when it
       had no connection): with a multi-host connection string, which node
       was the primary, or which standby served a read. */
    char node[PGTX_NODE_SIZE];
    /* With pgtx_engine_options.report_commit_lsn, after a commit: the WAL
       position to wait for on a standby (pgtx_lsn_format() prints it as
       PostgreSQL does); 0 otherwise. */
    uint64_t commit_lsn;
} pgtx_run_info;

/* Longest "XXXXXXXX/XXXXXXXX" plus its NUL. */
#define PGTX_LSN_SIZE 18

/*
 * A pg_lsn's text ("16/B374D848") as a number, the way PostgreSQL reads
 * it: two hexadecimal halves of at most 8 digits.  INVALID (and *out
 * untouched) for anything else.
 */
PGTX_API pgtx_status pgtx_lsn_parse(const char *text, uint64_t *out);
/* `lsn` in pg_lsn's text form into buf; returns buf. */
PGTX_API char *pgtx_lsn_format(uint64_t lsn, char buf[PGTX_LSN_SIZE]);

/*
 * Run `fn` in a transaction of `engine`: check a connection out, begin with
 * the engine's options, call fn, commit if it returned PGTX_OK, roll back
 * otherwise, return the connection, and retry as the engine's policy says.
 * A lost connection while COMMIT was in flight returns COMMIT_UNKNOWN and is
 * never retried; except on a read_only engine, where nothing can have been
 * changed: that is CONNECTION_LOST (or SOCKET_TIMEOUT), as before COMMIT.
 * `info` may be NULL.  Thread-safe (per engine).
 * Its checkout skips the look at the socket (a system call) for a
 * connection returned less than a second ago: one found dead in the first
 * round trip ran nothing and is retried on another.  Once a transaction of
 * the pool has lost its connection (or found a standby), the connections
 * that were idle before it get that look again at their next checkout, so
 * that after a failover the dead ones are closed there rather than cost a
 * transaction each.
 *
 * Failover.  With a multi-host connection string and
 * target_session_attrs=read-write, new connections go to whichever node is
 * the primary now; the pool opens them one at a time (connect_retry_ms
 * apart after a failure), so that a failover is not met by every thread
 * connecting at once.  A read-write transaction never runs on a standby:
 * a connection whose server reports in_hot_standby=on (PostgreSQL 14 and
 * later report it as the session starts and when it is promoted) is closed
 * at checkout, and one whose BEGIN READ WRITE or write is refused with
 * SQLSTATE 25006 while the server does not report in_hot_standby=off is
 * closed too.  Either way the attempt fails with READ_ONLY_NODE, having
 * changed nothing, and is retried by default on another connection.  A
 * 25006 on a server that reports in_hot_standby=off is the transaction's
 * own doing (SET TRANSACTION READ ONLY) and stays SQL.
 */
PGTX_API pgtx_status pgtx_run(pgtx_engine *engine, pgtx_tx_fn fn, void *arg,
                              pgtx_run_info *info, pgtx_error *err);

/*
 * Run one statement in the transaction and wait for it.  The first
 * statement of a transaction travels in one round trip with its BEGIN
 * (libpq pipeline mode), and so do statements queued before it with
 * pgtx_queue().  Statements are prepared once per connection and reused
 * (pgtx_pool_config.statement_cache_size).
 * `params` are text values (NULL = SQL NULL).  On success *out (if `out` is
 * not NULL) is a result the caller must PQclear(); with `out` NULL the
 * result is cleared here.  Errors are classified (SERIALIZATION,
 * UNIQUE_VIOLATION, CONNECTION_LOST...); after one, the transaction is
 * aborted and the runner rolls it back even if the callback returns OK.
 */
PGTX_API pgtx_status pgtx_query(pgtx_tx *tx, const char *sql, int nparams,
                                const char *const *params, PGresult **out,
                                pgtx_error *err);

/*
 * Queue a statement of the transaction without waiting for it: it goes out
 * with the next round trip, which is
 *  - pgtx_flush(), or the next pgtx_query() (which also waits for its own
 *    statement): *out is then set like pgtx_query()'s, in queued order;
 *  - else the COMMIT: when the callback returns PGTX_OK with statements
 *    still queued, BEGIN (if nothing ran yet), the queued statements and
 *    COMMIT leave in one write and come back in one wait, and *out receives
 *    its result only if the transaction committed (else it stays NULL).
 * So a transaction whose statements need no decision by the client in
 * between costs one round trip:
 *
 *   static pgtx_status order(pgtx_tx *tx, void *p, pgtx_error *err) {
 *       struct order *o = p;            // o->row: PGresult *, reset here
 *       pgtx_queue(tx, "UPDATE stock SET n = n - 1 WHERE id = $1", 1, o->item, NULL, err);
 *       pgtx_queue(tx, "INSERT INTO sale (item) VALUES ($1) RETURNING id", 1, o->item,
 *                  &o->row, err);
 *       return PGTX_OK;                 // the runner sends both with COMMIT
 *   }
 *
 * `sql` and `params` are copied into libpq's buffer at once (they may be
 * freed on return); `out` (may be NULL) must stay valid until the round is
 * read: a field of the callback's `arg`, not its stack, when the COMMIT
 * reads it.  *out is set to NULL now; the caller PQclear()s what arrives.
 * Because the COMMIT is already on its way, no decision can follow a
 * queued statement's result in that round: a rule that must stop the
 * transaction has to fail inside the server (a constraint, an error), which
 * makes the server skip the rest and the runner roll back and report it.
 * Errors: INVALID (more than 64 statements queued in one round), or the
 * transaction's first failure.  The runner's rules are unchanged: rollback
 * on any failure, retries, COMMIT_UNKNOWN when the connection is lost with
 * the COMMIT in flight, socket_timeout_ms for the wait.
 */
PGTX_API pgtx_status pgtx_queue(pgtx_tx *tx, const char *sql, int nparams,
                                const char *const *params, PGresult **out,
                                pgtx_error *err);

/*
 * Send what pgtx_queue() queued and wait for all of it (one round trip; OK
 * at once when nothing is queued).  Returns OK, or the first failure among
 * them, after which the transaction is aborted as with pgtx_query().
 */
PGTX_API pgtx_status pgtx_flush(pgtx_tx *tx, pgtx_error *err);

/*
 * The transaction's connection for direct libpq use, after BEGIN has been
 * sent (sending it now if no statement has run yet).  Borrowed: valid until
 * the callback returns; never COMMIT, ROLLBACK or close it.  NULL if BEGIN
 * failed (the error is kept for the runner).
 */
PGTX_API PGconn *pgtx_tx_pg_borrow(pgtx_tx *tx);

/* The attempt this callback runs in: 1 for the first. */
PGTX_API int pgtx_tx_attempt(const pgtx_tx *tx);

/*
 * pgtx_query() for a statement that must change exactly `expected` rows: any
 * other count returns STALE and aborts the transaction, which the runner
 * retries.  This is the optimistic version check in one call:
 *   UPDATE t SET ..., version = version + 1 WHERE id = $1 AND version = $2
 * `out` as for pgtx_query() (NULL is fine; on STALE nothing is returned).
 */
PGTX_API pgtx_status pgtx_query_expect(pgtx_tx *tx, const char *sql, int nparams,
                                       const char *const *params,
                                       int64_t expected, PGresult **out,
                                       pgtx_error *err);

/* Number of rows a command changed (PQcmdTuples as an integer), -1 if none. */
PGTX_API int64_t pgtx_result_affected(PGresult *res);

/*
 * Read field (row, col) of `res` as a 64-bit integer into *out.  Returns
 * INVALID (and leaves *out alone) if there is no such field, it is NULL, or
 * it is not an integer that fits: never a silent 0.
 */
PGTX_API pgtx_status pgtx_result_int64(const PGresult *res, int row, int col,
                                       int64_t *out);

/*
 * The delay before attempt `attempt` + 1 given `policy` and a uniform random
 * number `r` in [0, 1): full jitter over the capped exponential.  Exposed so
 * that callers and tests can see the schedule.
 */
PGTX_API int pgtx_backoff_ms(const pgtx_retry_policy *policy, int attempt,
                             double r);

/* ------------------------------------------------------------------------
 * Safe-update strategies: one row's counter changed by a delta
 * ------------------------------------------------------------------------ */

/*
 * The ways to change a value read-modify-write without losing an update.
 * NAIVE is the unsafe one, kept to show the lost update.  New members may
 * be added before PGTX_STRATEGY_COUNT.
 */
typedef enum pgtx_strategy {
    PGTX_STRATEGY_ATOMIC,       /* one guarded UPDATE, no read */
    PGTX_STRATEGY_LOCK,         /* SELECT ... FOR NO KEY UPDATE, then write */
    PGTX_STRATEGY_OPTIMISTIC,   /* read with a version, write if unchanged */
    PGTX_STRATEGY_SERIALIZABLE, /* read, write, in a SERIALIZABLE engine */
    PGTX_STRATEGY_NAIVE,        /* read, write: UNSAFE, loses updates */
    PGTX_STRATEGY_COUNT
} pgtx_strategy;

/* "atomic", "lock", "optimistic", "serializable", "naive"; "unknown" out of
   range.  A static string, never NULL. */
PGTX_API const char *pgtx_strategy_name(pgtx_strategy s);
/* The strategy named exactly `name` (lower case) into *out; false, *out
   untouched, for anything else, NULL included. */
PGTX_API bool pgtx_strategy_parse(const char *name, pgtx_strategy *out);
/* False only for NAIVE (and values out of range). */
PGTX_API bool pgtx_strategy_is_safe(pgtx_strategy s);

/* How PGTX_STRATEGY_LOCK waits for a row another transaction holds; the
   other strategies ignore it. */
typedef enum pgtx_row_wait {
    PGTX_ROW_WAIT,        /* wait (bounded by the engine's lock_timeout_ms) */
    PGTX_ROW_NOWAIT,      /* fail at once: PGTX_LOCK_NOT_AVAILABLE */
    PGTX_ROW_SKIP_LOCKED  /* pass it by: found = false, PGTX_OK */
} pgtx_row_wait;

/*
 * One change: add `delta` to the bigint `column` of the row of `table` whose
 * `key_column` equals `key`, unless the result would leave [floor, ceiling].
 * Names are identifiers, each quoted by the library ("" doubled), so any
 * name is safe and none is case-folded: give them as the catalog spells
 * them ("account", not "Account" unless it was created quoted).  NULL, ""
 * or longer than 63 bytes is INVALID.  `key_column` must be unique (a
 * primary key or unique constraint); a key matching several rows is
 * INVALID and rolls the transaction back.
 */
typedef struct pgtx_delta {
    const char *schema;         /* NULL: the search_path */
    const char *table;
    const char *key_column;
    const char *column;
    /* A bigint column that every strategy adds 1 to when it changes the
       row; required by OPTIMISTIC (NULL: none). */
    const char *version_column;
    int64_t key;
    int64_t delta;
    bool has_floor;             /* refuse a result below floor */
    int64_t floor;
    bool has_ceiling;           /* refuse a result above ceiling */
    int64_t ceiling;
    pgtx_row_wait wait;         /* LOCK only */
} pgtx_delta;

typedef struct pgtx_delta_result {
    bool found;   /* the row was there (and, with SKIP LOCKED, not held) */
    bool refused; /* the floor or ceiling said no: nothing was changed */
    /* The value after the change; when refused, the value that was refused
       (see ATOMIC for how current it is); 0 when not found. */
    int64_t value;
} pgtx_delta_result;

/*
 * Apply `d` inside a pgtx_run() callback with strategy `s`.  Returns OK with
 * *out filled when the change was made, refused (nothing changed: the
 * caller decides whether that rolls back) or the row was not found.
 * Failures, after which the transaction is aborted and the runner rolls it
 * back (the statuses the engine's retry_on names are retried):
 *  - INVALID: a bad argument, see pgtx_delta; OPTIMISTIC without
 *    version_column; SERIALIZABLE in an engine not at PGTX_SERIALIZABLE
 *    (these leave the transaction as it was); a key that matches several
 *    rows, or a value or version that is NULL (these fail the transaction,
 *    since a write may have run);
 *  - SQL with sqlstate "22003" ("bigint out of range") when column + delta
 *    does not fit in 64 bits, whatever the strategy (ATOMIC gets it from the
 *    server, the others from the same check in C);
 *  - LOCK_NOT_AVAILABLE (NOWAIT, or lock_timeout_ms), STALE, SERIALIZATION,
 *    DEADLOCK and the rest of pgtx_query()'s statuses.
 * Statements are sent as pgtx_query() / pgtx_queue() send them (prepared
 * once per connection and per shape of change).  Round trips below are the
 * ones this call adds; BEGIN rides with the first, COMMIT is the runner's.
 * "Queued" writes leave with the transaction's next statement or its COMMIT
 * (pgtx_queue()), costing no round trip of their own; a failure of one (a
 * trigger, a CHECK constraint, 40001) is reported there.
 *
 * ATOMIC: one statement,
 *     WITH u AS (UPDATE t SET c = c + delta [, v = v + 1]
 *                WHERE k = key AND c + delta >= floor AND c + delta <= ceiling
 *                RETURNING c)
 *     SELECT (SELECT c FROM u), c FROM t WHERE k = key
 *   The row lock the UPDATE takes, and PostgreSQL's re-check of the guard on
 *   the newest row version after waiting for a concurrent writer, make it
 *   safe at every isolation level.  1 round trip.  A refusal is told from
 *   an absent row by the statement's own read; when that read (its
 *   snapshot) shows a value the guard would have admitted, the row changed
 *   while the UPDATE waited, and a second statement reads the current value
 *   (READ COMMITTED only; 2 round trips).  Otherwise `value` is the refused
 *   value as of the statement's snapshot.
 * LOCK: SELECT c FROM t WHERE k = key FOR NO KEY UPDATE [NOWAIT | SKIP
 *   LOCKED] (1 round trip), the check in C, then a queued UPDATE of the
 *   computed value.  The row lock, held to the end of the transaction,
 *   excludes every other writer of the row between the read and the write;
 *   FOR NO KEY UPDATE does not block inserts of rows that reference it by a
 *   foreign key.  A refusal keeps the row locked until the transaction ends.
 * OPTIMISTIC: SELECT c, v (1 round trip), the check in C, then UPDATE t SET
 *   c = new, v = v + 1 WHERE k = key AND v = read_v (1 round trip).  A write
 *   since the read changed the version: 0 rows, PGTX_STALE, retried by the
 *   runner when its retry_on has PGTX_RETRY_STALE (the default).  No lock
 *   is held between the two statements.  2 round trips.
 * SERIALIZABLE: SELECT c (1 round trip), the check in C, then a queued
 *   UPDATE of the computed value.  Safe only because the engine runs at
 *   SERIALIZABLE: PostgreSQL fails one of two overlapping read-write
 *   transactions with 40001 (PGTX_SERIALIZATION, retried by default).
 * NAIVE (UNSAFE): as SERIALIZABLE at any isolation.  Two transactions that
 *   read the same value both write their own result: one change is lost,
 *   and nothing reports it (REPEATABLE READ turns that into 40001).
 */
PGTX_API pgtx_status pgtx_delta_apply(pgtx_tx *tx, pgtx_strategy s,
                                      const pgtx_delta *d,
                                      pgtx_delta_result *out, pgtx_error *err);

/* ------------------------------------------------------------------------
 * Write combining: many calls on one hot row, one transaction
 * ------------------------------------------------------------------------ */

/*
 * One unit of work of a batch.  The caller sets `arg`; the library fills
 * the rest (and resets it at the start of every attempt):
 *  - status: OK when the batch committed with this call's work in it; a
 *    business refusal (ABORTED, a CONSTRAINT or SQL class status, or any
 *    status a set() callback marked) when this call was undone and changed
 *    nothing while the others committed; otherwise the batch's own failure
 *    (see pgtx_run_batch), COMMIT_UNKNOWN included;
 *  - err: what went wrong (status OK and an empty message when OK);
 *  - attempts: how many transactions this call was part of (1 = no retry).
 */
typedef struct pgtx_call {
    void *arg;
    pgtx_status status;
    pgtx_error err;
    int attempts;
} pgtx_call;

/* The most calls one batch may run with a savepoint each: PostgreSQL keeps
   64 subtransaction ids per backend in shared memory, and past that every
   snapshot taken anywhere on the server pays for the overflow. */
#define PGTX_BATCH_SAVEPOINT_MAX 64

/*
 * The two ways of doing a batch's work; give one or both (NULL for the
 * other).  Both run inside a pgtx_run() transaction and follow pgtx_tx_fn's
 * rules: no COMMIT or ROLLBACK of their own, possibly run several times.
 *
 * set (set-oriented, the fast way): do the work of every call in few
 *   statements (one UPDATE with the summed delta, one INSERT ... SELECT
 *   FROM unnest($1::bigint[], ...)) and mark each refused call with
 *   `calls[i].status` (and err, e.g. with pgtx_fail()); a refused call must
 *   have changed nothing.  Calls left OK are committed.  Return OK to
 *   commit the batch, or a failure of the whole batch.
 * one (a savepoint per call): do one call's work.  The library sends
 *   SAVEPOINT before it (with its first statement: no round trip of its own)
 *   and RELEASE after it (with the next call's first statement or the
 *   COMMIT).  Statements it leaves queued are flushed when it returns (a
 *   round trip) so that their failure is told to this call.  A business
 *   failure — its return status or the transaction's failure in class
 *   ABORT, CONSTRAINT or SQL (e.g. 23505, a CHECK, RAISE in a trigger) —
 *   rolls back to the savepoint (queued, no round trip) and marks this
 *   call alone; the batch goes on.  Any other failure (retryable, timeout,
 *   connection, usage) fails the whole batch.
 */
typedef struct pgtx_batch_ops {
    pgtx_status (*set)(pgtx_tx *tx, pgtx_call *calls, int n, pgtx_error *err);
    pgtx_status (*one)(pgtx_tx *tx, pgtx_call *call, pgtx_error *err);
} pgtx_batch_ops;

/*
 * Run `n` calls (n >= 1) in ONE transaction of `e`: one COMMIT acknowledges
 * all of them.  With `set` given it is used; when it fails with a business
 * status of the whole batch (class ABORT, CONSTRAINT or SQL: a row it could
 * not tell to one call) and `one` is given too and n <= 64, the batch runs
 * again with a savepoint per call (its attempts count).  With `one` alone,
 * n > PGTX_BATCH_SAVEPOINT_MAX is INVALID (split the calls, as
 * pgtx_combiner does with its max_batch).
 * Guarantees:
 *  - Returns OK when the transaction committed: every call is then either
 *    OK (its work committed) or refused (undone, nothing of it committed).
 *  - A retryable failure (the engine's retry_on) rolls the whole batch back
 *    and runs it again within the engine's retry budget; every call's
 *    status is reset per attempt, and `attempts` counts them all.
 *  - Otherwise the batch's failure is returned and given to EVERY call
 *    (status and err), refused ones included: nothing committed, except
 *    COMMIT_UNKNOWN (the connection was lost with the COMMIT in flight),
 *    which is never retried: every call's work may or may not be in.
 * `info` (may be NULL) is the transaction's, as pgtx_run() fills it.
 * INVALID (calls untouched) for NULL arguments, n < 1 or no callback.
 * Thread-safe per engine, as pgtx_run().
 */
PGTX_API pgtx_status pgtx_run_batch(pgtx_engine *e, const pgtx_batch_ops *ops,
                                    pgtx_call *calls, int n,
                                    pgtx_run_info *info, pgtx_error *err);

/*
 * A combiner: calls from many threads that write the same hot row (the same
 * `key`, the caller's choice: an account id, a product id) are queued in the
 * process, and at most one batch per key is in flight: while one runs, the
 * next calls of that key wait, and the next batch takes all of them at once
 * (up to max_batch, oldest first) in one transaction with pgtx_run_batch().
 * The calls of different keys run in parallel, each key's batches on its own
 * pooled connection.  Thread-safe.
 */
typedef struct pgtx_combiner pgtx_combiner;

/*
 * `e` and `ops` are borrowed and must outlive the combiner.  max_batch >= 1
 * (1: every call its own transaction, i.e. combining off);
 * with `one` alone, at most PGTX_BATCH_SAVEPOINT_MAX, else INVALID.
 * Errors: INVALID, NOMEM.  Release with pgtx_combiner_destroy().
 */
PGTX_API PGTX_MUSTCHECK pgtx_status
pgtx_combiner_create(pgtx_engine *e, const pgtx_batch_ops *ops, int max_batch,
                     pgtx_combiner **out, pgtx_error *err);

/* Free it; no pgtx_combine() may be running.  NULL is a no-op. */
PGTX_API void pgtx_combiner_destroy(pgtx_combiner *c);

/*
 * Run `call` in a batch of the calls of `key`, and return its status (also
 * in call->status, with call->err and call->attempts as pgtx_run_batch()
 * sets them).  The thread that finds no batch of its key in flight leads:
 * it takes itself and the calls waiting behind it, runs the batch, hands
 * each its outcome and passes the lead to the oldest call still waiting.
 * The others sleep until their outcome is there or their turn comes.
 * `timeout_ms` (-1: no limit) bounds the wait for the call's turn, not the
 * run of its batch (the engine's timeouts bound that): a call not taken
 * into a batch within it returns POOL_TIMEOUT, has changed nothing and is
 * never run afterwards.  `call` is borrowed until the return.  The
 * callbacks run on the leading thread, for every call of its batch: a
 * call's `arg` must be readable from another thread until the call returns.
 * INVALID for NULL arguments.
 */
PGTX_API pgtx_status pgtx_combine(pgtx_combiner *c, uint64_t key,
                                  pgtx_call *call, int timeout_ms);

/* What a combiner did since it was created. */
typedef struct pgtx_combiner_stats {
    uint64_t batches;       /* transactions run (pgtx_run_batch calls) */
    uint64_t calls;         /* calls run in them: calls / batches = mean size */
    uint64_t largest_batch; /* the most calls one batch took */
    uint64_t timeouts;      /* calls that gave up waiting (POOL_TIMEOUT) */
} pgtx_combiner_stats;

/* A consistent copy of the counters.  Thread-safe. */
PGTX_API void pgtx_combiner_stats_get(pgtx_combiner *c,
                                      pgtx_combiner_stats *out);

#ifdef __cplusplus
}
#endif

#endif /* PGTX_H */
