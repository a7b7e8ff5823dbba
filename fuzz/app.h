/*
 * app.h — a pgtx-shop app with no database, for the targets that go
 * through the request path: its engines are NULL, so that everything up to
 * the first transaction runs for real and the transaction itself fails at
 * once (pgtx_run refuses a NULL engine) instead of waiting for a server.
 */
#ifndef PGTX_FUZZ_APP_H
#define PGTX_FUZZ_APP_H

#include "app_internal.h"
#include "fuzz.h"

#include <stdio.h>

#define FUZZ_ADMIN_TOKEN "fuzz-admin-token"

/* Made once and kept: the process ends with it. */
static inline shop_app *fuzz_app(void)
{
    static shop_app *app;
    if (app == NULL) {
        app = calloc(1, sizeof *app);
        if (app == NULL || !auth_init(app, FUZZ_ADMIN_TOKEN))
            abort();
        app->default_strategy = PGTX_STRATEGY_ATOMIC;
    }
    return app;
}

/* An answer must be a status with a JSON body (or a document for the
   OpenAPI route); anything else is a bug worth a crash. */
static inline void fuzz_check_response(const shop_response *res)
{
    if (res->status < 200 || res->status > 599 || res->body == NULL) {
        fprintf(stderr, "bad response: status %d, body %p\n", res->status,
                (const void *)res->body);
        abort();
    }
    if (res->content_type == NULL && res->body[0] != '{') {
        fprintf(stderr, "not a JSON object: %.80s\n", res->body);
        abort();
    }
}

#endif
