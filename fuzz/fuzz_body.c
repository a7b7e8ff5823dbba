/*
 * fuzz_body.c — request bodies and their validation, route by route,
 * through shop_app_handle with the admin's token (so that every write
 * route reaches its body), no database (app.h).
 *
 * Input: byte 0 picks the route, byte 1 the Pgtx-Strategy header (low 3
 * bits: none, one of the five names, or a bad one) and whether the admin's
 * token is sent (bit 3 clear) or none; the rest is the body.  A body that
 * passes validation meets the missing database: 500, which is fine here —
 * what must not happen is a crash, a leak, or an answer that is not JSON.
 * The rows the request names for http.c's turns per row are checked too.
 */
#include "app.h"

static const char *const PATHS[] = {
    "/v1/accounts",          "/v1/accounts/1/deposits", "/v1/products",
    "/v1/products/1/restock", "/v1/coupons",            "/v1/coupons/1/claims",
    "/v1/orders",
};
#define NPATHS (sizeof PATHS / sizeof PATHS[0])

static const char *const STRATEGIES[] = {
    NULL, "atomic", "lock", "optimistic", "serializable", "naive", "ATOMIC", "",
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    shop_request req = {
        .method = "POST",
        .path = PATHS[data[0] % NPATHS],
        .strategy = STRATEGIES[data[1] & 7],
        .authorization = (data[1] & 8) ? NULL : "Bearer " FUZZ_ADMIN_TOKEN,
    };
    /* A copy of exactly the body's bytes, so that ASan sees any read past
       its end (http.c's buffer is not NUL-terminated either). */
    char *body = NULL;
    if (size > 2) {
        body = malloc(size - 2);
        if (body == NULL)
            abort();
        memcpy(body, data + 2, size - 2);
        req.body = body;
        req.body_len = size - 2;
    }
    /* The rows it names, as http.c asks before queueing it: only positive
       ids, no more than fit. */
    shop_request_rows rows;
    shop_request_rows_of(&req, &rows);
    if (rows.n < 0 || rows.n > SHOP_ROW_KEYS_MAX || (rows.n > 0 && rows.route == NULL))
        abort();
    for (int i = 0; i < rows.n; i++)
        if (rows.key[i].id <= 0)
            abort();
    shop_response res;
    shop_app_handle(fuzz_app(), &req, &res);
    fuzz_check_response(&res);
    free(res.body);
    free(body);
    return 0;
}
