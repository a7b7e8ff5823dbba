/* test_engine.c — engines: options travel with each transaction and never
   stay on the pooled connection; the wire shows it. */
#include "harness.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct show_arg {
    const char *sql;
    char value[64];
    int pid;
} show_arg;

static pgtx_status show_fn(pgtx_tx *tx, void *p, pgtx_error *err)
{
    show_arg *a = p;
    PGresult *r = NULL;
    pgtx_status st = pgtx_query(tx, a->sql, 0, NULL, &r, err);
    if (st != PGTX_OK)
        return st;
    snprintf(a->value, sizeof a->value, "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    a->pid = PQbackendPID(pgtx_tx_pg_borrow(tx));
    return PGTX_OK;
}

static const char *show(pgtx_engine *e, const char *sql, int *pid)
{
    static show_arg a;
    memset(&a, 0, sizeof a);
    a.sql = sql;
    pgtx_error err;
    pgtx_status st = pgtx_run(e, show_fn, &a, NULL, &err);
    if (st != PGTX_OK)
        fail_msg("%s: %s", pgtx_status_name(st), err.message);
    if (pid)
        *pid = a.pid;
    return a.value;
}

static pgtx_engine *engine_with(pgtx_pool *pool, pgtx_engine_options *o)
{
    pgtx_engine *e = NULL;
    assert_int_equal(pgtx_engine_create(pool, o, &e, NULL), PGTX_OK);
    return e;
}

static void isolation_is_applied_and_not_leaked(void **state)
{
    (void)state;
    pgtx_pool *pool = h_pool(1, 0, "engine-iso");
    pgtx_engine *ser = h_engine(pool, PGTX_SERIALIZABLE);
    pgtx_engine *rr = h_engine(pool, PGTX_REPEATABLE_READ);
    pgtx_engine *def = NULL;
    assert_int_equal(pgtx_engine_create(pool, NULL, &def, NULL), PGTX_OK);
    int pid1, pid2, pid3;
    const char *q = "SHOW transaction_isolation";
    assert_string_equal(show(ser, q, &pid1), "serializable");
    assert_string_equal(show(def, q, &pid2), "read committed");
    assert_string_equal(show(rr, q, &pid3), "repeatable read");
    assert_string_equal(show(def, q, NULL), "read committed");
    /* The same connection served all of them: nothing was left on it. */
    assert_int_equal(pid1, pid2);
    assert_int_equal(pid2, pid3);
    /* Outside any transaction, the session still has the server default. */
    pgtx_conn *c = NULL;
    assert_int_equal(pgtx_pool_checkout(pool, 1000, &c, NULL), PGTX_OK);
    PGresult *r = PQexec(pgtx_conn_pg_borrow(c), "SHOW default_transaction_isolation");
    assert_string_equal(PQgetvalue(r, 0, 0), "read committed");
    PQclear(r);
    pgtx_pool_return(c);
    pgtx_engine_destroy(ser);
    pgtx_engine_destroy(rr);
    pgtx_engine_destroy(def);
    pgtx_pool_destroy(pool);
}

static void session_defaults_do_not_decide(void **state)
{
    (void)state;
    /* A server or role default of SERIALIZABLE must not leak into a
       READ COMMITTED engine: BEGIN spells every option out. */
    pgtx_pool_config cfg;
    pgtx_pool_config_init(&cfg);
    char dsn[512];
    snprintf(dsn, sizeof dsn, "%s options='-c default_transaction_isolation=serializable "
                              "-c default_transaction_read_only=on'", h_dsn());
    cfg.conninfo = dsn;
    cfg.pool_size = 1;
    pgtx_pool *pool = NULL;
    assert_int_equal(pgtx_pool_create(&cfg, &pool, NULL), PGTX_OK);
    pgtx_engine *def = NULL;
    assert_int_equal(pgtx_engine_create(pool, NULL, &def, NULL), PGTX_OK);
    assert_string_equal(show(def, "SHOW transaction_isolation", NULL), "read committed");
    assert_string_equal(show(def, "SHOW transaction_read_only", NULL), "off");
    pgtx_engine_destroy(def);
    pgtx_pool_destroy(pool);
}

typedef struct sql_arg {
    const char *sql;
} sql_arg;

static pgtx_status exec_fn(pgtx_tx *tx, void *p, pgtx_error *err)
{
    return pgtx_query(tx, ((sql_arg *)p)->sql, 0, NULL, NULL, err);
}

static pgtx_status run_sql(pgtx_engine *e, const char *sql, pgtx_error *err)
{
    sql_arg a = {sql};
    return pgtx_run(e, exec_fn, &a, NULL, err);
}

static void read_only_and_timeouts_are_transaction_local(void **state)
{
    (void)state;
    PGconn *admin = h_connect("engine-admin");
    const char *tbl = h_unique("engine_ro");
    h_execf(admin, "DROP TABLE IF EXISTS %s; CREATE TABLE %s (x int)", tbl, tbl);
    pgtx_pool *pool = h_pool(1, 0, "engine-ro");
    pgtx_engine_options o;
    pgtx_engine_options_init(&o);
    o.read_only = true;
    pgtx_engine *ro = engine_with(pool, &o);
    pgtx_engine_options_init(&o);
    o.statement_timeout_ms = 50;
    o.lock_timeout_ms = 40;
    pgtx_engine *quick = engine_with(pool, &o);
    pgtx_engine *def = NULL;
    assert_int_equal(pgtx_engine_create(pool, NULL, &def, NULL), PGTX_OK);
    char sql[256];
    snprintf(sql, sizeof sql, "INSERT INTO %s VALUES (1)", tbl);
    pgtx_error err;
    assert_int_equal(run_sql(ro, sql, &err), PGTX_SQL);
    assert_string_equal(err.sqlstate, "25006");
    assert_int_equal(run_sql(def, sql, &err), PGTX_OK);

    assert_string_equal(show(quick, "SHOW statement_timeout", NULL), "50ms");
    assert_string_equal(show(quick, "SHOW lock_timeout", NULL), "40ms");
    assert_int_equal(run_sql(quick, "SELECT pg_sleep(2)", &err), PGTX_QUERY_CANCELED);
    assert_string_equal(err.sqlstate, "57014");
    assert_int_equal(pgtx_status_class(err.status), PGTX_CLASS_TIMEOUT);
    /* Nothing stayed behind on the connection. */
    assert_string_equal(show(def, "SHOW statement_timeout", NULL), "0");
    assert_string_equal(show(def, "SHOW lock_timeout", NULL), "0");
    assert_string_equal(show(def, "SHOW transaction_read_only", NULL), "off");

    /* A lock held elsewhere: lock_timeout and NOWAIT are both classified,
       and SKIP LOCKED passes over the held row without an error. */
    snprintf(sql, sizeof sql, "INSERT INTO %s VALUES (2)", tbl);
    assert_int_equal(run_sql(def, sql, &err), PGTX_OK);
    /* A row lock, not a table lock: ACCESS EXCLUSIVE would block parsing. */
    h_execf(admin, "BEGIN; SELECT * FROM %s WHERE x = 1 FOR UPDATE", tbl);
    snprintf(sql, sizeof sql, "SELECT * FROM %s FOR UPDATE", tbl);
    assert_int_equal(run_sql(quick, sql, &err), PGTX_LOCK_NOT_AVAILABLE);
    assert_string_equal(err.sqlstate, "55P03");
    snprintf(sql, sizeof sql, "SELECT * FROM %s FOR UPDATE NOWAIT", tbl);
    assert_int_equal(run_sql(def, sql, &err), PGTX_LOCK_NOT_AVAILABLE);
    snprintf(sql, sizeof sql,
             "SELECT string_agg(x::text, ',' ORDER BY x) FROM (SELECT x FROM %s FOR UPDATE SKIP LOCKED) s",
             tbl);
    assert_string_equal(show(def, sql, NULL), "2");
    h_exec(admin, "ROLLBACK");
    assert_string_equal(show(def, sql, NULL), "1,2");
    h_execf(admin, "DROP TABLE %s", tbl);
    pgtx_engine_destroy(ro);
    pgtx_engine_destroy(quick);
    pgtx_engine_destroy(def);
    pgtx_pool_destroy(pool);
    PQfinish(admin);
}

/* ---- what goes over the wire ------------------------------------------ */

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    assert_non_null(buf);
    size_t got = fread(buf, 1, (size_t)n, f);
    buf[got] = '\0';
    fclose(f);
    return buf;
}

