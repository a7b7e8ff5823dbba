/*
 * test_shop_app.c — pgtx-shop's domain side through shop_app_handle(), with
 * request structs and no HTTP, against a real PostgreSQL: migrations from
 * two threads at once, routing, auth, body validation, every route under
 * every strategy, all-or-nothing orders, idempotency, threaded deposits and
 * a dead database.  The invariants of API.md are checked with SQL at the end.
 *
 * Everything runs in a schema of its own (PGOPTIONS sets the pools'
 * search_path), so the test can share a server with others.
 */
#include "harness.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "app_internal.h" /* reply_failure, for the status mapping */
#include "server.h" /* row_gate */
#include "shop.h"

#define ADMIN "test-admin-token-5f8a1c"
#define BIG "99999999999999999999"
#define INT64_MAX_TEXT "9223372036854775807"

static const char *const SAFE[] = {"atomic", "lock", "optimistic", "serializable"};
#define NSAFE 4

static struct {
    pgtx_pool *pool;
    shop_app *app;    /* --allow-unsafe, default atomic */
    shop_app *strict; /* no naive */
    PGconn *pg;       /* side connection, in the test's schema */
    char schema[64];
} S;

/* ---- requests -------------------------------------------------------------------- */

typedef struct reply {
    int status, retries, retry_after;
    const char *allow, *route, *strategy;
    char *text;   /* the body as sent, owned */
    json_t *json; /* parsed, owned */
} reply;

typedef struct call {
    shop_app *app;             /* NULL: S.app */
    const char *method, *path;
    const char *token;         /* Bearer token, or NULL */
    const char *auth;          /* a raw Authorization value instead */
    const char *body;
    const char *strategy, *key;
} call;

static reply run(call c)
{
    char auth[512];
    if (c.token)
        snprintf(auth, sizeof auth, "Bearer %s", c.token);
    shop_request q = {.method = c.method, .path = c.path, .body = c.body,
                      .body_len = c.body ? strlen(c.body) : 0,
                      .authorization = c.token ? auth : c.auth,
                      .strategy = c.strategy, .idempotency_key = c.key};
    shop_response r;
    memset(&r, 0, sizeof r);
    shop_app_handle(c.app ? c.app : S.app, &q, &r);
    reply out = {r.status, r.retries, r.retry_after, r.allow, r.route, r.strategy,
                 r.body, NULL};
    if (r.body)
        out.json = json_loads(r.body, 0, NULL);
    return out;
}

#define REQ(...) run((call){__VA_ARGS__})

static void reply_free(reply *r)
{
    json_decref(r->json);
    free(r->text);
    memset(r, 0, sizeof *r);
}

static const char *code_of(const reply *r)
{
    json_t *e = json_object_get(r->json, "error");
    return json_string_value(json_object_get(e, "code"));
}

static long long field(const reply *r, const char *name)
{
    json_t *v = json_object_get(r->json, name);
    if (!json_is_integer(v))
        fail_msg("field %s missing in %s", name, r->text ? r->text : "(no body)");
    return (long long)json_integer_value(v);
}

static void expect_status(const reply *r, int status)
{
    if (r->status != status)
        fail_msg("want %d, got %d %s", status, r->status, r->text ? r->text : "");
}

/* The status and code, a non-empty message, and the reply freed. */
static void expect_error(reply r, int status, const char *code)
{
    const char *got = code_of(&r);
    json_t *e = json_object_get(r.json, "error");
    const char *msg = json_string_value(json_object_get(e, "message"));
    if (r.status != status || got == NULL || strcmp(got, code) != 0 ||
        msg == NULL || msg[0] == '\0')
        fail_msg("want %d %s, got %d %s", status, code, r.status,
                 r.text ? r.text : "(no body)");
    reply_free(&r);
}

/* ---- entities ----------------------------------------------------------------------- */

typedef struct account {
    long long id;
    char token[128];
} account;

static char *fmt(char *buf, size_t n, const char *f, ...) __attribute__((format(printf, 3, 4)));
static char *fmt(char *buf, size_t n, const char *f, ...)
{
    va_list ap;
    va_start(ap, f);
    vsnprintf(buf, n, f, ap);
    va_end(ap);
    return buf;
}

static account new_account(const char *name, long long balance)
{
    char body[256];
    reply r = REQ(.method = "POST", .path = "/v1/accounts", .token = ADMIN,
                  .body = fmt(body, sizeof body, "{\"name\":\"%s\",\"balance\":%lld}",
                              name, balance));
    expect_status(&r, 201);
    account a = {.id = field(&r, "id")};
    const char *t = json_string_value(json_object_get(r.json, "token"));
    assert_non_null(t);
    snprintf(a.token, sizeof a.token, "%s", t);
    reply_free(&r);
    return a;
}

static long long new_product(long long price, long long stock)
{
    char body[256];
    reply r = REQ(.method = "POST", .path = "/v1/products", .token = ADMIN,
                  .body = fmt(body, sizeof body,
                              "{\"name\":\"p\",\"price\":%lld,\"stock\":%lld}", price,
                              stock));
    expect_status(&r, 201);
    long long id = field(&r, "id");
    reply_free(&r);
    return id;
}

static long long new_coupon(long long discount, long long quantity)
{
    static int seq;
    char body[256];
    reply r = REQ(.method = "POST", .path = "/v1/coupons", .token = ADMIN,
                  .body = fmt(body, sizeof body,
                              "{\"code\":\"c%d\",\"discount\":%lld,\"quantity\":%lld}",
                              ++seq, discount, quantity));
    expect_status(&r, 201);
    long long id = field(&r, "id");
    reply_free(&r);
    return id;
}

static long long balance_of(long long id)
{
    return h_scalarf(S.pg, "SELECT balance FROM account WHERE id = %lld", id);
}

/* Changes anywhere show here: errors must leave it as it was. */
static long long fingerprint(void)
{
    return h_scalar(S.pg,
        "SELECT hashtext(concat_ws(',',"
        " (SELECT count(*) FROM account), (SELECT sum(balance) FROM account),"
        " (SELECT sum(version) FROM account), (SELECT count(*) FROM product),"
        " (SELECT sum(stock) FROM product), (SELECT sum(version) FROM product),"
        " (SELECT count(*) FROM restock), (SELECT count(*) FROM coupon),"
        " (SELECT sum(remaining) FROM coupon), (SELECT sum(version) FROM coupon),"
        " (SELECT count(*) FROM coupon_claim),"
        " (SELECT count(order_id) FROM coupon_claim),"
        " (SELECT count(*) FROM orders), (SELECT count(*) FROM ledger)))");
}

/* API.md's invariants; accounts named naive-* lost updates on purpose. */
static void check_invariants(void)
{
    h_check_shop_invariants(S.pg, true);
}

/* ---- set-up ----------------------------------------------------------------------- */

