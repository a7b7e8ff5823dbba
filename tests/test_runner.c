/* test_runner.c — the transaction runner: commit, rollback, classification,
   retries, lost connections before and during COMMIT. */
#include "harness.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static PGconn *admin;
static char *tbl;
static pgtx_pool *pool;
static pgtx_engine *rc;

static int setup(void **state)
{
    (void)state;
    admin = h_connect("runner-admin");
    tbl = h_table(admin, "runner_t", "id int PRIMARY KEY, v int");
    pool = h_pool(2, 0, "runner");
    rc = h_engine(pool, PGTX_READ_COMMITTED);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    pgtx_engine_destroy(rc);
    pgtx_pool_destroy(pool);
    h_table_drop(admin, tbl);
    PQfinish(admin);
    return 0;
}

static int reset_table(void **state)
{
    (void)state;
    h_execf(admin, "TRUNCATE %s", tbl);
    return 0;
}

static long long rows(void) { return h_scalarf(admin, "SELECT count(*) FROM %s", tbl); }

/* Insert id, then do what `then` says. */
typedef enum then_do { THEN_OK, THEN_ABORT, THEN_SWALLOW, THEN_STALE_TWICE,
                       THEN_ALWAYS_STALE } then_do;

typedef struct ins_arg {
    int id;
    then_do then;
    int calls;
} ins_arg;

static pgtx_status insert_fn(pgtx_tx *tx, void *p, pgtx_error *err)
{
    ins_arg *a = p;
    a->calls++;
    char sql[128], id[16];
    snprintf(id, sizeof id, "%d", a->id);
    const char *params[] = {id};
    snprintf(sql, sizeof sql, "INSERT INTO %s VALUES ($1::int, 0)", tbl);
    pgtx_status st = pgtx_query(tx, sql, 1, params, NULL, err);
    if (st != PGTX_OK)
        return st;
    switch (a->then) {
    case THEN_ABORT:
        return pgtx_fail(err, PGTX_ABORTED, "changed my mind about %d", a->id);
    case THEN_SWALLOW:
        (void)pgtx_query(tx, sql, 1, params, NULL, NULL); /* duplicate key */
        return PGTX_OK;
    case THEN_STALE_TWICE:
        return pgtx_tx_attempt(tx) <= 2 ? PGTX_STALE : PGTX_OK;
    case THEN_ALWAYS_STALE:
        return PGTX_STALE;
    default:
        return PGTX_OK;
    }
}

static void commits_on_ok(void **state)
{
    (void)state;
    ins_arg a = {1, THEN_OK, 0};
    pgtx_run_info info;
    pgtx_error err;
    assert_int_equal(pgtx_run(rc, insert_fn, &a, &info, &err), PGTX_OK);
    assert_int_equal(info.attempts, 1);
    assert_false(info.exhausted);
    assert_int_equal(rows(), 1);
}

static void callback_abort_rolls_back(void **state)
{
    (void)state;
    ins_arg a = {2, THEN_ABORT, 0};
    pgtx_run_info info;
    pgtx_error err;
    assert_int_equal(pgtx_run(rc, insert_fn, &a, &info, &err), PGTX_ABORTED);
    assert_string_equal(err.message, "changed my mind about 2");
    assert_int_equal(pgtx_status_class(err.status), PGTX_CLASS_ABORT);
    assert_int_equal(info.attempts, 1);
    assert_int_equal(rows(), 0);
}

static void swallowed_error_still_rolls_back(void **state)
{
    (void)state;
    ins_arg a = {3, THEN_SWALLOW, 0};
    pgtx_error err;
    assert_int_equal(pgtx_run(rc, insert_fn, &a, NULL, &err), PGTX_UNIQUE_VIOLATION);
    assert_string_equal(err.sqlstate, "23505");
    assert_non_null(strstr(err.message, "duplicate key"));
    assert_int_equal(rows(), 0);
}

static void constraint_violation_is_classified(void **state)
{
    (void)state;
    h_execf(admin, "INSERT INTO %s VALUES (4, 0)", tbl);
    ins_arg a = {4, THEN_OK, 0};
    pgtx_run_info info;
    pgtx_error err;
    assert_int_equal(pgtx_run(rc, insert_fn, &a, &info, &err), PGTX_UNIQUE_VIOLATION);
    assert_int_equal(pgtx_status_class(err.status), PGTX_CLASS_CONSTRAINT);
    assert_int_equal(info.attempts, 1); /* not retried */
}

/* The first attempt fails with the internal error text `message` (raised
   from PL/pgSQL with SQLSTATE XX000, as PostgreSQL's own elog does); the
   next ones insert a row. */
static pgtx_status internal_error_once(pgtx_tx *tx, void *p, pgtx_error *err)
{
    const char *message = p;
    char sql[512];
    if (pgtx_tx_attempt(tx) == 1)
        snprintf(sql, sizeof sql, "DO $$ BEGIN RAISE EXCEPTION USING ERRCODE = 'XX000', "
                 "MESSAGE = '%s'; END $$", message);
    else
        snprintf(sql, sizeof sql, "INSERT INTO %s VALUES (7, 0)", tbl);
    return pgtx_query(tx, sql, 0, NULL, NULL, err);
}

static void multixact_race_is_retried_other_internal_errors_are_not(void **state)
{
    (void)state;
    pgtx_run_info info;
    pgtx_error err;
    char race[] = "new multixact has more than one updating member: "
                  "0 2[7622 (nokeyupd), 7623 (nokeyupd)]";
    pgtx_status st = pgtx_run(rc, internal_error_once, race, &info, &err);
    if (st != PGTX_OK)
        fail_msg("%s: %s", pgtx_status_name(st), err.message);
    assert_int_equal(info.attempts, 2);
    assert_int_equal(rows(), 1);
    h_execf(admin, "TRUNCATE %s", tbl);
    char other[] = "could not read block 0 of relation base/1/2";
    assert_int_equal(pgtx_run(rc, internal_error_once, other, &info, &err), PGTX_SQL);
    assert_string_equal(err.sqlstate, "XX000");
    assert_int_equal(info.attempts, 1);
    assert_int_equal(rows(), 0);
}

