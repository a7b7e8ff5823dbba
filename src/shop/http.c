/* http.c — libmicrohttpd glue: MHD's event thread reads each request and
   suspends it, a bounded pool of workers runs it (they may block on the
   database; the event thread never does), and the event thread answers once
   the worker resumes the connection. */
#include "server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <microhttpd.h>
#include <limits.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* A body past max_body is read and dropped, then answered 413 with
   Connection: close: 0.9.75 cannot answer in the middle of an upload, and
   closing on a client that is still sending resets the connection before
   it can read the answer.  The dropping stops DRAIN_LIMIT bytes past
   max_body or DRAIN_SECONDS after the request began: a declared excess
   over DRAIN_LIMIT is answered at once, anything else past a bound is cut. */
#define DRAIN_LIMIT (16u * 1024 * 1024)
#define DRAIN_SECONDS 15.0
/* Idle keep-alive connections are closed after this many seconds. */
#define IDLE_TIMEOUT_S 60u

/* ---- connections: limits, eviction and the header deadline ----------------- */

/* MHD restarts its idle timeout with every byte, so a client sending one
   header byte a second holds a connection for as long as it likes; MHD has
   no total deadline for the headers, nor a way to close a connection from
   outside.  We keep our own account of each connection (the notify
   callbacks, all on MHD's event thread) and end one by shutting its socket
   down: MHD then sees end-of-file and closes it as it would any other. */

#define ADDR_BUCKETS 1024
/* How often the sweeper looks for connections past their deadline. */
#define SWEEP_MS 250
/* Descriptors kept out of the connection limit: the pool's sockets, the
   health check's, the listening socket, epoll, log and pipes. */
#define FD_RESERVE 64

typedef enum conn_phase {
    CONN_HEADERS, /* a request line and headers are due: the deadline runs */
    CONN_BUSY,    /* a request is being read, run or answered */
    CONN_IDLE,    /* keep-alive, between requests */
    CONN_CLOSING  /* shut down by us; MHD has yet to notice */
} conn_phase;

typedef struct addr_count {
    struct addr_count *next;
    unsigned char key[16]; /* IPv6, or IPv4 mapped into it */
    int n;
} addr_count;

typedef struct conn_slot {
    struct conn_slot *prev, *next; /* in its phase's list (headers, idle) */
    int fd;
    conn_phase phase;
    long long since_ms; /* when the phase began, CLOCK_MONOTONIC */
    addr_count *addr;
} conn_slot;

typedef struct conn_list {
    conn_slot *head, *tail; /* oldest first */
} conn_list;

typedef struct conn_guard {
    pthread_mutex_t mu;   /* guards all of it: MHD's thread and the sweeper */
    pthread_cond_t wake;  /* the sweeper must stop */
    pthread_t sweeper;
    bool sweeper_started, stop;
    conn_list headers, idle;
    addr_count *addrs[ADDR_BUCKETS];
    int open, max, high, per_ip;
    long long header_timeout_ms;
    long long refused_per_ip, closed_header_timeout, evicted;
} conn_guard;

static long long now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static conn_list *list_of(conn_guard *g, conn_phase p)
{
    return p == CONN_HEADERS ? &g->headers : p == CONN_IDLE ? &g->idle : NULL;
}

static void slot_unlink(conn_guard *g, conn_slot *s)
{
    conn_list *l = list_of(g, s->phase);
    if (l == NULL)
        return;
    if (s->prev)
        s->prev->next = s->next;
    else
        l->head = s->next;
    if (s->next)
        s->next->prev = s->prev;
    else
        l->tail = s->prev;
    s->prev = s->next = NULL;
}

/* The phase's list stays in order of since_ms: slots join at the tail. */
static void slot_move(conn_guard *g, conn_slot *s, conn_phase p)
{
    slot_unlink(g, s);
    s->phase = p;
    s->since_ms = now_ms();
    conn_list *l = list_of(g, p);
    if (l == NULL)
        return;
    s->prev = l->tail;
    if (l->tail)
        l->tail->next = s;
    else
        l->head = s;
    l->tail = s;
}

static void slot_close(conn_guard *g, conn_slot *s)
{
    /* The descriptor is still MHD's: it closes it only after the CLOSED
       notification, which waits for g->mu. */
    shutdown(s->fd, SHUT_RDWR);
    slot_move(g, s, CONN_CLOSING);
}

static void addr_key(const struct sockaddr *sa, unsigned char key[16])
{
    memset(key, 0, 16);
    if (sa && sa->sa_family == AF_INET6) {
        struct sockaddr_in6 in6;
        memcpy(&in6, sa, sizeof in6);
        memcpy(key, &in6.sin6_addr, 16);
    } else if (sa && sa->sa_family == AF_INET) {
        struct sockaddr_in in;
        memcpy(&in, sa, sizeof in);
        key[10] = key[11] = 0xff;
        memcpy(key + 12, &in.sin_addr, 4);
    }
}

static addr_count **addr_bucket(conn_guard *g, const unsigned char key[16])
{
    unsigned hash = 2166136261u; /* FNV-1a */
    for (int i = 0; i < 16; i++)
        hash = (hash ^ key[i]) * 16777619u;
    return &g->addrs[hash % ADDR_BUCKETS];
}

static addr_count *addr_find(conn_guard *g, const struct sockaddr *sa, bool create)
{
    unsigned char key[16];
    addr_key(sa, key);
    addr_count **b = addr_bucket(g, key);
    for (addr_count *a = *b; a; a = a->next)
        if (memcmp(a->key, key, 16) == 0)
            return a;
    addr_count *a = create ? calloc(1, sizeof *a) : NULL;
    if (a) {
        memcpy(a->key, key, 16);
        a->next = *b;
        *b = a;
    }
    return a;
}

static void addr_release(conn_guard *g, addr_count *a)
{
    if (a == NULL || --a->n > 0)
        return;
    for (addr_count **p = addr_bucket(g, a->key); *p; p = &(*p)->next)
        if (*p == a) {
            *p = a->next;
            free(a);
            return;
        }
}

/* Near the limit, room for a newcomer: the longest idle keep-alive
   connection goes first, then the one longest on its headers.  A request
   being run is never cut. */
static void evict_one(conn_guard *g)
{
    conn_slot *s = g->idle.head ? g->idle.head : g->headers.head;
    if (s == NULL)
        return;
    slot_close(g, s);
    g->evicted++;
}

static void sweep(conn_guard *g, long long now)
{
    /* A keep-alive connection may trickle its next request line as long as
       MHD's idle timeout lasts; past that plus the deadline it goes too. */
    long long idle_ms = (long long)IDLE_TIMEOUT_S * 1000 + g->header_timeout_ms;
    while (g->headers.head && now - g->headers.head->since_ms >= g->header_timeout_ms) {
        slot_close(g, g->headers.head);
        g->closed_header_timeout++;
    }
    while (g->idle.head && now - g->idle.head->since_ms >= idle_ms) {
        slot_close(g, g->idle.head);
        g->closed_header_timeout++;
    }
}

static void *sweeper_main(void *arg)
{
    conn_guard *g = arg;
    pthread_mutex_lock(&g->mu);
    while (!g->stop) {
        sweep(g, now_ms());
        struct timespec t;
        clock_gettime(CLOCK_MONOTONIC, &t);
        t.tv_nsec += SWEEP_MS * 1000000L;
        if (t.tv_nsec >= 1000000000L) {
            t.tv_sec++;
            t.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&g->wake, &g->mu, &t);
    }
    pthread_mutex_unlock(&g->mu);
    return NULL;
}

/* MHD_OPTION_ACCEPT_POLICY_CALLBACK (event thread): before a connection
   is set up.  MHD closes a refused one at once. */
static enum MHD_Result on_accept(void *cls, const struct sockaddr *addr, socklen_t len)
{
    (void)len;
    conn_guard *g = cls;
    pthread_mutex_lock(&g->mu);
    addr_count *a = g->per_ip > 0 ? addr_find(g, addr, false) : NULL;
    bool refuse = a && a->n >= g->per_ip;
    if (refuse)
        g->refused_per_ip++;
    else if (g->open >= g->high)
        evict_one(g);
    pthread_mutex_unlock(&g->mu);
    return refuse ? MHD_NO : MHD_YES;
}

