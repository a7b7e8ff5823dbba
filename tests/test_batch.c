/* test_batch.c — write combining: a set-oriented batch of deposits, a
   savepoint per call where one call fails its guard or a constraint, the
   fall-back from set to savepoints, a batch retried after 40001, the
   combiner under 16 threads on one key and on two keys, and a call that
   times out waiting for its key's turn behind a locked row. */
#include "harness.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static PGconn *admin;
static char schema[64];
static pgtx_pool *pool;
static pgtx_engine *eng;

static int setup(void **state)
{
    (void)state;
    admin = h_own_schema("batch", schema, sizeof schema);
    h_exec(admin, "CREATE TABLE acct (id bigint PRIMARY KEY, balance bigint NOT NULL "
                  "CHECK (balance >= 0));"
                  "CREATE TABLE ledger (n bigserial PRIMARY KEY, acct bigint NOT NULL, "
                  "amount bigint NOT NULL);"
                  "CREATE SEQUENCE fault_seq;"
                  /* 40001 the first time only: a sequence is not rolled back */
                  "CREATE FUNCTION fault_once() RETURNS int LANGUAGE plpgsql AS $$ "
                  "BEGIN IF nextval('fault_seq') = 1 THEN RAISE EXCEPTION "
                  "'forced serialization failure' USING ERRCODE = '40001'; "
                  "END IF; RETURN 0; END $$");
    pool = h_pool(17, 4, "batch");
    eng = h_engine_patient(pool, PGTX_READ_COMMITTED);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    pgtx_engine_destroy(eng);
    pgtx_pool_destroy(pool);
    h_execf(admin, "DROP SCHEMA \"%s\" CASCADE", schema);
    PQfinish(admin);
    return 0;
}

static void seed(long long balance1, long long balance2)
{
    h_execf(admin, "TRUNCATE acct, ledger; ALTER SEQUENCE fault_seq RESTART; "
            "INSERT INTO acct VALUES (1, %lld), (2, %lld)", balance1, balance2);
}

static long long balance_of(int id)
{
    return h_scalarf(admin, "SELECT balance FROM acct WHERE id = %d", id);
}

static long long ledger_rows(int id)
{
    return h_scalarf(admin, "SELECT count(*) FROM ledger WHERE acct = %d", id);
}

/* ---- the work: deposits (set-oriented or one by one) --------------------- */

typedef struct deposit {
    int64_t acct;
    int64_t amount;
} deposit;

/* Batch sizes the set callback saw, and batches of one account in flight. */
#define HIST_MAX 65
static atomic_int size_hist[HIST_MAX];
static atomic_int in_flight[3];
static atomic_int max_in_flight[3];
static atomic_int both_keys_seen;
static atomic_bool fault_first; /* the set callback calls fault_once() */

static void flight_enter(int64_t acct)
{
    if (acct < 1 || acct > 2)
        return;
    int now = atomic_fetch_add(&in_flight[acct], 1) + 1;
    int seen = atomic_load(&max_in_flight[acct]);
    while (now > seen && !atomic_compare_exchange_weak(&max_in_flight[acct], &seen, now))
        ;
    if (atomic_load(&in_flight[3 - acct]) > 0)
        atomic_store(&both_keys_seen, 1);
}

static void flight_leave(int64_t acct)
{
    if (acct >= 1 && acct <= 2)
        atomic_fetch_sub(&in_flight[acct], 1);
}

/* "{a,b,c}" of the admitted calls' field (0: acct, 1: amount); malloc'd. */
static char *array_of(const pgtx_call *calls, int n, int field)
{
    char *s = malloc((size_t)n * 22 + 3);
    assert_non_null(s);
    size_t len = 0;
    s[len++] = '{';
    for (int i = 0; i < n; i++) {
        if (calls[i].status != PGTX_OK)
            continue;
        const deposit *d = calls[i].arg;
        len += (size_t)sprintf(s + len, "%s%lld", len > 1 ? "," : "",
                               (long long)(field == 0 ? d->acct : d->amount));
    }
    s[len++] = '}';
    s[len] = '\0';
    return s;
}

/* One UPDATE with each account's summed delta and one multi-row INSERT,
   both queued: they leave with the COMMIT, one round trip per batch.  A
   deposit of zero or less is refused in C and sent nowhere. */