static void stale_is_retried(void **state)
{
    (void)state;
    pgtx_pool_stats s0, s1;
    pgtx_pool_stats_get(pool, &s0);
    ins_arg a = {5, THEN_STALE_TWICE, 0};
    pgtx_run_info info;
    assert_int_equal(pgtx_run(rc, insert_fn, &a, &info, NULL), PGTX_OK);
    assert_int_equal(info.attempts, 3);
    assert_int_equal(a.calls, 3);
    assert_int_equal(rows(), 1); /* the rolled-back attempts left nothing */
    pgtx_pool_stats_get(pool, &s1);
    assert_int_equal(s1.retries_stale - s0.retries_stale, 2);
    assert_int_equal(s1.rollbacks - s0.rollbacks, 2);
    assert_int_equal(s1.commits - s0.commits, 1);
}

static void attempts_and_budget_bound_retries(void **state)
{
    (void)state;
    pgtx_engine_options o;
    pgtx_engine_options_init(&o);
    o.retry.max_attempts = 4;
    pgtx_engine *e = NULL;
    assert_int_equal(pgtx_engine_create(pool, &o, &e, NULL), PGTX_OK);
    ins_arg a = {6, THEN_ALWAYS_STALE, 0};
    pgtx_run_info info;
    pgtx_error err;
    assert_int_equal(pgtx_run(e, insert_fn, &a, &info, &err), PGTX_STALE);
    assert_int_equal(info.attempts, 4);
    assert_true(info.exhausted);
    assert_int_equal(err.status, PGTX_STALE);
    pgtx_engine_destroy(e);

    /* A time budget: attempts stop once the next one would start late. */
    pgtx_engine_options_init(&o);
    o.retry.max_attempts = 1000000;
    o.retry.budget_ms = 150;
    o.retry.base_delay_ms = 20;
    o.retry.max_delay_ms = 20;
    assert_int_equal(pgtx_engine_create(pool, &o, &e, NULL), PGTX_OK);
    a.calls = 0;
    assert_int_equal(pgtx_run(e, insert_fn, &a, &info, &err), PGTX_STALE);
    assert_true(info.exhausted);
    assert_true(info.attempts > 1);
    assert_true(info.attempts < 1000);
    assert_true(info.elapsed_us < 150 * 1000 + 5 * 1000 * 1000); /* no hang */
    pgtx_engine_destroy(e);

    /* A status left out of retry_on is returned at once. */
    pgtx_engine_options_init(&o);
    o.retry.retry_on = PGTX_RETRY_SERIALIZATION;
    assert_int_equal(pgtx_engine_create(pool, &o, &e, NULL), PGTX_OK);
    assert_int_equal(pgtx_run(e, insert_fn, &a, &info, &err), PGTX_STALE);
    assert_int_equal(info.attempts, 1);
    assert_false(info.exhausted);
    pgtx_engine_destroy(e);
    assert_int_equal(rows(), 0);
}

/* ---- lost connections ---------------------------------------------------- */

typedef struct kill_arg {
    int kill_on_attempt;
    bool kill_after_last; /* kill after the last statement, before COMMIT */
    int pids[8];
    int attempts;
} kill_arg;

static pgtx_status insert_and_kill(pgtx_tx *tx, void *p, pgtx_error *err)
{
    kill_arg *a = p;
    int n = pgtx_tx_attempt(tx);
    a->attempts = n;
    char sql[128];
    snprintf(sql, sizeof sql, "INSERT INTO %s VALUES (%d, 1)", tbl, 100 + n);
    pgtx_status st = pgtx_query(tx, sql, 0, NULL, NULL, err);
    if (st != PGTX_OK)
        return st;
    a->pids[n] = PQbackendPID(pgtx_tx_pg_borrow(tx));
    if (n == a->kill_on_attempt)
        h_kill_backend(admin, a->pids[n]);
    if (a->kill_after_last)
        return PGTX_OK;
    snprintf(sql, sizeof sql, "UPDATE %s SET v = v + 1", tbl);
    return pgtx_query(tx, sql, 0, NULL, NULL, err);
}

static void killed_mid_transaction_is_retried_on_a_fresh_connection(void **state)
{
    (void)state;
    pgtx_pool_stats s0, s1;
    pgtx_pool_stats_get(pool, &s0);
    kill_arg a = {.kill_on_attempt = 1};
    pgtx_run_info info;
    pgtx_error err;
    pgtx_status st = pgtx_run(rc, insert_and_kill, &a, &info, &err);
    if (st != PGTX_OK)
        fail_msg("%s: %s", pgtx_status_name(st), err.message);
    assert_int_equal(info.attempts, 2);
    assert_int_not_equal(a.pids[1], a.pids[2]);
    /* Only the second attempt's row exists, updated once. */
    assert_int_equal(rows(), 1);
    assert_int_equal(h_scalarf(admin, "SELECT v FROM %s WHERE id = 102", tbl), 2);
    pgtx_pool_stats_get(pool, &s1);
    assert_int_equal(s1.retries_connection - s0.retries_connection, 1);
}

static void killed_before_commit_is_retried(void **state)
{
    (void)state;
    kill_arg a = {.kill_on_attempt = 1, .kill_after_last = true};
    pgtx_run_info info;
    pgtx_error err;
    pgtx_status st = pgtx_run(rc, insert_and_kill, &a, &info, &err);
    if (st != PGTX_OK)
        fail_msg("%s: %s", pgtx_status_name(st), err.message);
    /* The server's goodbye arrived before COMMIT was sent: known rolled
       back, so a retry is safe. */
    assert_int_equal(info.attempts, 2);
    assert_int_equal(rows(), 1);
    assert_int_equal(h_scalarf(admin, "SELECT count(*) FROM %s WHERE id = 102", tbl), 1);
}

typedef struct commit_killer {
    int pid;
    int killed;
} commit_killer;

static void *kill_during_commit(void *p)
{
    commit_killer *k = p;
    PGconn *side = h_connect("runner-killer");
    for (int64_t end = h_now_ms() + 10000; h_now_ms() < end;) {
        PGresult *r = PQexec(side, "SELECT pid FROM pg_stat_activity "
                                   "WHERE state = 'active' AND query = 'COMMIT' "
                                   "AND application_name = 'runner-commit'");
        if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1) {
            k->pid = atoi(PQgetvalue(r, 0, 0));
            PQclear(r);
            char sql[64];
            snprintf(sql, sizeof sql, "SELECT pg_terminate_backend(%d)", k->pid);
            PQclear(PQexec(side, sql));
            k->killed = 1;
            break;
        }
        PQclear(r);
        usleep(2000);
    }
    PQfinish(side);
    return NULL;
}

