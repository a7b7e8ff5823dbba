/*
 * fuzz_conninfo.c — libpgtx's connection strings and pool configuration:
 * pgtx_conninfo_check, then pgtx_pool_create with the same string and
 * fuzzed fields (destroyed at once; creating a pool opens no connection).
 *
 * Input: 10 bytes pick the pool's numbers (each from a table of edge
 * values), then the connection string up to a newline, then (if there is a
 * newline) the application_name.  A string that the check refuses must make
 * pgtx_pool_create refuse too, and neither may repeat it in its message (a
 * URI may hold a password).
 */
#include "pgtx.h"
#include "fuzz.h"

#include <limits.h>
#include <stdio.h>

#define NFIELDS 10

static const int VALUES[] = {0,  1,    2,     5,      -1,      -2,    10,
                             30, 1000, 30000, 600000, INT_MAX, INT_MIN, 100000};
#define NVALUES (sizeof VALUES / sizeof VALUES[0])

static void set_fields(pgtx_pool_config *cfg, const uint8_t *b)
{
    int *fields[NFIELDS] = {
        &cfg->pool_size,        &cfg->max_overflow,
        &cfg->checkout_timeout_ms, &cfg->connect_timeout_ms,
        &cfg->check_idle_ms,    &cfg->max_lifetime_ms,
        &cfg->connect_retry_ms, &cfg->socket_timeout_ms,
        &cfg->statement_cache_size, &cfg->idle_timeout_ms,
    };
    for (int i = 0; i < NFIELDS; i++)
        if (b[i] != 0xff) /* 0xff keeps the default */
            *fields[i] = VALUES[b[i] % NVALUES];
}

/* Long enough that a message holding it is not a coincidence. */
static void check_not_repeated(const char *conninfo, const pgtx_error *err)
{
    if (strlen(conninfo) >= 12 && strstr(err->message, conninfo) != NULL) {
        fprintf(stderr, "the message repeats the connection string: %s\n",
                err->message);
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < NFIELDS)
        return 0;
    char *conninfo = fuzz_cstr(data + NFIELDS, size - NFIELDS);
    char *appname = strchr(conninfo, '\n');
    if (appname)
        *appname++ = '\0';
    pgtx_error err;
    pgtx_status checked = pgtx_conninfo_check(conninfo, &err);
    if (checked != PGTX_OK)
        check_not_repeated(conninfo, &err);
    pgtx_pool_config cfg;
    pgtx_pool_config_init(&cfg);
    cfg.conninfo = conninfo;
    cfg.application_name = appname;
    set_fields(&cfg, data);
    pgtx_pool *pool = NULL;
    pgtx_status st = pgtx_pool_create(&cfg, &pool, &err);
    if (st == PGTX_OK) {
        if (checked != PGTX_OK) {
            fprintf(stderr, "pgtx_pool_create took what pgtx_conninfo_check refused\n");
            abort();
        }
        pgtx_pool_destroy(pool);
    } else {
        check_not_repeated(conninfo, &err);
    }
    free(conninfo);
    return 0;
}