static pgtx_status deposits_set(pgtx_tx *tx, pgtx_call *calls, int n, pgtx_error *err)
{
    int admitted = 0;
    for (int i = 0; i < n; i++) {
        const deposit *d = calls[i].arg;
        if (d->amount <= 0)
            calls[i].status = pgtx_fail(&calls[i].err, PGTX_ABORTED,
                                        "a deposit must be positive");
        else
            admitted++;
    }
    atomic_fetch_add(&size_hist[n < HIST_MAX ? n : HIST_MAX - 1], 1);
    if (atomic_load(&fault_first)) {
        pgtx_status st = pgtx_query(tx, "SELECT fault_once()", 0, NULL, NULL, err);
        if (st != PGTX_OK)
            return st;
    }
    if (admitted == 0)
        return PGTX_OK;
    int64_t acct = ((const deposit *)calls[0].arg)->acct;
    flight_enter(acct);
    char *accts = array_of(calls, n, 0), *amounts = array_of(calls, n, 1);
    const char *p[] = {accts, amounts};
    pgtx_status st = pgtx_queue(
        tx, "UPDATE acct a SET balance = a.balance + s.total FROM "
            "(SELECT k, sum(v)::bigint AS total FROM unnest($1::bigint[], "
            "$2::bigint[]) AS d(k, v) GROUP BY k) s WHERE a.id = s.k",
        2, p, NULL, err);
    if (st == PGTX_OK)
        st = pgtx_queue(tx, "INSERT INTO ledger (acct, amount) SELECT * FROM "
                            "unnest($1::bigint[], $2::bigint[])", 2, p, NULL, err);
    free(accts);
    free(amounts);
    flight_leave(acct);
    return st;
}

/* One deposit (or withdrawal): the ledger row first, so that an undone
   call shows whether its savepoint took the row back too. */
static pgtx_status deposit_one(pgtx_tx *tx, pgtx_call *call, pgtx_error *err)
{
    const deposit *d = call->arg;
    char acct[24], amount[24];
    snprintf(acct, sizeof acct, "%lld", (long long)d->acct);
    snprintf(amount, sizeof amount, "%lld", (long long)d->amount);
    const char *p[] = {acct, amount};
    pgtx_status st = pgtx_queue(tx, "INSERT INTO ledger (acct, amount) VALUES ($1, $2)",
                                2, p, NULL, err);
    if (st == PGTX_OK && d->amount == 0)
        return pgtx_fail(err, PGTX_ABORTED, "nothing to do");
    if (st == PGTX_OK)
        st = pgtx_query(tx, "UPDATE acct SET balance = balance + $2 WHERE id = $1",
                        2, p, NULL, err);
    return st;
}

/* An order of `amount` units out of a stock (acct.balance), the ledger
   row first: the floor of pgtx_delta_apply refuses it when the stock would
   go below 0.  A negative amount is an order of -amount units that skips
   the guard, so that the CHECK constraint says no. */
static pgtx_status order_one(pgtx_tx *tx, pgtx_call *call, pgtx_error *err)
{
    const deposit *d = call->arg;
    int64_t change = d->amount > 0 ? -d->amount : d->amount;
    char acct[24], amount[24];
    snprintf(acct, sizeof acct, "%lld", (long long)d->acct);
    snprintf(amount, sizeof amount, "%lld", (long long)change);
    const char *p[] = {acct, amount};
    pgtx_status st = pgtx_queue(tx, "INSERT INTO ledger (acct, amount) VALUES ($1, $2)",
                                2, p, NULL, err);
    if (st != PGTX_OK || d->amount < 0)
        return st != PGTX_OK ? st
                             : pgtx_query(tx, "UPDATE acct SET balance = balance + $2 "
                                              "WHERE id = $1", 2, p, NULL, err);
    pgtx_delta dl = {.table = "acct", .key_column = "id", .column = "balance",
                     .key = d->acct, .delta = change, .has_floor = true, .floor = 0};
    pgtx_delta_result r;
    st = pgtx_delta_apply(tx, PGTX_STRATEGY_ATOMIC, &dl, &r, err);
    if (st == PGTX_OK && r.refused)
        return pgtx_fail(err, PGTX_ABORTED, "out of stock: %lld left", (long long)r.value);
    return st;
}

static const pgtx_batch_ops SET_OPS = {.set = deposits_set};
static const pgtx_batch_ops ONE_OPS = {.one = deposit_one};
static const pgtx_batch_ops BOTH_OPS = {.set = deposits_set, .one = deposit_one};
static const pgtx_batch_ops ORDER_OPS = {.one = order_one};

