/* http_load.c — a closed-loop, keep-alive HTTP/1.1 load client for
 * pgtx-shop, so that the service can be measured against pgbench running
 * the same SQL (bench/shop_bench.py drives both).
 *
 *   http-load --port N --scenario orders|hot-order|deposits|claims
 *             [--host 127.0.0.1] [--clients 32] [--duration 10] [--warmup 1]
 *             [--token T] [--strategy S] [--max-requests N] [--timeout 30]
 *             [--accounts FIRST:COUNT] [--products FIRST:COUNT]
 *             [--product ID] [--account ID] [--coupon ID]
 *
 * Closed loop: each client is one thread on one connection that sends a
 * request, waits for the whole answer, then sends the next, so the offered
 * load is what the server can take and latency is not queued in the client.
 * Only requests that finish after --warmup and before its end are counted.
 * Prints one JSON line on stdout: the counts and latencies of that window,
 * and all_ok / all_errors / all_5xx over the whole run, which is what a
 * check of "every 2xx is in the database exactly once" needs.  When the
 * service combines writes, each answer's Pgtx-Batch header (how many calls
 * shared its transaction) is summed over the window: batch_answers (answers
 * that carried it), batch_mean (its mean over them), batch_tx_mean (calls per
 * transaction: answers over the transactions they imply) and batch_max; all
 * 0 when no answer carried it.  Exit status 0 when the run completed
 * (whatever the HTTP statuses), 2 on a bad option, 1 on a system failure.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define MAX_CLIENTS 1024
#define MAX_DURATION_S 3600.0
#define MAX_WARMUP_S 600.0
#define DEFAULT_MAX_REQUESTS 10000000L
#define RESP_BUF 16384   /* one header line must fit; bodies are streamed */
#define REQ_BUF 2048
#define STATUS_MAX 600   /* by_status index: 100..599 */
#define RECONNECT_PAUSE_NS 10000000L /* 10 ms: a refused connect must not spin */

typedef enum scenario { SC_ORDERS, SC_HOT_ORDER, SC_DEPOSITS, SC_CLAIMS } scenario;

static const char *const SCENARIO_NAMES[] = {"orders", "hot-order", "deposits", "claims"};

typedef struct id_range {
    int64_t first, count;
} id_range;

typedef struct options {
    const char *host;
    int port;
    int clients;
    double duration, warmup, timeout;
    const char *token;
    const char *strategy; /* Pgtx-Strategy header, or NULL for the default */
    scenario sc;
    bool sc_set;
    id_range accounts, products;
    int64_t product, account, coupon;
    long max_requests;
} options;

/* What every client reads, and the few counters they share. */
typedef struct shared {
    const options *opt;
    struct sockaddr_in addr;
    double t_warm, t_end; /* CLOCK_MONOTONIC seconds */
    atomic_long issued;   /* requests started: the hard cap */
    atomic_long claimed;  /* claims accounts handed out, in order */
    atomic_bool stop;     /* set when the run has to end early */
} shared;

/* One client: its connection, its read buffer and its own statistics, so
   the hot path shares nothing but two atomic counters. */
typedef struct worker {
    shared *sh;
    pthread_t thread;
    uint64_t rng;
    int fd;
    char buf[RESP_BUF];
    size_t off, len; /* unread bytes are buf[off, len) */
    long by_status[STATUS_MAX];
    long requests, errors;
    /* over the whole run, warm-up and stragglers included: what the harness
       checks against the rows in the database */
    long all_ok, all_errors, all_5xx;
    /* Pgtx-Batch over the window; batch_tx sums 1/k: a batch of k calls
       answers k times, so the sum counts it once */
    long batch_n, batch_sum, batch_max;
    double batch_tx;
    uint32_t *lat_us;
    size_t nlat, cap;
    bool oom;
} worker;

/* ---- small helpers --------------------------------------------------------- */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void usage(FILE *f)
{
    fputs("usage: http-load --port N --scenario orders|hot-order|deposits|claims\n"
          "  [--host 127.0.0.1] [--clients 32] [--duration 10] [--warmup 1]\n"
          "  [--token T (else $PGTX_ADMIN_TOKEN)] [--strategy S] [--max-requests N]\n"
          "  [--timeout 30] [--accounts FIRST:COUNT] [--products FIRST:COUNT]\n"
          "  [--product ID] [--account ID] [--coupon ID]\n"
          "orders: random account and product of the ranges; hot-order: random\n"
          "account, one --product; deposits: one --account; claims: one --coupon,\n"
          "each request the next account of --accounts (stops when used up).\n",
          f);
}

