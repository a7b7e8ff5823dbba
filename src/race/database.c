/* database.c — which PostgreSQL pgtx-race talks to: --database, DATABASE_URL,
   or an embedded local cluster of its own (--data-dir, PGTX_RACE_DATA_DIR,
   ./.pgtx/race/pgdata) that it starts and stops itself. */
#include "race.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "localpg.h"

static lpg_cluster *embedded;


/* ---- checking a connection string before anything runs ------------------ */

/* The syntax and the port now: libpq would find them only when it
   connects, as a connection failure (exit 3 instead of 2). */
static bool check_conninfo(const char *origin, const char *s, char *err, size_t errlen)
{
    pgtx_error e;
    if (pgtx_conninfo_check(s, &e) == PGTX_OK)
        return true;
    snprintf(err, errlen, "%s: %s", origin, e.message);
    return false;
}

/* A flag, else its variable when set and not empty, else NULL. */
static const char *flag_or_env(const char *flag, const char *env, const char **origin,
                               const char *flag_name)
{
    if (flag) {
        *origin = flag_name;
        return flag;
    }
    const char *v = getenv(env);
    *origin = env;
    return v && *v ? v : NULL;
}

bool race_database_choose(const char *database_flag, const char *data_dir_flag,
                          race_database *db, char *err, size_t errlen)
{
    const char *origin;
    /* An empty --database means libpq's own defaults (PGHOST...). */
    db->conninfo = flag_or_env(database_flag, "DATABASE_URL", &origin, "--database");
    if (db->conninfo && !check_conninfo(origin, db->conninfo, err, errlen))
        return false;
    db->data_dir = flag_or_env(data_dir_flag, RACE_DATA_DIR_ENV, &origin, "--data-dir");
    if (db->data_dir && *db->data_dir == '\0') {
        snprintf(err, errlen, "%s: the folder's name is empty", origin);
        return false;
    }
    if (db->data_dir == NULL)
        db->data_dir = RACE_DEFAULT_DATA_DIR;
    return true;
}

/* ---- opening it ------------------------------------------------------------ */

static bool start_embedded(const char *dir, const char **conninfo, char *err,
                           size_t errlen)
{
    lpg_options opt;
    lpg_options_init(&opt);
    opt.data_dir = dir;
    /* Benchmarks run up to 64 clients plus set-up: leave headroom. */
    opt.max_connections = 200;
    lpg_error e;
    if (lpg_start(&opt, &embedded, &e) != LPG_OK) {
        snprintf(err, errlen, "cannot start the embedded PostgreSQL in %s: %s", dir,
                 pgtx_one_line_(e.message));
        return false;
    }
    fprintf(stderr, "pgtx-race: using the embedded PostgreSQL in %s%s\n",
            lpg_data_dir(embedded), lpg_created(embedded) ? " (created now)" : "");
    *conninfo = lpg_conninfo(embedded);
    return true;
}

bool race_database_open(const race_database *db, const char **conninfo, char *err,
                        size_t errlen)
{
    if (db->conninfo) {
        *conninfo = db->conninfo;
        return true;
    }
    return start_embedded(db->data_dir, conninfo, err, errlen);
}

bool race_database_close(void)
{
    if (embedded == NULL)
        return true;
    lpg_error e;
    bool ok = lpg_stop(embedded, &e) == LPG_OK;
    if (!ok)
        fprintf(stderr, "pgtx-race: stopping the embedded PostgreSQL: %s\n",
                pgtx_one_line_(e.message));
    embedded = NULL;
    return ok;
}

int race_database_finish(int rc)
{
    bool stopped = race_database_close();
    return stopped || rc != RACE_EXIT_KEPT ? rc : RACE_EXIT_CANNOT_RUN;
}
