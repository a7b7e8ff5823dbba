/* quickstart.c — the README's example: one pool, two engines, a retried transaction. */
#include <pgtx.h>
#include <stdio.h>

static pgtx_status setup(pgtx_tx *tx, void *arg, pgtx_error *err)
{
    (void)arg; /* idempotent: a second run keeps the table and its balances */
    pgtx_status st = pgtx_query(tx, "CREATE TABLE IF NOT EXISTS acct (id int PRIMARY KEY, bal int NOT NULL)", 0, NULL, NULL, err);
    return st ? st : pgtx_query(tx, "INSERT INTO acct VALUES (1, 100), (2, 0) ON CONFLICT (id) DO NOTHING", 0, NULL, NULL, err);
}

static pgtx_status transfer(pgtx_tx *tx, void *arg, pgtx_error *err)
{
    (void)arg; /* runs again, from the top, if PostgreSQL says 40001 or 40P01 */
    pgtx_status st = pgtx_query(tx, "UPDATE acct SET bal = bal - 10 WHERE id = 1", 0, NULL, NULL, err);
    return st ? st : pgtx_query(tx, "UPDATE acct SET bal = bal + 10 WHERE id = 2", 0, NULL, NULL, err);
}

int main(void)
{
    pgtx_pool_config cfg;
    pgtx_pool_config_init(&cfg);            /* conninfo "": libpq's PG* environment */
    cfg.pool_size = 4;
    pgtx_pool *pool;
    pgtx_error err;
    if (pgtx_pool_create(&cfg, &pool, &err)) return fprintf(stderr, "%s\n", err.message), 1;

    pgtx_engine_options opt;
    pgtx_engine_options_init(&opt);         /* READ COMMITTED, retry 40001/40P01 */
    pgtx_engine *rc, *ser;
    opt.isolation = PGTX_SERIALIZABLE;      /* same pool, no extra connection */
    if (pgtx_engine_create(pool, NULL, &rc, &err) || pgtx_engine_create(pool, &opt, &ser, &err))
        return fprintf(stderr, "%s\n", err.message), 1;

    pgtx_run_info info = {0};
    pgtx_status st = pgtx_run(rc, setup, NULL, NULL, &err);
    if (st == PGTX_OK)
        st = pgtx_run(ser, transfer, NULL, &info, &err);
    printf("%s after %d attempt(s) %s\n", pgtx_status_name(st), info.attempts, st ? err.message : "");

    pgtx_engine_destroy(ser);
    pgtx_engine_destroy(rc);
    pgtx_pool_destroy(pool);
    return st != PGTX_OK;
}
