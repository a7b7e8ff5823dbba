/* pool.c — the thread-safe connection pool: checkout, return, close, stats. */
#define _GNU_SOURCE /* PTHREAD_MUTEX_ADAPTIVE_NP, where the C library has it */
#include "internal.h"

#include <assert.h>
#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct conn_list {
    pgtx_conn *head; /* idle: most recently returned first (LIFO reuse) */
    int count;
} conn_list;

/* A thread waiting in checkout.  Waiters form a FIFO queue; only the head may
   take a connection, so that nobody barges ahead of an earlier waiter. */
typedef struct waiter {
    pthread_cond_t cond;
    struct waiter *next;
} waiter;

struct pgtx_pool {
    pthread_mutex_t mu;     /* guards everything below but the atomics */
    pthread_cond_t drained; /* signalled when a borrowed connection leaves */
    conn_list lists[CONN_STATE_COUNT];
    int connecting; /* attempts in flight: at most one, see can_connect */
    waiter *wait_head, *wait_tail;
    int n_waiting;
    bool closed;
    /* after a failed connect, no new attempt before this time */
    int64_t connect_blocked_until_us;
    int64_t last_connect_error_us;
    int64_t last_connect_ok_us;
    pgtx_error last_connect_error;
    /* connect failures since the last success: only the first of a run is
       a warning, so that an outage is one line, not one per attempt */
    uint64_t connect_errors_in_a_row;
    atomic_uint_fast64_t next_conn_id;
    /* when a transaction last lost its connection or found a standby:
       connections idle since before are not trusted unseen (conn_alive) */
    atomic_int_fast64_t suspect_us;

    /* settings, immutable after create; the strings are the pool's copies */
    pgtx_pool_config cfg;
    char *conninfo;
    char *application_name;

    /* statistics guarded by mu */
    uint64_t checkouts, waits, wait_us, timeouts, created, connect_errors,
        discarded, idle_closed, read_only_closed;
    /* statistics the runner bumps without the lock */
    pgtx__tx_counters tx;
};

/* ---- settings -------------------------------------------------------- */

void pgtx_pool_config_init(pgtx_pool_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->conninfo = "";
    cfg->pool_size = 5;
    cfg->max_overflow = 10;
    cfg->checkout_timeout_ms = 30000;
    cfg->connect_timeout_ms = 10000;
    cfg->check_idle_ms = 30000;
    cfg->max_lifetime_ms = 3600000;
    cfg->connect_retry_ms = 200;
    cfg->statement_cache_size = 256;
    cfg->idle_timeout_ms = 60000;
}

static const char *config_problem(const pgtx_pool_config *cfg)
{
    if (cfg->pool_size < 1)
        return "pool_size must be at least 1";
    if (cfg->max_overflow < 0)
        return "max_overflow must not be negative";
    if (cfg->checkout_timeout_ms < 0)
        return "checkout_timeout_ms must not be negative";
    if (cfg->connect_timeout_ms <= 0)
        return "connect_timeout_ms must be positive";
    if (cfg->check_idle_ms < -1)
        return "check_idle_ms must be -1, 0 or positive";
    if (cfg->max_lifetime_ms < 0)
        return "max_lifetime_ms must not be negative";
    if (cfg->connect_retry_ms < 0)
        return "connect_retry_ms must not be negative";
    if (cfg->socket_timeout_ms < 0)
        return "socket_timeout_ms must not be negative";
    if (cfg->statement_cache_size < 0)
        return "statement_cache_size must not be negative";
    if (cfg->idle_timeout_ms < 0)
        return "idle_timeout_ms must not be negative";
    return NULL;
}

/* Each of a comma-separated list (one per host) empty or in [1, 65535],
   as libpq wants it, spaces around allowed. */
static bool port_list_ok(const char *ports)
{
    for (const char *p = ports;; p++) {
        size_t n = strcspn(p, ",");
        const char *a = p, *b = p + n;
        while (a < b && *a == ' ')
            a++;
        while (b > a && b[-1] == ' ')
            b--;
        long v = 0;
        for (const char *c = a; c < b && v <= 65535; c++) {
            if (*c < '0' || *c > '9')
                return false;
            v = v * 10 + (*c - '0');
        }
        if (a < b && (v < 1 || v > 65535))
            return false;
        p += n;
        if (*p == '\0')
            return true;
    }
}

/* Whether the quote at q in libpq's reason opens a piece of the string:
   in its messages such a piece follows one of these words, while its own
   literals ("=", "]", ":" or "/") follow others. */
static bool opens_piece(const char *why, const char *q)
{
    static const char *const before[] = {"after ", "option ", ": ", "character ",
                                         "value "};
    for (size_t i = 0; i < sizeof before / sizeof before[0]; i++) {
        size_t n = strlen(before[i]);
        if ((size_t)(q - why) >= n && strncmp(q - n, before[i], n) == 0)
            return true;
    }
    return false;
}

/* libpq's reason on one line, without the `: "STRING"` that ends some: a
   URI may carry a password, and the caller's message names the source. */