static _Noreturn void bad_option(const char *opt, const char *why)
{
    fprintf(stderr, "http-load: %s: %s\n", opt, why);
    usage(stderr);
    exit(2);
}

/* xorshift64*: per-thread, no locking, and good enough to spread ids. */
static uint64_t rng_next(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * UINT64_C(2685821657736338717);
}

static int64_t pick(uint64_t *s, id_range r)
{
    return r.first + (int64_t)(rng_next(s) % (uint64_t)r.count);
}

/* ---- options --------------------------------------------------------------- */

static double parse_double(const char *opt, const char *s, double lo, double hi)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end != '\0' || !(v >= lo && v <= hi)) {
        char why[96];
        snprintf(why, sizeof why, "want a number in [%g, %g]", lo, hi);
        bad_option(opt, why);
    }
    return v;
}

static int64_t parse_int(const char *opt, const char *s, int64_t lo, int64_t hi)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end != '\0' || v < lo || v > hi) {
        char why[96];
        snprintf(why, sizeof why, "want an integer in [%" PRId64 ", %" PRId64 "]", lo, hi);
        bad_option(opt, why);
    }
    return (int64_t)v;
}

/* FIRST:COUNT, both positive: ids are bigserial, they start at 1. */
static id_range parse_range(const char *opt, const char *s)
{
    const char *colon = strchr(s, ':');
    if (colon == NULL)
        bad_option(opt, "want FIRST:COUNT");
    char first[32];
    size_t n = (size_t)(colon - s);
    if (n == 0 || n >= sizeof first)
        bad_option(opt, "want FIRST:COUNT");
    memcpy(first, s, n);
    first[n] = '\0';
    id_range r = {parse_int(opt, first, 1, INT64_MAX / 2),
                  parse_int(opt, colon + 1, 1, INT64_MAX / 2)};
    return r;
}

/* A header value goes into the request verbatim: refuse anything that
   could end the line or the header block. */
static const char *header_safe(const char *opt, const char *s)
{
    if (*s == '\0' || strlen(s) > 512)
        bad_option(opt, "empty or longer than 512 bytes");
    for (const char *p = s; *p; p++)
        if (*p <= ' ' || *p == 0x7f)
            bad_option(opt, "only visible ASCII characters, no spaces");
    return s;
}

static scenario parse_scenario(const char *s)
{
    for (size_t i = 0; i < sizeof SCENARIO_NAMES / sizeof SCENARIO_NAMES[0]; i++)
        if (strcmp(s, SCENARIO_NAMES[i]) == 0)
            return (scenario)i;
    bad_option("--scenario", "want orders, hot-order, deposits or claims");
}

/* Options that take a value; returns false when opt is not one of them. */
static bool apply_option(options *o, const char *opt, const char *v)
{
    if (!strcmp(opt, "--host") || !strcmp(opt, "--url-host")) {
        if (strcmp(v, "127.0.0.1") != 0)
            bad_option(opt, "only 127.0.0.1: this is a local benchmark");
        o->host = v;
    } else if (!strcmp(opt, "--port")) o->port = (int)parse_int(opt, v, 1, 65535);
    else if (!strcmp(opt, "--clients")) o->clients = (int)parse_int(opt, v, 1, MAX_CLIENTS);
    else if (!strcmp(opt, "--duration")) o->duration = parse_double(opt, v, 0.1, MAX_DURATION_S);
    else if (!strcmp(opt, "--warmup")) o->warmup = parse_double(opt, v, 0, MAX_WARMUP_S);
    else if (!strcmp(opt, "--timeout")) o->timeout = parse_double(opt, v, 0.1, 600);
    else if (!strcmp(opt, "--token")) o->token = header_safe(opt, v);
    else if (!strcmp(opt, "--strategy")) o->strategy = header_safe(opt, v);
    else if (!strcmp(opt, "--max-requests"))
        o->max_requests = (long)parse_int(opt, v, 1, 1000000000);
    else if (!strcmp(opt, "--scenario")) { o->sc = parse_scenario(v); o->sc_set = true; }
    else if (!strcmp(opt, "--accounts")) o->accounts = parse_range(opt, v);
    else if (!strcmp(opt, "--products")) o->products = parse_range(opt, v);
    else if (!strcmp(opt, "--product")) o->product = parse_int(opt, v, 1, INT64_MAX);
    else if (!strcmp(opt, "--account")) o->account = parse_int(opt, v, 1, INT64_MAX);
    else if (!strcmp(opt, "--coupon")) o->coupon = parse_int(opt, v, 1, INT64_MAX);
    else return false;
    return true;
}

