/* wire.c — talking to the server on one connection: bounded waits for
   results, pipelines, and the per-connection prepared-statement cache. */
#include "internal.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

/* ---- bounded waits for the server ------------------------------------ */

/* Wait until libpq can hand out a result without blocking, or the socket
   timeout passes: then shut the socket, so that libpq's next read sees the
   end of it.  (shutdown, not close: libpq still owns the descriptor.) */
static void await_result(pgtx_conn *c)
{
    PGconn *pg = c->pg;
    int limit = pgtx__socket_timeout_ms(c->pool);
    if (limit <= 0 || c->timed_out || PQflush(pg) != 0)
        return; /* no limit, already shut, or broken: libpq tells the rest */
    if (!PQisBusy(pg))
        return; /* already here: no clock read, no wait (the hot path) */
    int64_t deadline = pgtx__now_us() + (int64_t)limit * 1000;
    while (PQisBusy(pg)) {
        int64_t left_ms = (deadline - pgtx__now_us() + 999) / 1000;
        if (left_ms <= 0) {
            c->timed_out = true;
            (void)shutdown(PQsocket(pg), SHUT_RDWR);
            atomic_fetch_add(&pgtx__pool_counters(c->pool)->socket_timeouts, 1);
            pgtx__log(c->pool, PGTX_LOG_WARNING, "pgtx conn %llu: no answer "
                      "within socket_timeout_ms (%d ms): closing it",
                      (unsigned long long)c->id, limit);
            return;
        }
        struct pollfd pfd = {PQsocket(pg), POLLIN, 0};
        int n = poll(&pfd, 1, (int)left_ms);
        if ((n < 0 && errno != EINTR) || (n > 0 && !PQconsumeInput(pg)))
            return;
    }
}

PGresult *pgtx__get_result(pgtx_conn *c)
{
    await_result(c);
    return PQgetResult(c->pg);
}

/* Keep the last result, but an error wins over what follows it (as in
   PQexec). */
static PGresult *keep_result(PGresult *kept, PGresult *r)
{
    if (kept && PQresultStatus(kept) == PGRES_FATAL_ERROR) {
        PQclear(r);
        return kept;
    }
    PQclear(kept);
    return r;
}

PGresult *pgtx__exec(pgtx_conn *c, const char *sql, int nparams,
                     const char *const *params)
{
    int sent = nparams < 0
                   ? PQsendQuery(c->pg, sql)
                   : PQsendQueryParams(c->pg, sql, nparams, NULL, params, NULL, NULL, 0);
    if (!sent)
        return NULL;
    PGresult *kept = NULL, *r;
    while ((r = pgtx__get_result(c)) != NULL) {
        ExecStatusType s = PQresultStatus(r);
        kept = keep_result(kept, r);
        if (s == PGRES_COPY_IN || s == PGRES_COPY_OUT || s == PGRES_COPY_BOTH ||
            PQstatus(c->pg) == CONNECTION_BAD)
            break;
    }
    return kept;
}

bool pgtx__conn_timed_out(const pgtx_conn *c) { return c->timed_out; }

/* Read whatever arrived while the connection sat idle (a FATAL notice,
   then EOF, when the backend was terminated) without waiting: true when it
   still looks usable.  No round trip. */
bool pgtx__conn_healthy(pgtx_conn *c)
{
    PGconn *pg = c->pg;
    for (int i = 0; i < 4 && PQstatus(pg) == CONNECTION_OK; i++) {
        struct pollfd pfd = {PQsocket(pg), POLLIN, 0};
        if (poll(&pfd, 1, 0) <= 0)
            break;
        if (!PQconsumeInput(pg))
            break;
        (void)PQisBusy(pg); /* parses it: notices reach the receiver */
    }
    return PQstatus(pg) == CONNECTION_OK && !atomic_load(&c->doomed);
}

/* ---- the statement cache ------------------------------------------------ */

/*
 * SQL text -> server-side name, per connection.  A hash table finds an
 * entry, a list keeps them in order of use (head: most recent) so that the
 * least recently used goes first when the cache is full.  An entry exists
 * from the moment its Parse is queued; if the server refuses the Parse, or
 * skips it (an earlier statement of the pipeline failed), the entry goes.
 * NOTE: names are never reused on a connection (a counter), so a name the
 * cache forgot but the server still has can never be mistaken for another.
 */
typedef struct stmt_entry {
    char *sql;                     /* owned copy: the key */
    uint64_t hash;
    unsigned name;                 /* "pgtx_<name>" on the server */
    bool ready;                    /* the server confirmed the Parse */
    struct stmt_entry *prev, *next; /* order of use */
    struct stmt_entry *chain;      /* same bucket */
} stmt_entry;