static conn_slot *conn_started(conn_guard *g, struct MHD_Connection *conn)
{
    const union MHD_ConnectionInfo *fd =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    conn_slot *s = calloc(1, sizeof *s);
    if (s == NULL || fd == NULL) {
        free(s);
        return NULL; /* untracked: MHD's own timeout still applies */
    }
    s->fd = fd->connect_fd;
    s->phase = CONN_BUSY;
    pthread_mutex_lock(&g->mu);
    s->addr = addr_find(g, ci ? ci->client_addr : NULL, true);
    if (s->addr)
        s->addr->n++;
    g->open++;
    slot_move(g, s, CONN_HEADERS);
    pthread_mutex_unlock(&g->mu);
    return s;
}

static void conn_closed(conn_guard *g, conn_slot *s)
{
    pthread_mutex_lock(&g->mu);
    slot_unlink(g, s);
    addr_release(g, s->addr);
    g->open--;
    pthread_mutex_unlock(&g->mu);
    free(s);
}

/* MHD_OPTION_NOTIFY_CONNECTION (event thread). */
static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                          enum MHD_ConnectionNotificationCode code)
{
    conn_guard *g = cls;
    if (code == MHD_CONNECTION_NOTIFY_STARTED)
        *socket_context = conn_started(g, conn);
    else if (code == MHD_CONNECTION_NOTIFY_CLOSED && *socket_context) {
        conn_closed(g, *socket_context);
        *socket_context = NULL;
    }
}

static conn_slot *slot_of(struct MHD_Connection *conn)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return ci ? ci->socket_context : NULL;
}

/* Into `to`, unless the connection is being shut down (that decision
   stands) or, with only_idle, it is not between requests. */
static void conn_phase_set(conn_guard *g, struct MHD_Connection *conn, conn_phase to,
                           bool only_idle)
{
    conn_slot *s = slot_of(conn);
    if (s == NULL)
        return;
    pthread_mutex_lock(&g->mu);
    if (s->phase != CONN_CLOSING && (!only_idle || s->phase == CONN_IDLE))
        slot_move(g, s, to);
    pthread_mutex_unlock(&g->mu);
}

/* MHD_OPTION_URI_LOG_CALLBACK (event thread): a request line is in.  On a
   keep-alive connection the deadline for its headers starts now; a new
   connection's started when it was accepted.  NULL leaves *req_cls unset. */
static void *on_request_line(void *cls, const char *uri, struct MHD_Connection *conn)
{
    (void)uri;
    conn_phase_set(cls, conn, CONN_HEADERS, true);
    return NULL;
}

static bool guard_init(conn_guard *g)
{
    pthread_condattr_t ca;
    if (pthread_condattr_init(&ca) != 0)
        return false;
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    bool ok = pthread_mutex_init(&g->mu, NULL) == 0 &&
              pthread_cond_init(&g->wake, &ca) == 0;
    pthread_condattr_destroy(&ca);
    return ok;
}

/* The limit asked for, or what the descriptor limit leaves once the
   database connections and our own files have theirs. */
static int connection_limit(const shop_config *cfg, const shop_process_config *proc)
{
    struct rlimit rl;
    long long fds = 1024;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
        fds = rl.rlim_cur == RLIM_INFINITY ? 1048576 /* Linux's nr_open */
                                           : (long long)rl.rlim_cur;
    long long room = fds - FD_RESERVE - cfg->pool_size - cfg->max_overflow;
    if (room < 16)
        room = 16;
    if (proc->max_connections > 0) {
        if (proc->max_connections > room)
            shop_log(SHOP_LOG_WARN, "--max-connections %d is more than the %lld "
                     "file descriptors left for clients (ulimit -n %lld)",
                     proc->max_connections, room, fds);
        return proc->max_connections;
    }
    return room > INT_MAX ? INT_MAX : (int)room;
}

static void guard_configure(conn_guard *g, const shop_config *cfg,
                            const shop_process_config *proc)
{
    g->max = connection_limit(cfg, proc);
    /* Eviction starts a little below the limit: a connection shut down is
       counted until MHD's next pass closes it, and MHD stops accepting at
       the limit itself. */
    int slack = g->max / 16 < 8 ? 8 : g->max / 16;
    g->high = g->max > 2 * slack ? g->max - slack : g->max / 2;
    g->per_ip = proc->max_connections_per_ip;
    g->header_timeout_ms = proc->header_timeout_ms;
    shop_log(SHOP_LOG_INFO, "client connections: at most %d, %d per address (0: no limit), "
             "headers within %lld ms", g->max, g->per_ip, g->header_timeout_ms);
}

static bool guard_start(conn_guard *g)
{
    g->sweeper_started = pthread_create(&g->sweeper, NULL, sweeper_main, g) == 0;
    return g->sweeper_started;
}

static void guard_stop(conn_guard *g)
{
    if (!g->sweeper_started)
        return;
    pthread_mutex_lock(&g->mu);
    g->stop = true;
    pthread_cond_signal(&g->wake);
    pthread_mutex_unlock(&g->mu);
    pthread_join(g->sweeper, NULL);
    g->sweeper_started = false;
}

static void guard_destroy(conn_guard *g)
{
    for (int i = 0; i < ADDR_BUCKETS; i++)
        while (g->addrs[i]) {
            addr_count *a = g->addrs[i];
            g->addrs[i] = a->next;
            free(a);
        }
    pthread_cond_destroy(&g->wake);
    pthread_mutex_destroy(&g->mu);
}

static void guard_gauges(conn_guard *g, shop_http_gauges *out)
{
    pthread_mutex_lock(&g->mu);
    out->connections_open = g->open;
    out->connections_max = g->max;
    out->refused_per_ip = g->refused_per_ip;
    out->closed_header_timeout = g->closed_header_timeout;
    out->evicted = g->evicted;
    pthread_mutex_unlock(&g->mu);
}

typedef enum job_state {
    JOB_READING,  /* headers seen, body arriving: event thread only */
    JOB_QUEUED,   /* connection suspended; in the ring or on a worker */
    JOB_DONE,     /* the worker filled `res` and resumed the connection */
    JOB_ANSWERED  /* a response was queued with MHD */
} job_state;

/* One request, from its first callback to on_completed, which frees it.
   The strings in `req` are borrowed from MHD and live as long as the
   request; req.body points into `buf`. */
typedef struct http_job {
    struct MHD_Connection *conn;
    job_state state;       /* under shop_http.mu once the job is queued */
    shop_request req;
    char *buf;             /* owned body bytes: req.body_len used, cap allocated */
    size_t cap;
    size_t discarded;      /* bytes dropped past max_body */
    bool too_large;
    bool loopback;         /* the client is on this machine */
    const char *content_type; /* static */
    const char *method;    /* as sent (req.method says GET for a HEAD) */
    shop_response res;     /* res.body owned until handed to MHD */
    struct timespec started;
    unsigned long long id; /* this process's request number, for logs */
    shop_request_rows rows; /* what the write changes, named before it runs */
    bool rows_held;        /* it holds its rows' places in shop_http's gate */
    struct http_job *wait_prev, *wait_next; /* in shop_http's waiting list */
    long long wait_until;  /* CLOCK_MONOTONIC ms: then 503 (see wait_deadline) */
} http_job;

/* Jobs whose rows have their share in flight, oldest first: suspended,
   holding no thread, until a place frees up or their wait ends. */
typedef struct wait_list {
    http_job *head, *tail;
    int count;
} wait_list;

/* Jobs waiting for a thread, first come first served: a ring of cap
   (shop_http's) borrowed jobs, guarded by shop_http's mu. */
typedef struct job_queue {
    pthread_cond_t ready;    /* a job was queued, or the takers must stop */
    http_job **ring;         /* owned array */
    int head, count;
    bool busy;               /* its jobs count in shop_http's busy */
} job_queue;