static void calls_of(pgtx_call *calls, deposit *d, int n)
{
    for (int i = 0; i < n; i++) {
        memset(&calls[i], 0xAB, sizeof calls[i]); /* the library fills it */
        calls[i].arg = &d[i];
    }
}

/* ---- one batch ----------------------------------------------------------- */

static void test_set_deposits(void **state)
{
    (void)state;
    seed(100, 0);
    deposit d[10];
    pgtx_call calls[10];
    for (int i = 0; i < 10; i++)
        d[i] = (deposit){.acct = i == 9 ? 2 : 1, .amount = i == 4 ? 0 : i + 1};
    calls_of(calls, d, 10);
    pgtx_run_info info;
    pgtx_error err;
    assert_int_equal(pgtx_run_batch(eng, &SET_OPS, calls, 10, &info, &err), PGTX_OK);
    assert_int_equal(info.attempts, 1);
    for (int i = 0; i < 10; i++) {
        assert_int_equal(calls[i].status, i == 4 ? PGTX_ABORTED : PGTX_OK);
        assert_int_equal(calls[i].attempts, 1);
        assert_int_equal(calls[i].err.status, calls[i].status);
    }
    assert_string_equal(calls[4].err.message, "a deposit must be positive");
    /* 1+2+3+4+6+7+8+9 on account 1, 10 on account 2; 5 never sent */
    assert_int_equal(balance_of(1), 100 + 40);
    assert_int_equal(balance_of(2), 10);
    assert_int_equal(ledger_rows(1), 8);
    assert_int_equal(ledger_rows(2), 1);
}

static void test_savepoint_guard(void **state)
{
    (void)state;
    seed(5, 0);
    /* stock 5: orders of 2, 2, then 3 (refused: 1 left), 1; then one that
       the CHECK constraint refuses (-(-7) below: 1 - 7 < 0) */
    deposit d[] = {{1, 2}, {1, 2}, {1, 3}, {1, 1}, {1, -7}};
    pgtx_call calls[5];
    calls_of(calls, d, 5);
    pgtx_error err;
    assert_int_equal(pgtx_run_batch(eng, &ORDER_OPS, calls, 5, NULL, &err), PGTX_OK);
    assert_int_equal(calls[0].status, PGTX_OK);
    assert_int_equal(calls[1].status, PGTX_OK);
    assert_int_equal(calls[2].status, PGTX_ABORTED);
    assert_string_equal(calls[2].err.message, "out of stock: 1 left");
    assert_int_equal(calls[3].status, PGTX_OK);
    assert_int_equal(calls[4].status, PGTX_CONSTRAINT);
    assert_string_equal(calls[4].err.sqlstate, "23514");
    assert_string_equal(calls[4].err.constraint_name, "acct_balance_check");
    for (int i = 0; i < 5; i++)
        assert_int_equal(calls[i].attempts, 1);
    assert_int_equal(balance_of(1), 0);
    /* the refused calls' ledger rows went with their savepoints */
    assert_int_equal(ledger_rows(1), 3);
    assert_int_equal(h_scalar(admin, "SELECT sum(amount) FROM ledger"), -5);
}

/* set() admits every call, but one ledger row breaks a CHECK, which the
   set-oriented INSERT cannot tell to its call: the batch runs again with a
   savepoint per call, and only that call is refused. */
static void test_set_falls_back(void **state)
{
    (void)state;
    seed(10, 0);
    h_exec(admin, "ALTER TABLE ledger ADD CONSTRAINT small CHECK (amount < 100)");
    deposit e[] = {{1, 5}, {1, 500}, {1, 7}};
    pgtx_call calls[3];
    calls_of(calls, e, 3);
    pgtx_run_info info;
    pgtx_status st = pgtx_run_batch(eng, &BOTH_OPS, calls, 3, &info, NULL);
    h_exec(admin, "ALTER TABLE ledger DROP CONSTRAINT small");
    assert_int_equal(st, PGTX_OK);
    assert_int_equal(info.attempts, 2);
    assert_int_equal(calls[0].status, PGTX_OK);
    assert_int_equal(calls[1].status, PGTX_CONSTRAINT);
    assert_string_equal(calls[1].err.constraint_name, "small");
    assert_int_equal(calls[2].status, PGTX_OK);
    for (int i = 0; i < 3; i++)
        assert_int_equal(calls[i].attempts, 2);
    assert_int_equal(balance_of(1), 22);
    assert_int_equal(ledger_rows(1), 2);
}

