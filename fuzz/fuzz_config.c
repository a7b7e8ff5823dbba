/*
 * fuzz_config.c — pgtx-shop's flags and environment (shop_config_parse).
 *
 * Input: lines.  A line "@NAME=VALUE" is put in the environment, which is
 * otherwise empty; every other line is one argument after "pgtx-shop".
 * Host names are resolved as numeric addresses only (getaddrinfo below), so
 * that no input makes a DNS query.  What the parser accepts must hold
 * together: the limits of the flags' table and no naive strategy without
 * --allow-unsafe.
 */
#include "server.h"
#include "fuzz.h"

#include <dlfcn.h>
#include <netdb.h>
#include <stdio.h>

#define MAX_ARGS 64

typedef int (*gai_fn)(const char *, const char *, const struct addrinfo *,
                      struct addrinfo **);

/* config.c resolves --listen's host: numeric only here, never the network. */
int getaddrinfo(const char *node, const char *service,
                const struct addrinfo *hints, struct addrinfo **res)
{
    static gai_fn real;
    if (real == NULL)
        *(void **)&real = dlsym(RTLD_NEXT, "getaddrinfo");
    if (real == NULL)
        return EAI_FAIL;
    struct addrinfo h = {0};
    if (hints)
        h = *hints;
    h.ai_flags |= AI_NUMERICHOST;
    return real(node, service, &h, res);
}

static void check(const shop_config *cfg, const shop_process_config *proc)
{
    bool ok = cfg->threads >= 1 && cfg->threads <= 1024 &&
              cfg->queue_size >= 1 && cfg->pool_size >= 1 &&
              cfg->pool_size <= 1024 && cfg->max_overflow >= 0 &&
              cfg->pool_timeout_ms >= 1 && cfg->db_timeout_ms >= 0 &&
              cfg->listen_host != NULL && cfg->listen_port >= 0 &&
              cfg->listen_port <= 65535 && cfg->max_body > 0 &&
              (unsigned)cfg->strategy < PGTX_STRATEGY_COUNT &&
              (cfg->strategy != PGTX_STRATEGY_NAIVE || cfg->allow_unsafe) &&
              proc->max_connections >= 0 && proc->max_connections_per_ip >= 0;
    if (!ok) {
        fprintf(stderr, "shop_config_parse accepted an inconsistent configuration\n");
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = fuzz_cstr(data, size);
    static char program[] = "pgtx-shop";
    char *argv[MAX_ARGS + 1] = {program};
    char *env[MAX_ARGS];
    int argc = 1, nenv = 0;
    clearenv();
    for (char *line = text, *next; line && argc < MAX_ARGS && nenv < MAX_ARGS;
         line = next) {
        next = strchr(line, '\n');
        if (next)
            *next++ = '\0';
        if (line[0] == '@' && strchr(line, '=') && line[1] != '=') {
            env[nenv++] = line + 1;
            putenv(line + 1); /* not copied: cleared before text is freed */
        } else {
            argv[argc++] = line;
        }
    }
    argv[argc] = NULL;
    shop_config cfg;
    shop_process_config proc;
    if (shop_config_parse(argc, argv, &cfg, &proc) == SHOP_CONFIG_RUN)
        check(&cfg, &proc);
    clearenv();
    (void)env;
    free(text);
    return 0;
}
