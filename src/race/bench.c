/* bench.c — `pgtx-race bench`: options, the shared pool and engines, and the runs (strategy x clients) with their checks and report. */
#include "bench.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define DEFAULT_DURATION_S 3.0
#define MAX_DURATION_S 3600.0
/* --ops alone still gets a time bound, so that no run can hang forever. */
#define OPS_TIME_LIMIT_S 600.0
#define MAX_POOL_SIZE 256

static void usage(FILE *to)
{
    fprintf(to,
        "usage: pgtx-race bench [options]\n"
        "\n"
        "Hammer hot rows with many clients through one pgtx pool, one run per\n"
        "strategy and client count, check the invariants after each run, and\n"
        "print a table (or JSON, or an SVG plot), with write combining off and on.\n"
        "\n"
        "  --scenario NAME    counter (default): one hot row incremented;\n"
        "                     coupon: a coupon of --quantity claimed once per account;\n"
        "                     order: a product of --stock bought by accounts with\n"
        "                       balances (every 5th cannot afford it);\n"
        "                     spread: increments over %d rows: low contention\n"
        "  --strategy S       naive|atomic|lock|optimistic|serializable, a comma list,\n"
        "                     or all (default); naive is the unsafe read-modify-write,\n"
        "                     shown to demonstrate the lost update\n"
        "  --combining MODE   off: each operation its own transaction; on: the\n"
        "                     clients' calls go through one pgtx_combiner (max_batch\n"
        "                     %d, a savepoint per call; atomic also set-oriented),\n"
        "                     one batch per hot row in flight; both (default): a run\n"
        "                     of each, side by side\n"
        "  --clients LIST     client threads per run, e.g. 1,8,32,64 (default 8;\n"
        "                     1..%d each, at most %d counts)\n"
        "  --duration SECS    length of each run (default %g; at most %g)\n"
        "  --ops N            total operations per run, split among the clients\n"
        "                     (at most %lld); without --duration, runs are still\n"
        "                     cut at %g s\n"
        "  --pool-size N      connections in the one shared pool (default 8, no\n"
        "                     overflow); a run holds at most N plus one set-up\n"
        "                     connection\n"
        "  --quantity N       coupons in the coupon scenario (default 100)\n"
        "  --stock N          stock in the order scenario (default 100)\n"
        "  --database CONN    libpq connection string or URI; an empty string uses\n"
        "                     libpq's environment (PGHOST, PGPORT, ...). Default:\n"
        "                     DATABASE_URL, else an embedded cluster in --data-dir\n"
        "  --data-dir DIR     the embedded cluster's folder (default ./%s,\n"
        "                     or %s); apart from pgtx-shop's .pgtx/pgdata\n"
        "  --json             print the results as one JSON document instead\n"
        "  --plot FILE.svg    draw throughput and p99 latency against clients\n"
        "  --pgbench          also run pgbench with the atomic strategy's SQL at each\n"
        "                     client count and show each strategy as a ratio of it\n"
        "  --help             this text\n"
        "\n"
        "Tables race_* are dropped and created afresh for every run.\n"
        "ops/s counts answered operations: committed, or refused by a business rule\n"
        "(coupon_exhausted, out_of_stock, ...), which are counted apart from errors.\n"
        "Exit status: 0 every safe strategy kept its invariants (naive may break\n"
        "them); 1 a safe strategy broke one; 2 bad usage or a bad value (a bad\n"
        "connection string too); 3 could not run (database unreachable, cluster\n"
        "failed to start, unexpected SQL error, plot not written).  Each non-zero\n"
        "status comes with one line on stderr saying why.\n",
        BENCH_SPREAD_ROWS, BENCH_MAX_BATCH, BENCH_MAX_CLIENTS, BENCH_MAX_CLIENT_COUNTS,
        DEFAULT_DURATION_S, MAX_DURATION_S, (long long)BENCH_MAX_OPS,
        OPS_TIME_LIMIT_S, RACE_DEFAULT_DATA_DIR, RACE_DATA_DIR_ENV);
}

/* ---- options ------------------------------------------------------------- */

