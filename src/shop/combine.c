/* combine.c — write combining: requests of one combinable route on one row,
   handed over together by http.c, share one transaction per strategy. */
#include "app_internal.h"

#include <stdlib.h>
#include <string.h>

/* The batch the call is part of, from its argument's first member. */
static shop_batch *batch_of(const void *arg)
{
    shop_batch *const *first = arg;
    return *first;
}

static void batch_set(void *arg, shop_batch *b)
{
    shop_batch **first = arg;
    *first = b;
}

pgtx_status batch_one(pgtx_tx *tx, pgtx_call *call, pgtx_tx_fn body,
                      pgtx_strategy *strategy, pgtx_error *err)
{
    result_reset(&batch_of(call->arg)->rows);
    pgtx_strategy was = strategy ? *strategy : PGTX_STRATEGY_LOCK;
    if (strategy && was == PGTX_STRATEGY_ATOMIC)
        *strategy = PGTX_STRATEGY_LOCK;
    pgtx_status st = body(tx, call->arg, err);
    if (strategy)
        *strategy = was;
    return st;
}

pgtx_status batch_queue(pgtx_tx *tx, pgtx_call *calls, int n, const char *sql,
                        const char *key, const batch_elem_fn *elems,
                        const bool *quote, int nelems, pgtx_error *err)
{
    const char *params[1 + BATCH_ARRAYS_MAX] = {key};
    char *arrays[BATCH_ARRAYS_MAX] = {NULL};
    pgtx_status st = nelems <= BATCH_ARRAYS_MAX
                         ? PGTX_OK
                         : pgtx_fail(err, PGTX_INVALID, "too many arrays");
    for (int i = 0; i < nelems && st == PGTX_OK; i++) {
        arrays[i] = batch_array(calls, n, quote && quote[i], elems[i]);
        if (arrays[i] == NULL)
            st = pgtx_fail(err, PGTX_NOMEM, "out of memory");
        params[1 + i] = arrays[i];
    }
    if (st == PGTX_OK) {
        shop_batch *b = batch_of(calls[0].arg);
        result_reset(&b->rows);
        st = pgtx_queue(tx, sql, 1 + nelems, params, &b->rows, err);
    }
    for (int i = 0; i < nelems && i < BATCH_ARRAYS_MAX; i++)
        free(arrays[i]);
    return st;
}

char *batch_array(const pgtx_call *calls, int n, bool quote, batch_elem_fn elem)
{
    char buf[BATCH_ELEM_BUF];
    size_t cap = 3;
    for (int i = 0; i < n; i++) {
        const char *v = elem(calls[i].arg, buf);
        cap += (v ? 2 * strlen(v) + 2 : 4) + 1;
    }
    char *out = malloc(cap);
    if (out == NULL)
        return NULL;
    size_t len = 0;
    out[len++] = '{';
    for (int i = 0; i < n; i++) {
        const char *v = elem(calls[i].arg, buf);
        if (i)
            out[len++] = ',';
        if (v == NULL) {
            memcpy(out + len, "NULL", 4);
            len += 4;
            continue;
        }
        if (quote)
            out[len++] = '"';
        for (; *v; v++) {
            if (quote && (*v == '"' || *v == '\\'))
                out[len++] = '\\';
            out[len++] = *v;
        }
        if (quote)
            out[len++] = '"';
    }
    out[len++] = '}';
    out[len] = '\0';
    return out;
}

void combinable_handle(shop_ctx *ctx, const shop_combinable *c)
{
    void *arg = calloc(1, c->arg_size);
    if (arg == NULL) {
        reply_json(ctx->res, 503, NULL); /* out of memory */
        return;
    }
    if (c->prepare(ctx, c->data, arg)) {
        ctx->res->batch = 1;
        c->alone(ctx, arg);
        c->release(arg);
    }
    free(arg);
}

/* Calls per transaction when each has a savepoint (lock, optimistic,
   serializable): each costs one to three round trips with the row locked,
   which another process's writers of the row wait for (with 16, two
   processes under ASan on 2 cores passed 1 s lock waits); by 8 the
   COMMIT's cost is mostly shared already. */
#define SAVEPOINT_BATCH_MAX 8

static void *arg_at(const shop_combinable *c, char *args, int i)
{
    return args + (size_t)i * c->arg_size;
}

