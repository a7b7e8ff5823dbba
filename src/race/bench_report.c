/* bench_report.c — the bench results as an aligned table, as JSON, and as an SVG plot. */
#include "bench.h"
#include "svg.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

/* ---- figures derived from a result --------------------------------------- */

int64_t bench_committed(const bench_result *r) { return r->outcomes[BENCH_OUT_COMMITTED]; }

int64_t bench_refused(const bench_result *r)
{
    int64_t n = 0;
    for (int k = BENCH_OUT_FIRST_REFUSAL; k < BENCH_OUT_FIRST_ERROR; k++)
        n += r->outcomes[k];
    return n;
}

int64_t bench_errors(const bench_result *r)
{
    int64_t n = 0;
    for (int k = BENCH_OUT_FIRST_ERROR; k < BENCH_OUTCOME_COUNT; k++)
        n += r->outcomes[k];
    return n;
}

/* A refusal is an answer too: once a coupon is gone, answering "exhausted"
   fast is the throughput that matters. */
double bench_ops_per_s(const bench_result *r)
{
    if (r->elapsed_s <= 0)
        return 0;
    return (double)(bench_committed(r) + bench_refused(r)) / r->elapsed_s;
}

double bench_batch_mean(const bench_result *r)
{
    return r->batches > 0 ? (double)r->batch_calls / (double)r->batches : 0;
}

/* The same strategy and clients with combining off, if it ran. */
static const bench_result *uncombined(const bench_result *rs, int n, const bench_result *r)
{
    for (int i = 0; i < n; i++)
        if (!rs[i].combined && rs[i].strategy == r->strategy && rs[i].clients == r->clients)
            return &rs[i];
    return NULL;
}

/* Combined ops/s over uncombined ops/s; 0 when there is no pair. */
static double vs_off(const bench_result *rs, int n, const bench_result *r)
{
    const bench_result *off = r->combined ? uncombined(rs, n, r) : NULL;
    double base = off ? bench_ops_per_s(off) : 0;
    return base > 0 ? bench_ops_per_s(r) / base : 0;
}

static double retries_per_op(const bench_result *r)
{
    return r->ops > 0 ? (double)r->retries / (double)r->ops : 0;
}

static double vs_pgbench(const bench_result *r)
{
    return r->pgbench_tps > 0 ? bench_ops_per_s(r) / r->pgbench_tps : 0;
}

static bool any_pgbench(const bench_result *rs, int n)
{
    for (int i = 0; i < n; i++)
        if (rs[i].pgbench_tps > 0)
            return true;
    return false;
}

/* Which failure counts to show even when zero: the refusals the scenario
   can produce, and retry_exhausted, whose zero is the point. */
static bool failure_shown(const bench_config *cfg, const bench_result *r, int k)
{
    if (r->outcomes[k] > 0 || k == BENCH_OUT_RETRY_EXHAUSTED)
        return true;
    if (cfg->scenario == BENCH_COUPON)
        return k == BENCH_OUT_COUPON_EXHAUSTED || k == BENCH_OUT_COUPON_ALREADY_CLAIMED;
    if (cfg->scenario == BENCH_ORDER)
        return k == BENCH_OUT_OUT_OF_STOCK || k == BENCH_OUT_INSUFFICIENT_FUNDS;
    return false;
}

/* ---- the table ------------------------------------------------------------ */

enum {
    COL_STRATEGY, COL_CLIENTS, COL_COMBINING, COL_CORRECT, COL_COMMITTED, COL_OPS,
    COL_VS_OFF, COL_BATCH, COL_RETRIES, COL_FAILURES, COL_P50, COL_P95, COL_P99,
    COL_VS, NCOLS
};

static const char *const HEADERS[NCOLS] = {
    "strategy", "clients", "combining", "correct?", "committed", "ops/s", "vs off",
    "batch mean/max", "retries/op", "failures", "p50 ms", "p95 ms", "p99 ms",
    "vs pgbench"};

/* Numbers align right, words left. */
static const bool RIGHT[NCOLS] = {false, true, false, false, true, true, true,
                                  true, true, false, true, true, true, true};

typedef struct row {
    char cell[NCOLS][240];
} row;

static void append(char *buf, size_t len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void append(char *buf, size_t len, const char *fmt, ...)
{
    size_t at = strlen(buf);
    if (at + 1 >= len)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf + at, len - at, fmt, ap);
    va_end(ap);
}