static bool parse_int(const char *s, int64_t lo, int64_t hi, int64_t *out,
                      char *err, size_t errlen)
{
    char *end = NULL;
    errno = 0;
    long long v = isdigit((unsigned char)s[0]) ? strtoll(s, &end, 10) : 0;
    if (!isdigit((unsigned char)s[0]) || *end != '\0' || errno == ERANGE) {
        snprintf(err, errlen, "'%s' is not a whole number", s);
        return false;
    }
    if (v < lo || v > hi) {
        snprintf(err, errlen, "%lld is out of range (%lld..%lld)", v, (long long)lo,
                 (long long)hi);
        return false;
    }
    *out = v;
    return true;
}

static bool set_scenario(bench_config *cfg, const char *v, char *err, size_t len)
{
    if (bench_scenario_parse(v, &cfg->scenario))
        return true;
    snprintf(err, len, "unknown scenario '%s' (counter, coupon, order, spread)", v);
    return false;
}

/* Calls `one` for each comma-separated item; empty items are errors. */
static bool each_item(const char *list, bool (*one)(bench_config *, const char *,
                                                    char *, size_t),
                      bench_config *cfg, char *err, size_t len)
{
    char item[64];
    for (const char *p = list;; p++) {
        size_t n = strcspn(p, ",");
        if (n == 0 || n >= sizeof item) {
            snprintf(err, len, "bad list '%s'", list);
            return false;
        }
        memcpy(item, p, n);
        item[n] = '\0';
        if (!one(cfg, item, err, len))
            return false;
        p += n;
        if (*p == '\0')
            return true;
    }
}

static bool add_strategy(bench_config *cfg, const char *v, char *err, size_t len)
{
    pgtx_strategy s;
    if (strcmp(v, "all") == 0) {
        for (int i = 0; i < PGTX_STRATEGY_COUNT; i++)
            cfg->strategies[i] = true;
        return true;
    }
    if (!pgtx_strategy_parse(v, &s)) {
        snprintf(err, len, "unknown strategy '%s' (naive, atomic, lock, "
                           "optimistic, serializable or all)", v);
        return false;
    }
    cfg->strategies[s] = true;
    return true;
}

static bool set_strategy(bench_config *cfg, const char *v, char *err, size_t len)
{
    memset(cfg->strategies, 0, sizeof cfg->strategies);
    return each_item(v, add_strategy, cfg, err, len);
}

static bool set_combining(bench_config *cfg, const char *v, char *err, size_t len)
{
    bool off = strcmp(v, "off") == 0, on = strcmp(v, "on") == 0;
    if (!off && !on && strcmp(v, "both") != 0) {
        snprintf(err, len, "'%s' is not off, on or both", v);
        return false;
    }
    cfg->combining[false] = !on;
    cfg->combining[true] = !off;
    return true;
}

static bool add_clients(bench_config *cfg, const char *v, char *err, size_t len)
{
    int64_t n;
    if (!parse_int(v, 1, BENCH_MAX_CLIENTS, &n, err, len))
        return false;
    for (int i = 0; i < cfg->nclients; i++)
        if (cfg->clients[i] == n) {
            snprintf(err, len, "%lld is listed twice", (long long)n);
            return false;
        }
    if (cfg->nclients >= BENCH_MAX_CLIENT_COUNTS) {
        snprintf(err, len, "at most %d client counts", BENCH_MAX_CLIENT_COUNTS);
        return false;
    }
    cfg->clients[cfg->nclients++] = (int)n;
    return true;
}

static bool set_clients(bench_config *cfg, const char *v, char *err, size_t len)
{
    cfg->nclients = 0;
    return each_item(v, add_clients, cfg, err, len);
}

static bool set_duration(bench_config *cfg, const char *v, char *err, size_t len)
{
    char *end = NULL;
    double d = isdigit((unsigned char)v[0]) ? strtod(v, &end) : NAN;
    if (!isfinite(d) || *end != '\0' || d <= 0 || d > MAX_DURATION_S) {
        snprintf(err, len, "'%s' is not a number of seconds in (0, %g]", v,
                 MAX_DURATION_S);
        return false;
    }
    cfg->duration_s = d;
    return true;
}

