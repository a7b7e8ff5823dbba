/*
 * test_alloc_fail.c — every allocation of libpgtx and of pgtx-shop's domain
 * side made to fail, one at a time, against a real PostgreSQL.
 *
 * How: this program is linked with -Wl,--wrap=malloc,calloc,realloc,strdup,
 * strndup (tests/CMakeLists.txt), so that the calls made by the code linked
 * into it statically (libpgtx, pgtx_shop_core, this file) reach __wrap_*
 * below; jansson's allocations reach the same counter through
 * json_set_alloc_funcs().  A sweep runs one path with its n-th allocation
 * failing, for n = 1, 2, ... until a run makes fewer than n allocations.
 * Every run must end cleanly: PGTX_NOMEM from the library (or OK, where the
 * library can do without: a statement cache entry); from the service, the
 * route's own answer or 503 overloaded with Retry-After (API.md's answer
 * when the server runs out of memory).  Never a crash, never a connection
 * kept checked out, never a leak: LeakSanitizer checks that at exit in the
 * ASan build.  The number of allocations of each path (= failures
 * injected) is printed.
 *
 * Not injected: the allocations that libpq, libsodium and libc make inside
 * themselves (shared libraries, which --wrap does not reach).  Only the
 * n-th allocation fails, not every one from n on: a sustained shortage is
 * not simulated.
 *
 * Everything runs in a schema of its own (PGOPTIONS sets the pools'
 * search_path), so the test can share a server with others.
 */
#include "harness.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "app_internal.h" /* auth_forget: make the token lookup happen */
#include "shop.h"

/* ---- the failing allocator ---------------------------------------------------- */

void *__real_malloc(size_t size);
void *__real_calloc(size_t n, size_t size);
void *__real_realloc(void *p, size_t size);
char *__real_strdup(const char *s);
char *__real_strndup(const char *s, size_t n);
void *__wrap_malloc(size_t size);
void *__wrap_calloc(size_t n, size_t size);
void *__wrap_realloc(void *p, size_t size);
char *__wrap_strdup(const char *s);
char *__wrap_strndup(const char *s, size_t n);

/* One thread only: neither the library nor the app starts threads here. */
static struct {
    bool armed;
    long calls;   /* allocations since arm() */
    long fail_at; /* the one that fails */
    bool fired;   /* it happened */
} oom;

static bool oom_now(void)
{
    if (!oom.armed || ++oom.calls != oom.fail_at)
        return false;
    oom.fired = true;
    errno = ENOMEM;
    return true;
}

void *__wrap_malloc(size_t size) { return oom_now() ? NULL : __real_malloc(size); }

void *__wrap_calloc(size_t n, size_t size)
{
    return oom_now() ? NULL : __real_calloc(n, size);
}

void *__wrap_realloc(void *p, size_t size)
{
    return oom_now() ? NULL : __real_realloc(p, size);
}

char *__wrap_strdup(const char *s) { return oom_now() ? NULL : __real_strdup(s); }

char *__wrap_strndup(const char *s, size_t n)
{
    return oom_now() ? NULL : __real_strndup(s, n);
}

static void *json_alloc(size_t size) { return __wrap_malloc(size); }

static void arm(void)
{
    oom.calls = 0;
    oom.armed = true;
}

static void disarm(void) { oom.armed = false; }

/* The most allocations a path may make (far above any: tens), and the
   longest a sweep may take (they take seconds under ASan). */
#define MAX_FAILURES 3000
#define SWEEP_MAX_MS 60000

static long injected_total;

typedef void (*path_fn)(const char *name, long n, void *arg);

/* Runs path(n) with allocation n failing, n = 1, 2, ..., until a run
   allocates fewer than n times.  Returns how many failures were injected. */
static long sweep(const char *name, path_fn path, void *arg)
{
    int64_t t0 = h_now_ms();
    for (long n = 1; n <= MAX_FAILURES; n++) {
        oom.fail_at = n;
        oom.fired = false;
        path(name, n, arg);
        assert_false(oom.armed);
        if (h_now_ms() - t0 > SWEEP_MAX_MS)
            fail_msg("%s: more than %d ms, at allocation %ld", name, SWEEP_MAX_MS, n);
        if (oom.fired)
            continue;
        /* A path that allocates nothing tests nothing (or --wrap is off). */
        if (n == 1)
            fail_msg("%s: no allocation went through the wrapper", name);
        printf("alloc_fail: %-44s %4ld allocations, each failed once: clean (%lld ms)\n",
               name, n - 1, (long long)(h_now_ms() - t0));
        fflush(stdout);
        injected_total += n - 1;
        return n - 1;
    }
    fail_msg("%s: still allocating after %d failures", name, MAX_FAILURES);
    return 0;
}