static int count_of(const char *hay, const char *needle)
{
    int n = 0;
    for (const char *p = hay; (p = strstr(p, needle)) != NULL; p++)
        n++;
    return n;
}

/* The wire messages of a one-connection pool's only connection, in
   libpq's regress format (no timestamps), between the two calls. */
typedef struct wire_trace {
    pgtx_pool *pool;
    char path[32];
    FILE *file;
} wire_trace;

static wire_trace trace_start(pgtx_pool *pool)
{
    wire_trace tr = {.pool = pool, .path = "/tmp/pgtx-trace-XXXXXX"};
    int fd = mkstemp(tr.path);
    assert_true(fd >= 0);
    tr.file = fdopen(fd, "w");
    assert_non_null(tr.file);
    pgtx_conn *c = NULL;
    assert_int_equal(pgtx_pool_checkout(pool, 1000, &c, NULL), PGTX_OK);
    PQtrace(pgtx_conn_pg_borrow(c), tr.file);
    PQsetTraceFlags(pgtx_conn_pg_borrow(c),
                    PQTRACE_REGRESS_MODE | PQTRACE_SUPPRESS_TIMESTAMPS);
    pgtx_pool_return(c);
    return tr;
}

/* The trace so far (free it), PGTX_KEEP_TRACE=1 prints it. */
static char *trace_stop(wire_trace *tr)
{
    pgtx_conn *c = NULL;
    assert_int_equal(pgtx_pool_checkout(tr->pool, 1000, &c, NULL), PGTX_OK);
    PQuntrace(pgtx_conn_pg_borrow(c));
    pgtx_pool_return(c);
    fclose(tr->file);
    char *t = slurp(tr->path);
    if (getenv("PGTX_KEEP_TRACE"))
        fprintf(stderr, "%s\n", t);
    unlink(tr->path);
    return t;
}

