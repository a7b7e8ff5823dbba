/* test_node.c — what the runner reports about the server it ran on (node,
   commit LSN), read-only sessions told apart from standbys, and the look
   at idle connections after a transaction lost its own. */
#include "harness.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static PGconn *admin;
static char *tbl;

static int setup(void **state)
{
    (void)state;
    admin = h_connect("node-admin");
    tbl = h_table(admin, "node_t", "id serial PRIMARY KEY, v int");
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    h_table_drop(admin, tbl);
    PQfinish(admin);
    return 0;
}

static pgtx_status insert_fn(pgtx_tx *tx, void *p, pgtx_error *err)
{
    (void)p;
    char sql[128];
    snprintf(sql, sizeof sql, "INSERT INTO %s (v) VALUES (1)", tbl);
    return pgtx_query(tx, sql, 0, NULL, NULL, err);
}

static pgtx_engine *engine_lsn(pgtx_pool *pool, bool report, bool read_only)
{
    pgtx_engine_options o;
    pgtx_engine_options_init(&o);
    o.report_commit_lsn = report;
    o.read_only = read_only;
    pgtx_engine *e = NULL;
    assert_int_equal(pgtx_engine_create(pool, &o, &e, NULL), PGTX_OK);
    return e;
}

static uint64_t side_lsn(const char *fn)
{
    char sql[64];
    snprintf(sql, sizeof sql, "SELECT %s()", fn);
    PGresult *r = PQexec(admin, sql);
    assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
    uint64_t v = 0;
    assert_int_equal(pgtx_lsn_parse(PQgetvalue(r, 0, 0), &v), PGTX_OK);
    PQclear(r);
    return v;
}

/* The LSN comes back with the commit, lies between the WAL flushed before
   and the insert position after, grows, and is 0 when not asked for. */
static void commit_lsn_is_reported_when_asked(void **state)
{
    (void)state;
    pgtx_pool *pool = h_pool(1, 0, "node-lsn");
    pgtx_engine *on = engine_lsn(pool, true, false);
    pgtx_engine *off = engine_lsn(pool, false, false);
    pgtx_run_info info;
    pgtx_error err;
    uint64_t before = side_lsn("pg_current_wal_insert_lsn");
    assert_int_equal(pgtx_run(on, insert_fn, NULL, &info, &err), PGTX_OK);
    uint64_t first = info.commit_lsn;
    uint64_t after = side_lsn("pg_current_wal_insert_lsn");
    assert_true(first > before);
    assert_true(first <= after);
    /* the commit is durable up to there: flushed, so a standby can get it */
    assert_true(side_lsn("pg_current_wal_flush_lsn") >= first ||
                h_scalar(admin, "SELECT current_setting('synchronous_commit') = 'off'"));
    assert_int_equal(pgtx_run(on, insert_fn, NULL, &info, &err), PGTX_OK);
    assert_true(info.commit_lsn > first);
    assert_int_equal(pgtx_run(off, insert_fn, NULL, &info, &err), PGTX_OK);
    assert_int_equal(info.commit_lsn, 0);
    /* the round trip is still one: BEGIN, INSERT, COMMIT and the position */
    pgtx_pool_stats s0, s1;
    pgtx_pool_stats_get(pool, &s0);
    assert_int_equal(pgtx_run(on, insert_fn, NULL, &info, &err), PGTX_OK);
    pgtx_pool_stats_get(pool, &s1);
    assert_int_equal(s1.round_trips - s0.round_trips, 2);
    pgtx_engine_destroy(on);
    pgtx_engine_destroy(off);
    pgtx_pool_destroy(pool);
}

static pgtx_status read_fn(pgtx_tx *tx, void *p, pgtx_error *err)
{
    (void)p;
    return pgtx_query(tx, "SELECT 1", 0, NULL, NULL, err);
}

/* A read on the primary is covered by the insert position when it ran:
   at or past every commit it could see.  A failed run reports none. */
static void read_only_runs_report_what_they_saw(void **state)
{
    (void)state;
    pgtx_pool *pool = h_pool(1, 0, "node-lsn-ro");
    pgtx_engine *ro = engine_lsn(pool, true, true);
    pgtx_engine *rw = engine_lsn(pool, true, false);
    pgtx_run_info info;
    pgtx_error err;
    assert_int_equal(pgtx_run(rw, insert_fn, NULL, &info, &err), PGTX_OK);
    uint64_t wrote = info.commit_lsn;
    assert_int_equal(pgtx_run(ro, read_fn, NULL, &info, &err), PGTX_OK);
    assert_true(info.commit_lsn >= wrote);
    assert_true(info.commit_lsn <= side_lsn("pg_current_wal_insert_lsn"));
    assert_int_equal(pgtx_run(ro, insert_fn, NULL, &info, &err), PGTX_SQL);
    assert_string_equal(err.sqlstate, "25006");
    assert_int_equal(info.commit_lsn, 0);
    pgtx_engine_destroy(ro);
    pgtx_engine_destroy(rw);
    pgtx_pool_destroy(pool);
}

