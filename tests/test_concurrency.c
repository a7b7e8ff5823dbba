/* test_concurrency.c — many threads, one pool: engines share connections,
   SERIALIZABLE + retry keeps a hot counter exact, READ COMMITTED
   read-modify-write visibly loses updates. */
#include "harness.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static PGconn *admin;
static char *tbl;

static int setup(void **state)
{
    (void)state;
    admin = h_connect("conc-admin");
    tbl = h_table(admin, "conc_counter", "id int PRIMARY KEY, n bigint");
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    h_table_drop(admin, tbl);
    PQfinish(admin);
    return 0;
}

/* ---- 1. three engines, one pool of 4, 32 threads ------------------------ */

typedef struct share_ctx {
    pgtx_engine *engines[3];
    const char *expect[3];
    int64_t until_ms;
    atomic_int failures;
    atomic_int wrong_isolation;
    atomic_long done;
    atomic_int stop;
} share_ctx;

typedef struct share_worker {
    share_ctx *ctx;
    int index;
} share_worker;

typedef struct iso_arg {
    const char *expect;
    int row;
    bool wrong;
} iso_arg;

static pgtx_status iso_and_update(pgtx_tx *tx, void *p, pgtx_error *err)
{
    iso_arg *a = p;
    PGresult *r = NULL;
    pgtx_status st = pgtx_query(tx, "SHOW transaction_isolation", 0, NULL, &r, err);
    if (st != PGTX_OK)
        return st;
    a->wrong = strcmp(PQgetvalue(r, 0, 0), a->expect) != 0;
    PQclear(r);
    char sql[128], row[16];
    snprintf(row, sizeof row, "%d", a->row);
    const char *params[] = {row};
    snprintf(sql, sizeof sql, "UPDATE %s SET n = n + 1 WHERE id = $1::int", tbl);
    return pgtx_query(tx, sql, 1, params, NULL, err);
}

static void *share_work(void *p)
{
    share_worker *w = p;
    share_ctx *c = w->ctx;
    int k = w->index % 3;
    /* Bounded in time and in count. */
    for (int i = 0; i < 100000 && h_now_ms() < c->until_ms; i++) {
        iso_arg a = {c->expect[k], 1000 + w->index, false};
        pgtx_error err;
        if (pgtx_run(c->engines[k], iso_and_update, &a, NULL, &err) != PGTX_OK)
            atomic_fetch_add(&c->failures, 1);
        if (a.wrong)
            atomic_fetch_add(&c->wrong_isolation, 1);
        atomic_fetch_add(&c->done, 1);
    }
    return NULL;
}

typedef struct monitor {
    const char *app;
    atomic_int *stop;
    int max_seen;
    int samples;
} monitor;

static void *watch_connections(void *p)
{
    monitor *m = p;
    PGconn *side = h_connect("conc-monitor");
    char sql[256];
    snprintf(sql, sizeof sql, "SELECT count(*) FROM pg_stat_activity "
                              "WHERE application_name = '%s'", m->app);
    for (int i = 0; i < 100000 && !atomic_load(m->stop); i++) {
        PGresult *r = PQexec(side, sql);
        if (PQresultStatus(r) == PGRES_TUPLES_OK) {
            int n = atoi(PQgetvalue(r, 0, 0));
            if (n > m->max_seen)
                m->max_seen = n;
            m->samples++;
        }
        PQclear(r);
        usleep(2000);
    }
    PQfinish(side);
    return NULL;
}

static void engines_share_one_pool(void **state)
{
    (void)state;
    enum { THREADS = 32, POOL = 4 };
    const char *app = h_unique("conc_share");
    for (int i = 0; i < THREADS; i++)
        h_execf(admin, "INSERT INTO %s VALUES (%d, 0)", tbl, 1000 + i);
    pgtx_pool *pool = h_pool(POOL, 0, app);
    share_ctx ctx = {.until_ms = h_now_ms() + 3000};
    pgtx_isolation iso[3] = {PGTX_READ_COMMITTED, PGTX_REPEATABLE_READ, PGTX_SERIALIZABLE};
    const char *names[3] = {"read committed", "repeatable read", "serializable"};
    for (int k = 0; k < 3; k++) {
        ctx.engines[k] = h_engine(pool, iso[k]);
        ctx.expect[k] = names[k];
    }
    monitor m = {app, &ctx.stop, 0, 0};
    pthread_t mt;
    assert_int_equal(pthread_create(&mt, NULL, watch_connections, &m), 0);
    share_worker w[THREADS];
    for (int i = 0; i < THREADS; i++)
        w[i] = (share_worker){&ctx, i};
    h_run_threads(THREADS, share_work, w, sizeof w[0]);
    atomic_store(&ctx.stop, 1);
    pthread_join(mt, NULL);

    pgtx_pool_stats s;
    pgtx_pool_stats_get(pool, &s);
    print_message("shared pool: %ld transactions by %d threads over 3 engines, "
                  "max %d connections seen in %d samples, %llu waits\n",
                  (long)atomic_load(&ctx.done), THREADS, m.max_seen, m.samples,
                  (unsigned long long)s.waits);
    assert_int_equal(atomic_load(&ctx.failures), 0);
    assert_int_equal(atomic_load(&ctx.wrong_isolation), 0);
    assert_true(atomic_load(&ctx.done) > THREADS);
    assert_true(m.samples > 10);
    assert_true(m.max_seen >= 1);
    assert_true(m.max_seen <= POOL);
    assert_true(s.created <= POOL);
    assert_int_equal(s.in_use, 0);
    /* Every committed transaction is in the table, exactly once. */
    assert_int_equal(h_scalarf(admin, "SELECT sum(n) FROM %s WHERE id >= 1000", tbl),
                     (long long)s.commits);
    for (int k = 0; k < 3; k++)
        pgtx_engine_destroy(ctx.engines[k]);
    pgtx_pool_destroy(pool);
}

