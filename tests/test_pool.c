/* test_pool.c — the pool against a real server: exhaustion, liveness,
   reset on return, overflow, close, connect failures, fairness. */
#include "harness.h"

#include <pthread.h>
#include <string.h>
#include <unistd.h>

static pgtx_conn *checkout_ok(pgtx_pool *pool)
{
    pgtx_conn *c = NULL;
    pgtx_error err;
    pgtx_status st = pgtx_pool_checkout(pool, 5000, &c, &err);
    if (st != PGTX_OK)
        fail_msg("checkout: %s %s", pgtx_status_name(st), err.message);
    return c;
}

static int backend_pid(pgtx_conn *c) { return PQbackendPID(pgtx_conn_pg_borrow(c)); }

static void exhaustion_times_out_then_recovers(void **state)
{
    (void)state;
    pgtx_pool *pool = h_pool(2, 0, "pool-exhaust");
    pgtx_conn *a = checkout_ok(pool), *b = checkout_ok(pool), *c = NULL;
    pgtx_error err;
    int64_t t0 = h_now_ms();
    assert_int_equal(pgtx_pool_checkout(pool, 100, &c, &err), PGTX_POOL_TIMEOUT);
    int64_t took = h_now_ms() - t0;
    assert_null(c);
    assert_int_equal(err.status, PGTX_POOL_TIMEOUT);
    assert_true(took >= 99);
    assert_true(took < 5000); /* a bound against hanging, not a speed claim */
    pgtx_pool_stats s;
    pgtx_pool_stats_get(pool, &s);
    assert_int_equal(s.timeouts, 1);
    assert_int_equal(s.in_use, 2);
    assert_int_equal(s.open, 2);
    pgtx_pool_return(a);
    c = checkout_ok(pool);
    pgtx_pool_return(b);
    pgtx_pool_return(c);
    pgtx_pool_stats_get(pool, &s);
    assert_int_equal(s.idle, 2);
    assert_int_equal(s.in_use, 0);
    assert_int_equal(s.created, 2); /* the third checkout reused one */
    pgtx_pool_destroy(pool);
}

typedef struct waiter_arg {
    pgtx_pool *pool;
    int id;
    int *order;
    int *next;
    pthread_mutex_t *mu;
    pgtx_status st;
} waiter_arg;

static void *wait_and_record(void *p)
{
    waiter_arg *w = p;
    pgtx_conn *c = NULL;
    w->st = pgtx_pool_checkout(w->pool, 10000, &c, NULL);
    if (w->st == PGTX_OK) {
        pthread_mutex_lock(w->mu);
        w->order[(*w->next)++] = w->id;
        pthread_mutex_unlock(w->mu);
        pgtx_pool_return(c);
    }
    return NULL;
}

typedef struct waiting_arg {
    pgtx_pool *pool;
    int n;
} waiting_arg;

static int n_waiting(void *p)
{
    waiting_arg *a = p;
    pgtx_pool_stats s;
    pgtx_pool_stats_get(a->pool, &s);
    return s.waiting >= a->n;
}

static void waiters_are_served_first_come_first_served(void **state)
{
    (void)state;
    pgtx_pool *pool = h_pool(1, 0, "pool-fifo");
    pgtx_conn *held = checkout_ok(pool);
    int order[3] = {0}, next = 0;
    pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    waiter_arg w[3];
    pthread_t t[3];
    for (int i = 0; i < 3; i++) {
        w[i] = (waiter_arg){pool, i + 1, order, &next, &mu, PGTX_SQL};
        assert_int_equal(pthread_create(&t[i], NULL, wait_and_record, &w[i]), 0);
        waiting_arg wa = {pool, i + 1};
        assert_true(h_wait_until(n_waiting, &wa, 5000));
    }
    pgtx_pool_return(held);
    for (int i = 0; i < 3; i++)
        pthread_join(t[i], NULL);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(w[i].st, PGTX_OK);
        assert_int_equal(order[i], i + 1);
    }
    pgtx_pool_stats s;
    pgtx_pool_stats_get(pool, &s);
    assert_int_equal(s.waits, 3);
    assert_true(s.wait_us > 0);
    pgtx_pool_destroy(pool);
}

