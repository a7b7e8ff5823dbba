/* replay_batch.c — `pgtx-race replay combined-batch`: four calls in ONE
 * transaction with pgtx_run_batch(), a savepoint per call, the `one`
 * callback being pgtx_delta_apply() under the strategy asked for.  The
 * timeline is what the library really sends: the pool's echo (one log line
 * per round trip, every statement of it) is caught by a log callback and
 * interleaved with the lab's own steps, and a second connection reads the
 * rows before the COMMIT and after it.
 *
 * One batch is one transaction on one connection, its calls run one after
 * another: nothing races inside it, so every strategy, naive included,
 * promises the same outcome here.
 */
#include "replay_batch.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define N_CALLS 4
#define MAX_STEPS 64
#define START_BALANCE 100
#define START_STOCK 2
#define WANT_BALANCE (START_BALANCE + 100 + 50 + 25)

typedef enum call_kind { CALL_DEPOSIT, CALL_ORDER } call_kind;

typedef struct call_def {
    call_kind kind;
    int64_t amount; /* a deposit's amount, an order's units */
    const char *what;
    pgtx_status want; /* what the library must say of it */
} call_def;

/* The order sits between deposits: the call after it must still commit. */
static const call_def CALLS[N_CALLS] = {
    {CALL_DEPOSIT, 100, "deposit 100 to account 1", PGTX_OK},
    {CALL_DEPOSIT, 50, "deposit 50 to account 1", PGTX_OK},
    {CALL_ORDER, 3, "order 3 of product 1 (stock 2, floor 0)", PGTX_ABORTED},
    {CALL_DEPOSIT, 25, "deposit 25 to account 1", PGTX_OK},
};

static const char SETUP_SQL[] =
    "DROP TABLE IF EXISTS replay_order, replay_product, replay_account;"
    "CREATE TABLE replay_account (id bigint PRIMARY KEY, balance bigint NOT NULL,"
    " version bigint NOT NULL DEFAULT 0);"
    "CREATE TABLE replay_product (id bigint PRIMARY KEY, stock bigint NOT NULL,"
    " version bigint NOT NULL DEFAULT 0);"
    "CREATE TABLE replay_order (id serial PRIMARY KEY, product_id bigint NOT NULL,"
    " account_id bigint NOT NULL, quantity bigint NOT NULL);"
    "INSERT INTO replay_account (id, balance) VALUES (1, 100);"
    "INSERT INTO replay_product (id, stock) VALUES (1, 2)";

static const char READ_SQL[] =
    "SELECT a.balance, p.stock, (SELECT count(*) FROM replay_order)"
    " FROM replay_account a, replay_product p WHERE a.id = 1 AND p.id = 1";

#define ORDER_INSERT                                                           \
    "INSERT INTO replay_order (product_id, account_id, quantity)"             \
    " VALUES (1, 1, $1::bigint)"

typedef struct step {
    int tx; /* 1: the batch's connection, 2: the second connection */
    const char *kind; /* "call", "sql", "ok", "refused", "read", "error" */
    char text[1200];
    char sql[1100]; /* a round trip's statements; "" for the lab's steps */
} step;

typedef struct lab lab;

typedef struct lab_call {
    lab *l;
    int index;
} lab_call;

struct lab {
    pgtx_strategy strategy;
    bool json;
    PGconn *observer;
    step steps[MAX_STEPS];
    int n_steps;
    int round_trips;
    int commits; /* round trips that carried a COMMIT */
    bool early_read_clean; /* before COMMIT the second connection saw nothing */
    bool early_read_done;
    lab_call lc[N_CALLS];
    pgtx_call calls[N_CALLS];
    pgtx_status batch_status;
    pgtx_error batch_err;
    pgtx_run_info info;
};

static step *add_step(lab *l, int tx, const char *kind)
{
    step *s = &l->steps[l->n_steps < MAX_STEPS ? l->n_steps++ : MAX_STEPS - 1];
    memset(s, 0, sizeof *s);
    s->tx = tx;
    s->kind = kind;
    return s;
}