/* "host:port" of the server, as the side connection sees it. */
static void node_is_the_server_it_ran_on(void **state)
{
    (void)state;
    pgtx_pool *pool = h_pool(1, 0, "node-name");
    pgtx_engine *e = engine_lsn(pool, false, false);
    pgtx_run_info info;
    pgtx_error err;
    assert_int_equal(pgtx_run(e, read_fn, NULL, &info, &err), PGTX_OK);
    char want[PGTX_NODE_SIZE];
    snprintf(want, sizeof want, "%s:%s", PQhost(admin), PQport(admin));
    assert_string_equal(info.node, want);
    pgtx_engine_destroy(e);
    pgtx_pool_destroy(pool);
}

static pgtx_status own_read_only_fn(pgtx_tx *tx, void *p, pgtx_error *err)
{
    (void)p;
    pgtx_status st = pgtx_query(tx, "SET TRANSACTION READ ONLY", 0, NULL, NULL, err);
    return st != PGTX_OK ? st : insert_fn(tx, NULL, err);
}

/* A primary says in_hot_standby=off: a 25006 there is the transaction's
   own doing, neither retried nor a reason to close the connection. */
static void own_read_only_transaction_is_not_a_standby(void **state)
{
    (void)state;
    pgtx_pool *pool = h_pool(1, 0, "node-own-ro");
    pgtx_engine *e = engine_lsn(pool, false, false);
    pgtx_run_info info;
    pgtx_error err;
    pgtx_status st = pgtx_run(e, own_read_only_fn, NULL, &info, &err);
    assert_int_equal(st, PGTX_SQL);
    assert_string_equal(err.sqlstate, "25006");
    assert_int_equal(info.attempts, 1);
    pgtx_pool_stats s;
    pgtx_pool_stats_get(pool, &s);
    assert_int_equal(s.read_only_closed, 0);
    assert_int_equal(s.retries_read_only, 0);
    assert_int_equal(s.idle, 1);
    pgtx_engine_destroy(e);
    pgtx_pool_destroy(pool);
}

typedef struct pids {
    int pid[4];
} pids;

static pgtx_status pid_fn(pgtx_tx *tx, void *p, pgtx_error *err)
{
    PGresult *r = NULL;
    pgtx_status st = pgtx_query(tx, "SELECT pg_backend_pid()", 0, NULL, &r, err);
    if (st == PGTX_OK)
        *(int *)p = atoi(PQgetvalue(r, 0, 0));
    PQclear(r);
    return st;
}

/* Four idle connections returned a moment ago, all killed from the side:
   the first transaction finds its connection dead and retries; the pool
   then looks at the others before handing them out, so the transactions
   after it run at once instead of each paying for a dead one. */
static void after_a_lost_connection_idle_ones_are_looked_at(void **state)
{
    (void)state;
    pgtx_pool *pool = h_pool(4, 0, "node-suspect");
    pgtx_engine *e = engine_lsn(pool, false, false);
    pgtx_conn *c[4];
    pids p = {{0}};
    for (int i = 0; i < 4; i++) {
        assert_int_equal(pgtx_pool_checkout(pool, -1, &c[i], NULL), PGTX_OK);
        p.pid[i] = PQbackendPID(pgtx_conn_pg_borrow(c[i]));
    }
    /* kill first, return after: returned "just now", as in a busy pool */
    for (int i = 0; i < 4; i++)
        h_execf(admin, "SELECT pg_terminate_backend(%d)", p.pid[i]);
    assert_int_equal(h_wait_app_gone(admin, "node-suspect", 10000), 0);
    for (int i = 0; i < 4; i++)
        pgtx_pool_return(c[i]);
    pgtx_pool_stats s0, s1;
    pgtx_pool_stats_get(pool, &s0);
    int retries = 0;
    for (int i = 0; i < 4; i++) {
        pgtx_run_info info;
        pgtx_error err;
        int pid = 0;
        pgtx_status st = pgtx_run(e, pid_fn, &pid, &info, &err);
        if (st != PGTX_OK)
            fail_msg("%s: %s", pgtx_status_name(st), err.message);
        retries += info.attempts - 1;
    }
    pgtx_pool_stats_get(pool, &s1);
    printf("# 4 runs after 4 idle connections died: %d retried, %llu discarded\n",
           retries, (unsigned long long)(s1.discarded - s0.discarded));
    assert_true(retries <= 1);
    assert_int_equal(s1.discarded - s0.discarded, 4);
    pgtx_engine_destroy(e);
    pgtx_pool_destroy(pool);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(commit_lsn_is_reported_when_asked),
        cmocka_unit_test(read_only_runs_report_what_they_saw),
        cmocka_unit_test(node_is_the_server_it_ran_on),
        cmocka_unit_test(own_read_only_transaction_is_not_a_standby),
        cmocka_unit_test(after_a_lost_connection_idle_ones_are_looked_at),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
