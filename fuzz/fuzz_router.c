/*
 * fuzz_router.c — routing: the method and path of a request through
 * shop_app_handle without a token or a body (no database, app.h), and the
 * path id parser on its own.
 *
 * Input: "METHOD PATH" (split at the first space; no space: GET and the
 * whole input as the path).  The id parser also gets the raw input and
 * must accept exactly the canonical decimals 1..INT64_MAX.
 */
#include "app.h"

#include <inttypes.h>

/* shop_parse_id against its definition: what it accepts prints back the
   same, and it accepts what any int64 > 0 prints as. */
static void check_parse_id(const uint8_t *data, size_t size)
{
    int64_t id = 0;
    char text[32];
    if (shop_parse_id((const char *)data, size, &id)) {
        int n = snprintf(text, sizeof text, "%" PRId64, id);
        if (id <= 0 || (size_t)n != size || memcmp(text, data, size) != 0) {
            fprintf(stderr, "shop_parse_id accepted %.*s as %" PRId64 "\n",
                    (int)size, (const char *)data, id);
            abort();
        }
    } else if (size > 0 && size <= 19 && data[0] != '0') {
        bool digits = true;
        for (size_t i = 0; i < size; i++)
            digits = digits && data[i] >= '0' && data[i] <= '9';
        if (digits && (size < 19 || memcmp(data, "9223372036854775807", 19) <= 0)) {
            fprintf(stderr, "shop_parse_id refused %.*s\n", (int)size,
                    (const char *)data);
            abort();
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    check_parse_id(data, size);
    char *s = fuzz_cstr(data, size);
    char *space = strchr(s, ' ');
    shop_request req = {.method = "GET", .path = s};
    if (space) {
        *space = '\0';
        req.method = s;
        req.path = space + 1;
    }
    shop_response res;
    shop_app_handle(fuzz_app(), &req, &res);
    fuzz_check_response(&res);
    free(res.body);
    free(s);
    return 0;
}
