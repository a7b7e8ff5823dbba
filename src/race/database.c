/* database.c — which PostgreSQL pgtx-race talks to: --database, DATABASE_URL,
   or an embedded local cluster it starts and stops itself. */
#include "race.h"

#include <stdio.h>
#include <stdlib.h>

#include "localpg.h"

static lpg_cluster *embedded;

static bool start_embedded(const char **conninfo, char *err, size_t errlen)
{
    lpg_options opt;
    lpg_options_init(&opt);
    const char *dir = getenv("PGTX_DATA_DIR");
    if (dir && *dir)
        opt.data_dir = dir;
    /* Benchmarks run up to 64 clients plus set-up: leave headroom. */
    opt.max_connections = 200;
    lpg_error e;
    if (lpg_start(&opt, &embedded, &e) != LPG_OK) {
        snprintf(err, errlen, "cannot start the embedded PostgreSQL: %s", e.message);
        return false;
    }
    fprintf(stderr, "pgtx-race: using the embedded PostgreSQL in %s%s\n",
            lpg_data_dir(embedded), lpg_created(embedded) ? " (created now)" : "");
    *conninfo = lpg_conninfo(embedded);
    return true;
}

bool race_database_open(const char *flag, const char **conninfo, char *err,
                        size_t errlen)
{
    /* An empty --database means libpq's own defaults (PGHOST...). */
    if (flag) {
        *conninfo = flag;
        return true;
    }
    const char *url = getenv("DATABASE_URL");
    if (url && *url) {
        *conninfo = url;
        return true;
    }
    return start_embedded(conninfo, err, errlen);
}

void race_database_close(void)
{
    if (embedded == NULL)
        return;
    lpg_error e;
    if (lpg_stop(embedded, &e) != LPG_OK)
        fprintf(stderr, "pgtx-race: stopping the embedded PostgreSQL: %s\n", e.message);
    embedded = NULL;
}
