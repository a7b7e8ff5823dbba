/* main.c — pgtx-shop: configuration, database (given or embedded), pool,
   migrations, admin token, app and HTTP server; then it waits for SIGTERM or
   SIGINT and takes everything down in the reverse order. */
#include "server.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdatomic.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "localpg.h"
#include "notify.h"

/* The longest a read waits for a standby's connection before the primary
   answers it instead. */
#define READ_WAIT_MS 1000
/* How long start-up keeps trying to reach the database. */
#define CONNECT_WAIT_MS 5000
/* How long shutdown waits for requests in flight. */
#define DRAIN_MS 10000
/* Connections the embedded cluster allows beyond the pool's: migrations,
   psql, a test's invariant checks. */
#define EMBEDDED_HEADROOM 20
#define TOKEN_BYTES 32
#define TOKEN_FILE "admin-token"

typedef struct service {
    shop_config cfg;
    shop_process_config proc;
    shop_listener *listener; /* owned until start_http hands it over */
    lpg_cluster *cluster;   /* owned when the database is embedded */
    const char *conninfo;   /* borrowed from cfg or the cluster */
    pgtx_pool *pool;        /* owned, like the four below */
    pgtx_pool *health_pool; /* /healthz's one connection */
    pgtx_pool *read_pool;   /* --read-database's standbys, or NULL */
    shop_metrics *metrics;
    shop_app *app;
    shop_http *http;
    char token[256];
    char token_where[PATH_MAX + 64]; /* where the token came from */
    bool token_shown;       /* generated or read from our file: print it */
} service;

/* ---- signals: the handler only records; main does the work -------------- */

static volatile sig_atomic_t stop_requested;
static int signal_pipe[2] = {-1, -1};

static void on_signal(int sig)
{
    (void)sig;
    int saved = errno;
    stop_requested = 1;
    ssize_t n = write(signal_pipe[1], "x", 1);
    (void)n; /* a full pipe already holds a wake-up */
    errno = saved;
}

static bool set_flags(int fd)
{
    return fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) == 0 &&
           fcntl(fd, F_SETFD, FD_CLOEXEC) == 0;
}

static bool install_signals(void)
{
    if (pipe(signal_pipe) != 0 || !set_flags(signal_pipe[0]) ||
        !set_flags(signal_pipe[1]))
        return false;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    /* A log reader that goes away must not kill the server mid-request;
       the cluster's own processes get default signals back (localpg). */
    struct sigaction ign;
    memset(&ign, 0, sizeof ign);
    ign.sa_handler = SIG_IGN;
    sigemptyset(&ign.sa_mask);
    return sigaction(SIGINT, &sa, NULL) == 0 && sigaction(SIGTERM, &sa, NULL) == 0 &&
           sigaction(SIGPIPE, &ign, NULL) == 0;
}

/* A second Ctrl-C during shutdown kills the process at once (the embedded
   cluster is then stopped by the next start). */
static void wait_for_signal(void)
{
    struct pollfd p = {.fd = signal_pipe[0], .events = POLLIN};
    while (!stop_requested)
        poll(&p, 1, -1);
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
}