static void failures_cell(char *buf, size_t len, const bench_config *cfg,
                          const bench_result *r)
{
    buf[0] = '\0';
    for (int k = BENCH_OUT_FIRST_REFUSAL; k < BENCH_OUTCOME_COUNT; k++)
        if (failure_shown(cfg, r, k))
            append(buf, len, "%s%s %lld", buf[0] ? ", " : "", bench_outcome_name(k),
                   (long long)r->outcomes[k]);
}

static void latency_cell(char *buf, size_t len, const bench_result *r, double v)
{
    if (r->have_latency)
        snprintf(buf, len, "%.2f", v);
    else
        snprintf(buf, len, "-");
}

static void combining_cells(row *w, const bench_summary *s, const bench_result *r)
{
    size_t len = sizeof w->cell[0];
    double ratio = vs_off(s->rs, s->n, r);
    snprintf(w->cell[COL_COMBINING], len, "%s", r->combined ? "on" : "off");
    if (ratio > 0)
        snprintf(w->cell[COL_VS_OFF], len, "%.2f", ratio);
    else
        snprintf(w->cell[COL_VS_OFF], len, "-");
    if (r->combined)
        snprintf(w->cell[COL_BATCH], len, "%.1f/%lld", bench_batch_mean(r),
                 (long long)r->largest_batch);
    else
        snprintf(w->cell[COL_BATCH], len, "-");
}

static void fill_row(row *w, const bench_summary *s, const bench_result *r)
{
    const bench_config *cfg = s->cfg;
    size_t len = sizeof w->cell[0];
    snprintf(w->cell[COL_STRATEGY], len, "%s", pgtx_strategy_name(r->strategy));
    snprintf(w->cell[COL_CLIENTS], len, "%d", r->clients);
    snprintf(w->cell[COL_CORRECT], len, "%s", r->correct ? "yes" : "NO");
    snprintf(w->cell[COL_COMMITTED], len, "%lld", (long long)bench_committed(r));
    snprintf(w->cell[COL_OPS], len, "%.0f", bench_ops_per_s(r));
    combining_cells(w, s, r);
    snprintf(w->cell[COL_RETRIES], len, "%.2f", retries_per_op(r));
    failures_cell(w->cell[COL_FAILURES], len, cfg, r);
    latency_cell(w->cell[COL_P50], len, r, r->p50_ms);
    latency_cell(w->cell[COL_P95], len, r, r->p95_ms);
    latency_cell(w->cell[COL_P99], len, r, r->p99_ms);
    if (r->pgbench_tps > 0)
        snprintf(w->cell[COL_VS], len, "%.2f", vs_pgbench(r));
    else
        snprintf(w->cell[COL_VS], len, "-");
}

static void print_line(FILE *to, const char *const *cells, const int *width, int ncols)
{
    for (int c = 0; c < ncols; c++) {
        if (RIGHT[c])
            fprintf(to, "| %*s ", width[c], cells[c]);
        else
            fprintf(to, "| %-*s ", width[c], cells[c]);
    }
    fputs("|\n", to);
}

/* The markdown separator: right-aligned columns get their colon. */
static void print_rule(FILE *to, const int *width, int ncols)
{
    for (int c = 0; c < ncols; c++) {
        fputs("|", to);
        for (int i = 0; i < width[c] + 1; i++)
            fputc('-', to);
        fputc(RIGHT[c] ? ':' : '-', to);
    }
    fputs("|\n", to);
}

static void print_rows(FILE *to, const row *rows, int n, int ncols)
{
    int width[NCOLS];
    for (int c = 0; c < ncols; c++) {
        width[c] = (int)strlen(HEADERS[c]);
        for (int i = 0; i < n; i++)
            if ((int)strlen(rows[i].cell[c]) > width[c])
                width[c] = (int)strlen(rows[i].cell[c]);
    }
    print_line(to, HEADERS, width, ncols);
    print_rule(to, width, ncols);
    for (int i = 0; i < n; i++) {
        const char *cells[NCOLS];
        for (int c = 0; c < ncols; c++)
            cells[c] = rows[i].cell[c];
        print_line(to, cells, width, ncols);
    }
}

