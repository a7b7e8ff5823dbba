/* batch.c — write combining: many calls in one transaction, and a combiner
   that queues the calls of one key so that one batch per key is in flight. */
#include "internal.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- one batch ----------------------------------------------------------- */

typedef struct batch_run {
    const pgtx_batch_ops *ops;
    pgtx_call *calls;
    int n;
    bool savepoints; /* one() per call, else set() */
} batch_run;

/* A failure that belongs to one call, which a savepoint can undo; any
   other is the whole batch's. */
static bool is_business(pgtx_status st)
{
    pgtx_class c = pgtx_status_class(st);
    return c == PGTX_CLASS_ABORT || c == PGTX_CLASS_CONSTRAINT ||
           c == PGTX_CLASS_SQL;
}

static void calls_reset(pgtx_call *calls, int n)
{
    for (int i = 0; i < n; i++) {
        calls[i].status = PGTX_OK;
        pgtx__error_clear(&calls[i].err);
    }
}

/* The call's outcome: a failure of the transaction (the server's) wins over
   what the callback said, as in pgtx_run. */
static pgtx_status call_outcome(pgtx_tx *tx, pgtx_status st, pgtx_error *e)
{
    pgtx_error failed;
    pgtx_status tx_st = pgtx__tx_settle(tx, &failed);
    if (tx_st != PGTX_OK && (st == PGTX_OK || !is_business(tx_st) ||
                             is_business(st))) {
        *e = failed;
        return tx_st;
    }
    if (st != PGTX_OK && e->status != st)
        pgtx_fail(e, st, "%s", pgtx_status_text(st));
    return st;
}

/* One call between SAVEPOINT and RELEASE (or ROLLBACK TO): OK, with the
   call marked, or the batch's failure. */
static pgtx_status one_call(pgtx_tx *tx, const pgtx_batch_ops *ops,
                            pgtx_call *call, pgtx_error *err)
{
    pgtx_status st = pgtx_queue(tx, "SAVEPOINT pgtx_call", 0, NULL, NULL, err);
    if (st != PGTX_OK)
        return st;
    pgtx_error e;
    pgtx__error_clear(&e);
    st = call_outcome(tx, ops->one(tx, call, &e), &e);
    if (st == PGTX_OK)
        return pgtx_queue(tx, "RELEASE SAVEPOINT pgtx_call", 0, NULL, NULL, err);
    if (!is_business(st)) {
        if (err)
            *err = e;
        return st;
    }
    call->status = st;
    call->err = e;
    return pgtx__tx_undo(tx, "ROLLBACK TO SAVEPOINT pgtx_call", err);
}

static pgtx_status batch_body(pgtx_tx *tx, void *arg, pgtx_error *err)
{
    batch_run *b = arg;
    calls_reset(b->calls, b->n);
    if (!b->savepoints)
        return b->ops->set(tx, b->calls, b->n, err);
    for (int i = 0; i < b->n; i++) {
        pgtx_status st = one_call(tx, b->ops, &b->calls[i], err);
        if (st != PGTX_OK)
            return st;
    }
    return PGTX_OK;
}

static pgtx_status run_mode(pgtx_engine *e, batch_run *b, pgtx_run_info *info,
                            pgtx_error *err)
{
    return pgtx_run(e, batch_body, b, info, err);
}

/* The batch's outcome given to its calls. */
static void calls_finish(pgtx_call *calls, int n, pgtx_status st,
                         const pgtx_error *e, int attempts)
{
    for (int i = 0; i < n; i++) {
        calls[i].attempts = attempts;
        if (st != PGTX_OK) {
            calls[i].status = st;
            calls[i].err = *e;
        }
    }
}