static void test_retried(void **state)
{
    (void)state;
    /* set-oriented: 40001 from the first attempt's first statement */
    seed(0, 0);
    deposit d[] = {{1, 1}, {1, 2}, {1, 3}};
    pgtx_call calls[3];
    calls_of(calls, d, 3);
    atomic_store(&fault_first, true);
    pgtx_run_info info;
    pgtx_status st = pgtx_run_batch(eng, &SET_OPS, calls, 3, &info, NULL);
    atomic_store(&fault_first, false);
    assert_int_equal(st, PGTX_OK);
    assert_int_equal(info.attempts, 2);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(calls[i].status, PGTX_OK);
        assert_int_equal(calls[i].attempts, 2);
    }
    assert_int_equal(balance_of(1), 6);
    assert_int_equal(ledger_rows(1), 3);
}

/* 40001 inside the second call of a savepoint batch: the whole batch is
   retried, the first call's work undone with it and done again once. */
static pgtx_status fault_in_second(pgtx_tx *tx, pgtx_call *call, pgtx_error *err)
{
    const deposit *d = call->arg;
    if (d->amount == 2) {
        pgtx_status st = pgtx_query(tx, "SELECT fault_once()", 0, NULL, NULL, err);
        if (st != PGTX_OK)
            return st;
    }
    return deposit_one(tx, call, err);
}

static void test_retried_savepoints(void **state)
{
    (void)state;
    seed(0, 0);
    deposit d[] = {{1, 1}, {1, 2}, {1, 3}};
    pgtx_call calls[3];
    calls_of(calls, d, 3);
    pgtx_run_info info;
    pgtx_batch_ops ops = {.one = fault_in_second};
    assert_int_equal(pgtx_run_batch(eng, &ops, calls, 3, &info, NULL), PGTX_OK);
    assert_int_equal(info.attempts, 2);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(calls[i].status, PGTX_OK);
        assert_int_equal(calls[i].attempts, 2);
    }
    assert_int_equal(balance_of(1), 6);
    assert_int_equal(ledger_rows(1), 3);
}

/* A failure of the whole batch reaches every call; nothing committed. */
static pgtx_status refuse_all(pgtx_tx *tx, pgtx_call *calls, int n, pgtx_error *err)
{
    (void)tx;
    (void)calls;
    (void)n;
    return pgtx_fail(err, PGTX_LOCK_NOT_AVAILABLE, "pretend the row was locked");
}

static void test_batch_failure_and_invalid(void **state)
{
    (void)state;
    seed(0, 0);
    deposit d[PGTX_BATCH_SAVEPOINT_MAX + 1];
    pgtx_call calls[PGTX_BATCH_SAVEPOINT_MAX + 1];
    for (int i = 0; i <= PGTX_BATCH_SAVEPOINT_MAX; i++)
        d[i] = (deposit){1, 1};
    calls_of(calls, d, 3);
    pgtx_error err;
    pgtx_batch_ops bad = {.set = refuse_all};
    assert_int_equal(pgtx_run_batch(eng, &bad, calls, 3, NULL, &err),
                     PGTX_LOCK_NOT_AVAILABLE);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(calls[i].status, PGTX_LOCK_NOT_AVAILABLE);
        assert_string_equal(calls[i].err.message, "pretend the row was locked");
        assert_int_equal(calls[i].attempts, 1);
    }
    /* savepoints: at most 64 calls, and nothing runs beyond */
    calls_of(calls, d, PGTX_BATCH_SAVEPOINT_MAX + 1);
    assert_int_equal(pgtx_run_batch(eng, &ONE_OPS, calls,
                                    PGTX_BATCH_SAVEPOINT_MAX + 1, NULL, &err),
                     PGTX_INVALID);
    assert_int_equal(pgtx_run_batch(eng, &ONE_OPS, calls, PGTX_BATCH_SAVEPOINT_MAX,
                                    NULL, &err), PGTX_OK);
    assert_int_equal(balance_of(1), PGTX_BATCH_SAVEPOINT_MAX);
    assert_int_equal(pgtx_run_batch(eng, &SET_OPS, calls, 0, NULL, &err), PGTX_INVALID);
    assert_int_equal(pgtx_run_batch(eng, &(pgtx_batch_ops){0}, calls, 1, NULL, &err),
                     PGTX_INVALID);
    pgtx_combiner *c = NULL;
    assert_int_equal(pgtx_combiner_create(eng, &ONE_OPS, PGTX_BATCH_SAVEPOINT_MAX + 1,
                                          &c, &err), PGTX_INVALID);
    assert_int_equal(pgtx_combiner_create(eng, &SET_OPS, 0, &c, &err), PGTX_INVALID);
    assert_null(c);
    assert_int_equal(pgtx_combine(NULL, 1, &calls[0], 10), PGTX_INVALID);
}

