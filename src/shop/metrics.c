/* metrics.c — pgtx-shop's counters and their Prometheus text rendering
   (format 0.0.4), with the pool's statistics read at scrape time. */
#include "server.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Prometheus' default buckets, in seconds. */
static const double bucket_bounds[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                       0.5,   1,    2.5,   5,    10};
#define BUCKETS (sizeof bucket_bounds / sizeof bucket_bounds[0])

/* Requests of one route: counts per status and a latency histogram. */
typedef struct status_count {
    int status;
    uint64_t n;
} status_count;

typedef struct route_stats {
    char *route; /* owned copy of the label */
    status_count *statuses; /* owned, nstatuses used */
    size_t nstatuses;
    uint64_t buckets[BUCKETS]; /* not cumulative; summed when rendered */
    uint64_t count;
    double sum_s;
} route_stats;

typedef struct tx_stats {
    _Atomic uint64_t committed, failed, retries;
} tx_stats;

struct shop_metrics {
    pthread_mutex_t mu; /* guards routes */
    route_stats *routes; /* owned, nroutes used, cap allocated */
    size_t nroutes, cap;
    tx_stats tx[PGTX_STRATEGY_COUNT]; /* atomics: the hot path takes no lock */
    _Atomic uint64_t auth_lookups, auth_cached; /* account tokens checked */
    _Atomic uint64_t reads[SHOP_READ_OUTCOMES]; /* GETs with standbys */
    /* connections opened per second, between two scrapes at least a
       second apart (guarded by mu) */
    uint64_t opened_seen;
    int64_t opened_seen_ms;
    double opened_per_second;
};

shop_metrics *shop_metrics_create(void)
{
    shop_metrics *m = calloc(1, sizeof *m);
    if (m == NULL)
        return NULL;
    if (pthread_mutex_init(&m->mu, NULL) != 0) {
        free(m);
        return NULL;
    }
    return m;
}

void shop_metrics_destroy(shop_metrics *m)
{
    if (m == NULL)
        return;
    for (size_t i = 0; i < m->nroutes; i++) {
        free(m->routes[i].route);
        free(m->routes[i].statuses);
    }
    free(m->routes);
    pthread_mutex_destroy(&m->mu);
    free(m);
}

void shop_metrics_tx(shop_metrics *m, pgtx_strategy s, shop_tx_outcome o,
                     int retries)
{
    if (m == NULL || (int)s < 0 || s >= PGTX_STRATEGY_COUNT)
        return;
    tx_stats *t = &m->tx[s];
    atomic_fetch_add(o == SHOP_TX_COMMITTED ? &t->committed : &t->failed, 1);
    if (retries > 0)
        atomic_fetch_add(&t->retries, (uint64_t)retries);
}

void shop_metrics_auth_lookup(shop_metrics *m, bool cached)
{
    if (m != NULL)
        atomic_fetch_add(cached ? &m->auth_cached : &m->auth_lookups, 1);
}

void shop_metrics_read(shop_metrics *m, shop_read_outcome o)
{
    if (m != NULL && (unsigned)o < SHOP_READ_OUTCOMES)
        atomic_fetch_add(&m->reads[o], 1);
}

/* ---- requests ---------------------------------------------------------- */

/* The route's entry, added on first sight; NULL when out of memory. */
static route_stats *route_find(shop_metrics *m, const char *route)
{
    for (size_t i = 0; i < m->nroutes; i++)
        if (strcmp(m->routes[i].route, route) == 0)
            return &m->routes[i];
    if (m->nroutes == m->cap) {
        size_t cap = m->cap ? 2 * m->cap : 16;
        route_stats *grown = realloc(m->routes, cap * sizeof *grown);
        if (grown == NULL)
            return NULL;
        m->routes = grown;
        m->cap = cap;
    }
    char *copy = strdup(route);
    if (copy == NULL)
        return NULL;
    route_stats *r = &m->routes[m->nroutes++];
    *r = (route_stats){.route = copy};
    return r;
}

static void status_add(route_stats *r, int status)
{
    for (size_t i = 0; i < r->nstatuses; i++)
        if (r->statuses[i].status == status) {
            r->statuses[i].n++;
            return;
        }
    status_count *grown =
        realloc(r->statuses, (r->nstatuses + 1) * sizeof *grown);
    if (grown == NULL)
        return; /* a lost sample beats a dead server */
    r->statuses = grown;
    r->statuses[r->nstatuses++] = (status_count){status, 1};
}

void shop_metrics_request(shop_metrics *m, const char *route, int status,
                          double seconds)
{
    if (m == NULL)
        return;
    pthread_mutex_lock(&m->mu);
    route_stats *r = route_find(m, route ? route : "unknown");
    if (r) {
        status_add(r, status);
        size_t b = 0;
        while (b < BUCKETS && seconds > bucket_bounds[b])
            b++;
        if (b < BUCKETS)
            r->buckets[b]++;
        r->count++;
        r->sum_s += seconds;
    }
    pthread_mutex_unlock(&m->mu);
}