static shop_app *app_new(pgtx_pool *pool, bool allow_unsafe)
{
    shop_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.strategy = PGTX_STRATEGY_ATOMIC;
    cfg.allow_unsafe = allow_unsafe;
    shop_app *app = NULL;
    pgtx_error err;
    if (shop_app_create(pool, NULL, &cfg, ADMIN, &app, &err) != PGTX_OK)
        fail_msg("shop_app_create: %s", err.message);
    return app;
}

static int setup(void **state)
{
    (void)state;
    S.pg = h_own_schema("shop_app", S.schema, sizeof S.schema);
    S.pool = h_pool(8, 40, "test_shop_app");
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    shop_app_destroy(S.app);
    shop_app_destroy(S.strict);
    pgtx_pool_destroy(S.pool);
    h_execf(S.pg, "RESET search_path; DROP SCHEMA %s CASCADE", S.schema);
    PQfinish(S.pg);
    return 0;
}

/* ---- migrations ------------------------------------------------------------------ */

typedef struct migrate_job {
    pgtx_status st;
    pgtx_error err;
} migrate_job;

static void *migrate_thread(void *p)
{
    migrate_job *j = p;
    /* a pool each, as two processes starting together would have */
    pgtx_pool *pool = h_pool(1, 0, "test_shop_migrate");
    j->st = shop_migrate(pool, &j->err);
    pgtx_pool_destroy(pool);
    return NULL;
}

static void test_migrate_concurrently(void **state)
{
    (void)state;
    migrate_job jobs[2];
    memset(jobs, 0, sizeof jobs);
    h_run_threads(2, migrate_thread, jobs, sizeof jobs[0]);
    for (int i = 0; i < 2; i++)
        if (jobs[i].st != PGTX_OK)
            fail_msg("migrate %d: %s", i, jobs[i].err.message);
    long long applied = h_scalar(S.pg, "SELECT count(*) FROM schema_migrations");
    assert_true(applied >= 1);
    assert_int_equal(h_scalar(S.pg, "SELECT count(*) FROM information_schema.tables"
                                    " WHERE table_schema = current_schema()"
                                    " AND table_name IN ('account', 'product', 'restock',"
                                    " 'coupon', 'coupon_claim', 'orders', 'ledger')"), 7);
    /* once more: nothing to do */
    pgtx_error err;
    assert_int_equal(shop_migrate(S.pool, &err), PGTX_OK);
    assert_int_equal(h_scalar(S.pg, "SELECT count(*) FROM schema_migrations"), applied);
    S.app = app_new(S.pool, true);
    S.strict = app_new(S.pool, false);
}

/* ---- strategies, routing ---------------------------------------------------------- */

static void test_strategy_names(void **state)
{
    (void)state;
    for (int i = 0; i < PGTX_STRATEGY_COUNT; i++) {
        pgtx_strategy s;
        assert_true(pgtx_strategy_parse(pgtx_strategy_name((pgtx_strategy)i), &s));
        assert_int_equal(s, i);
    }
    pgtx_strategy s;
    assert_false(pgtx_strategy_parse("ATOMIC", &s));
    assert_false(pgtx_strategy_parse("", &s));
    assert_false(pgtx_strategy_parse(NULL, &s));
}

static void test_routing(void **state)
{
    (void)state;
    const char *unknown[] = {"/", "/v1", "/v1/accounts/", "/v1/accounts/1/",
                             "/v1/accounts/abc", "/v1/accounts/0", "/v1/accounts/-1",
                             ("/v1/accounts/" BIG), "/v1/accounts/9223372036854775808",
                             "/v1/accounts/007", "/v1/accounts/+1", "/v1/accounts/1.5",
                             "/v1/accounts//deposits", "/v1/accounts/1/foo",
                             "/v1/accountsx", "/v2/accounts", "/healthz/x", ""};
    for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++) {
        reply r = REQ(.method = "GET", .path = unknown[i], .token = ADMIN);
        assert_string_equal(r.route, "unknown");
        expect_error(r, 404, "not_found");
    }
    /* the largest id parses, and is simply not there */
    expect_error(REQ(.method = "GET", .path = "/v1/accounts/" INT64_MAX_TEXT,
                     .token = ADMIN), 404, "not_found");
    struct { const char *method, *path, *allow; } wrong[] = {
        {"DELETE", "/v1/accounts/1", "GET, HEAD"}, {"GET", "/v1/accounts", "POST"},
        {"GET", "/v1/accounts/1/deposits", "POST"}, {"PUT", "/v1/products", "POST"},
        {"POST", "/v1/products/1", "GET, HEAD"}, {"GET", "/v1/coupons/1/claims", "POST"},
        {"GET", "/v1/orders", "POST"}, {"PATCH", "/v1/orders/1", "GET, HEAD"},
        {"POST", "/v1/accounts/1/orders", "GET, HEAD"}};
    for (size_t i = 0; i < sizeof wrong / sizeof wrong[0]; i++) {
        /* no token at all: the route is decided before auth */
        reply r = REQ(.method = wrong[i].method, .path = wrong[i].path, .body = "{}");
        assert_non_null(r.allow);
        assert_string_equal(r.allow, wrong[i].allow);
        assert_int_equal(r.retries, -1);
        expect_error(r, 405, "method_not_allowed");
    }
}

/* ---- the rows a write changes, and the places per row in flight ---------------------- */

static shop_request_rows rows_of(const char *method, const char *path, const char *body)
{
    shop_request req = {.method = method, .path = path, .body = body,
                        .body_len = body ? strlen(body) : 0};
    shop_request_rows out;
    shop_request_rows_of(&req, &out);
    return out;
}

static void expect_row(const shop_request_rows *r, int i, shop_row_kind kind, int64_t id)
{
    assert_true(i < r->n);
    assert_int_equal(r->key[i].kind, kind);
    assert_int_equal(r->key[i].id, id);
}

