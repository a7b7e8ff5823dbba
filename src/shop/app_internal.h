/*
 * app_internal.h — what the domain side of pgtx-shop shares between its
 * files: the app, one request's context, faults, request bodies, replies,
 * the SQL helpers and the route handlers.  Nothing here is seen by the HTTP
 * side, which knows only shop.h.
 *
 *   app.c           shop_app_create/destroy/handle: routing, auth, strategy
 *   auth.c          admin and account tokens
 *   body.c          JSON request bodies checked against a field list
 *   reply.c         JSON responses, errors, libpgtx statuses as HTTP
 *   store.c         running transactions, rows as JSON, counters per strategy
 *   route_*.c       one handler per route (route_docs.c: the OpenAPI document)
 *   migrate.c       shop_migrate (the scripts of sql/, compiled in)
 */
#ifndef PGTX_SHOP_APP_INTERNAL_H
#define PGTX_SHOP_APP_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "shop.h"

#if defined(__GNUC__)
#define APP_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define APP_PRINTF(f, a)
#endif

/* crypto_generichash output kept for tokens and request hashes. */
#define SHOP_HASH_BYTES 32
/* Longest name, coupon code or Idempotency-Key, in bytes. */
#define SHOP_TEXT_MAX 200

typedef struct auth_cache auth_cache; /* auth.c */

struct shop_app {
    pgtx_pool *pool;            /* borrowed */
    shop_metrics *metrics;      /* borrowed; NULL counts nothing */
    pgtx_engine *writer;        /* owned: READ COMMITTED */
    pgtx_engine *serializable;  /* owned: SERIALIZABLE, for that strategy */
    pgtx_engine *reader;        /* owned: READ COMMITTED, READ ONLY */
    pgtx_engine *standby;       /* owned: READ ONLY on the standbys' pool
                                   (--read-database), or NULL */
    _Atomic int64_t standby_down_until_ms; /* reads skip the standbys until
                                              then (shop_now_ms) */
    pgtx_strategy default_strategy;
    bool allow_unsafe;
    bool has_admin;             /* false: no admin token, admin routes 401 */
    unsigned char admin_hash[SHOP_HASH_BYTES];
    auth_cache *auth_cache;     /* owned: recent account lookups */
};

/* ---- one request ----------------------------------------------------------- */

typedef enum shop_role {
    SHOP_ROLE_NONE,    /* no token, or one that matches nothing */
    SHOP_ROLE_ADMIN,
    SHOP_ROLE_ACCOUNT  /* ctx->account_id's own token */
} shop_role;

typedef struct shop_ctx {
    shop_app *app;             /* borrowed */
    const shop_request *req;   /* borrowed */
    shop_response *res;        /* the answer being built */
    int64_t id;                /* the path's {id}; 0 when it has none */
    shop_role role;
    int64_t account_id;        /* SHOP_ROLE_ACCOUNT: whose token it is */
    pgtx_strategy strategy;    /* write routes: the request's strategy */
    bool write;                /* a write route: reports retries, metrics */
    uint64_t min_lsn;          /* a read's Pgtx-Commit-LSN; 0: none */
} shop_ctx;

/*
 * What a transaction body decided to answer instead of committing (a 404
 * found inside, a business 409, a 422): set by fault_abort(), which rolls
 * the transaction back.  `overflow` names what a SQLSTATE 22003 (a bigint
 * result out of range) overflowed, for the 422 message.
 */
typedef struct shop_fault {
    int status;           /* 0: none */
    const char *code;     /* static */
    const char *overflow; /* static, or NULL: "the result" */
    char message[200];
} shop_fault;

/* Records the fault and returns PGTX_ABORTED (filling *err) for the
   callback to return. */
pgtx_status fault_abort(shop_fault *f, pgtx_error *err, int status,
                        const char *code, const char *fmt, ...)
    APP_PRINTF(5, 6);
/* Clears a fault at the start of an attempt (a callback may run again). */
void fault_reset(shop_fault *f);

/* CLOCK_MONOTONIC in milliseconds (app.c). */
int64_t shop_now_ms(void);

/* A decimal id as the API writes them: 1..INT64_MAX, digits only, no
   leading zero (app.c). */
bool shop_parse_id(const char *s, size_t len, int64_t *out);

/* ---- replies (reply.c) ----------------------------------------------------- */

/* {"error":{"code","message"}} with `status`; replaces any body. */
void reply_error(shop_response *res, int status, const char *code,
                 const char *fmt, ...) APP_PRINTF(4, 5);