struct shop_http {
    const shop_config *cfg;  /* borrowed, like app, pool and metrics */
    shop_app *app;
    pgtx_pool *pool;
    shop_metrics *metrics;
    pgtx_engine *health;     /* owned: SELECT 1 for /healthz, on pool */
    pgtx_engine *health_own; /* owned: the same on health_pool */
    pgtx_pool *health_pool;  /* borrowed: /healthz's own connection */
    pthread_t health_thread; /* /healthz's own lane (see dispatch_health) */
    bool health_started;
    job_queue health_jobs;   /* /healthz's jobs waiting */
    conn_guard guard;        /* every client connection, for the limits */
    struct MHD_Daemon *daemon;
    MHD_socket listen_fd;    /* handed back by quiesce, closed after stop */
    int port;
    pthread_t *workers;      /* owned; nworkers of them running */
    int nworkers;
    pthread_mutex_t mu;      /* guards everything below and job states */
    pthread_cond_t settled;  /* a suspended connection was answered */
    job_queue jobs;          /* the workers' jobs waiting */
    row_gate *gate;          /* owned: places per row in flight */
    wait_list waiting;       /* jobs waiting for their rows' turn */
    long long row_waits, row_wait_expired;
    long long batches[SHOP_BATCH_BUCKETS]; /* combined runs by size */
    long long batch_calls;
    int batch_largest;
    int cap;                 /* of each queue (jobs: with waiting) */
    int busy;                /* jobs on a worker now */
    int suspended;           /* connections suspended and not yet answered */
    bool closed;             /* no more jobs: the workers leave once idle */
    atomic_bool draining;    /* shutting down: answer with Connection: close */
    atomic_ullong requests;  /* requests begun, numbering them for logs */
};

static double seconds_since(const struct timespec *t0)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(now.tv_sec - t0->tv_sec) +
           (double)(now.tv_nsec - t0->tv_nsec) / 1e9;
}

/* ---- responses ----------------------------------------------------------- */

/* {"error":{"code":..,"message":..}}, malloc'ed; NULL when out of memory.
   Both strings are static text of ours: nothing to escape. */
static char *error_body(const char *code, const char *message)
{
    static const char fmt[] = "{\"error\":{\"code\":\"%s\",\"message\":\"%s\"}}";
    size_t n = sizeof fmt + strlen(code) + strlen(message);
    char *body = malloc(n);
    if (body)
        snprintf(body, n, fmt, code, message);
    return body;
}

/* Until someone answers: a 500 with no headers, nobody acting. */
static shop_response response_new(void)
{
    return (shop_response){.status = 500, .retries = -1, .route = "unknown", .who = -1};
}

static void set_error(shop_response *res, int status, const char *code,
                      const char *message, int retry_after)
{
    free(res->body);
    res->status = status;
    res->body = error_body(code, message);
    res->code = code;
    res->retry_after = retry_after;
}

static void add_headers(shop_http *h, struct MHD_Response *resp,
                        const http_job *job, bool close)
{
    char num[16];
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE,
                            job->res.content_type ? job->res.content_type
                                                  : job->content_type);
    if (job->res.retries >= 0) {
        snprintf(num, sizeof num, "%d", job->res.retries);
        MHD_add_response_header(resp, "Pgtx-Retries", num);
    }
    if (job->res.retry_after > 0) {
        snprintf(num, sizeof num, "%d", job->res.retry_after);
        MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, num);
    }
    if (job->res.batch > 0) {
        snprintf(num, sizeof num, "%d", job->res.batch);
        MHD_add_response_header(resp, "Pgtx-Batch", num);
    }
    if (job->res.commit_lsn) {
        char lsn[PGTX_LSN_SIZE];
        MHD_add_response_header(resp, "Pgtx-Commit-LSN",
                                pgtx_lsn_format(job->res.commit_lsn, lsn));
    }
    if (job->res.read_from)
        MHD_add_response_header(resp, "Pgtx-Read-From", job->res.read_from);
    if (job->res.allow)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, job->res.allow);
    if (close || atomic_load(&h->draining))
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
}

/* Queues job->res on the connection.  The body goes to MHD, which frees
   it with the response.  `close` ends the connection after it: used when
   the request's framing cannot be trusted or its body was not read. */
/* Bodies for an error whose own could not be allocated, so that even out
   of memory the client gets the documented JSON (a 503 is the app's
   out-of-memory answer; anything else is a bug of ours).  Not const: MHD
   takes a `void *`, and only reads it (MHD_RESPMEM_PERSISTENT). */
static char OOM_BODY[] = "{\"error\":{\"code\":\"overloaded\",\"message\":\"out of memory\"}}";
static char FAILED_BODY[] =
    "{\"error\":{\"code\":\"internal\",\"message\":\"the request failed\"}}";

static char *static_error_body(shop_response *res)
{
    if (res->status == 503) {
        res->code = "overloaded";
        if (res->retry_after <= 0)
            res->retry_after = 1;
        return OOM_BODY;
    }
    res->code = "internal";
    return FAILED_BODY;
}

static enum MHD_Result send_response(shop_http *h, http_job *job, bool close)
{
    shop_response *res = &job->res;
    char *fixed = res->body == NULL && res->status >= 400 ? static_error_body(res) : NULL;
    size_t len = fixed ? strlen(fixed) : res->body ? strlen(res->body) : 0;
    struct MHD_Response *resp =
        fixed ? MHD_create_response_from_buffer(len, fixed, MHD_RESPMEM_PERSISTENT)
        : len ? MHD_create_response_from_buffer_with_free_callback(len, res->body, free)
              : MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
    if (resp == NULL)
        return MHD_NO;
    if (len)
        res->body = NULL;
    add_headers(h, resp, job, close);
    enum MHD_Result ret =
        MHD_queue_response(job->conn, (unsigned)res->status, resp);
    MHD_destroy_response(resp);
    job->state = JOB_ANSWERED;
    return ret;
}

/* An answer of our own before the app sees the request (event thread). */
static enum MHD_Result answer_now(shop_http *h, http_job *job, int status,
                                  const char *code, const char *message)
{
    set_error(&job->res, status, code, message, status == 503 ? 1 : 0);
    return send_response(h, job, status != 503);
}

/* ---- the routes http.c answers itself (worker threads) ------------------- */

static pgtx_status select_one(pgtx_tx *tx, void *arg, pgtx_error *err)
{
    (void)arg;
    return pgtx_queue(tx, "SELECT 1", 0, NULL, NULL, err); /* one round trip */
}

/* A 405's route label is the bare path, as the app labels its own. */
static bool only_get(http_job *job)
{
    if (strcmp(job->req.method, "GET") == 0)
        return true;
    job->res.route = strchr(job->res.route, '/');
    set_error(&job->res, 405, "method_not_allowed", "only GET is allowed here", 0);
    job->res.allow = "GET, HEAD";
    return false;
}

/* The probe takes one of the workers' pooled connections while one is free
   or may be opened, so that an outage and its end are seen (and logged
   once) by the pool that serves requests; when every one is taken, or it
   lost the race for the last, it takes its own and waits for no one. */
static pgtx_status health_probe(shop_http *h, pgtx_error *err)
{
    pgtx_pool_stats s;
    pgtx_pool_stats_get(h->pool, &s);
    bool taken = s.waiting > 0 ||
                 (s.idle == 0 && s.open >= h->cfg->pool_size + h->cfg->max_overflow);
    pgtx_status st = taken ? PGTX_POOL_TIMEOUT
                           : pgtx_run(h->health, select_one, NULL, NULL, err);
    if (pgtx_status_class(st) == PGTX_CLASS_POOL)
        st = pgtx_run(h->health_own, select_one, NULL, NULL, err);
    return st;
}

static void route_healthz(shop_http *h, http_job *job)
{
    job->res.route = "GET /healthz";
    if (!only_get(job))
        return;
    pgtx_error err;
    if (health_probe(h, &err) != PGTX_OK) {
        shop_log(SHOP_LOG_WARN, "healthz: %s: %s", pgtx_status_name(err.status),
                 err.message);
        set_error(&job->res, 503, "database_unavailable",
                  "the database did not answer in time", 1);
        return;
    }
    job->res.status = 200;
    job->res.body = strdup("{\"status\":\"ok\"}");
}

