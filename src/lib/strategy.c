/* strategy.c — the safe-update strategies: one row's counter changed by a
   delta, under a floor and a ceiling, each strategy's SQL written once. */
#include "internal.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

static const char *const STRATEGY_NAMES[PGTX_STRATEGY_COUNT] = {
    [PGTX_STRATEGY_ATOMIC] = "atomic",
    [PGTX_STRATEGY_LOCK] = "lock",
    [PGTX_STRATEGY_OPTIMISTIC] = "optimistic",
    [PGTX_STRATEGY_SERIALIZABLE] = "serializable",
    [PGTX_STRATEGY_NAIVE] = "naive",
};

const char *pgtx_strategy_name(pgtx_strategy s)
{
    if ((unsigned)s >= (unsigned)PGTX_STRATEGY_COUNT)
        return "unknown";
    return STRATEGY_NAMES[s];
}

bool pgtx_strategy_parse(const char *name, pgtx_strategy *out)
{
    if (name == NULL || out == NULL)
        return false;
    for (int i = 0; i < PGTX_STRATEGY_COUNT; i++) {
        if (strcmp(name, STRATEGY_NAMES[i]) == 0) {
            *out = (pgtx_strategy)i;
            return true;
        }
    }
    return false;
}

bool pgtx_strategy_is_safe(pgtx_strategy s)
{
    return (unsigned)s < (unsigned)PGTX_STRATEGY_NAIVE;
}

/* ---- identifiers and SQL text ------------------------------------------ */

/* NAMEDATALEN - 1: the server would silently truncate a longer name, and so
   could name another table. */
#define IDENT_MAX 63
/* Every byte a double quote doubled, plus the two quotes and the NUL. */
#define QUOTED_SIZE (2 * IDENT_MAX + 3)
#define SQL_SIZE 4096
#define INT64_TEXT 24

/* The change's names, quoted once per call. */
typedef struct quoted {
    char table[2 * QUOTED_SIZE]; /* "schema"."table" or "table" */
    char key[QUOTED_SIZE];
    char col[QUOTED_SIZE];
    char ver[QUOTED_SIZE]; /* "" when there is no version column */
} quoted;

/* `name` as a double-quoted identifier into dst; false when it is NULL,
   empty or too long to be a PostgreSQL name. */
static bool quote_ident(char dst[QUOTED_SIZE], const char *name)
{
    if (name == NULL || name[0] == '\0' || strlen(name) > IDENT_MAX)
        return false;
    size_t n = 0;
    dst[n++] = '"';
    for (const char *p = name; *p; p++) {
        if (*p == '"')
            dst[n++] = '"';
        dst[n++] = *p;
    }
    dst[n++] = '"';
    dst[n] = '\0';
    return true;
}

/* Quote every name of `d`; a message for the first bad one, else NULL. */
static const char *quote_all(const pgtx_delta *d, quoted *q)
{
    char schema[QUOTED_SIZE], table[QUOTED_SIZE];
    if (d->schema != NULL && !quote_ident(schema, d->schema))
        return "schema";
    if (!quote_ident(table, d->table))
        return "table";
    if (!quote_ident(q->key, d->key_column))
        return "key_column";
    if (!quote_ident(q->col, d->column))
        return "column";
    q->ver[0] = '\0';
    if (d->version_column != NULL && !quote_ident(q->ver, d->version_column))
        return "version_column";
    snprintf(q->table, sizeof q->table, "%s%s%s", d->schema ? schema : "",
             d->schema ? "." : "", table);
    return NULL;
}

/* ", "v" = "v" + 1" when there is a version column, else "". */
static void version_bump(const quoted *q, char *dst, size_t size)
{
    dst[0] = '\0';
    if (q->ver[0])
        snprintf(dst, size, ", %s = %s + 1", q->ver, q->ver);
}

/* The SQL texts below take $1 = key, then their own parameters.  Their text
   depends only on the names (and the lock's wait), so each shape is
   prepared once per connection. */