/* ---- what the library sends: its echo, one line per round trip ---------- */

/* COMMIT statements among a round trip's "; "-separated ones ("READ
   COMMITTED" in a BEGIN is not one). */
static int count_commits(const char *sql)
{
    int n = 0;
    for (const char *p = sql; (p = strstr(p, "COMMIT")) != NULL; p += 6)
        n += (p == sql || (p >= sql + 2 && strncmp(p - 2, "; ", 2) == 0)) &&
             (p[6] == '\0' || p[6] == ';');
    return n;
}

/* "pgtx conn 1: 0.412 ms: BEGIN ...; SAVEPOINT pgtx_call; ...": the
   statements after the timing, which would make every run's text differ. */
static void on_log(void *arg, pgtx_log_level level, const char *msg)
{
    lab *l = arg;
    if (level != PGTX_LOG_ECHO)
        return;
    const char *sql = strstr(msg, " ms: ");
    sql = sql ? sql + 5 : msg;
    step *s = add_step(l, 1, "sql");
    l->round_trips++;
    snprintf(s->sql, sizeof s->sql, "%s", sql);
    snprintf(s->text, sizeof s->text, "round trip %d: %s", l->round_trips, sql);
    l->commits += count_commits(sql);
}

/* ---- the second connection ------------------------------------------------ */

typedef struct state {
    bool ok;
    long long balance, stock, orders;
} state;

static state read_state(PGconn *pg)
{
    state st = {0};
    PGresult *r = PQexec(pg, READ_SQL);
    st.ok = PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1;
    if (st.ok) {
        st.balance = atoll(PQgetvalue(r, 0, 0));
        st.stock = atoll(PQgetvalue(r, 0, 1));
        st.orders = atoll(PQgetvalue(r, 0, 2));
    }
    PQclear(r);
    return st;
}

static void observe(lab *l, const char *when)
{
    state st = read_state(l->observer);
    step *s = add_step(l, 2, st.ok ? "read" : "error");
    if (!st.ok) {
        snprintf(s->text, sizeof s->text, "read failed: %s", PQerrorMessage(l->observer));
        return;
    }
    snprintf(s->text, sizeof s->text, "%s: balance = %lld, stock = %lld, orders = %lld",
             when, st.balance, st.stock, st.orders);
    if (!l->early_read_done) {
        l->early_read_done = true;
        l->early_read_clean = st.balance == START_BALANCE && st.stock == START_STOCK &&
                              st.orders == 0;
    }
}

/* ---- the `one` callback: a call's work under the strategy ---------------- */

static pgtx_delta row_delta(const char *table, const char *column, int64_t delta,
                            bool floor)
{
    return (pgtx_delta){.table = table, .key_column = "id", .column = column,
                        .version_column = "version", .key = 1, .delta = delta,
                        .has_floor = floor, .floor = 0};
}

/* The step that says how a call's delta went: `what`'s value in the batch's
   transaction, or the failure. */
static pgtx_status report_delta(lab *l, pgtx_status st, const char *what, int64_t value,
                                const pgtx_error *err)
{
    step *s = add_step(l, 1, st == PGTX_OK ? "ok" : "error");
    if (st == PGTX_OK)
        snprintf(s->text, sizeof s->text, "-> %s %" PRId64 " in this transaction", what,
                 value);
    else
        snprintf(s->text, sizeof s->text, "-> %s: %s", pgtx_status_name(st),
                 err ? err->message : "");
    return st;
}

static pgtx_status deposit(lab *l, pgtx_tx *tx, const call_def *d, pgtx_error *err)
{
    pgtx_delta dl = row_delta("replay_account", "balance", d->amount, false);
    pgtx_delta_result res = {0};
    pgtx_status st = pgtx_delta_apply(tx, l->strategy, &dl, &res, err);
    return report_delta(l, st, "balance", res.value, err);
}

/* The order row first (queued), then the stock: a refusal must take the
   row back too, which only the savepoint can do. */