static shop_http_gauges gauges(shop_http *h)
{
    pthread_mutex_lock(&h->mu);
    shop_http_gauges g = {h->jobs.count, h->cap, h->busy, h->nworkers, 0, 0, 0, 0, 0,
                          h->waiting.count, h->row_waits, h->row_wait_expired,
                          {0}, h->batch_calls, h->batch_largest};
    memcpy(g.batches, h->batches, sizeof g.batches);
    pthread_mutex_unlock(&h->mu);
    guard_gauges(&h->guard, &g);
    return g;
}

static void route_metrics(shop_http *h, http_job *job)
{
    job->res.route = "GET /metrics";
    if (!only_get(job))
        return;
    if (!job->loopback) {
        set_error(&job->res, 403, "forbidden",
                  "metrics are served to loopback clients only", 0);
        return;
    }
    shop_http_gauges g = gauges(h);
    size_t len;
    job->res.body = shop_metrics_render(h->metrics, h->pool, &g, &len);
    if (job->res.body == NULL) {
        set_error(&job->res, 503, "overloaded", "out of memory", 1);
        return;
    }
    job->res.status = 200;
    job->content_type = "text/plain; version=0.0.4; charset=utf-8";
}

/* A 500 is our bug, never the client's: keep what the server said. */
static void log_internal(const http_job *job)
{
    if (job->res.status == 500)
        shop_log(SHOP_LOG_ERROR, "req=%llu %s %s: %s", job->id, job->req.method,
                 job->req.path, job->res.body ? job->res.body : "(no body)");
}

static void run_job(shop_http *h, http_job *job)
{
    job->res = response_new();
    if (strcmp(job->req.path, "/healthz") == 0)
        route_healthz(h, job);
    else if (strcmp(job->req.path, "/metrics") == 0)
        route_metrics(h, job);
    else
        shop_app_handle(h->app, &job->req, &job->res);
    log_internal(job);
}

/* The leader and the jobs it took along (chained on wait_next), handled
   together: the app runs them as one transaction. */
static void run_batch(shop_http *h, http_job *lead, int n)
{
    const shop_request *req[PGTX_BATCH_SAVEPOINT_MAX];
    shop_response *res[PGTX_BATCH_SAVEPOINT_MAX];
    int i = 0;
    for (http_job *j = lead; j && i < n; j = j->wait_next, i++) {
        j->res = response_new();
        req[i] = &j->req;
        res[i] = &j->res;
    }
    shop_app_handle_batch(h->app, req, res, i);
    for (http_job *j = lead; j && n-- > 0; j = j->wait_next)
        log_internal(j);
}

/* ---- rows in flight (all under shop_http's mu) ------------------------------ */

/* A write whose rows already have ROW_IN_FLIGHT requests on workers (or
   queued for one) waits in h->waiting, suspended, holding no worker and no
   pooled connection, for at most --lock-timeout-ms: so a row that another
   client keeps locked takes ROW_IN_FLIGHT workers, not all of them, and
   other requests go on.  Two, not one: the second already waits in the
   row's lock queue when the first commits, so a hot row is never idle
   between two transactions. */
#define ROW_IN_FLIGHT 2
#define NO_DEADLINE LLONG_MAX

static void wait_push(wait_list *l, http_job *job)
{
    job->wait_next = NULL;
    job->wait_prev = l->tail;
    if (l->tail)
        l->tail->wait_next = job;
    else
        l->head = job;
    l->tail = job;
    l->count++;
}

static void wait_unlink(wait_list *l, http_job *job)
{
    if (job->wait_prev)
        job->wait_prev->wait_next = job->wait_next;
    else
        l->head = job->wait_next;
    if (job->wait_next)
        job->wait_next->wait_prev = job->wait_prev;
    else
        l->tail = job->wait_prev;
    l->count--;
}

static void ring_push(shop_http *h, job_queue *q, http_job *job)
{
    q->ring[(q->head + q->count) % h->cap] = job;
    q->count++;
    pthread_cond_signal(&q->ready);
}

/* Waiting jobs whose rows now have room go to the workers' ring, oldest
   first, while it has room. */
static void admit_waiting(shop_http *h)
{
    http_job *next;
    for (http_job *j = h->waiting.head; j && h->jobs.count < h->cap; j = next) {
        next = j->wait_next;
        if (row_gate_enter(h->gate, j->rows.key, j->rows.n) != ROW_GATE_ENTERED)
            continue;
        wait_unlink(&h->waiting, j);
        j->rows_held = true;
        ring_push(h, &h->jobs, j);
    }
}

/* Takes j out of the waiting list with a 503 row_busy, chained on
   wait_next onto `done` with state JOB_DONE, for resume_all once unlocked. */
static http_job *refuse_waiting(shop_http *h, http_job *j, const char *code,
                                const char *why, http_job *done)
{
    wait_unlink(&h->waiting, j);
    set_error(&j->res, 503, code, why, 1);
    j->res.route = j->rows.route;
    j->res.retries = 0;
    j->state = JOB_DONE;
    j->wait_next = done;
    h->row_wait_expired++;
    return j;
}

/* Waiting jobs past their deadline (all of them are looked at: at most
   --queue). */
static http_job *expire_waiting(shop_http *h, long long now, http_job *done)
{
    http_job *next;
    for (http_job *j = h->waiting.head; j; j = next) {
        next = j->wait_next;
        if (j->wait_until <= now)
            done = refuse_waiting(h, j, "row_busy", "a row this request needs is "
                                  "busy: other requests have been changing it for "
                                  "longer than the lock wait", done);
    }
    return done;
}

/* The earliest deadline of a waiting job, or NO_DEADLINE. */
static long long next_deadline(const shop_http *h)
{
    long long at = NO_DEADLINE;
    for (const http_job *j = h->waiting.head; j; j = j->wait_next)
        if (j->wait_until < at)
            at = j->wait_until;
    return at;
}

/* `ran` found one of its rows locked for the whole lock wait: the jobs
   waiting behind it for one of those rows are answered now, not sent to
   wait that long again (their own wait would have been the lock wait,
   then the lock wait once more). */
static http_job *refuse_behind(shop_http *h, const http_job *ran, http_job *done)
{
    http_job *next;
    for (http_job *j = h->waiting.head; j; j = next) {
        next = j->wait_next;
        if (row_keys_overlap(j->rows.key, j->rows.n, ran->rows.key, ran->rows.n))
            done = refuse_waiting(h, j, "row_busy", "a row this request needs is locked by "
                                  "another transaction", done);
    }
    return done;
}

/* Resumes the connections of a chain from expire_waiting.  Each job may be
   freed as soon as its connection is resumed: its link is read first. */
static void resume_all(http_job *done)
{
    while (done) {
        http_job *next = done->wait_next;
        MHD_resume_connection(done->conn);
        done = next;
    }
}

/* ---- the workers ----------------------------------------------------------- */

/* Until q has a job, it is closed, or the oldest waiting job's deadline
   passes (then the caller expires it: no event may be needed for that). */
static void wait_for_work(shop_http *h, job_queue *q)
{
    while (q->count == 0 && !h->closed) {
        long long until = q == &h->jobs ? next_deadline(h) : NO_DEADLINE;
        if (until == NO_DEADLINE) {
            pthread_cond_wait(&q->ready, &h->mu);
            continue;
        }
        if (until <= now_ms())
            return;
        struct timespec at = {(time_t)(until / 1000), (long)(until % 1000) * 1000000L};
        pthread_cond_timedwait(&q->ready, &h->mu, &at);
    }
}

/* The next job of q, or NULL once closed and nothing is left to run. */
static http_job *take_job(shop_http *h, job_queue *q)
{
    for (;;) {
        pthread_mutex_lock(&h->mu);
        wait_for_work(h, q);
        http_job *expired = expire_waiting(h, now_ms(), NULL);
        http_job *job = NULL;
        bool stop = q->count == 0 && h->closed;
        if (q->count > 0) {
            job = q->ring[q->head];
            q->head = (q->head + 1) % h->cap;
            q->count--;
            h->busy += q->busy;
        }
        pthread_mutex_unlock(&h->mu);
        resume_all(expired);
        if (job || stop)
            return job;
    }
}