static bool set_ops(bench_config *cfg, const char *v, char *err, size_t len)
{
    return parse_int(v, 1, BENCH_MAX_OPS, &cfg->ops, err, len);
}

static bool set_pool_size(bench_config *cfg, const char *v, char *err, size_t len)
{
    int64_t n;
    if (!parse_int(v, 1, MAX_POOL_SIZE, &n, err, len))
        return false;
    cfg->pool_size = (int)n;
    return true;
}

static bool set_quantity(bench_config *cfg, const char *v, char *err, size_t len)
{
    return parse_int(v, 0, BENCH_MAX_AMOUNT, &cfg->quantity, err, len);
}

static bool set_stock(bench_config *cfg, const char *v, char *err, size_t len)
{
    return parse_int(v, 0, BENCH_MAX_AMOUNT, &cfg->stock, err, len);
}

static bool set_database(bench_config *cfg, const char *v, char *err, size_t len)
{
    (void)err, (void)len;
    cfg->database = v; /* "" is meaningful: libpq's environment */
    return true;
}

static bool set_data_dir(bench_config *cfg, const char *v, char *err, size_t len)
{
    (void)err, (void)len;
    cfg->data_dir = v; /* race_database_choose says when it is empty */
    return true;
}

static bool set_plot(bench_config *cfg, const char *v, char *err, size_t len)
{
    if (*v == '\0') {
        snprintf(err, len, "needs a file name");
        return false;
    }
    cfg->plot = v;
    return true;
}

static bool set_json(bench_config *cfg, const char *v, char *err, size_t len)
{
    (void)v, (void)err, (void)len;
    cfg->json = true;
    return true;
}

static bool set_pgbench(bench_config *cfg, const char *v, char *err, size_t len)
{
    (void)v, (void)err, (void)len;
    cfg->pgbench = true;
    return true;
}

typedef struct option_def {
    const char *name;
    bool takes_value;
    bool (*set)(bench_config *cfg, const char *v, char *err, size_t len);
} option_def;

static const option_def OPTIONS[] = {
    {"--scenario", true, set_scenario},   {"--strategy", true, set_strategy},
    {"--clients", true, set_clients},     {"--duration", true, set_duration},
    {"--combining", true, set_combining},
    {"--ops", true, set_ops},             {"--pool-size", true, set_pool_size},
    {"--quantity", true, set_quantity},   {"--stock", true, set_stock},
    {"--database", true, set_database},   {"--data-dir", true, set_data_dir},
    {"--plot", true, set_plot},
    {"--json", false, set_json},          {"--pgbench", false, set_pgbench},
};

static const option_def *find_option(const char *arg, size_t len)
{
    for (size_t i = 0; i < sizeof OPTIONS / sizeof OPTIONS[0]; i++)
        if (strlen(OPTIONS[i].name) == len && strncmp(arg, OPTIONS[i].name, len) == 0)
            return &OPTIONS[i];
    return NULL;
}

/* One option at argv[*i] (with its value, as "--x=v" or "--x v"). */
static bool parse_one(bench_config *cfg, int argc, char **argv, int *i, char *err,
                      size_t len)
{
    const char *arg = argv[*i], *eq = strchr(arg, '=');
    size_t name_len = eq ? (size_t)(eq - arg) : strlen(arg);
    const option_def *o = find_option(arg, name_len);
    if (o == NULL) {
        snprintf(err, len, "%s '%s'",
                 strncmp(arg, "-", 1) == 0 ? "unknown option" : "unexpected argument", arg);
        return false;
    }
    const char *v = eq ? eq + 1 : NULL;
    if (o->takes_value && v == NULL && *i + 1 < argc)
        v = argv[++*i];
    if ((o->takes_value && v == NULL) || (!o->takes_value && v != NULL)) {
        snprintf(err, len, "%s %s", o->name,
                 o->takes_value ? "needs a value" : "takes no value");
        return false;
    }
    char why[256] = "";
    if (o->set(cfg, v ? v : "", why, sizeof why))
        return true;
    snprintf(err, len, "%s: %s", o->name, why);
    return false;
}