/* Each scenario names the ids it needs; a missing one is a usage error
   rather than a run of 404s. */
static void check_scenario_ids(const options *o)
{
    if (!o->sc_set)
        bad_option("--scenario", "required");
    if (o->port == 0)
        bad_option("--port", "required");
    if (o->token == NULL)
        bad_option("--token", "required (or PGTX_ADMIN_TOKEN in the environment)");
    bool need_accounts = o->sc != SC_DEPOSITS;
    if (need_accounts && o->accounts.count == 0)
        bad_option("--accounts", "required by this scenario");
    if (o->sc == SC_ORDERS && o->products.count == 0)
        bad_option("--products", "required by orders");
    if (o->sc == SC_HOT_ORDER && o->product == 0)
        bad_option("--product", "required by hot-order");
    if (o->sc == SC_DEPOSITS && o->account == 0)
        bad_option("--account", "required by deposits");
    if (o->sc == SC_CLAIMS && o->coupon == 0)
        bad_option("--coupon", "required by claims");
}

static void parse_args(int argc, char **argv, options *o)
{
    *o = (options){.host = "127.0.0.1", .clients = 32, .duration = 10, .warmup = 1,
                   .timeout = 30, .max_requests = DEFAULT_MAX_REQUESTS};
    const char *env_token = getenv("PGTX_ADMIN_TOKEN");
    if (env_token && *env_token)
        o->token = header_safe("PGTX_ADMIN_TOKEN", env_token);
    for (int i = 1; i < argc; i += 2) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            exit(0);
        }
        if (i + 1 >= argc)
            bad_option(argv[i], "unknown option or missing value");
        if (!apply_option(o, argv[i], argv[i + 1]))
            bad_option(argv[i], "unknown option");
    }
    check_scenario_ids(o);
}

/* ---- the request ----------------------------------------------------------- */

/* Writes the next request into out; 0 when there is none left to send (the
   cap, or the claims accounts are used up). */
static size_t next_request(worker *w, char *out, size_t cap)
{
    const options *o = w->sh->opt;
    if (atomic_fetch_add(&w->sh->issued, 1) >= o->max_requests)
        return 0;
    char path[96], body[160];
    int64_t acc;
    switch (o->sc) {
    case SC_ORDERS:
    case SC_HOT_ORDER:
        snprintf(path, sizeof path, "/v1/orders");
        snprintf(body, sizeof body,
                 "{\"account_id\":%" PRId64 ",\"product_id\":%" PRId64 ",\"quantity\":1}",
                 pick(&w->rng, o->accounts),
                 o->sc == SC_ORDERS ? pick(&w->rng, o->products) : o->product);
        break;
    case SC_DEPOSITS:
        snprintf(path, sizeof path, "/v1/accounts/%" PRId64 "/deposits", o->account);
        snprintf(body, sizeof body, "{\"amount\":1}");
        break;
    case SC_CLAIMS:
        /* one claim per account: each request takes the next unused one */
        acc = (int64_t)atomic_fetch_add(&w->sh->claimed, 1);
        if (acc >= o->accounts.count)
            return 0;
        snprintf(path, sizeof path, "/v1/coupons/%" PRId64 "/claims", o->coupon);
        snprintf(body, sizeof body, "{\"account_id\":%" PRId64 "}", o->accounts.first + acc);
        break;
    }
    char strategy[600] = "";
    if (o->strategy)
        snprintf(strategy, sizeof strategy, "Pgtx-Strategy: %s\r\n", o->strategy);
    int n = snprintf(out, cap,
                     "POST %s HTTP/1.1\r\nHost: %s:%d\r\nAuthorization: Bearer %s\r\n"
                     "Content-Type: application/json\r\n%sContent-Length: %zu\r\n\r\n%s",
                     path, o->host, o->port, o->token, strategy, strlen(body), body);
    return n > 0 && (size_t)n < cap ? (size_t)n : 0;
}