/* The wait for a row's turn (or its lane's) ends with the lock wait it
   stands for. */
static long long wait_deadline(const shop_http *h)
{
    int ms = h->cfg->lock_timeout_ms;
    return ms > 0 ? now_ms() + ms : NO_DEADLINE;
}

/* ---- write combining (under shop_http's mu) --------------------------------- */

/* Whether the job's write may share a transaction with others of its lane. */
static bool combines(const shop_http *h, const http_job *job)
{
    return h->cfg->batch_limit > 1 && job->rows.combine.kind != 0;
}

/* The lane (see SHOP_ROW_LANE) that lets one batch of the job's row in
   flight; the others wait in h->waiting, where the next batch takes them. */
static void add_lane(const shop_http *h, http_job *job)
{
    if (combines(h, job) && job->rows.n < SHOP_ROW_KEYS_MAX)
        job->rows.key[job->rows.n++] =
            (shop_row_key){job->rows.combine.kind | SHOP_ROW_LANE, job->rows.combine.id};
}

static bool same_lane(const http_job *a, const http_job *b)
{
    return a->rows.route == b->rows.route && a->rows.combine.kind == b->rows.combine.kind &&
           a->rows.combine.id == b->rows.combine.id;
}

/* The waiting jobs of lead's lane, oldest first, up to --batch-limit in
   all: taken out of the waiting list and chained after lead on wait_next.
   They ride on lead's holds: one worker and one connection for them all.
   Returns how many jobs the batch has, lead included. */
static int take_lane(shop_http *h, http_job *lead)
{
    int n = 1;
    http_job *tail = lead, *next;
    lead->wait_next = NULL;
    if (!combines(h, lead))
        return 1;
    for (http_job *j = h->waiting.head; j && n < h->cfg->batch_limit; j = next) {
        next = j->wait_next;
        if (!same_lane(j, lead))
            continue;
        wait_unlink(&h->waiting, j);
        j->wait_next = NULL;
        tail->wait_next = j;
        tail = j;
        n++;
    }
    int bucket = 0;
    while ((1 << bucket) < n && bucket < SHOP_BATCH_BUCKETS - 1)
        bucket++;
    h->batches[bucket]++;
    h->batch_calls += n;
    if (n > h->batch_largest)
        h->batch_largest = n;
    return n;
}

/* A transaction of lead's lane ended without finding the row locked: the
   jobs still waiting in the lane wait the lock wait anew from now.  Their
   deadline stands for the row being held elsewhere, not for the batches
   ahead of them, which take the oldest first, up to --batch-limit each. */
static void lane_progressed(shop_http *h, const http_job *lead)
{
    long long until = wait_deadline(h);
    for (http_job *j = h->waiting.head; j; j = j->wait_next)
        if (same_lane(j, lead))
            j->wait_until = until;
}

/* The job ran: its rows' places go to the jobs waiting for them. */
static http_job *release_rows(shop_http *h, http_job *job)
{
    http_job *refused = NULL;
    if (job->rows_held) {
        row_gate_leave(h->gate, job->rows.key, job->rows.n);
        job->rows_held = false;
        if (job->res.code && strcmp(job->res.code, "row_busy") == 0)
            refused = refuse_behind(h, job, refused);
        else if (combines(h, job))
            lane_progressed(h, job);
    }
    refused = expire_waiting(h, now_ms(), refused);
    admit_waiting(h);
    return refused;
}

/* Run q's jobs until it is closed and empty. */
static void serve_queue(shop_http *h, job_queue *q)
{
    http_job *job;
    while ((job = take_job(h, q)) != NULL) {
        pthread_mutex_lock(&h->mu);
        int n = q == &h->jobs ? take_lane(h, job) : 1;
        pthread_mutex_unlock(&h->mu);
        if (n > 1 || combines(h, job))
            run_batch(h, job, n);
        else
            run_job(h, job);
        /* Once resumed, the event thread may answer and free a job at any
           moment: nothing of it is touched after MHD_resume_connection. */
        struct MHD_Connection *conns[PGTX_BATCH_SAVEPOINT_MAX];
        int k = 0;
        pthread_mutex_lock(&h->mu);
        http_job *expired = release_rows(h, job);
        for (http_job *j = job; j && k < n; j = j->wait_next) {
            conns[k++] = j->conn;
            j->state = JOB_DONE;
        }
        h->busy -= q->busy;
        pthread_mutex_unlock(&h->mu);
        for (int i = 0; i < k; i++)
            MHD_resume_connection(conns[i]);
        resume_all(expired);
    }
}

static void *worker_main(void *arg)
{
    shop_http *h = arg;
    serve_queue(h, &h->jobs);
    return NULL;
}

/* ---- /healthz's own lane ---------------------------------------------------- */

/* /healthz runs on a thread and a connection of its own: a live database
   must not look dead because every worker and pooled connection is taken
   (requests waiting on a row another client keeps locked, a burst).  Its
   jobs are suspended and resumed like the workers' (h->suspended). */
static void *health_main(void *arg)
{
    shop_http *h = arg;
    serve_queue(h, &h->health_jobs);
    return NULL;
}

/* ---- the event thread ---------------------------------------------------- */

typedef struct framing {
    int content_length;
    int transfer_encoding;
    int authorization;
    bool chunked_only;   /* every Transfer-Encoding says just "chunked" */
    const char *invalid; /* why a header line is refused, or NULL */
} framing;

/* RFC 9110 5.6.2: a field name is a token.  MHD keeps "Content-Length "
   (space before the colon) as a name of its own, which a lenient proxy
   would read as the framing header: refusing it closes that gap. */
static bool is_token(const char *s, size_t len)
{
    static const char punct[] = "!#$%&'*+-.^_`|~";
    if (len == 0)
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        bool alnum = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') ||
                     (c >= 'A' && c <= 'Z');
        if (!alnum && (c == '\0' || strchr(punct, c) == NULL))
            return false;
    }
    return true;
}

/* RFC 9110 5.5: visible characters, space, tab and obs-text; no control
   character (a NUL, a bare CR, DEL). */
static bool is_field_value(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if ((c < 0x20 && c != '\t') || c == 0x7f)
            return false;
    }
    return true;
}

static enum MHD_Result count_framing(void *cls, enum MHD_ValueKind kind,
                                     const char *key, size_t key_size,
                                     const char *value, size_t value_size)
{
    (void)kind;
    framing *f = cls;
    if (!is_token(key, key_size))
        f->invalid = "a header name that is not a token (RFC 9110 5.6.2)";
    else if (value && !is_field_value(value, value_size))
        f->invalid = "a control character in a header value";
    if (strcasecmp(key, MHD_HTTP_HEADER_CONTENT_LENGTH) == 0)
        f->content_length++;
    if (strcasecmp(key, MHD_HTTP_HEADER_AUTHORIZATION) == 0)
        f->authorization++;
    if (strcasecmp(key, MHD_HTTP_HEADER_TRANSFER_ENCODING) == 0) {
        f->transfer_encoding++;
        if (value == NULL || strcasecmp(value, "chunked") != 0)
            f->chunked_only = false;
    }
    return MHD_YES;
}

/* Why the request's header section cannot be trusted (a request smuggling
   vector: what follows may be framed differently by a proxy in front), or
   NULL when it is sound. */
static const char *framing_error(struct MHD_Connection *conn)
{
    framing f = {0, 0, 0, true, NULL};
    MHD_get_connection_values_n(conn, MHD_HEADER_KIND, count_framing, &f);
    if (f.invalid)
        return f.invalid;
    if (f.content_length > 1)
        return "more than one Content-Length header";
    if (f.content_length && f.transfer_encoding)
        return "Content-Length together with Transfer-Encoding";
    if (f.transfer_encoding > 1 || !f.chunked_only)
        return "unsupported Transfer-Encoding";
    if (f.authorization > 1)
        return "more than one Authorization header";
    return NULL;
}

/* The Content-Length value, or -1 when there is none (or MHD's own check
   will refuse it); saturates at INT64_MAX. */
static long long declared_length(struct MHD_Connection *conn)
{
    const char *cl =
        MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (cl == NULL)
        return -1;
    size_t digits = strspn(cl, "0123456789");
    if (digits == 0 || cl[digits] != '\0')
        return -1;
    return digits > 18 ? INT64_MAX : strtoll(cl, NULL, 10);
}

