/* bench_run.c — the load driver: client threads on one shared pool, bounded in time and count, with per-operation latency. */
#include "bench.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Latency samples kept per run, split among the clients: 16 MB at most, and
   a run stops when a client's share is full so every operation is counted. */
#define LATENCY_SAMPLES_PER_RUN (1 << 22)
#define MONITOR_INTERVAL_MS 20
/* How long a combined call may wait for its key's turn: far beyond any
   batch, so that only a stuck run ends in POOL_TIMEOUT. */
#define COMBINE_WAIT_MS 60000

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* splitmix64: cheap, per thread, good enough to pick rows. */
static uint64_t next_random(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* Threads wait here so that thread creation is not part of the run. */
typedef struct gate {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool open;
} gate;

typedef struct run_ctx {
    const bench_config *cfg;
    pgtx_engine *engine;
    pgtx_tx_fn fn;
    pgtx_combiner *combiner; /* NULL: each operation its own transaction */
    pgtx_strategy strategy;
    int64_t deadline_us;
    bool stop_when_full; /* time-bound runs end when a buffer fills */
    gate start;
    atomic_bool stop;
} run_ctx;

typedef struct worker {
    run_ctx *ctx;
    pthread_t thread;
    bool started;
    uint64_t rng;
    int64_t quota;   /* operations this client may run */
    uint32_t *lat_us; /* `quota` slots, one per operation */
    int64_t n;
    int64_t outcomes[BENCH_OUTCOME_COUNT];
    int64_t retries;
    bool full;
    char error_sample[320];
} worker;

static void gate_wait(gate *g)
{
    pthread_mutex_lock(&g->mu);
    while (!g->open)
        pthread_cond_wait(&g->cv, &g->mu);
    pthread_mutex_unlock(&g->mu);
}

static void gate_open(gate *g)
{
    pthread_mutex_lock(&g->mu);
    g->open = true;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
}

static bench_outcome classify(pgtx_status st, const pgtx_run_info *info,
                              const bench_op *op)
{
    if (st == PGTX_OK)
        return BENCH_OUT_COMMITTED;
    if (info->exhausted)
        return BENCH_OUT_RETRY_EXHAUSTED;
    if (st == PGTX_ABORTED && op->refusal != BENCH_OUT_COMMITTED)
        return op->refusal;
    if (st == PGTX_UNIQUE_VIOLATION && op->on_unique != BENCH_OUT_COMMITTED)
        return op->on_unique;
    return (bench_outcome)(BENCH_OUT_ERROR + (int)st);
}

/* The operation as a call of the combiner: it may run in another thread's
   batch.  The batch's attempts are the call's; a retryable status can only
   come back once the retry budget is spent. */
static pgtx_status combine(const run_ctx *c, bench_op *op, pgtx_run_info *info,
                           pgtx_error *err)
{
    pgtx_call call = {.arg = op};
    pgtx_status st = pgtx_combine(c->combiner, bench_op_key(c->cfg, op), &call,
                                  COMBINE_WAIT_MS);
    info->attempts = call.attempts;
    info->exhausted = pgtx_status_is_retryable(st);
    *err = call.err;
    return st;
}

static void one_operation(worker *w, const run_ctx *c)
{
    bench_op op;
    bench_op_init(&op, c->cfg, c->strategy, next_random(&w->rng));
    pgtx_run_info info = {0};
    pgtx_error err = {0};
    pgtx_status st = c->combiner ? combine(c, &op, &info, &err)
                                 : pgtx_run(c->engine, c->fn, &op, &info, &err);
    if (info.attempts > 1)
        w->retries += info.attempts - 1;
    bench_outcome out = classify(st, &info, &op);
    w->outcomes[out]++;
    if (out >= BENCH_OUT_FIRST_ERROR && w->error_sample[0] == '\0')
        snprintf(w->error_sample, sizeof w->error_sample, "%s: %s",
                 bench_outcome_name((int)out), err.message);
}

static void *work(void *p)
{
    worker *w = p;
    run_ctx *c = w->ctx;
    gate_wait(&c->start);
    while (w->n < w->quota && !atomic_load_explicit(&c->stop, memory_order_relaxed)) {
        int64_t t0 = now_us();
        if (t0 >= c->deadline_us)
            break;
        one_operation(w, c);
        int64_t us = now_us() - t0;
        w->lat_us[w->n++] = us > (int64_t)UINT32_MAX ? UINT32_MAX : (uint32_t)us;
    }
    if (w->n >= w->quota && w->quota > 0 && c->stop_when_full) {
        w->full = true;
        atomic_store(&c->stop, true);
    }
    return NULL;
}

/* ---- the pg_stat_activity monitor --------------------------------------- */

typedef struct monitor {
    PGconn *admin;
    const char *app;
    atomic_bool done;
    int max_seen;
} monitor;

static int count_backends(PGconn *admin, const char *app)
{
    const char *params[] = {app};
    PGresult *r = PQexecParams(admin,
                               "SELECT count(*) FROM pg_stat_activity "
                               "WHERE application_name = $1",
                               1, NULL, params, NULL, NULL, 0);
    int64_t n = -1;
    if (PQresultStatus(r) != PGRES_TUPLES_OK || pgtx_result_int64(r, 0, 0, &n))
        n = -1;
    PQclear(r);
    return (int)n;
}

/* Samples how many connections we hold, through the set-up connection
   (idle during the run), so that the "pool + 1" promise is measured. */
static void *watch(void *p)
{
    monitor *m = p;
    for (long i = 0; i < 100000000L && !atomic_load(&m->done); i++) {
        int n = count_backends(m->admin, m->app);
        if (n > m->max_seen)
            m->max_seen = n;
        sleep_ms(MONITOR_INTERVAL_MS);
    }
    return NULL;
}

/* ---- one run -------------------------------------------------------------- */

static int64_t quota_of(const bench_config *cfg, int clients, int i)
{
    if (cfg->ops > 0)
        return cfg->ops / clients + (i < cfg->ops % clients ? 1 : 0);
    int64_t share = LATENCY_SAMPLES_PER_RUN / clients;
    return share < 1024 ? 1024 : share;
}

static worker *workers_new(run_ctx *c, int clients)
{
    worker *ws = calloc((size_t)clients, sizeof *ws);
    uint64_t seed = (uint64_t)now_us() ^ ((uint64_t)getpid() << 32);
    for (int i = 0; ws && i < clients; i++) {
        ws[i].ctx = c;
        ws[i].rng = seed + (uint64_t)i * 0x632BE59BD9B4E019ULL;
        ws[i].quota = quota_of(c->cfg, clients, i);
        ws[i].lat_us = malloc((size_t)(ws[i].quota > 0 ? ws[i].quota : 1) *
                              sizeof *ws[i].lat_us);
        if (ws[i].lat_us == NULL) {
            for (int j = 0; j <= i; j++)
                free(ws[j].lat_us);
            free(ws);
            return NULL;
        }
    }
    return ws;
}

static void workers_free(worker *ws, int clients)
{
    for (int i = 0; ws && i < clients; i++)
        free(ws[i].lat_us);
    free(ws);
}

/* Start every client, open the gate, wait for all; false if a thread
   could not be created (the others are stopped and joined). */
static bool run_threads(run_ctx *c, worker *ws, int clients, double *elapsed_s)
{
    bool ok = true;
    for (int i = 0; ok && i < clients; i++) {
        ws[i].started = pthread_create(&ws[i].thread, NULL, work, &ws[i]) == 0;
        ok = ws[i].started;
    }
    if (!ok)
        atomic_store(&c->stop, true);
    int64_t t0 = now_us();
    c->deadline_us = t0 + (int64_t)(c->cfg->duration_s * 1e6);
    gate_open(&c->start);
    for (int i = 0; i < clients; i++)
        if (ws[i].started)
            pthread_join(ws[i].thread, NULL);
    *elapsed_s = (double)(now_us() - t0) / 1e6;
    return ok;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

/* Nearest rank: the smallest sample with at least p of them at or below. */
static double percentile_ms(const uint32_t *sorted, int64_t n, double p)
{
    int64_t rank = (int64_t)(p * (double)n + 0.999999);
    if (rank < 1)
        rank = 1;
    return sorted[rank - 1] / 1000.0;
}

static bool merge_latency(const worker *ws, int clients, bench_result *r)
{
    int64_t n = 0;
    for (int i = 0; i < clients; i++)
        n += ws[i].n;
    r->have_latency = n > 0;
    if (n == 0)
        return true;
    uint32_t *all = malloc((size_t)n * sizeof *all);
    if (all == NULL)
        return false;
    int64_t at = 0;
    for (int i = 0; i < clients; i++) {
        memcpy(all + at, ws[i].lat_us, (size_t)ws[i].n * sizeof *all);
        at += ws[i].n;
    }
    qsort(all, (size_t)n, sizeof *all, cmp_u32);
    double sum = 0;
    for (int64_t i = 0; i < n; i++)
        sum += all[i];
    r->mean_ms = sum / (double)n / 1000.0;
    r->max_ms = all[n - 1] / 1000.0;
    r->p50_ms = percentile_ms(all, n, 0.50);
    r->p95_ms = percentile_ms(all, n, 0.95);
    r->p99_ms = percentile_ms(all, n, 0.99);
    free(all);
    return true;
}

static void sum_workers(const worker *ws, int clients, bench_result *r)
{
    for (int i = 0; i < clients; i++) {
        for (int k = 0; k < BENCH_OUTCOME_COUNT; k++)
            r->outcomes[k] += ws[i].outcomes[k];
        r->ops += ws[i].n;
        r->retries += ws[i].retries;
        r->hit_op_limit |= ws[i].full;
        if (r->error_sample[0] == '\0' && ws[i].error_sample[0] != '\0')
            memcpy(r->error_sample, ws[i].error_sample, sizeof r->error_sample);
    }
}

/* Threads, monitor and pool statistics around one run. */
static bool drive(bench_env *env, run_ctx *c, worker *ws, int clients,
                  bench_result *r, char *err, size_t errlen)
{
    monitor m = {.admin = env->admin, .app = env->app_name};
    pthread_t mt;
    bool watching = pthread_create(&mt, NULL, watch, &m) == 0;
    pgtx_pool_stats before, after;
    pgtx_pool_stats_get(env->pool, &before);
    bool ok = run_threads(c, ws, clients, &r->elapsed_s);
    pgtx_pool_stats_get(env->pool, &after);
    atomic_store(&m.done, true);
    if (watching)
        pthread_join(mt, NULL);
    r->max_backends = watching ? m.max_seen : -1;
    r->connections_created = (int64_t)(after.created - before.created);
    if (!ok)
        snprintf(err, errlen, "could not start %d client threads", clients);
    return ok;
}

/* The combiner of a combined run, on the run's engine. */
static bool combiner_open(run_ctx *c, bench_scenario sc, char *err, size_t errlen)
{
    pgtx_error e = {0};
    if (pgtx_combiner_create(c->engine, bench_batch_ops(sc, c->strategy), BENCH_MAX_BATCH,
                             &c->combiner, &e) == PGTX_OK)
        return true;
    snprintf(err, errlen, "combiner: %s", e.message);
    return false;
}

static void combiner_close(run_ctx *c, bench_result *r)
{
    if (c->combiner == NULL)
        return;
    pgtx_combiner_stats cs;
    pgtx_combiner_stats_get(c->combiner, &cs);
    r->batches = (int64_t)cs.batches;
    r->batch_calls = (int64_t)cs.calls;
    r->largest_batch = (int64_t)cs.largest_batch;
    pgtx_combiner_destroy(c->combiner);
    c->combiner = NULL;
}

bool bench_run(bench_env *env, pgtx_strategy st, int clients, bool combined,
               bench_result *r, char *err, size_t errlen)
{
    memset(r, 0, sizeof *r);
    r->strategy = st;
    r->clients = clients;
    r->combined = combined;
    run_ctx c = {
        .cfg = env->cfg,
        .engine = st == PGTX_STRATEGY_SERIALIZABLE ? env->serializable : env->read_committed,
        .fn = bench_tx_fn(env->cfg->scenario),
        .strategy = st,
        .stop_when_full = env->cfg->ops == 0,
        .start = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, false},
    };
    atomic_init(&c.stop, false);
    if (combined && !combiner_open(&c, env->cfg->scenario, err, errlen))
        return false;
    worker *ws = workers_new(&c, clients);
    if (ws == NULL) {
        combiner_close(&c, r);
        snprintf(err, errlen, "out of memory for %d clients' latency buffers", clients);
        return false;
    }
    bool ok = drive(env, &c, ws, clients, r, err, errlen);
    combiner_close(&c, r);
    sum_workers(ws, clients, r);
    if (ok && !merge_latency(ws, clients, r)) {
        snprintf(err, errlen, "out of memory merging latencies");
        ok = false;
    }
    workers_free(ws, clients);
    return ok;
}
