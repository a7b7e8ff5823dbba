/* config.c — pgtx-shop's settings from defaults, environment and command
   line (flags win), its --help, and the log level they set. */
#include "server.h"

#include <errno.h>
#include <limits.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- logging ------------------------------------------------------------- */

static _Atomic int log_level = SHOP_LOG_INFO;

static const char *const level_names[] = {"error", "warn", "info", "debug"};

void shop_log_set_level(shop_log_level level)
{
    atomic_store(&log_level, (int)level);
}

bool shop_log_enabled(shop_log_level level)
{
    return (int)level <= atomic_load(&log_level);
}

void shop_log_fields(shop_log_level level, const char *fields)
{
    if (!shop_log_enabled(level))
        return;
    /* One fprintf per line: stdio locks the stream, so lines never mix. */
    fprintf(stderr, "level=%s %s\n", level_names[level], fields);
}

/* Quotes, backslashes and control characters would break the key=value
   line, so they are escaped (or dropped). */
static void escape_into(char *out, size_t outlen, const char *in)
{
    size_t o = 0;
    for (; *in && o + 3 < outlen; in++) {
        unsigned char c = (unsigned char)*in;
        if (c == '"' || c == '\\') {
            out[o++] = '\\';
            out[o++] = (char)c;
        } else if (c == '\n') {
            out[o++] = '\\';
            out[o++] = 'n';
        } else if (c >= 0x20) {
            out[o++] = (char)c;
        }
    }
    out[o] = '\0';
}

void shop_log(shop_log_level level, const char *fmt, ...)
{
    if (!shop_log_enabled(level))
        return;
    char msg[1024], esc[2100];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    escape_into(esc, sizeof esc, msg);
    fprintf(stderr, "level=%s msg=\"%s\"\n", level_names[level], esc);
}

/* ---- the options ------------------------------------------------------- */

typedef enum opt_id {
    OPT_DATABASE,
    OPT_READ_DATABASE,
    OPT_DATA_DIR,
    OPT_LISTEN,
    OPT_REUSE_PORT,
    OPT_ADMIN_TOKEN,
    OPT_THREADS,
    OPT_QUEUE,
    OPT_POOL_SIZE,
    OPT_MAX_OVERFLOW,
    OPT_IDLE_TIMEOUT,
    OPT_STATEMENT_CACHE,
    OPT_POOL_TIMEOUT,
    OPT_DB_TIMEOUT,
    OPT_LOCK_TIMEOUT,
    OPT_BATCH_LIMIT,
    OPT_STRATEGY,
    OPT_ALLOW_UNSAFE,
    OPT_LOG_LEVEL,
    OPT_MAX_BODY,
    OPT_MAX_CONNECTIONS,
    OPT_MAX_CONNECTIONS_PER_IP,
    OPT_HEADER_TIMEOUT,
    OPT_COUNT
} opt_id;

typedef struct opt_spec {
    const char *flag;    /* "--threads" */
    const char *env;     /* its environment variable */
    const char *metavar; /* NULL: a switch that takes no value */
    long long min, max;  /* for numbers; min > max: not a number */
    const char *help;
} opt_spec;

#define NOT_A_NUMBER 1, 0