/* `body` is stolen (even on failure); NULL (out of memory) or one that
   cannot be printed becomes 503 overloaded. */
void reply_json(shop_response *res, int status, json_t *body);
/* A failed pgtx_run as HTTP: the fault if the body set one, else 503s for
   the pool, the connection and exhausted retries, 422 for 22003, else 500. */
void reply_failure(shop_response *res, pgtx_status st, const pgtx_run_info *info,
                   const pgtx_error *err, const shop_fault *fault);

/* 503 retry_exhausted with Retry-After, `why` first in the message. */
void reply_retry_exhausted(shop_response *res, const char *why);

/* ---- request bodies (body.c) ------------------------------------------------ */

typedef enum shop_field_kind {
    SHOP_FIELD_INT,  /* a JSON integer >= min */
    SHOP_FIELD_TEXT  /* a JSON string of 1..SHOP_TEXT_MAX bytes */
} shop_field_kind;

typedef struct shop_field {
    const char *name;
    shop_field_kind kind;
    int64_t min;     /* INT: the smallest valid value */
    bool optional;   /* may be absent or null */
} shop_field;

#define SHOP_BODY_FIELDS 4

typedef struct shop_body {
    json_t *doc;                          /* owned: body_free() */
    bool present[SHOP_BODY_FIELDS];
    int64_t num[SHOP_BODY_FIELDS];        /* INT fields */
    const char *text[SHOP_BODY_FIELDS];   /* TEXT fields, borrowed from doc */
} shop_body;

/* Parses the request's body against `fields` (at most SHOP_BODY_FIELDS, in
   the order their errors are reported).  False: the 400/422 is in ctx->res
   and *out holds nothing to free. */
bool body_parse(shop_ctx *ctx, const shop_field *fields, int n, shop_body *out);
void body_free(shop_body *b);

/* ---- auth (auth.c) ----------------------------------------------------------- */

/* Base64url of 32 random bytes: the secret half of an account token. */
#define SHOP_SECRET_LEN 43

/* Hashes the admin token into app (NULL or "" leaves no admin) and makes
   its cache of account lookups.  auth_fini frees what it made. */
bool auth_init(shop_app *app, const char *admin_token);
void auth_fini(shop_app *app);
/* Drops what the cache knows of account `id` (just created here). */
void auth_forget(shop_app *app, int64_t id);
/* Sets ctx->role (and account_id) from the Authorization header, looking
   account tokens up in the database.  False: the database failed and the
   503 is in ctx->res. */
bool auth_identify(shop_ctx *ctx);
/* A new secret (NUL-terminated) and the hash stored for it.  False when
   libsodium could not be initialised. */
bool auth_secret_new(char secret[SHOP_SECRET_LEN + 1],
                     unsigned char hash[SHOP_HASH_BYTES]);
/* The caller is the admin or `account_id`'s owner; replies nothing. */
bool auth_acts_for(const shop_ctx *ctx, int64_t account_id);
/* 403 unless the caller is the admin or `account_id`'s owner. */
bool auth_may_act_for(shop_ctx *ctx, int64_t account_id);

/* ---- transactions and rows (store.c) ----------------------------------------- */

/* An int64 as a text parameter. */
typedef struct shop_num {
    char s[24];
} shop_num;
shop_num num_of(int64_t v);

/* The engine a write of this request runs on (by its strategy). */
pgtx_engine *engine_for(const shop_ctx *ctx);

/* pgtx_run plus, for write routes, Pgtx-Retries, the strategy and the
   metrics.  Returns the status; *err says more. */
pgtx_status run_raw(shop_ctx *ctx, pgtx_engine *engine, pgtx_tx_fn fn,
                    void *arg, pgtx_run_info *info, pgtx_error *err);
/* run_raw for a transaction that may commit having changed nothing (an
   atomic write whose guard said no): `wrote(arg)` says whether it changed
   anything, and the metrics count it as committed only then. */
pgtx_status run_counted(shop_ctx *ctx, pgtx_engine *engine, pgtx_tx_fn fn,
                        void *arg, bool (*wrote)(const void *arg),
                        pgtx_run_info *info, pgtx_error *err);
/*
 * A write whose atomic form is one statement sent with its COMMIT, which a
 * business rule refuses by making it change nothing or fail: how to tell a
 * refusal and how to explain one (a read-only transaction that finds the
 * fault, or OK when nothing is wrong any more).
 */
typedef struct shop_refusable {
    pgtx_tx_fn write;
    pgtx_tx_fn explain;
    bool (*wrote)(const void *arg);
    bool (*refused)(pgtx_status st, const pgtx_error *err, const void *arg);
    const char *what; /* "order": for the 503's message */
} shop_refusable;