static void config_defaults(bench_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->scenario = BENCH_COUNTER;
    for (int i = 0; i < PGTX_STRATEGY_COUNT; i++)
        cfg->strategies[i] = true;
    cfg->combining[false] = cfg->combining[true] = true;
    cfg->clients[0] = 8;
    cfg->nclients = 1;
    cfg->pool_size = 8;
    cfg->quantity = 100;
    cfg->stock = 100;
}

/* Returns -1 to go on, else the exit status (0 after --help, 2 on error). */
static int parse_args(bench_config *cfg, int argc, char **argv)
{
    config_defaults(cfg);
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        }
        char err[320];
        if (!parse_one(cfg, argc, argv, &i, err, sizeof err)) {
            fprintf(stderr, "pgtx-race bench: %s (see pgtx-race bench --help)\n", err);
            return RACE_EXIT_USAGE;
        }
    }
    if (cfg->duration_s == 0) /* not given */
        cfg->duration_s = cfg->ops > 0 ? OPS_TIME_LIMIT_S : DEFAULT_DURATION_S;
    return -1;
}

/* ---- the shared pool, its engines and the set-up connection -------------- */

static void ignore_notice(void *arg, const char *message)
{
    (void)arg, (void)message; /* "table does not exist, skipping" is noise */
}

static PGconn *connect_admin(const char *conninfo, const char *app, char *err,
                             size_t errlen)
{
    /* conninfo may be a URI or key=value string: expand it, then let our
       application_name win so the monitor can count our connections. */
    const char *keys[] = {"dbname", "application_name", NULL};
    const char *vals[] = {conninfo, app, NULL};
    PGconn *pg = PQconnectdbParams(keys, vals, 1);
    if (pg == NULL || PQstatus(pg) != CONNECTION_OK) {
        snprintf(err, errlen, "could not connect: %s",
                 pg ? PQerrorMessage(pg) : "out of memory");
        PQfinish(pg);
        return NULL;
    }
    PQsetNoticeProcessor(pg, ignore_notice, NULL);
    return pg;
}

static pgtx_engine *make_engine(pgtx_pool *pool, pgtx_isolation iso, pgtx_error *e)
{
    pgtx_engine_options o;
    pgtx_engine_options_init(&o);
    o.isolation = iso;
    /* Generous enough that a safe strategy never gives up under 256
       clients; if one does, the table shows retry_exhausted. */
    o.retry.max_attempts = 1000;
    o.retry.budget_ms = 30000;
    o.retry.max_delay_ms = 50;
    pgtx_engine *en = NULL;
    return pgtx_engine_create(pool, &o, &en, e) == PGTX_OK ? en : NULL;
}

/* Open every pooled connection now, so that connecting is not measured. */
static bool prewarm(pgtx_pool *pool, int n, pgtx_error *e)
{
    pgtx_conn *conns[MAX_POOL_SIZE];
    int got = 0;
    bool ok = true;
    while (ok && got < n) {
        ok = pgtx_pool_checkout(pool, -1, &conns[got], e) == PGTX_OK;
        got += ok;
    }
    for (int i = 0; i < got; i++)
        pgtx_pool_return(conns[i]);
    return ok;
}

static bool open_pool(bench_env *env, char *err, size_t errlen)
{
    pgtx_pool_config pc;
    pgtx_pool_config_init(&pc);
    pc.conninfo = env->conninfo;
    pc.application_name = env->app_name;
    pc.pool_size = env->cfg->pool_size;
    pc.max_overflow = 0; /* the promise: never more than --pool-size */
    pgtx_error e = {0};
    bool ok = pgtx_pool_create(&pc, &env->pool, &e) == PGTX_OK &&
              (env->read_committed = make_engine(env->pool, PGTX_READ_COMMITTED, &e)) &&
              (env->serializable = make_engine(env->pool, PGTX_SERIALIZABLE, &e)) &&
              prewarm(env->pool, pc.pool_size, &e);
    if (!ok)
        snprintf(err, errlen, "pool: %s", e.message);
    return ok;
}

static void env_close(bench_env *env)
{
    pgtx_engine_destroy(env->read_committed);
    pgtx_engine_destroy(env->serializable);
    pgtx_pool_destroy(env->pool);
    PQfinish(env->admin);
}

