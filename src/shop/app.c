/* app.c — the domain side's entry: engines, routing (404/405), auth, strategy, then the route's handler. */
#include "app_internal.h"

#include <sodium.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- routes ------------------------------------------------------------------ */

typedef enum shop_access {
    ACCESS_ANYONE,
    ACCESS_ADMIN,
    ACCESS_OWNER_PATH, /* the admin, or the account whose id is in the path */
    ACCESS_SIGNED_IN   /* the admin or any account; the handler decides whose
                          resource it is (from the body or the row) */
} shop_access;

/* The rows a write route changes: its path's {id}, ids in its body. */
typedef struct route_rows {
    shop_row_kind path;                   /* 0: the {id} names no row */
    const char *field[SHOP_ROW_KEYS_MAX]; /* body fields holding row ids */
    shop_row_kind kind[SHOP_ROW_KEYS_MAX];
} route_rows;

typedef struct shop_route {
    const char *method;
    const char *pattern; /* "{id}" stands for a positive int64 segment */
    const char *label;   /* static, for logs and metrics */
    shop_access access;
    bool write;
    shop_handler handler;
    /* Requests of this route on one row may share a transaction: its first
       row (rows.path's, else rows.field[0]'s) is the one they combine on. */
    const shop_combinable *combinable;
    route_rows rows;
} shop_route;

#define ROUTE(m, p, a, w, h) {m, p, m " " p, a, w, h, NULL, {0, {NULL}, {0}}}
#define WRITE_ROUTE(m, p, a, h, c, ...) {m, p, m " " p, a, true, h, c, __VA_ARGS__}

/* NOTE: each path takes one method, so a 405's Allow is the method of the
   route whose path matched; a path with two methods would need a combined
   Allow string. */
static const shop_route ROUTES[] = {
    ROUTE("POST", "/v1/accounts", ACCESS_ADMIN, true, accounts_create),
    ROUTE("GET", "/v1/accounts/{id}", ACCESS_OWNER_PATH, false, accounts_get),
    WRITE_ROUTE("POST", "/v1/accounts/{id}/deposits", ACCESS_OWNER_PATH,
                accounts_deposit, &DEPOSIT_COMBINABLE, {SHOP_ROW_ACCOUNT, {NULL}, {0}}),
    ROUTE("GET", "/v1/accounts/{id}/orders", ACCESS_OWNER_PATH, false,
          accounts_orders),
    ROUTE("POST", "/v1/products", ACCESS_ADMIN, true, products_create),
    ROUTE("GET", "/v1/products/{id}", ACCESS_ANYONE, false, products_get),
    WRITE_ROUTE("POST", "/v1/products/{id}/restock", ACCESS_ADMIN,
                products_restock, NULL, {SHOP_ROW_PRODUCT, {NULL}, {0}}),
    ROUTE("POST", "/v1/coupons", ACCESS_ADMIN, true, coupons_create),
    ROUTE("GET", "/v1/coupons/{id}", ACCESS_ANYONE, false, coupons_get),
    WRITE_ROUTE("POST", "/v1/coupons/{id}/claims", ACCESS_SIGNED_IN,
                coupons_claim, &CLAIM_COMBINABLE, {SHOP_ROW_COUPON, {NULL}, {0}}),
    WRITE_ROUTE("POST", "/v1/orders", ACCESS_SIGNED_IN, orders_create, &ORDER_COMBINABLE,
                {0, {"product_id", "account_id", "coupon_id"},
                 {SHOP_ROW_PRODUCT, SHOP_ROW_ACCOUNT, SHOP_ROW_COUPON}}),
    ROUTE("GET", "/v1/orders/{id}", ACCESS_SIGNED_IN, false, orders_get),
    ROUTE("GET", "/openapi.yaml", ACCESS_ANYONE, false, docs_openapi),
};

#define ROUTE_COUNT (sizeof ROUTES / sizeof ROUTES[0])

int64_t shop_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A path id is canonical decimal: 1..INT64_MAX, no sign, no leading zero,
   so that each resource has exactly one URL. */