static void conninfo_reason(char *why, const char *s)
{
    size_t n = strlen(why), len = strlen(s);
    while (n > 0 && (why[n - 1] == '\n' || why[n - 1] == ' '))
        why[--n] = '\0';
    if (n >= len + 4 && why[n - 1] == '"' && strncmp(why + n - 1 - len, s, len) == 0 &&
        strncmp(why + n - 4 - len, ": \"", 3) == 0)
        why[n - 4 - len] = '\0';
    for (char *c = why; *c; c++)
        if (*c == '\n' || *c == '\t')
            *c = ' ';
    /* Any other piece of the string that libpq quotes goes too (a URI
       mistyped as postgresql:/u:pw@h is read as one keyword, password and
       all): from the quote that opens it to the last one, as the piece may
       hold quotes itself. */
    char *first = strchr(why, '"'), *last = strrchr(why, '"');
    while (first && !opens_piece(why, first))
        first = strchr(first + 1, '"');
    if (first && last - first > 3) { /* "..." is no longer than the piece */
        memcpy(first + 1, "...", 3);
        memmove(first + 4, last, strlen(last) + 1);
    }
}

pgtx_status pgtx_conninfo_check(const char *conninfo, pgtx_error *err)
{
    if (conninfo == NULL || *conninfo == '\0')
        return PGTX_OK;
    char *why = NULL;
    PQconninfoOption *opts = PQconninfoParse(conninfo, &why);
    if (opts == NULL) {
        if (why)
            conninfo_reason(why, conninfo);
        pgtx_status st = pgtx_fail(err, why ? PGTX_INVALID : PGTX_NOMEM,
                                   "not a connection string: %s",
                                   why ? why : "out of memory");
        PQfreemem(why);
        return st;
    }
    const char *port = NULL;
    for (const PQconninfoOption *p = opts; p->keyword; p++)
        if (strcmp(p->keyword, "port") == 0)
            port = p->val;
    pgtx_status st = PGTX_OK;
    if (port && !port_list_ok(port))
        st = pgtx_fail(err, PGTX_INVALID, "port '%s' is not a number in [1, 65535]", port);
    PQconninfoFree(opts);
    return st;
}

/* Every condition variable the pool waits on with a deadline measures it
   on CLOCK_MONOTONIC, like pgtx__now_us(): a step of the wall clock (NTP,
   an administrator) neither stretches nor cuts a wait. */
static int monotonic_cond_init(pthread_cond_t *cond)
{
    pthread_condattr_t attr;
    int rc = pthread_condattr_init(&attr);
    if (rc != 0)
        return rc;
    rc = pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    if (rc == 0)
        rc = pthread_cond_init(cond, &attr);
    pthread_condattr_destroy(&attr);
    return rc;
}

/* Every checkout and return takes the pool's mutex for a few hundred
   nanoseconds.  A plain mutex sends a thread that finds it taken to sleep
   in the kernel and back: with 8 threads on 2 cores, 0.6 futex calls per
   transaction.  An adaptive one spins briefly first, which is all such a
   short hold needs. */
static int pool_mutex_init(pthread_mutex_t *mu)
{
#ifdef PTHREAD_MUTEX_ADAPTIVE_NP
    pthread_mutexattr_t attr;
    if (pthread_mutexattr_init(&attr) != 0)
        return -1;
    (void)pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_ADAPTIVE_NP);
    int rc = pthread_mutex_init(mu, &attr);
    pthread_mutexattr_destroy(&attr);
    return rc;
#else
    return pthread_mutex_init(mu, NULL);
#endif
}

static void pool_free(pgtx_pool *pool)
{
    if (pool == NULL)
        return;
    pthread_mutex_destroy(&pool->mu);
    pthread_cond_destroy(&pool->drained);
    free(pool->conninfo);
    free(pool->application_name);
    free(pool);
}

static pgtx_status pool_copy_config(pgtx_pool *pool, const pgtx_pool_config *cfg)
{
    pool->conninfo = strdup(cfg->conninfo ? cfg->conninfo : "");
    if (cfg->application_name)
        pool->application_name = strdup(cfg->application_name);
    if (pool->conninfo == NULL ||
        (cfg->application_name && pool->application_name == NULL))
        return PGTX_NOMEM;
    pool->cfg = *cfg;
    pool->cfg.conninfo = pool->conninfo;
    pool->cfg.application_name = pool->application_name;
    return PGTX_OK;
}

pgtx_status pgtx_pool_create(const pgtx_pool_config *cfg, pgtx_pool **out,
                             pgtx_error *err)
{
    if (cfg == NULL || out == NULL)
        return pgtx_fail(err, PGTX_INVALID, "pool config and out are required");
    const char *problem = config_problem(cfg);
    if (problem)
        return pgtx_fail(err, PGTX_INVALID, "%s", problem);
    pgtx_status st = pgtx_conninfo_check(cfg->conninfo, err);
    if (st != PGTX_OK)
        return st;
    pgtx_pool *pool = calloc(1, sizeof *pool);
    if (pool == NULL)
        return pgtx_fail(err, PGTX_NOMEM, "out of memory creating the pool");
    if (pool_mutex_init(&pool->mu) != 0) {
        free(pool);
        return pgtx_fail(err, PGTX_NOMEM, "cannot create the pool's mutex");
    }
    if (monotonic_cond_init(&pool->drained) != 0) {
        pthread_mutex_destroy(&pool->mu);
        free(pool);
        return pgtx_fail(err, PGTX_NOMEM, "cannot create the pool's condvar");
    }
    if (pool_copy_config(pool, cfg) != PGTX_OK) {
        pool_free(pool);
        return pgtx_fail(err, PGTX_NOMEM, "out of memory creating the pool");
    }
    *out = pool;
    return PGTX_OK;
}