static void sql_atomic(const quoted *q, char sql[SQL_SIZE])
{
    char bump[2 * QUOTED_SIZE + 16];
    version_bump(q, bump, sizeof bump);
    /* $3 / $4 NULL: no floor / no ceiling.  c + $2 is computed whether or
       not there is a guard, so an overflow is 22003 either way.  LIMIT 1:
       a key that matched several rows shows as several rows of the outer
       query, which one_value() refuses, as every strategy does. */
    snprintf(sql, SQL_SIZE,
             "WITH u AS (UPDATE %s SET %s = %s + $2::bigint%s WHERE %s = $1::bigint"
             " AND ($3::bigint IS NULL OR %s + $2::bigint >= $3::bigint)"
             " AND ($4::bigint IS NULL OR %s + $2::bigint <= $4::bigint)"
             " RETURNING %s) SELECT (SELECT u.%s FROM u LIMIT 1), r.%s FROM %s AS r"
             " WHERE r.%s = $1::bigint",
             q->table, q->col, q->col, bump, q->key, q->col, q->col, q->col,
             q->col, q->col, q->table, q->key);
}

static void sql_read(const quoted *q, pgtx_strategy s, pgtx_row_wait wait,
                     char sql[SQL_SIZE])
{
    static const char *const LOCKS[] = {
        [PGTX_ROW_WAIT] = " FOR NO KEY UPDATE",
        [PGTX_ROW_NOWAIT] = " FOR NO KEY UPDATE NOWAIT",
        [PGTX_ROW_SKIP_LOCKED] = " FOR NO KEY UPDATE SKIP LOCKED",
    };
    bool with_ver = s == PGTX_STRATEGY_OPTIMISTIC;
    snprintf(sql, SQL_SIZE, "SELECT %s%s%s FROM %s WHERE %s = $1::bigint%s",
             q->col, with_ver ? ", " : "", with_ver ? q->ver : "", q->table,
             q->key, s == PGTX_STRATEGY_LOCK ? LOCKS[wait] : "");
}

/* $2 = the new value; OPTIMISTIC adds $3 = the version read. */
static void sql_write(const quoted *q, bool check_version, char sql[SQL_SIZE])
{
    char bump[2 * QUOTED_SIZE + 16];
    version_bump(q, bump, sizeof bump);
    char check[2 * QUOTED_SIZE] = "";
    if (check_version)
        snprintf(check, sizeof check, " AND %s = $3::bigint", q->ver);
    snprintf(sql, SQL_SIZE, "UPDATE %s SET %s = $2::bigint%s WHERE %s = $1::bigint%s",
             q->table, q->col, bump, q->key, check);
}

/* ---- one call ------------------------------------------------------------ */

typedef struct delta_call {
    pgtx_tx *tx;
    pgtx_strategy s;
    const pgtx_delta *d;
    quoted q;
    char key[INT64_TEXT];
    pgtx_delta_result res;
} delta_call;

static void int64_text(char dst[INT64_TEXT], int64_t v)
{
    snprintf(dst, INT64_TEXT, "%" PRId64, v);
}

/* a + b into *sum; false when it does not fit, like the server's bigint. */
static bool add_fits(int64_t a, int64_t b, int64_t *sum)
{
    if ((b > 0 && a > INT64_MAX - b) || (b < 0 && a < INT64_MIN - b))
        return false;
    *sum = a + b;
    return true;
}

static bool admitted(const pgtx_delta *d, int64_t next)
{
    return (!d->has_floor || next >= d->floor) &&
           (!d->has_ceiling || next <= d->ceiling);
}

/* What the server says for bigint overflow, said from C by the strategies
   that compute the new value here, so that every strategy fails alike. */