/* ---- the library ------------------------------------------------------------- */

static struct {
    PGconn *pg; /* side connection, in the test's schema */
    char schema[64];
    pgtx_pool *pool; /* the service's */
    shop_app *app;
} S;

/* OK, or PGTX_NOMEM with *err saying so, and only when a failure was
   injected. */
static void expect_clean(const char *name, long n, pgtx_status st,
                         const pgtx_error *err)
{
    if (st == PGTX_OK)
        return;
    if (st != PGTX_NOMEM || !oom.fired || err->status != PGTX_NOMEM ||
        err->message[0] == '\0')
        fail_msg("%s, allocation %ld failed: %s (%s), want OK or PGTX_NOMEM", name,
                 n, pgtx_status_name(st), err->message);
}

/* Nothing borrowed, nobody waiting, every open connection idle. */
static void expect_pool_clean(const char *name, long n, pgtx_pool *pool)
{
    pgtx_pool_stats s;
    pgtx_pool_stats_get(pool, &s);
    if (s.in_use != 0 || s.waiting != 0 || s.open != s.idle)
        fail_msg("%s, allocation %ld failed: pool left open=%d idle=%d in_use=%d "
                 "waiting=%d", name, n, s.open, s.idle, s.in_use, s.waiting);
}

/* One connection, no back-off after a failed connect (the next run
   connects at once), and a statement cache of 2, so that the paths below
   (3 statements) evict and DEALLOCATE too. */
static void lib_config(pgtx_pool_config *cfg)
{
    h_pool_config(cfg, 1, 0, "test_alloc_fail");
    cfg->connect_retry_ms = 0;
    cfg->statement_cache_size = 2;
}

static pgtx_pool *lib_pool(void)
{
    pgtx_pool_config cfg;
    lib_config(&cfg);
    return h_pool_from(&cfg);
}

static void path_pool_create(const char *name, long n, void *arg)
{
    (void)arg;
    pgtx_pool_config cfg;
    lib_config(&cfg);
    pgtx_pool *pool = NULL;
    pgtx_error err;
    memset(&err, 0, sizeof err);
    arm();
    pgtx_status st = pgtx_pool_create(&cfg, &pool, &err);
    pgtx_pool_destroy(pool);
    disarm();
    expect_clean(name, n, st, &err);
    if (st != PGTX_OK)
        assert_null(pool);
}

static void path_engine_create(const char *name, long n, void *arg)
{
    pgtx_engine *e = NULL;
    pgtx_error err;
    memset(&err, 0, sizeof err);
    arm();
    pgtx_status st = pgtx_engine_create(arg, NULL, &e, &err);
    disarm();
    expect_clean(name, n, st, &err);
    if (st == PGTX_OK)
        assert_non_null(strstr(pgtx_engine_begin_sql_borrow(e), "BEGIN"));
    else
        assert_null(e);
    pgtx_engine_destroy(e);
}

/* The pool still works after whatever happened. */
static void expect_pool_works(pgtx_pool *pool)
{
    pgtx_conn *c = NULL;
    pgtx_error err;
    pgtx_status st = pgtx_pool_checkout(pool, -1, &c, &err);
    if (st != PGTX_OK)
        fail_msg("the pool is broken after the failure: %s", err.message);
    pgtx_pool_return(c);
}

/* Checkout of a pool's first connection (it connects), a statement on it,
   and its return. */
