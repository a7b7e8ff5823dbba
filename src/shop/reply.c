/* reply.c — JSON responses, error bodies, and libpgtx's statuses as HTTP answers. */
#include "app_internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Out of memory building the answer: API.md's 503 overloaded, with a body
   that needs no JSON building (only its copy), and none if even that fails.
   It used to be a bodiless 500, which API.md keeps for server bugs (found by
   tests/test_alloc_fail.c). */
static void reply_oom(shop_response *res)
{
    free(res->body);
    res->body = strdup("{\"error\":{\"code\":\"overloaded\","
                       "\"message\":\"out of memory\"}}");
    res->status = 503;
    res->retry_after = 1;
    res->code = "overloaded";
}

/* The body as compact JSON text; NULL when out of memory.  Not json_dumps:
   jansson (2.14) ignores a failed append while writing an object's key and
   returns broken JSON (found by tests/test_alloc_fail.c: a product without
   its "stock" key).  json_dumpb only counts and copies: it cannot lose a
   byte, and it still fails (0) when its own allocations do. */
static char *dump_compact(const json_t *body)
{
    size_t size = json_dumpb(body, NULL, 0, JSON_COMPACT);
    char *text = size ? malloc(size + 1) : NULL;
    if (text && json_dumpb(body, text, size, JSON_COMPACT) != size) {
        free(text);
        return NULL;
    }
    if (text)
        text[size] = '\0';
    return text;
}

void reply_json(shop_response *res, int status, json_t *body)
{
    char *text = body ? dump_compact(body) : NULL;
    json_decref(body);
    if (text == NULL) {
        reply_oom(res);
        return;
    }
    free(res->body);
    res->body = text;
    res->status = status;
}

/* vsnprintf may cut a message inside a UTF-8 sequence, which jansson would
   refuse: drop the incomplete tail. */
static void utf8_clip(char *s)
{
    size_t len = strlen(s), lead = len;
    while (lead > 0 && len - lead < 4 && ((unsigned char)s[lead - 1] & 0xC0) == 0x80)
        lead--;
    if (lead == 0)
        return;
    unsigned char c = (unsigned char)s[lead - 1];
    size_t need = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
    if (len - (lead - 1) < need)
        s[lead - 1] = '\0';
}

APP_PRINTF(4, 0)
static void reply_verror(shop_response *res, int status, const char *code,
                         const char *fmt, va_list ap)
{
    char message[300];
    vsnprintf(message, sizeof message, fmt, ap);
    utf8_clip(message);
    json_error_t e;
    json_t *body = json_pack_ex(&e, 0, "{s:{s:s,s:s}}", "error", "code", code,
                                "message", message);
    /* not UTF-8 at all (a server message in Latin-1...); out of memory is
       not that, and keeps its 503 (it was answered "not valid UTF-8": found
       by tests/test_alloc_fail.c) */
    if (body == NULL && json_error_code(&e) == json_error_invalid_utf8)
        body = json_pack("{s:{s:s,s:s}}", "error", "code", code, "message",
                         "(the message is not valid UTF-8)");
    /* set first: when reply_json answers 503 overloaded instead, its code
       wins (the logs named the error that could not be sent) */
    res->code = code;
    reply_json(res, status, body);
}

void reply_error(shop_response *res, int status, const char *code,
                 const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    reply_verror(res, status, code, fmt, ap);
    va_end(ap);
}

pgtx_status fault_abort(shop_fault *f, pgtx_error *err, int status,
                        const char *code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(f->message, sizeof f->message, fmt, ap);
    va_end(ap);
    f->status = status;
    f->code = code;
    return pgtx_fail(err, PGTX_ABORTED, "%s: %s", code, f->message);
}

void fault_reset(shop_fault *f)
{
    f->status = 0;
    f->code = NULL;
    f->message[0] = '\0';
}

/* 503s tell the client to come back: nothing it sent was wrong. */
static void reply_unavailable(shop_response *res, const char *code,
                              const char *what, const pgtx_error *err)
{
    reply_error(res, 503, code, "%s: %s", what, err->message);
    res->retry_after = 1;
}

void reply_retry_exhausted(shop_response *res, const char *why)
{
    reply_error(res, 503, "retry_exhausted", "%s; try again", why);
    res->retry_after = 1;
}

static void reply_sql(shop_response *res, const pgtx_error *err,
                      const shop_fault *fault)
{
    if (strcmp(err->sqlstate, "22003") == 0) {
        const char *what = fault && fault->overflow ? fault->overflow : "a result";
        reply_error(res, 422, "out_of_range", "%s would not fit in 64 bits (%s)",
                    what, err->message);
        return;
    }
    /* Class 22 is the data a request carried (a bad encoding, a value the
       column type refuses): the client's to fix, never a 500. */
    if (strncmp(err->sqlstate, "22", 2) == 0) {
        reply_error(res, 422, "invalid_value", "the database refused a value: %s",
                    err->message);
        return;
    }
    reply_error(res, 500, "internal", "%s (SQLSTATE %s): %s",
                pgtx_status_name(err->status),
                err->sqlstate[0] ? err->sqlstate : "none", err->message);
}

void reply_failure(shop_response *res, pgtx_status st, const pgtx_run_info *info,
                   const pgtx_error *err, const shop_fault *fault)
{
    if (st == PGTX_ABORTED && fault && fault->status) {
        reply_error(res, fault->status, fault->code, "%s", fault->message);
        return;
    }
    /* The library ran out of memory (connecting, say): the 503 of API.md,
       not a 500 internal (found by tests/test_alloc_fail.c). */
    if (st == PGTX_NOMEM) {
        reply_unavailable(res, "overloaded", "out of memory", err);
        return;
    }
    switch (pgtx_status_class(st)) {
    case PGTX_CLASS_POOL:
        reply_unavailable(res, "overloaded", "no database connection in time", err);
        return;
    case PGTX_CLASS_TIMEOUT:
        /* 55P03: a row stayed locked by another transaction past
           --lock-timeout-ms.  Not retried here: the holder may keep it for
           long, and a worker waiting on it serves no one else. */
        if (st == PGTX_LOCK_NOT_AVAILABLE)
            reply_unavailable(res, "row_busy", "a row this request needs is "
                              "locked by another transaction", err);
        else
            reply_unavailable(res, "overloaded", "a database wait timed out", err);
        return;
    case PGTX_CLASS_CONNECTION:
        if (st == PGTX_COMMIT_UNKNOWN)
            reply_unavailable(res, "commit_unknown",
                              "the outcome of the write is unknown", err);
        else
            reply_unavailable(res, "database_unavailable",
                              "the database cannot be reached", err);
        return;
    case PGTX_CLASS_RETRYABLE:
        reply_unavailable(res, "retry_exhausted",
                          info && info->exhausted
                              ? "the retry budget ran out under contention"
                              : "the transaction kept conflicting",
                          err);
        return;
    default:
        reply_sql(res, err, fault);
        return;
    }
}