/* What the table cannot say in a cell: why a run is NO, and what failed. */
static void print_notes(FILE *to, const bench_result *rs, int n)
{
    for (int i = 0; i < n; i++) {
        const bench_result *r = &rs[i];
        char who[64];
        snprintf(who, sizeof who, "%s, %d clients, combining %s",
                 pgtx_strategy_name(r->strategy), r->clients, r->combined ? "on" : "off");
        if (!r->correct)
            fprintf(to, "- %s: NO: %s%s\n", who, r->detail,
                    pgtx_strategy_is_safe(r->strategy)
                        ? " (a safe strategy broke an invariant: this is a bug)"
                        : " (expected: naive is the unsafe read-modify-write)");
        if (r->error_sample[0])
            fprintf(to, "- %s: first error: %s\n", who, r->error_sample);
        if (r->hit_op_limit)
            fprintf(to, "- %s: stopped early when the latency buffer "
                        "filled (%lld operations)\n", who, (long long)r->ops);
    }
}

void bench_print_table(FILE *to, const bench_summary *s)
{
    const bench_config *cfg = s->cfg;
    const bench_result *rs = s->rs;
    int n = s->n;
    row *rows = calloc((size_t)(n > 0 ? n : 1), sizeof *rows);
    if (rows == NULL) {
        fprintf(stderr, "pgtx-race: out of memory printing the table\n");
        return;
    }
    for (int i = 0; i < n; i++)
        fill_row(&rows[i], s, &rs[i]);
    fprintf(to, "scenario %s, one pool of %d connections, %s; %s\n\n",
            bench_scenario_name(cfg->scenario), cfg->pool_size,
            cfg->ops > 0 ? "bounded by --ops" : "bounded by --duration", s->server);
    print_rows(to, rows, n, any_pgbench(rs, n) ? NCOLS : NCOLS - 1);
    free(rows);
    fputs("\nops/s counts answered operations (committed or refused by a business "
          "rule); latency is per operation, retries included.\n", to);
    if (cfg->combining[true])
        fprintf(to, "combining on: the clients' calls go through one pgtx_combiner "
                    "(max_batch %d): one batch per hot row in flight, each batch ONE "
                    "transaction with a savepoint per call (atomic: one summed UPDATE "
                    "first, where the scenario has one); vs off = ops/s over the same "
                    "run with combining off; batch mean/max = calls per transaction.\n",
                BENCH_MAX_BATCH);
    if (s->pgbench_note)
        fprintf(to, "%s\n", s->pgbench_note);
    print_notes(to, rs, n);
}

/* ---- JSON ----------------------------------------------------------------- */

static void json_str(FILE *to, const char *s)
{
    fputc('"', to);
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            fprintf(to, "\\%c", ch);
        else if (ch < 0x20)
            fprintf(to, "\\u%04x", ch);
        else
            fputc(ch, to);
    }
    fputc('"', to);
}

/* JSON has no NaN: anything not finite is null. */
static void json_num(FILE *to, double v, int decimals)
{
    if (isfinite(v))
        fprintf(to, "%.*f", decimals, v);
    else
        fputs("null", to);
}

static void json_failures(FILE *to, const bench_config *cfg, const bench_result *r)
{
    fputs("{", to);
    bool first = true;
    for (int k = BENCH_OUT_FIRST_REFUSAL; k < BENCH_OUTCOME_COUNT; k++) {
        if (!failure_shown(cfg, r, k))
            continue;
        fprintf(to, "%s\"%s\": %lld", first ? "" : ", ", bench_outcome_name(k),
                (long long)r->outcomes[k]);
        first = false;
    }
    fputs("}", to);
}

static void json_latency(FILE *to, const bench_result *r)
{
    if (!r->have_latency) {
        fputs("null", to);
        return;
    }
    fprintf(to, "{\"p50\": %.3f, \"p95\": %.3f, \"p99\": %.3f, \"mean\": %.3f, "
                "\"max\": %.3f}", r->p50_ms, r->p95_ms, r->p99_ms, r->mean_ms, r->max_ms);
}

static void json_combining(FILE *to, const bench_summary *s, const bench_result *r)
{
    fprintf(to, ", \"combining\": \"%s\",\n     \"batches\": %lld, \"batch_mean\": ",
            r->combined ? "on" : "off", (long long)r->batches);
    json_num(to, r->combined ? bench_batch_mean(r) : NAN, 2);
    fputs(", \"largest_batch\": ", to);
    if (r->combined)
        fprintf(to, "%lld", (long long)r->largest_batch);
    else
        fputs("null", to);
    double ratio = vs_off(s->rs, s->n, r);
    fputs(", \"vs_off\": ", to);
    json_num(to, ratio > 0 ? ratio : NAN, 3);
}