static void path_checkout(const char *name, long n, void *arg)
{
    (void)arg;
    pgtx_pool *pool = lib_pool();
    pgtx_conn *c = NULL;
    pgtx_error err;
    memset(&err, 0, sizeof err);
    bool ran = false;
    arm();
    pgtx_status st = pgtx_pool_checkout(pool, -1, &c, &err);
    if (st == PGTX_OK) {
        PGresult *r = PQexec(pgtx_conn_pg_borrow(c), "SELECT 1");
        ran = PQresultStatus(r) == PGRES_TUPLES_OK;
        PQclear(r);
        pgtx_pool_return(c);
    }
    disarm();
    expect_clean(name, n, st, &err);
    if (st == PGTX_OK)
        assert_true(ran);
    expect_pool_clean(name, n, pool);
    expect_pool_works(pool);
    pgtx_pool_destroy(pool);
}

typedef struct lib_tx {
    char tag[24];
    PGresult *row; /* the queued SELECT's, read with COMMIT */
} lib_tx;

/* An INSERT, an optimistic UPDATE that must change exactly one row, and a
   SELECT queued to leave with COMMIT; on attempt 1, with `fail_once`, a
   serialization failure (40001) after the INSERT, which the runner retries. */
static pgtx_status tx_body(pgtx_tx *tx, lib_tx *a, bool fail_once, pgtx_error *err)
{
    const char *params[1] = {a->tag};
    PQclear(a->row);
    a->row = NULL;
    pgtx_status st = pgtx_query(tx, "INSERT INTO oom_t (tag, v) VALUES ($1, 0)", 1,
                                params, NULL, err);
    if (st == PGTX_OK && fail_once && pgtx_tx_attempt(tx) == 1)
        st = pgtx_query(tx, "DO $$BEGIN RAISE EXCEPTION 'forced conflict'"
                            " USING ERRCODE = '40001'; END$$", 0, NULL, NULL, err);
    if (st == PGTX_OK)
        st = pgtx_query_expect(tx, "UPDATE oom_t SET v = v + 1 WHERE tag = $1", 1,
                               params, 1, NULL, err);
    if (st == PGTX_OK)
        st = pgtx_queue(tx, "SELECT v FROM oom_t WHERE tag = $1", 1, params,
                        &a->row, err);
    return st;
}

static pgtx_status commit_tx(pgtx_tx *tx, void *p, pgtx_error *err)
{
    return tx_body(tx, p, false, err);
}

static pgtx_status retry_tx(pgtx_tx *tx, void *p, pgtx_error *err)
{
    return tx_body(tx, p, true, err);
}

typedef struct run_case {
    pgtx_tx_fn fn;
    int attempts; /* when it commits */
    long base;    /* tags of this path: base + n */
} run_case;

/* pgtx_run on a new pool (it connects, prepares, evicts): OK with its row
   once, or NOMEM with nothing written. */
static void path_run(const char *name, long n, void *arg)
{
    const run_case *rc = arg;
    pgtx_pool *pool = lib_pool();
    pgtx_engine *e = h_engine(pool, PGTX_READ_COMMITTED);
    lib_tx a = {.row = NULL};
    snprintf(a.tag, sizeof a.tag, "%ld", rc->base + n);
    pgtx_run_info info = {0};
    pgtx_error err;
    memset(&err, 0, sizeof err);
    arm();
    pgtx_status st = pgtx_run(e, rc->fn, &a, &info, &err);
    disarm();
    expect_clean(name, n, st, &err);
    long long rows = h_scalarf(S.pg, "SELECT count(*) FROM oom_t WHERE tag = %s AND v = 1",
                               a.tag);
    if (rows != (st == PGTX_OK ? 1 : 0))
        fail_msg("%s, allocation %ld failed: %s and %lld rows", name, n,
                 pgtx_status_name(st), rows);
    if (st == PGTX_OK && (info.attempts != rc->attempts || a.row == NULL ||
                          strcmp(PQgetvalue(a.row, 0, 0), "1") != 0))
        fail_msg("%s, allocation %ld failed: committed in %d attempts, row %s", name,
                 n, info.attempts, a.row ? "read" : "missing");
    PQclear(a.row);
    expect_pool_clean(name, n, pool);
    expect_pool_works(pool);
    pgtx_engine_destroy(e);
    pgtx_pool_destroy(pool);
}