static void close_signal_pipe(void)
{
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    close(signal_pipe[0]);
    close(signal_pipe[1]);
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- the address, first: a busy one stops us before anything starts ------ */

static bool bind_address(service *s)
{
    char err[400];
    s->listener = shop_listener_bind(&s->cfg, s->proc.reuse_port, err, sizeof err);
    if (s->listener == NULL) {
        fprintf(stderr, "pgtx-shop: %s\n", err);
        return false;
    }
    return true;
}

/* ---- the database ---------------------------------------------------------- */

static bool start_embedded(service *s)
{
    lpg_options o;
    lpg_options_init(&o);
    o.data_dir = s->cfg.data_dir;
    o.max_connections = s->cfg.pool_size + s->cfg.max_overflow + 1 /* /healthz */ +
                        EMBEDDED_HEADROOM;
    lpg_error e;
    if (lpg_start(&o, &s->cluster, &e) != LPG_OK) {
        fprintf(stderr, "pgtx-shop: cannot start the embedded PostgreSQL in %s: %s\n",
                s->cfg.data_dir, e.message);
        return false;
    }
    shop_log(SHOP_LOG_INFO, "embedded PostgreSQL in %s%s", lpg_data_dir(s->cluster),
             lpg_created(s->cluster) ? " (created now)" : "");
    s->conninfo = lpg_conninfo(s->cluster);
    return true;
}

static bool open_database(service *s)
{
    if (s->cfg.database) { /* "" is libpq's own PG* defaults */
        s->conninfo = s->cfg.database;
        return true;
    }
    return start_embedded(s);
}

/* Set while start-up waits for the database: one line says so, rather
   than one per failed attempt. */
static atomic_bool pool_quiet;

static void on_pool_log(void *arg, pgtx_log_level level, const char *msg)
{
    (void)arg;
    if (atomic_load(&pool_quiet))
        return;
    shop_log(level == PGTX_LOG_WARNING ? SHOP_LOG_WARN
             : level == PGTX_LOG_INFO  ? SHOP_LOG_INFO
                                       : SHOP_LOG_DEBUG, "%s", msg);
}

/* The health check's pool says nothing above debug: an outage is told by
   the main pool once, and by /healthz's own line per failed probe. */
static void on_health_pool_log(void *arg, pgtx_log_level level, const char *msg)
{
    (void)arg;
    (void)level;
    shop_log(SHOP_LOG_DEBUG, "healthz %s", msg);
}

/* A pool's settings from the command line's. */
static void pool_config(const service *s, const char *conninfo, const char *app,
                        pgtx_pool_config *pc)
{
    pgtx_pool_config_init(pc);
    pc->conninfo = conninfo;
    pc->application_name = app;
    pc->pool_size = s->cfg.pool_size;
    pc->max_overflow = s->cfg.max_overflow;
    pc->idle_timeout_ms = s->cfg.idle_timeout_ms;
    pc->statement_cache_size = s->cfg.statement_cache;
    pc->checkout_timeout_ms = s->cfg.pool_timeout_ms;
    pc->socket_timeout_ms = s->cfg.db_timeout_ms;
    pc->log = on_pool_log;
}

/* The standbys' pool is sized like the primary's: a GET that finds it
   behind or down goes to the primary instead, so it never has to wait
   for one long.  Opened lazily, like the other: a standby that is down at
   start-up only sends reads to the primary. */
static bool create_read_pool(service *s)
{
    if (s->cfg.read_database == NULL)
        return true;
    pgtx_pool_config pc;
    pool_config(s, s->cfg.read_database, "pgtx-shop-read", &pc);
    /* a standby is a shortcut, never worth a long wait: the primary can
       always answer instead */
    if (pc.checkout_timeout_ms > READ_WAIT_MS)
        pc.checkout_timeout_ms = READ_WAIT_MS;
    pc.connect_timeout_ms = READ_WAIT_MS;
    pgtx_error e;
    if (pgtx_pool_create(&pc, &s->read_pool, &e) != PGTX_OK) {
        fprintf(stderr, "pgtx-shop: cannot create the read pool: %s\n", e.message);
        return false;
    }
    return true;
}

static bool create_pool(service *s)
{
    pgtx_pool_config pc;
    pool_config(s, s->conninfo, "pgtx-shop", &pc);
    pgtx_error e;
    if (pgtx_pool_create(&pc, &s->pool, &e) != PGTX_OK) {
        fprintf(stderr, "pgtx-shop: cannot create the connection pool: %s\n", e.message);
        return false;
    }
    /* /healthz's own connection, opened on the first probe: it answers
       while every pooled one is taken. */
    pc.pool_size = 1;
    pc.max_overflow = 0;
    pc.statement_cache_size = 0;
    pc.log = on_health_pool_log;
    if (pgtx_pool_create(&pc, &s->health_pool, &e) != PGTX_OK) {
        fprintf(stderr, "pgtx-shop: cannot create the health check pool: %s\n", e.message);
        return false;
    }
    return create_read_pool(s);
}

/* A database that is still starting (a container next door) gets a few
   seconds before we give up. */
static bool wait_for_database(service *s)
{
    long long deadline = now_ms() + CONNECT_WAIT_MS;
    atomic_store(&pool_quiet, true);
    for (int attempt = 0;; attempt++) {
        pgtx_conn *c;
        pgtx_error e;
        if (pgtx_pool_checkout(s->pool, 1000, &c, &e) == PGTX_OK) {
            pgtx_pool_return(c);
            atomic_store(&pool_quiet, false);
            return true;
        }
        if (stop_requested || now_ms() >= deadline) {
            atomic_store(&pool_quiet, false);
            fprintf(stderr, "pgtx-shop: cannot reach the database (tried for %d s): %s\n",
                    CONNECT_WAIT_MS / 1000, e.message);
            return false;
        }
        if (attempt == 0)
            shop_log(SHOP_LOG_WARN, "database not reachable yet, retrying for %d s: %s",
                     CONNECT_WAIT_MS / 1000, e.message);
        sleep_ms(250);
    }
}

static bool migrate(service *s)
{
    pgtx_error e;
    if (shop_migrate(s->pool, &e) != PGTX_OK) {
        fprintf(stderr, "pgtx-shop: database migrations failed: %s\n", e.message);
        return false;
    }
    return true;
}

/* ---- the admin token ------------------------------------------------------ */

/* The folder above the data folder: ".pgtx" for ".pgtx/pgdata". */
static void parent_dir(const char *path, char *out, size_t outlen)
{
    snprintf(out, outlen, "%s", path);
    size_t n = strlen(out);
    while (n > 1 && out[n - 1] == '/')
        out[--n] = '\0';
    char *slash = strrchr(out, '/');
    if (slash == NULL)
        snprintf(out, outlen, ".");
    else if (slash == out)
        out[1] = '\0';
    else
        *slash = '\0';
}

static bool mkdir_parents(const char *dir)
{
    char tmp[PATH_MAX];
    if (snprintf(tmp, sizeof tmp, "%s", dir) >= (int)sizeof tmp)
        return false;
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(tmp, 0755) != 0 && errno != EEXIST)
            return false;
        *p = '/';
    }
    return mkdir(tmp, 0755) == 0 || errno == EEXIST;
}