/* ---- logging --------------------------------------------------------- */

void pgtx__log(pgtx_pool *pool, pgtx_log_level level, const char *fmt, ...)
{
    if (pool->cfg.log == NULL)
        return;
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    pool->cfg.log(pool->cfg.log_arg, level, line);
}

bool pgtx__echo_on(const pgtx_pool *pool) { return pool->cfg.echo; }

void pgtx__echo(pgtx_pool *pool, const pgtx_conn *conn, const char *sql,
                int64_t us)
{
    if (!pool->cfg.echo)
        return;
    char line[1024];
    snprintf(line, sizeof line, "pgtx conn %llu: %.3f ms: %s",
             (unsigned long long)conn->id, (double)us / 1000.0, sql);
    if (pool->cfg.log)
        pool->cfg.log(pool->cfg.log_arg, PGTX_LOG_ECHO, line);
    else
        fprintf(stderr, "%s\n", line);
}

pgtx__tx_counters *pgtx__pool_counters(pgtx_pool *pool) { return &pool->tx; }
pgtx_pool *pgtx__conn_pool(const pgtx_conn *conn) { return conn->pool; }
PGconn *pgtx_conn_pg_borrow(pgtx_conn *conn) { return conn ? conn->pg : NULL; }

void pgtx__count_round_trip(pgtx_pool *pool)
{
    atomic_fetch_add_explicit(&pool->tx.round_trips, 1, memory_order_relaxed);
}

/* ---- lists and states ------------------------------------------------- */

static void list_push(conn_list *l, pgtx_conn *c)
{
    assert(c != NULL);
    c->prev = NULL;
    c->next = l->head;
    if (l->head)
        l->head->prev = c;
    l->head = c;
    l->count++;
}

static void list_remove(conn_list *l, pgtx_conn *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else
        l->head = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
    l->count--;
}

/* The one place a connection changes state.  Caller holds pool->mu. */
static void conn_move(pgtx_conn *c, conn_state from, conn_state to)
{
    assert(c->state == from);
    list_remove(&c->pool->lists[from], c);
    list_push(&c->pool->lists[to], c);
    c->state = to;
}

static int pool_open_count(const pgtx_pool *pool)
{
    return pool->lists[CONN_IDLE].count + pool->lists[CONN_USED].count +
           pool->connecting;
}

/* Take a borrowed connection off the books (caller closes it unlocked). */
static void conn_forget_locked(pgtx_conn *c)
{
    assert(c->state == CONN_USED);
    list_remove(&c->pool->lists[CONN_USED], c);
    c->pool->discarded++;
    pthread_cond_broadcast(&c->pool->drained);
}

static void conn_close(pgtx_conn *c)
{
    if (c == NULL)
        return;
    PQfinish(c->pg);
    pgtx__stmt_cache_destroy(c->cache);
    free(c);
}

/* ---- waiters ---------------------------------------------------------- */

/* Let the first waiter look again at what is free.  Caller holds mu. */
static void wake_head(pgtx_pool *pool)
{
    if (pool->wait_head)
        pthread_cond_signal(&pool->wait_head->cond);
}

static void waiter_enqueue(pgtx_pool *pool, waiter *w)
{
    w->next = NULL;
    if (pool->wait_tail)
        pool->wait_tail->next = w;
    else
        pool->wait_head = w;
    pool->wait_tail = w;
    pool->n_waiting++;
}

static void waiter_dequeue(pgtx_pool *pool, waiter *w)
{
    waiter **pp = &pool->wait_head;
    waiter *prev = NULL;
    while (*pp && *pp != w) {
        prev = *pp;
        pp = &(*pp)->next;
    }
    if (*pp == NULL)
        return;
    *pp = w->next;
    if (pool->wait_tail == w)
        pool->wait_tail = prev;
    pool->n_waiting--;
}

/* ---- time ------------------------------------------------------------- */

int64_t pgtx__now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

void pgtx__sleep_ms(int ms)
{
    if (ms <= 0)
        return;
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

double pgtx__random01(void)
{
    /* xorshift64*, one state per thread, seeded from the clock and the
       state's address so that threads do not share a sequence. */
    static _Thread_local uint64_t state;
    if (state == 0) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        state = ((uint64_t)ts.tv_nsec << 20) ^ (uint64_t)ts.tv_sec ^
                (uint64_t)(uintptr_t)&state;
        if (state == 0)
            state = 0x9E3779B97F4A7C15ull;
    }
    state ^= state >> 12;
    state ^= state << 25;
    state ^= state >> 27;
    return (double)((state * 0x2545F4914F6CDD1Dull) >> 11) / 9007199254740992.0;
}

/* A pthread_cond_timedwait deadline `us` from now, for the conds above. */
static struct timespec monotonic_in(int64_t us)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    int64_t ns = ts.tv_nsec + (us % 1000000) * 1000;
    ts.tv_sec += (time_t)(us / 1000000 + ns / 1000000000);
    ts.tv_nsec = (long)(ns % 1000000000);
    return ts;
}

/* ---- opening connections ---------------------------------------------- */