static void test_library(void **state)
{
    (void)state;
    h_exec(S.pg, "CREATE TABLE oom_t (tag bigint PRIMARY KEY, v int NOT NULL)");
    sweep("pgtx_pool_create + destroy", path_pool_create, NULL);
    pgtx_pool *pool = lib_pool();
    sweep("pgtx_engine_create", path_engine_create, pool);
    pgtx_pool_destroy(pool);
    sweep("checkout (connects) + return", path_checkout, NULL);
    run_case commit = {commit_tx, 1, 1000000};
    sweep("pgtx_run: commit (connect, prepare, evict)", path_run, &commit);
    run_case retry = {retry_tx, 2, 2000000};
    sweep("pgtx_run: 40001, retried, commit", path_run, &retry);
}

/* ---- the service --------------------------------------------------------------- */

#define ADMIN "alloc-fail-admin-token-1c9e"
#define ADMIN_AUTH "Bearer " ADMIN

static void app_config(shop_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->strategy = PGTX_STRATEGY_ATOMIC;
    cfg->allow_unsafe = true; /* for the naive strategy's order */
    cfg->lock_timeout_ms = 5000;
}

static void path_app_create(const char *name, long n, void *arg)
{
    shop_config cfg;
    app_config(&cfg);
    shop_app *app = NULL;
    pgtx_error err;
    memset(&err, 0, sizeof err);
    arm();
    pgtx_status st = shop_app_create(arg, NULL, &cfg, ADMIN, &app, &err);
    shop_app_destroy(app);
    disarm();
    expect_clean(name, n, st, &err);
    if (st != PGTX_OK)
        assert_null(app);
}

static shop_app *app_new(pgtx_pool *pool)
{
    shop_config cfg;
    app_config(&cfg);
    shop_app *app = NULL;
    pgtx_error err;
    if (shop_app_create(pool, NULL, &cfg, ADMIN, &app, &err) != PGTX_OK)
        fail_msg("shop_app_create: %s", err.message);
    return app;
}

/* One request; the body parsed (NULL when it is not JSON). */
typedef struct answer {
    shop_response res;
    json_t *doc;
} answer;

static answer handle(shop_app *app, const shop_request *q, bool armed)
{
    answer a;
    memset(&a, 0, sizeof a);
    if (armed)
        arm();
    shop_app_handle(app, q, &a.res);
    disarm();
    a.doc = a.res.body ? json_loads(a.res.body, 0, NULL) : NULL;
    return a;
}

static void answer_free(answer *a)
{
    json_decref(a->doc);
    free(a->res.body);
    memset(a, 0, sizeof *a);
}

static const char *error_field(const answer *a, const char *key)
{
    return json_string_value(json_object_get(json_object_get(a->doc, "error"), key));
}

/* What a request must answer with its n-th allocation failing: what it
   answers when none fails (`status`, with `code` for an error path or the
   JSON `fields` for a success), or 503 overloaded, retry in 1 s. */
typedef struct expect {
    int status;
    const char *code;
    const char *fields[4];
    bool yaml; /* the body is not JSON */
} expect;

static bool answer_is(const answer *a, const expect *x)
{
    if (a->res.status != x->status)
        return false;
    if (x->yaml)
        return a->res.body != NULL;
    if (a->doc == NULL)
        return false;
    const char *code = error_field(a, "code");
    if (x->code)
        return code && strcmp(code, x->code) == 0;
    for (int i = 0; i < 4 && x->fields[i]; i++)
        if (json_object_get(a->doc, x->fields[i]) == NULL)
            return false;
    return code == NULL;
}

static bool answer_is_oom(const answer *a)
{
    const char *code = error_field(a, "code"), *msg = error_field(a, "message");
    return oom.fired && a->res.status == 503 && a->res.retry_after == 1 && code &&
           strcmp(code, "overloaded") == 0 && msg && msg[0];
}

/* An error body's code is the one the logs get (res.code), and its message
   is the route's, not a fallback for a message that jansson refused. */
static bool error_consistent(const answer *a)
{
    const char *code = error_field(a, "code"), *msg = error_field(a, "message");
    if (code == NULL)
        return true;
    return a->res.code && strcmp(a->res.code, code) == 0 && msg &&
           strstr(msg, "not valid UTF-8") == NULL;
}

static void expect_answer(const char *name, long n, answer *a, const expect *x)
{
    if ((!answer_is(a, x) && !answer_is_oom(a)) || !error_consistent(a))
        fail_msg("%s, allocation %ld failed: got %d %s", name, n, a->res.status,
                 a->res.body ? a->res.body : "(no body)");
    answer_free(a);
}