static bool token_chars_ok(const char *t)
{
    if (*t == '\0')
        return false;
    for (; *t; t++)
        if (*t <= ' ' || *t > '~')
            return false;
    return true;
}

typedef enum token_read { TOKEN_READ, TOKEN_MISSING, TOKEN_BAD } token_read;

static token_read read_token(const char *path, char *out, size_t outlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? TOKEN_MISSING : TOKEN_BAD;
    struct stat st;
    if (fstat(fd, &st) == 0 && (st.st_mode & 077))
        shop_log(SHOP_LOG_WARN, "%s is readable by others (chmod 600 it)", path);
    ssize_t n = read(fd, out, outlen - 1);
    close(fd);
    if (n < 0)
        return TOKEN_BAD;
    out[n] = '\0';
    while (n > 0 && strchr(" \t\r\n", out[n - 1]))
        out[--n] = '\0';
    return token_chars_ok(out) ? TOKEN_READ : TOKEN_BAD;
}

static bool generate_token(char *out, size_t outlen)
{
    unsigned char raw[TOKEN_BYTES];
    if (sodium_init() < 0)
        return false;
    randombytes_buf(raw, sizeof raw);
    sodium_bin2base64(out, outlen, raw, sizeof raw,
                      sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    sodium_memzero(raw, sizeof raw);
    return true;
}

/* Writes the token to a temporary file and links it into place: a process
   starting at the same moment either wins or reads the winner's token,
   never a half-written file. */
static bool store_token(const char *path, const char *token)
{
    char tmp[PATH_MAX + 64]; /* room for path (PATH_MAX + 16) and suffix */
    snprintf(tmp, sizeof tmp, "%s.%ld.tmp", path, (long)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
        return false;
    size_t len = strlen(token);
    bool ok = write(fd, token, len) == (ssize_t)len && write(fd, "\n", 1) == 1 &&
              fsync(fd) == 0;
    ok = close(fd) == 0 && ok;
    ok = ok && (link(tmp, path) == 0 || errno == EEXIST);
    unlink(tmp);
    return ok;
}

static bool token_from_file(service *s, const char *path)
{
    token_read r = read_token(path, s->token, sizeof s->token);
    if (r == TOKEN_MISSING) {
        char fresh[128];
        if (!generate_token(fresh, sizeof fresh) || !store_token(path, fresh)) {
            fprintf(stderr, "pgtx-shop: cannot store the admin token in %s: %s\n",
                    path, strerror(errno));
            return false;
        }
        r = read_token(path, s->token, sizeof s->token);
    }
    if (r != TOKEN_READ) {
        fprintf(stderr, "pgtx-shop: %s does not hold a usable admin token; "
                        "delete it to have a new one generated\n", path);
        return false;
    }
    char abs[PATH_MAX];
    snprintf(s->token_where, sizeof s->token_where, "stored in %s",
             realpath(path, abs) ? abs : path);
    s->token_shown = true;
    return true;
}

static bool admin_token(service *s)
{
    if (s->cfg.admin_token) {
        snprintf(s->token, sizeof s->token, "%s", s->cfg.admin_token);
        snprintf(s->token_where, sizeof s->token_where,
                 "given by --admin-token or PGTX_ADMIN_TOKEN");
        return true;
    }
    char dir[PATH_MAX], path[PATH_MAX + 16];
    parent_dir(s->cfg.data_dir, dir, sizeof dir);
    if (!mkdir_parents(dir)) {
        fprintf(stderr, "pgtx-shop: cannot create %s: %s\n", dir, strerror(errno));
        return false;
    }
    snprintf(path, sizeof path, "%s/%s", dir, TOKEN_FILE);
    return token_from_file(s, path);
}

/* ---- the app and the server ------------------------------------------------ */

static bool create_app(service *s)
{
    s->metrics = shop_metrics_create();
    if (s->metrics == NULL) {
        fprintf(stderr, "pgtx-shop: out of memory\n");
        return false;
    }
    pgtx_error e;
    if (shop_app_create(s->pool, s->metrics, &s->cfg, s->token, &s->app, &e) !=
            PGTX_OK ||
        (s->read_pool && shop_app_use_standbys(s->app, s->read_pool, &e) != PGTX_OK)) {
        fprintf(stderr, "pgtx-shop: cannot set up the service: %s\n", e.message);
        return false;
    }
    return true;
}

static bool start_http(service *s)
{
    char err[400];
    s->http = shop_http_start(&s->cfg, &s->proc, s->listener, s->app, s->pool, s->health_pool,
                              s->metrics, err, sizeof err);
    s->listener = NULL; /* the server's now, even when it failed */
    if (s->http == NULL) {
        fprintf(stderr, "pgtx-shop: %s\n", err);
        return false;
    }
    return true;
}

/* The first line is the contract with scripts and tests: they wait for it
   and read the port from it. */
static void print_ready(const service *s)
{
    bool v6 = strchr(s->cfg.listen_host, ':') != NULL;
    char url[320];
    snprintf(url, sizeof url, "http://%s%s%s:%d", v6 ? "[" : "", s->cfg.listen_host,
             v6 ? "]" : "", shop_http_port(s->http));
    printf("pgtx-shop: listening on %s\n", url);
    fflush(stdout);
    if (s->token_shown)
        printf("admin token: %s (%s)\n", s->token, s->token_where);
    else
        printf("admin token: (%s; not shown)\n", s->token_where);
    printf("try: curl -s -X POST %s/v1/accounts -H \"Authorization: Bearer %s\" "
           "-H 'Content-Type: application/json' -d '{\"name\":\"alice\",\"balance\":10000}'\n",
           url, s->token_shown ? s->token : "$PGTX_ADMIN_TOKEN");
    fflush(stdout);
}

/* ---- in order, and back ------------------------------------------------------ */

static bool start(service *s)
{
    bool (*const steps[])(service *) = {bind_address, open_database, create_pool,
                                         wait_for_database, migrate, admin_token,
                                         create_app, start_http};
    for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++)
        if (stop_requested || !steps[i](s))
            return false;
    return !stop_requested;
}

/* Takes down whatever start() set up; false when the cluster would not
   stop. */
static bool stop(service *s)
{
    if (s->http && !shop_http_stop(s->http, DRAIN_MS))
        shop_log(SHOP_LOG_WARN, "shutdown did not drain within %d ms", DRAIN_MS);
    shop_listener_close(s->listener);
    if (s->app)
        shop_app_destroy(s->app);
    if (s->pool && pgtx_pool_close(s->pool, 5000) != PGTX_OK)
        shop_log(SHOP_LOG_WARN, "connections still borrowed at shutdown");
    pgtx_pool_destroy(s->pool);
    pgtx_pool_destroy(s->health_pool);
    pgtx_pool_destroy(s->read_pool);
    shop_metrics_destroy(s->metrics);
    sodium_memzero(s->token, sizeof s->token);
    if (s->cluster == NULL)
        return true;
    lpg_error e;
    if (lpg_stop(s->cluster, &e) != LPG_OK) {
        fprintf(stderr, "pgtx-shop: stopping the embedded PostgreSQL: %s\n", e.message);
        return false;
    }
    return true;
}

/* Every client connection is a descriptor: the soft limit (often 1024)
   goes up to the hard one, which the connection limit is sized from. */
static void raise_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == rl.rlim_max)
        return;
    rlim_t was = rl.rlim_cur;
    rl.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
        shop_log(SHOP_LOG_WARN, "cannot raise the open file limit from %llu: %s",
                 (unsigned long long)was, strerror(errno));
}