static void *return_conn(void *p)
{
    pgtx_pool_return(p);
    return NULL;
}

/* A thread gets back the connection it returned last, even when another
   thread returned one after it: client threads stay paired with backends. */
static void a_thread_gets_its_own_connection_back(void **state)
{
    (void)state;
    pgtx_pool *pool = h_pool(2, 0, "pool-affinity");
    pgtx_conn *mine = checkout_ok(pool), *other = checkout_ok(pool);
    int my_pid = backend_pid(mine), other_pid = backend_pid(other);
    pgtx_pool_return(mine);
    /* Another thread returns its connection later: it heads the idle list. */
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, return_conn, other), 0);
    pthread_join(t, NULL);
    pgtx_conn *again = checkout_ok(pool);
    assert_int_equal(backend_pid(again), my_pid);
    /* Its own one taken, it gets the most recently returned. */
    pgtx_conn *next = checkout_ok(pool);
    assert_int_equal(backend_pid(next), other_pid);
    pgtx_pool_return(again);
    pgtx_pool_return(next);
    pgtx_pool_destroy(pool);
}

static void killed_idle_connection_is_replaced(void **state)
{
    (void)state;
    PGconn *admin = h_connect("pool-admin");
    pgtx_pool *pool = h_pool(1, 0, "pool-kill");
    pgtx_conn *c = checkout_ok(pool);
    int pid = backend_pid(c);
    pgtx_pool_return(c);
    h_kill_backend(admin, pid);
    c = checkout_ok(pool);
    assert_int_not_equal(backend_pid(c), pid);
    PGresult *r = PQexec(pgtx_conn_pg_borrow(c), "SELECT 1");
    assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
    PQclear(r);
    pgtx_pool_return(c);
    pgtx_pool_stats s;
    pgtx_pool_stats_get(pool, &s);
    assert_int_equal(s.discarded, 1);
    assert_int_equal(s.created, 2);
    pgtx_pool_destroy(pool);
    PQfinish(admin);
}

static void return_rolls_back_an_open_transaction(void **state)
{
    (void)state;
    PGconn *admin = h_connect("pool-admin");
    const char *tbl = h_unique("pool_reset");
    h_execf(admin, "DROP TABLE IF EXISTS %s; CREATE TABLE %s (x int)", tbl, tbl);
    pgtx_pool *pool = h_pool(1, 0, "pool-reset");
    pgtx_conn *c = checkout_ok(pool);
    int pid = backend_pid(c);
    h_execf(pgtx_conn_pg_borrow(c), "BEGIN; INSERT INTO %s VALUES (1)", tbl);
    assert_int_equal(PQtransactionStatus(pgtx_conn_pg_borrow(c)), PQTRANS_INTRANS);
    pgtx_pool_return(c);
    c = checkout_ok(pool);
    assert_int_equal(backend_pid(c), pid); /* same connection, reused */
    assert_int_equal(PQtransactionStatus(pgtx_conn_pg_borrow(c)), PQTRANS_IDLE);
    pgtx_pool_return(c);
    assert_int_equal(h_scalarf(admin, "SELECT count(*) FROM %s", tbl), 0);

    /* A failed transaction (INERROR) is rolled back too. */
    c = checkout_ok(pool);
    PGresult *r = PQexec(pgtx_conn_pg_borrow(c), "BEGIN; SELECT 1/0");
    PQclear(r);
    assert_int_equal(PQtransactionStatus(pgtx_conn_pg_borrow(c)), PQTRANS_INERROR);
    pgtx_pool_return(c);
    c = checkout_ok(pool);
    assert_int_equal(backend_pid(c), pid);
    pgtx_pool_return(c);

    /* One left with a query in flight cannot be reused: it is closed. */
    c = checkout_ok(pool);
    assert_int_equal(PQsendQuery(pgtx_conn_pg_borrow(c), "SELECT pg_sleep(0.01)"), 1);
    pgtx_pool_return(c);
    c = checkout_ok(pool);
    assert_int_not_equal(backend_pid(c), pid);
    pgtx_pool_return(c);
    pgtx_pool_destroy(pool);
    h_execf(admin, "DROP TABLE %s", tbl);
    PQfinish(admin);
}

