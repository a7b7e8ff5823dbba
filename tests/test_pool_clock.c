/* test_pool_clock.c — the pool's timed waits (checkout, close) end at their
   deadline even when the wall clock steps.

   Stepping the real clock needs privileges a test does not have, so this
   program defines clock_gettime itself: the library, linked in statically,
   calls this one, which adds a shift to CLOCK_REALTIME only.  A wait whose
   deadline were computed on CLOCK_REALTIME and handed to a condition
   variable on the kernel's real clock would then end an hour late, which is
   what a step back of an hour does to it; one on CLOCK_MONOTONIC does not
   notice.  Each wait runs in a thread and is watched from here for 10 s, then
   released by returning the connection it waits for. */
#include "harness.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static atomic_long realtime_shift_s;

int clock_gettime(clockid_t id, struct timespec *ts)
{
    int rc = (int)syscall(SYS_clock_gettime, id, ts);
    if (rc == 0 && id == CLOCK_REALTIME)
        ts->tv_sec += (time_t)atomic_load(&realtime_shift_s);
    return rc;
}

#define WAIT_MS 300
#define WATCH_MS 10000

typedef struct waiter {
    pgtx_pool *pool;
    bool close; /* pgtx_pool_close instead of a checkout */
    pgtx_status st;
    int64_t ms;
    atomic_int done;
} waiter;

static void *wait_fn(void *p)
{
    waiter *w = p;
    int64_t t0 = h_now_ms();
    if (w->close) {
        w->st = pgtx_pool_close(w->pool, WAIT_MS);
    } else {
        pgtx_conn *c = NULL;
        w->st = pgtx_pool_checkout(w->pool, WAIT_MS, &c, NULL);
        pgtx_pool_return(c);
    }
    w->ms = h_now_ms() - t0;
    atomic_store(&w->done, 1);
    return NULL;
}

static int is_done(void *p) { return atomic_load(&((waiter *)p)->done); }

/* The pool's only connection is borrowed while a thread waits (for it, or
   for it to come back); returns whether the wait ended on its own. */
static bool timed_wait(bool close, long shift_s, waiter *w)
{
    pgtx_pool *pool = h_pool(1, 0, "pool-clock");
    pgtx_conn *held = NULL;
    assert_int_equal(pgtx_pool_checkout(pool, -1, &held, NULL), PGTX_OK);
    *w = (waiter){.pool = pool, .close = close};
    atomic_store(&realtime_shift_s, shift_s);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, wait_fn, w), 0);
    bool ended = h_wait_until(is_done, w, WATCH_MS);
    pgtx_pool_return(held); /* releases a wait that overstayed */
    pthread_join(t, NULL);
    atomic_store(&realtime_shift_s, 0);
    pgtx_pool_destroy(pool);
    print_message("%s, wall clock %+lds: %s after %lld ms (deadline %d ms)\n",
                  close ? "close" : "checkout", shift_s, pgtx_status_name(w->st),
                  (long long)w->ms, WAIT_MS);
    return ended;
}

static void expect_deadline(bool close, long shift_s)
{
    waiter w;
    assert_true(timed_wait(close, shift_s, &w));
    assert_int_equal(w.st, PGTX_POOL_TIMEOUT);
    assert_true(w.ms >= WAIT_MS - 1);
}

static void test_checkout_deadline(void **state)
{
    (void)state;
    expect_deadline(false, 0);
}

static void test_checkout_deadline_clock_step(void **state)
{
    (void)state;
    expect_deadline(false, 3600);
}

static void test_close_deadline(void **state)
{
    (void)state;
    expect_deadline(true, 0);
}

static void test_close_deadline_clock_step(void **state)
{
    (void)state;
    expect_deadline(true, 3600);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_checkout_deadline),
        cmocka_unit_test(test_checkout_deadline_clock_step),
        cmocka_unit_test(test_close_deadline),
        cmocka_unit_test(test_close_deadline_clock_step),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
