/* stub_app.c — stands in for the domain side (app.c, migrate.c) until it
   lands, so that the HTTP side builds and runs: every route is 404 except
   /stub/sleep (holds a worker for a second, to fill the queue by hand) and
   /stub/echo (says how many body bytes arrived).  The symbols are weak, so
   real definitions win wherever they land first. */
#include "shop.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define STUB __attribute__((weak))

struct shop_app {
    shop_metrics *metrics; /* borrowed */
};

static const char *const names[SHOP_STRATEGY_COUNT] = {
    "atomic", "lock", "optimistic", "serializable", "naive"};

STUB const char *shop_strategy_name(shop_strategy s)
{
    return (int)s >= 0 && s < SHOP_STRATEGY_COUNT ? names[s] : "unknown";
}

STUB bool shop_strategy_parse(const char *name, shop_strategy *out)
{
    for (int i = 0; i < SHOP_STRATEGY_COUNT; i++)
        if (strcmp(name, names[i]) == 0) {
            *out = (shop_strategy)i;
            return true;
        }
    return false;
}

STUB pgtx_status shop_migrate(pgtx_pool *pool, pgtx_error *err)
{
    (void)pool;
    (void)err;
    return PGTX_OK;
}

STUB pgtx_status shop_app_create(pgtx_pool *pool, shop_metrics *metrics,
                                 const shop_config *cfg, const char *admin_token,
                                 shop_app **out, pgtx_error *err)
{
    (void)pool;
    (void)cfg;
    (void)admin_token;
    shop_app *app = malloc(sizeof *app);
    if (app == NULL)
        return pgtx_fail(err, PGTX_NOMEM, "out of memory");
    app->metrics = metrics;
    *out = app;
    return PGTX_OK;
}

STUB void shop_app_destroy(shop_app *app)
{
    free(app);
}

STUB void shop_app_handle(shop_app *app, const shop_request *req,
                          shop_response *res)
{
    char body[96];
    res->route = "unknown";
    if (strcmp(req->path, "/stub/sleep") == 0) {
        struct timespec ts = {1, 0};
        nanosleep(&ts, NULL);
        shop_metrics_tx(app->metrics, SHOP_ATOMIC, SHOP_TX_COMMITTED, 0);
        res->route = "POST /stub/sleep";
        res->strategy = "atomic";
        res->retries = 0;
        snprintf(body, sizeof body, "{\"slept\":true}");
        res->status = 200;
    } else if (strcmp(req->path, "/stub/echo") == 0) {
        res->route = "POST /stub/echo";
        snprintf(body, sizeof body, "{\"bytes\":%zu}", req->body_len);
        res->status = 200;
    } else {
        snprintf(body, sizeof body,
                 "{\"error\":{\"code\":\"not_found\",\"message\":\"no such route\"}}");
        res->status = 404;
    }
    res->body = strdup(body);
}