/* The server told this session it is about to go (FATAL/PANIC arrives as a
   notice while idle): remember it so that the connection is not reused. */
static void notice_receiver(void *arg, const PGresult *res)
{
    pgtx_conn *c = arg;
    const char *sev = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);
    const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
    bool fatal = sev && (strcmp(sev, "FATAL") == 0 || strcmp(sev, "PANIC") == 0);
    if (fatal)
        atomic_store(&c->doomed, true);
    pgtx__log(c->pool, fatal ? PGTX_LOG_WARNING : PGTX_LOG_DEBUG,
              "pgtx conn %llu: server says %s: %s", (unsigned long long)c->id,
              sev ? sev : "NOTICE", msg ? msg : "");
}

/* Drive PQconnectPoll until done or `deadline_us`.  Returns OK or CONNECT. */
static pgtx_status connect_poll(PGconn *pg, int64_t deadline_us, pgtx_error *err)
{
    PostgresPollingStatusType ps = PGRES_POLLING_WRITING;
    while (ps != PGRES_POLLING_OK) {
        if (ps == PGRES_POLLING_FAILED)
            return pgtx__error_from_conn(err, pg, PGTX_CONNECT);
        int64_t left_ms = (deadline_us - pgtx__now_us()) / 1000;
        if (left_ms <= 0)
            return pgtx_fail(err, PGTX_CONNECT,
                             "timed out connecting to the database");
        struct pollfd pfd = {PQsocket(pg),
                             ps == PGRES_POLLING_READING ? POLLIN : POLLOUT, 0};
        int n = poll(&pfd, 1, (int)(left_ms > 1000 ? 1000 : left_ms));
        if (n < 0 && errno != EINTR)
            return pgtx_fail(err, PGTX_CONNECT, "poll failed: %s",
                             strerror(errno));
        if (n > 0)
            ps = PQconnectPoll(pg);
    }
    return PGTX_OK;
}

/* Open one libpq connection, bounded by `deadline_us`. */
static pgtx_status open_pg(pgtx_pool *pool, int64_t deadline_us, PGconn **out,
                           pgtx_error *err)
{
    const char *keys[4] = {"fallback_application_name", "dbname", NULL, NULL};
    const char *vals[4] = {"pgtx", pool->conninfo, NULL, NULL};
    if (pool->application_name) {
        keys[2] = "application_name";
        vals[2] = pool->application_name;
    }
    PGconn *pg = PQconnectStartParams(keys, vals, 1);
    if (pg == NULL)
        return pgtx_fail(err, PGTX_NOMEM, "out of memory connecting");
    if (PQstatus(pg) == CONNECTION_BAD) {
        pgtx_status st = pgtx__error_from_conn(err, pg, PGTX_CONNECT);
        PQfinish(pg);
        return st;
    }
    int64_t own = pgtx__now_us() + (int64_t)pool->cfg.connect_timeout_ms * 1000;
    pgtx_status st = connect_poll(pg, own < deadline_us ? own : deadline_us, err);
    if (st != PGTX_OK) {
        PQfinish(pg);
        return st;
    }
    *out = pg;
    return PGTX_OK;
}

/* Stagger expiry so that connections opened together do not all close
   together: up to lifetime/pool_size earlier, at random. */
static int64_t expiry_for(const pgtx_pool *pool, int64_t now)
{
    if (pool->cfg.max_lifetime_ms == 0)
        return INT64_MAX;
    int64_t life = (int64_t)pool->cfg.max_lifetime_ms * 1000;
    int64_t spread = life / pool->cfg.pool_size;
    return now + life - (int64_t)(pgtx__random01() * (double)spread);
}

static pgtx_conn *conn_wrap(pgtx_pool *pool, PGconn *pg, uint64_t id)
{
    pgtx_conn *c = calloc(1, sizeof *c);
    if (c == NULL)
        return NULL;
    c->pg = pg;
    c->pool = pool;
    c->id = id;
    c->created_us = c->last_used_us = pgtx__now_us();
    c->expires_us = expiry_for(pool, c->created_us);
    pgtx__conn_node(pg, c->node, sizeof c->node);
    atomic_init(&c->doomed, false);
    /* Without a cache (or the memory for one) statements go unprepared. */
    c->cache = pgtx__stmt_cache_create(pool->cfg.statement_cache_size);
    PQsetNoticeReceiver(pg, notice_receiver, c);
    return c;
}

/* ---- checkout ---------------------------------------------------------- */

int pgtx__socket_timeout_ms(const pgtx_pool *pool) { return pool->cfg.socket_timeout_ms; }

/* Is a connection handed out now going to work?  Cheap unless it has been
   idle longer than check_idle_ms; then one round trip. */
/* NOTE: the runner's checkouts trust a connection returned within this
   window without looking at its socket (HikariCP's alive-bypass window):
   that look is a system call per transaction, and the runner does not need
   it, since a connection found dead where BEGIN's answer was due ran
   nothing and is retried (tx.c).  Direct checkouts always look. */
#define TRUST_RECENT_US 1000000

