/* body.c — request bodies: one JSON object checked against a field list (400 for its shape, 422 for its values). */
#include "app_internal.h"

#include <string.h>

/* 2^63: the first magnitude an int64 cannot hold. */
#define TWO_POW_63 9223372036854775808.0

static const char *json_kind(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a number with a fraction or exponent";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    default: return "null";
    }
}

/* The top-level key whose number overflowed: doc was parsed with integers
   as doubles, so an out-of-range one shows as a huge real.  Borrowed. */
static const char *huge_key(json_t *doc)
{
    const char *key;
    json_t *v;
    if (!json_is_object(doc))
        return NULL;
    json_object_foreach(doc, key, v) {
        double d = json_is_real(v) ? json_real_value(v) : 0.0;
        if (d >= TWO_POW_63 || d <= -TWO_POW_63)
            return key;
    }
    return NULL;
}

/* jansson refuses an integer beyond int64 before any field is seen; a
   second parse with integers as doubles finds which field it was. */
static void reply_overflow(shop_ctx *ctx, const json_error_t *first)
{
    json_error_t e;
    json_t *doc = json_loadb(ctx->req->body, ctx->req->body_len,
                             JSON_REJECT_DUPLICATES | JSON_DECODE_INT_AS_REAL, &e);
    const char *key = huge_key(doc);
    if (key)
        reply_error(ctx->res, 422, "out_of_range",
                    "field '%s' does not fit in a 64-bit integer", key);
    else
        reply_error(ctx->res, 422, "out_of_range",
                    "the number at line %d, column %d does not fit in 64 bits",
                    first->line, first->column);
    json_decref(doc);
}

static json_t *parse(const shop_request *req, json_error_t *e)
{
    memset(e, 0, sizeof *e);
    return json_loadb(req->body, req->body_len, JSON_REJECT_DUPLICATES, e);
}

/* jansson could not allocate; when it cannot even start (its first
   allocation) it leaves *e empty. */
static bool parse_oom(const json_error_t *e)
{
    return json_error_code(e) == json_error_out_of_memory || e->text[0] == '\0';
}

static json_t *load(shop_ctx *ctx)
{
    const shop_request *req = ctx->req;
    if (req->body == NULL || req->body_len == 0) {
        reply_error(ctx->res, 400, "malformed_json",
                    "the body is empty; a JSON object is expected");
        return NULL;
    }
    /* JSON text never holds a raw NUL (inside a string it must be escaped),
       yet jansson drops one that follows a number or a literal, which would
       let `{"amount": 1<NUL>}` pass as a deposit. */
    const char *nul = memchr(req->body, '\0', req->body_len);
    if (nul) {
        reply_error(ctx->res, 400, "malformed_json",
                    "the body holds a NUL byte at offset %zu",
                    (size_t)(nul - req->body));
        return NULL;
    }
    json_error_t e;
    json_t *doc = parse(req, &e);
    /* Out of memory is the server's trouble, never a malformed body: API.md's
       503 (found by tests/test_alloc_fail.c, which got 400s).  jansson
       reports some of its allocation failures as syntax errors (a string
       it could not copy is "string expected"); parsing is deterministic, so
       a body that fails once and then parses failed for memory. */
    if (doc == NULL && !parse_oom(&e))
        doc = parse(req, &e);
    if (doc == NULL && parse_oom(&e)) {
        reply_error(ctx->res, 503, "overloaded", "out of memory");
        ctx->res->retry_after = 1;
    } else if (doc == NULL && json_error_code(&e) == json_error_numeric_overflow)
        reply_overflow(ctx, &e);
    else if (doc == NULL && json_error_code(&e) == json_error_null_character)
        /* jansson's own text names its flag, which means nothing to a client. */
        reply_error(ctx->res, 400, "malformed_json",
                    "a string at line %d, column %d holds \\u0000, which is not accepted",
                    e.line, e.column);
    else if (doc == NULL)
        reply_error(ctx->res, 400, "malformed_json",
                    "invalid JSON at line %d, column %d: %s", e.line, e.column,
                    e.text);
    else if (!json_is_object(doc)) {
        reply_error(ctx->res, 400, "invalid_type",
                    "the body must be a JSON object, not %s", json_kind(doc));
        json_decref(doc);
        doc = NULL;
    }
    return doc;
}

/* Presence and type of one field. */
static bool field_get(shop_ctx *ctx, const shop_field *f, shop_body *b, int i)
{
    json_t *v = json_object_get(b->doc, f->name);
    if (v == NULL || (f->optional && json_is_null(v))) {
        if (!f->optional)
            reply_error(ctx->res, 400, "missing_field", "field '%s' is required",
                        f->name);
        return f->optional;
    }
    bool is_int = f->kind == SHOP_FIELD_INT;
    if (is_int ? !json_is_integer(v) : !json_is_string(v)) {
        reply_error(ctx->res, 400, "invalid_type", "field '%s' must be %s, not %s",
                    f->name, is_int ? "an integer" : "a string", json_kind(v));
        return false;
    }
    b->present[i] = true;
    if (is_int)
        b->num[i] = (int64_t)json_integer_value(v);
    else
        b->text[i] = json_string_value(v);
    return true;
}

static bool fields_known(shop_ctx *ctx, const shop_field *fields, int n,
                         json_t *doc)
{
    const char *key;
    json_t *v;
    json_object_foreach(doc, key, v) {
        int i = 0;
        while (i < n && strcmp(fields[i].name, key) != 0)
            i++;
        if (i == n) {
            reply_error(ctx->res, 400, "unknown_field", "unknown field '%s'", key);
            return false;
        }
    }
    return true;
}

/* The value rules, checked once the shape is right. */
static bool field_valid(shop_ctx *ctx, const shop_field *f, const shop_body *b,
                        int i)
{
    if (!b->present[i])
        return true;
    if (f->kind == SHOP_FIELD_INT) {
        if (b->num[i] >= f->min)
            return true;
        reply_error(ctx->res, 422, "invalid_value",
                    "field '%s' must be at least %lld, got %lld", f->name,
                    (long long)f->min, (long long)b->num[i]);
        return false;
    }
    size_t len = strlen(b->text[i]); /* jansson refuses \u0000 */
    if (len >= 1 && len <= SHOP_TEXT_MAX)
        return true;
    reply_error(ctx->res, 422, "invalid_value",
                "field '%s' must be 1 to %d bytes long, got %zu", f->name,
                SHOP_TEXT_MAX, len);
    return false;
}

bool body_parse(shop_ctx *ctx, const shop_field *fields, int n, shop_body *out)
{
    memset(out, 0, sizeof *out);
    if (n < 0 || n > SHOP_BODY_FIELDS) {
        reply_error(ctx->res, 500, "internal", "too many fields in a body spec");
        return false;
    }
    out->doc = load(ctx);
    bool ok = out->doc != NULL;
    for (int i = 0; ok && i < n; i++)
        ok = field_get(ctx, &fields[i], out, i);
    ok = ok && fields_known(ctx, fields, n, out->doc);
    for (int i = 0; ok && i < n; i++)
        ok = field_valid(ctx, &fields[i], out, i);
    if (!ok)
        body_free(out);
    return ok;
}

void body_free(shop_body *b)
{
    json_decref(b->doc);
    memset(b, 0, sizeof *b);
}