static void wire_shows_begin_with_options_and_no_set(void **state)
{
    (void)state;
    pgtx_pool *pool = h_pool(1, 0, "engine-trace");
    wire_trace tr = trace_start(pool);

    pgtx_engine_options o;
    pgtx_engine_options_init(&o);
    o.isolation = PGTX_SERIALIZABLE;
    o.statement_timeout_ms = 1000;
    pgtx_engine *ser = engine_with(pool, &o);
    pgtx_error err;
    assert_int_equal(run_sql(ser, "SELECT 1", &err), PGTX_OK);
    assert_int_equal(run_sql(ser, "SELECT 1/0", &err), PGTX_SQL);

    char *t = trace_stop(&tr);
    assert_int_equal(count_of(t, "\"BEGIN ISOLATION LEVEL SERIALIZABLE, READ WRITE, "
                                 "NOT DEFERRABLE\""), 2);
    assert_int_equal(count_of(t, "set_config('statement_timeout', '1000', true)"), 2);
    assert_int_equal(count_of(t, "Parse\t \"\" \"COMMIT\""), 1);
    assert_int_equal(count_of(t, "Query\t \"ROLLBACK\""), 1);
    /* Nothing set on the session itself. */
    assert_int_equal(count_of(t, "\"SET "), 0);
    assert_int_equal(count_of(t, "false)"), 0);
    /* BEGIN, set_config and the statement share one Sync (one round trip),
       COMMIT has its own; the failed transaction's ROLLBACK is a Query. */
    assert_int_equal(count_of(t, "\tSync"), 3);
    /* Statements are prepared by name, once each, and executed by it. */
    assert_int_equal(count_of(t, "Parse\t \"pgtx_1\" \"SELECT 1\""), 1);
    assert_int_equal(count_of(t, "Bind\t \"\" \"pgtx_1\""), 1);
    free(t);
    pgtx_engine_destroy(ser);
    pgtx_pool_destroy(pool);
}