static void json_run(FILE *to, const bench_summary *s, const bench_result *r)
{
    const bench_config *cfg = s->cfg;
    fputs("    {\"strategy\": ", to);
    json_str(to, pgtx_strategy_name(r->strategy));
    fprintf(to, ", \"safe\": %s, \"clients\": %d",
            pgtx_strategy_is_safe(r->strategy) ? "true" : "false", r->clients);
    json_combining(to, s, r);
    fprintf(to, ",\n     \"correct\": %s, \"detail\": ", r->correct ? "true" : "false");
    json_str(to, r->detail);
    fprintf(to, ",\n     \"final\": %lld, \"committed\": %lld, \"refused\": %lld, "
                "\"errors\": %lld, \"ops\": %lld, \"elapsed_s\": %.3f, \"ops_per_s\": ",
            (long long)r->final, (long long)bench_committed(r),
            (long long)bench_refused(r), (long long)bench_errors(r),
            (long long)r->ops, r->elapsed_s);
    json_num(to, bench_ops_per_s(r), 1);
    fprintf(to, ", \"retries\": %lld, \"retries_per_op\": %.4f,\n     \"failures\": ",
            (long long)r->retries, retries_per_op(r));
    json_failures(to, cfg, r);
    fputs(", \"latency_ms\": ", to);
    json_latency(to, r);
    fprintf(to, ",\n     \"connections_created\": %lld, \"max_backends\": %d, "
                "\"hit_op_limit\": %s, \"error_sample\": ",
            (long long)r->connections_created, r->max_backends,
            r->hit_op_limit ? "true" : "false");
    if (r->error_sample[0])
        json_str(to, r->error_sample);
    else
        fputs("null", to);
    fputs(", \"pgbench_tps\": ", to);
    json_num(to, r->pgbench_tps > 0 ? r->pgbench_tps : NAN, 1);
    fputs(", \"vs_pgbench\": ", to);
    json_num(to, r->pgbench_tps > 0 ? vs_pgbench(r) : NAN, 3);
    fputs("}", to);
}

bool bench_all_safe_correct(const bench_result *rs, int n)
{
    for (int i = 0; i < n; i++)
        if (pgtx_strategy_is_safe(rs[i].strategy) && !rs[i].correct)
            return false;
    return true;
}

void bench_print_json(FILE *to, const bench_summary *s)
{
    const bench_config *cfg = s->cfg;
    fputs("{\"scenario\": ", to);
    json_str(to, bench_scenario_name(cfg->scenario));
    fprintf(to, ", \"pool_size\": %d, \"duration_s\": %.3f, \"ops\": ",
            cfg->pool_size, cfg->duration_s);
    if (cfg->ops > 0)
        fprintf(to, "%lld", (long long)cfg->ops);
    else
        fputs("null", to);
    fprintf(to, ", \"combining\": \"%s\", \"max_batch\": %d",
            cfg->combining[false] && cfg->combining[true] ? "both"
            : cfg->combining[true]                        ? "on" : "off",
            BENCH_MAX_BATCH);
    fprintf(to, ", \"quantity\": %lld, \"stock\": %lld,\n \"pgbench\": %s, "
                "\"pgbench_note\": ",
            (long long)cfg->quantity, (long long)cfg->stock,
            cfg->pgbench ? "true" : "false");
    if (s->pgbench_note)
        json_str(to, s->pgbench_note);
    else
        fputs("null", to);
    fputs(", \"server\": ", to);
    json_str(to, s->server);
    fprintf(to, ", \"all_safe_correct\": %s,\n \"runs\": [\n",
            bench_all_safe_correct(s->rs, s->n) ? "true" : "false");
    for (int i = 0; i < s->n; i++) {
        json_run(to, s, &s->rs[i]);
        fputs(i + 1 < s->n ? ",\n" : "\n", to);
    }
    fputs(" ]}\n", to);
}

/* ---- the plot ------------------------------------------------------------- */

static const char *const COLORS[PGTX_STRATEGY_COUNT] = {
    [PGTX_STRATEGY_NAIVE] = "#d62728",      [PGTX_STRATEGY_ATOMIC] = "#1f77b4",
    [PGTX_STRATEGY_LOCK] = "#2ca02c",       [PGTX_STRATEGY_OPTIMISTIC] = "#ff7f0e",
    [PGTX_STRATEGY_SERIALIZABLE] = "#9467bd"};