static pgtx_status insert_slow_commit(pgtx_tx *tx, void *p, pgtx_error *err)
{
    (void)p;
    char sql[128];
    snprintf(sql, sizeof sql, "INSERT INTO %s_slow VALUES (1)", tbl);
    return pgtx_query(tx, sql, 0, NULL, NULL, err);
}

/* A deferred constraint trigger runs inside COMMIT; it sleeps, so that
   something can happen while COMMIT is in flight. */
static void slow_commit_table_create(int seconds)
{
    h_execf(admin,
            "DROP TABLE IF EXISTS %s_slow;"
            "CREATE TABLE %s_slow (x int);"
            "CREATE OR REPLACE FUNCTION %s_sleep() RETURNS trigger LANGUAGE plpgsql "
            "AS $$ BEGIN PERFORM pg_sleep(%d); RETURN NULL; END $$;"
            "CREATE CONSTRAINT TRIGGER slow AFTER INSERT ON %s_slow "
            "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION %s_sleep()",
            tbl, tbl, tbl, seconds, tbl, tbl);
}

static void slow_commit_table_drop(void)
{
    h_execf(admin, "DROP TABLE %s_slow; DROP FUNCTION %s_sleep()", tbl, tbl);
}

/* `fn` inserts into the slow table; its backend is terminated while COMMIT
   runs: unknown, never retried blindly, and the connection not kept. */
static void check_commit_lost_is_unknown(pgtx_tx_fn fn)
{
    slow_commit_table_create(5); /* the backend is terminated meanwhile */
    pgtx_pool *p = h_pool(1, 0, "runner-commit");
    pgtx_engine *e = h_engine(p, PGTX_READ_COMMITTED);
    commit_killer k = {0, 0};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, kill_during_commit, &k), 0);
    pgtx_run_info info;
    pgtx_error err;
    pgtx_status st = pgtx_run(e, fn, NULL, &info, &err);
    pthread_join(t, NULL);
    assert_true(k.killed);
    assert_int_equal(st, PGTX_COMMIT_UNKNOWN);
    assert_int_equal(err.status, PGTX_COMMIT_UNKNOWN);
    assert_int_equal(info.attempts, 1); /* never retried blindly */
    assert_false(pgtx_status_is_retryable(st));
    pgtx_pool_stats s;
    pgtx_pool_stats_get(p, &s);
    assert_int_equal(s.commit_unknown, 1);
    assert_int_equal(s.open, 0); /* the broken connection was not kept */
    pgtx_engine_destroy(e);
    pgtx_pool_destroy(p);
    slow_commit_table_drop();
}

static void connection_lost_during_commit_is_unknown_not_retried(void **state)
{
    (void)state;
    check_commit_lost_is_unknown(insert_slow_commit);
}

/* ---- a server that stops answering --------------------------------------- */

static pgtx_pool *silent_pool(int socket_timeout_ms)
{
    pgtx_pool_config cfg;
    h_pool_config(&cfg, 1, 0, "runner-silent");
    cfg.socket_timeout_ms = socket_timeout_ms;
    return h_pool_from(&cfg);
}

/* pg_sleep stands for a server or network that has gone quiet: from the
   client's side the two look the same. */
static pgtx_status sleep_as_statement(pgtx_tx *tx, void *p, pgtx_error *err)
{
    int nth = *(int *)p;
    pgtx_status st = nth == 1 ? PGTX_OK : pgtx_query(tx, "SELECT 1", 0, NULL, NULL, err);
    return st ? st : pgtx_query(tx, "SELECT pg_sleep(3)", 0, NULL, NULL, err);
}

static pgtx_status select_one(pgtx_tx *tx, void *p, pgtx_error *err)
{
    (void)p;
    return pgtx_query(tx, "SELECT 1", 0, NULL, NULL, err);
}

static void socket_timeout_bounds_a_silent_server(void **state)
{
    (void)state;
    pgtx_pool *p = silent_pool(300);
    pgtx_engine *e = h_engine(p, PGTX_READ_COMMITTED);
    for (int nth = 1; nth <= 2; nth++) { /* pipelined with BEGIN, then alone */
        pgtx_run_info info;
        pgtx_error err;
        int64_t t0 = h_now_ms();
        pgtx_status st = pgtx_run(e, sleep_as_statement, &nth, &info, &err);
        int64_t took = h_now_ms() - t0;
        printf("  statement %d: %s after %lld ms: %s\n", nth, pgtx_status_name(st),
               (long long)took, err.message);
        assert_int_equal(st, PGTX_SOCKET_TIMEOUT);
        assert_int_equal(pgtx_status_class(st), PGTX_CLASS_CONNECTION);
        assert_false(pgtx_status_is_retryable(st));
        assert_int_equal(info.attempts, 1); /* a slow statement would be slow again */
        assert_true(took >= 300 && took < 2500);
        assert_non_null(strstr(err.message, "socket_timeout_ms (300 ms)"));
        pgtx_pool_stats s;
        pgtx_pool_stats_get(p, &s);
        assert_int_equal(s.open, 0); /* that connection is gone */
        assert_int_equal(s.socket_timeouts, (uint64_t)nth);
        /* and the pool goes on with a fresh one */
        assert_int_equal(pgtx_run(e, select_one, NULL, NULL, &err), PGTX_OK);
    }
    pgtx_engine_destroy(e);
    pgtx_pool_destroy(p);
}

/* The same silence in a READ ONLY transaction's COMMIT round: it changed
   nothing, so the outcome is known, and it is a plain lost connection. */
static pgtx_status queue_sleep(pgtx_tx *tx, void *p, pgtx_error *err)
{
    (void)p;
    return pgtx_queue(tx, "SELECT pg_sleep(1)", 0, NULL, NULL, err);
}