static bool conn_alive(pgtx_conn *c, int64_t now, bool trust_recent)
{
    bool recent = trust_recent && now - c->last_used_us < TRUST_RECENT_US &&
                  c->last_used_us > atomic_load_explicit(&c->pool->suspect_us,
                                                         memory_order_relaxed);
    if (PQstatus(c->pg) != CONNECTION_OK || atomic_load(&c->doomed) ||
        (!recent && !pgtx__conn_healthy(c)) ||
        PQtransactionStatus(c->pg) != PQTRANS_IDLE || now >= c->expires_us)
        return false;
    int check = c->pool->cfg.check_idle_ms;
    if (check < 0 || now - c->last_used_us < (int64_t)check * 1000)
        return true;
    pgtx__count_round_trip(c->pool);
    PGresult *r = pgtx__exec(c, "", -1, NULL);
    bool ok = PQresultStatus(r) == PGRES_EMPTY_QUERY;
    PQclear(r);
    return ok;
}

/* May this checkout open a connection now?  One attempt in flight at a time,
   and none during the back-off window after a failure: after a restart or a
   failover, a pool that reconnects everything at once is the outage. */
static bool can_connect(const pgtx_pool *pool, int64_t now)
{
    return pool->connecting == 0 &&
           pool_open_count(pool) < pool->cfg.pool_size + pool->cfg.max_overflow &&
           now >= pool->connect_blocked_until_us;
}

typedef enum take_result { TAKE_NONE, TAKE_IDLE, TAKE_CONNECT } take_result;

/* With mu held, and this thread first in line: take an idle connection or
   the right to open one. */
/* The connection this thread returned last, by pool and id (never
   dereferenced: it may be gone).  Handing a thread back its own connection
   keeps each client thread paired with one backend, as a thread with its own
   connection would be; the scheduler then keeps each pair warm. */
static _Thread_local struct {
    const pgtx_pool *pool;
    uint64_t conn_id;
} last_returned;

/* The idle connection to hand out: this thread's own if it is idle (looked
   for among the first few only, to keep the lock short), else the most
   recently returned. */
static pgtx_conn *pick_idle_locked(const pgtx_pool *pool)
{
    pgtx_conn *head = pool->lists[CONN_IDLE].head;
    if (last_returned.pool != pool)
        return head;
    int looked = 0;
    for (pgtx_conn *c = head; c && looked < 16; c = c->next, looked++)
        if (c->id == last_returned.conn_id)
            return c;
    return head;
}

/* NOTE: the clock is read only when no idle connection is there: where the
   clock source is not the vDSO's (some virtual machines), every read is a
   system call, and the hot path makes as few as it can. */
static take_result take_locked(pgtx_pool *pool, pgtx_conn **out)
{
    pgtx_conn *c = pick_idle_locked(pool);
    if (c) {
        conn_move(c, CONN_IDLE, CONN_USED);
        *out = c;
        return TAKE_IDLE;
    }
    if (can_connect(pool, pgtx__now_us())) {
        pool->connecting++;
        return TAKE_CONNECT;
    }
    return TAKE_NONE;
}

/* Book a connect attempt's outcome.  Caller holds mu.  Returns how many
   attempts had failed in a row before this one (success) or with it. */
static uint64_t connect_done_locked(pgtx_pool *pool, pgtx_conn *c, const pgtx_error *e)
{
    pool->connecting--;
    uint64_t in_a_row = pool->connect_errors_in_a_row;
    if (c != NULL) {
        c->state = CONN_USED;
        list_push(&pool->lists[CONN_USED], c);
        pool->created++;
        pool->last_connect_ok_us = pgtx__now_us();
        pool->connect_errors_in_a_row = 0;
    } else {
        int64_t now = pgtx__now_us();
        in_a_row = ++pool->connect_errors_in_a_row;
        pool->connect_errors++;
        pool->connect_blocked_until_us = now + (int64_t)pool->cfg.connect_retry_ms * 1000;
        pool->last_connect_error_us = now;
        pool->last_connect_error = *e;
    }
    wake_head(pool);
    return in_a_row;
}

/* Open a connection for this checkout (mu not held on entry or exit). */
static pgtx_status checkout_connect(pgtx_pool *pool, int64_t deadline_us,
                                    pgtx_conn **out, pgtx_error *err)
{
    PGconn *pg = NULL;
    pgtx_conn *c = NULL;
    pgtx_error e;
    pgtx__error_clear(&e);
    pgtx_status st = open_pg(pool, deadline_us, &pg, &e);
    uint64_t id = atomic_fetch_add(&pool->next_conn_id, 1) + 1;
    if (st == PGTX_OK && (c = conn_wrap(pool, pg, id)) == NULL) {
        PQfinish(pg);
        st = pgtx_fail(&e, PGTX_NOMEM, "out of memory wrapping a connection");
    }
    pthread_mutex_lock(&pool->mu);
    uint64_t in_a_row = connect_done_locked(pool, c, &e);
    pthread_mutex_unlock(&pool->mu);
    if (c == NULL) {
        if (in_a_row == 1)
            pgtx__log(pool, PGTX_LOG_WARNING, "pgtx: connect failed (until one "
                      "succeeds, further failures are logged as debug): %s", e.message);
        else
            pgtx__log(pool, PGTX_LOG_DEBUG, "pgtx: connect failed (%llu in a row): %s",
                      (unsigned long long)in_a_row, e.message);
        if (err)
            *err = e;
        return st;
    }
    if (in_a_row > 0)
        pgtx__log(pool, PGTX_LOG_INFO, "pgtx: connected again after %llu failed attempts",
                  (unsigned long long)in_a_row);
    pgtx__log(pool, PGTX_LOG_DEBUG, "pgtx conn %llu: opened",
              (unsigned long long)id);
    *out = c;
    return PGTX_OK;
}