static pgtx_status overflow(pgtx_tx *tx, pgtx_error *err)
{
    pgtx_error e;
    pgtx__error_clear(&e);
    pgtx_fail(&e, PGTX_SQL, "bigint out of range");
    memcpy(e.sqlstate, "22003", sizeof e.sqlstate);
    return pgtx__tx_fail(tx, &e, err);
}

/* A result the arguments made impossible (a key that is not unique, a NULL
   value): the transaction is failed, since an UPDATE may have run. */
static pgtx_status bad_row(delta_call *c, const char *why, pgtx_error *err)
{
    pgtx_error e;
    pgtx__error_clear(&e);
    pgtx_fail(&e, PGTX_INVALID, "%s.%s: %s", c->d->table, c->d->key_column, why);
    return pgtx__tx_fail(c->tx, &e, err);
}

/* Field `col` of the only row of `r` into *v.  OK with *found false when
   there is no row. */
static pgtx_status one_value(delta_call *c, PGresult *r, int col, bool *found,
                             int64_t *v, pgtx_error *err)
{
    *found = PQntuples(r) > 0;
    if (PQntuples(r) > 1)
        return bad_row(c, "the key matches more than one row", err);
    if (*found && pgtx_result_int64(r, 0, col, v) != PGTX_OK)
        return bad_row(c, "the value is NULL or not a bigint", err);
    return PGTX_OK;
}

/* Read the row (locking it for LOCK); *found false when it is not there. */
static pgtx_status read_row(delta_call *c, bool *found, int64_t *value,
                            int64_t *version, pgtx_error *err)
{
    char sql[SQL_SIZE];
    sql_read(&c->q, c->s, c->d->wait, sql);
    const char *params[] = {c->key};
    PGresult *r = NULL;
    pgtx_status st = pgtx_query(c->tx, sql, 1, params, &r, err);
    if (st == PGTX_OK)
        st = one_value(c, r, 0, found, value, err);
    if (st == PGTX_OK && *found && version != NULL &&
        pgtx_result_int64(r, 0, 1, version) != PGTX_OK)
        st = bad_row(c, "the version is NULL or not a bigint", err);
    PQclear(r);
    return st;
}

/* Write `next` over the row read: queued (it leaves with the next
   statement or the COMMIT), or, for OPTIMISTIC, checked to change exactly
   the row whose version was read (else STALE). */
static pgtx_status write_row(delta_call *c, int64_t next, int64_t version,
                             pgtx_error *err)
{
    char sql[SQL_SIZE], val[INT64_TEXT], ver[INT64_TEXT];
    bool optimistic = c->s == PGTX_STRATEGY_OPTIMISTIC;
    sql_write(&c->q, optimistic, sql);
    int64_text(val, next);
    int64_text(ver, version);
    const char *params[] = {c->key, val, ver};
    if (optimistic)
        return pgtx_query_expect(c->tx, sql, 3, params, 1, NULL, err);
    return pgtx_queue(c->tx, sql, 2, params, NULL, err);
}

/* Read, check in C, write: every strategy but ATOMIC. */
static pgtx_status apply_read_write(delta_call *c, pgtx_error *err)
{
    bool found = false;
    int64_t cur = 0, version = 0, next = 0;
    bool optimistic = c->s == PGTX_STRATEGY_OPTIMISTIC;
    pgtx_status st = read_row(c, &found, &cur, optimistic ? &version : NULL, err);
    if (st != PGTX_OK || !found)
        return st;
    c->res.found = true;
    if (!add_fits(cur, c->d->delta, &next))
        return overflow(c->tx, err);
    if (!admitted(c->d, next)) {
        c->res.refused = true;
        c->res.value = cur;
        return PGTX_OK;
    }
    st = write_row(c, next, version, err);
    if (st == PGTX_OK)
        c->res.value = next;
    return st;
}

/* ATOMIC refused a value that its snapshot says the guard admits: the row
   changed while the UPDATE waited for its writer (READ COMMITTED).  A new
   statement sees the value that was refused, or that the row is gone. */