/* ---- the combiner --------------------------------------------------------- */

#define THREADS 16
#define PER_THREAD 100

typedef struct worker {
    pgtx_combiner *c; /* NULL: one transaction per deposit */
    int64_t acct;
    int failures;
    int max_attempts;
} worker;

static void *deposit_worker(void *p)
{
    worker *w = p;
    for (int i = 0; i < PER_THREAD; i++) {
        deposit d = {.acct = w->acct, .amount = 1 + i % 3};
        pgtx_call call = {.arg = &d};
        pgtx_status st = w->c ? pgtx_combine(w->c, (uint64_t)w->acct, &call, 60000)
                              : pgtx_run_batch(eng, &SET_OPS, &call, 1, NULL, NULL);
        if (st != PGTX_OK || call.status != PGTX_OK)
            w->failures++;
        if (call.attempts > w->max_attempts)
            w->max_attempts = call.attempts;
    }
    return NULL;
}

static long long expected_per_thread(void)
{
    long long sum = 0;
    for (int i = 0; i < PER_THREAD; i++)
        sum += 1 + i % 3;
    return sum;
}

static double run_workers(pgtx_combiner *c, int keys)
{
    worker w[THREADS];
    for (int i = 0; i < THREADS; i++)
        w[i] = (worker){.c = c, .acct = 1 + i % keys};
    int64_t t0 = h_now_ms();
    h_run_threads(THREADS, deposit_worker, w, sizeof w[0]);
    int64_t ms = h_now_ms() - t0;
    for (int i = 0; i < THREADS; i++)
        assert_int_equal(w[i].failures, 0);
    return (double)(THREADS * PER_THREAD) * 1000.0 / (double)(ms > 0 ? ms : 1);
}

static void hist_reset(void)
{
    for (int i = 0; i < HIST_MAX; i++)
        atomic_store(&size_hist[i], 0);
    for (int i = 0; i < 3; i++)
        atomic_store(&max_in_flight[i], 0);
    atomic_store(&both_keys_seen, 0);
}

static void hist_print(const char *what)
{
    printf("# %s: batch sizes (size x count):", what);
    for (int i = 1; i < HIST_MAX; i++)
        if (atomic_load(&size_hist[i]))
            printf(" %dx%d", i, atomic_load(&size_hist[i]));
    printf("\n");
}

/* Fresh rows, THREADS threads depositing through one combiner over `keys`
   rows; its statistics, and deposits per second into *rate. */
static pgtx_combiner_stats run_combined(int keys, double *rate)
{
    seed(0, 0);
    hist_reset();
    pgtx_combiner *c = NULL;
    assert_int_equal(pgtx_combiner_create(eng, &SET_OPS, 64, &c, NULL), PGTX_OK);
    *rate = run_workers(c, keys);
    pgtx_combiner_stats s;
    pgtx_combiner_stats_get(c, &s);
    pgtx_combiner_destroy(c);
    return s;
}

static void test_combiner_one_key(void **state)
{
    (void)state;
    double combined;
    pgtx_combiner_stats s = run_combined(1, &combined);
    assert_int_equal(balance_of(1), THREADS * expected_per_thread());
    assert_int_equal(ledger_rows(1), THREADS * PER_THREAD);
    assert_int_equal(s.calls, THREADS * PER_THREAD);
    assert_int_equal(s.timeouts, 0);
    assert_true(s.largest_batch > 1);
    assert_true(s.largest_batch <= 64);
    assert_true(s.batches < s.calls);
    assert_int_equal(atomic_load(&max_in_flight[1]), 1);
    hist_print("one key, 16 threads");
    printf("# one key: %llu calls in %llu batches, mean %.1f, largest %llu\n",
           (unsigned long long)s.calls, (unsigned long long)s.batches,
           (double)s.calls / (double)s.batches, (unsigned long long)s.largest_batch);

    seed(0, 0);
    double single = run_workers(NULL, 1);
    assert_int_equal(balance_of(1), THREADS * expected_per_thread());
    printf("# deposits/s on one row, %d threads x %d: combiner %.0f, one "
           "transaction per deposit %.0f (x%.1f)\n", THREADS, PER_THREAD, combined,
           single, combined / single);
}

