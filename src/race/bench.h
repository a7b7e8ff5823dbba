/* bench.h — what the parts of `pgtx-race bench` share: options, outcomes, results. */
#ifndef PGTX_RACE_BENCH_H
#define PGTX_RACE_BENCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "race.h"

#define BENCH_MAX_CLIENTS 256
#define BENCH_MAX_CLIENT_COUNTS 16
#define BENCH_MAX_OPS 10000000LL
#define BENCH_MAX_AMOUNT 1000000LL /* --quantity and --stock */
#define BENCH_SPREAD_ROWS 1000
#define BENCH_ORDER_ACCOUNTS 1000
#define BENCH_PRICE 100 /* minor units; every 5th account holds less */
/* Calls one combined batch may take: libpgtx's savepoint limit, so that
   every strategy's `one` callback can run it. */
#define BENCH_MAX_BATCH PGTX_BATCH_SAVEPOINT_MAX

typedef enum bench_scenario {
    BENCH_COUNTER = 0, /* one hot row incremented */
    BENCH_COUPON,      /* a limited coupon claimed once per account */
    BENCH_ORDER,       /* a hot product bought by accounts with balances */
    BENCH_SPREAD,      /* increments over many rows: little contention */
    BENCH_SCENARIO_COUNT
} bench_scenario;

/*
 * How one operation ended.  Business refusals are answers, not errors: they
 * are counted apart so that "coupon_exhausted" is never mistaken for a bug.
 * Errors follow as BENCH_OUT_ERROR + pgtx_status.
 */
typedef enum bench_outcome {
    BENCH_OUT_COMMITTED = 0,
    BENCH_OUT_COUPON_EXHAUSTED,
    BENCH_OUT_COUPON_ALREADY_CLAIMED,
    BENCH_OUT_OUT_OF_STOCK,
    BENCH_OUT_INSUFFICIENT_FUNDS,
    BENCH_OUT_RETRY_EXHAUSTED, /* first error: the retry budget ran out */
    BENCH_OUT_ERROR,           /* + pgtx_status */
    BENCH_OUTCOME_COUNT = BENCH_OUT_ERROR + PGTX_STATUS_COUNT_
} bench_outcome;

#define BENCH_OUT_FIRST_REFUSAL BENCH_OUT_COUPON_EXHAUSTED
#define BENCH_OUT_FIRST_ERROR BENCH_OUT_RETRY_EXHAUSTED

/* Parsed command line; strings are borrowed from argv. */
typedef struct bench_config {
    bench_scenario scenario;
    bool strategies[PGTX_STRATEGY_COUNT];
    bool combining[2]; /* [false]: each op its own transaction; [true]: pgtx_combine */
    int clients[BENCH_MAX_CLIENT_COUNTS];
    int nclients;
    double duration_s; /* time bound of a run */
    int64_t ops;       /* total operations per run, 0 = bounded by time only */
    int pool_size;
    int64_t quantity; /* coupon */
    int64_t stock;    /* order */
    const char *database; /* NULL: not given */
    const char *data_dir; /* NULL: not given */
    const char *plot;     /* NULL: no plot */
    bool json;
    bool pgbench;
} bench_config;

/* One strategy at one client count: what happened and whether it was right. */
typedef struct bench_result {
    pgtx_strategy strategy;
    int clients;
    bool combined;   /* calls went through a pgtx_combiner */
    int64_t batches; /* combined: transactions run, calls in them, the largest */
    int64_t batch_calls;
    int64_t largest_batch;
    bool correct;
    char detail[256]; /* why not correct, or a summary of the check */
    int64_t final;    /* what the database holds, compared to `committed` */
    int64_t outcomes[BENCH_OUTCOME_COUNT];
    int64_t ops;     /* every operation, whatever its outcome */
    int64_t retries; /* attempts beyond the first, summed */
    double elapsed_s;
    bool have_latency;
    double p50_ms, p95_ms, p99_ms, mean_ms, max_ms;
    int64_t connections_created; /* by the pool during this run */
    int max_backends;            /* most seen in pg_stat_activity, ours only */
    bool hit_op_limit;           /* stopped by the latency buffer, not time */
    char error_sample[320];      /* the first error seen, for diagnosis */
    double pgbench_tps;          /* 0: not measured */
} bench_result;