static void connection_killed_while_borrowed_is_discarded(void **state)
{
    (void)state;
    PGconn *admin = h_connect("pool-admin");
    pgtx_pool *pool = h_pool(1, 0, "pool-borrowed-kill");
    pgtx_conn *c = checkout_ok(pool);
    int pid = backend_pid(c);
    h_kill_backend(admin, pid);
    PGresult *r = PQexec(pgtx_conn_pg_borrow(c), "SELECT 1");
    assert_int_not_equal(PQresultStatus(r), PGRES_TUPLES_OK);
    PQclear(r);
    pgtx_pool_return(c);
    pgtx_pool_stats s;
    pgtx_pool_stats_get(pool, &s);
    assert_int_equal(s.open, 0);
    assert_int_equal(s.discarded, 1);
    c = checkout_ok(pool);
    pgtx_pool_return(c);
    pgtx_pool_destroy(pool);
    PQfinish(admin);
}

/* A pool of 1 + 1 overflow whose overflow waits `idle_ms` before closing. */
static pgtx_pool *overflow_pool(int idle_ms)
{
    pgtx_pool_config cfg;
    h_pool_config(&cfg, 1, 1, "pool-overflow");
    cfg.idle_timeout_ms = idle_ms;
    return h_pool_from(&cfg);
}

static void overflow_opens_under_load_and_closes_on_return(void **state)
{
    (void)state;
    pgtx_pool *pool = overflow_pool(0);
    pgtx_conn *a = checkout_ok(pool), *b = checkout_ok(pool), *c = NULL;
    pgtx_pool_stats s;
    pgtx_pool_stats_get(pool, &s);
    assert_int_equal(s.open, 2);
    assert_int_equal(s.overflow, 1);
    assert_int_equal(pgtx_pool_checkout(pool, 50, &c, NULL), PGTX_POOL_TIMEOUT);
    pgtx_pool_return(b);
    pgtx_pool_stats_get(pool, &s);
    assert_int_equal(s.open, 1);
    assert_int_equal(s.overflow, 0);
    assert_int_equal(s.discarded, 1);
    pgtx_pool_return(a);
    pgtx_pool_stats_get(pool, &s);
    assert_int_equal(s.idle, 1);
    pgtx_pool_destroy(pool);
}

static int idle_closed(void *arg)
{
    pgtx_pool_stats s;
    pgtx_pool_stats_get(arg, &s);
    return s.idle_closed == 1 && s.open == 1;
}

/* Returned overflow stays open for idle_timeout_ms, so that the next burst
   reuses it instead of connecting again, and is closed after. */
static void overflow_stays_idle_then_closes(void **state)
{
    (void)state;
    pgtx_pool *pool = overflow_pool(300);
    pgtx_conn *a = checkout_ok(pool), *b = checkout_ok(pool);
    pgtx_pool_return(b);
    pgtx_pool_return(a);
    pgtx_pool_stats s;
    pgtx_pool_stats_get(pool, &s);
    assert_int_equal(s.open, 2);
    assert_int_equal(s.idle, 2);
    /* reused: no connection opened for the second burst */
    a = checkout_ok(pool);
    b = checkout_ok(pool);
    pgtx_pool_return(a);
    pgtx_pool_return(b);
    pgtx_pool_stats_get(pool, &s);
    assert_int_equal(s.created, 2);
    assert_int_equal(s.idle_closed, 0);
    assert_true(h_wait_until(idle_closed, pool, 5000));
    pgtx_pool_stats_get(pool, &s);
    assert_int_equal(s.idle, 1);
    assert_int_equal(s.overflow, 0);
    pgtx_pool_destroy(pool);
}

typedef struct close_arg {
    pgtx_pool *pool;
    int timeout_ms;
    pgtx_status st;
    volatile int done;
} close_arg;

static void *close_pool(void *p)
{
    close_arg *a = p;
    a->st = pgtx_pool_close(a->pool, a->timeout_ms);
    a->done = 1;
    return NULL;
}