struct pgtx__stmt_cache {
    int capacity, count;
    int nbuckets; /* a power of two, >= 2 x capacity */
    stmt_entry **buckets;
    stmt_entry *head, *tail;
    unsigned next_name;
    /* evicted names whose DEALLOCATE has not been sent yet */
    unsigned *to_close;
    int n_close;
};

pgtx__stmt_cache *pgtx__stmt_cache_create(int capacity)
{
    if (capacity <= 0)
        return NULL;
    pgtx__stmt_cache *k = calloc(1, sizeof *k);
    if (k == NULL)
        return NULL;
    k->capacity = capacity;
    k->nbuckets = 16;
    while (k->nbuckets < 2 * capacity)
        k->nbuckets *= 2;
    k->buckets = calloc((size_t)k->nbuckets, sizeof *k->buckets);
    k->to_close = calloc((size_t)capacity, sizeof *k->to_close);
    if (k->buckets == NULL || k->to_close == NULL) {
        pgtx__stmt_cache_destroy(k);
        return NULL;
    }
    return k;
}

void pgtx__stmt_cache_destroy(pgtx__stmt_cache *k)
{
    if (k == NULL)
        return;
    for (stmt_entry *e = k->head, *next; e; e = next) {
        next = e->next;
        free(e->sql);
        free(e);
    }
    free(k->buckets);
    free(k->to_close);
    free(k);
}

static uint64_t sql_hash(const char *s)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

static stmt_entry **bucket_of(pgtx__stmt_cache *k, uint64_t hash)
{
    return &k->buckets[hash & (uint64_t)(k->nbuckets - 1)];
}

static stmt_entry *cache_find(pgtx__stmt_cache *k, const char *sql, uint64_t hash)
{
    for (stmt_entry *e = *bucket_of(k, hash); e; e = e->chain)
        if (e->hash == hash && strcmp(e->sql, sql) == 0)
            return e;
    return NULL;
}

static stmt_entry *cache_find_name(pgtx__stmt_cache *k, unsigned name)
{
    for (stmt_entry *e = k->head; e; e = e->next)
        if (e->name == name)
            return e;
    return NULL;
}

static void lru_unlink(pgtx__stmt_cache *k, stmt_entry *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else
        k->head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        k->tail = e->prev;
    e->prev = e->next = NULL;
}

static void lru_push(pgtx__stmt_cache *k, stmt_entry *e)
{
    e->prev = NULL;
    e->next = k->head;
    if (k->head)
        k->head->prev = e;
    k->head = e;
    if (k->tail == NULL)
        k->tail = e;
}

/* Take the entry out of the cache and free it; `deallocate` queues its
   name for DEALLOCATE (the server has it, or may have it). */
static void cache_drop(pgtx__stmt_cache *k, stmt_entry *e, bool deallocate)
{
    stmt_entry **pp = bucket_of(k, e->hash);
    while (*pp != e)
        pp = &(*pp)->chain;
    *pp = e->chain;
    lru_unlink(k, e);
    k->count--;
    if (deallocate && k->n_close < k->capacity)
        k->to_close[k->n_close++] = e->name;
    free(e->sql);
    free(e);
}

/* Forget everything: the server no longer has our statements. */
static void cache_clear(pgtx__stmt_cache *k)
{
    while (k->head)
        cache_drop(k, k->head, false);
    k->n_close = 0;
}

/* A new entry for `sql`, evicting the least recently used when full.
   NULL when out of memory (the statement then goes unprepared). */
static stmt_entry *cache_add(pgtx_conn *c, const char *sql, uint64_t hash)
{
    pgtx__stmt_cache *k = c->cache;
    if (k->count >= k->capacity && k->tail) {
        cache_drop(k, k->tail, true);
        atomic_fetch_add(&pgtx__pool_counters(c->pool)->stmt_evictions, 1);
    }
    stmt_entry *e = calloc(1, sizeof *e);
    if (e == NULL || (e->sql = strdup(sql)) == NULL) {
        free(e);
        return NULL;
    }
    e->hash = hash;
    e->name = ++k->next_name;
    e->chain = *bucket_of(k, hash);
    *bucket_of(k, hash) = e;
    lru_push(k, e);
    k->count++;
    return e;
}

static void stmt_name(char out[24], unsigned name)
{
    snprintf(out, 24, "pgtx_%u", name);
}

/* ---- statements in a pipeline ------------------------------------------ */

static bool send_unnamed(pgtx_conn *c, const char *sql, int n,
                         const char *const *params)
{
    return PQsendQueryParams(c->pg, sql, n, NULL, params, NULL, NULL, 0) == 1;
}