static void read_only_commit_lost_is_not_unknown(void **state)
{
    (void)state;
    pgtx_pool *p = silent_pool(300);
    pgtx_engine_options o;
    pgtx_engine_options_init(&o);
    o.read_only = true;
    pgtx_engine *e = NULL;
    assert_int_equal(pgtx_engine_create(p, &o, &e, NULL), PGTX_OK);
    pgtx_run_info info;
    pgtx_error err;
    pgtx_status st = pgtx_run(e, queue_sleep, NULL, &info, &err);
    assert_int_equal(st, PGTX_SOCKET_TIMEOUT);
    assert_int_equal(pgtx_status_class(st), PGTX_CLASS_CONNECTION);
    assert_int_equal(info.attempts, 1); /* SOCKET_TIMEOUT is not retried by default */
    pgtx_pool_stats s;
    pgtx_pool_stats_get(p, &s);
    assert_int_equal(s.commit_unknown, 0);
    assert_int_equal(s.socket_timeouts, 1);
    pgtx_engine_destroy(e);
    pgtx_pool_destroy(p);
}

static long long slow_rows(void)
{
    return h_scalarf(admin, "SELECT count(*) FROM %s_slow", tbl);
}

static int slow_row_arrived(void *arg)
{
    (void)arg;
    return slow_rows() == 1;
}

static void socket_timeout_during_commit_is_unknown(void **state)
{
    (void)state;
    slow_commit_table_create(1); /* COMMIT takes 1 s; the client waits 0.3 */
    pgtx_pool *p = silent_pool(300);
    pgtx_engine *e = h_engine(p, PGTX_READ_COMMITTED);
    pgtx_run_info info;
    pgtx_error err;
    int64_t t0 = h_now_ms();
    pgtx_status st = pgtx_run(e, insert_slow_commit, NULL, &info, &err);
    int64_t took = h_now_ms() - t0;
    printf("  COMMIT: %s after %lld ms: %s\n", pgtx_status_name(st), (long long)took,
           err.message);
    assert_int_equal(st, PGTX_COMMIT_UNKNOWN);
    assert_int_equal(info.attempts, 1);
    assert_true(took >= 300 && took < 1000);
    assert_non_null(strstr(err.message, "socket_timeout_ms (300 ms)"));
    /* Unknown indeed: the server finishes that COMMIT after the client left,
       which is why the runner never retries it. */
    assert_int_equal(h_wait_until(slow_row_arrived, NULL, 5000), 1);
    pgtx_engine_destroy(e);
    pgtx_pool_destroy(p);
    slow_commit_table_drop();
}

/* ---- deadlock -------------------------------------------------------------- */

typedef struct dl_arg {
    int first, second;
    pthread_barrier_t *barrier;
    pgtx_status st;
    pgtx_run_info info;
} dl_arg;

static pgtx_status update_two(pgtx_tx *tx, void *p, pgtx_error *err)
{
    dl_arg *a = p;
    char sql[128];
    snprintf(sql, sizeof sql, "UPDATE %s SET v = v + 1 WHERE id = %d", tbl, a->first);
    pgtx_status st = pgtx_query(tx, sql, 0, NULL, NULL, err);
    if (st != PGTX_OK)
        return st;
    if (pgtx_tx_attempt(tx) == 1)
        pthread_barrier_wait(a->barrier); /* both hold their first row */
    snprintf(sql, sizeof sql, "UPDATE %s SET v = v + 1 WHERE id = %d", tbl, a->second);
    return pgtx_query(tx, sql, 0, NULL, NULL, err);
}

static void *run_update_two(void *p)
{
    dl_arg *a = p;
    a->st = pgtx_run(rc, update_two, a, &a->info, NULL);
    return NULL;
}

static void deadlock_is_detected_and_retried(void **state)
{
    (void)state;
    h_execf(admin, "INSERT INTO %s VALUES (1, 0), (2, 0)", tbl);
    pthread_barrier_t b;
    pthread_barrier_init(&b, NULL, 2);
    dl_arg x = {1, 2, &b, PGTX_SQL, {0}}, y = {2, 1, &b, PGTX_SQL, {0}};
    pgtx_pool_stats s0, s1;
    pgtx_pool_stats_get(pool, &s0);
    pthread_t t1, t2;
    pthread_create(&t1, NULL, run_update_two, &x);
    pthread_create(&t2, NULL, run_update_two, &y);
    pthread_join(t1, NULL);
    pthread_join(t2, NULL);
    pthread_barrier_destroy(&b);
    assert_int_equal(x.st, PGTX_OK);
    assert_int_equal(y.st, PGTX_OK);
    /* At least one deadlock; on a slow machine the retry may meet the other
       transaction again.  Every attempt past the first of each is one. */
    int attempts = x.info.attempts + y.info.attempts;
    assert_true(attempts >= 3);
    pgtx_pool_stats_get(pool, &s1);
    assert_int_equal(s1.retries_deadlock - s0.retries_deadlock, (uint64_t)(attempts - 2));
    /* Both transactions applied exactly once. */
    assert_int_equal(h_scalarf(admin, "SELECT sum(v) FROM %s", tbl), 4);
}

/* ---- round trips and raw access ------------------------------------------ */

static pgtx_status one_select(pgtx_tx *tx, void *p, pgtx_error *err)
{
    (void)p;
    return pgtx_query(tx, "SELECT 1", 0, NULL, NULL, err);
}

static pgtx_status nothing(pgtx_tx *tx, void *p, pgtx_error *err)
{
    (void)tx;
    (void)p;
    (void)err;
    return PGTX_OK;
}

static void one_statement_costs_two_round_trips(void **state)
{
    (void)state;
    assert_int_equal(pgtx_run(rc, one_select, NULL, NULL, NULL), PGTX_OK); /* warm */
    pgtx_pool_stats s0, s1;
    pgtx_pool_stats_get(pool, &s0);
    for (int i = 0; i < 10; i++)
        assert_int_equal(pgtx_run(rc, one_select, NULL, NULL, NULL), PGTX_OK);
    pgtx_pool_stats_get(pool, &s1);
    /* BEGIN + statement in one, COMMIT in the other. */
    assert_int_equal(s1.round_trips - s0.round_trips, 20);
    /* A transaction that ran nothing costs nothing. */
    assert_int_equal(pgtx_run(rc, nothing, NULL, NULL, NULL), PGTX_OK);
    pgtx_pool_stats_get(pool, &s0);
    assert_int_equal(s0.round_trips, s1.round_trips);
}

