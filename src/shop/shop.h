/*
 * shop.h — the seams between pgtx-shop's parts.  Not a library: one header
 * so that the HTTP side (server.c, http.c, config.c, metrics.c) and the
 * domain side (app.c, routes, store, auth, migrate) agree on a few types.
 *
 *   main.c      config -> database (embedded or given) -> pool -> migrate
 *               -> admin token -> app -> http server -> wait for a signal
 *   http.c      libmicrohttpd glue: reads the request on the event thread,
 *               suspends it, hands a shop_request to a bounded worker pool,
 *               resumes with the shop_response.  Answers itself: 413, 503
 *               when the queue is full, malformed framing, /healthz,
 *               /metrics.  Everything else goes to shop_app_handle().
 *   app.c       routing (404/405), auth, JSON validation, and one handler
 *               per route that runs its transaction through pgtx_run with
 *               the request's strategy.
 *
 * Ownership: a shop_request and everything it points to belong to http.c
 * and live until shop_app_handle returns.  shop_response.body is malloc'ed
 * by the app and freed by http.c after sending.
 */
#ifndef PGTX_SHOP_H
#define PGTX_SHOP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pgtx.h"

/* Write strategies are libpgtx's (pgtx_strategy in pgtx.h): one enum and
   one name table for the service, the race lab and the library. */

/* ---- configuration (config.c) ------------------------------------------ */

typedef enum shop_log_level {
    SHOP_LOG_ERROR,
    SHOP_LOG_WARN,
    SHOP_LOG_INFO,
    SHOP_LOG_DEBUG
} shop_log_level;

typedef struct shop_config {
    const char *database;     /* NULL: embedded local cluster */
    const char *read_database; /* NULL: reads on database too */
    const char *listen_host;  /* "127.0.0.1" */
    int listen_port;          /* 8080; 0 picks a free port (printed) */
    const char *admin_token;  /* NULL: generated/stored on first run */
    const char *data_dir;     /* embedded cluster folder (PGTX_DATA_DIR) */
    int threads;              /* worker threads */
    int queue_size;           /* requests waiting for a worker, then 503 */
    int pool_size;            /* 0 until parsed: then --threads unless given */
    int max_overflow;
    int idle_timeout_ms;      /* overflow kept open this long unused */
    int statement_cache;      /* statements prepared per connection; 0: none */
    int pool_timeout_ms;      /* checkout timeout -> 503 overloaded */
    int db_timeout_ms;        /* socket timeout: no answer -> 503; 0: none */
    int lock_timeout_ms;      /* SET LOCAL lock_timeout per write; 0: none */
    int batch_limit;          /* calls per combined transaction; 1: off */
    pgtx_strategy strategy;   /* default write strategy */
    bool allow_unsafe;        /* accept naive */
    shop_log_level log_level;
    size_t max_body;          /* bytes, then 413 */
} shop_config;

/* ---- metrics (metrics.c; thread-safe) ----------------------------------- */

typedef struct shop_metrics shop_metrics;

typedef enum shop_tx_outcome {
    SHOP_TX_COMMITTED,    /* committed (a business-rule 409 rolls back: FAILED) */
    SHOP_TX_FAILED
} shop_tx_outcome;

/* One transaction run by a handler: its strategy, outcome and retries
   (attempts - 1). */
void shop_metrics_tx(shop_metrics *m, pgtx_strategy s, shop_tx_outcome o,
                     int retries);

/* One account token checked: `cached` when the cache of lookups answered,
   else it cost a database lookup. */
void shop_metrics_auth_lookup(shop_metrics *m, bool cached);

/* Where a GET ran when there are standbys (--read-database). */
typedef enum shop_read_outcome {
    SHOP_READ_STANDBY,     /* on a standby that had replayed what it needed */
    SHOP_READ_BEHIND,      /* on the primary: the standby was behind */
    SHOP_READ_UNAVAILABLE, /* on the primary: no standby could be had */
    SHOP_READ_MISSING,     /* on the primary: the standby did not have the
                              row (not arrived yet, or not there at all) */
    SHOP_READ_OUTCOMES
} shop_read_outcome;
void shop_metrics_read(shop_metrics *m, shop_read_outcome o);

/* ---- the app (app.c and friends) ---------------------------------------- */

typedef struct shop_app shop_app;

typedef struct shop_request {
    const char *method;          /* "GET", "POST", ... */
    const char *path;            /* "/v1/accounts/12", no query string */
    const char *body;            /* not NUL-terminated; NULL when empty */
    size_t body_len;
    const char *authorization;   /* the header's value, or NULL */
    const char *strategy;        /* Pgtx-Strategy, or NULL */
    const char *idempotency_key; /* Idempotency-Key, or NULL */
    const char *commit_lsn;      /* Pgtx-Commit-LSN (a read's), or NULL */
} shop_request;

