/* harness.h — helpers shared by the tests: a real server, polling, threads. */
#ifndef PGTX_TEST_HARNESS_H
#define PGTX_TEST_HARNESS_H

#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "pgtx.h"

/* The server under test: PGTX_TEST_DSN, else libpq's environment (which
   scripts/with-pg.sh fills from a throw-away cluster).  Never NULL. */
const char *h_dsn(void);

/* A connection outside any pool, for set-up and for checking from the side.
   Fails the test if it cannot connect.  PQfinish it. */
PGconn *h_connect(const char *application_name);

/* Run SQL on a plain connection; fails the test on error. */
void h_exec(PGconn *pg, const char *sql);
/* First column of the first row as an integer; fails the test if none. */
long long h_scalar(PGconn *pg, const char *sql);
/* Same, with printf-style SQL. */
long long h_scalarf(PGconn *pg, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void h_execf(PGconn *pg, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* A pool on the test server; the test fails if it cannot be made. */
pgtx_pool *h_pool(int size, int overflow, const char *application_name);
/* The same in two steps, to change a setting in between: the defaults on
   the test server, then the pool (the test fails if it cannot be made). */
void h_pool_config(pgtx_pool_config *cfg, int size, int overflow,
                   const char *application_name);
pgtx_pool *h_pool_from(const pgtx_pool_config *cfg);
pgtx_engine *h_engine(pgtx_pool *pool, pgtx_isolation iso);
/* One for a hot row under many writers: retries up to 10000 times within
   120 s, sleeping at most 20 ms between attempts. */
pgtx_engine *h_engine_patient(pgtx_pool *pool, pgtx_isolation iso);

/* Poll `cond(arg)` every few ms until it is true or `timeout_ms` passes. */
int h_wait_until(int (*cond)(void *arg), void *arg, int timeout_ms);

int64_t h_now_ms(void);

/* Terminate a backend from the side and wait until it is gone. */
void h_kill_backend(PGconn *admin, int pid);

/* Wait until no backend has this application_name; returns how many are
   left when `timeout_ms` runs out (0 on success). */
int h_wait_app_gone(PGconn *admin, const char *app, int timeout_ms);

/* Start n threads running fn(arg_i) where arg_i = base + i*stride; join. */
void h_run_threads(int n, void *(*fn)(void *), void *base, size_t stride);

/* A name unique to this test process, for tables and application names. */
const char *h_unique(const char *prefix);

/* A table of this test process's own, made afresh (dropped first if a
   crashed run left it): CREATE TABLE <prefix_pid> (<columns>).  Returns its
   name; free() it. */
char *h_table(PGconn *admin, const char *prefix, const char *columns);
/* Drop a table h_table() made and free its name. */
void h_table_drop(PGconn *admin, char *name);

/* A schema of the test's own (named from `prefix`, into schema[n]), made
   afresh, and a side connection whose search_path is it; PGOPTIONS is set
   so that every pool made afterwards works in it too, so that the test can
   share a server with others.  PQfinish the connection. */
PGconn *h_own_schema(const char *prefix, char *schema, size_t n);

/* pgtx-shop's invariants of API.md, as SQL over its tables in pg's
   search_path; fails the test on the first one broken.  Accounts named
   naive-* are left out of the balance check when `naive_lose` (the naive
   strategy loses updates there on purpose). */
void h_check_shop_invariants(PGconn *pg, bool naive_lose);

#endif