static void test_request_rows(void **state)
{
    (void)state;
    shop_request_rows r = rows_of("POST", "/v1/orders",
                                  "{\"account_id\": 7, \"product_id\": 9, \"quantity\": 1}");
    assert_string_equal(r.route, "POST /v1/orders");
    assert_int_equal(r.n, 2);
    expect_row(&r, 0, SHOP_ROW_PRODUCT, 9);
    expect_row(&r, 1, SHOP_ROW_ACCOUNT, 7);
    r = rows_of("POST", "/v1/orders", "{\"account_id\":7,\"product_id\":9,\"coupon_id\":3}");
    assert_int_equal(r.n, 3);
    expect_row(&r, 2, SHOP_ROW_COUPON, 3);
    r = rows_of("POST", "/v1/accounts/12/deposits", "{\"amount\": 5}");
    assert_int_equal(r.n, 1);
    expect_row(&r, 0, SHOP_ROW_ACCOUNT, 12);
    r = rows_of("POST", "/v1/products/" INT64_MAX_TEXT "/restock", NULL);
    expect_row(&r, 0, SHOP_ROW_PRODUCT, INT64_MAX);
    r = rows_of("POST", "/v1/coupons/4/claims", "{\"account_id\": 1}");
    assert_int_equal(r.n, 1);
    expect_row(&r, 0, SHOP_ROW_COUPON, 4);
    /* what the handler refuses before any row is touched names no row */
    const char *bodies[] = {"{\"account_id\": 0, \"product_id\": -1}", "{\"product_id\": \"9\"}",
                            "[9]", "{\"product_id\": 9", "{\"product_id\":1,\"product_id\":2}",
                            "{\"product_id\": 1.0}"};
    for (size_t i = 0; i < sizeof bodies / sizeof bodies[0]; i++)
        assert_int_equal(rows_of("POST", "/v1/orders", bodies[i]).n, 0);
    /* reads, other writes, wrong methods and unknown paths: none */
    assert_int_equal(rows_of("GET", "/v1/accounts/12", NULL).n, 0);
    assert_null(rows_of("GET", "/v1/accounts/12", NULL).route);
    assert_int_equal(rows_of("POST", "/v1/accounts", "{\"name\":\"x\"}").n, 0);
    assert_int_equal(rows_of("GET", "/v1/accounts/12/deposits", NULL).n, 0);
    assert_int_equal(rows_of("POST", "/v1/accounts/012/deposits", NULL).n, 0);
    assert_int_equal(rows_of(NULL, NULL, NULL).n, 0);
}

static void test_row_gate(void **state)
{
    (void)state;
    row_gate *g = row_gate_create(2);
    assert_non_null(g);
    shop_row_key hot = {SHOP_ROW_PRODUCT, 9}, buyer = {SHOP_ROW_ACCOUNT, 9},
                 other = {SHOP_ROW_ACCOUNT, 10};
    shop_row_key order[2] = {hot, buyer}, order2[2] = {hot, other};
    assert_int_equal(row_gate_enter(g, order, 2), ROW_GATE_ENTERED);
    assert_int_equal(row_gate_enter(g, order2, 2), ROW_GATE_ENTERED);
    /* the hot row has its two: a third waits, and takes nothing meanwhile */
    assert_int_equal(row_gate_enter(g, &hot, 1), ROW_GATE_FULL);
    assert_int_equal(row_gate_enter(g, &other, 1), ROW_GATE_ENTERED);
    assert_int_equal(row_gate_enter(g, order2, 2), ROW_GATE_FULL);
    row_gate_leave(g, &other, 1);
    /* a product and an account of the same id are different rows */
    assert_int_equal(row_gate_enter(g, &buyer, 1), ROW_GATE_ENTERED);
    row_gate_leave(g, &buyer, 1);
    row_gate_leave(g, order, 2);
    assert_int_equal(row_gate_enter(g, &hot, 1), ROW_GATE_ENTERED);
    row_gate_leave(g, &hot, 1);
    row_gate_leave(g, order2, 2);
    /* one row named twice in a request is one place */
    shop_row_key twice[2] = {hot, hot};
    assert_int_equal(row_gate_enter(g, twice, 2), ROW_GATE_ENTERED);
    assert_int_equal(row_gate_enter(g, &hot, 1), ROW_GATE_ENTERED);
    assert_int_equal(row_gate_enter(g, &hot, 1), ROW_GATE_FULL);
    row_gate_leave(g, twice, 2);
    row_gate_leave(g, &hot, 1);
    assert_true(row_keys_overlap(order, 2, order2, 2));
    assert_false(row_keys_overlap(&buyer, 1, &other, 1));
    assert_false(row_keys_overlap(order, 2, &other, 1));
    /* many rows at once, all freed: LSan sees any entry left */
    for (int64_t id = 1; id <= 2000; id++) {
        shop_row_key k = {SHOP_ROW_COUPON, id};
        assert_int_equal(row_gate_enter(g, &k, 1), ROW_GATE_ENTERED);
    }
    for (int64_t id = 1; id <= 1000; id++) {
        shop_row_key k = {SHOP_ROW_COUPON, id};
        row_gate_leave(g, &k, 1);
    }
    row_gate_destroy(g); /* frees the 1000 still held */
}

/* ---- auth --------------------------------------------------------------------------- */

static void test_auth(void **state)
{
    (void)state;
    account a = new_account("auth-a", 100), b = new_account("auth-b", 100);
    char path[64], truncated[128], other[160], wrong_id[160];
    snprintf(truncated, sizeof truncated, "%.*s", (int)strlen(a.token) - 1, a.token);
    snprintf(other, sizeof other, "%s", a.token);
    other[strlen(other) - 1] = other[strlen(other) - 1] == 'A' ? 'B' : 'A';
    snprintf(wrong_id, sizeof wrong_id, "%lld%s", b.id, strchr(a.token, '.'));
    const char *bad[] = {"Bearer nope", ("Bearer " ADMIN "x"), ("Basic " ADMIN), "Bearer",
                         "Bearer ", ADMIN, ("bearer-" ADMIN), ""};
    snprintf(path, sizeof path, "/v1/accounts/%lld", a.id);
    long long before = fingerprint();
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        expect_error(REQ(.method = "GET", .path = path, .auth = bad[i]), 401,
                     "unauthorized");
    expect_error(REQ(.method = "GET", .path = path), 401, "unauthorized");
    const char *tokens[] = {truncated, other, wrong_id, "1.abc", ("0." ADMIN)};
    for (size_t i = 0; i < sizeof tokens / sizeof tokens[0]; i++)
        expect_error(REQ(.method = "GET", .path = path, .token = tokens[i]), 401,
                     "unauthorized");
    /* the scheme is case-insensitive */
    char lower[160];
    snprintf(lower, sizeof lower, "bearer %s", a.token);
    reply r = REQ(.method = "GET", .path = path, .auth = lower);
    expect_status(&r, 200);
    reply_free(&r);
    /* another account's resources, and admin routes: 403 */
    expect_error(REQ(.method = "GET", .path = path, .token = b.token), 403, "forbidden");
    char dep[96];
    snprintf(dep, sizeof dep, "%s/deposits", path);
    expect_error(REQ(.method = "POST", .path = dep, .token = b.token,
                     .body = "{\"amount\":1}"), 403, "forbidden");
    expect_error(REQ(.method = "POST", .path = "/v1/products", .token = a.token,
                     .body = "{\"name\":\"x\",\"price\":1,\"stock\":1}"), 403, "forbidden");
    expect_error(REQ(.method = "POST", .path = "/v1/accounts", .token = a.token,
                     .body = "{\"name\":\"x\",\"balance\":1}"), 403, "forbidden");
    /* 401 comes before the body is looked at */
    expect_error(REQ(.method = "POST", .path = dep, .body = "{bad"), 401, "unauthorized");
    assert_int_equal(fingerprint(), before);
    /* public routes need nothing */
    char ppath[64];
    snprintf(ppath, sizeof ppath, "/v1/products/%lld", new_product(1, 1));
    r = REQ(.method = "GET", .path = ppath, .auth = "Bearer junk");
    expect_status(&r, 200);
    assert_int_equal(r.retries, -1);
    reply_free(&r);
}