/* A dead or expired idle connection was taken: drop it and try again. */
static void checkout_discard(pgtx_pool *pool, pgtx_conn *c)
{
    pthread_mutex_lock(&pool->mu);
    conn_forget_locked(c);
    wake_head(pool);
    pthread_mutex_unlock(&pool->mu);
    pgtx__log(pool, PGTX_LOG_INFO, "pgtx conn %llu: discarded at checkout "
              "(broken or expired, age %lld ms)", (unsigned long long)c->id,
              (long long)((pgtx__now_us() - c->created_us) / 1000));
    conn_close(c);
}

/* Why a checkout gave up waiting: when nothing is open and the last connect
   failed, the database is down, not busy, and its error says more. */
static pgtx_status timeout_status_locked(pgtx_pool *pool, pgtx_error *err)
{
    pool->timeouts++;
    if (pool->last_connect_error_us > pool->last_connect_ok_us &&
        pool->lists[CONN_USED].count == 0 && pool->lists[CONN_IDLE].count == 0) {
        if (err)
            *err = pool->last_connect_error;
        return pool->last_connect_error.status;
    }
    return pgtx_fail(err, PGTX_POOL_TIMEOUT,
                     "no connection free within the checkout timeout "
                     "(pool_size %d, max_overflow %d, all in use)",
                     pool->cfg.pool_size, pool->cfg.max_overflow);
}

/* How long to sleep: until the deadline, or the end of the connect back-off
   (nobody signals when a back-off window ends). */
static int64_t wait_until_us(const pgtx_pool *pool, int64_t now, int64_t deadline)
{
    int64_t until = deadline;
    if (pool->connect_blocked_until_us > now &&
        pool->connect_blocked_until_us < until)
        until = pool->connect_blocked_until_us;
    return until;
}

typedef struct checkout_state {
    waiter w;
    bool queued;
    bool stale;       /* it waited or retried: start_us is no longer "now" */
    int64_t start_us;
} checkout_state;

/* Wait in line once.  Returns false when the deadline has passed. */
static bool checkout_wait_locked(pgtx_pool *pool, checkout_state *cs,
                                 int64_t deadline)
{
    int64_t now = pgtx__now_us();
    if (now >= deadline)
        return false;
    if (!cs->queued) {
        waiter_enqueue(pool, &cs->w);
        cs->queued = true;
        cs->stale = true;
        pool->waits++;
    }
    struct timespec ts = monotonic_in(wait_until_us(pool, now, deadline) - now);
    pthread_cond_timedwait(&cs->w.cond, &pool->mu, &ts);
    return true;
}

static void checkout_leave_locked(pgtx_pool *pool, checkout_state *cs)
{
    if (cs->queued) {
        waiter_dequeue(pool, &cs->w);
        cs->queued = false;
        pool->wait_us += (uint64_t)(pgtx__now_us() - cs->start_us);
    }
    wake_head(pool); /* pass the turn on */
}

/* With mu held: wait in line until something can be taken.  Returns OK with
   *take set, or the status to fail with. */
static pgtx_status checkout_turn_locked(pgtx_pool *pool, checkout_state *cs,
                                        int64_t deadline, take_result *take,
                                        pgtx_conn **out, pgtx_error *err)
{
    for (;;) {
        if (pool->closed)
            return pgtx_fail(err, PGTX_POOL_CLOSED, "the pool is closed");
        bool my_turn = cs->queued ? pool->wait_head == &cs->w
                                  : pool->wait_head == NULL;
        if (my_turn && (*take = take_locked(pool, out)) != TAKE_NONE)
            return PGTX_OK;
        if (!checkout_wait_locked(pool, cs, deadline))
            return timeout_status_locked(pool, err);
    }
}

static pgtx_status checkout(pgtx_pool *pool, int timeout_ms, bool trust_recent,
                            pgtx_conn **out, pgtx_error *err)
{
    if (pool == NULL || out == NULL)
        return pgtx_fail(err, PGTX_INVALID, "pool and out are required");
    checkout_state cs = {.queued = false, .start_us = pgtx__now_us()};
    int64_t ms = timeout_ms < 0 ? pool->cfg.checkout_timeout_ms : timeout_ms;
    int64_t deadline = cs.start_us + ms * 1000;
    if (monotonic_cond_init(&cs.w.cond) != 0)
        return pgtx_fail(err, PGTX_NOMEM, "cannot create a condition variable");
    pgtx_status st;
    for (;;) {
        take_result take = TAKE_NONE;
        pgtx_conn *c = NULL;
        pthread_mutex_lock(&pool->mu);
        st = checkout_turn_locked(pool, &cs, deadline, &take, &c, err);
        checkout_leave_locked(pool, &cs);
        if (st == PGTX_OK)
            pool->checkouts++;
        pthread_mutex_unlock(&pool->mu);
        if (st != PGTX_OK)
            break;
        if (take == TAKE_CONNECT) {
            st = checkout_connect(pool, deadline, out, err);
            if (st != PGTX_OK) {
                pthread_mutex_lock(&pool->mu);
                pool->checkouts--;
                pthread_mutex_unlock(&pool->mu);
            }
            break;
        }
        /* without a wait, the checkout's start is "now" enough for the idle
           age and expiry: one clock read less on the hot path */
        if (conn_alive(c, cs.stale ? pgtx__now_us() : cs.start_us, trust_recent)) {
            *out = c;
            break;
        }
        checkout_discard(pool, c);
        cs.stale = true;
        pthread_mutex_lock(&pool->mu);
        pool->checkouts--;
        pthread_mutex_unlock(&pool->mu);
    }
    pthread_cond_destroy(&cs.w.cond);
    return st;
}