bool shop_parse_id(const char *s, size_t len, int64_t *out)
{
    if (len == 0 || len > 19 || s[0] == '0')
        return false;
    uint64_t v = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    if (v > (uint64_t)INT64_MAX)
        return false;
    *out = (int64_t)v;
    return true;
}

static bool path_matches(const char *pattern, const char *path, int64_t *id)
{
    static const char ID[] = "{id}";
    while (*pattern) {
        if (strncmp(pattern, ID, sizeof ID - 1) == 0) {
            size_t len = strcspn(path, "/");
            if (!shop_parse_id(path, len, id))
                return false;
            pattern += sizeof ID - 1;
            path += len;
        } else if (*pattern++ != *path++) {
            return false;
        }
    }
    return *path == '\0';
}

/* The route for the request, or NULL with the 404/405 in res. */
static const shop_route *route_find(const shop_request *req, shop_response *res,
                                    int64_t *id)
{
    const shop_route *path_match = NULL;
    for (size_t i = 0; i < ROUTE_COUNT; i++) {
        int64_t v = 0;
        if (!path_matches(ROUTES[i].pattern, req->path, &v))
            continue;
        if (strcmp(ROUTES[i].method, req->method) == 0) {
            *id = v;
            return &ROUTES[i];
        }
        path_match = &ROUTES[i];
    }
    if (path_match) {
        /* A GET route also answers HEAD (http.c maps it). */
        res->allow = strcmp(path_match->method, "GET") == 0 ? "GET, HEAD" : path_match->method;
        res->route = path_match->pattern;
        reply_error(res, 405, "method_not_allowed", "%s is not allowed on %s; use %s",
                    req->method, path_match->pattern, path_match->method);
    } else {
        reply_error(res, 404, "not_found", "no route for %s", req->path);
    }
    return NULL;
}

/* ---- the rows a write changes ------------------------------------------------- */

static void add_row(shop_request_rows *out, shop_row_kind kind, int64_t id)
{
    if (out->n < SHOP_ROW_KEYS_MAX)
        out->key[out->n++] = (shop_row_key){kind, id};
}

/* The body's row ids: only well-formed positive integers count, as the
   handler would refuse anything else before touching a row. */
static void body_rows(const shop_request *req, const route_rows *rows,
                      shop_request_rows *out)
{
    if (req->body == NULL || rows->field[0] == NULL)
        return;
    json_t *doc = json_loadb(req->body, req->body_len, JSON_REJECT_DUPLICATES, NULL);
    for (int i = 0; json_is_object(doc) && i < SHOP_ROW_KEYS_MAX && rows->field[i]; i++) {
        json_t *v = json_object_get(doc, rows->field[i]);
        if (json_is_integer(v) && json_integer_value(v) > 0)
            add_row(out, rows->kind[i], (int64_t)json_integer_value(v));
    }
    json_decref(doc);
}

void shop_request_rows_of(const shop_request *req, shop_request_rows *out)
{
    *out = (shop_request_rows){NULL, 0, {{0, 0}}, {0, 0}};
    if (req->method == NULL || req->path == NULL)
        return;
    for (size_t i = 0; i < ROUTE_COUNT; i++) {
        int64_t id = 0;
        const shop_route *r = &ROUTES[i];
        if (!r->write || strcmp(r->method, req->method) != 0 ||
            !path_matches(r->pattern, req->path, &id))
            continue;
        out->route = r->label;
        if (r->rows.path)
            add_row(out, r->rows.path, id);
        body_rows(req, &r->rows, out);
        bool first_named = r->rows.path || (out->n > 0 && out->key[0].kind == r->rows.kind[0]);
        if (r->combinable && first_named)
            out->combine = out->key[0];
        return;
    }
}

/* ---- auth and strategy ----------------------------------------------------- */

