/* harness.c — helpers shared by the tests (see harness.h). */
#include "harness.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

const char *h_dsn(void)
{
    const char *d = getenv("PGTX_TEST_DSN");
    return d ? d : "";
}

PGconn *h_connect(const char *application_name)
{
    const char *keys[] = {"dbname", "application_name", "options", NULL};
    const char *vals[] = {h_dsn(), application_name,
                          "-c client_min_messages=warning", NULL};
    PGconn *pg = PQconnectdbParams(keys, vals, 1);
    if (PQstatus(pg) != CONNECTION_OK) {
        fprintf(stderr, "cannot connect to the test server: %s",
                PQerrorMessage(pg));
        PQfinish(pg);
        fail_msg("no test database (set PGTX_TEST_DSN or run via make test)");
    }
    return pg;
}

void h_exec(PGconn *pg, const char *sql)
{
    PGresult *r = PQexec(pg, sql);
    ExecStatusType s = PQresultStatus(r);
    if (s != PGRES_COMMAND_OK && s != PGRES_TUPLES_OK) {
        fprintf(stderr, "SQL failed: %s\n  %s", sql, PQerrorMessage(pg));
        PQclear(r);
        fail_msg("SQL failed");
    }
    PQclear(r);
}

long long h_scalar(PGconn *pg, const char *sql)
{
    PGresult *r = PQexec(pg, sql);
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) < 1) {
        fprintf(stderr, "query failed: %s\n  %s", sql, PQerrorMessage(pg));
        PQclear(r);
        fail_msg("query failed");
    }
    long long v = PQgetisnull(r, 0, 0) ? 0 : atoll(PQgetvalue(r, 0, 0));
    PQclear(r);
    return v;
}

__attribute__((format(printf, 1, 0))) static char *vformat(const char *fmt, va_list ap)
{
    va_list ap2;
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap2);
    va_end(ap2);
    char *buf = malloc((size_t)n + 1);
    if (buf == NULL)
        fail_msg("out of memory");
    vsnprintf(buf, (size_t)n + 1, fmt, ap);
    return buf;
}

long long h_scalarf(PGconn *pg, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *sql = vformat(fmt, ap);
    va_end(ap);
    long long v = h_scalar(pg, sql);
    free(sql);
    return v;
}

void h_execf(PGconn *pg, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *sql = vformat(fmt, ap);
    va_end(ap);
    h_exec(pg, sql);
    free(sql);
}

void h_pool_config(pgtx_pool_config *cfg, int size, int overflow,
                   const char *application_name)
{
    pgtx_pool_config_init(cfg);
    cfg->conninfo = h_dsn();
    cfg->application_name = application_name;
    cfg->pool_size = size;
    cfg->max_overflow = overflow;
}

pgtx_pool *h_pool_from(const pgtx_pool_config *cfg)
{
    pgtx_pool *pool = NULL;
    pgtx_error err;
    pgtx_status st = pgtx_pool_create(cfg, &pool, &err);
    assert_int_equal(st, PGTX_OK);
    return pool;
}

pgtx_pool *h_pool(int size, int overflow, const char *application_name)
{
    pgtx_pool_config cfg;
    h_pool_config(&cfg, size, overflow, application_name);
    return h_pool_from(&cfg);
}

static pgtx_engine *engine_with(pgtx_pool *pool, const pgtx_engine_options *opt)
{
    pgtx_engine *e = NULL;
    assert_int_equal(pgtx_engine_create(pool, opt, &e, NULL), PGTX_OK);
    return e;
}

pgtx_engine *h_engine(pgtx_pool *pool, pgtx_isolation iso)
{
    pgtx_engine_options opt;
    pgtx_engine_options_init(&opt);
    opt.isolation = iso;
    return engine_with(pool, &opt);
}

pgtx_engine *h_engine_patient(pgtx_pool *pool, pgtx_isolation iso)
{
    pgtx_engine_options opt;
    pgtx_engine_options_init(&opt);
    opt.isolation = iso;
    opt.retry.max_attempts = 10000;
    opt.retry.budget_ms = 120000;
    opt.retry.max_delay_ms = 20;
    return engine_with(pool, &opt);
}

int64_t h_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int h_wait_until(int (*cond)(void *arg), void *arg, int timeout_ms)
{
    int64_t deadline = h_now_ms() + timeout_ms;
    while (!cond(arg)) {
        if (h_now_ms() >= deadline)
            return 0;
        usleep(5000);
    }
    return 1;
}

