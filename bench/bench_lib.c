/* bench_lib.c — what the runner costs: a one-statement read transaction
 * and a four-statement write transaction through pgtx_run, against the same
 * statements over raw libpq, in the same run.
 *
 *   bench-lib [--seconds S] [--rounds R] [--threads 1,8] [CONNINFO]
 *
 * CONNINFO defaults to DATABASE_URL, then libpq's environment.  Each mode
 * runs R rounds of S seconds, interleaved so that drift on a shared machine
 * hits every mode alike; the median round is reported.
 */
#include "pgtx.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_THREADS 64
#define MAX_ROUNDS 15
#define ROWS 1000

static const char *conninfo = "";
static double seconds = 1.0;
static int rounds = 5;

static double clock_s(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double now_s(void) { return clock_s(CLOCK_MONOTONIC); }

static void die(const char *what, const char *detail)
{
    fprintf(stderr, "bench-lib: %s: %s\n", what, detail);
    exit(1);
}

static PGconn *connect_raw(void)
{
    PGconn *pg = PQconnectdb(conninfo);
    if (PQstatus(pg) != CONNECTION_OK)
        die("cannot connect", PQerrorMessage(pg));
    return pg;
}

static void must(PGconn *pg, PGresult *r)
{
    ExecStatusType s = PQresultStatus(r);
    if (s != PGRES_COMMAND_OK && s != PGRES_TUPLES_OK)
        die("query failed", PQerrorMessage(pg));
    PQclear(r);
}

static const char *SELECT_SQL = "SELECT v FROM pgtx_bench WHERE id = $1::int";

/* The raw modes that send what pgtx sends begin as the engine does, every
   option spelled out (pgtx_engine_begin_sql_borrow): the same wire. */
static const char *begin_sql = "BEGIN";

/* ---- the modes ----------------------------------------------------------- */

typedef struct worker {
    PGconn *pg;          /* raw modes: the thread's own connection */
    pgtx_engine *engine; /* pgtx mode */
    unsigned seed;
    long done;
} worker;

static const char *next_id(worker *w, char *buf, size_t n)
{
    snprintf(buf, n, "%d", 1 + (int)(rand_r(&w->seed) % ROWS));
    return buf;
}

/* BEGIN, SELECT, COMMIT: three round trips, as most code writes it. */
static int raw_three(worker *w)
{
    char id[16];
    const char *p[] = {next_id(w, id, sizeof id)};
    must(w->pg, PQexec(w->pg, "BEGIN"));
    must(w->pg, PQexecParams(w->pg, SELECT_SQL, 1, NULL, p, NULL, NULL, 0));
    must(w->pg, PQexec(w->pg, "COMMIT"));
    return 3;
}

static void pipeline_read(PGconn *pg, int queries)
{
    for (int i = 0; i < queries; i++) {
        must(pg, PQgetResult(pg));
        PQclear(PQgetResult(pg));
    }
    PGresult *sync = PQgetResult(pg);
    if (PQresultStatus(sync) != PGRES_PIPELINE_SYNC)
        die("pipeline", PQerrorMessage(pg));
    PQclear(sync);
}

/* BEGIN and SELECT pipelined, then COMMIT: the runner's own wire pattern
   (the SELECT prepared once per connection, as pgtx's statement cache
   does), so the ratio against it is the library's overhead alone. */
static int raw_two(worker *w)
{
    char id[16];
    const char *p[] = {next_id(w, id, sizeof id)};
    PQenterPipelineMode(w->pg);
    PQsendQueryParams(w->pg, begin_sql, 0, NULL, NULL, NULL, NULL, 0);
    PQsendQueryPrepared(w->pg, "r0", 1, p, NULL, NULL, 0);
    PQpipelineSync(w->pg);
    pipeline_read(w->pg, 2);
    PQexitPipelineMode(w->pg);
    must(w->pg, PQexec(w->pg, "COMMIT"));
    return 2;
}

/* Everything in one pipeline: the floor for one round trip. */
static int raw_one(worker *w)
{
    char id[16];
    const char *p[] = {next_id(w, id, sizeof id)};
    PQenterPipelineMode(w->pg);
    PQsendQueryParams(w->pg, begin_sql, 0, NULL, NULL, NULL, NULL, 0);
    PQsendQueryPrepared(w->pg, "r0", 1, p, NULL, NULL, 0);
    PQsendQueryParams(w->pg, "COMMIT", 0, NULL, NULL, NULL, NULL, 0);
    PQpipelineSync(w->pg);
    pipeline_read(w->pg, 3);
    PQexitPipelineMode(w->pg);
    return 1;
}

typedef struct sel_arg {
    const char *id;
} sel_arg;

static pgtx_status select_one(pgtx_tx *tx, void *p, pgtx_error *err)
{
    const char *params[] = {((sel_arg *)p)->id};
    return pgtx_query(tx, SELECT_SQL, 1, params, NULL, err);
}

static int via_pgtx(worker *w)
{
    char id[16];
    sel_arg a = {next_id(w, id, sizeof id)};
    pgtx_error err;
    if (pgtx_run(w->engine, select_one, &a, NULL, &err) != PGTX_OK)
        die("pgtx_run", err.message);
    return 0; /* counted from the pool's statistics instead */
}

static void raw_prepare_read(PGconn *pg)
{
    must(pg, PQprepare(pg, "r0", SELECT_SQL, 0, NULL));
}

/* ---- the write: four statements, no decision in between ---------------------- */

/* Move 1 from one row to another and log it, then read the first back:
   what an order or a transfer does.  The lower id is updated first, so
   that no two transactions deadlock. */
static const char *const WRITE_SQL[4] = {
    "UPDATE pgtx_bench SET v = v - 1 WHERE id = $1::int",
    "UPDATE pgtx_bench SET v = v + 1 WHERE id = $1::int",
    "INSERT INTO pgtx_bench_log (a, b) VALUES ($1::int, $2::int)",
    "SELECT v FROM pgtx_bench WHERE id = $1::int",
};

typedef struct write_ids {
    char a[16], b[16];
} write_ids;

static void next_pair(worker *w, write_ids *ids)
{
    int x = 1 + (int)(rand_r(&w->seed) % ROWS), y = 1 + (int)(rand_r(&w->seed) % ROWS);
    snprintf(ids->a, sizeof ids->a, "%d", x < y ? x : y);
    snprintf(ids->b, sizeof ids->b, "%d", x < y ? y : x);
}

/* The parameters of statement i. */
static int write_params(const write_ids *ids, int i, const char *p[2])
{
    p[0] = i == 1 ? ids->b : ids->a;
    p[1] = ids->b;
    return i == 2 ? 2 : 1;
}

/* Statement by statement, unprepared: six round trips, as most code does. */
static int raw_write_six(worker *w)
{
    write_ids ids;
    next_pair(w, &ids);
    must(w->pg, PQexec(w->pg, "BEGIN"));
    for (int i = 0; i < 4; i++) {
        const char *p[2];
        int n = write_params(&ids, i, p);
        must(w->pg, PQexecParams(w->pg, WRITE_SQL[i], n, NULL, p, NULL, NULL, 0));
    }
    must(w->pg, PQexec(w->pg, "COMMIT"));
    return 6;
}

/* Hand-written best: statements prepared once per connection, then BEGIN,
   the four and COMMIT in one pipeline: one round trip. */
static void raw_prepare_writes(PGconn *pg)
{
    for (int i = 0; i < 4; i++) {
        char name[16];
        snprintf(name, sizeof name, "w%d", i);
        must(pg, PQprepare(pg, name, WRITE_SQL[i], 0, NULL));
    }
}

static int raw_write_one(worker *w)
{
    write_ids ids;
    next_pair(w, &ids);
    PQenterPipelineMode(w->pg);
    PQsendQueryParams(w->pg, begin_sql, 0, NULL, NULL, NULL, NULL, 0);
    for (int i = 0; i < 4; i++) {
        const char *p[2];
        char name[16];
        snprintf(name, sizeof name, "w%d", i);
        int n = write_params(&ids, i, p);
        PQsendQueryPrepared(w->pg, name, n, p, NULL, NULL, 0);
    }
    PQsendQueryParams(w->pg, "COMMIT", 0, NULL, NULL, NULL, NULL, 0);
    PQpipelineSync(w->pg);
    pipeline_read(w->pg, 6);
    PQexitPipelineMode(w->pg);
    return 1;
}

typedef struct write_arg {
    write_ids ids;
    PGresult *balance; /* the SELECT's result, arriving with COMMIT's */
} write_arg;

static pgtx_status write_four(pgtx_tx *tx, void *p, pgtx_error *err)
{
    write_arg *a = p;
    pgtx_status st = PGTX_OK;
    for (int i = 0; i < 4 && st == PGTX_OK; i++) {
        const char *params[2];
        int n = write_params(&a->ids, i, params);
        st = pgtx_queue(tx, WRITE_SQL[i], n, params, i == 3 ? &a->balance : NULL, err);
    }
    return st; /* the runner sends the four with BEGIN and COMMIT */
}

static int via_pgtx_write(worker *w)
{
    write_arg a = {.balance = NULL};
    next_pair(w, &a.ids);
    pgtx_error err;
    if (pgtx_run(w->engine, write_four, &a, NULL, &err) != PGTX_OK)
        die("pgtx_run", err.message);
    if (a.balance == NULL || PQntuples(a.balance) != 1)
        die("pgtx_run", "the queued SELECT's result did not arrive");
    PQclear(a.balance);
    return 0;
}

typedef struct mode {
    const char *name;
    int (*tx)(worker *w);
    bool pooled;
} mode;

/* A workload: its modes, the first what most code writes, `same_wire` the
   raw libpq mode that sends what pgtx sends. */
typedef struct workload {
    const char *title;
    const mode *modes;
    int n_modes, same_wire;
    void (*prepare)(PGconn *pg); /* per raw connection, or NULL */
} workload;

static const mode READ_MODES[] = {
    {"libpq BEGIN/SELECT/COMMIT", raw_three, false},
    {"libpq pipelined BEGIN+SELECT, COMMIT", raw_two, false},
    {"libpq all in one pipeline", raw_one, false},
    {"pgtx_run (pool + runner)", via_pgtx, true},
};

static const mode WRITE_MODES[] = {
    {"libpq 6 round trips, unprepared", raw_write_six, false},
    {"libpq one pipeline, prepared", raw_write_one, false},
    {"pgtx_run + pgtx_queue", via_pgtx_write, true},
};

static const workload WORKLOADS[] = {
    {"One-statement read transaction (SELECT by primary key)", READ_MODES, 4, 1,
     raw_prepare_read},
    {"Four-statement write transaction (2 UPDATEs, INSERT, SELECT; no decision "
     "in between)", WRITE_MODES, 3, 1, raw_prepare_writes},
};
enum { MAX_MODES = 4 };


/* ---- running ---------------------------------------------------------------- */

typedef struct run_ctx {
    const mode *m;
    worker *w;
    double until;
    long trips;
} run_ctx;

static atomic_long raw_trips;

static void *work(void *p)
{
    run_ctx *c = p;
    long trips = 0;
    for (long i = 0; i < 100000000L && now_s() < c->until; i++) {
        trips += c->m->tx(c->w);
        c->w->done++;
    }
    atomic_fetch_add(&raw_trips, trips);
    return NULL;
}

typedef struct result {
    double tps;
    double trips_per_tx;
    double cpu_us_per_tx; /* this process's CPU: what the client side costs */
} result;

static result run_once(const mode *m, int threads, pgtx_engine *engine,
                       PGconn **raw)
{
    worker w[MAX_THREADS];
    run_ctx c[MAX_THREADS];
    pthread_t t[MAX_THREADS];
    pgtx_pool_stats s0, s1;
    pgtx_pool_stats_get(pgtx_engine_pool_borrow(engine), &s0);
    atomic_store(&raw_trips, 0);
    double cpu0 = clock_s(CLOCK_PROCESS_CPUTIME_ID);
    double start = now_s();
    for (int i = 0; i < threads; i++) {
        w[i] = (worker){raw[i], engine, (unsigned)(i * 7919 + 1), 0};
        c[i] = (run_ctx){m, &w[i], start + seconds, 0};
        pthread_create(&t[i], NULL, work, &c[i]);
    }
    long done = 0;
    for (int i = 0; i < threads; i++) {
        pthread_join(t[i], NULL);
        done += w[i].done;
    }
    double took = now_s() - start;
    double cpu = clock_s(CLOCK_PROCESS_CPUTIME_ID) - cpu0;
    pgtx_pool_stats_get(pgtx_engine_pool_borrow(engine), &s1);
    long trips = m->pooled ? (long)(s1.round_trips - s0.round_trips)
                           : atomic_load(&raw_trips);
    result r = {(double)done / took, done ? (double)trips / (double)done : 0,
                done ? cpu * 1e6 / (double)done : 0};
    return r;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void setup_table(void)
{
    PGconn *pg = connect_raw();
    must(pg, PQexec(pg, "DROP TABLE IF EXISTS pgtx_bench, pgtx_bench_log"));
    must(pg, PQexec(pg, "CREATE TABLE pgtx_bench (id int PRIMARY KEY, v int)"));
    must(pg, PQexec(pg, "CREATE TABLE pgtx_bench_log (id bigserial PRIMARY KEY, "
                        "a int NOT NULL, b int NOT NULL)"));
    must(pg, PQexec(pg, "INSERT INTO pgtx_bench SELECT g, g FROM generate_series(1, 1000) g"));
    must(pg, PQexec(pg, "ANALYZE pgtx_bench"));
    PQfinish(pg);
}

static pgtx_engine *make_engine(int threads, pgtx_pool **pool)
{
    pgtx_pool_config cfg;
    pgtx_pool_config_init(&cfg);
    cfg.conninfo = conninfo;
    cfg.pool_size = threads;
    cfg.max_overflow = 0;
    pgtx_error err;
    if (pgtx_pool_create(&cfg, pool, &err) != PGTX_OK)
        die("pool", err.message);
    pgtx_engine *e = NULL;
    if (pgtx_engine_create(*pool, NULL, &e, &err) != PGTX_OK)
        die("engine", err.message);
    static char begin[128];
    snprintf(begin, sizeof begin, "%s", pgtx_engine_begin_sql_borrow(e));
    begin_sql = begin;
    return e;
}

static void bench_threads(const workload *wl, int threads)
{
    pgtx_pool *pool = NULL;
    pgtx_engine *engine = make_engine(threads, &pool);
    PGconn *raw[MAX_THREADS];
    for (int i = 0; i < threads; i++) {
        raw[i] = connect_raw();
        if (wl->prepare)
            wl->prepare(raw[i]);
    }
    int n = wl->n_modes;
    double tps[MAX_MODES][MAX_ROUNDS], cpu[MAX_MODES][MAX_ROUNDS];
    double trips[MAX_MODES] = {0};
    run_once(&wl->modes[n - 1], threads, engine, raw); /* warm the pool */
    for (int r = 0; r < rounds; r++)
        for (int m = 0; m < n; m++) {
            result res = run_once(&wl->modes[m], threads, engine, raw);
            tps[m][r] = res.tps;
            cpu[m][r] = res.cpu_us_per_tx;
            trips[m] = res.trips_per_tx;
        }
    double median[MAX_MODES], cpu_med[MAX_MODES];
    for (int m = 0; m < n; m++) {
        qsort(tps[m], (size_t)rounds, sizeof(double), cmp_double);
        qsort(cpu[m], (size_t)rounds, sizeof(double), cmp_double);
        median[m] = tps[m][rounds / 2];
        cpu_med[m] = cpu[m][rounds / 2];
    }
    for (int m = 0; m < n; m++)
        printf("| %-38s | %7d | %10.0f | %11.2f | %13.3f | %13.3f | %9.1f |\n",
               wl->modes[m].name, threads, median[m], trips[m], median[m] / median[0],
               median[m] / median[wl->same_wire], cpu_med[m]);
    for (int i = 0; i < threads; i++)
        PQfinish(raw[i]);
    pgtx_engine_destroy(engine);
    pgtx_pool_destroy(pool);
}

static void bench_workload(const workload *wl, const int *threads, int n_threads)
{
    printf("%s, median of %d rounds of %.1f s, durability as configured on the "
           "server.\n\n", wl->title, rounds, seconds);
    printf("| %-38s | threads | tx/s       | round trips | vs first      | vs same wire  | client us |\n",
           "mode");
    printf("|%s|---------|------------|-------------|---------------|---------------|-----------|\n",
           "----------------------------------------");
    for (int i = 0; i < n_threads; i++)
        bench_threads(wl, threads[i]);
    printf("\n");
}

static int parse_threads(const char *list, int *out, int max)
{
    int n = 0;
    char *copy = strdup(list), *save = NULL;
    for (char *tok = strtok_r(copy, ",", &save); tok && n < max;
         tok = strtok_r(NULL, ",", &save)) {
        int v = atoi(tok);
        if (v < 1 || v > MAX_THREADS)
            die("--threads", "each count must be between 1 and 64");
        out[n++] = v;
    }
    free(copy);
    return n;
}

int main(int argc, char **argv)
{
    int threads[8] = {1, 8}, n_threads = 2;
    const char *env = getenv("DATABASE_URL");
    if (env)
        conninfo = env;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--seconds") == 0 && i + 1 < argc)
            seconds = atof(argv[++i]);
        else if (strcmp(argv[i], "--rounds") == 0 && i + 1 < argc)
            rounds = atoi(argv[++i]);
        else if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc)
            n_threads = parse_threads(argv[++i], threads, 8);
        else if (argv[i][0] != '-')
            conninfo = argv[i];
        else
            die("usage", "bench-lib [--seconds S] [--rounds R] [--threads 1,8] [CONNINFO]");
    }
    if (seconds <= 0 || seconds > 600 || rounds < 1 || rounds > MAX_ROUNDS)
        die("usage", "--seconds must be in (0, 600], --rounds in [1, 15]");
    setup_table();
    for (size_t w = 0; w < sizeof WORKLOADS / sizeof WORKLOADS[0]; w++)
        bench_workload(&WORKLOADS[w], threads, n_threads);
    printf("'vs first' compares with the first mode of its table (what most code\n"
           "writes); 'vs same wire' with raw libpq sending exactly what pgtx sends\n"
           "(1 - that ratio is the library's overhead).  'client us' is this\n"
           "process's CPU time per transaction (all threads), the part the library\n"
           "can add to.\n");
    return 0;
}