pgtx_status pgtx_pool_checkout(pgtx_pool *pool, int timeout_ms, pgtx_conn **out,
                               pgtx_error *err)
{
    return checkout(pool, timeout_ms, false, out, err);
}

pgtx_status pgtx__pool_checkout_for_runner(pgtx_pool *pool, pgtx_conn **out,
                                           pgtx_error *err)
{
    return checkout(pool, -1, true, out, err);
}

void pgtx__pool_suspect(pgtx_pool *pool)
{
    atomic_store_explicit(&pool->suspect_us, pgtx__now_us(), memory_order_relaxed);
}

/* ---- return ------------------------------------------------------------ */

/* Can this connection serve the next checkout?  Decided from libpq's own
   status, never guessed: a connection in a transaction is rolled back; one
   busy, in pipeline mode or broken is not reusable. */
static bool conn_reset(pgtx_conn *c)
{
    PGconn *pg = c->pg;
    if (PQstatus(pg) != CONNECTION_OK || atomic_load(&c->doomed) || c->read_only_node ||
        PQpipelineStatus(pg) != PQ_PIPELINE_OFF)
        return false;
    switch (PQtransactionStatus(pg)) {
    case PQTRANS_IDLE:
        return true;
    case PQTRANS_INTRANS:
    case PQTRANS_INERROR: {
        int64_t t0 = pgtx__now_us();
        pgtx__count_round_trip(c->pool);
        PGresult *r = pgtx__exec(c, "ROLLBACK", -1, NULL);
        bool ok = PQresultStatus(r) == PGRES_COMMAND_OK &&
                  PQtransactionStatus(pg) == PQTRANS_IDLE;
        PQclear(r);
        pgtx__echo(c->pool, c, "ROLLBACK (reset on return)", pgtx__now_us() - t0);
        return ok;
    }
    default: /* ACTIVE: results pending; UNKNOWN: broken */
        return false;
    }
}

/* Idle connections beyond pool_size unused for idle_timeout_ms, unlinked
   into a chain for the caller to close unlocked (least recently used are at
   the idle list's tail).  Caller holds mu. */
static pgtx_conn *prune_idle_locked(pgtx_pool *pool, int64_t now)
{
    int64_t limit = (int64_t)pool->cfg.idle_timeout_ms * 1000;
    pgtx_conn *chain = NULL;
    if (limit <= 0 || pool->lists[CONN_IDLE].head == NULL ||
        pool_open_count(pool) <= pool->cfg.pool_size)
        return NULL; /* no overflow: nothing to look for on the hot path */
    pgtx_conn *c = pool->lists[CONN_IDLE].head;
    while (c->next)
        c = c->next;
    while (c && pool_open_count(pool) > pool->cfg.pool_size &&
           now - c->last_used_us >= limit) {
        pgtx_conn *older_than_next = c->prev;
        list_remove(&pool->lists[CONN_IDLE], c);
        pool->discarded++;
        pool->idle_closed++;
        c->next = chain;
        chain = c;
        c = older_than_next;
    }
    return chain;
}

static void close_chain(pgtx_conn *c);

/* Close what prune_idle_locked unlinked (mu not held). */
static void close_pruned(pgtx_pool *pool, pgtx_conn *chain)
{
    for (pgtx_conn *c = chain; c; c = c->next)
        pgtx__log(pool, PGTX_LOG_DEBUG, "pgtx conn %llu: closed after "
                  "idle_timeout_ms unused (overflow)", (unsigned long long)c->id);
    close_chain(chain);
}

void pgtx_pool_return(pgtx_conn *c)
{
    if (c == NULL)
        return;
    pgtx_pool *pool = c->pool;
    bool reusable = conn_reset(c);
    int64_t now = pgtx__now_us();
    pthread_mutex_lock(&pool->mu);
    /* Overflow is closed at once only when asked (idle_timeout_ms 0); else
       it waits idle, and prune_idle_locked closes it once unused long
       enough: closing and reopening one per transaction is pure churn. */
    bool overflow = pool->cfg.idle_timeout_ms == 0 &&
                    pool_open_count(pool) > pool->cfg.pool_size && pool->n_waiting == 0;
    bool keep = reusable && !pool->closed && now < c->expires_us && !overflow;
    if (keep) {
        last_returned.pool = pool;
        last_returned.conn_id = c->id;
        c->last_used_us = now;
        conn_move(c, CONN_USED, CONN_IDLE);
        pthread_cond_broadcast(&pool->drained);
    } else {
        conn_forget_locked(c);
        pool->read_only_closed += c->read_only_node;
    }
    pgtx_conn *pruned = prune_idle_locked(pool, now);
    wake_head(pool);
    pthread_mutex_unlock(&pool->mu);
    close_pruned(pool, pruned);
    if (!keep) {
        /* overflow closes are routine under load; the others are news */
        pgtx__log(pool, reusable && overflow ? PGTX_LOG_DEBUG : PGTX_LOG_INFO,
                  "pgtx conn %llu: closed on return (%s, age %lld ms)",
                  (unsigned long long)c->id,
                  c->read_only_node ? "its server is a standby"
                  : !reusable ? "broken or busy"
                  : overflow ? "overflow"
                  : now >= c->expires_us ? "lifetime over" : "pool closed",
                  (long long)((now - c->created_us) / 1000));
        conn_close(c);
    }
}

