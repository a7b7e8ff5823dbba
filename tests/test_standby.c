/* test_standby.c — the pool and runner against a real primary, standby and
   failover: the high-availability lab of scripts/ha.sh, whose `run`
   exports PGTX_HA_WRITE_URI (the data nodes, target_session_attrs=
   read-write), PGTX_HA_READ_URI (the read replica, with ha.sh run
   --replica) and PGTX_HA_SCRIPT (ha.sh itself, for the failover).

   - A read-write transaction never runs on a standby: READ_ONLY_NODE,
     nothing written, the connections closed; a read-only one runs there.
   - Through a failover, a pool on the write URI follows the primary with
     no restart: every run that said OK is on the new primary, exactly
     once; the runs that failed meanwhile failed with a connection status,
     and the node the runs report changes. */
#include "harness.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *env_required(const char *name)
{
    const char *v = getenv(name);
    if (v == NULL || *v == '\0')
        fail_msg("%s is not set: run this test under scripts/ha.sh run --replica", name);
    return v;
}

static pgtx_pool *pool_on(const char *conninfo, const char *app)
{
    pgtx_pool_config cfg;
    pgtx_pool_config_init(&cfg);
    cfg.conninfo = conninfo;
    cfg.application_name = app;
    cfg.pool_size = 4;
    cfg.max_overflow = 0;
    cfg.checkout_timeout_ms = 10000;
    cfg.connect_timeout_ms = 3000;
    cfg.socket_timeout_ms = 5000;
    return h_pool_from(&cfg);
}

static pgtx_engine *engine_on(pgtx_pool *pool, bool read_only, int attempts, int budget_ms)
{
    pgtx_engine_options o;
    pgtx_engine_options_init(&o);
    o.read_only = read_only;
    o.retry.max_attempts = attempts;
    o.retry.budget_ms = budget_ms;
    o.retry.max_delay_ms = 200;
    pgtx_engine *e = NULL;
    assert_int_equal(pgtx_engine_create(pool, &o, &e, NULL), PGTX_OK);
    return e;
}

static PGconn *primary_conn(void)
{
    PGconn *pg = PQconnectdb(env_required("PGTX_HA_WRITE_URI"));
    if (PQstatus(pg) != CONNECTION_OK)
        fail_msg("cannot reach the primary: %s", PQerrorMessage(pg));
    return pg;
}

static pgtx_status insert_fn(pgtx_tx *tx, void *p, pgtx_error *err)
{
    const char *id = p;
    return pgtx_query(tx, "INSERT INTO standby_t (id) VALUES ($1::bigint)", 1, &id, NULL, err);
}

static pgtx_status read_fn(pgtx_tx *tx, void *p, pgtx_error *err)
{
    (void)p;
    return pgtx_query(tx, "SELECT count(*) FROM standby_t", 0, NULL, NULL, err);
}

static int setup(void **state)
{
    (void)state;
    PGconn *pg = primary_conn();
    h_exec(pg, "DROP TABLE IF EXISTS standby_t; CREATE TABLE standby_t (id bigint PRIMARY KEY)");
    PQfinish(pg);
    return 0;
}

static int wait_replayed(void *arg)
{
    PGconn *replica = arg;
    PGresult *r = PQexec(replica, "SELECT to_regclass('standby_t') IS NOT NULL");
    int ok = PQresultStatus(r) == PGRES_TUPLES_OK && PQgetvalue(r, 0, 0)[0] == 't';
    PQclear(r);
    return ok;
}

/* A pool whose only server is a standby: writes refused before they run,
   reads served, the node named. */
static void read_write_transactions_never_run_on_a_standby(void **state)
{
    (void)state;
    const char *read_uri = env_required("PGTX_HA_READ_URI");
    PGconn *replica = PQconnectdb(read_uri);
    assert_int_equal(PQstatus(replica), CONNECTION_OK);
    assert_int_equal(h_wait_until(wait_replayed, replica, 60000), 1);
    pgtx_pool *pool = pool_on(read_uri, "standby-test");
    pgtx_engine *rw = engine_on(pool, false, 3, 10000);
    pgtx_engine *ro = engine_on(pool, true, 3, 10000);
    pgtx_run_info info;
    pgtx_error err;
    char one[] = "1";
    pgtx_status st = pgtx_run(rw, insert_fn, one, &info, &err);
    printf("# write on a standby: %s after %d attempts (%s)\n", pgtx_status_name(st),
           info.attempts, err.message);
    assert_int_equal(st, PGTX_READ_ONLY_NODE);
    assert_int_equal(pgtx_status_class(st), PGTX_CLASS_CONNECTION);
    assert_int_equal(info.attempts, 3);
    pgtx_pool_stats s;
    pgtx_pool_stats_get(pool, &s);
    assert_int_equal(s.retries_read_only, 2);
    assert_int_equal(s.read_only_closed, 3);
    assert_int_equal(s.idle, 0);
    assert_int_equal(pgtx_run(ro, read_fn, NULL, &info, &err), PGTX_OK);
    char want[PGTX_NODE_SIZE];
    snprintf(want, sizeof want, "%s:%s", PQhost(replica), PQport(replica));
    assert_string_equal(info.node, want);
    PGconn *pg = primary_conn();
    assert_int_equal(h_scalar(pg, "SELECT count(*) FROM standby_t WHERE id = 1"), 0);
    PQfinish(pg);
    pgtx_engine_destroy(rw);
    pgtx_engine_destroy(ro);
    pgtx_pool_destroy(pool);
    PQfinish(replica);
}

