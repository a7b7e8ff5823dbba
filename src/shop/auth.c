/*
 * auth.c — bearer tokens.  The admin token is compared in constant time
 * (both sides hashed first, so that not even its length leaks).  An account
 * token is "<id>.<secret>": 32 random bytes in base64url without padding,
 * shown once at creation; the database keeps only the secret's hash, found
 * by the id in front of it.
 */
#include "app_internal.h"

#include <pthread.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/*
 * Account lookups are cached for a short while, found or not, so that a
 * flood of tokens for one id (unknown, or with a wrong secret) costs the
 * database one lookup per id per AUTH_TTL_MS, not one per request.  Safe
 * because an account is never deleted and its token never changes through
 * the API; an account created here clears its id's entry (auth_forget), and
 * one created by another process is seen at most AUTH_TTL_MS late.  The
 * table is direct-mapped: bounded, and a collision only costs a lookup.
 * Requests that miss on an id being looked up wait for that lookup rather
 * than send their own (one lookup per id, however many arrive at once).
 */
#define AUTH_SLOTS 1024
#define AUTH_TTL_MS 1000

typedef struct auth_entry {
    int64_t id;            /* 0: empty */
    uint64_t ticket;       /* the lookup that fills it, while pending */
    int64_t expires_ms;
    bool pending;          /* a lookup is on its way */
    bool found;
    unsigned char hash[SHOP_HASH_BYTES];
} auth_entry;

struct auth_cache {
    pthread_mutex_t mu;
    pthread_cond_t filled;     /* a pending entry was filled or dropped */
    uint64_t next_ticket;
    auth_entry slot[AUTH_SLOTS];
};

static void hash_text(const char *s, size_t len, unsigned char out[SHOP_HASH_BYTES])
{
    crypto_generichash(out, SHOP_HASH_BYTES, (const unsigned char *)s, len,
                       NULL, 0);
}

static auth_cache *cache_new(void)
{
    auth_cache *c = calloc(1, sizeof *c);
    if (c == NULL)
        return NULL;
    if (pthread_mutex_init(&c->mu, NULL) != 0) {
        free(c);
        return NULL;
    }
    if (pthread_cond_init(&c->filled, NULL) != 0) {
        pthread_mutex_destroy(&c->mu);
        free(c);
        return NULL;
    }
    return c;
}

void auth_fini(shop_app *app)
{
    auth_cache *c = app->auth_cache;
    if (c == NULL)
        return;
    pthread_cond_destroy(&c->filled);
    pthread_mutex_destroy(&c->mu);
    free(c);
    app->auth_cache = NULL;
}

static auth_entry *slot_of(auth_cache *c, int64_t id)
{
    /* Fibonacci hashing: consecutive ids spread over the table. */
    uint64_t h = (uint64_t)id * UINT64_C(0x9E3779B97F4A7C15);
    return &c->slot[h >> 54]; /* the top 10 bits: AUTH_SLOTS */
}

void auth_forget(shop_app *app, int64_t id)
{
    auth_cache *c = app->auth_cache;
    if (c == NULL)
        return;
    pthread_mutex_lock(&c->mu);
    auth_entry *e = slot_of(c, id);
    if (e->id == id) {
        /* A pending lookup may have read before the account existed: it
           finds its ticket gone and stores nothing. */
        bool woke = e->pending;
        memset(e, 0, sizeof *e);
        if (woke)
            pthread_cond_broadcast(&c->filled);
    }
    pthread_mutex_unlock(&c->mu);
}

/* What the cache knows of `id`: 1 found (hash in *hash), 0 not found, or
   -1 when the caller must look it up, with *ticket to hand to
   cache_fill (0: the slot is taken, do not store). */
static int cache_get(auth_cache *c, int64_t id, unsigned char hash[SHOP_HASH_BYTES],
                     uint64_t *ticket)
{
    *ticket = 0;
    if (c == NULL)
        return -1;
    pthread_mutex_lock(&c->mu);
    auth_entry *e = slot_of(c, id);
    while (e->id == id && e->pending)
        pthread_cond_wait(&c->filled, &c->mu);
    int known = -1;
    if (e->id == id && shop_now_ms() < e->expires_ms) {
        known = e->found;
        memcpy(hash, e->hash, SHOP_HASH_BYTES);
    } else if (!e->pending) {
        *e = (auth_entry){.id = id, .pending = true, .ticket = ++c->next_ticket};
        *ticket = e->ticket;
    }
    pthread_mutex_unlock(&c->mu);
    return known;
}

/* Ends the lookup of `ticket`: stores its outcome (ok: the lookup
   answered), or drops the entry so that the next request asks again. */
static void cache_fill(auth_cache *c, int64_t id, uint64_t ticket, bool ok,
                       bool found, const unsigned char hash[SHOP_HASH_BYTES])
{
    if (ticket == 0)
        return;
    pthread_mutex_lock(&c->mu);
    auth_entry *e = slot_of(c, id);
    if (e->id == id && e->pending && e->ticket == ticket) {
        if (ok) {
            e->pending = false;
            e->found = found;
            memcpy(e->hash, hash, SHOP_HASH_BYTES);
            e->expires_ms = shop_now_ms() + AUTH_TTL_MS;
        } else {
            memset(e, 0, sizeof *e);
        }
        pthread_cond_broadcast(&c->filled);
    }
    pthread_mutex_unlock(&c->mu);
}

bool auth_init(shop_app *app, const char *admin_token)
{
    if (sodium_init() < 0)
        return false;
    app->auth_cache = cache_new();
    if (app->auth_cache == NULL)
        return false;
    app->has_admin = admin_token != NULL && admin_token[0] != '\0';
    if (app->has_admin)
        hash_text(admin_token, strlen(admin_token), app->admin_hash);
    return true;
}