static void test_combiner_two_keys(void **state)
{
    (void)state;
    double rate;
    pgtx_combiner_stats s = run_combined(2, &rate);
    long long each = THREADS / 2 * expected_per_thread();
    assert_int_equal(balance_of(1), each);
    assert_int_equal(balance_of(2), each);
    assert_int_equal(ledger_rows(1), THREADS / 2 * PER_THREAD);
    assert_int_equal(ledger_rows(2), THREADS / 2 * PER_THREAD);
    assert_int_equal(atomic_load(&max_in_flight[1]), 1);
    assert_int_equal(atomic_load(&max_in_flight[2]), 1);
    hist_print("two keys, 8 threads each");
    printf("# two keys: %.0f deposits/s, %llu batches, mean %.1f, both keys in "
           "flight at once: %s\n", rate, (unsigned long long)s.batches,
           (double)s.calls / (double)s.batches,
           atomic_load(&both_keys_seen) ? "seen" : "not seen");
}

/* ---- a call that gives up waiting ---------------------------------------- */

typedef struct lead_job {
    pgtx_combiner *c;
    deposit d;
    pgtx_call call;
} lead_job;

static void *lead_thread(void *p)
{
    lead_job *j = p;
    j->call.arg = &j->d;
    (void)pgtx_combine(j->c, 1, &j->call, -1);
    return NULL;
}

static int leader_waits(void *arg)
{
    (void)arg;
    return h_scalar(admin, "SELECT count(*) FROM pg_stat_activity WHERE "
                           "application_name = 'batch' AND wait_event_type = 'Lock'") > 0;
}

static void test_timeout(void **state)
{
    (void)state;
    seed(0, 0);
    pgtx_combiner *c = NULL;
    assert_int_equal(pgtx_combiner_create(eng, &ONE_OPS, 8, &c, NULL), PGTX_OK);
    PGconn *side = h_connect("batch-side");
    h_execf(side, "BEGIN; SELECT * FROM \"%s\".acct WHERE id = 1 FOR UPDATE", schema);
    lead_job j = {.c = c, .d = {1, 5}};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, lead_thread, &j), 0);
    assert_true(h_wait_until(leader_waits, NULL, 30000));

    deposit d = {1, 7};
    pgtx_call late = {.arg = &d};
    int64_t t0 = h_now_ms();
    assert_int_equal(pgtx_combine(c, 1, &late, 200), PGTX_POOL_TIMEOUT);
    int64_t waited = h_now_ms() - t0;
    assert_int_equal(late.status, PGTX_POOL_TIMEOUT);
    assert_int_equal(late.attempts, 0);
    assert_true(waited >= 190);
    printf("# timed-out call returned after %lld ms (timeout 200)\n", (long long)waited);

    h_exec(side, "COMMIT");
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_int_equal(j.call.status, PGTX_OK);
    /* the key is free again and a call runs at once */
    deposit d2 = {1, 11};
    pgtx_call next = {.arg = &d2};
    assert_int_equal(pgtx_combine(c, 1, &next, 0), PGTX_OK);
    pgtx_combiner_stats s;
    pgtx_combiner_stats_get(c, &s);
    pgtx_combiner_destroy(c);
    PQfinish(side);
    assert_int_equal(s.timeouts, 1);
    assert_int_equal(s.calls, 2);
    /* 5 and 11, never the 7 */
    assert_int_equal(balance_of(1), 16);
    assert_int_equal(h_scalar(admin, "SELECT count(*) FROM ledger WHERE amount = 7"), 0);
    assert_int_equal(ledger_rows(1), 2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_set_deposits),
        cmocka_unit_test(test_savepoint_guard),
        cmocka_unit_test(test_set_falls_back),
        cmocka_unit_test(test_retried),
        cmocka_unit_test(test_retried_savepoints),
        cmocka_unit_test(test_batch_failure_and_invalid),
        cmocka_unit_test(test_combiner_one_key),
        cmocka_unit_test(test_combiner_two_keys),
        cmocka_unit_test(test_timeout),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