/* Shared by every run of one invocation: the pool and its engines. */
typedef struct bench_env {
    const bench_config *cfg;
    const char *conninfo;  /* borrowed from race_database_open */
    char app_name[64];     /* application_name of our connections */
    PGconn *admin;         /* the "+1" for set-up and checks */
    pgtx_pool *pool;
    pgtx_engine *read_committed;
    pgtx_engine *serializable;
} bench_env;

/* ---- bench_sql.c: tables, transactions and invariants per scenario ---- */

const char *bench_scenario_name(bench_scenario s);
bool bench_scenario_parse(const char *name, bench_scenario *out);
const char *bench_outcome_name(int outcome);

/* Drop and create the scenario's tables with their starting data. */
bool bench_setup(PGconn *admin, const bench_config *cfg, char *err, size_t errlen);

/* Per-operation input and output of a transaction callback. */
typedef struct bench_op {
    pgtx_strategy strategy;
    int64_t row;     /* counter/spread row */
    int64_t account; /* coupon/order buyer */
    int64_t price;   /* out: filled by the order callbacks */
    bench_outcome refusal; /* out: a business refusal, or COMMITTED */
    /* out: the refusal that a unique violation stands for when it comes
       from a statement queued to the COMMIT (COMMITTED: none) */
    bench_outcome on_unique;
} bench_op;

/* The transaction body of a scenario; the strategy is bench_op's. */
pgtx_tx_fn bench_tx_fn(bench_scenario s);

/* The same work for a pgtx_combiner: `one` runs the transaction body per
   call (arg: a bench_op); the atomic strategy adds a set-oriented `set`
   where the scenario has one (counter, spread, coupon). */
const pgtx_batch_ops *bench_batch_ops(bench_scenario s, pgtx_strategy st);

/* The combiner's key of an operation: the hot row it writes first. */
uint64_t bench_op_key(const bench_config *cfg, const bench_op *op);

/* The atomic strategy's SQL as a pgbench custom script. */
void bench_pgbench_script(const bench_config *cfg, char *buf, size_t len);

/* Pick the row or account of the next operation from a random number. */
void bench_op_init(bench_op *op, const bench_config *cfg, pgtx_strategy st,
                   uint64_t random);

/* Check the invariants after a run; fills r->correct, r->final, r->detail.
   Returns false only when the check itself could not run. */
bool bench_check(PGconn *admin, const bench_config *cfg, bench_result *r,
                 char *err, size_t errlen);

/* ---- bench_run.c: the load driver ---- */

/* Run one strategy with `clients` threads on env's pool, each operation
   its own transaction or (`combined`) a call of a pgtx_combiner with
   max_batch BENCH_MAX_BATCH, and fill *r (but not the invariant check).
   Returns false on a set-up failure. */
bool bench_run(bench_env *env, pgtx_strategy st, int clients, bool combined,
               bench_result *r, char *err, size_t errlen);

/* ---- bench_pgbench.c ---- */

typedef enum bench_pgbench_status {
    BENCH_PGBENCH_OK = 0,
    BENCH_PGBENCH_MISSING, /* not installed */
    BENCH_PGBENCH_FAILED
} bench_pgbench_status;

/* Run pgbench with the atomic strategy's SQL for cfg's scenario; *tps on
   success, a message in err otherwise. */
bench_pgbench_status bench_pgbench_run(const bench_config *cfg,
                                       const char *conninfo, int clients,
                                       double *tps, char *err, size_t errlen);

/* ---- bench_report.c ---- */

/* Everything a report shows; borrowed. */
typedef struct bench_summary {
    const bench_config *cfg;
    const bench_result *rs;
    int n;
    const char *pgbench_note; /* NULL: --pgbench not asked */
    const char *server;       /* version and durability settings */
} bench_summary;

void bench_print_table(FILE *to, const bench_summary *s);
void bench_print_json(FILE *to, const bench_summary *s);
bool bench_write_plot(const char *path, const bench_summary *s, char *err,
                      size_t errlen);
/* True when no safe strategy broke an invariant. */
bool bench_all_safe_correct(const bench_result *rs, int n);

/* Committed, refused and failed operation counts of a result. */
int64_t bench_committed(const bench_result *r);
int64_t bench_refused(const bench_result *r);
int64_t bench_errors(const bench_result *r);
/* Answered operations (committed or refused) per second. */
double bench_ops_per_s(const bench_result *r);
/* Combined: calls per batch on average; 0 when not combined. */
double bench_batch_mean(const bench_result *r);

#endif