/* Runs w->write until it writes, fails, or is refused for a reason its
   explanation gives (PGTX_ABORTED with the fault).  A refusal that no rule
   explains, 3 times in a row, is answered here (503 retry_exhausted) and
   sets *answered. */
pgtx_status run_refusable(shop_ctx *ctx, const shop_refusable *w, void *arg,
                          bool *answered, pgtx_run_info *info, pgtx_error *err);
/* For run_refusable_from: no write ran yet. */
#define SHOP_NOT_RUN ((pgtx_status)-1)
/* The same after a first w->write already ran (in a batch): its status
   `first`, its error in *err and its outcome in arg. */
pgtx_status run_refusable_from(shop_ctx *ctx, const shop_refusable *w, void *arg,
                               pgtx_status first, bool *answered,
                               pgtx_run_info *info, pgtx_error *err);
/* run_raw that answers every failure: true when it committed. */
/* A write's commit position (pgtx_run_info.commit_lsn) into the answer's
   Pgtx-Commit-LSN: the furthest of the request's transactions. */
void note_commit_lsn(shop_response *res, pgtx_status st, const pgtx_run_info *info);
bool run_tx(shop_ctx *ctx, pgtx_engine *engine, pgtx_tx_fn fn, void *arg,
            const shop_fault *fault);

/* Row `row` of `r` as an object keyed by column name, its first `ncols`
   columns (-1: all): int8/int4 as integers, text as strings, NULL as null.
   NULL when out of memory or a value does not convert. */
json_t *row_json(const PGresult *r, int row, int ncols);
/* Replies with row 0 of `r` (not freed). */
void reply_row(shop_response *res, int status, const PGresult *r);

/* The columns of each resource as the API shows them, in its order. */
#define ACCOUNT_COLUMNS "id, name, balance, version"
#define PRODUCT_COLUMNS "id, name, price, stock, version"
#define COUPON_COLUMNS "id, code, discount, quantity, remaining"
#define ORDER_COLUMNS                                                          \
    "id, account_id, product_id, quantity, unit_price, discount, total, "    \
    "coupon_id"

/* A column of one row that the strategies change by a delta: how the
   read-modify-write strategies read it.  The writes are each route's own
   statement, which changes the row and everything that goes with it at
   once (atomic: in place; the others: to the value computed here). */
typedef struct counter_sql {
    const char *what;     /* "account" — for messages */
    const char *read;     /* $1 id: value, version */
    const char *lock;     /* the same, the row locked FOR NO KEY UPDATE */
} counter_sql;

extern const counter_sql COUNTER_BALANCE;   /* account.balance */
extern const counter_sql COUNTER_STOCK;     /* product.stock */
extern const counter_sql COUNTER_REMAINING; /* coupon.remaining */

typedef enum counter_result {
    COUNTER_DONE,
    COUNTER_MISSING,  /* no such row */
    COUNTER_FLOOR,    /* it would go below 0 */
    COUNTER_OVERFLOW  /* it would not fit in 64 bits */
} counter_result;

/* Queues the read of a read-modify-write strategy (`lock` takes the row
   lock); *out gets it when the round is read (pgtx_flush). */
pgtx_status counter_queue_read(pgtx_tx *tx, const counter_sql *sql,
                               pgtx_strategy s, const char *id, PGresult **out,
                               pgtx_error *err);
/* That read plus `delta`: MISSING (no row), FLOOR (below 0), OVERFLOW, or
   DONE with the new value in *next and the version read in *version. */
counter_result counter_next(const PGresult *read, int64_t delta, int64_t *next,
                            int64_t *version);
/* The write of a read-modify-write strategy: queued, so that it leaves
   with COMMIT in one round trip; except optimistic's, which must see its
   version check hold before COMMIT: sent now, and no row back is STALE
   (the runner retries).  `sql` returns a row when it wrote. */
pgtx_status rmw_write(pgtx_tx *tx, pgtx_strategy s, const char *sql, int n,
                      const char *const *params, PGresult **out, pgtx_error *err);
/* The version a read-modify-write write checks: the one read for
   optimistic, NULL (no check) for the others. */
const char *rmw_version(pgtx_strategy s, const shop_num *version);

/* A counter that did not change (not DONE) as the fault to answer:
   MISSING 404, OVERFLOW 422 (f->overflow names what), FLOOR 409 with
   `floor_code`.  Returns PGTX_ABORTED. */