/* ---- the connection -------------------------------------------------------- */

static void disconnect(worker *w)
{
    if (w->fd >= 0)
        close(w->fd);
    w->fd = -1;
    w->off = w->len = 0;
}

/* Timeouts on the socket bound every send and recv, so a stalled server
   cannot hold a client past the end of the run by more than --timeout. */
static bool connect_server(worker *w)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return false;
    double t = w->sh->opt->timeout;
    struct timeval tv = {.tv_sec = (time_t)t,
                         .tv_usec = (suseconds_t)((t - (double)(time_t)t) * 1e6)};
    int one = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) != 0 ||
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) != 0 ||
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0 ||
        connect(fd, (const struct sockaddr *)&w->sh->addr, sizeof w->sh->addr) != 0) {
        close(fd);
        return false;
    }
    w->fd = fd;
    w->off = w->len = 0;
    return true;
}

static bool send_all(worker *w, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t k = send(w->fd, p, n, MSG_NOSIGNAL);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return false;
        p += k;
        n -= (size_t)k;
    }
    return true;
}

/* More bytes into the buffer, moving the unread ones to its start first.
   > 0: bytes read; 0: the server closed; < 0: error or timeout. */
static ssize_t fill(worker *w)
{
    if (w->off > 0) {
        memmove(w->buf, w->buf + w->off, w->len - w->off);
        w->len -= w->off;
        w->off = 0;
    }
    if (w->len == sizeof w->buf)
        return -1; /* a line longer than the buffer: not an answer we accept */
    ssize_t k;
    do
        k = recv(w->fd, w->buf + w->len, sizeof w->buf - w->len, 0);
    while (k < 0 && errno == EINTR);
    if (k > 0)
        w->len += (size_t)k;
    return k;
}

/* The next line without its CRLF, NUL-terminated in place; NULL on EOF,
   error or an over-long line. */
static char *read_line(worker *w)
{
    for (;;) {
        char *start = w->buf + w->off;
        char *lf = memchr(start, '\n', w->len - w->off);
        if (lf) {
            size_t n = (size_t)(lf - start);
            if (n > 0 && start[n - 1] == '\r')
                n--;
            start[n] = '\0';
            w->off = (size_t)(lf - w->buf) + 1;
            return start;
        }
        if (fill(w) <= 0)
            return NULL;
    }
}

/* Consumes n body bytes, which may be more than the buffer holds. */
static bool skip_bytes(worker *w, uint64_t n)
{
    while (n > 0) {
        if (w->off == w->len && fill(w) <= 0)
            return false;
        size_t have = w->len - w->off;
        size_t take = n < have ? (size_t)n : have;
        w->off += take;
        n -= take;
    }
    return true;
}

/* ---- the response ---------------------------------------------------------- */

typedef struct response {
    int status;
    bool keep_alive, chunked, has_length;
    uint64_t length;
    long batch; /* Pgtx-Batch, 0 when absent or not a count */
} response;

/* "HTTP/1.x SSS reason": HTTP/1.0 closes unless told otherwise. */
static bool parse_status_line(const char *line, response *r)
{
    if (strncmp(line, "HTTP/1.", 7) != 0 || (line[7] != '0' && line[7] != '1') ||
        line[8] != ' ')
        return false;
    const char *s = line + 9;
    if (s[0] < '1' || s[0] > '5' || s[1] < '0' || s[1] > '9' || s[2] < '0' || s[2] > '9' ||
        (s[3] != ' ' && s[3] != '\0'))
        return false;
    r->status = (s[0] - '0') * 100 + (s[1] - '0') * 10 + (s[2] - '0');
    r->keep_alive = line[7] == '1';
    return true;
}

static bool has_token(const char *value, const char *token)
{
    size_t n = strlen(token);
    for (const char *p = value; *p;) {
        while (*p == ' ' || *p == '\t' || *p == ',')
            p++;
        if (strncasecmp(p, token, n) == 0 &&
            (p[n] == '\0' || p[n] == ',' || p[n] == ' ' || p[n] == '\t'))
            return true;
        while (*p && *p != ',')
            p++;
    }
    return false;
}