int main(int argc, char **argv)
{
    static service s; /* large (paths): not on the stack */
    switch (shop_config_parse(argc, argv, &s.cfg, &s.proc)) {
    case SHOP_CONFIG_EXIT: return 0;
    case SHOP_CONFIG_BAD: return 2;
    case SHOP_CONFIG_RUN: break;
    }
    shop_log_set_level(s.cfg.log_level);
    if (s.cfg.pool_size + s.cfg.max_overflow < s.cfg.threads)
        shop_log(SHOP_LOG_WARN, "--pool-size %d + --max-overflow %d < --threads %d: "
                 "workers will wait for each other's connections",
                 s.cfg.pool_size, s.cfg.max_overflow, s.cfg.threads);
    raise_fd_limit();
    if (!install_signals()) {
        fprintf(stderr, "pgtx-shop: cannot install signal handlers: %s\n", strerror(errno));
        return 1;
    }
    bool started = start(&s);
    if (started) {
        print_ready(&s);
        shop_notify_ready();
        wait_for_signal();
        shop_notify_stopping();
        shop_log(SHOP_LOG_INFO, "shutting down");
    } else if (stop_requested) {
        shop_log(SHOP_LOG_INFO, "stopped during start-up");
    }
    bool stopped = stop(&s);
    close_signal_pipe();
    return (started || stop_requested) && stopped ? 0 : 1;
}