/* A request of the sweep: its set-up (unarmed) fills q for run n. */
typedef struct req_case {
    void (*prepare)(struct req_case *c, long n);
    shop_request q;
    expect x;
    char path[96], body[256], key[64];
    const char *strategy;
} req_case;

static void q_post(req_case *c, const char *path, const char *body)
{
    snprintf(c->path, sizeof c->path, "%s", path);
    snprintf(c->body, sizeof c->body, "%s", body);
    c->q = (shop_request){.method = "POST", .path = c->path, .body = c->body,
                          .body_len = strlen(c->body), .authorization = ADMIN_AUTH,
                          .strategy = c->strategy};
}

static void q_get(req_case *c, const char *path, const char *authorization)
{
    snprintf(c->path, sizeof c->path, "%s", path);
    c->q = (shop_request){.method = "GET", .path = c->path,
                          .authorization = authorization};
}

/* Set-up requests: must succeed; returns the body's integer `field`. */
static long long must(const shop_request *q, int status, const char *field)
{
    answer a = handle(S.app, q, false);
    json_t *v = json_object_get(a.doc, field);
    if (a.res.status != status || !json_is_integer(v))
        fail_msg("set-up %s %s: %d %s", q->method, q->path, a.res.status,
                 a.res.body ? a.res.body : "(no body)");
    long long out = (long long)json_integer_value(v);
    answer_free(&a);
    return out;
}

static long long post(const char *path, const char *body, const char *field)
{
    shop_request q = {.method = "POST", .path = path, .body = body,
                      .body_len = strlen(body), .authorization = ADMIN_AUTH};
    return must(&q, 201, field);
}

/* The fixtures: one rich account (and its token), one product, one order;
   another account with two orders (its list stays short). */
static struct {
    long long account, product, order, lister, third;
    char token_auth[128];
} F;

static void fixtures(void)
{
    shop_request q = {.method = "POST", .path = "/v1/accounts",
                      .body = "{\"name\":\"oom\",\"balance\":1000000000}",
                      .authorization = ADMIN_AUTH};
    q.body_len = strlen(q.body);
    answer a = handle(S.app, &q, false);
    const char *token = json_string_value(json_object_get(a.doc, "token"));
    if (a.res.status != 201 || token == NULL)
        fail_msg("set-up account: %d", a.res.status);
    F.account = (long long)json_integer_value(json_object_get(a.doc, "id"));
    snprintf(F.token_auth, sizeof F.token_auth, "Bearer %s", token);
    answer_free(&a);
    F.product = post("/v1/products", "{\"name\":\"p\",\"price\":1,\"stock\":1000000000}",
                     "id");
    char body[128];
    snprintf(body, sizeof body, "{\"account_id\":%lld,\"product_id\":%lld,\"quantity\":1}",
             F.account, F.product);
    F.order = post("/v1/orders", body, "id");
    F.lister = post("/v1/accounts", "{\"name\":\"l\",\"balance\":100}", "id");
    F.third = post("/v1/accounts", "{\"name\":\"t\",\"balance\":100}", "id");
    snprintf(body, sizeof body, "{\"account_id\":%lld,\"product_id\":%lld,\"quantity\":1}",
             F.lister, F.product);
    post("/v1/orders", body, "id");
    post("/v1/orders", body, "id");
}

/* A new coupon; with `claim`, claimed by the fixture account. */
static long long coupon_new(long n, bool claim)
{
    static long seq;
    char body[128], path[64];
    snprintf(body, sizeof body, "{\"code\":\"fix-%ld-%ld\",\"discount\":1,\"quantity\":5}",
             n, ++seq);
    long long id = post("/v1/coupons", body, "id");
    if (claim) {
        snprintf(path, sizeof path, "/v1/coupons/%lld/claims", id);
        snprintf(body, sizeof body, "{\"account_id\":%lld}", F.account);
        post(path, body, "coupon_id");
    }
    return id;
}

static void prep_account(req_case *c, long n)
{
    (void)n;
    q_post(c, "/v1/accounts", "{\"name\":\"a\",\"balance\":100}");
}

static void prep_product(req_case *c, long n)
{
    (void)n;
    q_post(c, "/v1/products", "{\"name\":\"p\",\"price\":3,\"stock\":10}");
}