/* Pgtx-Batch is only reported, never trusted for framing: a value that is
   not a plain count is ignored rather than failing the answer. */
static long parse_batch(const char *v)
{
    char *end;
    errno = 0;
    long n = strtol(v, &end, 10);
    if (errno || end == v || *v == '-' || *v == '+' || (*end != '\0' && *end != ' ') ||
        n < 1 || n > 1000000)
        return 0;
    return n;
}

/* One header line; false when it makes the framing ambiguous or invalid
   (two different lengths, a bad number), since a client that guesses here
   would desynchronise every later answer on the connection. */
static bool parse_header(char *line, response *r)
{
    char *colon = strchr(line, ':');
    if (colon == NULL || colon == line)
        return false;
    *colon = '\0';
    char *v = colon + 1;
    while (*v == ' ' || *v == '\t')
        v++;
    if (strcasecmp(line, "Content-Length") == 0) {
        char *end;
        errno = 0;
        unsigned long long n = strtoull(v, &end, 10);
        if (errno || end == v || (*end != '\0' && *end != ' ') || *v == '-' ||
            (r->has_length && r->length != n))
            return false;
        r->length = n;
        r->has_length = true;
    } else if (strcasecmp(line, "Transfer-Encoding") == 0) {
        r->chunked = has_token(v, "chunked");
    } else if (strcasecmp(line, "Connection") == 0) {
        if (has_token(v, "close"))
            r->keep_alive = false;
        else if (has_token(v, "keep-alive"))
            r->keep_alive = true;
    } else if (strcasecmp(line, "Pgtx-Batch") == 0) {
        r->batch = parse_batch(v);
    }
    return true;
}

static bool read_head(worker *w, response *r)
{
    *r = (response){0};
    char *line = read_line(w);
    if (line == NULL || !parse_status_line(line, r))
        return false;
    while ((line = read_line(w)) != NULL && *line != '\0')
        if (!parse_header(line, r))
            return false;
    return line != NULL && !(r->chunked && r->has_length);
}

/* Chunks until the zero chunk, then the trailers up to the empty line. */
static bool skip_chunked(worker *w)
{
    for (;;) {
        char *line = read_line(w);
        if (line == NULL)
            return false;
        char *end;
        errno = 0;
        unsigned long long n = strtoull(line, &end, 16);
        if (errno || end == line || (*end != '\0' && *end != ';'))
            return false;
        if (n == 0)
            break;
        if (!skip_bytes(w, n) || (line = read_line(w)) == NULL || *line != '\0')
            return false;
    }
    char *line;
    while ((line = read_line(w)) != NULL && *line != '\0')
        ;
    return line != NULL;
}

/* Without a length or chunks, the body runs to the end of the connection. */
static bool skip_to_eof(worker *w)
{
    for (;;) {
        w->off = w->len;
        ssize_t k = fill(w);
        if (k == 0)
            return true;
        if (k < 0)
            return false;
    }
}

/* A whole response; 1xx interim answers are skipped.  *status is the final
   status, *batch its Pgtx-Batch (0: none), *reuse whether the connection
   can carry the next request. */
static bool read_response(worker *w, int *status, long *batch, bool *reuse)
{
    response r;
    do
        if (!read_head(w, &r))
            return false;
    while (r.status < 200);
    *status = r.status;
    *batch = r.batch;
    *reuse = r.keep_alive;
    if (r.status == 204 || r.status == 304)
        return true;
    if (r.chunked)
        return skip_chunked(w);
    if (r.has_length)
        return skip_bytes(w, r.length);
    *reuse = false;
    return skip_to_eof(w);
}

/* ---- one client ------------------------------------------------------------ */

static void record_latency(worker *w, double seconds)
{
    if (w->nlat == w->cap) {
        size_t cap = w->cap ? w->cap * 2 : 4096;
        uint32_t *p = realloc(w->lat_us, cap * sizeof *p);
        if (p == NULL) {
            w->oom = true;
            return;
        }
        w->lat_us = p;
        w->cap = cap;
    }
    double us = seconds * 1e6;
    w->lat_us[w->nlat++] = us >= 4294967295.0 ? UINT32_MAX : (uint32_t)(us + 0.5);
}

static void record_batch(worker *w, long k)
{
    if (k <= 0)
        return;
    w->batch_n++;
    w->batch_sum += k;
    w->batch_tx += 1.0 / (double)k;
    if (k > w->batch_max)
        w->batch_max = k;
}

