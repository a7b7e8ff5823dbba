/*
 * fuzz_token.c — the Authorization header: the Bearer scheme, the admin
 * token and account tokens "<id>.<secret>" (auth_identify, no database:
 * an account token's lookup fails at once, app.h).
 *
 * Input: the header's value.  Without a database no account can be
 * proven, so the only roles possible are none and, for exactly the admin's
 * token, admin; a database failure must leave an answer in the response.
 */
#include "app.h"

#include <strings.h>

/* What auth.c must make of the header: is it the admin's token? */
static bool is_admin(const char *h)
{
    if (strncasecmp(h, "Bearer ", 7) != 0)
        return false;
    h += 7;
    while (*h == ' ')
        h++;
    return strcmp(h, FUZZ_ADMIN_TOKEN) == 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *header = fuzz_cstr(data, size);
    shop_request req = {.method = "GET", .path = "/v1/orders/1",
                        .authorization = header};
    shop_response res = {.status = 0};
    shop_ctx ctx = {.app = fuzz_app(), .req = &req, .res = &res};
    bool ok = auth_identify(&ctx);
    bool want_admin = is_admin(header);
    if (ctx.role == SHOP_ROLE_ACCOUNT || (ok && (ctx.role == SHOP_ROLE_ADMIN) != want_admin) ||
        (!ok && res.body == NULL) || (ok && res.body != NULL)) {
        fprintf(stderr, "auth_identify: ok %d, role %d for %s\n", ok,
                (int)ctx.role, header);
        abort();
    }
    free(res.body);
    free(header);
    return 0;
}