static pgtx_status order(lab *l, pgtx_tx *tx, const call_def *d, pgtx_error *err)
{
    char units[24];
    snprintf(units, sizeof units, "%" PRId64, d->amount);
    const char *params[] = {units};
    pgtx_status st = pgtx_queue(tx, ORDER_INSERT, 1, params, NULL, err);
    pgtx_delta dl = row_delta("replay_product", "stock", -d->amount, true);
    pgtx_delta_result res = {0};
    if (st == PGTX_OK)
        st = pgtx_delta_apply(tx, l->strategy, &dl, &res, err);
    if (st == PGTX_OK && res.refused) {
        step *s = add_step(l, 1, "refused");
        snprintf(s->text, sizeof s->text,
                 "-> stock %" PRId64 " - %" PRId64 " is below the floor 0: refused;"
                 " the call returns PGTX_ABORTED (out_of_stock)", res.value, d->amount);
        return pgtx_fail(err, PGTX_ABORTED, "out_of_stock: %" PRId64 " in stock", res.value);
    }
    return report_delta(l, st, "stock", res.value, err);
}

static pgtx_status lab_one(pgtx_tx *tx, pgtx_call *call, pgtx_error *err)
{
    lab_call *lc = call->arg;
    lab *l = lc->l;
    const call_def *d = &CALLS[lc->index];
    step *s = add_step(l, 1, "call");
    snprintf(s->text, sizeof s->text, "call %d of %d (attempt %d): %s, pgtx_delta_apply(%s)",
             lc->index + 1, N_CALLS, pgtx_tx_attempt(tx), d->what,
             pgtx_strategy_name(l->strategy));
    pgtx_status st = d->kind == CALL_ORDER ? order(l, tx, d, err) : deposit(l, tx, d, err);
    if (lc->index == N_CALLS - 1)
        observe(l, "before the COMMIT");
    return st;
}

static const pgtx_batch_ops LAB_OPS = {.one = lab_one};

/* ---- running it ------------------------------------------------------------- */

static bool open_engine(lab *l, const char *conninfo, pgtx_pool **pool,
                        pgtx_engine **engine, char *err, size_t n)
{
    pgtx_pool_config pc;
    pgtx_pool_config_init(&pc);
    pc.conninfo = conninfo;
    pc.application_name = "pgtx-race-replay";
    pc.pool_size = 1;
    pc.max_overflow = 0;
    pc.echo = true;
    pc.log = on_log;
    pc.log_arg = l;
    pgtx_engine_options o;
    pgtx_engine_options_init(&o);
    o.isolation = l->strategy == PGTX_STRATEGY_SERIALIZABLE ? PGTX_SERIALIZABLE
                                                            : PGTX_READ_COMMITTED;
    pgtx_error e = {0};
    if (pgtx_pool_create(&pc, pool, &e) != PGTX_OK ||
        pgtx_engine_create(*pool, &o, engine, &e) != PGTX_OK) {
        snprintf(err, n, "pool: %s", e.message);
        return false;
    }
    return true;
}

static void run_batch(lab *l, pgtx_engine *engine)
{
    for (int i = 0; i < N_CALLS; i++) {
        l->lc[i] = (lab_call){l, i};
        memset(&l->calls[i], 0, sizeof l->calls[i]);
        l->calls[i].arg = &l->lc[i];
    }
    memset(&l->batch_err, 0, sizeof l->batch_err);
    l->batch_status = pgtx_run_batch(engine, &LAB_OPS, l->calls, N_CALLS, &l->info,
                                     &l->batch_err);
    step *s = add_step(l, 1, l->batch_status == PGTX_OK ? "ok" : "error");
    snprintf(s->text, sizeof s->text, "pgtx_run_batch() returns %s after %d attempt(s)%s%s",
             pgtx_status_name(l->batch_status), l->info.attempts,
             l->batch_status == PGTX_OK ? "" : ": ", l->batch_err.message);
    observe(l, "after the COMMIT");
}