/* ---- rendering ----------------------------------------------------------- */

/* A label value with \, " and newline escaped, as the format requires. */
static void put_label(FILE *f, const char *s)
{
    for (; *s; s++) {
        if (*s == '\\' || *s == '"')
            fputc('\\', f);
        if (*s == '\n') {
            fputs("\\n", f);
            continue;
        }
        fputc(*s, f);
    }
}

static void header(FILE *f, const char *name, const char *type,
                   const char *help)
{
    fprintf(f, "# HELP pgtx_shop_%s %s\n# TYPE pgtx_shop_%s %s\n", name, help,
            name, type);
}

static void render_requests(FILE *f, const shop_metrics *m)
{
    header(f, "http_requests_total", "counter",
           "HTTP requests answered, by route and status.");
    for (size_t i = 0; i < m->nroutes; i++)
        for (size_t j = 0; j < m->routes[i].nstatuses; j++) {
            fputs("pgtx_shop_http_requests_total{route=\"", f);
            put_label(f, m->routes[i].route);
            fprintf(f, "\",status=\"%d\"} %llu\n", m->routes[i].statuses[j].status,
                    (unsigned long long)m->routes[i].statuses[j].n);
        }
}

/* Opens one histogram line: name, suffix and route label, up to the
   place where `le` or the closing brace goes. */
static void histogram_line(FILE *f, const char *suffix, const char *route)
{
    fprintf(f, "pgtx_shop_http_request_duration_seconds%s{route=\"", suffix);
    put_label(f, route);
    fputc('"', f);
}

static void render_histogram(FILE *f, const route_stats *r)
{
    uint64_t cumulative = 0;
    for (size_t b = 0; b < BUCKETS; b++) {
        cumulative += r->buckets[b];
        histogram_line(f, "_bucket", r->route);
        fprintf(f, ",le=\"%g\"} %llu\n", bucket_bounds[b],
                (unsigned long long)cumulative);
    }
    histogram_line(f, "_bucket", r->route);
    fprintf(f, ",le=\"+Inf\"} %llu\n", (unsigned long long)r->count);
    histogram_line(f, "_sum", r->route);
    fprintf(f, "} %.6f\n", r->sum_s);
    histogram_line(f, "_count", r->route);
    fprintf(f, "} %llu\n", (unsigned long long)r->count);
}

static void render_latency(FILE *f, const shop_metrics *m)
{
    header(f, "http_request_duration_seconds", "histogram",
           "Time from a request's headers to its completion, by route.");
    for (size_t i = 0; i < m->nroutes; i++)
        render_histogram(f, &m->routes[i]);
}

static void render_tx(FILE *f, shop_metrics *m)
{
    header(f, "transactions_total", "counter",
           "Transactions run by handlers, by strategy and outcome.");
    for (int s = 0; s < PGTX_STRATEGY_COUNT; s++) {
        const char *name = pgtx_strategy_name((pgtx_strategy)s);
        fprintf(f, "pgtx_shop_transactions_total{strategy=\"%s\",outcome=\"committed\"} %llu\n",
                name, (unsigned long long)atomic_load(&m->tx[s].committed));
        fprintf(f, "pgtx_shop_transactions_total{strategy=\"%s\",outcome=\"failed\"} %llu\n",
                name, (unsigned long long)atomic_load(&m->tx[s].failed));
    }
    header(f, "transaction_retries_total", "counter",
           "Transaction attempts beyond the first, by strategy.");
    for (int s = 0; s < PGTX_STRATEGY_COUNT; s++)
        fprintf(f, "pgtx_shop_transaction_retries_total{strategy=\"%s\"} %llu\n",
                pgtx_strategy_name((pgtx_strategy)s),
                (unsigned long long)atomic_load(&m->tx[s].retries));
}

static void gauge(FILE *f, const char *name, const char *help, long long v)
{
    header(f, name, "gauge", help);
    fprintf(f, "pgtx_shop_%s %lld\n", name, v);
}

static void counter(FILE *f, const char *name, const char *help, uint64_t v)
{
    header(f, name, "counter", help);
    fprintf(f, "pgtx_shop_%s %llu\n", name, (unsigned long long)v);
}

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Churn made visible: how fast connections were opened since the scrape
   before (a pool that closes and reopens its overflow shows here). */