static bool env_open(bench_env *env, const bench_config *cfg, const char *conninfo,
                     char *err, size_t errlen)
{
    memset(env, 0, sizeof *env);
    env->cfg = cfg;
    env->conninfo = conninfo;
    snprintf(env->app_name, sizeof env->app_name, "pgtx-race-bench-%ld", (long)getpid());
    env->admin = connect_admin(conninfo, env->app_name, err, errlen);
    return env->admin != NULL && open_pool(env, err, errlen);
}

/* "PostgreSQL 15.4, fsync on, synchronous_commit on": durability stays on
   in benchmarks, and a run with it off must say so. */
static void describe_server(PGconn *admin, char *buf, size_t len)
{
    PGresult *r = PQexec(admin, "SELECT current_setting('server_version'),"
                                " current_setting('fsync'),"
                                " current_setting('synchronous_commit')");
    if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1)
        snprintf(buf, len, "PostgreSQL %s, fsync %s, synchronous_commit %s",
                 PQgetvalue(r, 0, 0), PQgetvalue(r, 0, 1), PQgetvalue(r, 0, 2));
    else
        snprintf(buf, len, "server settings unknown");
    PQclear(r);
}

/* ---- runs ---------------------------------------------------------------- */

typedef struct bench_session {
    bench_env *env;
    bench_result *rs;
    int n;
    bool pgbench_missing;
    char pgbench_note[768];
} bench_session;

/* On a terminal, say what is running: a long --clients list takes a while. */
static void progress(const char *what, const char *how, int clients)
{
    if (isatty(STDERR_FILENO))
        fprintf(stderr, "pgtx-race bench: %s%s with %d clients...\n", what, how, clients);
}

static bool run_one(bench_session *s, pgtx_strategy st, int clients, bool combined,
                    char *err, size_t errlen)
{
    bench_env *env = s->env;
    bench_result *r = &s->rs[s->n];
    progress(pgtx_strategy_name(st), combined ? ", combining on," : "", clients);
    if (!bench_setup(env->admin, env->cfg, err, errlen) ||
        !bench_run(env, st, clients, combined, r, err, errlen) ||
        !bench_check(env->admin, env->cfg, r, err, errlen))
        return false;
    s->n++;
    return true;
}

static void note_pgbench(bench_session *s, const char *msg)
{
    size_t at = strlen(s->pgbench_note);
    snprintf(s->pgbench_note + at, sizeof s->pgbench_note - at, "%s%s",
             at ? "; " : "", msg);
}

/* pgbench at this client count, on fresh tables; fills the rows from
   `first` on.  A missing pgbench is said once and skipped. */
static void measure_pgbench(bench_session *s, int clients, int first)
{
    char err[300];
    double tps = 0;
    if (s->pgbench_missing)
        return;
    progress("pgbench", "", clients);
    bench_pgbench_status st = BENCH_PGBENCH_FAILED;
    if (bench_setup(s->env->admin, s->env->cfg, err, sizeof err))
        st = bench_pgbench_run(s->env->cfg, s->env->conninfo, clients, &tps, err,
                               sizeof err);
    if (st == BENCH_PGBENCH_OK) {
        for (int i = first; i < s->n; i++)
            s->rs[i].pgbench_tps = tps;
        return;
    }
    s->pgbench_missing = st == BENCH_PGBENCH_MISSING;
    char msg[360];
    if (s->pgbench_missing)
        snprintf(msg, sizeof msg, "%s", err);
    else
        snprintf(msg, sizeof msg, "at %d clients: %s", clients, err);
    fprintf(stderr, "pgtx-race bench: --pgbench: %s%s\n", msg,
            s->pgbench_missing ? "" : "; see pgbench's messages above");
    note_pgbench(s, msg);
}

static bool run_all(bench_session *s, char *err, size_t errlen)
{
    const bench_config *cfg = s->env->cfg;
    for (int c = 0; c < cfg->nclients; c++) {
        int first = s->n;
        for (int i = 0; i < PGTX_STRATEGY_COUNT; i++) {
            pgtx_strategy st = RACE_STRATEGY_ORDER[i];
            for (int on = 0; on < 2 && cfg->strategies[st]; on++)
                if (cfg->combining[on] &&
                    !run_one(s, st, cfg->clients[c], on, err, errlen))
                    return false;
        }
        if (cfg->pgbench)
            measure_pgbench(s, cfg->clients[c], first);
    }
    return true;
}