/* ---- lock_timeout: with BEGIN, per transaction, not retried -------------- */

static pgtx_status borrow_show_fn(pgtx_tx *tx, void *p, pgtx_error *err)
{
    (void)err;
    show_arg *a = p;
    PGresult *r = PQexec(pgtx_tx_pg_borrow(tx), a->sql);
    snprintf(a->value, sizeof a->value, "%s",
             PQresultStatus(r) == PGRES_TUPLES_OK ? PQgetvalue(r, 0, 0) : "(failed)");
    PQclear(r);
    return PGTX_OK;
}

static void lock_timeout_goes_with_begin_in_one_message(void **state)
{
    (void)state;
    pgtx_pool *pool = h_pool(1, 0, "engine-lock-trace");
    wire_trace tr = trace_start(pool);

    pgtx_engine_options o;
    pgtx_engine_options_init(&o);
    o.lock_timeout_ms = 250;
    pgtx_engine *e = engine_with(pool, &o);
    /* the runner's own statements, and a caller that wants the PGconn first */
    assert_string_equal(show(e, "SHOW lock_timeout", NULL), "250ms");
    show_arg a = {.sql = "SHOW lock_timeout"};
    pgtx_pool_stats s0, s1;
    pgtx_pool_stats_get(pool, &s0);
    assert_int_equal(pgtx_run(e, borrow_show_fn, &a, NULL, NULL), PGTX_OK);
    pgtx_pool_stats_get(pool, &s1);
    assert_string_equal(a.value, "250ms");

    char *t = trace_stop(&tr);
    /* SET LOCAL (set_config(..., true)) in each transaction, never SET */
    assert_int_equal(count_of(t, "set_config('lock_timeout', '250', true)"), 2);
    assert_int_equal(count_of(t, "\"SET "), 0);
    /* the borrowed connection's BEGIN carries it in the same Query message:
       the runner's round trips are that one and COMMIT's (the SHOW is the
       caller's own) */
    assert_int_equal(count_of(t, "Query\t \"BEGIN ISOLATION LEVEL READ COMMITTED, READ WRITE, "
                                 "NOT DEFERRABLE; SELECT set_config('lock_timeout', '250', "
                                 "true)\""), 1);
    assert_int_equal(s1.round_trips - s0.round_trips, 2); /* the SHOW is the caller's */
    free(t);
    pgtx_engine_destroy(e);
    pgtx_pool_destroy(pool);
}

typedef struct locked_arg {
    const char *sql;
} locked_arg;

static pgtx_status queue_fn(pgtx_tx *tx, void *p, pgtx_error *err)
{
    return pgtx_queue(tx, ((locked_arg *)p)->sql, 0, NULL, NULL, err);
}

