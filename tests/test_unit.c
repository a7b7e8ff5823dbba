/* test_unit.c — pure functions: statuses, classification, backoff, options. */
#include "harness.h"

#include <string.h>

static void status_names_and_classes(void **state)
{
    (void)state;
    assert_string_equal(pgtx_status_name(PGTX_OK), "PGTX_OK");
    assert_string_equal(pgtx_status_name(PGTX_POOL_TIMEOUT), "PGTX_POOL_TIMEOUT");
    assert_string_equal(pgtx_status_name(PGTX_COMMIT_UNKNOWN), "PGTX_COMMIT_UNKNOWN");
    assert_string_equal(pgtx_status_name((pgtx_status)999), "PGTX_UNKNOWN_STATUS");
    assert_int_equal(pgtx_status_class(PGTX_SERIALIZATION), PGTX_CLASS_RETRYABLE);
    assert_int_equal(pgtx_status_class(PGTX_DEADLOCK), PGTX_CLASS_RETRYABLE);
    assert_int_equal(pgtx_status_class(PGTX_STALE), PGTX_CLASS_RETRYABLE);
    assert_int_equal(pgtx_status_class(PGTX_UNIQUE_VIOLATION), PGTX_CLASS_CONSTRAINT);
    assert_int_equal(pgtx_status_class(PGTX_CONSTRAINT), PGTX_CLASS_CONSTRAINT);
    assert_int_equal(pgtx_status_class(PGTX_QUERY_CANCELED), PGTX_CLASS_TIMEOUT);
    assert_int_equal(pgtx_status_class(PGTX_LOCK_NOT_AVAILABLE), PGTX_CLASS_TIMEOUT);
    assert_int_equal(pgtx_status_class(PGTX_CONNECTION_LOST), PGTX_CLASS_CONNECTION);
    assert_int_equal(pgtx_status_class(PGTX_COMMIT_UNKNOWN), PGTX_CLASS_CONNECTION);
    assert_int_equal(pgtx_status_class(PGTX_POOL_TIMEOUT), PGTX_CLASS_POOL);
    assert_int_equal(pgtx_status_class(PGTX_ABORTED), PGTX_CLASS_ABORT);
    assert_string_equal(pgtx_class_name(PGTX_CLASS_RETRYABLE), "retryable");
    for (int s = 0; s < PGTX_STATUS_COUNT_; s++) {
        assert_non_null(strstr(pgtx_status_name((pgtx_status)s), "PGTX_"));
        assert_true(strlen(pgtx_status_text((pgtx_status)s)) > 3);
    }
}

static void retryable_statuses(void **state)
{
    (void)state;
    assert_true(pgtx_status_is_retryable(PGTX_SERIALIZATION));
    assert_true(pgtx_status_is_retryable(PGTX_DEADLOCK));
    assert_true(pgtx_status_is_retryable(PGTX_STALE));
    assert_true(pgtx_status_is_retryable(PGTX_CONNECTION_LOST));
    assert_true(pgtx_status_is_retryable(PGTX_READ_ONLY_NODE));
    /* The commit may have happened: running it again could apply it twice. */
    assert_false(pgtx_status_is_retryable(PGTX_COMMIT_UNKNOWN));
    assert_false(pgtx_status_is_retryable(PGTX_UNIQUE_VIOLATION));
    assert_false(pgtx_status_is_retryable(PGTX_POOL_TIMEOUT));
}

static void sqlstate_mapping(void **state)
{
    (void)state;
    assert_int_equal(pgtx_status_from_sqlstate("40001"), PGTX_SERIALIZATION);
    assert_int_equal(pgtx_status_from_sqlstate("40P01"), PGTX_DEADLOCK);
    assert_int_equal(pgtx_status_from_sqlstate("23505"), PGTX_UNIQUE_VIOLATION);
    assert_int_equal(pgtx_status_from_sqlstate("23514"), PGTX_CONSTRAINT);
    assert_int_equal(pgtx_status_from_sqlstate("23503"), PGTX_CONSTRAINT);
    assert_int_equal(pgtx_status_from_sqlstate("55P03"), PGTX_LOCK_NOT_AVAILABLE);
    assert_int_equal(pgtx_status_from_sqlstate("57014"), PGTX_QUERY_CANCELED);
    assert_int_equal(pgtx_status_from_sqlstate("57P01"), PGTX_CONNECTION_LOST);
    assert_int_equal(pgtx_status_from_sqlstate("08006"), PGTX_CONNECTION_LOST);
    assert_int_equal(pgtx_status_from_sqlstate("42P01"), PGTX_SQL);
    assert_int_equal(pgtx_status_from_sqlstate("25006"), PGTX_SQL);
    assert_int_equal(pgtx_status_from_sqlstate(NULL), PGTX_SQL);
    assert_int_equal(pgtx_status_from_sqlstate("4000"), PGTX_SQL);
}