pgtx_status pgtx_run_batch(pgtx_engine *e, const pgtx_batch_ops *ops,
                           pgtx_call *calls, int n, pgtx_run_info *info,
                           pgtx_error *err)
{
    if (e == NULL || ops == NULL || calls == NULL || n < 1 ||
        (ops->set == NULL && ops->one == NULL))
        return pgtx_fail(err, PGTX_INVALID, "engine, ops with set or one, and "
                         "n >= 1 calls are required");
    if (ops->set == NULL && n > PGTX_BATCH_SAVEPOINT_MAX)
        return pgtx_fail(err, PGTX_INVALID, "%d calls with a savepoint each: "
                         "at most %d", n, PGTX_BATCH_SAVEPOINT_MAX);
    batch_run b = {.ops = ops, .calls = calls, .n = n,
                   .savepoints = ops->set == NULL};
    pgtx_run_info ri = {0}, more = {0};
    pgtx_error be;
    pgtx__error_clear(&be);
    pgtx_status st = run_mode(e, &b, &ri, &be);
    if (st != PGTX_OK && is_business(st) && !b.savepoints && ops->one &&
        n <= PGTX_BATCH_SAVEPOINT_MAX) {
        b.savepoints = true;
        pgtx__error_clear(&be);
        st = run_mode(e, &b, &more, &be);
        more.attempts += ri.attempts;
        more.elapsed_us += ri.elapsed_us;
        ri = more; /* where the second mode ran, and its commit */
    }
    calls_finish(calls, n, st, &be, ri.attempts);
    if (info)
        *info = ri;
    if (st != PGTX_OK && err)
        *err = be;
    return st;
}

/* ---- the combiner -------------------------------------------------------- */

typedef enum wait_state { W_QUEUED, W_LEAD, W_TAKEN, W_DONE } wait_state;

/* A call waiting for its key's turn; on its caller's stack. */
typedef struct waiter {
    pgtx_call *call;
    wait_state state;
    pthread_cond_t cv;
    struct waiter *next;
} waiter;

/* A key with a batch in flight (busy) and the calls queued behind it.  It
   exists only while busy: the last batch of a key frees it. */
typedef struct key_slot {
    uint64_t key;
    waiter *head, *tail;
    struct key_slot *next; /* in its bucket */
} key_slot;

#define BUCKETS 256

struct pgtx_combiner {
    pgtx_engine *engine;
    const pgtx_batch_ops *ops;
    int max_batch;
    pthread_mutex_t mu;
    pthread_condattr_t cattr; /* CLOCK_MONOTONIC, as pgtx__now_us() */
    key_slot *buckets[BUCKETS];
    pgtx_combiner_stats stats; /* under mu */
};

pgtx_status pgtx_combiner_create(pgtx_engine *e, const pgtx_batch_ops *ops,
                                 int max_batch, pgtx_combiner **out,
                                 pgtx_error *err)
{
    if (e == NULL || ops == NULL || out == NULL || max_batch < 1 ||
        (ops->set == NULL && ops->one == NULL))
        return pgtx_fail(err, PGTX_INVALID, "engine, ops with set or one, out "
                         "and max_batch >= 1 are required");
    if (ops->set == NULL && max_batch > PGTX_BATCH_SAVEPOINT_MAX)
        return pgtx_fail(err, PGTX_INVALID, "max_batch %d with a savepoint per "
                         "call: at most %d", max_batch, PGTX_BATCH_SAVEPOINT_MAX);
    pgtx_combiner *c = calloc(1, sizeof *c);
    if (c == NULL)
        return pgtx_fail(err, PGTX_NOMEM, "out of memory");
    c->engine = e;
    c->ops = ops;
    c->max_batch = max_batch;
    if (pthread_mutex_init(&c->mu, NULL) != 0) {
        free(c);
        return pgtx_fail(err, PGTX_NOMEM, "pthread_mutex_init failed");
    }
    if (pthread_condattr_init(&c->cattr) != 0 ||
        pthread_condattr_setclock(&c->cattr, CLOCK_MONOTONIC) != 0) {
        pthread_mutex_destroy(&c->mu);
        free(c);
        return pgtx_fail(err, PGTX_NOMEM, "pthread_condattr_init failed");
    }
    *out = c;
    return PGTX_OK;
}

