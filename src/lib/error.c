/* error.c — statuses, their classification, and errors copied out of libpq. */
#include "internal.h"
#include "one_line.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

typedef struct status_row {
    const char *name;
    const char *text;
    pgtx_class cls;
} status_row;

static const status_row STATUS_TABLE[] = {
#define PGTX_X_ROW(name, cls, text) {"PGTX_" #name, text, PGTX_CLASS_##cls},
    PGTX_STATUS_MAP(PGTX_X_ROW)
#undef PGTX_X_ROW
};

static const status_row *status_row_of(pgtx_status st)
{
    if ((unsigned)st >= (unsigned)PGTX_STATUS_COUNT_)
        return NULL;
    return &STATUS_TABLE[st];
}

const char *pgtx_status_name(pgtx_status st)
{
    const status_row *r = status_row_of(st);
    return r ? r->name : "PGTX_UNKNOWN_STATUS";
}

const char *pgtx_status_text(pgtx_status st)
{
    const status_row *r = status_row_of(st);
    return r ? r->text : "unknown status";
}

pgtx_class pgtx_status_class(pgtx_status st)
{
    const status_row *r = status_row_of(st);
    return r ? r->cls : PGTX_CLASS_USAGE;
}

const char *pgtx_class_name(pgtx_class cls)
{
    static const char *const names[] = {
        "none",       "usage",   "pool",  "connection", "retryable",
        "constraint", "timeout", "abort", "sql"};
    if ((unsigned)cls >= sizeof names / sizeof names[0])
        return "unknown";
    return names[cls];
}

bool pgtx_status_is_retryable(pgtx_status st)
{
    return st == PGTX_SERIALIZATION || st == PGTX_DEADLOCK ||
           st == PGTX_STALE || st == PGTX_CONNECTION_LOST ||
           st == PGTX_PREPARED_STALE || st == PGTX_READ_ONLY_NODE;
}

/* SQLSTATEs that mean "this session is gone" even though the server managed
   to say why: admin_shutdown, crash_shutdown, cannot_connect_now, and the
   whole connection_exception class 08. */
static bool sqlstate_is_connection(const char *s)
{
    return strncmp(s, "08", 2) == 0 || strcmp(s, "57P01") == 0 ||
           strcmp(s, "57P02") == 0 || strcmp(s, "57P03") == 0;
}

pgtx_status pgtx_status_from_sqlstate(const char *s)
{
    if (s == NULL || strlen(s) != 5)
        return PGTX_SQL;
    if (strcmp(s, "00000") == 0)
        return PGTX_OK;
    if (strcmp(s, "40001") == 0)
        return PGTX_SERIALIZATION;
    if (strcmp(s, "40P01") == 0)
        return PGTX_DEADLOCK;
    if (strcmp(s, "23505") == 0)
        return PGTX_UNIQUE_VIOLATION;
    if (strncmp(s, "23", 2) == 0)
        return PGTX_CONSTRAINT;
    if (strcmp(s, "55P03") == 0)
        return PGTX_LOCK_NOT_AVAILABLE;
    if (strcmp(s, "57014") == 0)
        return PGTX_QUERY_CANCELED;
    if (sqlstate_is_connection(s))
        return PGTX_CONNECTION_LOST;
    return PGTX_SQL;
}

/* The server's fields, blank: what every error not from a result has. */
static void clear_fields(pgtx_error *err)
{
    err->sqlstate[0] = '\0';
    err->constraint_name[0] = err->table[0] = err->column[0] = '\0';
}

void pgtx__error_clear(pgtx_error *err)
{
    if (err == NULL)
        return;
    err->status = PGTX_OK;
    clear_fields(err);
    err->message[0] = '\0';
}

/* A server identifier into its field ("" when absent), truncated to fit. */
static void copy_name(char dst[PGTX_ERROR_NAME_SIZE], const PGresult *res,
                      int field)
{
    const char *v = res ? PQresultErrorField(res, field) : NULL;
    snprintf(dst, PGTX_ERROR_NAME_SIZE, "%s", v ? v : "");
}

/* Copy `msg` as one line, truncating to fit. */
static void copy_message(pgtx_error *err, const char *msg)
{
    snprintf(err->message, sizeof err->message, "%s", msg ? msg : "");
    pgtx_one_line_(err->message);
}

static void set_sqlstate(pgtx_error *err, const char *s)
{
    if (s != NULL && strlen(s) == 5)
        memcpy(err->sqlstate, s, 6);
    else
        err->sqlstate[0] = '\0';
}

pgtx_status pgtx_fail(pgtx_error *err, pgtx_status st, const char *fmt, ...)
{
    if (err == NULL)
        return st;
    err->status = st;
    clear_fields(err);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
    pgtx_one_line_(err->message);
    return st;
}

pgtx_status pgtx__error_from_conn(pgtx_error *err, PGconn *pg, pgtx_status st)
{
    if (err == NULL)
        return st;
    err->status = st;
    clear_fields(err);
    const char *msg = pg ? PQerrorMessage(pg) : NULL;
    copy_message(err, (msg && *msg) ? msg : pgtx_status_text(st));
    return st;
}

/* PostgreSQL's row locking has a race (seen on 15 and 17): while
   transactions hold key-share locks on a row (foreign key checks do), one
   of its updaters rolls back and another updates it; the new multixact can
   then list both as updaters, and the statement fails with this internal
   error.  It aborts the whole transaction and says nothing about the data,
   so it is what 40001 means: run it again.  elog() texts are never
   translated, so the prefix is stable. */
static bool is_multixact_race(const char *state, const PGresult *res)
{
    static const char MSG[] = "new multixact has more than one updating member";
    const char *primary = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
    return strcmp(state, "XX000") == 0 && primary != NULL &&
           strncmp(primary, MSG, sizeof MSG - 1) == 0;
}

pgtx_status pgtx__error_from_result(pgtx_error *err, PGconn *pg,
                                    const PGresult *res)
{
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    pgtx_status st;
    if (state != NULL && is_multixact_race(state, res))
        st = PGTX_SERIALIZATION;
    else if (state != NULL)
        st = pgtx_status_from_sqlstate(state);
    else if (pg == NULL || PQstatus(pg) != CONNECTION_OK)
        st = PGTX_CONNECTION_LOST;
    else
        st = PGTX_SQL;
    /* A server error with a SQLSTATE on a connection that then died is
       still a lost connection for the caller: the session is gone. */
    if (pg != NULL && PQstatus(pg) != CONNECTION_OK &&
        pgtx_status_class(st) != PGTX_CLASS_CONNECTION)
        st = PGTX_CONNECTION_LOST;
    if (err == NULL)
        return st;
    err->status = st;
    set_sqlstate(err, state);
    copy_name(err->constraint_name, res, PG_DIAG_CONSTRAINT_NAME);
    copy_name(err->table, res, PG_DIAG_TABLE_NAME);
    copy_name(err->column, res, PG_DIAG_COLUMN_NAME);
    const char *primary =
        res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    if (primary == NULL)
        primary = pg ? PQerrorMessage(pg) : NULL;
    copy_message(err, (primary && *primary) ? primary : pgtx_status_text(st));
    return st;
}
