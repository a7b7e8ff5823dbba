/* route_docs.c — GET /openapi.yaml: docs/openapi.yaml, embedded at build time. */
#include "app_internal.h"

#include <stdlib.h>
#include <string.h>

void docs_openapi(shop_ctx *ctx)
{
    /* http.c frees the body it sends: a copy, NUL included. */
    char *copy = malloc(SHOP_OPENAPI_YAML_LEN + 1);
    if (copy == NULL) {
        reply_error(ctx->res, 503, "overloaded", "out of memory");
        ctx->res->retry_after = 1;
        return;
    }
    memcpy(copy, SHOP_OPENAPI_YAML, SHOP_OPENAPI_YAML_LEN + 1);
    free(ctx->res->body);
    ctx->res->body = copy;
    ctx->res->status = 200;
    ctx->res->content_type = "application/yaml";
}