static bool authorize(shop_ctx *ctx, shop_access access)
{
    if (access == ACCESS_ANYONE)
        return true;
    if (!auth_identify(ctx))
        return false;
    if (ctx->role == SHOP_ROLE_NONE) {
        reply_error(ctx->res, 401, "unauthorized",
                    "a valid 'Authorization: Bearer <token>' is required");
        return false;
    }
    ctx->res->who = ctx->role == SHOP_ROLE_ADMIN ? 0 : ctx->account_id;
    if (ctx->role == SHOP_ROLE_ADMIN || access == ACCESS_SIGNED_IN)
        return true;
    if (access == ACCESS_OWNER_PATH)
        return auth_may_act_for(ctx, ctx->id);
    reply_error(ctx->res, 403, "forbidden", "only the admin may do this");
    return false;
}

static bool choose_strategy(shop_ctx *ctx)
{
    const char *h = ctx->req->strategy;
    ctx->strategy = ctx->app->default_strategy;
    if (h && !pgtx_strategy_parse(h, &ctx->strategy)) {
        reply_error(ctx->res, 400, "invalid_strategy",
                    "Pgtx-Strategy must be one of atomic, lock, optimistic, "
                    "serializable");
        return false;
    }
    if (ctx->strategy == PGTX_STRATEGY_NAIVE && !ctx->app->allow_unsafe) {
        reply_error(ctx->res, 400, "unsafe_strategy_disabled",
                    "the naive strategy loses updates; the server must be "
                    "started with --allow-unsafe to accept it");
        return false;
    }
    ctx->res->strategy = pgtx_strategy_name(ctx->strategy);
    return true;
}

/* A read's Pgtx-Commit-LSN: what the client last wrote, which the answer
   must not be older than.  Checked even without standbys, so that a
   client's mistake shows before there are any. */
static bool read_position(shop_ctx *ctx)
{
    const char *h = ctx->req->commit_lsn;
    if (h == NULL || pgtx_lsn_parse(h, &ctx->min_lsn) == PGTX_OK)
        return true;
    reply_error(ctx->res, 400, "invalid_commit_lsn",
                "Pgtx-Commit-LSN must be a WAL position as a write's answer "
                "gave it, like 0/16B3748");
    return false;
}

/* ---- the app --------------------------------------------------------------------- */

/* lock_timeout_ms bounds each wait for a row that another transaction
   holds: past it the statement fails with 55P03, answered 503 row_busy,
   rather than a worker and a connection being held for as long as the
   other side keeps its lock.  The library sends it as SET LOCAL in BEGIN's
   round trip, so it never stays on a pooled (or PgBouncer's) session. */
static pgtx_status engine_new(pgtx_pool *pool, pgtx_isolation iso, bool read_only,
                              int lock_timeout_ms, bool lsn, pgtx_engine **out,
                              pgtx_error *err)
{
    pgtx_engine_options opt;
    pgtx_engine_options_init(&opt);
    opt.isolation = iso;
    opt.read_only = read_only;
    opt.report_commit_lsn = lsn;
    opt.lock_timeout_ms = lock_timeout_ms;
    /* Live under heavy contention (64 clients on one row): the optimistic and
       serializable strategies lose most races there, so they get many short
       attempts rather than a few long sleeps. */
    opt.retry.max_attempts = 100;
    opt.retry.budget_ms = 20000;
    opt.retry.base_delay_ms = 1;
    opt.retry.max_delay_ms = 50;
    return pgtx_engine_create(pool, &opt, out, err);
}