static bool expects_continue(struct MHD_Connection *conn)
{
    const char *e = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_EXPECT);
    return e && strcasecmp(e, "100-continue") == 0;
}

static bool is_loopback(struct MHD_Connection *conn)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    if (ci == NULL || ci->client_addr == NULL)
        return false;
    if (ci->client_addr->sa_family == AF_INET) {
        struct sockaddr_in in;
        memcpy(&in, ci->client_addr, sizeof in);
        return (ntohl(in.sin_addr.s_addr) >> 24) == 127;
    }
    if (ci->client_addr->sa_family == AF_INET6) {
        struct sockaddr_in6 in6;
        memcpy(&in6, ci->client_addr, sizeof in6);
        return IN6_IS_ADDR_LOOPBACK(&in6.sin6_addr) ||
               (IN6_IS_ADDR_V4MAPPED(&in6.sin6_addr) && in6.sin6_addr.s6_addr[12] == 127);
    }
    return false;
}

static const char *header(struct MHD_Connection *conn, const char *name)
{
    return MHD_lookup_connection_value(conn, MHD_HEADER_KIND, name);
}

static http_job *job_new(struct MHD_Connection *conn, const char *url,
                         const char *method)
{
    http_job *job = calloc(1, sizeof *job);
    if (job == NULL)
        return NULL;
    clock_gettime(CLOCK_MONOTONIC, &job->started);
    job->conn = conn;
    job->state = JOB_READING;
    job->content_type = "application/json";
    job->method = method;
    /* HEAD is GET without the body (RFC 9110), which MHD leaves out. */
    job->req = (shop_request){
        .method = strcmp(method, MHD_HTTP_METHOD_HEAD) == 0 ? MHD_HTTP_METHOD_GET : method,
        .path = url,
        .authorization = header(conn, MHD_HTTP_HEADER_AUTHORIZATION),
        .strategy = header(conn, "Pgtx-Strategy"),
        .idempotency_key = header(conn, "Idempotency-Key"),
        .commit_lsn = header(conn, "Pgtx-Commit-LSN"),
    };
    job->res = response_new();
    job->loopback = is_loopback(conn);
    return job;
}

static void job_free(http_job *job)
{
    free(job->buf);
    free(job->res.body);
    free(job);
}

static enum MHD_Result on_headers(shop_http *h, struct MHD_Connection *conn,
                                  const char *url, const char *method,
                                  void **req_cls)
{
    conn_phase_set(&h->guard, conn, CONN_BUSY, false);
    http_job *job = job_new(conn, url, method);
    if (job == NULL)
        return MHD_NO; /* out of memory: MHD drops the connection */
    *req_cls = job;
    job->id = atomic_fetch_add(&h->requests, 1) + 1;
    const char *why = framing_error(conn);
    if (why)
        return answer_now(h, job, 400, "bad_request", why);
    long long declared = declared_length(conn);
    if (declared < 0 || (unsigned long long)declared <= h->cfg->max_body)
        return MHD_YES;
    /* Too large.  A client that waits for 100 Continue, or one that would
       send more than we care to drop, is answered now; any other is still
       sending, and closing on it could reset the connection before it reads
       the 413, so its body is read and dropped first (on_body). */
    if (expects_continue(conn) ||
        (unsigned long long)declared - h->cfg->max_body > DRAIN_LIMIT)
        return answer_now(h, job, 413, "body_too_large",
                          "the request body is larger than the server accepts");
    job->too_large = true;
    return MHD_YES;
}

/* Whether a too-large body is still within the drain bounds; past them
   the connection is cut, with no answer. */
static bool draining(const shop_http *h, const http_job *job)
{
    size_t seen = job->req.body_len + job->discarded;
    if (seen > h->cfg->max_body && seen - h->cfg->max_body > DRAIN_LIMIT)
        return false;
    return seconds_since(&job->started) <= DRAIN_SECONDS;
}

static enum MHD_Result on_body(shop_http *h, http_job *job, const char *data,
                               size_t *size)
{
    size_t n = *size;
    *size = 0;
    if (job->too_large || n > h->cfg->max_body - job->req.body_len) {
        job->too_large = true;
        job->discarded += n;
        return draining(h, job) ? MHD_YES : MHD_NO;
    }
    if (job->req.body_len + n > job->cap) {
        size_t cap = job->cap ? job->cap : 1024;
        while (cap < job->req.body_len + n)
            cap *= 2;
        char *grown = realloc(job->buf, cap);
        if (grown == NULL)
            return MHD_NO;
        job->buf = grown;
        job->cap = cap;
    }
    memcpy(job->buf + job->req.body_len, data, n);
    job->req.body_len += n;
    return MHD_YES;
}

typedef enum placement {
    PLACE_RING,    /* queued for a worker (holding its rows' places) */
    PLACE_WAIT,    /* its rows are busy: it waits for their turn */
    PLACE_FULL,    /* no room, or shutting down: 503 overloaded */
    PLACE_NOMEM
} placement;

/* Where the job goes, with the rows' places taken for PLACE_RING. */
static placement place_job(shop_http *h, job_queue *q, http_job *job)
{
    /* --queue bounds every request waiting, for a worker or its row's turn
       (so the ring always has room for the jobs admit_waiting moves). */
    int waiting = q->count + (q == &h->jobs ? h->waiting.count : 0);
    if (h->closed || waiting >= h->cap)
        return PLACE_FULL;
    if (q != &h->jobs || job->rows.n == 0)
        return PLACE_RING;
    switch (row_gate_enter(h->gate, job->rows.key, job->rows.n)) {
    case ROW_GATE_ENTERED:
        job->rows_held = true;
        return PLACE_RING;
    case ROW_GATE_FULL:
        return PLACE_WAIT;
    case ROW_GATE_NOMEM:
        break;
    }
    return PLACE_NOMEM;
}

/* Suspend the request and queue it on q (or among the jobs waiting for
   their rows), or say at once that there is no room (`waiting` names what
   waits, for the 503's message). */
static enum MHD_Result put_job(shop_http *h, job_queue *q, http_job *job,
                               const char *waiting)
{
    pthread_mutex_lock(&h->mu);
    placement p = place_job(h, q, job);
    if (p == PLACE_FULL || p == PLACE_NOMEM) {
        pthread_mutex_unlock(&h->mu);
        char msg[80];
        snprintf(msg, sizeof msg, "too many %s are waiting; retry shortly", waiting);
        return answer_now(h, job, 503, "overloaded",
                          p == PLACE_NOMEM ? "out of memory" : msg);
    }
    MHD_suspend_connection(job->conn);
    job->state = JOB_QUEUED;
    h->suspended++;
    if (p == PLACE_RING) {
        ring_push(h, q, job);
    } else {
        job->wait_until = wait_deadline(h);
        wait_push(&h->waiting, job);
        h->row_waits++;
        /* A worker idle with no deadline to watch must now watch this one. */
        pthread_cond_signal(&q->ready);
    }
    pthread_mutex_unlock(&h->mu);
    return MHD_YES;
}

/* The whole request is in: suspend it and queue it for a worker, or say
   at once that there is no room. */
static enum MHD_Result dispatch(shop_http *h, http_job *job)
{
    if (job->too_large)
        return answer_now(h, job, 413, "body_too_large",
                          "the request body is larger than the server accepts");
    job->req.body = job->req.body_len ? job->buf : NULL;
    shop_request_rows_of(&job->req, &job->rows);
    add_lane(h, job);
    /* A /healthz goes to its own thread's queue, never the workers'. */
    if (strcmp(job->req.path, "/healthz") == 0)
        return put_job(h, &h->health_jobs, job, "health checks");
    return put_job(h, &h->jobs, job, "requests");
}

/* The connection left suspension for good (answered, or its client hung
   up while the worker ran): a shutdown no longer waits for it. */
static void settle(shop_http *h)
{
    pthread_mutex_lock(&h->mu);
    h->suspended--;
    pthread_cond_broadcast(&h->settled);
    pthread_mutex_unlock(&h->mu);
}