static void prep_coupon(req_case *c, long n)
{
    char body[128];
    snprintf(body, sizeof body, "{\"code\":\"oom-%ld\",\"discount\":1,\"quantity\":5}", n);
    q_post(c, "/v1/coupons", body);
}

static void prep_deposit(req_case *c, long n)
{
    (void)n;
    char path[64];
    snprintf(path, sizeof path, "/v1/accounts/%lld/deposits", F.account);
    q_post(c, path, "{\"amount\":1}");
}

static void prep_order(req_case *c, long n)
{
    char body[160];
    snprintf(body, sizeof body, "{\"account_id\":%lld,\"product_id\":%lld,\"quantity\":1}",
             F.account, F.product);
    q_post(c, "/v1/orders", body);
    /* a key of its own each run: the key's path (hash, unique index) too */
    snprintf(c->key, sizeof c->key, "oom-%s-%ld", c->strategy ? c->strategy : "default", n);
    c->q.idempotency_key = c->key;
}

static void prep_order_coupon(req_case *c, long n)
{
    char body[200];
    snprintf(body, sizeof body, "{\"account_id\":%lld,\"product_id\":%lld,\"quantity\":1,"
             "\"coupon_id\":%lld}", F.account, F.product, coupon_new(n, true));
    q_post(c, "/v1/orders", body);
    c->q.authorization = F.token_auth;
}

/* The key and request of an order made before the sweep: a replay (200). */
static void prep_order_replay(req_case *c, long n)
{
    (void)n;
    char body[160];
    snprintf(body, sizeof body, "{\"account_id\":%lld,\"product_id\":%lld,\"quantity\":2}",
             F.account, F.product);
    q_post(c, "/v1/orders", body);
    snprintf(c->key, sizeof c->key, "oom-replay");
    c->q.idempotency_key = c->key;
}

static void prep_claim(req_case *c, long n)
{
    char path[64], body[64];
    snprintf(path, sizeof path, "/v1/coupons/%lld/claims", coupon_new(n, false));
    snprintf(body, sizeof body, "{\"account_id\":%lld}", F.account);
    q_post(c, path, body);
    c->q.authorization = F.token_auth;
}

static void prep_get_account(req_case *c, long n)
{
    (void)n;
    char path[64];
    snprintf(path, sizeof path, "/v1/accounts/%lld", F.account);
    q_get(c, path, ADMIN_AUTH);
}

/* An account token, its lookup forgotten: the database is asked each run. */
static void prep_get_order(req_case *c, long n)
{
    (void)n;
    char path[64];
    snprintf(path, sizeof path, "/v1/orders/%lld", F.order);
    q_get(c, path, F.token_auth);
    auth_forget(S.app, F.account);
}

static void prep_list_orders(req_case *c, long n)
{
    (void)n;
    char path[64];
    snprintf(path, sizeof path, "/v1/accounts/%lld/orders", F.lister);
    q_get(c, path, ADMIN_AUTH);
}

static void prep_bad_json(req_case *c, long n)
{
    (void)n;
    q_post(c, "/v1/accounts", "{\"name\": \"a\", \"balance\": ");
}

static void prep_openapi(req_case *c, long n)
{
    (void)n;
    q_get(c, "/openapi.yaml", NULL);
}

static void path_request(const char *name, long n, void *arg)
{
    req_case *c = arg;
    c->prepare(c, n);
    answer a = handle(S.app, &c->q, true);
    expect_answer(name, n, &a, &c->x);
    expect_pool_clean(name, n, S.pool);
}

/* A request on a new pool and app: the checkout connects and the token's
   lookup (an account token, an empty cache) goes to the database. */
static void path_cold_request(const char *name, long n, void *arg)
{
    req_case *c = arg;
    c->prepare(c, n);
    pgtx_pool *pool = lib_pool();
    shop_app *app = app_new(pool);
    char path[64];
    snprintf(path, sizeof path, "/v1/accounts/%lld", F.account);
    shop_request q = {.method = "GET", .path = path, .authorization = F.token_auth};
    answer a = handle(app, &q, true);
    expect_answer(name, n, &a, &c->x);
    expect_pool_clean(name, n, pool);
    shop_app_destroy(app);
    pgtx_pool_destroy(pool);
}