static const opt_spec specs[OPT_COUNT] = {
    [OPT_DATABASE] = {"--database", "DATABASE_URL", "CONNINFO", NOT_A_NUMBER,
                      "PostgreSQL connection string or URI; \"\" means libpq's "
                      "PG* variables;\nunset: an embedded cluster in --data-dir"},
    [OPT_READ_DATABASE] = {"--read-database", "PGTX_READ_DATABASE", "CONNINFO",
                           NOT_A_NUMBER,
                           "standbys for GET routes (e.g. host=a,b ... "
                           "target_session_attrs=prefer-standby);\n"
                           "a read sent with Pgtx-Commit-LSN goes to the primary "
                           "unless the standby\nhas replayed it; unset: every "
                           "read on --database"},
    [OPT_DATA_DIR] = {"--data-dir", "PGTX_DATA_DIR", "DIR", NOT_A_NUMBER,
                      "the embedded cluster's folder; the generated admin token "
                      "is kept\nin the folder above it"},
    [OPT_LISTEN] = {"--listen", "PGTX_LISTEN", "HOST:PORT", NOT_A_NUMBER,
                    "address to listen on ([::1]:PORT for IPv6); port 0 picks "
                    "a free one;\nthis process's alone: one that another "
                    "holds is exit 1, unless --reuse-port"},
    [OPT_REUSE_PORT] = {"--reuse-port", "PGTX_REUSE_PORT", NULL, NOT_A_NUMBER,
                        "share --listen's address with other processes that "
                        "also ask for it\n(SO_REUSEPORT; the kernel spreads "
                        "connections among them)"},
    [OPT_ADMIN_TOKEN] = {"--admin-token", "PGTX_ADMIN_TOKEN", "TOKEN",
                         NOT_A_NUMBER,
                         "admin bearer token; unset: generated on first run "
                         "and stored"},
    [OPT_THREADS] = {"--threads", "PGTX_THREADS", "N", 1, 1024,
                     "worker threads running requests"},
    [OPT_QUEUE] = {"--queue", "PGTX_QUEUE", "N", 1, 1000000,
                   "requests waiting (for a worker or their row's turn)\nbefore 503 overloaded"},
    [OPT_POOL_SIZE] = {"--pool-size", "PGTX_POOL_SIZE", "N", 1, 1000,
                       "database connections kept open; at least --threads, "
                       "so that\nno worker waits for another's connection"},
    [OPT_MAX_OVERFLOW] = {"--max-overflow", "PGTX_MAX_OVERFLOW", "N", 0, 1000,
                          "extra connections opened under load"},
    [OPT_IDLE_TIMEOUT] = {"--idle-timeout-ms", "PGTX_IDLE_TIMEOUT_MS", "N", 0,
                          86400000,
                          "an extra (overflow) connection unused this long is "
                          "closed;\n0: closed as soon as it is returned"},
    [OPT_STATEMENT_CACHE] = {"--statement-cache", "PGTX_STATEMENT_CACHE", "N", 0,
                             100000,
                             "statements kept prepared per connection; 0 turns "
                             "it off\n(needed behind PgBouncer in transaction "
                             "mode)"},
    [OPT_POOL_TIMEOUT] = {"--pool-timeout-ms", "PGTX_POOL_TIMEOUT_MS", "N", 1,
                          600000,
                          "wait this long for a connection, then 503 "
                          "overloaded"},
    [OPT_DB_TIMEOUT] = {"--db-timeout-ms", "PGTX_DB_TIMEOUT_MS", "N", 0, 3600000,
                        "wait this long for the database to answer a statement, "
                        "then close\nthe connection and answer 503 (0: no limit)"},
    [OPT_LOCK_TIMEOUT] = {"--lock-timeout-ms", "PGTX_LOCK_TIMEOUT_MS", "N", 0,
                          600000,
                          "wait this long for a row another transaction holds, "
                          "then 503 row_busy\n(SET LOCAL lock_timeout in each "
                          "transaction; 0: no limit)"},
    [OPT_BATCH_LIMIT] = {"--batch-limit", "PGTX_BATCH_LIMIT", "N", 1,
                         PGTX_BATCH_SAVEPOINT_MAX,
                         "deposits of one account, orders of one product and "
                         "claims of one coupon\nwaiting together run as one "
                         "transaction of up to N (1: each its own)"},
    [OPT_STRATEGY] = {"--strategy", "PGTX_STRATEGY", "S", NOT_A_NUMBER,
                      "default write strategy: atomic, lock, optimistic, "
                      "serializable\n(naive needs --allow-unsafe)"},
    [OPT_ALLOW_UNSAFE] = {"--allow-unsafe", "PGTX_ALLOW_UNSAFE", NULL,
                          NOT_A_NUMBER,
                          "accept the naive strategy (loses updates; for "
                          "demonstrations)"},
    [OPT_LOG_LEVEL] = {"--log-level", "PGTX_LOG_LEVEL", "LEVEL", NOT_A_NUMBER,
                       "error, warn, info (one line per request) or debug"},
    [OPT_MAX_CONNECTIONS] = {"--max-connections", "PGTX_MAX_CONNECTIONS", "N", 0,
                             1000000,
                             "client connections held at once; near it the "
                             "longest idle ones are\nclosed for newcomers (0: "
                             "the file descriptor limit, less the pool's)"},
    [OPT_MAX_CONNECTIONS_PER_IP] = {"--max-connections-per-ip",
                                    "PGTX_MAX_CONNECTIONS_PER_IP", "N", 0, 1000000,
                                    "connections one client address may hold; "
                                    "more are closed at once\n(0: no limit; "
                                    "behind a proxy every client shares its "
                                    "address)"},
    [OPT_HEADER_TIMEOUT] = {"--header-timeout-ms", "PGTX_HEADER_TIMEOUT_MS", "N",
                            100, 600000,
                            "a request line and its headers must be in within "
                            "this long, in total,\nor the connection is closed"},
    [OPT_MAX_BODY] = {"--max-body", "PGTX_MAX_BODY", "BYTES", 1,
                      64 * 1024 * 1024, "larger request bodies get 413"},
};