/* The worker is done and the connection is back: send its answer. */
static enum MHD_Result answer_done(shop_http *h, http_job *job)
{
    settle(h);
    return send_response(h, job, false);
}

static job_state state_of(shop_http *h, const http_job *job)
{
    pthread_mutex_lock(&h->mu);
    job_state s = job->state;
    pthread_mutex_unlock(&h->mu);
    return s;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn,
                                  const char *url, const char *method,
                                  const char *version, const char *upload,
                                  size_t *upload_size, void **req_cls)
{
    (void)version;
    shop_http *h = cls;
    http_job *job = *req_cls;
    if (job == NULL)
        return on_headers(h, conn, url, method, req_cls);
    switch (state_of(h, job)) {
    case JOB_READING:
        if (*upload_size > 0)
            return on_body(h, job, upload, upload_size);
        return dispatch(h, job);
    case JOB_DONE:
        return answer_done(h, job);
    case JOB_QUEUED:
    case JOB_ANSWERED:
        break;
    }
    *upload_size = 0; /* answered already: whatever else comes is dropped */
    return MHD_YES;
}

static void log_request(const http_job *job, int status, double secs,
                        enum MHD_RequestTerminationCode toe)
{
    char retries[16] = "-", who[24] = "-", line[320];
    if (job->res.retries >= 0)
        snprintf(retries, sizeof retries, "%d", job->res.retries);
    if (job->res.who == 0)
        snprintf(who, sizeof who, "admin");
    else if (job->res.who > 0)
        snprintf(who, sizeof who, "%lld", (long long)job->res.who);
    snprintf(line, sizeof line,
             "req=%llu method=%s route=\"%s\" status=%d%s%s dur_ms=%.1f retries=%s "
             "strategy=%s who=%s%s",
             job->id, job->method, job->res.route ? job->res.route : "unknown", status,
             job->res.code ? " code=" : "", job->res.code ? job->res.code : "",
             secs * 1e3, retries, job->res.strategy ? job->res.strategy : "-", who,
             toe == MHD_REQUEST_TERMINATED_COMPLETED_OK ? "" : " aborted=1");
    shop_log_fields(SHOP_LOG_INFO, line);
}

/* Per-request state ends here, never in the handler (MHD may call the
   handler again for the same request). */
static void on_completed(void *cls, struct MHD_Connection *conn, void **req_cls,
                         enum MHD_RequestTerminationCode toe)
{
    shop_http *h = cls;
    /* Between requests now (or about to close, which CLOSED then says). */
    conn_phase_set(&h->guard, conn, CONN_IDLE, false);
    http_job *job = *req_cls;
    if (job == NULL)
        return;
    *req_cls = NULL;
    job_state st = state_of(h, job);
    if (st == JOB_QUEUED) {
        /* A worker still holds it (only if the daemon was stopped with a
           request in flight): leaking beats a use after free. */
        shop_log(SHOP_LOG_ERROR, "request abandoned while running on a worker");
        return;
    }
    /* Resumed, but the client had gone: MHD closes it without asking for
       the answer, so answer_done never ran. */
    if (st == JOB_DONE)
        settle(h);
    double secs = seconds_since(&job->started);
    int status = st == JOB_ANSWERED ? job->res.status : 0;
    if (st == JOB_ANSWERED)
        shop_metrics_request(h->metrics, job->res.route, status, secs);
    log_request(job, status, secs, toe);
    job_free(job);
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static bool unreserved(int c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_' || c == '~';
}

/* Decodes only what RFC 3986 calls unreserved (%31 is "1").  MHD's own
   decoder turns %00 into a NUL that cuts the path short ("/v1/accounts/1%00"
   would read as "/v1/accounts/1") and %2F into a separator; left encoded,
   such paths match no route. */
static size_t unescape_path(void *cls, struct MHD_Connection *conn, char *s)
{
    (void)cls;
    (void)conn;
    size_t o = 0;
    for (size_t i = 0; s[i]; i++) {
        int hi = s[i] == '%' ? hex_value(s[i + 1]) : -1;
        int lo = hi >= 0 ? hex_value(s[i + 2]) : -1;
        if (lo >= 0 && unreserved(hi * 16 + lo)) {
            s[o++] = (char)(hi * 16 + lo);
            i += 2;
        } else {
            s[o++] = s[i];
        }
    }
    s[o] = '\0';
    return o;
}

SHOP_PRINTF(2, 0)
static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t n = strlen(msg);
    while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == '\r'))
        msg[--n] = '\0';
    /* Mostly clients' protocol errors, which are not ours to warn about. */
    shop_log(SHOP_LOG_INFO, "http: %s", msg);
}

/* ---- start and stop -------------------------------------------------------- */

static bool start_workers(shop_http *h, int n)
{
    h->workers = calloc((size_t)n, sizeof *h->workers);
    if (h->workers == NULL)
        return false;
    for (; h->nworkers < n; h->nworkers++)
        if (pthread_create(&h->workers[h->nworkers], NULL, worker_main, h) != 0)
            return false;
    return true;
}

/* The workers finish what is queued and leave; dispatch answers 503 from
   now on. */
static void stop_workers(shop_http *h)
{
    pthread_mutex_lock(&h->mu);
    h->closed = true;
    pthread_cond_broadcast(&h->jobs.ready);
    pthread_cond_broadcast(&h->health_jobs.ready);
    pthread_mutex_unlock(&h->mu);
    for (int i = 0; i < h->nworkers; i++)
        pthread_join(h->workers[i], NULL);
    h->nworkers = 0;
    if (h->health_started)
        pthread_join(h->health_thread, NULL);
    h->health_started = false;
}

static bool create_health_engine(shop_http *h, char *err, size_t errlen)
{
    pgtx_engine_options opt;
    pgtx_engine_options_init(&opt);
    opt.read_only = true;
    opt.statement_timeout_ms = h->cfg->pool_timeout_ms;
    opt.retry.max_attempts = 1;
    pgtx_error e;
    if (pgtx_engine_create(h->pool, &opt, &h->health, &e) != PGTX_OK ||
        pgtx_engine_create(h->health_pool, &opt, &h->health_own, &e) != PGTX_OK) {
        snprintf(err, errlen, "cannot create the health check engine: %s", e.message);
        return false;
    }
    h->health_started =
        pthread_create(&h->health_thread, NULL, health_main, h) == 0;
    if (!h->health_started)
        snprintf(err, errlen, "cannot start the health check thread");
    return h->health_started;
}

static bool init_sync(shop_http *h)
{
    pthread_condattr_t ca;
    if (pthread_condattr_init(&ca) != 0)
        return false;
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    bool ok = pthread_mutex_init(&h->mu, NULL) == 0 &&
              pthread_cond_init(&h->jobs.ready, &ca) == 0 &&
              pthread_cond_init(&h->health_jobs.ready, NULL) == 0 &&
              pthread_cond_init(&h->settled, &ca) == 0 && guard_init(&h->guard);
    pthread_condattr_destroy(&ca);
    return ok;
}

/* ---- the listening socket -------------------------------------------------- */

struct shop_listener {
    int fd;
    int port;       /* bound: the real one when port 0 was asked */
    int family;
    char addr[300]; /* HOST:PORT as asked, for messages */
};

static void in_use(const shop_listener *l, char *err, size_t errlen)
{
    snprintf(err, errlen, "cannot listen on %s: address already in use "
             "(--reuse-port on every process shares it)", l->addr);
}

static void cannot(const shop_listener *l, const char *what, char *err, size_t errlen)
{
    snprintf(err, errlen, "cannot listen on %s: %s: %s", l->addr, what, strerror(errno));
}

static bool set_option(int fd, int level, int name)
{
    int one = 1;
    return setsockopt(fd, level, name, &one, sizeof one) == 0;
}

/* SO_REUSEADDR lets a restart bind past the last run's TIME_WAIT
   connections; on Linux it never lets two sockets listen on one address.
   SO_REUSEPORT does, and only among sockets that all asked for it. */