static void nothing(req_case *c, long n)
{
    (void)c;
    (void)n;
}

static void sweep_request(const char *name, void (*prepare)(req_case *, long),
                          const char *strategy, expect x)
{
    req_case c;
    memset(&c, 0, sizeof c);
    c.prepare = prepare;
    c.strategy = strategy;
    c.x = x;
    sweep(name, path_request, &c);
}

#define CREATED(...) ((expect){.status = 201, .fields = {__VA_ARGS__}})
#define FOUND(...) ((expect){.status = 200, .fields = {__VA_ARGS__}})

static void sweep_orders(void)
{
    static const char *const STRATEGIES[] = {"atomic", "lock", "optimistic",
                                             "serializable", "naive"};
    char name[64];
    for (int i = 0; i < 5; i++) {
        snprintf(name, sizeof name, "POST /v1/orders (%s, key)", STRATEGIES[i]);
        sweep_request(name, prep_order, STRATEGIES[i],
                      CREATED("id", "total", "unit_price"));
    }
    sweep_request("POST /v1/orders (coupon, account token)", prep_order_coupon, NULL,
                  CREATED("id", "coupon_id", "discount"));
    /* the first answer without failure stores it; then the replays */
    answer a;
    req_case c = {.strategy = NULL};
    prep_order_replay(&c, 0);
    a = handle(S.app, &c.q, false);
    assert_int_equal(a.res.status, 201);
    answer_free(&a);
    sweep_request("POST /v1/orders (replay of its key)", prep_order_replay, NULL,
                  FOUND("id", "total"));
}

/* Three requests of one row handed over together (write combining): each
   answers as it would alone, or 503 overloaded. */
#define BATCH_N 3
#define BATCH_RUNS (BATCH_N * 1000000L)

typedef struct batch_case {
    req_case c[BATCH_N];
} batch_case;

static void path_batch(const char *name, long n, void *arg)
{
    batch_case *b = arg;
    const shop_request *q[BATCH_N];
    shop_response *r[BATCH_N];
    answer a[BATCH_N];
    memset(a, 0, sizeof a);
    for (int i = 0; i < BATCH_N; i++) {
        /* past the single requests' run numbers: keys of their own */
        b->c[i].prepare(&b->c[i], BATCH_RUNS + n * BATCH_N + i);
        q[i] = &b->c[i].q;
        r[i] = &a[i].res;
    }
    arm();
    shop_app_handle_batch(S.app, q, r, BATCH_N);
    disarm();
    for (int i = 0; i < BATCH_N; i++) {
        a[i].doc = a[i].res.body ? json_loads(a[i].res.body, 0, NULL) : NULL;
        expect_answer(name, n, &a[i], &b->c[i].x);
    }
    expect_pool_clean(name, n, S.pool);
}

/* Claims of one new coupon by three accounts (the prepare of the first
   makes the coupon): each is made, whichever of the others failed. */
static long long batch_coupon;

static void prep_claim_batch(req_case *c, long n)
{
    char path[64], body[64];
    long long who[BATCH_N] = {F.account, F.lister, F.third};
    if (n % BATCH_N == 0)
        batch_coupon = coupon_new(n, false);
    snprintf(path, sizeof path, "/v1/coupons/%lld/claims", batch_coupon);
    snprintf(body, sizeof body, "{\"account_id\":%lld}", who[n % BATCH_N]);
    q_post(c, path, body);
}

static void sweep_batch(const char *name, void (*prepare)(req_case *, long),
                        const char *strategy, const expect *x)
{
    batch_case b;
    memset(&b, 0, sizeof b);
    for (int i = 0; i < BATCH_N; i++)
        b.c[i] = (req_case){.prepare = prepare, .strategy = strategy, .x = x[i]};
    sweep(name, path_batch, &b);
}