/* ---- close and stats ----------------------------------------------------- */

/* Wake every waiter so that each sees `closed`.  Caller holds mu. */
static void wake_all(pgtx_pool *pool)
{
    for (waiter *w = pool->wait_head; w; w = w->next)
        pthread_cond_signal(&w->cond);
}

/* Unlink every idle connection; the caller closes them unlocked. */
static pgtx_conn *take_all_idle_locked(pgtx_pool *pool)
{
    pgtx_conn *all = pool->lists[CONN_IDLE].head;
    pool->discarded += (uint64_t)pool->lists[CONN_IDLE].count;
    pool->lists[CONN_IDLE].head = NULL;
    pool->lists[CONN_IDLE].count = 0;
    return all;
}

static void close_chain(pgtx_conn *c)
{
    while (c) {
        pgtx_conn *next = c->next;
        conn_close(c);
        c = next;
    }
}

static bool drained_locked(const pgtx_pool *pool)
{
    return pool->lists[CONN_USED].count == 0 && pool->connecting == 0;
}

pgtx_status pgtx_pool_close(pgtx_pool *pool, int timeout_ms)
{
    if (pool == NULL)
        return PGTX_INVALID;
    pthread_mutex_lock(&pool->mu);
    pool->closed = true;
    wake_all(pool);
    int64_t deadline = pgtx__now_us() + (int64_t)timeout_ms * 1000;
    while (!drained_locked(pool)) {
        if (timeout_ms < 0) {
            pthread_cond_wait(&pool->drained, &pool->mu);
            continue;
        }
        int64_t left = deadline - pgtx__now_us();
        if (left <= 0)
            break;
        struct timespec ts = monotonic_in(left);
        pthread_cond_timedwait(&pool->drained, &pool->mu, &ts);
    }
    bool drained = drained_locked(pool);
    pgtx_conn *idle = take_all_idle_locked(pool);
    pthread_mutex_unlock(&pool->mu);
    close_chain(idle);
    return drained ? PGTX_OK : PGTX_POOL_TIMEOUT;
}

void pgtx_pool_destroy(pgtx_pool *pool)
{
    if (pool == NULL)
        return;
    (void)pgtx_pool_close(pool, -1);
    /* Waiters woken by close may still be leaving checkout. */
    pthread_mutex_lock(&pool->mu);
    while (pool->n_waiting > 0) {
        pthread_mutex_unlock(&pool->mu);
        pgtx__sleep_ms(1);
        pthread_mutex_lock(&pool->mu);
    }
    pthread_mutex_unlock(&pool->mu);
    pool_free(pool);
}

static uint64_t load(atomic_uint_fast64_t *a)
{
    return (uint64_t)atomic_load_explicit(a, memory_order_relaxed);
}

void pgtx_pool_stats_get(pgtx_pool *pool, pgtx_pool_stats *s)
{
    memset(s, 0, sizeof *s);
    pthread_mutex_lock(&pool->mu);
    pgtx_conn *pruned = pool->closed ? NULL : prune_idle_locked(pool, pgtx__now_us());
    s->open = pool_open_count(pool);
    s->idle = pool->lists[CONN_IDLE].count;
    s->in_use = pool->lists[CONN_USED].count;
    s->overflow = s->open > pool->cfg.pool_size ? s->open - pool->cfg.pool_size : 0;
    s->waiting = pool->n_waiting;
    s->checkouts = pool->checkouts;
    s->waits = pool->waits;
    s->wait_us = pool->wait_us;
    s->timeouts = pool->timeouts;
    s->created = pool->created;
    s->connect_errors = pool->connect_errors;
    s->discarded = pool->discarded;
    s->idle_closed = pool->idle_closed;
    s->read_only_closed = pool->read_only_closed;
    pthread_mutex_unlock(&pool->mu);
    close_pruned(pool, pruned);
    s->round_trips = load(&pool->tx.round_trips);
    s->commits = load(&pool->tx.commits);
    s->rollbacks = load(&pool->tx.rollbacks);
#define PGTX__X_RETRY_STAT(status, bit, name) s->retries_##name = load(&pool->tx.retries_##name);
    PGTX__RETRY_MAP(PGTX__X_RETRY_STAT)
#undef PGTX__X_RETRY_STAT
    s->commit_unknown = load(&pool->tx.commit_unknown);
    s->socket_timeouts = load(&pool->tx.socket_timeouts);
    s->stmt_hits = load(&pool->tx.stmt_hits);
    s->stmt_prepares = load(&pool->tx.stmt_prepares);
    s->stmt_evictions = load(&pool->tx.stmt_evictions);
}