/* Workers block on the database: most of an order's time is the wait for
   its COMMIT to reach the disk, and more orders in flight share each flush.
   On 2 cores, 32 clients of low-contention orders: 4 workers served 0.86 to
   1.19 x pgbench's textbook order, 8 served 1.04 to 1.90 x (make bench),
   while hot rows kept their 2 to 4 x. */
static int default_threads(void)
{
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    long n = cores > 0 ? 4 * cores : 8;
    if (n < 8)
        n = 8;
    return n > 1024 ? 1024 : (int)n;
}

static void config_defaults(shop_config *cfg)
{
    *cfg = (shop_config){
        .database = NULL,
        .listen_host = "127.0.0.1",
        .listen_port = 8080,
        .admin_token = NULL,
        .data_dir = SHOP_DEFAULT_DATA_DIR,
        .threads = default_threads(),
        .queue_size = 1024,
        .pool_size = 0, /* --threads, once known: see shop_config_parse */
        .max_overflow = 10,
        .idle_timeout_ms = 60000,
        .statement_cache = 256,
        .pool_timeout_ms = 2000,
        .db_timeout_ms = 15000,
        .lock_timeout_ms = 1000,
        .batch_limit = PGTX_BATCH_SAVEPOINT_MAX,
        .strategy = PGTX_STRATEGY_ATOMIC,
        .allow_unsafe = false,
        .log_level = SHOP_LOG_INFO,
        .max_body = 65536,
    };
}