static void sweep_batches(void)
{
    static const char *const STRATEGIES[] = {"atomic", "lock"};
    char name[80];
    for (int i = 0; i < 2; i++) {
        expect found[BATCH_N] = {FOUND("id", "balance"), FOUND("id", "balance"),
                                 FOUND("id", "balance")};
        snprintf(name, sizeof name, "3 deposits, one transaction (%s)", STRATEGIES[i]);
        sweep_batch(name, prep_deposit, STRATEGIES[i], found);
        expect created[BATCH_N] = {CREATED("id", "total"), CREATED("id", "total"),
                                   CREATED("id", "total")};
        snprintf(name, sizeof name, "3 orders, one transaction (%s, keys)", STRATEGIES[i]);
        sweep_batch(name, prep_order, STRATEGIES[i], created);
        expect claims[BATCH_N] = {CREATED("coupon_id"), CREATED("coupon_id"),
                                  CREATED("coupon_id")};
        snprintf(name, sizeof name, "3 claims, one transaction (%s)", STRATEGIES[i]);
        sweep_batch(name, prep_claim_batch, STRATEGIES[i], claims);
    }
}

/* API.md's invariants hold whatever was cut short. */
static void check_invariants(void)
{
    h_check_shop_invariants(S.pg, false);
}

/* The fallback that the out-of-memory case must not take still works: a
   message that is not UTF-8 (a server's in Latin-1) keeps its status. */
static void expect_utf8_fallback(void)
{
    shop_response r;
    memset(&r, 0, sizeof r);
    reply_error(&r, 404, "not_found", "caf\xe9 not found");
    assert_int_equal(r.status, 404);
    assert_non_null(r.body);
    assert_non_null(strstr(r.body, "(the message is not valid UTF-8)"));
    assert_string_equal(r.code, "not_found");
    free(r.body);
}

static void test_service(void **state)
{
    (void)state;
    expect_utf8_fallback();
    pgtx_error err;
    if (shop_migrate(S.pool, &err) != PGTX_OK)
        fail_msg("shop_migrate: %s", err.message);
    sweep("shop_app_create + destroy", path_app_create, S.pool);
    S.app = app_new(S.pool);
    fixtures();
    sweep_request("POST /v1/accounts", prep_account, NULL, CREATED("id", "token", "balance"));
    sweep_request("POST /v1/products", prep_product, NULL, CREATED("id", "stock"));
    sweep_request("POST /v1/coupons", prep_coupon, NULL, CREATED("id", "remaining"));
    sweep_request("POST /v1/accounts/{id}/deposits (atomic)", prep_deposit, "atomic",
                  FOUND("id", "balance"));
    sweep_request("POST /v1/accounts/{id}/deposits (optimistic)", prep_deposit,
                  "optimistic", FOUND("id", "balance"));
    sweep_orders();
    sweep_request("POST /v1/coupons/{id}/claims (account token)", prep_claim, NULL,
                  CREATED("coupon_id", "account_id"));
    sweep_request("GET /v1/accounts/{id}", prep_get_account, NULL, FOUND("id", "balance"));
    sweep_request("GET /v1/orders/{id} (token looked up)", prep_get_order, NULL,
                  FOUND("id", "total"));
    sweep_request("GET /v1/accounts/{id}/orders", prep_list_orders, NULL, FOUND("orders"));
    sweep_request("POST /v1/accounts, bad JSON", prep_bad_json, NULL,
                  ((expect){.status = 400, .code = "malformed_json"}));
    sweep_request("GET /openapi.yaml", prep_openapi, NULL,
                  ((expect){.status = 200, .yaml = true}));
    sweep_batches();
    req_case cold = {.prepare = nothing, .x = FOUND("id", "balance")};
    sweep("GET /v1/accounts/{id}, new pool, token lookup", path_cold_request, &cold);
    check_invariants();
    printf("alloc_fail: %ld allocation failures injected in all\n", injected_total);
}

/* ---- set-up ---------------------------------------------------------------------- */

static int setup(void **state)
{
    (void)state;
    json_set_alloc_funcs(json_alloc, free);
    S.pg = h_own_schema("alloc_fail", S.schema, sizeof S.schema);
    pgtx_pool_config cfg;
    lib_config(&cfg);
    cfg.pool_size = 2;
    cfg.statement_cache_size = 256;
    S.pool = h_pool_from(&cfg);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    shop_app_destroy(S.app);
    pgtx_pool_destroy(S.pool);
    h_execf(S.pg, "RESET search_path; DROP SCHEMA %s CASCADE", S.schema);
    PQfinish(S.pg);
    json_set_alloc_funcs(malloc, free);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_library),
        cmocka_unit_test(test_service),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
