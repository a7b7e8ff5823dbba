/*
 * server.h — the HTTP and process side of pgtx-shop, internal to main.c,
 * config.c, http.c and metrics.c: command line, logging, metrics registry
 * and the HTTP server with its worker pool.  The seams with the domain side
 * are in shop.h.
 */
#ifndef PGTX_SHOP_SERVER_H
#define PGTX_SHOP_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>

#include "shop.h"

#if defined(__GNUC__)
#define SHOP_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define SHOP_PRINTF(f, a)
#endif

/* ---- configuration (config.c) ------------------------------------------- */

#define SHOP_DEFAULT_DATA_DIR ".pgtx/pgdata"
#define SHOP_DEFAULT_LISTEN "127.0.0.1:8080"
/* Ample for any client on a real network; a slowloris holds a connection
   no longer than this. */
#define SHOP_DEFAULT_HEADER_TIMEOUT_MS 10000

/* What only the process side reads; the app sees shop_config alone. */
typedef struct shop_process_config {
    bool reuse_port; /* SO_REUSEPORT: processes that all ask share the address */
    int max_connections;        /* 0: from the file descriptor limit */
    int max_connections_per_ip; /* 0: no limit per client address */
    int header_timeout_ms;      /* request line and headers, in total */
} shop_process_config;

typedef enum shop_config_result {
    SHOP_CONFIG_RUN,  /* *cfg is ready */
    SHOP_CONFIG_EXIT, /* --help was printed: exit 0 */
    SHOP_CONFIG_BAD   /* one line was printed on stderr: exit 2 */
} shop_config_result;

/* Fills *cfg and *proc from the defaults, then the environment, then argv.
   A flag wins, and the variable it stands for is then not read at all (a
   bad value there is no error).  A connection string is checked for syntax
   and port here, before anything starts.  Strings in *cfg are borrowed
   from argv, the environment or static text: they live as long as the
   process. */
shop_config_result shop_config_parse(int argc, char **argv, shop_config *cfg,
                                     shop_process_config *proc);

/* The listening address of HOST:PORT as given (host without IPv6 brackets,
   numeric or a name).  False when it does not resolve. */
bool shop_listen_resolve(const char *host, int port,
                         struct sockaddr_storage *out, socklen_t *len);

/* ---- logging (config.c; thread-safe) ------------------------------------ */

void shop_log_set_level(shop_log_level level);
bool shop_log_enabled(shop_log_level level);
/* One line on stderr: level=warn msg="..." (quotes and newlines escaped). */
void shop_log(shop_log_level level, const char *fmt, ...) SHOP_PRINTF(2, 3);
/* One line on stderr: level=info followed by fields already formatted as
   key=value pairs by the caller. */
void shop_log_fields(shop_log_level level, const char *fields);

/* ---- rows in flight (rowgate.c; the caller's lock guards it) -------------- */

/*
 * How many requests that change a given row are handed to workers at once.
 * PostgreSQL runs one writer of a row at a time anyway; a second one in
 * flight already waits in the row's lock queue, so that it starts the moment
 * the first commits.  Any more only wait there too, each holding a worker
 * and a pooled connection: a row locked elsewhere would take them all.
 */
typedef struct row_gate row_gate;

typedef enum row_gate_result {
    ROW_GATE_ENTERED, /* every row had room: the holds are taken */
    ROW_GATE_FULL,    /* one row has its share in flight: nothing taken */
    ROW_GATE_NOMEM    /* nothing taken */
} row_gate_result;

/* per_row >= 1 requests per row at once.  NULL when out of memory. */
row_gate *row_gate_create(int per_row);
void row_gate_destroy(row_gate *g);
/* Takes one hold on each of the n rows, or none.  A lane (a kind with
   SHOP_ROW_LANE) takes one hold at a time, whatever per_row. */
row_gate_result row_gate_enter(row_gate *g, const shop_row_key *rows, int n);
/* Gives back the holds that row_gate_enter took. */
void row_gate_leave(row_gate *g, const shop_row_key *rows, int n);
/* Whether the two lists name a row in common. */
bool row_keys_overlap(const shop_row_key *a, int na, const shop_row_key *b, int nb);

/* ---- metrics (metrics.c; thread-safe) ------------------------------------ */

/* The HTTP side's own gauges, read at scrape time. */
typedef struct shop_http_gauges {
    int queue_depth;    /* requests waiting for a worker */
    int queue_capacity;
    int workers_busy;
    int workers;
    long long connections_open;
    long long connections_max;       /* the limit in force */
    long long refused_per_ip;        /* refused: the address had its share */
    long long closed_header_timeout; /* headers not complete in time */
    long long evicted;               /* idle or unfinished ones, for room */
    int row_waiting;                 /* requests waiting for their row's turn */
    long long row_waits;             /* requests that waited for it */
    long long row_wait_expired;      /* answered row_busy before their turn */
    /* Combined writes: the turns of rows' lanes by the requests they took
       (at most 1, 2, 4, ... 64), and those requests in all. */
#define SHOP_BATCH_BUCKETS 7
    long long batches[SHOP_BATCH_BUCKETS];
    long long batch_calls;
    int batch_largest;
} shop_http_gauges;

/* NULL when out of memory.  Release with shop_metrics_destroy(). */
shop_metrics *shop_metrics_create(void);
void shop_metrics_destroy(shop_metrics *m);

/* One answered request.  `route` is copied on first sight. */
void shop_metrics_request(shop_metrics *m, const char *route, int status,
                          double seconds);

/* Prometheus text format 0.0.4 of everything, the pool's statistics taken
   now.  Returns a malloc'ed string (caller frees) and its length, or NULL
   when out of memory. */
char *shop_metrics_render(shop_metrics *m, pgtx_pool *pool,
                          const shop_http_gauges *g, size_t *len);

/* ---- HTTP server (http.c) ------------------------------------------------ */

typedef struct shop_http shop_http;
typedef struct shop_listener shop_listener;

/* Binds cfg's address, without listening yet: done first at start-up, so
   that a busy address fails before a database is started or migrated.
   Exclusive unless reuse_port.  NULL with one line in err on failure
   ("... address already in use (--reuse-port ...)" when taken). */
shop_listener *shop_listener_bind(const shop_config *cfg, bool reuse_port,
                                  char *err, size_t errlen);
/* For a listener never given to shop_http_start; NULL is fine. */
void shop_listener_close(shop_listener *l);

/* Starts listening on l (which it takes, even on failure) with
   cfg->threads workers; /healthz runs on a thread of its own with
   health_pool's connection, so that busy workers or a taken pool never
   make a live database look down.  Borrows everything else it is given (they must
   outlive shop_http_stop).  On failure returns NULL and writes a sentence
   into err. */
shop_http *shop_http_start(const shop_config *cfg, const shop_process_config *proc,
                           shop_listener *l,
                           shop_app *app, pgtx_pool *pool,
                           pgtx_pool *health_pool, shop_metrics *metrics,
                           char *err, size_t errlen);

/* The port actually bound (the real one when cfg asked for 0). */
int shop_http_port(const shop_http *h);

/* Stops accepting connections, lets the requests already read finish
   (waiting at most drain_ms for them), answers the rest of the keep-alive
   traffic with Connection: close, then stops the workers and the daemon
   and frees everything.  Returns false when the wait ran out. */
bool shop_http_stop(shop_http *h, int drain_ms);

#endif