static void fail_fills_error(void **state)
{
    (void)state;
    pgtx_error e;
    memset(&e, 'x', sizeof e);
    assert_int_equal(pgtx_fail(&e, PGTX_ABORTED, "out of %s", "stock"), PGTX_ABORTED);
    assert_int_equal(e.status, PGTX_ABORTED);
    assert_string_equal(e.sqlstate, "");
    assert_string_equal(e.message, "out of stock");
    assert_int_equal(pgtx_fail(NULL, PGTX_STALE, "x"), PGTX_STALE);
    /* A long message is cut, never overflows. */
    char big[1000];
    memset(big, 'a', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    pgtx_fail(&e, PGTX_SQL, "%s", big);
    assert_int_equal(strlen(e.message), PGTX_ERROR_MESSAGE_SIZE - 1);
    /* Always one line: runs of line breaks and tabs are one space. */
    pgtx_fail(&e, PGTX_CONNECT, "refused\n\tIs the server running?\n");
    assert_string_equal(e.message, "refused Is the server running?");
}

static void backoff_is_capped_full_jitter(void **state)
{
    (void)state;
    pgtx_retry_policy p = {.max_attempts = 10, .budget_ms = 0,
                           .base_delay_ms = 2, .max_delay_ms = 50};
    assert_int_equal(pgtx_backoff_ms(&p, 1, 0.0), 0);
    assert_int_equal(pgtx_backoff_ms(&p, 1, 0.999), 2);   /* [0, 2] */
    assert_int_equal(pgtx_backoff_ms(&p, 2, 0.999), 4);   /* [0, 4] */
    assert_int_equal(pgtx_backoff_ms(&p, 4, 0.999), 16);  /* [0, 16] */
    assert_int_equal(pgtx_backoff_ms(&p, 6, 0.999), 50);  /* capped */
    assert_int_equal(pgtx_backoff_ms(&p, 1000, 0.999), 50);
    assert_int_equal(pgtx_backoff_ms(&p, 4, 0.5), 8);
    /* Out-of-range random numbers cannot push past the cap. */
    assert_int_equal(pgtx_backoff_ms(&p, 6, 7.0), 0);
}

static void engine_begin_statements(void **state)
{
    (void)state;
    pgtx_pool *pool = h_pool(1, 0, "unit");
    pgtx_engine_options o;
    pgtx_engine_options_init(&o);
    pgtx_engine *e = NULL;
    assert_int_equal(pgtx_engine_create(pool, NULL, &e, NULL), PGTX_OK);
    assert_string_equal(pgtx_engine_begin_sql_borrow(e),
                        "BEGIN ISOLATION LEVEL READ COMMITTED, READ WRITE, NOT DEFERRABLE");
    pgtx_engine_destroy(e);
    o.isolation = PGTX_SERIALIZABLE;
    o.read_only = true;
    o.deferrable = true;
    assert_int_equal(pgtx_engine_create(pool, &o, &e, NULL), PGTX_OK);
    assert_string_equal(pgtx_engine_begin_sql_borrow(e),
                        "BEGIN ISOLATION LEVEL SERIALIZABLE, READ ONLY, DEFERRABLE");
    assert_ptr_equal(pgtx_engine_pool_borrow(e), pool);
    pgtx_engine_destroy(e);
    pgtx_pool_destroy(pool);
}

static void bad_settings_are_rejected(void **state)
{
    (void)state;
    pgtx_pool_config cfg;
    pgtx_pool_config_init(&cfg);
    pgtx_pool *pool = NULL;
    pgtx_error err;
    cfg.pool_size = 0;
    assert_int_equal(pgtx_pool_create(&cfg, &pool, &err), PGTX_INVALID);
    assert_null(pool);
    assert_non_null(strstr(err.message, "pool_size"));
    pgtx_pool_config_init(&cfg);
    cfg.max_overflow = -1;
    assert_int_equal(pgtx_pool_create(&cfg, &pool, &err), PGTX_INVALID);
    assert_int_equal(pgtx_pool_create(NULL, &pool, &err), PGTX_INVALID);

    pool = h_pool(1, 0, "unit");
    pgtx_engine_options o;
    pgtx_engine_options_init(&o);
    pgtx_engine *e = NULL;
    o.retry.max_attempts = 0;
    assert_int_equal(pgtx_engine_create(pool, &o, &e, &err), PGTX_INVALID);
    pgtx_engine_options_init(&o);
    o.statement_timeout_ms = -5;
    assert_int_equal(pgtx_engine_create(pool, &o, &e, &err), PGTX_INVALID);
    pgtx_engine_options_init(&o);
    o.isolation = (pgtx_isolation)42;
    assert_int_equal(pgtx_engine_create(pool, &o, &e, &err), PGTX_INVALID);
    assert_null(e);
    assert_int_equal(pgtx_run(NULL, NULL, NULL, NULL, &err), PGTX_INVALID);
    pgtx_pool_destroy(pool);
}

/* Checked before any connection: libpq alone would accept port=abc until
   it connects.  The reason never repeats the string (a URI's password). */
static void connection_strings_are_checked(void **state)
{
    (void)state;
    static const char *good[] = {
        NULL, "", "dbname=x", "host=a,b port=5432,5433", "port=", "port=' 6543 '",
        "postgresql://u:pw@h1:5432,h2/db?target_session_attrs=read-write",
    };
    static const char *bad[] = {
        "dbname", "nokey=1", "port=notaport", "port=0", "port=65536", "host=a,b port=1,x",
        "postgresql://u:secret@h:99999/db", "postgresql://[bad", "dbname='unterminated",
    };
    pgtx_error err;
    for (size_t i = 0; i < sizeof good / sizeof *good; i++)
        assert_int_equal(pgtx_conninfo_check(good[i], &err), PGTX_OK);
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        assert_int_equal(pgtx_conninfo_check(bad[i], &err), PGTX_INVALID);
        assert_null(strchr(err.message, '\n'));
        assert_null(strstr(err.message, "secret"));
        assert_true(err.message[0] != '\0');
    }
    pgtx_pool_config cfg;
    pgtx_pool_config_init(&cfg);
    cfg.conninfo = "host=x port=abc";
    pgtx_pool *pool = NULL;
    assert_int_equal(pgtx_pool_create(&cfg, &pool, &err), PGTX_INVALID);
    assert_null(pool);
    assert_non_null(strstr(err.message, "port 'abc'"));
}