static void close_fails_new_checkouts_and_waits_for_borrowed(void **state)
{
    (void)state;
    pgtx_pool *pool = h_pool(2, 0, "pool-close");
    pgtx_conn *a = checkout_ok(pool), *b = checkout_ok(pool), *c = NULL;
    pgtx_pool_return(b);
    close_arg ca = {pool, -1, PGTX_SQL, 0};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, close_pool, &ca), 0);
    pgtx_error err;
    pgtx_status st;
    int64_t deadline = h_now_ms() + 5000;
    /* Until close has begun a checkout may still succeed; give those back. */
    while ((st = pgtx_pool_checkout(pool, 0, &c, &err)) == PGTX_OK &&
           h_now_ms() < deadline) {
        pgtx_pool_return(c);
        usleep(1000);
    }
    assert_int_equal(st, PGTX_POOL_CLOSED);
    assert_int_equal(err.status, PGTX_POOL_CLOSED);
    assert_int_equal(ca.done, 0); /* still waiting for `a` */
    pgtx_pool_return(a);
    pthread_join(t, NULL);
    assert_int_equal(ca.st, PGTX_OK);
    pgtx_pool_stats s;
    pgtx_pool_stats_get(pool, &s);
    assert_int_equal(s.open, 0);
    pgtx_pool_destroy(pool);
}

static void close_with_timeout_reports_borrowed(void **state)
{
    (void)state;
    pgtx_pool *pool = h_pool(1, 0, "pool-close-timeout");
    pgtx_conn *a = checkout_ok(pool);
    assert_int_equal(pgtx_pool_close(pool, 50), PGTX_POOL_TIMEOUT);
    pgtx_pool_return(a); /* closed, not kept */
    pgtx_pool_stats s;
    pgtx_pool_stats_get(pool, &s);
    assert_int_equal(s.open, 0);
    assert_int_equal(pgtx_pool_close(pool, 0), PGTX_OK);
    pgtx_pool_destroy(pool);
}

static void *wait_long(void *p)
{
    waiter_arg *w = p;
    pgtx_conn *c = NULL;
    w->st = pgtx_pool_checkout(w->pool, 30000, &c, NULL);
    if (c)
        pgtx_pool_return(c);
    return NULL;
}

static void close_wakes_waiters(void **state)
{
    (void)state;
    pgtx_pool *pool = h_pool(1, 0, "pool-close-waiters");
    pgtx_conn *a = checkout_ok(pool);
    waiter_arg w = {.pool = pool, .st = PGTX_OK};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, wait_long, &w), 0);
    waiting_arg wa = {pool, 1};
    assert_true(h_wait_until(n_waiting, &wa, 5000));
    close_arg ca = {pool, -1, PGTX_SQL, 0};
    pthread_t tc;
    assert_int_equal(pthread_create(&tc, NULL, close_pool, &ca), 0);
    pthread_join(t, NULL); /* woken at once, not after 30 s */
    assert_int_equal(w.st, PGTX_POOL_CLOSED);
    pgtx_pool_return(a);
    pthread_join(tc, NULL);
    assert_int_equal(ca.st, PGTX_OK);
    pgtx_pool_destroy(pool);
}

static void unreachable_server_is_a_clear_connect_error(void **state)
{
    (void)state;
    pgtx_pool_config cfg;
    pgtx_pool_config_init(&cfg);
    /* Port 1 on loopback: nothing listens, the refusal is immediate. */
    cfg.conninfo = "host=127.0.0.1 port=1 dbname=nope";
    cfg.pool_size = 2;
    cfg.connect_retry_ms = 100;
    pgtx_pool *pool = NULL;
    assert_int_equal(pgtx_pool_create(&cfg, &pool, NULL), PGTX_OK);
    pgtx_conn *c = NULL;
    pgtx_error err;
    assert_int_equal(pgtx_pool_checkout(pool, 2000, &c, &err), PGTX_CONNECT);
    assert_int_equal(err.status, PGTX_CONNECT);
    assert_non_null(strstr(err.message, "127.0.0.1"));
    assert_null(strchr(err.message, '\n')); /* libpq's message, one line */
    /* Inside the back-off window the next checkout waits, then tries once. */
    assert_int_equal(pgtx_pool_checkout(pool, 2000, &c, &err), PGTX_CONNECT);
    /* A checkout that times out during the back-off says why. */
    assert_int_equal(pgtx_pool_checkout(pool, 10, &c, &err), PGTX_CONNECT);
    pgtx_pool_stats s;
    pgtx_pool_stats_get(pool, &s);
    assert_true(s.connect_errors >= 2);
    assert_int_equal(s.open, 0);
    assert_int_equal(s.checkouts, 0);
    pgtx_pool_destroy(pool);
}