/* ---- bodies --------------------------------------------------------------------------- */

static void test_body_errors(void **state)
{
    (void)state;
    account a = new_account("body", 10);
    char dep[96];
    snprintf(dep, sizeof dep, "/v1/accounts/%lld/deposits", a.id);
    long long before = fingerprint();
    struct { const char *path, *body; int status; const char *code; } cases[] = {
        {dep, NULL, 400, "malformed_json"},
        {dep, "", 400, "malformed_json"},
        {dep, "{\"amount\":", 400, "malformed_json"},
        {dep, "{\"amount\":1,}", 400, "malformed_json"},
        {dep, "{\"amount\":1} x", 400, "malformed_json"},
        {dep, "{\"amount\":01}", 400, "malformed_json"},
        {dep, "{\"amount\":1,\"amount\":2}", 400, "malformed_json"},
        {"/v1/accounts", "{\"name\":\"\xff\",\"balance\":1}", 400, "malformed_json"},
        {dep, "[1]", 400, "invalid_type"},
        {dep, "{\"amount\":\"1\"}", 400, "invalid_type"},
        {dep, "{\"amount\":1.0}", 400, "invalid_type"},
        {dep, "{\"amount\":1e2}", 400, "invalid_type"},
        {dep, "{\"amount\":true}", 400, "invalid_type"},
        {dep, "{\"amount\":null}", 400, "invalid_type"},
        {dep, "{\"amount\":[1]}", 400, "invalid_type"},
        {"/v1/accounts", "{\"name\":5,\"balance\":1}", 400, "invalid_type"},
        {dep, "{}", 400, "missing_field"},
        {"/v1/accounts", "{\"name\":\"x\"}", 400, "missing_field"},
        {dep, "{\"amount\":1,\"note\":\"x\"}", 400, "unknown_field"},
        {"/v1/orders", "{\"account_id\":1,\"product_id\":1,\"quantity\":1,\"total\":0}",
         400, "unknown_field"},
        {dep, "{\"amount\":" BIG "}", 422, "out_of_range"},
        {dep, "{\"amount\":-" BIG "}", 422, "out_of_range"},
        {dep, "{\"amount\":9223372036854775808}", 422, "out_of_range"},
        {"/v1/accounts", "{\"name\":\"x\",\"balance\":" BIG "}", 422, "out_of_range"},
        {dep, "{\"amount\":0}", 422, "invalid_value"},
        {dep, "{\"amount\":-5}", 422, "invalid_value"},
        {"/v1/accounts", "{\"name\":\"\",\"balance\":1}", 422, "invalid_value"},
        {"/v1/accounts", "{\"name\":\"x\",\"balance\":-1}", 422, "invalid_value"},
        {"/v1/products", "{\"name\":\"x\",\"price\":-1,\"stock\":1}", 422, "invalid_value"},
        {"/v1/coupons", "{\"code\":\"x\",\"discount\":1,\"quantity\":-1}", 422,
         "invalid_value"},
        {"/v1/orders", "{\"account_id\":1,\"product_id\":1,\"quantity\":0}", 422,
         "invalid_value"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        expect_error(REQ(.method = "POST", .path = cases[i].path, .token = ADMIN,
                         .body = cases[i].body),
                     cases[i].status, cases[i].code);
    /* a name of 201 bytes is too long, 200 is fine */
    char name[202], body[300];
    memset(name, 'n', 201);
    name[201] = '\0';
    expect_error(REQ(.method = "POST", .path = "/v1/accounts", .token = ADMIN,
                     .body = fmt(body, sizeof body, "{\"name\":\"%s\",\"balance\":1}", name)),
                 422, "invalid_value");
    assert_int_equal(fingerprint(), before);
    name[200] = '\0';
    reply r = REQ(.method = "POST", .path = "/v1/accounts", .token = ADMIN,
                  .body = fmt(body, sizeof body, "{\"name\":\"%s\",\"balance\":1}", name));
    expect_status(&r, 201);
    reply_free(&r);
    /* the message names the field */
    r = REQ(.method = "POST", .path = dep, .token = ADMIN, .body = "{\"amount\":" BIG "}");
    assert_non_null(strstr(r.text, "amount"));
    reply_free(&r);
}

static void test_strategy_header(void **state)
{
    (void)state;
    account a = new_account("strategy", 10);
    char dep[96];
    snprintf(dep, sizeof dep, "/v1/accounts/%lld/deposits", a.id);
    long long before = fingerprint();
    const char *bad[] = {"fast", "ATOMIC", "Atomic", "atomic,lock", ""};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        expect_error(REQ(.method = "POST", .path = dep, .token = a.token,
                         .body = "{\"amount\":1}", .strategy = bad[i]),
                     400, "invalid_strategy");
    expect_error(REQ(.app = S.strict, .method = "POST", .path = dep, .token = a.token,
                     .body = "{\"amount\":1}", .strategy = "naive"),
                 400, "unsafe_strategy_disabled");
    expect_error(REQ(.app = S.strict, .method = "POST", .path = "/v1/accounts",
                     .token = ADMIN, .body = "{\"name\":\"x\",\"balance\":1}",
                     .strategy = "naive"),
                 400, "unsafe_strategy_disabled");
    assert_int_equal(fingerprint(), before);
    /* absent: the configured default */
    reply r = REQ(.method = "POST", .path = dep, .token = a.token, .body = "{\"amount\":1}");
    expect_status(&r, 200);
    assert_string_equal(r.strategy, "atomic");
    assert_int_equal(r.retries, 0);
    reply_free(&r);
}

/* ---- accounts -------------------------------------------------------------------------- */

static void test_accounts(void **state)
{
    (void)state;
    reply r = REQ(.method = "POST", .path = "/v1/accounts", .token = ADMIN,
                  .body = "{\"name\":\"alice\",\"balance\":" INT64_MAX_TEXT "}");
    expect_status(&r, 201);
    assert_int_equal(json_object_size(r.json), 5);
    assert_string_equal(json_string_value(json_object_get(r.json, "name")), "alice");
    assert_true(field(&r, "balance") == INT64_MAX);
    assert_int_equal(field(&r, "version"), 0);
    assert_int_equal(r.retries, 0);
    long long id = field(&r, "id");
    const char *token = json_string_value(json_object_get(r.json, "token"));
    char prefix[32];
    snprintf(prefix, sizeof prefix, "%lld.", id);
    assert_true(strncmp(token, prefix, strlen(prefix)) == 0);
    assert_int_equal(strlen(token), strlen(prefix) + 43);
    /* the token is not stored, only its hash */
    assert_int_equal(h_scalarf(S.pg, "SELECT length(token_hash) FROM account WHERE id = %lld",
                               id), 32);
    assert_int_equal(h_scalarf(S.pg, "SELECT count(*) FROM ledger WHERE account_id = %lld"
                                     " AND kind = 'initial'", id), 1);
    account a = {.id = id};
    snprintf(a.token, sizeof a.token, "%s", token);
    reply_free(&r);
    char path[64], dep[96], body[64];
    snprintf(path, sizeof path, "/v1/accounts/%lld", a.id);
    snprintf(dep, sizeof dep, "%s/deposits", path);
    r = REQ(.method = "GET", .path = path, .token = a.token);
    expect_status(&r, 200);
    assert_int_equal(json_object_size(r.json), 4);
    assert_null(json_object_get(r.json, "token"));
    assert_int_equal(r.retries, -1);
    reply_free(&r);
    /* balance + amount would overflow: 422 under every strategy, nothing changes */
    long long before = fingerprint();
    expect_error(REQ(.method = "POST", .path = dep, .token = a.token, .body = "{\"amount\":1}"),
                 422, "out_of_range");
    for (int s = 0; s < NSAFE; s++)
        expect_error(REQ(.method = "POST", .path = dep, .token = ADMIN,
                         .body = fmt(body, sizeof body, "{\"amount\":%d}", 1 + s),
                         .strategy = SAFE[s]),
                     422, "out_of_range");
    assert_int_equal(fingerprint(), before);
    expect_error(REQ(.method = "POST", .path = "/v1/accounts/999999999/deposits",
                     .token = ADMIN, .body = "{\"amount\":1}"), 404, "not_found");
    expect_error(REQ(.method = "GET", .path = "/v1/accounts/999999999", .token = ADMIN),
                 404, "not_found");
}

static void test_deposit_each_strategy(void **state)
{
    (void)state;
    const char *all[] = {"atomic", "lock", "optimistic", "serializable", "naive"};
    for (int s = 0; s < 5; s++) {
        account a = new_account(s == 4 ? "naive-single" : "dep", 100);
        char dep[96];
        snprintf(dep, sizeof dep, "/v1/accounts/%lld/deposits", a.id);
        for (int i = 1; i <= 3; i++) {
            reply r = REQ(.method = "POST", .path = dep, .token = i == 2 ? ADMIN : a.token,
                          .body = "{\"amount\":7}", .strategy = all[s]);
            expect_status(&r, 200);
            assert_int_equal(field(&r, "balance"), 100 + 7 * i);
            assert_int_equal(field(&r, "version"), i);
            assert_int_equal(field(&r, "id"), a.id);
            assert_string_equal(r.strategy, all[s]);
            assert_string_equal(r.route, "POST /v1/accounts/{id}/deposits");
            assert_true(r.retries >= 0);
            reply_free(&r);
        }
        assert_int_equal(h_scalarf(S.pg, "SELECT count(*) FROM ledger WHERE account_id = %lld"
                                         " AND kind = 'deposit' AND amount = 7", a.id), 3);
    }
}

/* ---- products ---------------------------------------------------------------------------- */

static void test_products(void **state)
{
    (void)state;
    reply r = REQ(.method = "POST", .path = "/v1/products", .token = ADMIN,
                  .body = "{\"name\":\"lamp\",\"price\":250,\"stock\":3}");
    expect_status(&r, 201);
    assert_int_equal(json_object_size(r.json), 5);
    long long id = field(&r, "id");
    assert_int_equal(field(&r, "stock"), 3);
    reply_free(&r);
    char path[64], rst[96];
    snprintf(path, sizeof path, "/v1/products/%lld", id);
    snprintf(rst, sizeof rst, "%s/restock", path);
    r = REQ(.method = "GET", .path = path);
    expect_status(&r, 200);
    assert_string_equal(json_string_value(json_object_get(r.json, "name")), "lamp");
    reply_free(&r);
    for (int s = 0; s < NSAFE; s++) {
        r = REQ(.method = "POST", .path = rst, .token = ADMIN, .body = "{\"quantity\":2}",
                .strategy = SAFE[s]);
        expect_status(&r, 200);
        assert_int_equal(field(&r, "stock"), 3 + 2 * (s + 1));
        assert_int_equal(field(&r, "version"), s + 1);
        reply_free(&r);
    }
    assert_int_equal(h_scalarf(S.pg, "SELECT sum(quantity) FROM restock WHERE product_id = %lld",
                               id), 8);
    /* stock + quantity would overflow */
    long long full = new_product(1, INT64_MAX - 1);
    snprintf(rst, sizeof rst, "/v1/products/%lld/restock", full);
    long long before = fingerprint();
    for (int s = 0; s < NSAFE; s++)
        expect_error(REQ(.method = "POST", .path = rst, .token = ADMIN,
                         .body = "{\"quantity\":2}", .strategy = SAFE[s]),
                     422, "out_of_range");
    assert_int_equal(fingerprint(), before);
    expect_error(REQ(.method = "POST", .path = "/v1/products/999999999/restock",
                     .token = ADMIN, .body = "{\"quantity\":1}"), 404, "not_found");
    expect_error(REQ(.method = "GET", .path = "/v1/products/999999999"), 404, "not_found");
}

/* ---- coupons ---------------------------------------------------------------------------------- */

static void claim_ok(long long coupon, const account *a, const char *strategy)
{
    char path[64], body[64];
    snprintf(path, sizeof path, "/v1/coupons/%lld/claims", coupon);
    reply r = REQ(.method = "POST", .path = path, .token = a->token, .strategy = strategy,
                  .body = fmt(body, sizeof body, "{\"account_id\":%lld}", a->id));
    expect_status(&r, 201);
    assert_int_equal(json_object_size(r.json), 2);
    assert_int_equal(field(&r, "coupon_id"), coupon);
    assert_int_equal(field(&r, "account_id"), a->id);
    reply_free(&r);
}

static reply claim(long long coupon, long long account_id, const char *token,
                   const char *strategy)
{
    char path[64], body[64];
    snprintf(path, sizeof path, "/v1/coupons/%lld/claims", coupon);
    return REQ(.method = "POST", .path = path, .token = token, .strategy = strategy,
               .body = fmt(body, sizeof body, "{\"account_id\":%lld}", account_id));
}

static void test_coupons(void **state)
{
    (void)state;
    reply r = REQ(.method = "POST", .path = "/v1/coupons", .token = ADMIN,
                  .body = "{\"code\":\"SPRING\",\"discount\":30,\"quantity\":2}");
    expect_status(&r, 201);
    assert_int_equal(field(&r, "remaining"), 2);
    assert_int_equal(json_object_size(r.json), 5);
    reply_free(&r);
    expect_error(REQ(.method = "POST", .path = "/v1/coupons", .token = ADMIN,
                     .body = "{\"code\":\"SPRING\",\"discount\":1,\"quantity\":1}"),
                 409, "coupon_code_taken");
    for (int s = 0; s < NSAFE; s++) {
        long long k = new_coupon(5, 2);
        account a = new_account("claim-a", 0), b = new_account("claim-b", 0),
                c = new_account("claim-c", 0);
        claim_ok(k, &a, SAFE[s]);
        long long before = fingerprint();
        expect_error(claim(k, a.id, a.token, SAFE[s]), 409, "coupon_already_claimed");
        expect_error(claim(k, b.id, a.token, SAFE[s]), 403, "forbidden");
        assert_int_equal(fingerprint(), before);
        claim_ok(k, &b, SAFE[s]);
        before = fingerprint();
        expect_error(claim(k, c.id, ADMIN, SAFE[s]), 409, "coupon_exhausted");
        expect_error(claim(k, 999999999, ADMIN, SAFE[s]), 404, "not_found");
        expect_error(claim(999999999, c.id, ADMIN, SAFE[s]), 404, "not_found");
        assert_int_equal(fingerprint(), before);
        char path[64];
        snprintf(path, sizeof path, "/v1/coupons/%lld", k);
        r = REQ(.method = "GET", .path = path);
        expect_status(&r, 200);
        assert_int_equal(field(&r, "remaining"), 0);
        assert_int_equal(field(&r, "quantity"), 2);
        reply_free(&r);
    }
    expect_error(claim(new_coupon(1, 0), new_account("zero", 0).id, ADMIN, NULL), 409,
                 "coupon_exhausted");
}

/* ---- orders ------------------------------------------------------------------------------------ */

static reply order(const account *a, const char *token, long long product, long long quantity,
                   long long coupon, const char *strategy, const char *key)
{
    char body[200];
    if (coupon)
        fmt(body, sizeof body,
            "{\"account_id\":%lld,\"product_id\":%lld,\"quantity\":%lld,\"coupon_id\":%lld}",
            a->id, product, quantity, coupon);
    else
        fmt(body, sizeof body, "{\"account_id\":%lld,\"product_id\":%lld,\"quantity\":%lld}",
            a->id, product, quantity);
    return REQ(.method = "POST", .path = "/v1/orders", .token = token ? token : a->token,
               .body = body, .strategy = strategy, .key = key);
}

static void test_orders_happy(void **state)
{
    (void)state;
    for (int s = 0; s < NSAFE; s++) {
        account a = new_account("buyer", 1000);
        long long p = new_product(100, 5), k = new_coupon(30, 3);
        reply r = order(&a, NULL, p, 2, 0, SAFE[s], NULL);
        expect_status(&r, 201);
        assert_int_equal(json_object_size(r.json), 8);
        assert_int_equal(field(&r, "total"), 200);
        assert_int_equal(field(&r, "unit_price"), 100);
        assert_int_equal(field(&r, "discount"), 0);
        assert_true(json_is_null(json_object_get(r.json, "coupon_id")));
        long long o1 = field(&r, "id");
        reply_free(&r);
        claim_ok(k, &a, SAFE[s]);
        r = order(&a, ADMIN, p, 1, k, SAFE[s], NULL);
        expect_status(&r, 201);
        assert_int_equal(field(&r, "total"), 70);
        assert_int_equal(field(&r, "discount"), 30);
        assert_int_equal(field(&r, "coupon_id"), k);
        long long o2 = field(&r, "id");
        reply_free(&r);
        assert_int_equal(balance_of(a.id), 1000 - 200 - 70);
        assert_int_equal(h_scalarf(S.pg, "SELECT stock FROM product WHERE id = %lld", p), 2);
        assert_int_equal(h_scalarf(S.pg, "SELECT order_id FROM coupon_claim WHERE coupon_id = %lld",
                                   k), o2);
        /* get and list */
        char path[64];
        snprintf(path, sizeof path, "/v1/orders/%lld", o1);
        r = REQ(.method = "GET", .path = path, .token = a.token);
        expect_status(&r, 200);
        assert_int_equal(field(&r, "total"), 200);
        reply_free(&r);
        account other = new_account("other", 0);
        /* as unknown to another account as a missing order */
        expect_error(REQ(.method = "GET", .path = path, .token = other.token), 404, "not_found");
        snprintf(path, sizeof path, "/v1/accounts/%lld/orders", a.id);
        r = REQ(.method = "GET", .path = path, .token = a.token);
        expect_status(&r, 200);
        json_t *list = json_object_get(r.json, "orders");
        assert_int_equal(json_array_size(list), 2);
        assert_int_equal(json_integer_value(json_object_get(json_array_get(list, 1), "id")), o2);
        reply_free(&r);
        snprintf(path, sizeof path, "/v1/accounts/%lld/orders", other.id);
        r = REQ(.method = "GET", .path = path, .token = ADMIN);
        expect_status(&r, 200);
        assert_string_equal(r.text, "{\"orders\":[]}");
        reply_free(&r);
    }
    expect_error(REQ(.method = "GET", .path = "/v1/orders/999999999", .token = ADMIN), 404,
                 "not_found");
    expect_error(REQ(.method = "GET", .path = "/v1/accounts/999999999/orders", .token = ADMIN),
                 404, "not_found");
    /* a discount above the price: total 0, fine on an empty balance */
    account z = new_account("zero", 0);
    long long p = new_product(10, 1), k = new_coupon(500, 1);
    claim_ok(k, &z, NULL);
    reply r = order(&z, NULL, p, 1, k, NULL, NULL);
    expect_status(&r, 201);
    assert_int_equal(field(&r, "total"), 0);
    reply_free(&r);
}

/* Each refusal, under each strategy, leaves everything as it was. */
static void test_orders_all_or_nothing(void **state)
{
    (void)state;
    for (int s = 0; s < NSAFE; s++) {
        const char *st = SAFE[s];
        account a = new_account("aon", 150), poor = new_account("aon-poor", 5);
        long long p = new_product(100, 1), big = new_product(4611686018427387904LL, 10);
        long long unclaimed = new_coupon(10, 5), used = new_coupon(10, 5);
        claim_ok(used, &a, st);
        claim_ok(used, &poor, st);
        reply r = order(&poor, NULL, new_product(1, 1), 1, used, st, NULL);
        expect_status(&r, 201);
        reply_free(&r);
        long long before = fingerprint();
        expect_error(order(&a, NULL, p, 2, 0, st, NULL), 409, "out_of_stock");
        expect_error(order(&poor, NULL, p, 1, 0, st, NULL), 409, "insufficient_funds");
        expect_error(order(&a, NULL, p, 1, unclaimed, st, NULL), 409, "coupon_not_claimed");
        expect_error(order(&poor, NULL, p, 1, used, st, NULL), 409, "coupon_already_used");
        expect_error(order(&a, NULL, big, 2, 0, st, NULL), 422, "out_of_range");
        expect_error(order(&a, NULL, 999999999, 1, 0, st, NULL), 404, "not_found");
        expect_error(order(&a, NULL, p, 1, 999999999, st, NULL), 404, "not_found");
        account ghost = {.id = 999999999};
        expect_error(order(&ghost, ADMIN, p, 1, 0, st, NULL), 404, "not_found");
        expect_error(order(&ghost, a.token, p, 1, 0, st, NULL), 403, "forbidden");
        assert_int_equal(fingerprint(), before);
        /* the stock taken by a refused order came back: one more still fits */
        r = order(&a, NULL, p, 1, used, st, NULL);
        expect_status(&r, 201);
        assert_int_equal(field(&r, "total"), 90);
        reply_free(&r);
        assert_int_equal(balance_of(a.id), 60);
    }
}

static void test_idempotency(void **state)
{
    (void)state;
    for (int s = 0; s < NSAFE; s++) {
        account a = new_account("idem", 1000), b = new_account("idem-b", 1000);
        long long p = new_product(7, 100), p2 = new_product(7, 100);
        reply first = order(&a, NULL, p, 2, 0, SAFE[s], "key-1");
        expect_status(&first, 201);
        long long before = fingerprint();
        for (int t = 0; t < NSAFE; t++) {
            reply again = order(&a, ADMIN, p, 2, 0, SAFE[t], "key-1");
            expect_status(&again, 200);
            assert_string_equal(again.text, first.text);
            reply_free(&again);
        }
        expect_error(order(&a, NULL, p, 3, 0, SAFE[s], "key-1"), 422, "idempotency_key_reused");
        expect_error(order(&a, NULL, p2, 2, 0, SAFE[s], "key-1"), 422, "idempotency_key_reused");
        assert_int_equal(fingerprint(), before);
        /* the key is the account's own */
        reply other = order(&b, NULL, p, 2, 0, SAFE[s], "key-1");
        expect_status(&other, 201);
        assert_true(field(&other, "id") != field(&first, "id"));
        reply_free(&other);
        reply_free(&first);
        assert_int_equal(balance_of(a.id), 986);
    }
    account a = new_account("idem-keys", 1000);
    long long p = new_product(1, 10);
    char long_key[202];
    memset(long_key, 'k', 201);
    long_key[201] = '\0';
    expect_error(order(&a, NULL, p, 1, 0, NULL, long_key), 422, "invalid_value");
    expect_error(order(&a, NULL, p, 1, 0, NULL, ""), 422, "invalid_value");
    expect_error(order(&a, NULL, p, 1, 0, NULL, "tab\tkey"), 422, "invalid_value");
    long_key[200] = '\0';
    reply r = order(&a, NULL, p, 1, 0, NULL, long_key);
    expect_status(&r, 201);
    reply_free(&r);
    /* a replay wins over the business rules: the stock is gone, the order is not */
    account c = new_account("idem-last", 100);
    long long last = new_product(10, 1);
    reply one = order(&c, NULL, last, 1, 0, NULL, "only");
    expect_status(&one, 201);
    reply_free(&one);
    r = order(&c, NULL, last, 1, 0, "lock", "only");
    expect_status(&r, 200);
    reply_free(&r);
}

/* ---- concurrency --------------------------------------------------------------------- */

#define IDEM_CLIENTS 10

typedef struct idem_job {
    pthread_barrier_t *go;
    const account *a;
    long long product, quantity;
    const char *strategy, *key;
    int status;
    long long order_id;
} idem_job;

static void *idem_thread(void *p)
{
    idem_job *j = p;
    pthread_barrier_wait(j->go);
    reply r = order(j->a, NULL, j->product, j->quantity, 0, j->strategy, j->key);
    j->status = r.status;
    json_t *id = json_object_get(r.json, "id");
    j->order_id = json_is_integer(id) ? (long long)json_integer_value(id) : -1;
    reply_free(&r);
    return NULL;
}

static void test_idempotency_concurrent(void **state)
{
    (void)state;
    for (int s = 0; s < NSAFE; s++) {
        for (int mixed = 0; mixed < 2; mixed++) {
            account a = new_account("idem-race", 1000);
            long long p = new_product(7, 100);
            pthread_barrier_t go;
            pthread_barrier_init(&go, NULL, IDEM_CLIENTS);
            idem_job jobs[IDEM_CLIENTS];
            for (int i = 0; i < IDEM_CLIENTS; i++)
                jobs[i] = (idem_job){&go, &a, p, mixed ? 1 + i % 2 : 2, SAFE[s], "race", 0, 0};
            h_run_threads(IDEM_CLIENTS, idem_thread, jobs, sizeof jobs[0]);
            pthread_barrier_destroy(&go);
            assert_int_equal(h_scalarf(S.pg, "SELECT count(*) FROM orders WHERE account_id = %lld",
                                       a.id), 1);
            long long id = h_scalarf(S.pg, "SELECT id FROM orders WHERE account_id = %lld", a.id);
            long long q = h_scalarf(S.pg, "SELECT quantity FROM orders WHERE id = %lld", id);
            int created = 0;
            for (int i = 0; i < IDEM_CLIENTS; i++) {
                if (jobs[i].quantity != q) {
                    assert_int_equal(jobs[i].status, 422);
                    continue;
                }
                if (jobs[i].status != 200 && jobs[i].status != 201)
                    fail_msg("%s: client %d got %d", SAFE[s], i, jobs[i].status);
                assert_int_equal(jobs[i].order_id, id);
                created += jobs[i].status == 201;
            }
            assert_int_equal(created, 1);
            assert_int_equal(balance_of(a.id), 1000 - 7 * q);
        }
    }
}

#define DEPOSIT_THREADS 16
#define DEPOSITS_EACH 50

typedef struct deposit_job {
    const char *path, *strategy;
    int ok, retries;
} deposit_job;

static void *deposit_thread(void *p)
{
    deposit_job *j = p;
    for (int i = 0; i < DEPOSITS_EACH; i++) {
        reply r = REQ(.method = "POST", .path = j->path, .token = ADMIN,
                      .body = "{\"amount\":1}", .strategy = j->strategy);
        j->ok += r.status == 200;
        j->retries += r.retries > 0 ? r.retries : 0;
        if (r.status != 200)
            fprintf(stderr, "deposit %s: %d %s\n", j->strategy, r.status, r.text);
        reply_free(&r);
    }
    return NULL;
}

/* One hot row, DEPOSIT_THREADS x DEPOSITS_EACH deposits of 1; returns the
   final balance and sums up the retries. */
static long long hammer(const char *name, const char *strategy, int *ok, int *retries)
{
    account a = new_account(name, 0);
    char path[96];
    snprintf(path, sizeof path, "/v1/accounts/%lld/deposits", a.id);
    deposit_job jobs[DEPOSIT_THREADS];
    for (int i = 0; i < DEPOSIT_THREADS; i++)
        jobs[i] = (deposit_job){path, strategy, 0, 0};
    h_run_threads(DEPOSIT_THREADS, deposit_thread, jobs, sizeof jobs[0]);
    *ok = *retries = 0;
    for (int i = 0; i < DEPOSIT_THREADS; i++) {
        *ok += jobs[i].ok;
        *retries += jobs[i].retries;
    }
    return balance_of(a.id);
}

static void test_deposits_concurrent(void **state)
{
    (void)state;
    const int want = DEPOSIT_THREADS * DEPOSITS_EACH;
    int ok, retries;
    for (int s = 0; s < NSAFE; s++) {
        long long balance = hammer("hot", SAFE[s], &ok, &retries);
        printf("  %-12s %d x %d deposits: %d ok, balance %lld, %d retries\n", SAFE[s],
               DEPOSIT_THREADS, DEPOSITS_EACH, ok, balance, retries);
        assert_int_equal(ok, want);
        assert_int_equal(balance, want);
    }
    /* naive loses updates (every request still says 200); a few rounds in
       case the scheduler happens to serialise one */
    long long balance = want;
    for (int round = 0; round < 3 && balance == want; round++)
        balance = hammer("naive-hot", "naive", &ok, &retries);
    printf("  %-12s %d x %d deposits: %d ok, balance %lld: %lld lost\n", "naive",
           DEPOSIT_THREADS, DEPOSITS_EACH, ok, balance, want - balance);
    assert_int_equal(ok, want);
    assert_true(balance < want);
}

/* ---- a database that is not there, or busy --------------------------------------------- */

static void test_database_trouble(void **state)
{
    (void)state;
    pgtx_pool_config cfg;
    pgtx_pool_config_init(&cfg);
    cfg.conninfo = "host=127.0.0.1 port=1 connect_timeout=2";
    cfg.checkout_timeout_ms = 2000;
    pgtx_pool *dead = NULL;
    assert_int_equal(pgtx_pool_create(&cfg, &dead, NULL), PGTX_OK);
    shop_app *app = app_new(dead, false);
    reply r = REQ(.app = app, .method = "GET", .path = "/v1/products/1");
    assert_int_equal(r.status, 503);
    assert_int_equal(r.retry_after, 1);
    const char *code = code_of(&r);
    assert_true(strcmp(code, "database_unavailable") == 0 || strcmp(code, "overloaded") == 0);
    reply_free(&r);
    /* an account token needs the database too: 503, not 401 */
    r = REQ(.app = app, .method = "GET", .path = "/v1/accounts/1",
            .token = "1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    assert_int_equal(r.status, 503);
    reply_free(&r);
    shop_app_destroy(app);
    pgtx_pool_destroy(dead);

    /* every connection busy: 503 overloaded with Retry-After */
    pgtx_pool_config_init(&cfg);
    cfg.conninfo = h_dsn();
    cfg.pool_size = 1;
    cfg.max_overflow = 0;
    cfg.checkout_timeout_ms = 200;
    pgtx_pool *busy = NULL;
    assert_int_equal(pgtx_pool_create(&cfg, &busy, NULL), PGTX_OK);
    app = app_new(busy, false);
    pgtx_conn *held = NULL;
    assert_int_equal(pgtx_pool_checkout(busy, -1, &held, NULL), PGTX_OK);
    r = REQ(.app = app, .method = "POST", .path = "/v1/products", .token = ADMIN,
            .body = "{\"name\":\"x\",\"price\":1,\"stock\":1}");
    assert_int_equal(r.retry_after, 1);
    assert_int_equal(r.retries, 0);
    expect_error(r, 503, "overloaded");
    pgtx_pool_return(held);
    r = REQ(.app = app, .method = "POST", .path = "/v1/products", .token = ADMIN,
            .body = "{\"name\":\"x\",\"price\":1,\"stock\":1}");
    expect_status(&r, 201);
    reply_free(&r);
    shop_app_destroy(app);
    pgtx_pool_destroy(busy);
}

/* ---- libpgtx statuses as HTTP (the ones hard to cause on purpose) ---------------- */

static reply mapped(pgtx_status st, bool exhausted, const char *sqlstate)
{
    shop_response res;
    memset(&res, 0, sizeof res);
    pgtx_run_info info = {.attempts = 100, .exhausted = exhausted};
    pgtx_error err;
    pgtx_fail(&err, st, "%s", pgtx_status_text(st));
    snprintf(err.sqlstate, sizeof err.sqlstate, "%s", sqlstate);
    reply_failure(&res, st, &info, &err, NULL);
    reply r = {.status = res.status, .retry_after = res.retry_after, .text = res.body};
    r.json = json_loads(res.body, 0, NULL);
    return r;
}

static void test_status_mapping(void **state)
{
    (void)state;
    struct { pgtx_status st; bool exhausted; const char *sqlstate; int status;
             const char *code; int retry_after; } cases[] = {
        {PGTX_POOL_TIMEOUT, false, "", 503, "overloaded", 1},
        {PGTX_POOL_CLOSED, false, "", 503, "overloaded", 1},
        {PGTX_CONNECT, false, "", 503, "database_unavailable", 1},
        {PGTX_CONNECTION_LOST, true, "", 503, "database_unavailable", 1},
        {PGTX_COMMIT_UNKNOWN, false, "", 503, "commit_unknown", 1},
        {PGTX_SERIALIZATION, true, "40001", 503, "retry_exhausted", 1},
        {PGTX_DEADLOCK, true, "40P01", 503, "retry_exhausted", 1},
        {PGTX_STALE, true, "", 503, "retry_exhausted", 1},
        {PGTX_SQL, false, "22003", 422, "out_of_range", 0},
        {PGTX_SQL, false, "22021", 422, "invalid_value", 0},
        {PGTX_SQL, false, "42P01", 500, "internal", 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        reply r = mapped(cases[i].st, cases[i].exhausted, cases[i].sqlstate);
        assert_int_equal(r.retry_after, cases[i].retry_after);
        expect_error(r, cases[i].status, cases[i].code);
    }
    reply r = mapped(PGTX_SQL, false, "42P01");
    assert_non_null(strstr(r.text, "42P01"));
    reply_free(&r);
}

static void test_invariants(void **state)
{
    (void)state;
    check_invariants();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_migrate_concurrently),
        cmocka_unit_test(test_strategy_names),
        cmocka_unit_test(test_routing),
        cmocka_unit_test(test_request_rows),
        cmocka_unit_test(test_row_gate),
        cmocka_unit_test(test_auth),
        cmocka_unit_test(test_body_errors),
        cmocka_unit_test(test_strategy_header),
        cmocka_unit_test(test_accounts),
        cmocka_unit_test(test_deposit_each_strategy),
        cmocka_unit_test(test_products),
        cmocka_unit_test(test_coupons),
        cmocka_unit_test(test_orders_happy),
        cmocka_unit_test(test_orders_all_or_nothing),
        cmocka_unit_test(test_idempotency),
        cmocka_unit_test(test_idempotency_concurrent),
        cmocka_unit_test(test_deposits_concurrent),
        cmocka_unit_test(test_database_trouble),
        cmocka_unit_test(test_status_mapping),
        cmocka_unit_test(test_invariants),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