pgtx_status counter_fault(shop_fault *f, pgtx_error *err, const counter_sql *sql,
                          int64_t id, counter_result cr, const char *floor_code,
                          const char *floor_message);

/* A PGresult out-parameter emptied at the start of an attempt. */
void result_reset(PGresult **r);

/* One statement as a transaction body (pgtx_tx_fn over a stmt_arg). */
typedef struct stmt_arg {
    const char *sql;
    int n;
    const char *params[4]; /* borrowed */
    PGresult *rows;        /* out, owned by the caller */
} stmt_arg;
pgtx_status stmt_tx(pgtx_tx *tx, void *p, pgtx_error *err);

/* A 32-byte hash as a bytea parameter: "\x" and 64 hex digits. */
#define SHOP_BYTEA_HEX_LEN (2 + 2 * SHOP_HASH_BYTES)
void bytea_hex(const unsigned char hash[SHOP_HASH_BYTES],
               char out[SHOP_BYTEA_HEX_LEN + 1]);

/* A write route that adds a positive body field to a counter and records
   the change (deposit: ledger; restock: restock).  The path's id is the
   row. */
typedef struct shop_bump {
    const counter_sql *counter;
    const char *field;     /* the body's one field, an int > 0 */
    /* The change and its record in one statement, returning the row:
       atomic: $1 id, $2 delta, in place; set: $3 the new value, $4 the
       version to check or NULL. */
    const char *atomic;
    const char *set;
    const char *overflow;  /* what a 64-bit overflow overflows, for the 422 */
    /* Combined (atomic): $1 id, $2 the calls' deltas (bigint[]): the row
       after each call, one per call in order; none when there is no row.
       NULL: the route is not combined. */
    const char *batch;
} shop_bump;

/* The two statements of a shop_bump on table.col, recording the change
   with `history`, an INSERT ... SELECT from `c` (the changed row) that may
   use $2, the delta. */
#define BUMP_ATOMIC_SQL(table, col, ret, history)                              \
    "WITH c AS (UPDATE " table " SET " col " = " col " + $2::bigint,"          \
    " version = version + 1 WHERE id = $1::bigint RETURNING " ret "),"         \
    " h AS (" history ") SELECT " ret " FROM c"
#define BUMP_SET_SQL(table, col, ret, history)                                 \
    "WITH c AS (UPDATE " table " SET " col " = $3::bigint,"                    \
    " version = version + 1 WHERE id = $1::bigint"                             \
    " AND ($4::bigint IS NULL OR version = $4::bigint) RETURNING " ret "),"    \
    " h AS (" history ") SELECT " ret " FROM c"
void bump_handle(shop_ctx *ctx, const shop_bump *bump);
extern const shop_bump DEPOSIT_BUMP; /* route_accounts.c */
/* The combined form of BUMP_ATOMIC_SQL: one UPDATE by the sum of the
   deltas, `history` an INSERT ... SELECT from `c` (the changed row) and
   `d` (the calls: delta, n), and the row as each call left it. */
#define BUMP_BATCH_SQL(table, col, history)                                    \
    "WITH d AS (SELECT delta, n FROM unnest($2::bigint[]) WITH ORDINALITY"     \
    " AS d(delta, n)),"                                                        \
    " s AS (SELECT sum(delta)::bigint AS total, count(*) AS k FROM d),"        \
    " c AS (UPDATE " table " SET " col " = " col " + s.total,"                 \
    " version = version + s.k FROM s WHERE id = $1::bigint RETURNING " table ".*)," \
    " h AS (" history ")"                                                      \
    " SELECT c.id, c.name, c." col " - coalesce((SELECT sum(delta) FROM d AS"  \
    " later WHERE later.n > d.n), 0)::bigint AS " col ","                      \
    " c.version - (s.k - d.n) AS version FROM c, d, s ORDER BY d.n"


/* ---- write combining (combine.c) ---------------------------------------------- */

/* What the calls of one combined transaction share: the rows of its
   set-oriented statement, one per call in call order (NULL when the
   calls ran one by one, each with a savepoint). */
typedef struct shop_batch {
    PGresult *rows;
} shop_batch;

/*
 * A write route whose requests on one row may share a transaction.  Its
 * per-request argument (arg_size bytes, zeroed) starts with a
 * `shop_batch *batch` member, NULL when the request runs alone.
 */
