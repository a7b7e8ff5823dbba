/* route_accounts.c — POST /v1/accounts, GET /v1/accounts/{id}, POST /v1/accounts/{id}/deposits. */
#include "app_internal.h"

#include <sodium.h>
#include <stdio.h>

static const shop_field ACCOUNT_FIELDS[] = {
    {"name", SHOP_FIELD_TEXT, 0, false},
    {"balance", SHOP_FIELD_INT, 0, false},
};

/* The account and its 'initial' ledger row in one statement, so that
   balance = sum(ledger) holds from the first instant. */
static const char CREATE_SQL[] =
    "WITH a AS (INSERT INTO account (name, balance, token_hash)"
    " VALUES ($1, $2, $3) RETURNING " ACCOUNT_COLUMNS "),"
    " l AS (INSERT INTO ledger (account_id, amount, kind)"
    " SELECT id, balance, 'initial' FROM a)"
    " SELECT " ACCOUNT_COLUMNS " FROM a";

/* The created account plus its token "<id>.<secret>", shown this once. */
static void reply_created(shop_response *res, const PGresult *row,
                          const char *secret)
{
    int64_t id;
    char token[24 + SHOP_SECRET_LEN];
    json_t *body = row_json(row, 0, -1);
    /* NULL is out of memory: reply_json's 503, not the 500 below (found by
       tests/test_alloc_fail.c). */
    if (body == NULL) {
        reply_json(res, 201, NULL);
        return;
    }
    if (pgtx_result_int64(row, 0, 0, &id) != PGTX_OK) {
        json_decref(body);
        reply_error(res, 500, "internal", "the created account could not be read");
        return;
    }
    snprintf(token, sizeof token, "%lld.%s", (long long)id, secret);
    /* Without the token the 201 would be useless: out of memory here is the
       503 (the account exists; its token is lost).  Found by
       tests/test_alloc_fail.c, which got a 201 without a token. */
    bool ok = json_object_set_new(body, "token", json_string(token)) == 0;
    sodium_memzero(token, sizeof token);
    if (!ok) {
        json_decref(body);
        body = NULL;
    }
    reply_json(res, 201, body);
}

void accounts_create(shop_ctx *ctx)
{
    shop_body b;
    if (!body_parse(ctx, ACCOUNT_FIELDS, 2, &b))
        return;
    char secret[SHOP_SECRET_LEN + 1], hash_hex[SHOP_BYTEA_HEX_LEN + 1];
    unsigned char hash[SHOP_HASH_BYTES];
    if (!auth_secret_new(secret, hash)) {
        body_free(&b);
        reply_error(ctx->res, 500, "internal", "no source of random bytes");
        return;
    }
    bytea_hex(hash, hash_hex);
    shop_num balance = num_of(b.num[1]);
    stmt_arg a = {.sql = CREATE_SQL, .n = 3,
                  .params = {b.text[0], balance.s, hash_hex}};
    if (run_tx(ctx, engine_for(ctx), stmt_tx, &a, NULL)) {
        int64_t id;
        /* An earlier "no such account" for this id must not outlive it. */
        if (pgtx_result_int64(a.rows, 0, 0, &id) == PGTX_OK)
            auth_forget(ctx->app, id);
        reply_created(ctx->res, a.rows, secret);
    }
    sodium_memzero(secret, sizeof secret);
    PQclear(a.rows);
    body_free(&b);
}

void accounts_get(shop_ctx *ctx)
{
    fetch_by_id(ctx, "SELECT " ACCOUNT_COLUMNS " FROM account WHERE id = $1",
                "account", NULL);
}

#define DEPOSIT_LEDGER                                                         \
    "INSERT INTO ledger (account_id, amount, kind)"                            \
    " SELECT id, $2::bigint, 'deposit' FROM c"

/* Combined: the ledger rows of every call, in call order. */
#define DEPOSIT_BATCH_LEDGER                                                   \
    "INSERT INTO ledger (account_id, amount, kind)"                            \
    " SELECT c.id, d.delta, 'deposit' FROM c, d ORDER BY d.n"

const shop_bump DEPOSIT_BUMP = {
    .counter = &COUNTER_BALANCE,
    .field = "amount",
    .atomic = BUMP_ATOMIC_SQL("account", "balance", ACCOUNT_COLUMNS, DEPOSIT_LEDGER),
    .set = BUMP_SET_SQL("account", "balance", ACCOUNT_COLUMNS, DEPOSIT_LEDGER),
    .overflow = "the balance plus the amount",
    .batch = BUMP_BATCH_SQL("account", "balance", DEPOSIT_BATCH_LEDGER),
};

void accounts_deposit(shop_ctx *ctx)
{
    combinable_handle(ctx, &DEPOSIT_COMBINABLE);
}