bool auth_secret_new(char secret[SHOP_SECRET_LEN + 1],
                     unsigned char hash[SHOP_HASH_BYTES])
{
    unsigned char raw[32];
    if (sodium_init() < 0)
        return false;
    randombytes_buf(raw, sizeof raw);
    sodium_bin2base64(secret, SHOP_SECRET_LEN + 1, raw, sizeof raw,
                      sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    sodium_memzero(raw, sizeof raw);
    hash_text(secret, SHOP_SECRET_LEN, hash);
    return true;
}

/* The token of "Bearer <token>" (the scheme is case-insensitive), or NULL. */
static const char *bearer(const char *header)
{
    static const char SCHEME[] = "Bearer ";
    if (header == NULL || strncasecmp(header, SCHEME, sizeof SCHEME - 1) != 0)
        return NULL;
    header += sizeof SCHEME - 1;
    while (*header == ' ')
        header++;
    return *header ? header : NULL;
}

static bool is_base64url(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
              (c >= '0' && c <= '9') || c == '-' || c == '_'))
            return false;
    }
    return true;
}

/* Splits "<id>.<secret>"; false when it cannot be an account token. */
static bool account_token(const char *t, int64_t *id, const char **secret)
{
    const char *dot = strchr(t, '.');
    if (dot == NULL || !shop_parse_id(t, (size_t)(dot - t), id))
        return false;
    *secret = dot + 1;
    return strlen(*secret) == SHOP_SECRET_LEN &&
           is_base64url(*secret, SHOP_SECRET_LEN);
}

typedef struct lookup_arg {
    const char *id;                       /* the account, as text */
    PGresult *row;                        /* out: its token hash, hex */
} lookup_arg;

/* Queued: BEGIN, the lookup and COMMIT make one round trip. */
static pgtx_status lookup_tx(pgtx_tx *tx, void *p, pgtx_error *err)
{
    lookup_arg *a = p;
    result_reset(&a->row);
    return pgtx_queue(tx, "SELECT encode(token_hash, 'hex') FROM account WHERE id = $1",
                      1, &a->id, &a->row, err);
}

/* The account's token hash out of the lookup's row; false when none. */
static bool looked_up_hash(const PGresult *r, unsigned char hash[SHOP_HASH_BYTES])
{
    size_t len = 0;
    return PQntuples(r) == 1 &&
           sodium_hex2bin(hash, SHOP_HASH_BYTES, PQgetvalue(r, 0, 0),
                          (size_t)PQgetlength(r, 0, 0), NULL, &len, NULL) == 0 &&
           len == SHOP_HASH_BYTES;
}

/* The account's token hash from the database: *found says whether there is
   one.  False: the database failed and the 503 is in ctx->res. */
static bool lookup_account(shop_ctx *ctx, int64_t id, bool *found,
                           unsigned char stored[SHOP_HASH_BYTES])
{
    shop_num idtext = num_of(id);
    lookup_arg a = {.id = idtext.s};
    pgtx_run_info info = {0};
    pgtx_error err;
    shop_metrics_auth_lookup(ctx->app->metrics, false);
    pgtx_status st = pgtx_run(ctx->app->reader, lookup_tx, &a, &info, &err);
    if (st != PGTX_OK) {
        PQclear(a.row);
        reply_failure(ctx->res, st, &info, &err, NULL);
        return false;
    }
    *found = looked_up_hash(a.row, stored);
    PQclear(a.row);
    return true;
}

/* An account token: its hash against the account's, by primary key. */
static bool identify_account(shop_ctx *ctx, const char *token)
{
    int64_t id;
    const char *secret;
    if (!account_token(token, &id, &secret))
        return true;
    unsigned char h[SHOP_HASH_BYTES], stored[SHOP_HASH_BYTES] = {0};
    uint64_t ticket;
    int known = cache_get(ctx->app->auth_cache, id, stored, &ticket);
    bool found = known == 1;
    if (known >= 0) {
        shop_metrics_auth_lookup(ctx->app->metrics, true);
    } else {
        bool ok = lookup_account(ctx, id, &found, stored);
        cache_fill(ctx->app->auth_cache, id, ticket, ok, found, stored);
        if (!ok)
            return false;
    }
    hash_text(secret, SHOP_SECRET_LEN, h);
    if (found && sodium_memcmp(h, stored, sizeof h) == 0) {
        ctx->role = SHOP_ROLE_ACCOUNT;
        ctx->account_id = id;
    }
    return true;
}

bool auth_identify(shop_ctx *ctx)
{
    ctx->role = SHOP_ROLE_NONE;
    const char *token = bearer(ctx->req->authorization);
    if (token == NULL)
        return true;
    unsigned char h[SHOP_HASH_BYTES];
    hash_text(token, strlen(token), h);
    if (ctx->app->has_admin &&
        sodium_memcmp(h, ctx->app->admin_hash, sizeof h) == 0) {
        ctx->role = SHOP_ROLE_ADMIN;
        return true;
    }
    return identify_account(ctx, token);
}

bool auth_acts_for(const shop_ctx *ctx, int64_t account_id)
{
    return ctx->role == SHOP_ROLE_ADMIN ||
           (ctx->role == SHOP_ROLE_ACCOUNT && ctx->account_id == account_id);
}

bool auth_may_act_for(shop_ctx *ctx, int64_t account_id)
{
    if (auth_acts_for(ctx, account_id))
        return true;
    reply_error(ctx->res, 403, "forbidden",
                "this token may act only on account %lld, not %lld",
                (long long)ctx->account_id, (long long)account_id);
    return false;
}