/* pg_lsn's text both ways, and nothing but pg_lsn's text accepted. */
static void lsn_text_round_trips(void **state)
{
    (void)state;
    uint64_t v = 7;
    assert_int_equal(pgtx_lsn_parse("16/B374D848", &v), PGTX_OK);
    assert_true(v == ((uint64_t)0x16 << 32 | 0xB374D848u));
    char buf[PGTX_LSN_SIZE];
    assert_string_equal(pgtx_lsn_format(v, buf), "16/B374D848");
    assert_string_equal(pgtx_lsn_format(0, buf), "0/0");
    assert_string_equal(pgtx_lsn_format(UINT64_MAX, buf), "FFFFFFFF/FFFFFFFF");
    assert_int_equal(pgtx_lsn_parse("ffffffff/ffffffff", &v), PGTX_OK);
    assert_true(v == UINT64_MAX);
    const char *bad[] = {"", "/", "1/", "/1", "1", "1/2/3", "g/1", "1/ 2",
                         "123456789/0", "0/123456789", " 1/2", "1/2 ", "-1/2"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        v = 7;
        assert_int_equal(pgtx_lsn_parse(bad[i], &v), PGTX_INVALID);
        assert_true(v == 7);
    }
    assert_int_equal(pgtx_lsn_parse(NULL, &v), PGTX_INVALID);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(status_names_and_classes),
        cmocka_unit_test(retryable_statuses),
        cmocka_unit_test(sqlstate_mapping),
        cmocka_unit_test(fail_fills_error),
        cmocka_unit_test(backoff_is_capped_full_jitter),
        cmocka_unit_test(engine_begin_statements),
        cmocka_unit_test(bad_settings_are_rejected),
        cmocka_unit_test(connection_strings_are_checked),
        cmocka_unit_test(lsn_text_round_trips),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