void pgtx_combiner_destroy(pgtx_combiner *c)
{
    if (c == NULL)
        return;
    /* No call is running, so no key is busy and no slot is left. */
    pthread_condattr_destroy(&c->cattr);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

void pgtx_combiner_stats_get(pgtx_combiner *c, pgtx_combiner_stats *out)
{
    if (c == NULL || out == NULL)
        return;
    pthread_mutex_lock(&c->mu);
    *out = c->stats;
    pthread_mutex_unlock(&c->mu);
}

static key_slot **bucket_of(pgtx_combiner *c, uint64_t key)
{
    uint64_t h = key * 0x9E3779B97F4A7C15u; /* spread sequential ids */
    return &c->buckets[h >> 56];
}

static key_slot *slot_find(pgtx_combiner *c, uint64_t key)
{
    for (key_slot *s = *bucket_of(c, key); s; s = s->next)
        if (s->key == key)
            return s;
    return NULL;
}

static void slot_free(pgtx_combiner *c, key_slot *slot)
{
    key_slot **p = bucket_of(c, slot->key);
    while (*p != slot)
        p = &(*p)->next;
    *p = slot->next;
    free(slot);
}

static void queue_push(key_slot *s, waiter *w)
{
    w->next = NULL;
    if (s->tail)
        s->tail->next = w;
    else
        s->head = w;
    s->tail = w;
}

static void queue_remove(key_slot *s, waiter *w)
{
    waiter *prev = NULL;
    for (waiter *x = s->head; x; prev = x, x = x->next) {
        if (x != w)
            continue;
        if (prev)
            prev->next = w->next;
        else
            s->head = w->next;
        if (s->tail == w)
            s->tail = prev;
        return;
    }
}

/* A pthread_cond_timedwait deadline on CLOCK_MONOTONIC, `ms` from now. */
static struct timespec deadline_in(int ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    return ts;
}

/* Wait (mu held) until the call is done or leads; false when the wait for
   its turn ran out first (it is then out of the queue). */
static bool wait_turn(pgtx_combiner *c, key_slot *s, waiter *w, int timeout_ms)
{
    struct timespec until = deadline_in(timeout_ms < 0 ? 0 : timeout_ms);
    while (w->state == W_QUEUED || w->state == W_TAKEN) {
        if (timeout_ms < 0 || w->state == W_TAKEN) {
            pthread_cond_wait(&w->cv, &c->mu);
            continue;
        }
        if (pthread_cond_timedwait(&w->cv, &c->mu, &until) != 0 &&
            w->state == W_QUEUED) {
            queue_remove(s, w);
            return false;
        }
    }
    return true;
}

/* Take the oldest queued calls (mu held), the leader first. */
static int take_batch(key_slot *s, waiter *lead, waiter **taken, int max)
{
    int n = 0;
    taken[n++] = lead;
    lead->state = W_TAKEN;
    while (s->head && n < max) {
        waiter *w = s->head;
        s->head = w->next;
        if (s->head == NULL)
            s->tail = NULL;
        w->state = W_TAKEN;
        taken[n++] = w;
    }
    return n;
}

static void stats_batch(pgtx_combiner *c, int n)
{
    c->stats.batches++;
    c->stats.calls += (uint64_t)n;
    if ((uint64_t)n > c->stats.largest_batch)
        c->stats.largest_batch = (uint64_t)n;
}

/* Run the taken calls (mu not held) and copy their outcomes back. */
static void run_taken(pgtx_combiner *c, waiter **taken, int n, pgtx_call *calls)
{
    for (int i = 0; i < n; i++)
        calls[i] = *taken[i]->call;
    (void)pgtx_run_batch(c->engine, c->ops, calls, n, NULL, NULL);
    for (int i = 0; i < n; i++)
        *taken[i]->call = calls[i];
}

/* Every taken call gets the same failure (the batch could not be run). */
static void fail_taken(waiter **taken, int n, pgtx_status st, const char *why)
{
    for (int i = 0; i < n; i++) {
        pgtx_call *call = taken[i]->call;
        call->attempts = 0;
        call->status = pgtx_fail(&call->err, st, "%s", why);
    }
}

/* Lead one batch of the key (mu held on entry and exit), wake its calls,
   and pass the lead on (or free the key when nobody waits). */
static void lead(pgtx_combiner *c, key_slot *s, waiter *me, waiter **taken,
                 int max, pgtx_call *calls)
{
    int n = take_batch(s, me, taken, max);
    stats_batch(c, n);
    pthread_mutex_unlock(&c->mu);
    if (calls)
        run_taken(c, taken, n, calls);
    else
        fail_taken(taken, n, PGTX_NOMEM, "out of memory for the batch");
    pthread_mutex_lock(&c->mu);
    for (int i = 0; i < n; i++) {
        taken[i]->state = W_DONE;
        if (taken[i] != me)
            pthread_cond_signal(&taken[i]->cv);
    }
    if (s->head) {
        waiter *next = s->head;
        s->head = next->next;
        if (s->head == NULL)
            s->tail = NULL;
        next->state = W_LEAD;
        pthread_cond_signal(&next->cv);
    } else {
        slot_free(c, s);
    }
}

/* Lead with room for max_batch calls (allocated outside the lock). */
static void lead_alloc(pgtx_combiner *c, key_slot *s, waiter *me)
{
    size_t m = (size_t)c->max_batch;
    pthread_mutex_unlock(&c->mu);
    waiter **taken = malloc(m * sizeof *taken);
    pgtx_call *calls = malloc(m * sizeof *calls);
    pthread_mutex_lock(&c->mu);
    waiter *alone[1];
    if (taken == NULL || calls == NULL) /* fail this call alone, run nothing */
        lead(c, s, me, alone, 1, NULL);
    else
        lead(c, s, me, taken, c->max_batch, calls);
    free(taken);
    free(calls);
}

/* mu held: the key's slot, made busy by this caller when it had none. */
static key_slot *slot_enter(pgtx_combiner *c, uint64_t key, bool *leads)
{
    key_slot *s = slot_find(c, key);
    *leads = s == NULL;
    if (s)
        return s;
    s = calloc(1, sizeof *s);
    if (s == NULL)
        return NULL;
    s->key = key;
    key_slot **b = bucket_of(c, key);
    s->next = *b;
    *b = s;
    return s;
}

pgtx_status pgtx_combine(pgtx_combiner *c, uint64_t key, pgtx_call *call,
                         int timeout_ms)
{
    if (c == NULL || call == NULL)
        return pgtx_fail(NULL, PGTX_INVALID, "combiner and call are required");
    waiter me = {.call = call, .state = W_QUEUED};
    if (pthread_cond_init(&me.cv, &c->cattr) != 0) {
        call->attempts = 0;
        return call->status = pgtx_fail(&call->err, PGTX_NOMEM,
                                        "pthread_cond_init failed");
    }
    pthread_mutex_lock(&c->mu);
    bool leads = false;
    key_slot *s = slot_enter(c, key, &leads);
    bool turn = true;
    if (s == NULL) {
        call->attempts = 0;
        call->status = pgtx_fail(&call->err, PGTX_NOMEM, "out of memory");
    } else {
        if (!leads) {
            queue_push(s, &me);
            turn = wait_turn(c, s, &me, timeout_ms);
        }
        if (turn && me.state != W_DONE)
            lead_alloc(c, s, &me);
        if (!turn) {
            c->stats.timeouts++;
            call->attempts = 0;
            call->status = pgtx_fail(&call->err, PGTX_POOL_TIMEOUT,
                                     "the call waited %d ms for its key's turn "
                                     "in the combiner: not run", timeout_ms);
        }
    }
    pthread_mutex_unlock(&c->mu);
    pthread_cond_destroy(&me.cv);
    return call->status;
}