typedef struct shop_combinable {
    size_t arg_size;
    const void *data; /* the route's own, given to prepare */
    /* Parses and checks the request into arg; false: answered, and arg
       holds nothing to release. */
    bool (*prepare)(shop_ctx *ctx, const void *data, void *arg);
    /* The row the request combines on: requests run together only when it
       is the same. */
    int64_t (*key)(const void *arg);
    /* atomic: set (set-oriented; batch->rows) and one; the others: one,
       which is the request's own transaction body inside a savepoint. */
    pgtx_batch_ops atomic_ops, rmw_ops;
    /* Runs the prepared request alone and answers it. */
    void (*alone)(shop_ctx *ctx, void *arg);
    /* Answers from `call` after its batch ran; `row` is its row of
       batch->rows when the set statement ran.  True when its write
       committed (for the metrics). */
    bool (*finish)(shop_ctx *ctx, void *arg, const pgtx_call *call, int row,
                   const pgtx_run_info *info);
    /* Frees what arg holds. */
    void (*release)(void *arg);
} shop_combinable;

extern const shop_combinable DEPOSIT_COMBINABLE; /* store.c */
extern const shop_combinable ORDER_COMBINABLE;   /* route_orders.c */
extern const shop_combinable CLAIM_COMBINABLE;   /* route_coupons.c */

/* A transaction body run as one call of a batch: the batch's rows (of a
   set statement tried before) no longer stand for it.  With `strategy`
   (the call's), an atomic call runs as the lock strategy does (read,
   judge, write): its refusal is then judged inside the batch, where the
   calls before it have left the rows, not after it, when the calls after
   it have changed them too. */
pgtx_status batch_one(pgtx_tx *tx, pgtx_call *call, pgtx_tx_fn body,
                      pgtx_strategy *strategy, pgtx_error *err);

/* One call's element of an array parameter: text (buf may hold it), or
   NULL for SQL NULL. */
#define BATCH_ELEM_BUF 24
typedef const char *(*batch_elem_fn)(const void *arg, char buf[BATCH_ELEM_BUF]);

/* A PostgreSQL array literal with one element per call, each in double
   quotes when `quote` (text: " and \\ escaped).  Malloc'ed (the caller
   frees); NULL when out of memory. */
char *batch_array(const pgtx_call *calls, int n, bool quote, batch_elem_fn elem);

/* Queues a batch's set statement, its rows into the batch: $1 `key`,
   then one array per elems[i] (quoted when quote[i]; quote may be NULL). */
#define BATCH_ARRAYS_MAX 5
pgtx_status batch_queue(pgtx_tx *tx, pgtx_call *calls, int n, const char *sql,
                        const char *key, const batch_elem_fn *elems,
                        const bool *quote, int nelems, pgtx_error *err);

/* The handler of a combinable route for a request that runs alone. */
void combinable_handle(shop_ctx *ctx, const shop_combinable *c);
/* n requests of route c, routed, authorized and given their strategy:
   prepares each, and runs those of one strategy and row together. */
void combine_run(const shop_combinable *c, shop_ctx *const *ctx, int n);

/* ---- route handlers (route_*.c) ------------------------------------------- */

typedef void (*shop_handler)(shop_ctx *ctx);

void accounts_create(shop_ctx *ctx);
void accounts_get(shop_ctx *ctx);
void accounts_deposit(shop_ctx *ctx);
void accounts_orders(shop_ctx *ctx);
void products_create(shop_ctx *ctx);
void products_get(shop_ctx *ctx);
void products_restock(shop_ctx *ctx);
void coupons_create(shop_ctx *ctx);
void coupons_get(shop_ctx *ctx);
void coupons_claim(shop_ctx *ctx);
void orders_create(shop_ctx *ctx);
void orders_get(shop_ctx *ctx);
void docs_openapi(shop_ctx *ctx);

/* GET of one row by the path's id on the read-only engine: replies 200 with
   it, or 404 "<what> <id> not found".  *out (may be NULL) keeps the row for
   the caller to check before replying — then nothing is replied on success
   and the caller PQclears. */
bool fetch_by_id(shop_ctx *ctx, const char *sql, const char *what,
                 PGresult **out);

/* ---- migrations (generated from sql/ by embed_sql.cmake) ------------------- */

typedef struct shop_migration {
    int version;       /* NNN of NNN_what.sql */
    const char *name;  /* the file name */
    const char *sql;   /* the whole script */
} shop_migration;

extern const shop_migration SHOP_MIGRATIONS[];
extern const size_t SHOP_MIGRATION_COUNT;

/* ---- docs/openapi.yaml (generated by embed_file.cmake) --------------------- */

/* The document's bytes, NUL-terminated; _LEN leaves the NUL out. */
extern const unsigned char SHOP_OPENAPI_YAML[];
extern const size_t SHOP_OPENAPI_YAML_LEN;

#endif