typedef struct shop_response {
    int status;          /* HTTP status */
    char *body;          /* malloc'ed JSON (owned by the response), or NULL */
    int retries;         /* Pgtx-Retries; -1: no header (not a write) */
    int retry_after;     /* seconds for Retry-After; 0: no header */
    const char *route;   /* static label for logs/metrics: "POST /v1/orders";
                            "unknown" when no route matched */
    const char *strategy; /* static strategy name for logs, or NULL */
    const char *allow;   /* static Allow header value for a 405 ("GET, POST"),
                            or NULL; http.c sets it to NULL before the call */
    const char *code;    /* static error code of the body, for logs, or NULL */
    const char *content_type; /* static; NULL: application/json */
    int64_t who;         /* for logs: the account acting, 0 the admin, -1 nobody */
    int batch;           /* Pgtx-Batch: requests that shared its transaction;
                            0: no header (not a combinable write) */
    uint64_t commit_lsn; /* Pgtx-Commit-LSN of the write's commit; 0: none */
    const char *read_from; /* static Pgtx-Read-From ("standby", "primary")
                              of a GET when there are standbys, or NULL */
} shop_response;

/* A row that a write changes, named before the write runs, so that
   http.c can keep a hot or locked row from taking every worker: at most a
   few requests per row are handed to workers at a time, the others wait
   without a thread (see row_gate in server.h). */
typedef enum shop_row_kind {
    SHOP_ROW_ACCOUNT = 1,
    SHOP_ROW_PRODUCT,
    SHOP_ROW_COUPON
} shop_row_kind;

typedef struct shop_row_key {
    shop_row_kind kind;
    int64_t id;
} shop_row_key;

/* Or'ed into a kind: not a row but its lane of combined writes (deposits
   of an account, orders of a product, claims of a coupon), of which one
   batch is in flight at a time (see http.c). */
#define SHOP_ROW_LANE 0x100

/* The rows a request names, plus its lane when combining is on. */
#define SHOP_ROW_KEYS_MAX 4

typedef struct shop_request_rows {
    const char *route; /* static label of the write route, or NULL */
    int n;             /* rows named; 0 for reads and unknown requests */
    shop_row_key key[SHOP_ROW_KEYS_MAX];
    /* The row whose writes may share a transaction (the account of a
       deposit, the product of an order, the coupon of a claim); kind 0:
       none, the request runs alone. */
    shop_row_key combine;
} shop_request_rows;

/* The rows the request's write would change, from its path and body
   (parsed leniently: a body the handler will refuse names no row).  Pure:
   no database, no auth; safe on the event thread. */
void shop_request_rows_of(const shop_request *req, shop_request_rows *out);

/* The app borrows pool and metrics (they outlive it).  Creates its engines
   (one per strategy that needs its own isolation level). */
pgtx_status shop_app_create(pgtx_pool *pool, shop_metrics *metrics,
                            const shop_config *cfg, const char *admin_token,
                            shop_app **out, pgtx_error *err);
/* GET routes on `standbys` (borrowed; it outlives the app) from now on,
   each on the primary instead when the standby it gets has not replayed
   the request's Pgtx-Commit-LSN.  Call before the first request. */
pgtx_status shop_app_use_standbys(shop_app *app, pgtx_pool *standbys,
                                  pgtx_error *err);
void shop_app_destroy(shop_app *app);

/* Handles one request; thread-safe; never fails: every outcome, including a
   dead database, is an HTTP status in *res (never 500 for a client's input).
   Called on a worker thread; may block on the database. */
void shop_app_handle(shop_app *app, const shop_request *req,
                     shop_response *res);

/* Handles n >= 1 requests of one route and one combine row (the same
   shop_request_rows.combine) together: those that pass their checks share
   one transaction per strategy (pgtx_run_batch), each answered as if it ran
   alone, with res[i].batch set.  Same contract as shop_app_handle. */
void shop_app_handle_batch(shop_app *app, const shop_request *const *req,
                           shop_response *const *res, int n);

/* ---- migrations (migrate.c) ---------------------------------------------- */

/* Applies sql/NNN_*.sql not yet applied, in order, each in a transaction,
   under an advisory lock so that processes starting together apply them
   once.  The scripts are compiled into the binary. */
pgtx_status shop_migrate(pgtx_pool *pool, pgtx_error *err);

#endif