static bool bind_socket(shop_listener *l, const struct sockaddr_storage *ss,
                        socklen_t len, bool reuse_port, char *err, size_t errlen)
{
    l->fd = socket(ss->ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (l->fd < 0) {
        cannot(l, "socket", err, errlen);
        return false;
    }
    if (!set_option(l->fd, SOL_SOCKET, SO_REUSEADDR) ||
        (reuse_port && !set_option(l->fd, SOL_SOCKET, SO_REUSEPORT)) ||
        (ss->ss_family == AF_INET6 && !set_option(l->fd, IPPROTO_IPV6, IPV6_V6ONLY))) {
        cannot(l, "setsockopt", err, errlen);
        return false;
    }
    if (bind(l->fd, (const struct sockaddr *)ss, len) != 0) {
        if (errno == EADDRINUSE)
            in_use(l, err, errlen);
        else
            cannot(l, "bind", err, errlen);
        return false;
    }
    return true;
}

static bool bound_port(shop_listener *l, char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    if (getsockname(l->fd, (struct sockaddr *)&ss, &len) != 0) {
        cannot(l, "getsockname", err, errlen);
        return false;
    }
    l->port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                             : ((struct sockaddr_in *)&ss)->sin_port);
    return true;
}

shop_listener *shop_listener_bind(const shop_config *cfg, bool reuse_port, char *err,
                                  size_t errlen)
{
    struct sockaddr_storage ss;
    socklen_t len;
    if (!shop_listen_resolve(cfg->listen_host, cfg->listen_port, &ss, &len)) {
        snprintf(err, errlen, "cannot resolve %s", cfg->listen_host);
        return NULL;
    }
    shop_listener *l = calloc(1, sizeof *l);
    if (l == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    bool v6 = strchr(cfg->listen_host, ':') != NULL;
    snprintf(l->addr, sizeof l->addr, "%s%s%s:%d", v6 ? "[" : "", cfg->listen_host,
             v6 ? "]" : "", cfg->listen_port);
    l->family = ss.ss_family;
    if (!bind_socket(l, &ss, len, reuse_port, err, errlen) || !bound_port(l, err, errlen)) {
        shop_listener_close(l);
        return NULL;
    }
    return l;
}

void shop_listener_close(shop_listener *l)
{
    if (l == NULL)
        return;
    if (l->fd >= 0)
        close(l->fd);
    free(l);
}

/* Listening only now, not at bind time: a process sharing the port gets
   no connections before it can answer them. */
static bool start_listening(shop_listener *l, char *err, size_t errlen)
{
    if (listen(l->fd, SOMAXCONN) != 0) {
        if (errno == EADDRINUSE) /* bound beside another that listened first */
            in_use(l, err, errlen);
        else
            cannot(l, "listen", err, errlen);
        return false;
    }
    if (fcntl(l->fd, F_SETFL, fcntl(l->fd, F_GETFL) | O_NONBLOCK) != 0) {
        cannot(l, "fcntl", err, errlen);
        return false;
    }
    return true;
}

/* Takes the listener: MHD owns its socket from here on. */
static bool start_daemon(shop_http *h, shop_listener *l, char *err, size_t errlen)
{
    if (!start_listening(l, err, errlen)) {
        shop_listener_close(l);
        return false;
    }
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL |
                     MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    if (l->family == AF_INET6)
        flags |= MHD_USE_IPv6;
    errno = 0;
    h->daemon = MHD_start_daemon(
        flags, (uint16_t)l->port, on_accept, &h->guard, on_request, h,
        MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, h, /* first: MHD wants it so */
        MHD_OPTION_LISTEN_SOCKET, (MHD_socket)l->fd,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, h,
        MHD_OPTION_CONNECTION_TIMEOUT, IDLE_TIMEOUT_S,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)h->guard.max,
        MHD_OPTION_NOTIFY_CONNECTION, on_connection, &h->guard,
        MHD_OPTION_URI_LOG_CALLBACK, on_request_line, &h->guard,
        MHD_OPTION_STRICT_FOR_CLIENT, 1,
        MHD_OPTION_UNESCAPE_CALLBACK, unescape_path, h,
        MHD_OPTION_END);
    h->port = l->port;
    if (h->daemon == NULL)
        snprintf(err, errlen, "cannot serve on %s (%s)", l->addr,
                 errno ? strerror(errno) : "see above");
    /* MHD owns the socket now, and on failure may have closed it already:
       leaving it open is harmless, as the process is on its way out. */
    l->fd = -1;
    shop_listener_close(l);
    return h->daemon != NULL;
}

static void http_free(shop_http *h)
{
    stop_workers(h);
    guard_stop(&h->guard);
    if (h->daemon)
        MHD_stop_daemon(h->daemon);
    guard_destroy(&h->guard);
    if (h->listen_fd != MHD_INVALID_SOCKET)
        close(h->listen_fd);
    pgtx_engine_destroy(h->health);
    pgtx_engine_destroy(h->health_own);
    pthread_cond_destroy(&h->settled);
    pthread_cond_destroy(&h->health_jobs.ready);
    pthread_cond_destroy(&h->jobs.ready);
    pthread_mutex_destroy(&h->mu);
    row_gate_destroy(h->gate);
    free(h->workers);
    free(h->jobs.ring);
    free(h->health_jobs.ring);
    free(h);
}

shop_http *shop_http_start(const shop_config *cfg, const shop_process_config *proc,
                           shop_listener *l, shop_app *app,
                           pgtx_pool *pool, pgtx_pool *health_pool,
                           shop_metrics *metrics, char *err, size_t errlen)
{
    shop_http *h = calloc(1, sizeof *h);
    if (h == NULL || !init_sync(h)) {
        free(h);
        shop_listener_close(l);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    h->cfg = cfg;
    guard_configure(&h->guard, cfg, proc);
    h->app = app;
    h->pool = pool;
    h->health_pool = health_pool;
    h->metrics = metrics;
    h->listen_fd = MHD_INVALID_SOCKET;
    h->cap = cfg->queue_size;
    h->jobs.busy = true;
    h->jobs.ring = calloc((size_t)h->cap, sizeof *h->jobs.ring);
    h->health_jobs.ring = calloc((size_t)h->cap, sizeof *h->health_jobs.ring);
    h->gate = row_gate_create(ROW_IN_FLIGHT);
    if (h->jobs.ring == NULL || h->health_jobs.ring == NULL || h->gate == NULL ||
        !start_workers(h, cfg->threads)) {
        snprintf(err, errlen, "cannot start %d worker threads", cfg->threads);
        shop_listener_close(l);
        http_free(h);
        return NULL;
    }
    if (!create_health_engine(h, err, errlen)) {
        shop_listener_close(l);
        http_free(h);
        return NULL;
    }
    if (!guard_start(&h->guard)) {
        snprintf(err, errlen, "cannot start the connection sweeper thread");
        shop_listener_close(l);
        http_free(h);
        return NULL;
    }
    if (!start_daemon(h, l, err, errlen)) {
        http_free(h);
        return NULL;
    }
    return h;
}

int shop_http_port(const shop_http *h)
{
    return h->port;
}

/* Waits until nothing is queued, running or suspended, at most ms. */
static bool wait_settled(shop_http *h, int ms)
{
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += ms / 1000;
    deadline.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&h->mu);
    int rc = 0;
    while ((h->jobs.count || h->busy || h->suspended) && rc != ETIMEDOUT)
        rc = pthread_cond_timedwait(&h->settled, &h->mu, &deadline);
    bool ok = !(h->jobs.count || h->busy || h->suspended);
    pthread_mutex_unlock(&h->mu);
    return ok;
}

bool shop_http_stop(shop_http *h, int drain_ms)
{
    atomic_store(&h->draining, true);
    h->listen_fd = MHD_quiesce_daemon(h->daemon);
    bool drained = wait_settled(h, drain_ms);
    if (!drained)
        shop_log(SHOP_LOG_WARN, "requests still running after %d ms; waiting for them",
                 drain_ms);
    /* Joining the workers waits for the requests still on them; the pool's
       checkout timeout and the retry budget bound that. */
    stop_workers(h);
    if (!wait_settled(h, 2000))
        shop_log(SHOP_LOG_ERROR, "connections still suspended at shutdown");
    http_free(h);
    return drained;
}