/* The default as --help shows it. */
static void default_text(opt_id id, const shop_config *d, char *out, size_t n)
{
    switch (id) {
    case OPT_DATABASE: snprintf(out, n, "embedded cluster"); break;
    case OPT_READ_DATABASE: snprintf(out, n, "none: reads on --database"); break;
    case OPT_DATA_DIR: snprintf(out, n, "%s", d->data_dir); break;
    case OPT_LISTEN: snprintf(out, n, "%s", SHOP_DEFAULT_LISTEN); break;
    case OPT_REUSE_PORT: snprintf(out, n, "off"); break;
    case OPT_ADMIN_TOKEN: snprintf(out, n, "generated, in DIR/../admin-token"); break;
    case OPT_THREADS:
        snprintf(out, n, "4 x cores, at least 8: %d here", d->threads);
        break;
    case OPT_QUEUE: snprintf(out, n, "%d", d->queue_size); break;
    case OPT_POOL_SIZE: snprintf(out, n, "--threads"); break;
    case OPT_MAX_OVERFLOW: snprintf(out, n, "%d", d->max_overflow); break;
    case OPT_IDLE_TIMEOUT: snprintf(out, n, "%d", d->idle_timeout_ms); break;
    case OPT_STATEMENT_CACHE: snprintf(out, n, "%d", d->statement_cache); break;
    case OPT_POOL_TIMEOUT: snprintf(out, n, "%d", d->pool_timeout_ms); break;
    case OPT_DB_TIMEOUT: snprintf(out, n, "%d", d->db_timeout_ms); break;
    case OPT_LOCK_TIMEOUT: snprintf(out, n, "%d", d->lock_timeout_ms); break;
    case OPT_BATCH_LIMIT: snprintf(out, n, "%d", d->batch_limit); break;
    case OPT_STRATEGY: snprintf(out, n, "atomic"); break;
    case OPT_ALLOW_UNSAFE: snprintf(out, n, "off"); break;
    case OPT_LOG_LEVEL: snprintf(out, n, "info"); break;
    case OPT_MAX_BODY: snprintf(out, n, "%zu", d->max_body); break;
    case OPT_MAX_CONNECTIONS: snprintf(out, n, "0: from ulimit -n"); break;
    case OPT_MAX_CONNECTIONS_PER_IP: snprintf(out, n, "0: no limit"); break;
    case OPT_HEADER_TIMEOUT: snprintf(out, n, "%d", SHOP_DEFAULT_HEADER_TIMEOUT_MS); break;
    case OPT_COUNT: out[0] = '\0'; break;
    }
}

static void usage(FILE *to)
{
    shop_config d;
    config_defaults(&d);
    fprintf(to, "usage: pgtx-shop [OPTIONS]\n\n"
                "The purchase and coupon service over PostgreSQL.  Every option "
                "may also come\nfrom its environment variable; a flag wins, and "
                "its variable is then not read.\n\n");
    for (int i = 0; i < OPT_COUNT; i++) {
        char def[64];
        default_text((opt_id)i, &d, def, sizeof def);
        fprintf(to, "  %s%s%s  (env %s; default: %s)\n      ", specs[i].flag,
                specs[i].metavar ? " " : "",
                specs[i].metavar ? specs[i].metavar : "", specs[i].env, def);
        for (const char *c = specs[i].help; *c; c++) {
            if (*c == '\n')
                fputs("\n      ", to);
            else
                fputc(*c, to);
        }
        fputs("\n", to);
    }
    fprintf(to, "  --help\n      this text\n  --version\n      the version, then exit\n"
                "\nExit status: 0 after SIGTERM or SIGINT and a clean stop; 1 when it "
                "cannot start\n(address already in use, database unreachable, ...) or "
                "stop cleanly; 2 for a\nbad option or value (one line on stderr).\n");
}

/* ---- parsing one value ---------------------------------------------------- */

/* What the values are written into. */
typedef struct targets {
    shop_config *cfg;
    shop_process_config *proc;
} targets;

/* Where a value came from, for error messages: a flag or a variable. */
typedef struct origin {
    const char *name;
} origin;

static bool bad(origin o, const char *value, const char *why)
{
    fprintf(stderr, "pgtx-shop: %s: '%s' %s (see --help)\n", o.name, value, why);
    return false;
}

static bool parse_number(opt_id id, origin o, const char *s, long long *out)
{
    if (*s == '\0' || (*s != '-' && (*s < '0' || *s > '9')))
        return bad(o, s, "is not a number");
    errno = 0;
    char *end = NULL;
    long long v = strtoll(s, &end, 10);
    if (*end != '\0')
        return bad(o, s, "is not a number");
    if (errno == ERANGE || v < specs[id].min || v > specs[id].max) {
        char why[96];
        snprintf(why, sizeof why, "is out of range [%lld, %lld]", specs[id].min,
                 specs[id].max);
        return bad(o, s, why);
    }
    *out = v;
    return true;
}