static pgtx_status atomic_reread(delta_call *c, pgtx_error *err)
{
    bool found = false;
    int64_t cur = 0;
    pgtx_strategy was = c->s;
    c->s = PGTX_STRATEGY_NAIVE; /* the plain read */
    pgtx_status st = read_row(c, &found, &cur, NULL, err);
    c->s = was;
    if (st != PGTX_OK)
        return st;
    c->res.found = found;
    c->res.refused = found;
    c->res.value = found ? cur : 0;
    return PGTX_OK;
}

static pgtx_status apply_atomic(delta_call *c, pgtx_error *err)
{
    char sql[SQL_SIZE], delta[INT64_TEXT], lo[INT64_TEXT], hi[INT64_TEXT];
    sql_atomic(&c->q, sql);
    int64_text(delta, c->d->delta);
    int64_text(lo, c->d->floor);
    int64_text(hi, c->d->ceiling);
    const char *params[] = {c->key, delta, c->d->has_floor ? lo : NULL,
                            c->d->has_ceiling ? hi : NULL};
    PGresult *r = NULL;
    pgtx_status st = pgtx_query(c->tx, sql, 4, params, &r, err);
    bool found = false;
    int64_t seen = 0, next = 0;
    if (st == PGTX_OK)
        st = one_value(c, r, 1, &found, &seen, err);
    bool applied = st == PGTX_OK && found && !PQgetisnull(r, 0, 0);
    if (applied && pgtx_result_int64(r, 0, 0, &c->res.value) != PGTX_OK)
        st = bad_row(c, "the new value is not a bigint", err);
    PQclear(r);
    if (st != PGTX_OK || !found)
        return st;
    c->res.found = true;
    if (applied)
        return PGTX_OK;
    if (add_fits(seen, c->d->delta, &next) && admitted(c->d, next))
        return atomic_reread(c, err);
    c->res.refused = true;
    c->res.value = seen;
    return PGTX_OK;
}

/* A message for what makes `d` unusable with `s` in `tx`, or NULL. */
static const char *call_problem(pgtx_tx *tx, pgtx_strategy s, const pgtx_delta *d)
{
    if ((unsigned)s >= (unsigned)PGTX_STRATEGY_COUNT)
        return "unknown strategy";
    if ((unsigned)d->wait > (unsigned)PGTX_ROW_SKIP_LOCKED)
        return "unknown row wait";
    if (d->has_floor && d->has_ceiling && d->floor > d->ceiling)
        return "floor is above ceiling";
    if (s == PGTX_STRATEGY_OPTIMISTIC && d->version_column == NULL)
        return "the optimistic strategy needs a version_column";
    if (s == PGTX_STRATEGY_SERIALIZABLE &&
        pgtx__tx_options(tx)->isolation != PGTX_SERIALIZABLE)
        return "the serializable strategy needs an engine at PGTX_SERIALIZABLE";
    return NULL;
}

pgtx_status pgtx_delta_apply(pgtx_tx *tx, pgtx_strategy s, const pgtx_delta *d,
                             pgtx_delta_result *out, pgtx_error *err)
{
    if (tx == NULL || d == NULL || out == NULL)
        return pgtx_fail(err, PGTX_INVALID, "tx, delta and out are required");
    const char *problem = call_problem(tx, s, d);
    if (problem)
        return pgtx_fail(err, PGTX_INVALID, "%s", problem);
    delta_call c = {.tx = tx, .s = s, .d = d};
    const char *bad = quote_all(d, &c.q);
    if (bad)
        return pgtx_fail(err, PGTX_INVALID, "%s must be a name of 1 to %d bytes",
                         bad, IDENT_MAX);
    int64_text(c.key, d->key);
    pgtx_status st = s == PGTX_STRATEGY_ATOMIC ? apply_atomic(&c, err)
                                                : apply_read_write(&c, err);
    if (st == PGTX_OK)
        *out = c.res;
    return st;
}