static double opened_rate(shop_metrics *m, uint64_t created)
{
    int64_t now = mono_ms();
    pthread_mutex_lock(&m->mu);
    if (m->opened_seen_ms == 0) {
        m->opened_seen = created;
        m->opened_seen_ms = now;
    } else if (now - m->opened_seen_ms >= 1000) {
        m->opened_per_second = (double)(created - m->opened_seen) * 1000.0 /
                               (double)(now - m->opened_seen_ms);
        m->opened_seen = created;
        m->opened_seen_ms = now;
    }
    double rate = m->opened_per_second;
    pthread_mutex_unlock(&m->mu);
    return rate;
}

static void render_pool_gauges(FILE *f, const pgtx_pool_stats *s)
{
    gauge(f, "pool_connections_open", "Connections open or being opened.", s->open);
    gauge(f, "pool_connections_idle", "Connections idle in the pool.", s->idle);
    gauge(f, "pool_connections_in_use", "Connections borrowed.", s->in_use);
    gauge(f, "pool_connections_overflow", "Connections open beyond pool-size.",
          s->overflow);
    gauge(f, "pool_waiting", "Threads waiting for a connection now.", s->waiting);
}

static void render_pool_counters(FILE *f, const pgtx_pool_stats *s)
{
    counter(f, "pool_checkouts_total", "Successful checkouts.", s->checkouts);
    counter(f, "pool_waits_total", "Checkouts that had to wait.", s->waits);
    header(f, "pool_wait_seconds_total", "counter",
           "Time spent waiting for a connection.");
    fprintf(f, "pgtx_shop_pool_wait_seconds_total %.6f\n", (double)s->wait_us / 1e6);
    counter(f, "pool_timeouts_total", "Checkouts that gave up (503 overloaded).",
            s->timeouts);
    counter(f, "pool_connections_created_total", "Connections opened.", s->created);
    counter(f, "pool_connect_errors_total", "Failed attempts to connect.",
            s->connect_errors);
    counter(f, "pool_connections_discarded_total",
            "Connections closed: broken, expired or overflow.", s->discarded);
    counter(f, "pool_round_trips_total", "Round trips made by libpgtx itself.",
            s->round_trips);
    counter(f, "pool_connections_idle_closed_total",
            "Overflow connections closed after --idle-timeout-ms unused.",
            s->idle_closed);
    counter(f, "pool_statements_prepared_total",
            "Statements prepared (first use on a connection, or again).",
            s->stmt_prepares);
    counter(f, "pool_statement_cache_hits_total",
            "Executions of a statement already prepared on its connection.",
            s->stmt_hits);
    counter(f, "pool_statement_cache_evictions_total",
            "Prepared statements dropped to make room.", s->stmt_evictions);
}

static void render_reads(FILE *f, shop_metrics *m)
{
    header(f, "reads_total", "counter",
           "GETs with --read-database: served by a standby, or by the primary "
           "because the standby had not replayed the client's Pgtx-Commit-LSN "
           "(behind), could not be had (unavailable) or did not have the row "
           "(not_on_standby: the primary says whether it exists).");
    fprintf(f, "pgtx_shop_reads_total{served_by=\"standby\"} %llu\n"
               "pgtx_shop_reads_total{served_by=\"primary\",reason=\"behind\"} %llu\n"
               "pgtx_shop_reads_total{served_by=\"primary\",reason=\"unavailable\"} %llu\n"
               "pgtx_shop_reads_total{served_by=\"primary\",reason=\"not_on_standby\"} %llu\n",
            (unsigned long long)atomic_load(&m->reads[SHOP_READ_STANDBY]),
            (unsigned long long)atomic_load(&m->reads[SHOP_READ_BEHIND]),
            (unsigned long long)atomic_load(&m->reads[SHOP_READ_UNAVAILABLE]),
            (unsigned long long)atomic_load(&m->reads[SHOP_READ_MISSING]));
}

static void render_runner(FILE *f, const pgtx_pool_stats *s)
{
    counter(f, "pool_commits_total", "Transactions committed.", s->commits);
    counter(f, "pool_rollbacks_total", "Transactions rolled back.", s->rollbacks);
    header(f, "pool_retries_total", "counter", "Transaction retries, by cause.");
    fprintf(f, "pgtx_shop_pool_retries_total{reason=\"serialization\"} %llu\n"
               "pgtx_shop_pool_retries_total{reason=\"deadlock\"} %llu\n"
               "pgtx_shop_pool_retries_total{reason=\"stale\"} %llu\n"
               "pgtx_shop_pool_retries_total{reason=\"connection\"} %llu\n"
               "pgtx_shop_pool_retries_total{reason=\"prepared_stale\"} %llu\n"
               "pgtx_shop_pool_retries_total{reason=\"lock_not_available\"} %llu\n"
               "pgtx_shop_pool_retries_total{reason=\"read_only_node\"} %llu\n",
            (unsigned long long)s->retries_serialization,
            (unsigned long long)s->retries_deadlock,
            (unsigned long long)s->retries_stale,
            (unsigned long long)s->retries_connection,
            (unsigned long long)s->retries_prepared,
            (unsigned long long)s->retries_lock_not_available,
            (unsigned long long)s->retries_read_only);
    counter(f, "pool_read_only_closed_total",
            "Connections closed because their server was a standby (after a "
            "failover).", s->read_only_closed);
    counter(f, "pool_commit_unknown_total",
            "Connections lost during COMMIT (outcome unknown).", s->commit_unknown);
    counter(f, "pool_socket_timeouts_total",
            "Connections closed after no answer within --db-timeout-ms.",
            s->socket_timeouts);
}