static pgtx_status raw_libpq(pgtx_tx *tx, void *p, pgtx_error *err)
{
    (void)p;
    PGconn *pg = pgtx_tx_pg_borrow(tx);
    if (pg == NULL)
        return pgtx_fail(err, PGTX_SQL, "no connection");
    char sql[128];
    snprintf(sql, sizeof sql, "INSERT INTO %s VALUES (7, 7)", tbl);
    PGresult *r = PQexec(pg, sql);
    bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    PQclear(r);
    if (PQtransactionStatus(pg) != PQTRANS_INTRANS)
        return pgtx_fail(err, PGTX_SQL, "not inside a transaction");
    return ok ? PGTX_OK : pgtx_fail(err, PGTX_SQL, "insert failed");
}

static void raw_connection_runs_inside_the_transaction(void **state)
{
    (void)state;
    pgtx_error err;
    assert_int_equal(pgtx_run(rc, raw_libpq, NULL, NULL, &err), PGTX_OK);
    assert_int_equal(h_scalarf(admin, "SELECT v FROM %s WHERE id = 7", tbl), 7);
}

typedef struct rows_arg {
    int64_t affected;
} rows_arg;

static pgtx_status update_all(pgtx_tx *tx, void *p, pgtx_error *err)
{
    rows_arg *a = p;
    char sql[128];
    snprintf(sql, sizeof sql, "UPDATE %s SET v = v + 1", tbl);
    PGresult *r = NULL;
    pgtx_status st = pgtx_query(tx, sql, 0, NULL, &r, err);
    if (st == PGTX_OK)
        a->affected = pgtx_result_affected(r);
    PQclear(r);
    return st;
}

static void affected_rows_are_reported(void **state)
{
    (void)state;
    h_execf(admin, "INSERT INTO %s VALUES (1, 0), (2, 0), (3, 0)", tbl);
    rows_arg a = {-5};
    assert_int_equal(pgtx_run(rc, update_all, &a, NULL, NULL), PGTX_OK);
    assert_int_equal(a.affected, 3);
    assert_int_equal(pgtx_result_affected(NULL), -1);
}

/* ---- optimistic version check -------------------------------------------- */

typedef struct opt_ctx {
    pgtx_engine *engine;
    atomic_int failures;
    pthread_barrier_t read_all; /* every worker's first read, then writes */
} opt_ctx;

typedef struct opt_worker {
    opt_ctx *c;
    bool first; /* its first increment: meets the others after reading */
} opt_worker;

static pgtx_status optimistic_increment(pgtx_tx *tx, void *p, pgtx_error *err)
{
    opt_worker *w = p;
    char sql[160];
    snprintf(sql, sizeof sql, "SELECT v, id FROM %s WHERE id = 1", tbl);
    PGresult *r = NULL;
    pgtx_status st = pgtx_query(tx, sql, 0, NULL, &r, err);
    if (st != PGTX_OK)
        return st;
    int64_t v = 0;
    st = pgtx_result_int64(r, 0, 0, &v);
    PQclear(r);
    if (st != PGTX_OK)
        return pgtx_fail(err, st, "bad value");
    char next[32], seen[32];
    snprintf(next, sizeof next, "%lld", (long long)v + 1);
    snprintf(seen, sizeof seen, "%lld", (long long)v);
    const char *params[] = {next, seen};
    /* All four read the same version before any writes it: three of those
       writes must be stale, however the threads are scheduled. */
    if (w->first) {
        w->first = false;
        pthread_barrier_wait(&w->c->read_all);
    }
    usleep(100); /* let others in between the read and the write */
    snprintf(sql, sizeof sql, "UPDATE %s SET v = $1::int WHERE id = 1 AND v = $2::int", tbl);
    return pgtx_query_expect(tx, sql, 2, params, 1, NULL, err);
}

static void *optimistic_worker(void *p)
{
    opt_worker *w = p;
    for (int i = 0; i < 50; i++)
        if (pgtx_run(w->c->engine, optimistic_increment, w, NULL, NULL) != PGTX_OK)
            atomic_fetch_add(&w->c->failures, 1);
    return NULL;
}

static void optimistic_check_retries_stale_writes(void **state)
{
    (void)state;
    h_execf(admin, "INSERT INTO %s VALUES (1, 0)", tbl);
    pgtx_pool *p = h_pool(4, 0, "runner-optimistic");
    pgtx_engine_options o;
    pgtx_engine_options_init(&o);
    o.retry.max_attempts = 10000;
    o.retry.budget_ms = 60000;
    opt_ctx c = {.engine = NULL};
    assert_int_equal(pgtx_engine_create(p, &o, &c.engine, NULL), PGTX_OK);
    pthread_barrier_init(&c.read_all, NULL, 4);
    pthread_t t[4];
    opt_worker w[4];
    for (int i = 0; i < 4; i++) {
        w[i] = (opt_worker){&c, true};
        pthread_create(&t[i], NULL, optimistic_worker, &w[i]);
    }
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    pthread_barrier_destroy(&c.read_all);
    pgtx_pool_stats s;
    pgtx_pool_stats_get(p, &s);
    print_message("optimistic: %llu stale retries for 200 increments\n",
                  (unsigned long long)s.retries_stale);
    assert_int_equal(atomic_load(&c.failures), 0);
    assert_int_equal(h_scalarf(admin, "SELECT v FROM %s WHERE id = 1", tbl), 200);
    assert_true(s.retries_stale >= 3);
    pgtx_engine_destroy(c.engine);
    pgtx_pool_destroy(p);
}

static pgtx_status read_values(pgtx_tx *tx, void *p, pgtx_error *err)
{
    PGresult **out = p;
    return pgtx_query(tx, "SELECT 42, NULL::int, 'x', 9223372036854775807, "
                          "'99999999999999999999'", 0, NULL, out, err);
}