static bool parse_port(const char *s, int *out)
{
    if (*s == '\0' || strlen(s) > 5)
        return false;
    int v = 0;
    for (; *s; s++) {
        if (*s < '0' || *s > '9')
            return false;
        v = v * 10 + (*s - '0');
    }
    if (v > 65535)
        return false;
    *out = v;
    return true;
}

/* HOST:PORT or [V6]:PORT.  The host is kept in a static copy: a listen
   address is parsed at most twice (environment, flag), so two slots. */
static bool parse_listen(origin o, const char *s, shop_config *cfg)
{
    static char hosts[2][256];
    static int slot;
    const char *colon = strrchr(s, ':');
    if (colon == NULL || colon == s)
        return bad(o, s, "is not HOST:PORT");
    const char *h = s;
    size_t hlen = (size_t)(colon - s);
    if (h[0] == '[') {
        if (hlen < 3 || h[hlen - 1] != ']')
            return bad(o, s, "is not HOST:PORT ([::1]:PORT for IPv6)");
        h++;
        hlen -= 2;
    }
    if (hlen >= sizeof hosts[0])
        return bad(o, s, "has a host name too long");
    int port;
    if (!parse_port(colon + 1, &port))
        return bad(o, s, "has no port in [0, 65535]");
    char *host = hosts[slot++ % 2];
    memcpy(host, h, hlen);
    host[hlen] = '\0';
    struct sockaddr_storage ss;
    socklen_t len;
    if (!shop_listen_resolve(host, port, &ss, &len))
        return bad(o, s, "does not resolve to an address");
    cfg->listen_host = host;
    cfg->listen_port = port;
    return true;
}

static bool parse_bool(origin o, const char *s, bool *out)
{
    static const char *const yes[] = {"1", "true", "yes", "on"};
    static const char *const no[] = {"0", "false", "no", "off"};
    for (size_t i = 0; i < 4; i++) {
        if (strcmp(s, yes[i]) == 0)
            return *out = true;
        if (strcmp(s, no[i]) == 0) {
            *out = false;
            return true;
        }
    }
    return bad(o, s, "is not one of 1, 0, true, false, yes, no");
}

static bool parse_level(origin o, const char *s, shop_log_level *out)
{
    for (int i = 0; i <= SHOP_LOG_DEBUG; i++) {
        if (strcmp(s, level_names[i]) == 0) {
            *out = (shop_log_level)i;
            return true;
        }
    }
    return bad(o, s, "is not one of error, warn, info, debug");
}

static bool parse_strategy(origin o, const char *s, pgtx_strategy *out)
{
    if (!pgtx_strategy_parse(s, out))
        return bad(o, s,
                   "is not one of atomic, lock, optimistic, serializable, naive");
    return true;
}

/* The syntax and the port now: libpq would find them only when it
   connects, after the start-up retries, as a connection failure. */
static bool check_conninfo(origin o, const char *s)
{
    pgtx_error err;
    if (pgtx_conninfo_check(s, &err) == PGTX_OK)
        return true;
    fprintf(stderr, "pgtx-shop: %s: %s (see --help)\n", o.name, err.message);
    return false;
}

static bool set_int(opt_id id, origin o, const char *s, int *field)
{
    long long v;
    if (!parse_number(id, o, s, &v))
        return false;
    *field = (int)v;
    return true;
}