/* The k >= 2 prepared requests at idx[] in one transaction. */
static void run_batch(const shop_combinable *c, shop_ctx *const *ctx, char *args,
                      const int *idx, int k)
{
    shop_batch b = {NULL};
    pgtx_call calls[PGTX_BATCH_SAVEPOINT_MAX];
    for (int m = 0; m < k; m++) {
        batch_set(arg_at(c, args, idx[m]), &b);
        calls[m] = (pgtx_call){.arg = arg_at(c, args, idx[m])};
    }
    shop_ctx *lead = ctx[idx[0]];
    const pgtx_batch_ops *ops =
        lead->strategy == PGTX_STRATEGY_ATOMIC ? &c->atomic_ops : &c->rmw_ops;
    pgtx_run_info info = {0};
    pgtx_error err;
    (void)pgtx_run_batch(engine_for(lead), ops, calls, k, &info, &err);
    for (int m = 0; m < k; m++) {
        shop_ctx *x = ctx[idx[m]];
        int retries = calls[m].attempts > 1 ? calls[m].attempts - 1 : 0;
        x->res->batch = k;
        x->res->retries = retries;
        note_commit_lsn(x->res, calls[m].status, &info);
        bool wrote = c->finish(x, calls[m].arg, &calls[m], m, &info);
        if (x->app->metrics)
            shop_metrics_tx(x->app->metrics, x->strategy,
                            wrote ? SHOP_TX_COMMITTED : SHOP_TX_FAILED, retries);
    }
    PQclear(b.rows);
    for (int m = 0; m < k; m++) {
        batch_set(calls[m].arg, NULL);
        c->release(calls[m].arg);
    }
}

/* Those of the prepared requests from `from` on that run with it: the same
   strategy (an engine and a way of writing) and the same row. */
static int group_of(const shop_combinable *c, shop_ctx *const *ctx, char *args,
                    bool *ready, int n, int from, int *idx)
{
    int k = 0;
    int64_t key = c->key(arg_at(c, args, from));
    for (int i = from; i < n; i++) {
        if (!ready[i] || ctx[i]->strategy != ctx[from]->strategy ||
            c->key(arg_at(c, args, i)) != key)
            continue;
        ready[i] = false;
        idx[k++] = i;
    }
    return k;
}

static void run_alone(const shop_combinable *c, shop_ctx *ctx, void *arg)
{
    ctx->res->batch = 1;
    c->alone(ctx, arg);
    c->release(arg);
}

static bool row_was_locked(const shop_ctx *ctx)
{
    return ctx->res->status == 503 && ctx->res->code &&
           strcmp(ctx->res->code, "row_busy") == 0;
}

/* The requests of another strategy behind a group that found the row
   locked for the whole lock wait: answered as it was, not sent to wait
   that long again. */
static void refuse_locked(const shop_combinable *c, shop_ctx *const *ctx,
                          char *args, const int *idx, int k)
{
    pgtx_error err = {0};
    pgtx_fail(&err, PGTX_LOCK_NOT_AVAILABLE, "the request before it in its batch "
              "found the row locked");
    for (int m = 0; m < k; m++) {
        reply_failure(ctx[idx[m]]->res, PGTX_LOCK_NOT_AVAILABLE, NULL, &err, NULL);
        c->release(arg_at(c, args, idx[m]));
    }
}

void combine_run(const shop_combinable *c, shop_ctx *const *ctx, int n)
{
    char *args = n <= PGTX_BATCH_SAVEPOINT_MAX ? calloc((size_t)n, c->arg_size) : NULL;
    if (args == NULL) { /* each alone: it answers its own lack of memory */
        for (int i = 0; i < n; i++)
            combinable_handle(ctx[i], c);
        return;
    }
    bool ready[PGTX_BATCH_SAVEPOINT_MAX];
    int idx[PGTX_BATCH_SAVEPOINT_MAX];
    for (int i = 0; i < n; i++)
        ready[i] = c->prepare(ctx[i], c->data, arg_at(c, args, i));
    bool locked = false;
    for (int i = 0; i < n; i++) {
        if (!ready[i])
            continue;
        int k = group_of(c, ctx, args, ready, n, i, idx);
        /* A savepoint per call costs round trips per call, all of them
           under the hot row's lock: smaller transactions let another
           process's writers of the row in between. */
        int most = ctx[i]->strategy == PGTX_STRATEGY_ATOMIC ? k : SAVEPOINT_BATCH_MAX;
        for (int from = 0; from < k; from += most) {
            int m = k - from < most ? k - from : most;
            if (locked)
                refuse_locked(c, ctx, args, idx + from, m);
            else if (m >= 2)
                run_batch(c, ctx, args, idx + from, m);
            else
                run_alone(c, ctx[idx[from]], arg_at(c, args, idx[from]));
            locked = locked || row_was_locked(ctx[idx[from]]);
        }
    }
    free(args);
}