static void a_lock_timeout_is_not_retried_unless_asked(void **state)
{
    (void)state;
    PGconn *admin = h_connect("engine-lock-admin");
    const char *tbl = h_unique("engine_lock");
    h_execf(admin, "DROP TABLE IF EXISTS %s; CREATE TABLE %s (x int); "
                   "INSERT INTO %s VALUES (1)", tbl, tbl, tbl);
    pgtx_pool *pool = h_pool(1, 0, "engine-lock");
    pgtx_engine_options o;
    pgtx_engine_options_init(&o);
    o.lock_timeout_ms = 100;
    pgtx_engine *once = engine_with(pool, &o);
    o.retry.retry_on |= PGTX_RETRY_LOCK_NOT_AVAILABLE;
    o.retry.max_attempts = 3;
    pgtx_engine *again = engine_with(pool, &o);
    char sql[160];
    snprintf(sql, sizeof sql, "UPDATE %s SET x = x + 1", tbl);
    locked_arg a = {sql};

    h_execf(admin, "BEGIN; SELECT * FROM %s FOR UPDATE", tbl);
    pgtx_pool_stats s0, s1;
    pgtx_run_info info;
    pgtx_error err;
    pgtx_pool_stats_get(pool, &s0);
    assert_int_equal(pgtx_run(once, queue_fn, &a, &info, &err), PGTX_LOCK_NOT_AVAILABLE);
    pgtx_pool_stats_get(pool, &s1);
    assert_string_equal(err.sqlstate, "55P03");
    assert_int_equal(info.attempts, 1);
    assert_false(info.exhausted);
    assert_true(info.elapsed_us >= 100 * 1000); /* it did wait lock_timeout */
    assert_int_equal(s1.retries_lock_not_available - s0.retries_lock_not_available, 0);
    /* BEGIN, SET LOCAL, UPDATE and COMMIT in one round; then ROLLBACK */
    assert_int_equal(s1.round_trips - s0.round_trips, 2);

    assert_int_equal(pgtx_run(again, queue_fn, &a, &info, &err), PGTX_LOCK_NOT_AVAILABLE);
    pgtx_pool_stats_get(pool, &s0);
    assert_int_equal(info.attempts, 3);
    assert_int_equal(s0.retries_lock_not_available - s1.retries_lock_not_available, 2);
    h_exec(admin, "ROLLBACK");
    /* nothing was changed, and it goes through once the lock is gone */
    assert_int_equal(h_scalarf(admin, "SELECT x FROM %s", tbl), 1);
    assert_int_equal(pgtx_run(once, queue_fn, &a, &info, &err), PGTX_OK);
    assert_int_equal(h_scalarf(admin, "SELECT x FROM %s", tbl), 2);
    h_execf(admin, "DROP TABLE %s", tbl);
    pgtx_engine_destroy(once);
    pgtx_engine_destroy(again);
    pgtx_pool_destroy(pool);
    PQfinish(admin);
}

typedef struct echo_log {
    pthread_mutex_t mu;
    char text[4096];
} echo_log;

static void collect(void *arg, pgtx_log_level level, const char *msg)
{
    echo_log *l = arg;
    if (level != PGTX_LOG_ECHO)
        return;
    pthread_mutex_lock(&l->mu);
    strncat(l->text, msg, sizeof l->text - strlen(l->text) - 2);
    strcat(l->text, "\n");
    pthread_mutex_unlock(&l->mu);
}

static void echo_logs_every_statement_with_its_duration(void **state)
{
    (void)state;
    echo_log log = {.mu = PTHREAD_MUTEX_INITIALIZER};
    pgtx_pool_config cfg;
    pgtx_pool_config_init(&cfg);
    cfg.conninfo = h_dsn();
    cfg.pool_size = 1;
    cfg.echo = true;
    cfg.log = collect;
    cfg.log_arg = &log;
    pgtx_pool *pool = NULL;
    assert_int_equal(pgtx_pool_create(&cfg, &pool, NULL), PGTX_OK);
    pgtx_engine *e = h_engine(pool, PGTX_REPEATABLE_READ);
    assert_int_equal(run_sql(e, "SELECT 42", NULL), PGTX_OK);
    assert_non_null(strstr(log.text, "BEGIN ISOLATION LEVEL REPEATABLE READ"));
    assert_non_null(strstr(log.text, "SELECT 42"));
    assert_non_null(strstr(log.text, " ms: COMMIT"));
    pgtx_engine_destroy(e);
    pgtx_pool_destroy(pool);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(isolation_is_applied_and_not_leaked),
        cmocka_unit_test(session_defaults_do_not_decide),
        cmocka_unit_test(read_only_and_timeouts_are_transaction_local),
        cmocka_unit_test(wire_shows_begin_with_options_and_no_set),
        cmocka_unit_test(lock_timeout_goes_with_begin_in_one_message),
        cmocka_unit_test(a_lock_timeout_is_not_retried_unless_asked),
        cmocka_unit_test(echo_logs_every_statement_with_its_duration),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