static int strategy_count(const bench_config *cfg)
{
    int n = 0;
    for (int i = 0; i < PGTX_STRATEGY_COUNT; i++)
        n += cfg->strategies[i];
    return n;
}

/* Print what ran; the exit status says whether every safe strategy held. */
static int report(bench_session *s, char *server)
{
    const bench_config *cfg = s->env->cfg;
    if (cfg->pgbench && s->pgbench_note[0] == '\0')
        note_pgbench(s, cfg->scenario == BENCH_ORDER
                            ? "vs pgbench: ops/s over pgbench's tps for the atomic "
                              "strategy's SQL (BEGIN, one statement per round trip, "
                              "COMMIT; -M prepared, same clients, its own connections)"
                            : "vs pgbench: ops/s over pgbench's tps for the atomic "
                              "strategy's SQL (one autocommit statement, the "
                              "database's upper bound; -M prepared, same clients, "
                              "its own connections)");
    bench_summary sum = {cfg, s->rs, s->n, cfg->pgbench ? s->pgbench_note : NULL, server};
    if (cfg->json)
        bench_print_json(stdout, &sum);
    else
        bench_print_table(stdout, &sum);
    fflush(stdout);
    char err[512];
    int rc = bench_all_safe_correct(s->rs, s->n) ? RACE_EXIT_KEPT : RACE_EXIT_BROKEN;
    if (cfg->plot && !bench_write_plot(cfg->plot, &sum, err, sizeof err)) {
        fprintf(stderr, "pgtx-race bench: %s\n", err);
        rc = rc ? rc : RACE_EXIT_CANNOT_RUN;
    }
    for (int i = 0; i < s->n && rc == RACE_EXIT_BROKEN; i++)
        if (pgtx_strategy_is_safe(s->rs[i].strategy) && !s->rs[i].correct) {
            fprintf(stderr, "pgtx-race bench: %s with %d clients, combining %s, broke "
                            "an invariant: %s\n", pgtx_strategy_name(s->rs[i].strategy),
                    s->rs[i].clients, s->rs[i].combined ? "on" : "off", s->rs[i].detail);
            break;
        }
    return rc;
}

static int bench_with(const bench_config *cfg, const char *conninfo)
{
    char err[512] = "";
    bench_env env = {0};
    bench_session s = {.env = &env};
    int rc = RACE_EXIT_CANNOT_RUN;
    int modes = cfg->combining[false] + cfg->combining[true];
    s.rs = calloc((size_t)(strategy_count(cfg) * cfg->nclients * modes), sizeof *s.rs);
    if (s.rs == NULL)
        snprintf(err, sizeof err, "out of memory");
    else if (env_open(&env, cfg, conninfo, err, sizeof err) &&
             run_all(&s, err, sizeof err)) {
        char server[160];
        describe_server(env.admin, server, sizeof server);
        rc = report(&s, server);
    }
    if (err[0] != '\0')
        fprintf(stderr, "pgtx-race bench: %s\n", pgtx_one_line_(err));
    env_close(&env);
    free(s.rs);
    return rc;
}

int race_bench_main(int argc, char **argv)
{
    bench_config cfg;
    int rc = parse_args(&cfg, argc, argv);
    if (rc >= 0)
        return rc;
    race_database db;
    char err[512];
    if (!race_database_choose(cfg.database, cfg.data_dir, &db, err, sizeof err)) {
        fprintf(stderr, "pgtx-race bench: %s (see pgtx-race bench --help)\n", err);
        return RACE_EXIT_USAGE;
    }
    const char *conninfo = NULL;
    if (!race_database_open(&db, &conninfo, err, sizeof err)) {
        fprintf(stderr, "pgtx-race bench: %s\n", err);
        return RACE_EXIT_CANNOT_RUN;
    }
    return race_database_finish(bench_with(&cfg, conninfo));
}