static void result_int64_never_guesses(void **state)
{
    (void)state;
    PGresult *r = NULL;
    assert_int_equal(pgtx_run(rc, read_values, &r, NULL, NULL), PGTX_OK);
    int64_t v = -1;
    assert_int_equal(pgtx_result_int64(r, 0, 0, &v), PGTX_OK);
    assert_int_equal(v, 42);
    v = -1;
    assert_int_equal(pgtx_result_int64(r, 0, 1, &v), PGTX_INVALID); /* NULL */
    assert_int_equal(pgtx_result_int64(r, 0, 2, &v), PGTX_INVALID); /* text */
    assert_int_equal(pgtx_result_int64(r, 0, 3, &v), PGTX_OK);
    assert_true(v == INT64_MAX);
    v = -1;
    assert_int_equal(pgtx_result_int64(r, 0, 4, &v), PGTX_INVALID); /* overflow */
    assert_int_equal(pgtx_result_int64(r, 1, 0, &v), PGTX_INVALID); /* no row */
    assert_int_equal(pgtx_result_int64(r, 0, 9, &v), PGTX_INVALID);
    assert_int_equal(v, -1);
    PQclear(r);
}

/* ---- queued statements: one round trip ------------------------------------ */

typedef struct queued_arg {
    int base;         /* ids base .. base+1 */
    bool duplicate;   /* queue the second insert with the first id */
    bool flush;       /* read the results before returning */
    PGresult *ins, *upd, *sum; /* out */
    long long seen_mid; /* flush: the sum read inside the callback */
} queued_arg;

/* Four statements and no decision in between: the runner sends BEGIN,
   them and COMMIT in one write. */
static pgtx_status queued_write(pgtx_tx *tx, void *p, pgtx_error *err)
{
    queued_arg *a = p;
    char ins[128], upd[128], sum[128], id1[16], id2[16];
    snprintf(ins, sizeof ins, "INSERT INTO %s VALUES ($1::int, 1) RETURNING id", tbl);
    snprintf(upd, sizeof upd, "UPDATE %s SET v = v + 1 WHERE id = $1::int", tbl);
    snprintf(sum, sizeof sum, "SELECT sum(v) FROM %s", tbl);
    snprintf(id1, sizeof id1, "%d", a->base);
    snprintf(id2, sizeof id2, "%d", a->duplicate ? a->base : a->base + 1);
    const char *p1[] = {id1}, *p2[] = {id2};
    pgtx_status st = pgtx_queue(tx, ins, 1, p1, &a->ins, err);
    st = st ? st : pgtx_queue(tx, ins, 1, p2, NULL, err);
    st = st ? st : pgtx_queue(tx, upd, 1, p1, &a->upd, err);
    st = st ? st : pgtx_queue(tx, sum, 0, NULL, &a->sum, err);
    if (st == PGTX_OK && a->flush) {
        st = pgtx_flush(tx, err);
        if (st == PGTX_OK)
            a->seen_mid = atoll(PQgetvalue(a->sum, 0, 0));
    }
    return st;
}

static void queued_arg_clear(queued_arg *a)
{
    PQclear(a->ins);
    PQclear(a->upd);
    PQclear(a->sum);
    a->ins = a->upd = a->sum = NULL;
}

static void queued_statements_and_commit_are_one_round_trip(void **state)
{
    (void)state;
    queued_arg a = {.base = 300};
    pgtx_pool_stats s0, s1;
    pgtx_pool_stats_get(pool, &s0);
    pgtx_run_info info;
    pgtx_error err;
    pgtx_status st = pgtx_run(rc, queued_write, &a, &info, &err);
    if (st != PGTX_OK)
        fail_msg("%s: %s", pgtx_status_name(st), err.message);
    pgtx_pool_stats_get(pool, &s1);
    assert_int_equal(s1.round_trips - s0.round_trips, 1);
    assert_int_equal(s1.commits - s0.commits, 1);
    assert_int_equal(rows(), 2);
    /* each result reached its slot once COMMIT said yes */
    assert_non_null(a.ins);
    assert_string_equal(PQgetvalue(a.ins, 0, 0), "300");
    assert_int_equal(pgtx_result_affected(a.upd), 1);
    assert_string_equal(PQgetvalue(a.sum, 0, 0), "3");
    queued_arg_clear(&a);
}

static void a_failing_queued_statement_rolls_back_all_of_them(void **state)
{
    (void)state;
    queued_arg a = {.base = 310, .duplicate = true, .ins = (PGresult *)&a};
    pgtx_pool_stats s0, s1;
    pgtx_pool_stats_get(pool, &s0);
    pgtx_error err;
    pgtx_status st = pgtx_run(rc, queued_write, &a, NULL, &err);
    pgtx_pool_stats_get(pool, &s1);
    assert_int_equal(st, PGTX_UNIQUE_VIOLATION);
    assert_string_equal(err.sqlstate, "23505");
    assert_string_equal(err.constraint_name + strlen(err.constraint_name) - 5, "_pkey");
    assert_string_equal(err.table, tbl);
    assert_int_equal(rows(), 0); /* the first insert went too */
    /* no result of a rolled-back round reaches its slot */
    assert_null(a.ins);
    assert_null(a.upd);
    assert_null(a.sum);
    /* the round, then the ROLLBACK the aborted transaction needs */
    assert_int_equal(s1.round_trips - s0.round_trips, 2);
    assert_int_equal(s1.rollbacks - s0.rollbacks, 1);
}

static void flush_reads_queued_results_inside_the_transaction(void **state)
{
    (void)state;
    queued_arg a = {.base = 320, .flush = true};
    pgtx_pool_stats s0, s1;
    pgtx_pool_stats_get(pool, &s0);
    assert_int_equal(pgtx_run(rc, queued_write, &a, NULL, NULL), PGTX_OK);
    pgtx_pool_stats_get(pool, &s1);
    assert_int_equal(a.seen_mid, 3);
    assert_int_equal(rows(), 2);
    /* the flush, then COMMIT alone */
    assert_int_equal(s1.round_trips - s0.round_trips, 2);
    queued_arg_clear(&a);
}

static pgtx_status queue_then_abort(pgtx_tx *tx, void *p, pgtx_error *err)
{
    queued_arg *a = p;
    pgtx_status st = queued_write(tx, a, err);
    return st ? st : pgtx_fail(err, PGTX_ABORTED, "changed my mind");
}