static void pause_before_reconnect(void)
{
    struct timespec ts = {0, RECONNECT_PAUSE_NS};
    nanosleep(&ts, NULL);
}

/* One request over a (re)connected socket: true with *status and *batch on
   an answer, false on a transport failure (the connection is then dropped). */
static bool exchange(worker *w, const char *req, size_t n, int *status, long *batch)
{
    /* No silent resend on a broken keep-alive connection: these POSTs are
       not idempotent, and the server may have run the first one.  The
       failure is counted as an error and the next request reconnects. */
    if (w->fd < 0 && !connect_server(w))
        return false;
    bool reuse = false;
    bool ok = send_all(w, req, n) && read_response(w, status, batch, &reuse);
    if (!ok || !reuse)
        disconnect(w);
    return ok;
}

static void *client_main(void *arg)
{
    worker *w = arg;
    shared *sh = w->sh;
    char req[REQ_BUF];
    for (;;) {
        double t0 = now_s();
        if (t0 >= sh->t_end || atomic_load(&sh->stop))
            break;
        size_t n = next_request(w, req, sizeof req);
        if (n == 0)
            break;
        int status = 0;
        long batch = 0;
        bool ok = exchange(w, req, n, &status, &batch);
        double t1 = now_s();
        w->all_errors += !ok;
        w->all_ok += ok && status >= 200 && status < 300;
        w->all_5xx += ok && status >= 500;
        if (t1 < sh->t_warm || t1 > sh->t_end) {
            if (!ok)
                pause_before_reconnect();
            continue;
        }
        if (!ok) {
            w->errors++;
            pause_before_reconnect();
            continue;
        }
        w->requests++;
        if (status >= 100 && status < STATUS_MAX)
            w->by_status[status]++;
        record_batch(w, batch);
        record_latency(w, t1 - t0);
    }
    disconnect(w);
    return NULL;
}

/* ---- the report ------------------------------------------------------------ */

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

/* Nearest-rank percentile of a sorted array, in milliseconds. */
static double percentile_ms(const uint32_t *v, size_t n, double p)
{
    if (n == 0)
        return 0;
    size_t rank = (size_t)(p / 100.0 * (double)n + 0.999999);
    if (rank < 1)
        rank = 1;
    if (rank > n)
        rank = n;
    return (double)v[rank - 1] / 1000.0;
}

typedef struct totals {
    long requests, ok, errors;
    long all_ok, all_errors, all_5xx;
    long by_status[STATUS_MAX];
    long batch_n, batch_sum, batch_max;
    double batch_tx;
    uint32_t *lat;
    size_t nlat;
    double sum_ms;
    bool oom;
} totals;

static bool merge(worker *ws, int n, totals *t)
{
    *t = (totals){0};
    size_t all = 0;
    for (int i = 0; i < n; i++)
        all += ws[i].nlat;
    t->lat = malloc((all ? all : 1) * sizeof *t->lat);
    if (t->lat == NULL)
        return false;
    for (int i = 0; i < n; i++) {
        worker *w = &ws[i];
        t->requests += w->requests;
        t->errors += w->errors;
        t->all_ok += w->all_ok;
        t->all_errors += w->all_errors;
        t->all_5xx += w->all_5xx;
        t->oom |= w->oom;
        t->batch_n += w->batch_n;
        t->batch_sum += w->batch_sum;
        t->batch_tx += w->batch_tx;
        if (w->batch_max > t->batch_max)
            t->batch_max = w->batch_max;
        for (int s = 0; s < STATUS_MAX; s++)
            t->by_status[s] += w->by_status[s];
        if (w->nlat)
            memcpy(t->lat + t->nlat, w->lat_us, w->nlat * sizeof *t->lat);
        t->nlat += w->nlat;
    }
    for (int s = 200; s < 300; s++)
        t->ok += t->by_status[s];
    for (size_t i = 0; i < t->nlat; i++)
        t->sum_ms += (double)t->lat[i] / 1000.0;
    qsort(t->lat, t->nlat, sizeof *t->lat, cmp_u32);
    return true;
}