/* ---- the verdict and its output ------------------------------------------- */

static bool calls_as_wanted(const lab *l)
{
    for (int i = 0; i < N_CALLS; i++)
        if (l->calls[i].status != CALLS[i].want)
            return false;
    return true;
}

static bool check_final(const lab *l, char *final, size_t n)
{
    state st = read_state(l->observer);
    if (!st.ok) {
        snprintf(final, n, "check failed: %s", PQerrorMessage(l->observer));
        return false;
    }
    snprintf(final, n, "balance = %lld (expected %d: %d + deposits of 100, 50 and 25),"
             " stock = %lld (expected %d), orders = %lld (expected 0)", st.balance,
             WANT_BALANCE, START_BALANCE, st.stock, START_STOCK, st.orders);
    return st.balance == WANT_BALANCE && st.stock == START_STOCK && st.orders == 0;
}

#define WIDE 76
#define NARROW 40

/* Up to `w` characters of *text, broken at a space when it has to. */
static void print_cell(const char **text, int w)
{
    size_t n = strlen(*text);
    if (n > (size_t)w) {
        n = (size_t)w;
        while (n > (size_t)w / 2 && (*text)[n] != ' ')
            n--;
        if ((*text)[n] != ' ')
            n = (size_t)w;
    }
    printf(" %-*.*s |", w, (int)n, *text);
    *text += n;
    while (**text == ' ')
        (*text)++;
}

static void print_step(int number, const step *s)
{
    const char *a = s->tx == 1 ? s->text : "", *b = s->tx == 2 ? s->text : "";
    for (bool first = true; first || *a || *b; first = false) {
        if (first)
            printf("| %4d |", number);
        else
            printf("|      |");
        print_cell(&a, WIDE);
        print_cell(&b, NARROW);
        putchar('\n');
    }
}

static const char DASHES[] =
    "--------------------------------------------------------------------------------";

static void print_calls(const lab *l)
{
    for (int i = 0; i < N_CALLS; i++) {
        const pgtx_call *c = &l->calls[i];
        printf("call %d, %s: %s%s%s (attempts %d)\n", i + 1, CALLS[i].what,
               pgtx_status_name(c->status), c->err.message[0] ? ": " : "",
               c->err.message, c->attempts);
    }
}

static void print_table(const lab *l, const char *final, bool correct, bool promised)
{
    printf("scenario %s, strategy %s: %s\n\n", REPLAY_BATCH_SCENARIO,
           pgtx_strategy_name(l->strategy), REPLAY_BATCH_SUMMARY);
    const char *h1 = "the batch: pgtx_run_batch() on one connection";
    const char *h2 = "a second connection";
    printf("| step |");
    print_cell(&h1, WIDE);
    print_cell(&h2, NARROW);
    printf("\n|------|-%.*s-|-%.*s-|\n", WIDE, DASHES, NARROW, DASHES);
    for (int i = 0; i < l->n_steps; i++)
        print_step(i + 1, &l->steps[i]);
    printf("\nbatch %s after %d attempt(s): %d round trip(s), %d COMMIT\n",
           pgtx_status_name(l->batch_status), l->info.attempts, l->round_trips, l->commits);
    print_calls(l);
    printf("final: %s -> %s\n", final, correct ? "correct" : "WRONG");
    printf("%s\n", promised ? "as promised by this strategy"
                            : "NOT what this strategy promises");
}