static void queued_statements_of_an_aborted_callback_are_rolled_back(void **state)
{
    (void)state;
    queued_arg a = {.base = 330};
    pgtx_error err;
    assert_int_equal(pgtx_run(rc, queue_then_abort, &a, NULL, &err), PGTX_ABORTED);
    assert_string_equal(err.message, "changed my mind");
    assert_int_equal(rows(), 0);
    assert_null(a.ins);
}

static pgtx_status queue_insert_slow_commit(pgtx_tx *tx, void *p, pgtx_error *err)
{
    (void)p;
    char sql[128];
    snprintf(sql, sizeof sql, "INSERT INTO %s_slow VALUES (1)", tbl);
    return pgtx_queue(tx, sql, 0, NULL, NULL, err);
}

/* BEGIN, the insert and COMMIT in one round, and the connection lost while
   COMMIT runs: unknown, never retried. */
static void queued_commit_lost_is_unknown_not_retried(void **state)
{
    (void)state;
    check_commit_lost_is_unknown(queue_insert_slow_commit);
}

typedef struct gone_arg {
    const char *app;
    int calls;
} gone_arg;

/* The first attempt finds its own backend terminated after checkout (the
   pool's check passed), then queues its insert: the server's goodbye comes
   where BEGIN's answer was due. */
static pgtx_status kill_then_queue(pgtx_tx *tx, void *p, pgtx_error *err)
{
    gone_arg *a = p;
    if (++a->calls == 1) {
        h_execf(admin, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                       "WHERE application_name = '%s'", a->app);
        assert_int_equal(h_wait_app_gone(admin, a->app, 5000), 0);
    }
    char sql[128];
    snprintf(sql, sizeof sql, "INSERT INTO %s VALUES (340, 0)", tbl);
    return pgtx_queue(tx, sql, 0, NULL, NULL, err);
}

/* A connection found dead before BEGIN ran: nothing of the round ran, even
   with COMMIT in it, so it is retried (not COMMIT_UNKNOWN). */
static void queued_round_on_a_dead_connection_is_retried(void **state)
{
    (void)state;
    gone_arg a = {.app = h_unique("runner-gone")};
    pgtx_pool *p = h_pool(1, 0, a.app);
    pgtx_engine *e = h_engine(p, PGTX_READ_COMMITTED);
    pgtx_conn *c = NULL; /* open the one connection first */
    assert_int_equal(pgtx_pool_checkout(p, 1000, &c, NULL), PGTX_OK);
    pgtx_pool_return(c);
    pgtx_run_info info;
    pgtx_error err;
    pgtx_status st = pgtx_run(e, kill_then_queue, &a, &info, &err);
    if (st != PGTX_OK)
        fail_msg("%s: %s", pgtx_status_name(st), err.message);
    assert_int_equal(info.attempts, 2);
    assert_int_equal(rows(), 1);
    pgtx_pool_stats s;
    pgtx_pool_stats_get(p, &s);
    assert_int_equal(s.commit_unknown, 0);
    assert_int_equal(s.retries_connection, 1);
    pgtx_engine_destroy(e);
    pgtx_pool_destroy(p);
}

/* ---- the statement cache ----------------------------------------------------- */

static pgtx_pool *cache_pool(int size)
{
    pgtx_pool_config cfg;
    h_pool_config(&cfg, 1, 0, "runner-cache");
    cfg.statement_cache_size = size;
    return h_pool_from(&cfg);
}

typedef struct sel_arg {
    const char *sql;
    PGresult *res;
} sel_arg;

static pgtx_status select_cached(pgtx_tx *tx, void *p, pgtx_error *err)
{
    sel_arg *a = p;
    PQclear(a->res);
    a->res = NULL;
    char id[] = "1";
    const char *params[] = {id};
    return pgtx_query(tx, a->sql, strchr(a->sql, '$') ? 1 : 0, params, &a->res, err);
}

/* Statements prepared on the session, as the server lists them. */
static pgtx_status count_prepared(pgtx_tx *tx, void *p, pgtx_error *err)
{
    sel_arg *a = p;
    a->sql = "SELECT count(*) FROM pg_prepared_statements WHERE name LIKE 'pgtx_%'";
    return select_cached(tx, a, err);
}

static long long prepared_on_server(pgtx_engine *e)
{
    sel_arg a = {0};
    assert_int_equal(pgtx_run(e, count_prepared, &a, NULL, NULL), PGTX_OK);
    long long n = atoll(PQgetvalue(a.res, 0, 0));
    PQclear(a.res);
    return n;
}

static void run_select(pgtx_engine *e, const char *sql, pgtx_run_info *info)
{
    sel_arg a = {.sql = sql};
    pgtx_error err;
    pgtx_status st = pgtx_run(e, select_cached, &a, info, &err);
    if (st != PGTX_OK)
        fail_msg("%s: %s", pgtx_status_name(st), err.message);
    PQclear(a.res);
}

static void statements_are_prepared_once_and_reused(void **state)
{
    (void)state;
    pgtx_pool *p = cache_pool(16);
    pgtx_engine *e = h_engine(p, PGTX_READ_COMMITTED);
    for (int i = 0; i < 5; i++)
        run_select(e, "SELECT $1::int + 1", NULL);
    pgtx_pool_stats s;
    pgtx_pool_stats_get(p, &s);
    assert_int_equal(s.stmt_prepares, 1);
    assert_int_equal(s.stmt_hits, 4);
    /* that one, and the counting query itself */
    assert_int_equal(prepared_on_server(e), 2);
    pgtx_engine_destroy(e);
    pgtx_pool_destroy(p);
}

static void the_least_recently_used_statement_is_evicted_and_deallocated(void **state)
{
    (void)state;
    pgtx_pool *p = cache_pool(2);
    pgtx_engine *e = h_engine(p, PGTX_READ_COMMITTED);
    run_select(e, "SELECT 1", NULL);
    run_select(e, "SELECT 2", NULL);
    run_select(e, "SELECT 1", NULL); /* now SELECT 2 is the oldest */
    run_select(e, "SELECT 3", NULL); /* evicts SELECT 2 */
    pgtx_pool_stats s;
    pgtx_pool_stats_get(p, &s);
    assert_int_equal(s.stmt_evictions, 1);
    assert_int_equal(s.stmt_prepares, 3);
    run_select(e, "SELECT 1", NULL); /* still cached */
    pgtx_pool_stats_get(p, &s);
    assert_int_equal(s.stmt_prepares, 3);
    /* The counting query evicts SELECT 3, whose DEALLOCATE leaves ahead of
       the next transaction's BEGIN: then the server keeps exactly the
       cache's two. */
    assert_int_equal(prepared_on_server(e), 3);
    assert_int_equal(prepared_on_server(e), 2);
    pgtx_engine_destroy(e);
    pgtx_pool_destroy(p);
}