static bool apply(opt_id id, origin o, const char *s, targets t)
{
    shop_config *cfg = t.cfg;
    long long v;
    switch (id) {
    case OPT_DATABASE:
        if (!check_conninfo(o, s))
            return false;
        cfg->database = s;
        return true;
    case OPT_READ_DATABASE:
        if (*s == '\0')
            return bad(o, s, "is empty (leave it unset to read from --database)");
        if (!check_conninfo(o, s))
            return false;
        cfg->read_database = s;
        return true;
    case OPT_DATA_DIR:
        if (*s == '\0')
            return bad(o, s, "is empty");
        cfg->data_dir = s;
        return true;
    case OPT_LISTEN: return parse_listen(o, s, cfg);
    case OPT_REUSE_PORT: return parse_bool(o, s, &t.proc->reuse_port);
    case OPT_ADMIN_TOKEN:
        if (*s == '\0')
            return bad(o, s, "is empty");
        cfg->admin_token = s;
        return true;
    case OPT_THREADS: return set_int(id, o, s, &cfg->threads);
    case OPT_QUEUE: return set_int(id, o, s, &cfg->queue_size);
    case OPT_POOL_SIZE: return set_int(id, o, s, &cfg->pool_size);
    case OPT_MAX_OVERFLOW: return set_int(id, o, s, &cfg->max_overflow);
    case OPT_IDLE_TIMEOUT: return set_int(id, o, s, &cfg->idle_timeout_ms);
    case OPT_STATEMENT_CACHE: return set_int(id, o, s, &cfg->statement_cache);
    case OPT_POOL_TIMEOUT: return set_int(id, o, s, &cfg->pool_timeout_ms);
    case OPT_DB_TIMEOUT: return set_int(id, o, s, &cfg->db_timeout_ms);
    case OPT_LOCK_TIMEOUT: return set_int(id, o, s, &cfg->lock_timeout_ms);
    case OPT_BATCH_LIMIT: return set_int(id, o, s, &cfg->batch_limit);
    case OPT_STRATEGY: return parse_strategy(o, s, &cfg->strategy);
    case OPT_ALLOW_UNSAFE: return parse_bool(o, s, &cfg->allow_unsafe);
    case OPT_LOG_LEVEL: return parse_level(o, s, &cfg->log_level);
    case OPT_MAX_CONNECTIONS: return set_int(id, o, s, &t.proc->max_connections);
    case OPT_MAX_CONNECTIONS_PER_IP:
        return set_int(id, o, s, &t.proc->max_connections_per_ip);
    case OPT_HEADER_TIMEOUT: return set_int(id, o, s, &t.proc->header_timeout_ms);
    case OPT_MAX_BODY:
        if (!parse_number(id, o, s, &v))
            return false;
        cfg->max_body = (size_t)v;
        return true;
    case OPT_COUNT: break;
    }
    return false;
}

/* ---- environment and argv ------------------------------------------------ */

static int find_flag(const char *arg, size_t len)
{
    for (int i = 0; i < OPT_COUNT; i++)
        if (strlen(specs[i].flag) == len && strncmp(specs[i].flag, arg, len) == 0)
            return i;
    return -1;
}

/* Which options the command line sets, read as apply_arg reads them
   (unknown arguments are apply_arg's to report). */
static void flags_given(int argc, char **argv, bool given[OPT_COUNT])
{
    for (int i = 1; i < argc; i++) {
        const char *eq = strchr(argv[i], '=');
        size_t len = eq ? (size_t)(eq - argv[i]) : strlen(argv[i]);
        int id = strncmp(argv[i], "--", 2) == 0 ? find_flag(argv[i], len) : -1;
        if (id < 0)
            continue;
        given[id] = true;
        if (specs[id].metavar && !eq)
            i++; /* its value */
    }
}

/* A variable whose flag is given is not read: the flag is how a broken
   value inherited from the environment is put right.  An empty variable
   counts as unset: `VAR= pgtx-shop` is a common way to clear one.  (An
   empty --database, by contrast, means libpq's defaults.) */
static bool apply_environment(const bool given[OPT_COUNT], targets t)
{
    for (int i = 0; i < OPT_COUNT; i++) {
        const char *v = given[i] ? NULL : getenv(specs[i].env);
        if (v && *v && !apply((opt_id)i, (origin){specs[i].env}, v, t))
            return false;
    }
    return true;
}