/* Combined writes: a histogram of the requests each turn of a row's lane
   took (deposits of one account, orders of one product, claims of one
   coupon); under atomic one transaction, else transactions of at most 8. */
static void render_batches(FILE *f, const shop_http_gauges *g)
{
    header(f, "http_batch_size", "histogram",
           "Requests a worker took together from one row's lane (1: alone; "
           "see --batch-limit and Pgtx-Batch).");
    long long count = 0;
    for (int i = 0; i < SHOP_BATCH_BUCKETS; i++) {
        count += g->batches[i];
        fprintf(f, "pgtx_shop_http_batch_size_bucket{le=\"%d\"} %lld\n", 1 << i, count);
    }
    fprintf(f, "pgtx_shop_http_batch_size_bucket{le=\"+Inf\"} %lld\n"
               "pgtx_shop_http_batch_size_sum %lld\n"
               "pgtx_shop_http_batch_size_count %lld\n",
            count, g->batch_calls, count);
    gauge(f, "http_batch_largest", "The most requests one turn of a row's lane took.",
          g->batch_largest);
}

static void render_http(FILE *f, const shop_http_gauges *g)
{
    gauge(f, "http_queue_depth", "Requests waiting for a worker.", g->queue_depth);
    gauge(f, "http_queue_capacity", "Requests that may wait before 503.",
          g->queue_capacity);
    gauge(f, "http_workers_busy", "Worker threads running a request.",
          g->workers_busy);
    gauge(f, "http_workers", "Worker threads.", g->workers);
    gauge(f, "http_connections", "Client connections open.", g->connections_open);
    gauge(f, "http_connections_max", "Client connections allowed (--max-connections).",
          g->connections_max);
    counter(f, "http_connections_refused_total",
            "Connections closed at accept: the address held --max-connections-per-ip.",
            (uint64_t)g->refused_per_ip);
    counter(f, "http_connections_header_timeouts_total",
            "Connections closed: request line and headers not in within "
            "--header-timeout-ms.",
            (uint64_t)g->closed_header_timeout);
    counter(f, "http_connections_evicted_total",
            "Idle or header-reading connections closed to make room near "
            "--max-connections.",
            (uint64_t)g->evicted);
    gauge(f, "http_row_waiting",
          "Requests waiting, without a worker, for a row that as many requests "
          "as it may have in flight are changing.", g->row_waiting);
    counter(f, "http_row_waits_total",
            "Requests that waited for their row's turn before a worker took them.",
            (uint64_t)g->row_waits);
    counter(f, "http_row_wait_expired_total",
            "Requests answered 503 row_busy while waiting for their row's turn: "
            "after --lock-timeout-ms, or when one ahead found the row locked.",
            (uint64_t)g->row_wait_expired);
    render_batches(f, g);
}

char *shop_metrics_render(shop_metrics *m, pgtx_pool *pool,
                          const shop_http_gauges *g, size_t *len)
{
    char *text = NULL;
    FILE *f = open_memstream(&text, len);
    if (f == NULL)
        return NULL;
    pthread_mutex_lock(&m->mu);
    render_requests(f, m);
    render_latency(f, m);
    pthread_mutex_unlock(&m->mu);
    render_tx(f, m);
    counter(f, "auth_lookups_total",
            "Account tokens looked up in the database.",
            atomic_load(&m->auth_lookups));
    counter(f, "auth_cache_hits_total",
            "Account tokens checked against a recent lookup instead.",
            atomic_load(&m->auth_cached));
    render_reads(f, m);
    if (pool) {
        pgtx_pool_stats s;
        pgtx_pool_stats_get(pool, &s);
        render_pool_gauges(f, &s);
        header(f, "pool_connections_opened_per_second", "gauge",
               "Connections opened per second since the scrape before.");
        fprintf(f, "pgtx_shop_pool_connections_opened_per_second %.3f\n",
                opened_rate(m, s.created));
        render_pool_counters(f, &s);
        render_runner(f, &s);
    }
    if (g)
        render_http(f, g);
    bool failed = ferror(f) != 0;
    if (fclose(f) != 0 || failed) {
        free(text);
        return NULL;
    }
    return text;
}