/* What a pooler does between two clients. */
static void discard_all_on_the_connection(pgtx_pool *p)
{
    pgtx_conn *c = NULL;
    assert_int_equal(pgtx_pool_checkout(p, 1000, &c, NULL), PGTX_OK);
    PQclear(PQexec(pgtx_conn_pg_borrow(c), "DISCARD ALL"));
    pgtx_pool_return(c);
}

static void a_statement_gone_from_the_server_is_prepared_again(void **state)
{
    (void)state;
    pgtx_pool *p = cache_pool(16);
    pgtx_engine *e = h_engine(p, PGTX_READ_COMMITTED);
    run_select(e, "SELECT $1::int + 1", NULL);
    discard_all_on_the_connection(p);
    pgtx_run_info info;
    run_select(e, "SELECT $1::int + 1", &info); /* 26000, then prepared again */
    assert_int_equal(info.attempts, 2);
    pgtx_pool_stats s;
    pgtx_pool_stats_get(p, &s);
    assert_int_equal(s.retries_prepared, 1);
    assert_int_equal(s.stmt_prepares, 2);
    run_select(e, "SELECT $1::int + 1", &info);
    assert_int_equal(info.attempts, 1);
    pgtx_engine_destroy(e);
    pgtx_pool_destroy(p);
}

static void a_changed_result_type_is_prepared_again(void **state)
{
    (void)state;
    pgtx_pool *p = cache_pool(16);
    pgtx_engine *e = h_engine(p, PGTX_READ_COMMITTED);
    char sql[128];
    snprintf(sql, sizeof sql, "SELECT * FROM %s WHERE id = $1::int", tbl);
    run_select(e, sql, NULL);
    h_execf(admin, "ALTER TABLE %s ADD COLUMN w int", tbl);
    sel_arg a = {.sql = sql};
    pgtx_run_info info;
    pgtx_error err;
    pgtx_status st = pgtx_run(e, select_cached, &a, &info, &err); /* 0A000, then again */
    h_execf(admin, "ALTER TABLE %s DROP COLUMN w", tbl);
    if (st != PGTX_OK)
        fail_msg("%s: %s", pgtx_status_name(st), err.message);
    assert_int_equal(info.attempts, 2);
    assert_int_equal(PQnfields(a.res), 3);
    PQclear(a.res);
    pgtx_engine_destroy(e);
    pgtx_pool_destroy(p);
}

static void a_cache_of_zero_prepares_nothing(void **state)
{
    (void)state;
    pgtx_pool *p = cache_pool(0);
    pgtx_engine *e = h_engine(p, PGTX_READ_COMMITTED);
    for (int i = 0; i < 3; i++)
        run_select(e, "SELECT $1::int + 1", NULL);
    pgtx_pool_stats s;
    pgtx_pool_stats_get(p, &s);
    assert_int_equal(s.stmt_prepares + s.stmt_hits, 0);
    assert_int_equal(prepared_on_server(e), 0);
    pgtx_engine_destroy(e);
    pgtx_pool_destroy(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(commits_on_ok, reset_table),
        cmocka_unit_test_setup(callback_abort_rolls_back, reset_table),
        cmocka_unit_test_setup(swallowed_error_still_rolls_back, reset_table),
        cmocka_unit_test_setup(constraint_violation_is_classified, reset_table),
        cmocka_unit_test_setup(stale_is_retried, reset_table),
        cmocka_unit_test_setup(multixact_race_is_retried_other_internal_errors_are_not,
                               reset_table),
        cmocka_unit_test_setup(attempts_and_budget_bound_retries, reset_table),
        cmocka_unit_test_setup(killed_mid_transaction_is_retried_on_a_fresh_connection,
                               reset_table),
        cmocka_unit_test_setup(killed_before_commit_is_retried, reset_table),
        cmocka_unit_test_setup(connection_lost_during_commit_is_unknown_not_retried,
                               reset_table),
        cmocka_unit_test_setup(socket_timeout_bounds_a_silent_server, reset_table),
        cmocka_unit_test_setup(socket_timeout_during_commit_is_unknown, reset_table),
        cmocka_unit_test_setup(read_only_commit_lost_is_not_unknown, reset_table),
        cmocka_unit_test_setup(deadlock_is_detected_and_retried, reset_table),
        cmocka_unit_test_setup(one_statement_costs_two_round_trips, reset_table),
        cmocka_unit_test_setup(raw_connection_runs_inside_the_transaction, reset_table),
        cmocka_unit_test_setup(affected_rows_are_reported, reset_table),
        cmocka_unit_test_setup(optimistic_check_retries_stale_writes, reset_table),
        cmocka_unit_test_setup(result_int64_never_guesses, reset_table),
        cmocka_unit_test_setup(queued_statements_and_commit_are_one_round_trip, reset_table),
        cmocka_unit_test_setup(a_failing_queued_statement_rolls_back_all_of_them, reset_table),
        cmocka_unit_test_setup(flush_reads_queued_results_inside_the_transaction, reset_table),
        cmocka_unit_test_setup(queued_statements_of_an_aborted_callback_are_rolled_back,
                               reset_table),
        cmocka_unit_test_setup(queued_commit_lost_is_unknown_not_retried, reset_table),
        cmocka_unit_test_setup(queued_round_on_a_dead_connection_is_retried, reset_table),
        cmocka_unit_test_setup(statements_are_prepared_once_and_reused, reset_table),
        cmocka_unit_test_setup(the_least_recently_used_statement_is_evicted_and_deallocated,
                               reset_table),
        cmocka_unit_test_setup(a_statement_gone_from_the_server_is_prepared_again, reset_table),
        cmocka_unit_test_setup(a_changed_result_type_is_prepared_again, reset_table),
        cmocka_unit_test_setup(a_cache_of_zero_prepares_nothing, reset_table),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