/* One strategy's points, in increasing clients. */
typedef struct points {
    int n;
    double x[BENCH_MAX_CLIENT_COUNTS];
    double ops[BENCH_MAX_CLIENT_COUNTS];
    double p99[BENCH_MAX_CLIENT_COUNTS];
    bool bad[BENCH_MAX_CLIENT_COUNTS];
} points;

static void add_point(points *p, double x, double ops, double p99, bool bad)
{
    if (p->n >= BENCH_MAX_CLIENT_COUNTS)
        return;
    int i = p->n++;
    for (; i > 0 && p->x[i - 1] > x; i--) {
        p->x[i] = p->x[i - 1];
        p->ops[i] = p->ops[i - 1];
        p->p99[i] = p->p99[i - 1];
        p->bad[i] = p->bad[i - 1];
    }
    p->x[i] = x;
    p->ops[i] = ops;
    p->p99[i] = p99;
    p->bad[i] = bad;
}

/* pgbench ran once per client count, so take it from the first row of each. */
static void collect_pgbench(points *pg, const bench_result *rs, int n)
{
    for (int i = 0; i < n; i++) {
        bool seen = false;
        for (int k = 0; k < pg->n; k++)
            seen |= pg->x[k] == rs[i].clients;
        if (!seen && rs[i].pgbench_tps > 0)
            add_point(pg, rs[i].clients, rs[i].pgbench_tps, 0, false);
    }
}

static svg_series series_of(const points *p, const char *name, const char *color,
                            bool p99)
{
    return (svg_series){.name = name, .color = color, .n = p->n, .x = p->x,
                        .y = p99 ? p->p99 : p->ops, .invalid = p->bad};
}

/* Every run's point, by [combined][strategy]. */
typedef struct plot_points {
    points by[2][PGTX_STRATEGY_COUNT];
} plot_points;

/* Combined runs are drawn in their strategy's color, dashed. */
static bool write_svg(FILE *f, const bench_config *cfg, const plot_points *pp,
                      const points *pg)
{
    svg_series tput[2 * PGTX_STRATEGY_COUNT + 1], p99[2 * PGTX_STRATEGY_COUNT];
    char names[PGTX_STRATEGY_COUNT][48];
    int n = 0;
    for (int i = 0; i < PGTX_STRATEGY_COUNT; i++) {
        pgtx_strategy s = RACE_STRATEGY_ORDER[i]; /* the legend's order */
        snprintf(names[i], sizeof names[i], "%s, combining on", pgtx_strategy_name(s));
        for (int on = 0; on < 2; on++) {
            const points *pts = &pp->by[on][s];
            if (pts->n == 0)
                continue;
            const char *name = on ? names[i] : pgtx_strategy_name(s);
            tput[n] = series_of(pts, name, COLORS[s], false);
            p99[n] = series_of(pts, name, COLORS[s], true);
            tput[n].dashed = p99[n].dashed = on;
            n++;
        }
    }
    int nt = n;
    if (pg->n > 0) {
        tput[nt] = series_of(pg, "pgbench, atomic SQL", "#7f7f7f", false);
        tput[nt++].dashed = true;
    }
    svg_chart charts[2] = {
        {"Throughput", "clients", "answered operations per second", true, tput, nt},
        {"p99 latency", "clients", "p99 latency (ms)", true, p99, n}};
    char title[160];
    snprintf(title, sizeof title, "pgtx-race bench: %s, one pool of %d connections",
             bench_scenario_name(cfg->scenario), cfg->pool_size);
    return svg_write(f, title, charts, 2,
                     "x: clients (log scale). A cross marks a run whose invariants "
                     "did not hold: not a valid figure.");
}

bool bench_write_plot(const char *path, const bench_summary *s, char *err,
                      size_t errlen)
{
    const bench_result *rs = s->rs;
    int n = s->n;
    plot_points pts;
    points pg = {0};
    memset(&pts, 0, sizeof pts);
    for (int i = 0; i < n; i++)
        add_point(&pts.by[rs[i].combined][rs[i].strategy], rs[i].clients,
                  bench_ops_per_s(&rs[i]), rs[i].p99_ms, !rs[i].correct);
    collect_pgbench(&pg, rs, n);
    FILE *f = fopen(path, "w");
    if (f == NULL) {
        snprintf(err, errlen, "--plot %s: %s", path, strerror(errno));
        return false;
    }
    bool ok = write_svg(f, s->cfg, &pts, &pg);
    if (fclose(f) != 0)
        ok = false;
    if (!ok)
        snprintf(err, errlen, "--plot %s: write failed", path);
    return ok;
}