/* One argument (and maybe the next); returns how many it used, 0 on error. */
static int apply_arg(int argc, char **argv, int i, targets t)
{
    const char *arg = argv[i];
    const char *eq = strchr(arg, '=');
    size_t len = eq ? (size_t)(eq - arg) : strlen(arg);
    int id = strncmp(arg, "--", 2) == 0 ? find_flag(arg, len) : -1;
    if (id < 0) {
        fprintf(stderr, "pgtx-shop: unknown option '%s' (see --help)\n", arg);
        return 0;
    }
    origin o = {specs[id].flag};
    if (specs[id].metavar == NULL) /* a switch: --allow-unsafe[=BOOL] */
        return apply((opt_id)id, o, eq ? eq + 1 : "1", t) ? 1 : 0;
    if (eq)
        return apply((opt_id)id, o, eq + 1, t) ? 1 : 0;
    if (i + 1 >= argc) {
        fprintf(stderr, "pgtx-shop: %s needs a value %s (see --help)\n", arg,
                specs[id].metavar);
        return 0;
    }
    return apply((opt_id)id, o, argv[i + 1], t) ? 2 : 0;
}

static bool wants_help(int argc, char **argv)
{
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0)
            return true;
    return false;
}

static bool check_combination(const shop_config *cfg)
{
    if (cfg->strategy == PGTX_STRATEGY_NAIVE && !cfg->allow_unsafe) {
        fprintf(stderr, "pgtx-shop: --strategy naive loses updates and needs "
                        "--allow-unsafe\n");
        return false;
    }
    return true;
}

static bool wants_version(int argc, char **argv)
{
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--version") == 0)
            return true;
    return false;
}

shop_config_result shop_config_parse(int argc, char **argv, shop_config *cfg,
                                     shop_process_config *proc)
{
    if (wants_help(argc, argv)) {
        usage(stdout);
        return SHOP_CONFIG_EXIT;
    }
    if (wants_version(argc, argv)) {
        printf("pgtx-shop %s\n", PGTX_VERSION);
        return SHOP_CONFIG_EXIT;
    }
    config_defaults(cfg);
    *proc = (shop_process_config){.reuse_port = false,
                                  .header_timeout_ms = SHOP_DEFAULT_HEADER_TIMEOUT_MS};
    targets t = {cfg, proc};
    bool given[OPT_COUNT] = {false};
    flags_given(argc, argv, given);
    if (!apply_environment(given, t))
        return SHOP_CONFIG_BAD;
    for (int i = 1; i < argc;) {
        int used = apply_arg(argc, argv, i, t);
        if (used == 0)
            return SHOP_CONFIG_BAD;
        i += used;
    }
    /* One connection per worker: a worker never waits for another's. */
    if (cfg->pool_size == 0)
        cfg->pool_size = cfg->threads;
    return check_combination(cfg) ? SHOP_CONFIG_RUN : SHOP_CONFIG_BAD;
}

/* ---- the listening address ----------------------------------------------- */

/* IPv4 first when a name has both: "localhost" then means 127.0.0.1, as
   most clients try it first. */
bool shop_listen_resolve(const char *host, int port,
                         struct sockaddr_storage *out, socklen_t *len)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    char service[8];
    snprintf(service, sizeof service, "%d", port);
    struct addrinfo *res = NULL;
    if (*host == '\0' || getaddrinfo(host, service, &hints, &res) != 0)
        return false;
    const struct addrinfo *pick = res;
    for (const struct addrinfo *a = res; a; a = a->ai_next)
        if (a->ai_family == AF_INET) {
            pick = a;
            break;
        }
    bool ok = pick && pick->ai_addrlen <= sizeof *out;
    if (ok) {
        memcpy(out, pick->ai_addr, pick->ai_addrlen);
        *len = (socklen_t)pick->ai_addrlen;
    }
    freeaddrinfo(res);
    return ok;
}
