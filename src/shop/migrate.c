/*
 * migrate.c — applies the SQL scripts compiled into the binary (sql/NNN_what.sql)
 * that the database has not seen, in version order, each script and its
 * schema_migrations row in one transaction.  Every transaction first takes
 * one fixed advisory lock, so that processes starting together wait for
 * each other and each script runs once.
 */
#include "app_internal.h"

#include <stdio.h>

/* "pgtxshop" in ASCII: any fixed key works, as long as it is this one. */
#define MIGRATE_LOCK_KEY "8099570515530248048"


/* The script runs through the simple query protocol, the only one that
   takes several statements at once; its error becomes a pgtx_error. */
static pgtx_status run_script(pgtx_tx *tx, const shop_migration *m, pgtx_error *err)
{
    PGconn *pg = pgtx_tx_pg_borrow(tx);
    if (pg == NULL)
        return pgtx_fail(err, PGTX_CONNECTION_LOST, "%s: no connection", m->name);
    PGresult *r = PQexec(pg, m->sql);
    ExecStatusType s = PQresultStatus(r);
    if (s == PGRES_COMMAND_OK || s == PGRES_TUPLES_OK) {
        PQclear(r);
        return PGTX_OK;
    }
    const char *state = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    pgtx_status st = state ? pgtx_status_from_sqlstate(state)
                           : PGTX_CONNECTION_LOST;
    pgtx_fail(err, st, "migration %s: %s", m->name, PQerrorMessage(pg));
    if (err && state)
        snprintf(err->sqlstate, sizeof err->sqlstate, "%s", state);
    PQclear(r);
    return st;
}

/* The runner's arg is not const: carry the static script through this. */
typedef struct migrate_arg {
    const shop_migration *m; /* borrowed, static */
} migrate_arg;

static pgtx_status migrate_one_tx(pgtx_tx *tx, void *p, pgtx_error *err)
{
    const shop_migration *m = ((migrate_arg *)p)->m;
    char version[16];
    snprintf(version, sizeof version, "%d", m->version);
    const char *params[1] = {version};
    PGresult *r = NULL;
    pgtx_status st = pgtx_query(tx, "SELECT pg_advisory_xact_lock(" MIGRATE_LOCK_KEY ")",
                                0, NULL, NULL, err);
    if (st == PGTX_OK)
        st = pgtx_query(tx, "CREATE TABLE IF NOT EXISTS schema_migrations ("
                            "version int PRIMARY KEY,"
                            " applied_at timestamptz NOT NULL DEFAULT now())",
                        0, NULL, NULL, err);
    if (st == PGTX_OK)
        st = pgtx_query(tx, "SELECT FROM schema_migrations WHERE version = $1",
                        1, params, &r, err);
    if (st != PGTX_OK || PQntuples(r) > 0) {
        PQclear(r);
        return st;
    }
    PQclear(r);
    st = run_script(tx, m, err);
    if (st == PGTX_OK)
        st = pgtx_query(tx, "INSERT INTO schema_migrations (version) VALUES ($1)",
                        1, params, NULL, err);
    return st;
}

static bool versions_ascend(void)
{
    for (size_t i = 1; i < SHOP_MIGRATION_COUNT; i++)
        if (SHOP_MIGRATIONS[i].version <= SHOP_MIGRATIONS[i - 1].version)
            return false;
    return true;
}

pgtx_status shop_migrate(pgtx_pool *pool, pgtx_error *err)
{
    if (pool == NULL)
        return pgtx_fail(err, PGTX_INVALID, "no pool");
    if (!versions_ascend())
        return pgtx_fail(err, PGTX_INVALID, "two migrations share a version");
    pgtx_engine *engine = NULL;
    pgtx_status st = pgtx_engine_create(pool, NULL, &engine, err);
    for (size_t i = 0; st == PGTX_OK && i < SHOP_MIGRATION_COUNT; i++) {
        migrate_arg a = {&SHOP_MIGRATIONS[i]};
        st = pgtx_run(engine, migrate_one_tx, &a, NULL, err);
    }
    pgtx_engine_destroy(engine);
    return st;
}
