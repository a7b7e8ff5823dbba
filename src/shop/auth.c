/*
 * auth.c — bearer tokens.  The admin token is compared in constant time
 * (both sides hashed first, so that not even its length leaks).  An account
 * token is "<id>.<secret>": 32 random bytes in base64url without padding,
 * shown once at creation; the database keeps only the secret's hash, found
 * by the id in front of it.
 */
#include "app_internal.h"

#include <sodium.h>
#include <string.h>
#include <strings.h>

static void hash_text(const char *s, size_t len, unsigned char out[SHOP_HASH_BYTES])
{
    crypto_generichash(out, SHOP_HASH_BYTES, (const unsigned char *)s, len,
                       NULL, 0);
}

bool auth_init(shop_app *app, const char *admin_token)
{
    if (sodium_init() < 0)
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

/* An account token: its hash against the account's, by primary key. */
static bool identify_account(shop_ctx *ctx, const char *token)
{
    int64_t id;
    const char *secret;
    if (!account_token(token, &id, &secret))
        return true;
    shop_num idtext = num_of(id);
    lookup_arg a = {.id = idtext.s};
    pgtx_run_info info;
    pgtx_error err;
    pgtx_status st = pgtx_run(ctx->app->reader, lookup_tx, &a, &info, &err);
    if (st != PGTX_OK) {
        PQclear(a.row);
        reply_failure(ctx->res, st, &info, &err, NULL);
        return false;
    }
    unsigned char h[SHOP_HASH_BYTES], stored[SHOP_HASH_BYTES];
    bool found = looked_up_hash(a.row, stored);
    PQclear(a.row);
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

bool auth_may_act_for(shop_ctx *ctx, int64_t account_id)
{
    if (ctx->role == SHOP_ROLE_ADMIN ||
        (ctx->role == SHOP_ROLE_ACCOUNT && ctx->account_id == account_id))
        return true;
    reply_error(ctx->res, 403, "forbidden",
                "this token may act only on account %lld, not %lld",
                (long long)ctx->account_id, (long long)account_id);
    return false;
}