/* ---- 2 and 3. read-modify-write on a hot row ---------------------------- */

typedef struct rmw_ctx {
    pgtx_engine *engine;
    int per_thread;
    atomic_int failures;
    atomic_long attempts;
} rmw_ctx;

/* Read n, add one in C, write it back: the lost-update pattern.  A short
   pause between read and write widens the window the way a real
   application's work would. */
static pgtx_status read_modify_write(pgtx_tx *tx, void *p, pgtx_error *err)
{
    (void)p;
    char sql[128];
    snprintf(sql, sizeof sql, "SELECT n FROM %s WHERE id = 1", tbl);
    PGresult *r = NULL;
    pgtx_status st = pgtx_query(tx, sql, 0, NULL, &r, err);
    if (st != PGTX_OK)
        return st;
    long long n = atoll(PQgetvalue(r, 0, 0));
    PQclear(r);
    usleep(200);
    char val[32];
    snprintf(val, sizeof val, "%lld", n + 1);
    const char *params[] = {val};
    snprintf(sql, sizeof sql, "UPDATE %s SET n = $1::bigint WHERE id = 1", tbl);
    return pgtx_query(tx, sql, 1, params, NULL, err);
}

static void *rmw_work(void *p)
{
    rmw_ctx *c = p;
    for (int i = 0; i < c->per_thread; i++) {
        pgtx_run_info info = {0};
        pgtx_error err;
        if (pgtx_run(c->engine, read_modify_write, NULL, &info, &err) != PGTX_OK)
            atomic_fetch_add(&c->failures, 1);
        atomic_fetch_add(&c->attempts, info.attempts);
    }
    return NULL;
}

typedef struct rmw_result {
    long long final;
    long attempts;
    int failures;
    pgtx_pool_stats stats;
    int leftover_connections;
} rmw_result;

static rmw_result run_rmw(pgtx_isolation iso, int threads, int per_thread)
{
    h_execf(admin, "DELETE FROM %s WHERE id = 1; INSERT INTO %s VALUES (1, 0)", tbl, tbl);
    const char *app = h_unique("conc_rmw");
    pgtx_pool *pool = h_pool(8, 0, app);
    /* Generous: the test checks correctness, not the default budget. */
    rmw_ctx ctx = {.per_thread = per_thread, .engine = h_engine_patient(pool, iso)};
    pthread_t *t = calloc((size_t)threads, sizeof *t);
    assert_non_null(t);
    for (int i = 0; i < threads; i++)
        assert_int_equal(pthread_create(&t[i], NULL, rmw_work, &ctx), 0);
    for (int i = 0; i < threads; i++)
        pthread_join(t[i], NULL);
    free(t);
    rmw_result res;
    pgtx_pool_stats_get(pool, &res.stats);
    res.final = h_scalarf(admin, "SELECT n FROM %s WHERE id = 1", tbl);
    res.attempts = atomic_load(&ctx.attempts);
    res.failures = atomic_load(&ctx.failures);
    pgtx_engine_destroy(ctx.engine);
    pgtx_pool_destroy(pool);
    /* Backends leave a moment after the pool closes them: poll. */
    res.leftover_connections = h_wait_app_gone(admin, app, 10000);
    return res;
}

static void serializable_retry_keeps_the_counter_exact(void **state)
{
    (void)state;
    enum { THREADS = 16, EACH = 200 };
    rmw_result r = run_rmw(PGTX_SERIALIZABLE, THREADS, EACH);
    print_message("serializable: final %lld of %d, %ld attempts, %llu serialization "
                  "retries, %llu deadlock retries\n", r.final, THREADS * EACH,
                  r.attempts, (unsigned long long)r.stats.retries_serialization,
                  (unsigned long long)r.stats.retries_deadlock);
    assert_int_equal(r.failures, 0);
    assert_int_equal(r.final, THREADS * EACH);
    assert_true(r.stats.retries_serialization + r.stats.retries_deadlock >= 1);
    assert_true(r.attempts > THREADS * EACH);
    /* No attempt leaked a connection: every checkout came back. */
    assert_int_equal(r.stats.in_use, 0);
    assert_int_equal((long)r.stats.checkouts, r.attempts);
    assert_int_equal(r.stats.commits, THREADS * EACH);
    assert_int_equal((long)r.stats.rollbacks, r.attempts - THREADS * EACH);
    assert_true(r.stats.created <= 8);
    assert_int_equal(r.leftover_connections, 0);
}

static void read_committed_read_modify_write_loses_updates(void **state)
{
    (void)state;
    enum { THREADS = 16, EACH = 200 };
    rmw_result r = run_rmw(PGTX_READ_COMMITTED, THREADS, EACH);
    print_message("read committed: final %lld of %d: %lld updates lost\n", r.final,
                  THREADS * EACH, THREADS * EACH - r.final);
    assert_int_equal(r.failures, 0);
    /* Every transaction committed, yet the counter is short. */
    assert_int_equal(r.stats.commits, THREADS * EACH);
    assert_int_equal(r.attempts, THREADS * EACH); /* nothing to retry */
    assert_true(r.final < THREADS * EACH);
    assert_true(r.final > 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(engines_share_one_pool),
        cmocka_unit_test(serializable_retry_keeps_the_counter_exact),
        cmocka_unit_test(read_committed_read_modify_write_loses_updates),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