static void old_connections_are_recycled(void **state)
{
    (void)state;
    pgtx_pool_config cfg;
    pgtx_pool_config_init(&cfg);
    cfg.conninfo = h_dsn();
    cfg.pool_size = 1;
    cfg.max_lifetime_ms = 30;
    pgtx_pool *pool = NULL;
    assert_int_equal(pgtx_pool_create(&cfg, &pool, NULL), PGTX_OK);
    pgtx_conn *c = checkout_ok(pool);
    int pid = backend_pid(c);
    pgtx_pool_return(c);
    usleep(60 * 1000); /* past the lifetime: the point is elapsed time */
    c = checkout_ok(pool);
    assert_int_not_equal(backend_pid(c), pid);
    pgtx_pool_return(c);
    pgtx_pool_destroy(pool);
}

static void stale_idle_connections_get_a_round_trip(void **state)
{
    (void)state;
    pgtx_pool_config cfg;
    pgtx_pool_config_init(&cfg);
    cfg.conninfo = h_dsn();
    cfg.pool_size = 1;
    cfg.check_idle_ms = 0; /* always */
    pgtx_pool *pool = NULL;
    assert_int_equal(pgtx_pool_create(&cfg, &pool, NULL), PGTX_OK);
    pgtx_conn *c = checkout_ok(pool); /* fresh: no check */
    pgtx_pool_return(c);
    pgtx_pool_stats s0, s1;
    pgtx_pool_stats_get(pool, &s0);
    c = checkout_ok(pool);
    pgtx_pool_return(c);
    pgtx_pool_stats_get(pool, &s1);
    assert_int_equal(s1.round_trips - s0.round_trips, 1);
    pgtx_pool_destroy(pool);

    cfg.check_idle_ms = -1; /* never: the cheap check only */
    assert_int_equal(pgtx_pool_create(&cfg, &pool, NULL), PGTX_OK);
    c = checkout_ok(pool);
    pgtx_pool_return(c);
    pgtx_pool_stats_get(pool, &s0);
    c = checkout_ok(pool);
    pgtx_pool_return(c);
    pgtx_pool_stats_get(pool, &s1);
    assert_int_equal(s1.round_trips - s0.round_trips, 0);
    pgtx_pool_destroy(pool);
}

static void application_name_is_visible_to_the_server(void **state)
{
    (void)state;
    PGconn *admin = h_connect("pool-admin");
    const char *name = h_unique("pgtx_appname");
    pgtx_pool *pool = h_pool(1, 0, name);
    pgtx_conn *c = checkout_ok(pool);
    assert_int_equal(h_scalarf(admin, "SELECT count(*) FROM pg_stat_activity "
                                      "WHERE application_name = '%s'", name), 1);
    pgtx_pool_return(c);
    pgtx_pool_destroy(pool);
    PQfinish(admin);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(exhaustion_times_out_then_recovers),
        cmocka_unit_test(waiters_are_served_first_come_first_served),
        cmocka_unit_test(a_thread_gets_its_own_connection_back),
        cmocka_unit_test(killed_idle_connection_is_replaced),
        cmocka_unit_test(return_rolls_back_an_open_transaction),
        cmocka_unit_test(connection_killed_while_borrowed_is_discarded),
        cmocka_unit_test(overflow_opens_under_load_and_closes_on_return),
        cmocka_unit_test(overflow_stays_idle_then_closes),
        cmocka_unit_test(close_fails_new_checkouts_and_waits_for_borrowed),
        cmocka_unit_test(close_with_timeout_reports_borrowed),
        cmocka_unit_test(close_wakes_waiters),
        cmocka_unit_test(unreachable_server_is_a_clear_connect_error),
        cmocka_unit_test(old_connections_are_recycled),
        cmocka_unit_test(stale_idle_connections_get_a_round_trip),
        cmocka_unit_test(application_name_is_visible_to_the_server),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