typedef struct gone_arg {
    PGconn *admin;
    int pid;
} gone_arg;

static int backend_gone(void *p)
{
    gone_arg *g = p;
    return h_scalarf(g->admin,
                     "SELECT count(*) FROM pg_stat_activity WHERE pid = %d",
                     g->pid) == 0;
}

void h_kill_backend(PGconn *admin, int pid)
{
    assert_int_equal(h_scalarf(admin, "SELECT pg_terminate_backend(%d)::int", pid), 1);
    gone_arg g = {admin, pid};
    assert_true(h_wait_until(backend_gone, &g, 10000));
}

typedef struct app_arg {
    PGconn *admin;
    const char *app;
    int left;
} app_arg;

static int app_gone(void *p)
{
    app_arg *a = p;
    a->left = (int)h_scalarf(a->admin, "SELECT count(*) FROM pg_stat_activity "
                                       "WHERE application_name = '%s'", a->app);
    return a->left == 0;
}

int h_wait_app_gone(PGconn *admin, const char *app, int timeout_ms)
{
    app_arg a = {admin, app, -1};
    h_wait_until(app_gone, &a, timeout_ms);
    return a.left;
}

void h_run_threads(int n, void *(*fn)(void *), void *base, size_t stride)
{
    pthread_t *t = calloc((size_t)n, sizeof *t);
    assert_non_null(t);
    for (int i = 0; i < n; i++)
        assert_int_equal(pthread_create(&t[i], NULL, fn,
                                        (char *)base + (size_t)i * stride), 0);
    for (int i = 0; i < n; i++)
        pthread_join(t[i], NULL);
    free(t);
}

const char *h_unique(const char *prefix)
{
    static _Thread_local char buf[64];
    snprintf(buf, sizeof buf, "%s_%d", prefix, (int)getpid());
    return buf;
}

char *h_table(PGconn *admin, const char *prefix, const char *columns)
{
    char *name = strdup(h_unique(prefix));
    assert_non_null(name);
    h_execf(admin, "DROP TABLE IF EXISTS %s; CREATE TABLE %s (%s)", name, name, columns);
    return name;
}

void h_table_drop(PGconn *admin, char *name)
{
    h_execf(admin, "DROP TABLE %s", name);
    free(name);
}

void h_check_shop_invariants(PGconn *pg, bool naive_lose)
{
    assert_int_equal(h_scalar(pg,
        "SELECT count(*) FROM product p WHERE p.stock"
        " + coalesce((SELECT sum(quantity) FROM orders o WHERE o.product_id = p.id), 0)"
        " <> p.initial_stock"
        " + coalesce((SELECT sum(quantity) FROM restock r WHERE r.product_id = p.id), 0)"), 0);
    assert_int_equal(h_scalarf(pg,
        "SELECT count(*) FROM account a WHERE %s (a.balance < 0 OR a.balance <>"
        " coalesce((SELECT sum(amount) FROM ledger l WHERE l.account_id = a.id), 0))",
        naive_lose ? "a.name NOT LIKE 'naive-%' AND" : ""), 0);
    assert_int_equal(h_scalar(pg,
        "SELECT count(*) FROM coupon c WHERE c.remaining"
        " + (SELECT count(*) FROM coupon_claim k WHERE k.coupon_id = c.id) <> c.quantity"), 0);
    assert_int_equal(h_scalar(pg,
        "SELECT count(*) FROM orders WHERE total <>"
        " greatest(0, unit_price * quantity - discount)"), 0);
    assert_int_equal(h_scalar(pg,
        "SELECT count(*) FROM orders o WHERE NOT EXISTS (SELECT FROM ledger l"
        " WHERE l.order_id = o.id AND l.amount = -o.total AND l.kind = 'order')"), 0);
}

PGconn *h_own_schema(const char *prefix, char *schema, size_t n)
{
    snprintf(schema, n, "%s", h_unique(prefix));
    char app[64];
    snprintf(app, sizeof app, "%s_side", prefix);
    PGconn *pg = h_connect(app);
    h_execf(pg, "DROP SCHEMA IF EXISTS %s CASCADE; CREATE SCHEMA %s", schema, schema);
    h_execf(pg, "SET search_path TO %s", schema);
    char opt[128];
    snprintf(opt, sizeof opt, "-c search_path=%s -c client_min_messages=warning", schema);
    setenv("PGOPTIONS", opt, 1);
    return pg;
}