static void print_json(const lab *l, const char *final, bool correct, bool promised)
{
    printf("{\"scenario\": \"%s\", \"strategy\": \"%s\", \"steps\": [",
           REPLAY_BATCH_SCENARIO, pgtx_strategy_name(l->strategy));
    for (int i = 0; i < l->n_steps; i++) {
        const step *s = &l->steps[i];
        printf("%s\n  {\"step\": %d, \"tx\": %d, \"kind\": \"%s\", \"text\": ", i ? "," : "",
               i + 1, s->tx, s->kind);
        replay_json_string(s->text);
        printf(", \"sql\": ");
        replay_json_string(s->sql);
        putchar('}');
    }
    printf("],\n \"batch\": {\"status\": \"%s\", \"attempts\": %d, \"round_trips\": %d,"
           " \"commits\": %d},\n \"calls\": [", pgtx_status_name(l->batch_status),
           l->info.attempts, l->round_trips, l->commits);
    for (int i = 0; i < N_CALLS; i++) {
        printf("%s\n  {\"call\": %d, \"what\": ", i ? "," : "", i + 1);
        replay_json_string(CALLS[i].what);
        printf(", \"status\": \"%s\", \"attempts\": %d, \"error\": ",
               pgtx_status_name(l->calls[i].status), l->calls[i].attempts);
        replay_json_string(l->calls[i].err.message);
        putchar('}');
    }
    printf("],\n \"transactions\": [{\"tx\": 1, \"state\": \"%s\", \"attempts\": %d}],\n"
           " \"final\": ", l->batch_status == PGTX_OK ? "committed" : "failed",
           l->info.attempts);
    replay_json_string(final);
    printf(", \"correct\": %s, \"as_promised\": %s}\n", correct ? "true" : "false",
           promised ? "true" : "false");
}

/* The promise: the refused call alone undone, the others in by one COMMIT,
   and nothing of the batch visible before it. */
static int verdict(lab *l)
{
    char final[400];
    bool correct = check_final(l, final, sizeof final);
    bool promised = correct && l->batch_status == PGTX_OK && calls_as_wanted(l) &&
                    l->early_read_clean;
    if (l->json)
        print_json(l, final, correct, promised);
    else
        print_table(l, final, correct, promised);
    fflush(stdout);
    pgtx_class cls = pgtx_status_class(l->batch_status);
    if (cls == PGTX_CLASS_CONNECTION || cls == PGTX_CLASS_POOL) {
        fprintf(stderr, "pgtx-race replay: the batch could not run: %s\n",
                pgtx_one_line_(l->batch_err.message));
        return RACE_EXIT_CANNOT_RUN;
    }
    if (promised)
        return RACE_EXIT_KEPT;
    fprintf(stderr, "pgtx-race replay: %s under %s did not end as promised: batch %s, "
                    "%s%s\n", REPLAY_BATCH_SCENARIO, pgtx_strategy_name(l->strategy),
            pgtx_status_name(l->batch_status), final,
            !l->early_read_clean ? "; the second connection saw the batch before its COMMIT"
            : calls_as_wanted(l) ? "" : "; a call's status is not the one expected");
    return RACE_EXIT_BROKEN;
}

int replay_batch_run(const char *conninfo, pgtx_strategy s, bool json)
{
    char err[512] = "";
    lab *l = calloc(1, sizeof *l);
    pgtx_pool *pool = NULL;
    pgtx_engine *engine = NULL;
    int rc = RACE_EXIT_CANNOT_RUN;
    if (l == NULL) {
        fprintf(stderr, "pgtx-race replay: out of memory\n");
        return rc;
    }
    l->strategy = s;
    l->json = json;
    l->observer = replay_connect(conninfo, "pgtx-race-replay", err, sizeof err);
    if (l->observer != NULL) {
        PGresult *r = PQexec(l->observer, SETUP_SQL);
        if (PQresultStatus(r) != PGRES_COMMAND_OK)
            snprintf(err, sizeof err, "set-up failed: %s", PQerrorMessage(l->observer));
        PQclear(r);
    }
    if (err[0] == '\0' && open_engine(l, conninfo, &pool, &engine, err, sizeof err)) {
        run_batch(l, engine);
        rc = verdict(l);
    }
    if (err[0] != '\0')
        fprintf(stderr, "pgtx-race replay: %s\n", pgtx_one_line_(err));
    pgtx_engine_destroy(engine);
    pgtx_pool_destroy(pool);
    PQfinish(l->observer);
    free(l);
    return rc;
}