static void print_report(const options *o, const totals *t, double seconds)
{
    printf("{\"scenario\":\"%s\",\"clients\":%d,\"requests\":%ld,\"ok\":%ld,\"by_status\":{",
           SCENARIO_NAMES[o->sc], o->clients, t->requests, t->ok);
    const char *sep = "";
    for (int s = 100; s < STATUS_MAX; s++)
        if (t->by_status[s]) {
            printf("%s\"%d\":%ld", sep, s, t->by_status[s]);
            sep = ",";
        }
    double rps = seconds > 0 ? (double)t->requests / seconds : 0;
    double ok_rps = seconds > 0 ? (double)t->ok / seconds : 0;
    double mean = t->nlat ? t->sum_ms / (double)t->nlat : 0;
    printf("},\"errors\":%ld,\"seconds\":%.3f,\"rps\":%.1f,\"ok_rps\":%.1f,"
           "\"mean_ms\":%.3f,\"p50_ms\":%.3f,\"p90_ms\":%.3f,\"p99_ms\":%.3f,"
           "\"max_ms\":%.3f,\"latency_complete\":%s,"
           "\"all_ok\":%ld,\"all_errors\":%ld,\"all_5xx\":%ld,",
           t->errors, seconds, rps, ok_rps, mean, percentile_ms(t->lat, t->nlat, 50),
           percentile_ms(t->lat, t->nlat, 90), percentile_ms(t->lat, t->nlat, 99),
           percentile_ms(t->lat, t->nlat, 100), t->oom ? "false" : "true", t->all_ok,
           t->all_errors, t->all_5xx);
    /* appended last, so that readers of the older line keep working */
    double batch_mean = t->batch_n ? (double)t->batch_sum / (double)t->batch_n : 0;
    double batch_tx_mean = t->batch_tx > 0 ? (double)t->batch_n / t->batch_tx : 0;
    printf("\"batch_answers\":%ld,\"batch_mean\":%.3f,\"batch_tx_mean\":%.3f,"
           "\"batch_max\":%ld}\n",
           t->batch_n, batch_mean, batch_tx_mean, t->batch_max);
    fflush(stdout);
}

/* ---- main ------------------------------------------------------------------ */

static bool start_clients(worker *ws, int n, shared *sh)
{
    uint64_t seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    for (int i = 0; i < n; i++) {
        ws[i].sh = sh;
        ws[i].fd = -1;
        ws[i].rng = (seed + (uint64_t)i * UINT64_C(0x9E3779B97F4A7C15)) | 1;
        int rc = pthread_create(&ws[i].thread, NULL, client_main, &ws[i]);
        if (rc != 0) {
            fprintf(stderr, "http-load: pthread_create: %s\n", strerror(rc));
            /* stop the ones already running at once, then join them */
            atomic_store(&sh->stop, true);
            for (int j = 0; j < i; j++)
                pthread_join(ws[j].thread, NULL);
            return false;
        }
    }
    return true;
}

int main(int argc, char **argv)
{
    options o;
    parse_args(argc, argv, &o);
    static shared sh;
    sh.opt = &o;
    sh.addr.sin_family = AF_INET;
    sh.addr.sin_port = htons((uint16_t)o.port);
    if (inet_pton(AF_INET, o.host, &sh.addr.sin_addr) != 1)
        bad_option("--host", "not an IPv4 address");
    worker *ws = calloc((size_t)o.clients, sizeof *ws);
    if (ws == NULL) {
        fprintf(stderr, "http-load: out of memory\n");
        return 1;
    }
    double t_start = now_s();
    sh.t_warm = t_start + o.warmup;
    sh.t_end = sh.t_warm + o.duration;
    if (!start_clients(ws, o.clients, &sh))
        return 1;
    for (int i = 0; i < o.clients; i++)
        pthread_join(ws[i].thread, NULL);
    /* The window ends at the planned end, or earlier when every client ran
       out of requests (the cap, or the claims accounts). */
    double t_stop = now_s();
    double seconds = (t_stop < sh.t_end ? t_stop : sh.t_end) - sh.t_warm;
    totals t;
    if (!merge(ws, o.clients, &t)) {
        fprintf(stderr, "http-load: out of memory\n");
        return 1;
    }
    print_report(&o, &t, seconds > 0 ? seconds : 0);
    for (int i = 0; i < o.clients; i++)
        free(ws[i].lat_us);
    free(ws);
    free(t.lat);
    return 0;
}