pgtx_status shop_app_create(pgtx_pool *pool, shop_metrics *metrics,
                            const shop_config *cfg, const char *admin_token,
                            shop_app **out, pgtx_error *err)
{
    if (pool == NULL || cfg == NULL || out == NULL ||
        (unsigned)cfg->strategy >= PGTX_STRATEGY_COUNT)
        return pgtx_fail(err, PGTX_INVALID, "pool, config and out are required");
    shop_app *app = calloc(1, sizeof *app);
    if (app == NULL)
        return pgtx_fail(err, PGTX_NOMEM, "out of memory");
    app->pool = pool;
    app->metrics = metrics;
    app->default_strategy = cfg->strategy;
    app->allow_unsafe = cfg->allow_unsafe;
    /* Reads take no row locks (plain SELECTs): only writes need the bound. */
    int lock_ms = cfg->lock_timeout_ms;
    /* Commit positions cost a statement per transaction: only standbys
       that reads may go to need them (Pgtx-Commit-LSN). */
    bool lsn = cfg->read_database != NULL;
    pgtx_status st = engine_new(pool, PGTX_READ_COMMITTED, false, lock_ms, lsn,
                                &app->writer, err);
    if (st == PGTX_OK)
        st = engine_new(pool, PGTX_SERIALIZABLE, false, lock_ms, lsn,
                        &app->serializable, err);
    if (st == PGTX_OK)
        st = engine_new(pool, PGTX_READ_COMMITTED, true, 0, lsn, &app->reader, err);
    /* auth_init fails when libsodium cannot start or when its cache cannot
       be allocated: only the first is not a lack of memory (found by
       tests/test_alloc_fail.c, which got INVALID for an allocation). */
    if (st == PGTX_OK && !auth_init(app, admin_token))
        st = sodium_init() < 0
                 ? pgtx_fail(err, PGTX_INVALID, "libsodium could not be initialised")
                 : pgtx_fail(err, PGTX_NOMEM, "out of memory");
    if (st != PGTX_OK) {
        shop_app_destroy(app);
        return st;
    }
    *out = app;
    return PGTX_OK;
}

pgtx_status shop_app_use_standbys(shop_app *app, pgtx_pool *standbys,
                                  pgtx_error *err)
{
    if (app == NULL || standbys == NULL || app->standby != NULL)
        return pgtx_fail(err, PGTX_INVALID, "an app without standbys and a pool "
                         "are required");
    return engine_new(standbys, PGTX_READ_COMMITTED, true, 0, false, &app->standby, err);
}

void shop_app_destroy(shop_app *app)
{
    if (app == NULL)
        return;
    pgtx_engine_destroy(app->standby);
    pgtx_engine_destroy(app->writer);
    pgtx_engine_destroy(app->serializable);
    pgtx_engine_destroy(app->reader);
    auth_fini(app);
    free(app);
}

/* Routing, auth and strategy: the request's route, or NULL once answered. */
static const shop_route *request_begin(shop_app *app, const shop_request *req,
                                       shop_response *res, shop_ctx *ctx)
{
    *res = (shop_response){.status = 500, .retries = -1, .route = "unknown",
                           .who = -1};
    if (req->method == NULL || req->path == NULL) {
        reply_error(res, 404, "not_found", "no route");
        return NULL;
    }
    *ctx = (shop_ctx){.app = app, .req = req, .res = res};
    const shop_route *r = route_find(req, res, &ctx->id);
    if (r == NULL)
        return NULL;
    res->route = r->label;
    ctx->write = r->write;
    if (!authorize(ctx, r->access) || (r->write && !choose_strategy(ctx)) ||
        (!r->write && strncmp(r->pattern, "/v1/", 4) == 0 && !read_position(ctx)))
        return NULL;
    return r;
}

void shop_app_handle(shop_app *app, const shop_request *req, shop_response *res)
{
    shop_ctx ctx;
    const shop_route *r = request_begin(app, req, res, &ctx);
    if (r)
        r->handler(&ctx);
}

void shop_app_handle_batch(shop_app *app, const shop_request *const *req,
                           shop_response *const *res, int n)
{
    shop_ctx ctx[PGTX_BATCH_SAVEPOINT_MAX];
    shop_ctx *group[PGTX_BATCH_SAVEPOINT_MAX];
    const shop_combinable *c = NULL;
    int m = 0;
    for (int i = 0; i < n; i++) {
        if (i >= PGTX_BATCH_SAVEPOINT_MAX) { /* more than http.c hands over */
            shop_app_handle(app, req[i], res[i]);
            continue;
        }
        const shop_route *r = request_begin(app, req[i], res[i], &ctx[i]);
        if (r == NULL)
            continue;
        if (r->combinable == NULL || (c && r->combinable != c)) {
            r->handler(&ctx[i]);
            continue;
        }
        c = r->combinable;
        group[m++] = &ctx[i];
    }
    if (m > 0)
        combine_run(c, group, m);
}