bool pgtx__wire_send(pgtx_conn *c, const char *sql, int n,
                     const char *const *params, pgtx__sent *how)
{
    memset(how, 0, sizeof *how);
    if (c->cache == NULL)
        return send_unnamed(c, sql, n, params);
    uint64_t hash = sql_hash(sql);
    stmt_entry *e = cache_find(c->cache, sql, hash);
    pgtx__tx_counters *k = pgtx__pool_counters(c->pool);
    char name[24];
    if (e != NULL) {
        lru_unlink(c->cache, e);
        lru_push(c->cache, e);
        how->cached = e->ready;
        atomic_fetch_add_explicit(&k->stmt_hits, 1, memory_order_relaxed);
    } else if ((e = cache_add(c, sql, hash)) == NULL) {
        return send_unnamed(c, sql, n, params);
    } else {
        stmt_name(name, e->name);
        if (!PQsendPrepare(c->pg, name, sql, n, NULL)) {
            cache_drop(c->cache, e, false);
            return false;
        }
        how->prepared = e->name;
        atomic_fetch_add_explicit(&k->stmt_prepares, 1, memory_order_relaxed);
    }
    how->name = e->name;
    stmt_name(name, e->name);
    return PQsendQueryPrepared(c->pg, name, n, params, NULL, NULL, 0) == 1;
}

/* One result and the NULL that ends it (pipeline mode). */
static PGresult *take_one(pgtx_conn *c)
{
    PGresult *r = pgtx__get_result(c);
    if (r != NULL && PQresultStatus(r) != PGRES_PIPELINE_SYNC) {
        PGresult *end = pgtx__get_result(c);
        PQclear(end); /* NULL, unless the query returned several results */
    }
    return r;
}

/* The Parse's verdict: the entry is ready, or goes (refused or skipped). */
static void settle_prepare(pgtx_conn *c, unsigned name, const PGresult *r)
{
    stmt_entry *e = c->cache ? cache_find_name(c->cache, name) : NULL;
    if (e == NULL)
        return; /* evicted meanwhile: its DEALLOCATE is queued */
    if (PQresultStatus(r) == PGRES_COMMAND_OK)
        e->ready = true;
    else
        cache_drop(c->cache, e, false);
}

/* A statement prepared in an earlier round failed in a way that says the
   server's copy is gone (26000: all of ours are, e.g. DISCARD ALL) or no
   longer fits the table (0A000 "cached plan must not change result type").
   Only a cached statement can fail so, which is why no message is read. */
static bool forget_if_stale(pgtx_conn *c, const pgtx__sent *how, const PGresult *r)
{
    const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
    if (!how->cached || c->cache == NULL || state == NULL)
        return false;
    if (strcmp(state, "26000") == 0) {
        cache_clear(c->cache);
        return true;
    }
    stmt_entry *e = strcmp(state, "0A000") == 0 ? cache_find_name(c->cache, how->name)
                                                : NULL;
    if (e != NULL)
        cache_drop(c->cache, e, true);
    return e != NULL;
}

PGresult *pgtx__wire_take(pgtx_conn *c, const pgtx__sent *how, bool *stale)
{
    *stale = false;
    if (how->prepared) {
        PGresult *p = take_one(c);
        if (p == NULL) {
            settle_prepare(c, how->prepared, NULL);
            return NULL;
        }
        settle_prepare(c, how->prepared, p);
        if (PQresultStatus(p) == PGRES_FATAL_ERROR) {
            /* The server could not prepare it (a syntax error, an unknown
               table or column) and so skipped its execution: the Parse's
               error is the statement's. */
            PQclear(take_one(c));
            return p;
        }
        PQclear(p);
    }
    PGresult *r = take_one(c);
    if (r != NULL && PQresultStatus(r) == PGRES_FATAL_ERROR)
        *stale = forget_if_stale(c, how, r);
    return r;
}

int pgtx__wire_send_deallocs(pgtx_conn *c)
{
    pgtx__stmt_cache *k = c->cache;
    int sent = 0;
    for (; k && sent < k->n_close; sent++) {
        char sql[40];
        snprintf(sql, sizeof sql, "DEALLOCATE pgtx_%u", k->to_close[sent]);
        if (!send_unnamed(c, sql, 0, NULL) || !PQpipelineSync(c->pg))
            break;
    }
    if (k && sent > 0) {
        memmove(k->to_close, k->to_close + sent,
                (size_t)(k->n_close - sent) * sizeof *k->to_close);
        k->n_close -= sent;
    }
    return sent;
}

bool pgtx__wire_take_deallocs(pgtx_conn *c, int n)
{
    for (int i = 0; i < n && PQstatus(c->pg) == CONNECTION_OK; i++) {
        PQclear(take_one(c));                /* DEALLOCATE: done or gone */
        PQclear(pgtx__get_result(c));        /* its Sync */
    }
    return PQstatus(c->pg) == CONNECTION_OK;
}