/* ---- through a failover ---------------------------------------------------- */

#define WRITERS 4
#define MAX_IDS 200000

typedef struct writer {
    pgtx_engine *engine;
    int n;
    atomic_bool *stop;
    long long *ok_ids; /* committed: must be there */
    int n_ok;
    long long *unknown_ids; /* COMMIT_UNKNOWN: there at most once */
    int n_unknown;
    int failed[PGTX_STATUS_COUNT_];
    char nodes[2][PGTX_NODE_SIZE]; /* the first and the last node seen */
} writer;

static void *write_loop(void *p)
{
    writer *w = p;
    for (long long i = 0; i < MAX_IDS / WRITERS && !atomic_load(w->stop); i++) {
        char id[24];
        long long v = (long long)w->n * (MAX_IDS / WRITERS) + i + 1;
        snprintf(id, sizeof id, "%lld", v);
        pgtx_run_info info;
        pgtx_error err;
        pgtx_status st = pgtx_run(w->engine, insert_fn, id, &info, &err);
        if (st == PGTX_OK) {
            w->ok_ids[w->n_ok++] = v;
            if (w->nodes[0][0] == '\0')
                memcpy(w->nodes[0], info.node, sizeof info.node);
            memcpy(w->nodes[1], info.node, sizeof info.node);
        } else {
            w->failed[st]++;
            if (st == PGTX_COMMIT_UNKNOWN)
                w->unknown_ids[w->n_unknown++] = v;
            usleep(20000);
        }
    }
    return NULL;
}

static int ha_script(const char *cmd)
{
    char line[1024];
    snprintf(line, sizeof line, "'%s' %s", env_required("PGTX_HA_SCRIPT"), cmd);
    return system(line);
}

static void check_writers(writer *w)
{
    PGconn *pg = primary_conn();
    int ok = 0, unknown_there = 0;
    for (int k = 0; k < WRITERS; k++) {
        for (int i = 0; i < w[k].n_ok; i++)
            if (h_scalarf(pg, "SELECT count(*) FROM standby_t WHERE id = %lld", w[k].ok_ids[i]) != 1)
                fail_msg("committed id %lld is not on the new primary", w[k].ok_ids[i]);
        ok += w[k].n_ok;
        for (int i = 0; i < w[k].n_unknown; i++)
            unknown_there += (int)h_scalarf(pg, "SELECT count(*) FROM standby_t WHERE id = %lld",
                                            w[k].unknown_ids[i]);
        for (int s = 0; s < PGTX_STATUS_COUNT_; s++)
            if (w[k].failed[s] && pgtx_status_class((pgtx_status)s) != PGTX_CLASS_CONNECTION &&
                pgtx_status_class((pgtx_status)s) != PGTX_CLASS_POOL)
                fail_msg("a run failed with %s", pgtx_status_name((pgtx_status)s));
    }
    long long rows = h_scalar(pg, "SELECT count(*) FROM standby_t");
    printf("# %d runs committed, all on the new primary; %lld rows (%d committed with the "
           "COMMIT in doubt)\n", ok, rows, unknown_there);
    assert_true(rows == ok + unknown_there);
    PQfinish(pg);
}

static void a_pool_follows_the_primary_through_a_failover(void **state)
{
    (void)state;
    pgtx_pool *pool = pool_on(env_required("PGTX_HA_WRITE_URI"), "failover-test");
    pgtx_engine *e = engine_on(pool, false, 50, 30000);
    atomic_bool stop;
    atomic_init(&stop, false);
    writer w[WRITERS];
    memset(w, 0, sizeof w);
    pthread_t t[WRITERS];
    for (int k = 0; k < WRITERS; k++) {
        w[k] = (writer){.engine = e, .n = k, .stop = &stop};
        w[k].ok_ids = calloc(MAX_IDS / WRITERS, sizeof *w[k].ok_ids);
        w[k].unknown_ids = calloc(MAX_IDS / WRITERS, sizeof *w[k].unknown_ids);
        assert_non_null(w[k].ok_ids);
        assert_non_null(w[k].unknown_ids);
        assert_int_equal(pthread_create(&t[k], NULL, write_loop, &w[k]), 0);
    }
    sleep(2);
    int64_t t0 = h_now_ms();
    int rc = ha_script("failover >&2");
    int64_t took = h_now_ms() - t0;
    sleep(3);
    atomic_store(&stop, true);
    for (int k = 0; k < WRITERS; k++)
        pthread_join(t[k], NULL);
    assert_int_equal(rc, 0);
    pgtx_pool_stats s;
    pgtx_pool_stats_get(pool, &s);
    printf("# failover took %lld ms; retries: connection %llu, read-only %llu; commit unknown %llu;"
           " connections opened %llu, connect errors %llu\n", (long long)took,
           (unsigned long long)s.retries_connection, (unsigned long long)s.retries_read_only,
           (unsigned long long)s.commit_unknown, (unsigned long long)s.created,
           (unsigned long long)s.connect_errors);
    printf("# node before: %s, after: %s\n", w[0].nodes[0], w[0].nodes[1]);
    assert_string_not_equal(w[0].nodes[0], w[0].nodes[1]);
    check_writers(w);
    for (int k = 0; k < WRITERS; k++) {
        free(w[k].ok_ids);
        free(w[k].unknown_ids);
    }
    pgtx_engine_destroy(e);
    pgtx_pool_destroy(pool);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(read_write_transactions_never_run_on_a_standby),
        cmocka_unit_test(a_pool_follows_the_primary_through_a_failover),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
