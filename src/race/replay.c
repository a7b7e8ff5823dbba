/* replay.c — `pgtx-race replay`: a fixed interleaving of two transactions on
 * two real connections, step by step, under one strategy; then the final
 * state and whether it is what the strategy promises.
 *
 * Statements are sent asynchronously: a step that does not answer within
 * WAIT_MS is shown as waiting (blocked by a lock) and the replay goes on
 * with the other transaction, so the lab never deadlocks itself.
 */
#include "race.h"

#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "replay_batch.h"
#include "replay_scenarios.h"

#define WAIT_MS 250      /* longer than any unblocked step on loopback */
#define MAX_ROWS 64      /* the timeline; far more than any scenario needs */
#define MAX_SECONDS 30   /* the whole replay, deadlock detection included */

typedef enum tx_state { TX_RUNNING, TX_COMMITTED, TX_REFUSED, TX_FAILED } tx_state;

typedef struct txn {
    int id; /* 1 or 2 */
    PGconn *pg;
    const program *prog;
    const char *begin_sql;
    int account;
    int pc;      /* next op */
    int attempt; /* 1 = first */
    long long v, ver;
    tx_state state;
    bool waiting; /* a statement is in flight and has not answered */
    char sql[768];
} txn;

typedef struct row {
    int tx;
    char text[200];
    char sql[768];
    const char *kind; /* "ok", "waiting", "resumed", "retry", "refused", "error" */
} row;

typedef struct replay {
    const scenario *sc;
    pgtx_strategy strategy;
    txn t[2];
    row rows[MAX_ROWS];
    int n_rows;
    double deadline;
    bool json;
} replay;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static row *add_row(replay *r, const txn *t, const char *kind)
{
    row *w = &r->rows[r->n_rows < MAX_ROWS ? r->n_rows++ : MAX_ROWS - 1];
    memset(w, 0, sizeof *w);
    w->tx = t->id;
    w->kind = kind;
    snprintf(w->sql, sizeof w->sql, "%s", t->sql);
    return w;
}

/* ---- SQL templates: {v} {ver} {acct} ------------------------------------- */

static void expand(const txn *t, const char *tmpl, char *out, size_t n)
{
    size_t o = 0;
    for (const char *p = tmpl; *p && o + 24 < n; p++) {
        long long val = 0;
        size_t skip = 0;
        if (strncmp(p, "{v}", 3) == 0)
            val = t->v, skip = 3;
        else if (strncmp(p, "{ver}", 5) == 0)
            val = t->ver, skip = 5;
        else if (strncmp(p, "{acct}", 6) == 0)
            val = t->account, skip = 6;
        if (skip) {
            o += (size_t)snprintf(out + o, n - o, "%lld", val);
            p += skip - 1;
        } else {
            out[o++] = *p;
        }
    }
    out[o] = '\0';
}

/* ---- talking to the server ------------------------------------------------ */

static const op *current_op(const txn *t) { return &t->prog->ops[t->pc]; }

/* The step's label with this transaction's values filled in. */
static const char *label(const txn *t)
{
    static _Thread_local char buf[160];
    expand(t, current_op(t)->label, buf, sizeof buf);
    return buf;
}

static bool send_op(txn *t)
{
    const op *o = current_op(t);
    if (o->kind == OP_BEGIN)
        snprintf(t->sql, sizeof t->sql, "%s", t->begin_sql);
    else
        expand(t, o->sql, t->sql, sizeof t->sql);
    return PQsendQuery(t->pg, t->sql) == 1;
}

/* Wait up to `ms` for the statement in flight to finish. */
static bool answered(txn *t, int ms)
{
    double until = now_s() + ms / 1000.0;
    for (;;) {
        if (!PQconsumeInput(t->pg) || !PQisBusy(t->pg))
            return true;
        int left = (int)((until - now_s()) * 1000);
        if (left <= 0)
            return false;
        struct pollfd pfd = {PQsocket(t->pg), POLLIN, 0};
        poll(&pfd, 1, left);
    }
}

/* What one step's results said: the first error, the last row read, the
   last command's row count. */
typedef struct outcome {
    bool error;
    char sqlstate[6];
    char message[160];
    bool has_value;
    long long value, value2;
    int ncols;
    long long affected;
    char cmd[32];
} outcome;

static void take_result(PGresult *res, outcome *out)
{
    ExecStatusType s = PQresultStatus(res);
    if (s == PGRES_FATAL_ERROR && !out->error) {
        const char *st = PQresultErrorField(res, PG_DIAG_SQLSTATE);
        const char *m = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
        out->error = true;
        snprintf(out->sqlstate, sizeof out->sqlstate, "%s", st ? st : "");
        snprintf(out->message, sizeof out->message, "%s", m ? m : "error");
        return;
    }
    if (s == PGRES_TUPLES_OK && PQntuples(res) > 0) {
        out->has_value = true;
        out->ncols = PQnfields(res);
        out->value = atoll(PQgetvalue(res, 0, 0));
        out->value2 = out->ncols > 1 ? atoll(PQgetvalue(res, 0, 1)) : 0;
    }
    const char *n = PQcmdTuples(res);
    out->affected = (n && *n) ? atoll(n) : -1;
    snprintf(out->cmd, sizeof out->cmd, "%s", PQcmdStatus(res));
}

static outcome collect(txn *t)
{
    outcome out;
    memset(&out, 0, sizeof out);
    PGresult *res;
    while ((res = PQgetResult(t->pg)) != NULL) {
        take_result(res, &out);
        PQclear(res);
    }
    if (PQstatus(t->pg) != CONNECTION_OK && !out.error) {
        out.error = true;
        snprintf(out.message, sizeof out.message, "connection lost");
    }
    return out;
}

static void rollback(txn *t)
{
    PQclear(PQexec(t->pg, "ROLLBACK"));
}

/* ---- what a step's answer means ------------------------------------------ */

static void end_refused(replay *r, txn *t, row *w, const char *why)
{
    rollback(t);
    t->state = TX_REFUSED;
    w->kind = "refused";
    size_t n = strlen(w->text);
    snprintf(w->text + n, sizeof w->text - n, " -> %s: ROLLBACK (%s)", why,
             r->sc->refusal ? r->sc->refusal : "refused");
}

static void restart(txn *t, row *w, const char *why)
{
    rollback(t);
    t->attempt++;
    t->pc = 0;
    w->kind = "retry";
    size_t n = strlen(w->text);
    snprintf(w->text + n, sizeof w->text - n, " -> %s: ROLLBACK, retry #%d", why,
             t->attempt);
}

static void on_error(replay *r, txn *t, row *w, const outcome *o)
{
    pgtx_status st = pgtx_status_from_sqlstate(o->sqlstate);
    snprintf(w->text, sizeof w->text, "%.60s: ERROR %s %.120s", label(t),
             o->sqlstate, o->message);
    if (st == PGTX_SERIALIZATION || st == PGTX_DEADLOCK) {
        restart(t, w, "retryable");
    } else if (st == PGTX_UNIQUE_VIOLATION) {
        end_refused(r, t, w, "unique constraint");
    } else {
        rollback(t);
        t->state = TX_FAILED;
        w->kind = "error";
    }
}

static bool refuses(const op *o, long long v)
{
    return (o->refuse == REFUSE_LE0 && v <= 0) || (o->refuse == REFUSE_GT0 && v > 0);
}

static void on_read(replay *r, txn *t, row *w, const outcome *o)
{
    const op *p = current_op(t);
    const char *what = label(t);
    t->v = o->has_value ? o->value : 0;
    t->ver = o->value2;
    if (o->ncols > 1)
        snprintf(w->text, sizeof w->text, "%s = %lld (version %lld)", what, t->v, t->ver);
    else
        snprintf(w->text, sizeof w->text, "%s = %lld", what, t->v);
    if (refuses(p, t->v))
        end_refused(r, t, w, "business rule");
    else
        t->pc++;
}

static void on_write(replay *r, txn *t, row *w, const outcome *o)
{
    const op *p = current_op(t);
    snprintf(w->text, sizeof w->text, "%s: %lld row%s", label(t), o->affected,
             o->affected == 1 ? "" : "s");
    if (o->has_value) {
        size_t n = strlen(w->text);
        snprintf(w->text + n, sizeof w->text - n, ", returned %lld", o->value);
    }
    if (o->affected == 0 && p->on_zero == ZR_STALE)
        restart(t, w, "stale version");
    else if (o->affected == 0 && p->on_zero == ZR_REFUSE)
        end_refused(r, t, w, "guard said no");
    else
        t->pc++;
}

static void on_commit(txn *t, row *w, const outcome *o)
{
    bool ok = strcmp(o->cmd, "COMMIT") == 0;
    snprintf(w->text, sizeof w->text, "COMMIT%s", ok ? "" : " (rolled back)");
    t->state = ok ? TX_COMMITTED : TX_FAILED;
    if (!ok)
        w->kind = "error";
}

static void prepend(char *buf, size_t size, const char *prefix)
{
    size_t p = strlen(prefix), n = strlen(buf);
    if (p + n + 1 > size)
        n = size - p - 1;
    memmove(buf + p, buf, n);
    memcpy(buf, prefix, p);
    buf[p + n] = '\0';
}

/* The statement in flight has answered: record it and move on. */
static void finish_op(replay *r, txn *t, const char *kind)
{
    outcome o = collect(t);
    t->waiting = false;
    row *w = add_row(r, t, kind);
    if (o.error) {
        on_error(r, t, w, &o);
        return;
    }
    switch (current_op(t)->kind) {
    case OP_BEGIN:
        snprintf(w->text, sizeof w->text, "%s", t->begin_sql);
        t->pc++;
        break;
    case OP_READ:
        on_read(r, t, w, &o);
        break;
    case OP_WRITE:
        on_write(r, t, w, &o);
        break;
    case OP_COMMIT:
        on_commit(t, w, &o);
        break;
    }
    if (strcmp(kind, "resumed") == 0)
        prepend(w->text, sizeof w->text, "(lock granted) ");
}

/* ---- scheduling ------------------------------------------------------------ */

/* A blocked statement of another transaction may have been released. */
static void check_waiting(replay *r, int wait_ms)
{
    for (int i = 0; i < 2; i++) {
        txn *t = &r->t[i];
        if (t->waiting && answered(t, wait_ms))
            finish_op(r, t, "resumed");
    }
}

static void turn(replay *r, txn *t)
{
    if (t->state != TX_RUNNING)
        return;
    if (t->waiting) {
        row *w = add_row(r, t, "waiting");
        snprintf(w->text, sizeof w->text, "(still waiting: this step is deferred)");
        return;
    }
    if (!send_op(t)) {
        row *w = add_row(r, t, "error");
        snprintf(w->text, sizeof w->text, "send failed: %s", PQerrorMessage(t->pg));
        t->state = TX_FAILED;
        return;
    }
    if (answered(t, WAIT_MS)) {
        finish_op(r, t, "ok");
    } else {
        t->waiting = true;
        row *w = add_row(r, t, "waiting");
        snprintf(w->text, sizeof w->text, "%s: waiting (blocked by a lock)",
                 current_op(t)->kind == OP_BEGIN ? "BEGIN" : label(t));
    }
    /* A commit releases locks at once; give the waiter a moment to answer
       so that the timeline shows it resuming where it really did. */
    check_waiting(r, 20);
}

static bool running(const replay *r)
{
    return r->t[0].state == TX_RUNNING || r->t[1].state == TX_RUNNING;
}

/* After the fixed interleaving: let whatever is left (retries, steps that
   were deferred while waiting) run to its end, one step at a time. */
static void drain(replay *r)
{
    while (running(r) && now_s() < r->deadline && r->n_rows < MAX_ROWS - 1) {
        txn *next = NULL;
        for (int i = 0; i < 2 && !next; i++)
            if (r->t[i].state == TX_RUNNING && !r->t[i].waiting)
                next = &r->t[i];
        if (next)
            turn(r, next);
        else
            check_waiting(r, 1000); /* both blocked: the server will decide */
    }
}

/* ---- output ------------------------------------------------------------------ */

static const char *state_name(tx_state s)
{
    static const char *const names[] = {"running", "committed", "refused", "failed"};
    return names[s];
}

void replay_json_string(const char *s)
{
    putchar('"');
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            printf("\\%c", *s);
        else if ((unsigned char)*s < 0x20)
            printf("\\u%04x", *s);
        else
            putchar(*s);
    }
    putchar('"');
}

static void print_json(const replay *r, const char *final, bool correct, bool promised)
{
    printf("{\"scenario\": ");
    replay_json_string(r->sc->name);
    printf(", \"strategy\": \"%s\", \"steps\": [", pgtx_strategy_name(r->strategy));
    for (int i = 0; i < r->n_rows; i++) {
        printf("%s\n  {\"step\": %d, \"tx\": %d, \"kind\": \"%s\", \"text\": ", i ? "," : "",
               i + 1, r->rows[i].tx, r->rows[i].kind);
        replay_json_string(r->rows[i].text);
        printf(", \"sql\": ");
        replay_json_string(r->rows[i].sql);
        putchar('}');
    }
    printf("],\n \"transactions\": [");
    for (int i = 0; i < 2; i++)
        printf("%s{\"tx\": %d, \"state\": \"%s\", \"attempts\": %d}", i ? ", " : "",
               r->t[i].id, state_name(r->t[i].state), r->t[i].attempt);
    printf("],\n \"final\": ");
    replay_json_string(final);
    printf(", \"correct\": %s, \"as_promised\": %s}\n", correct ? "true" : "false",
           promised ? "true" : "false");
}

#define COL 52

/* Print up to COL characters of *text, breaking at a space when it has to,
   and advance *text past them. */
static void print_cell(const char **text)
{
    size_t n = strlen(*text);
    if (n > COL) {
        n = COL;
        while (n > COL / 2 && (*text)[n] != ' ')
            n--;
        if ((*text)[n] != ' ')
            n = COL;
    }
    printf(" %-*.*s |", COL, (int)n, *text);
    *text += n;
    while (**text == ' ')
        (*text)++;
}

static void print_step(int step, const row *w)
{
    const char *t1 = w->tx == 1 ? w->text : "", *t2 = w->tx == 2 ? w->text : "";
    bool first = true;
    while (first || *t1 || *t2) {
        if (first)
            printf("| %4d |", step);
        else
            printf("|      |");
        print_cell(&t1);
        print_cell(&t2);
        putchar('\n');
        first = false;
    }
}

static void print_table(const replay *r, const char *final, bool correct, bool promised)
{
    printf("scenario %s, strategy %s: %s\n\n", r->sc->name, pgtx_strategy_name(r->strategy),
           r->sc->summary);
    const char *h1 = "T1", *h2 = "T2";
    printf("| step |");
    print_cell(&h1);
    print_cell(&h2);
    printf("\n|------|-%.*s-|-%.*s-|\n", COL, "------------------------------------------------------------",
           COL, "------------------------------------------------------------");
    for (int i = 0; i < r->n_rows; i++)
        print_step(i + 1, &r->rows[i]);
    printf("\nT1 %s after %d attempt(s); T2 %s after %d attempt(s)\n",
           state_name(r->t[0].state), r->t[0].attempt, state_name(r->t[1].state),
           r->t[1].attempt);
    printf("final: %s -> %s\n", final, correct ? "correct" : "WRONG");
    printf("%s\n", promised ? "as promised by this strategy"
                            : "NOT what this strategy promises");
}

/* ---- running a replay -------------------------------------------------------- */

PGconn *replay_connect(const char *conninfo, const char *app, char *err, size_t n)
{
    const char *keys[] = {"dbname", "application_name", "options", NULL};
    const char *vals[] = {conninfo, app, "-c client_min_messages=warning", NULL};
    PGconn *pg = PQconnectdbParams(keys, vals, 1);
    if (PQstatus(pg) != CONNECTION_OK) {
        snprintf(err, n, "cannot connect: %s", PQerrorMessage(pg));
        PQfinish(pg);
        return NULL;
    }
    return pg;
}

static bool exec_ok(PGconn *pg, const char *sql, char *err, size_t n)
{
    PGresult *res = PQexec(pg, sql);
    ExecStatusType s = PQresultStatus(res);
    bool ok = s == PGRES_COMMAND_OK || s == PGRES_TUPLES_OK;
    if (!ok)
        snprintf(err, n, "%s", PQerrorMessage(pg));
    PQclear(res);
    return ok;
}

/* The scenario's verdict query returns (description, correct). */
static bool check_final(PGconn *admin, const scenario *sc, char *final, size_t n,
                        bool *correct)
{
    PGresult *res = PQexec(admin, sc->check_sql);
    bool ok = PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1;
    if (ok) {
        snprintf(final, n, "%s", PQgetvalue(res, 0, 0));
        *correct = strcmp(PQgetvalue(res, 0, 1), "t") == 0;
    } else {
        snprintf(final, n, "check failed: %s", PQerrorMessage(admin));
    }
    PQclear(res);
    return ok;
}

static const char *begin_for(pgtx_strategy s)
{
    return s == PGTX_STRATEGY_SERIALIZABLE ? "BEGIN ISOLATION LEVEL SERIALIZABLE"
                                  : "BEGIN ISOLATION LEVEL READ COMMITTED";
}

/* A step that failed with an error no strategy expects (not a
   serialization failure, deadlock or unique violation): the run says
   nothing about the strategy. */
static const row *unexpected_error(const replay *r)
{
    for (int i = 0; i < r->n_rows; i++)
        if (strcmp(r->rows[i].kind, "error") == 0)
            return &r->rows[i];
    return NULL;
}

/* The verdict, once both transactions ended: printed on stdout, with one
   line on stderr when the run cannot count or broke the promise. */
static int verdict(replay *r, PGconn *admin)
{
    char final[256];
    bool correct = false;
    if (running(r)) {
        fprintf(stderr, "pgtx-race replay: did not finish in %d s\n", MAX_SECONDS);
        return RACE_EXIT_CANNOT_RUN;
    }
    if (!check_final(admin, r->sc, final, sizeof final, &correct)) {
        fprintf(stderr, "pgtx-race replay: %s\n", pgtx_one_line_(final));
        return RACE_EXIT_CANNOT_RUN;
    }
    bool promised = (r->strategy == PGTX_STRATEGY_NAIVE && r->sc->naive_loses) ? !correct : correct;
    if (r->json)
        print_json(r, final, correct, promised);
    else
        print_table(r, final, correct, promised);
    fflush(stdout);
    const row *bad = unexpected_error(r);
    if (bad) {
        fprintf(stderr, "pgtx-race replay: T%d failed with an unexpected error: %s\n",
                bad->tx, bad->text);
        return RACE_EXIT_CANNOT_RUN;
    }
    if (!promised) {
        fprintf(stderr, "pgtx-race replay: %s under %s did not end as the strategy "
                        "promises: %s\n", r->sc->name, pgtx_strategy_name(r->strategy), final);
        return RACE_EXIT_BROKEN;
    }
    return RACE_EXIT_KEPT;
}

static int run(replay *r, const char *conninfo)
{
    char err[512];
    PGconn *admin = replay_connect(conninfo, "pgtx-race-replay", err, sizeof err);
    if (!admin) {
        fprintf(stderr, "pgtx-race replay: %s\n", pgtx_one_line_(err));
        return RACE_EXIT_CANNOT_RUN;
    }
    int rc = RACE_EXIT_CANNOT_RUN;
    if (!exec_ok(admin, r->sc->setup_sql, err, sizeof err)) {
        fprintf(stderr, "pgtx-race replay: set-up failed: %s\n", pgtx_one_line_(err));
        goto out;
    }
    for (int i = 0; i < 2; i++) {
        txn *t = &r->t[i];
        *t = (txn){.id = i + 1, .prog = &r->sc->programs[r->strategy],
                   .begin_sql = begin_for(r->strategy), .account = r->sc->accounts[i],
                   .attempt = 1, .state = TX_RUNNING};
        t->pg = replay_connect(conninfo, "pgtx-race-replay", err, sizeof err);
        if (!t->pg) {
            fprintf(stderr, "pgtx-race replay: %s\n", pgtx_one_line_(err));
            goto out;
        }
    }
    r->deadline = now_s() + MAX_SECONDS;
    for (size_t i = 0; i < sizeof SCHEDULE / sizeof SCHEDULE[0]; i++)
        turn(r, &r->t[SCHEDULE[i] - 1]);
    drain(r);
    rc = verdict(r, admin);
out:
    for (int i = 0; i < 2; i++)
        PQfinish(r->t[i].pg);
    PQfinish(admin);
    return rc;
}

/* ---- command line -------------------------------------------------------------- */

static void usage(FILE *to)
{
    fprintf(to, "usage: pgtx-race replay SCENARIO --strategy S [--json] [--database CONNINFO]\n"
                "                        [--data-dir DIR]\n"
                "scenarios:");
    for (int i = 0; i < N_SCENARIOS; i++)
        fprintf(to, " %s", SCENARIOS[i]->name);
    fprintf(to, " %s\n  %s is write combining, not a race: three deposits and an order\n"
                "  refused by its floor as ONE pgtx_run_batch(), a savepoint per call;\n"
                "  every strategy, naive included, promises its outcome",
            REPLAY_BATCH_SCENARIO, REPLAY_BATCH_SCENARIO);
    fprintf(to, "\nstrategies:");
    for (int i = 0; i < PGTX_STRATEGY_COUNT; i++)
        fprintf(to, " %s", pgtx_strategy_name(RACE_STRATEGY_ORDER[i]));
    fprintf(to, "\n--database: a libpq connection string or URI (\"\" means libpq's PG*\n"
                "  environment); default DATABASE_URL, else an embedded cluster in\n"
                "  --data-dir (default ./%s, or %s)\n"
                "Exit status: 0 the outcome is what the strategy promises (naive promises\n"
                "to lose); 1 it is not; 2 bad usage or a bad value; 3 could not run\n"
                "(database unreachable, cluster failed to start, unexpected SQL error).\n",
            RACE_DEFAULT_DATA_DIR, RACE_DATA_DIR_ENV);
}

typedef struct replay_args {
    const char *scenario, *strategy, *database, *data_dir;
    bool json, help;
} replay_args;

static const char **value_of(replay_args *a, const char *flag)
{
    if (strcmp(flag, "--strategy") == 0)
        return &a->strategy;
    if (strcmp(flag, "--database") == 0)
        return &a->database;
    if (strcmp(flag, "--data-dir") == 0)
        return &a->data_dir;
    return NULL;
}

static bool parse_args(int argc, char **argv, replay_args *a)
{
    for (int i = 1; i < argc; i++) {
        const char *s = argv[i];
        const char **value = value_of(a, s);
        if (strcmp(s, "--json") == 0) {
            a->json = true;
        } else if (strcmp(s, "--help") == 0 || strcmp(s, "-h") == 0) {
            a->help = true;
        } else if (value && i + 1 < argc) {
            *value = argv[++i];
        } else if (value) {
            fprintf(stderr, "pgtx-race replay: %s needs a value "
                            "(see pgtx-race replay --help)\n", s);
            return false;
        } else if (s[0] != '-' && !a->scenario) {
            a->scenario = s;
        } else {
            fprintf(stderr, "pgtx-race replay: unexpected argument '%s' "
                            "(see pgtx-race replay --help)\n", s);
            return false;
        }
    }
    return true;
}

static const scenario *find_scenario(const char *name)
{
    for (int i = 0; name && i < N_SCENARIOS; i++)
        if (strcmp(SCENARIOS[i]->name, name) == 0)
            return SCENARIOS[i];
    return NULL;
}

/* One line for a scenario or strategy that is missing or unknown. */
static bool check_names(const replay_args *a, replay *r, bool *batch)
{
    r->sc = find_scenario(a->scenario);
    *batch = a->scenario && strcmp(a->scenario, REPLAY_BATCH_SCENARIO) == 0;
    if (!r->sc && !*batch && a->scenario)
        fprintf(stderr, "pgtx-race replay: unknown scenario '%s' "
                        "(see pgtx-race replay --help)\n", a->scenario);
    else if (!r->sc && !*batch)
        fprintf(stderr, "pgtx-race replay: missing scenario "
                        "(see pgtx-race replay --help)\n");
    else if (!a->strategy)
        fprintf(stderr, "pgtx-race replay: missing --strategy "
                        "(see pgtx-race replay --help)\n");
    else if (!pgtx_strategy_parse(a->strategy, &r->strategy))
        fprintf(stderr, "pgtx-race replay: unknown strategy '%s' "
                        "(see pgtx-race replay --help)\n", a->strategy);
    else
        return true;
    return false;
}

int race_replay_main(int argc, char **argv)
{
    replay_args a = {0};
    if (!parse_args(argc, argv, &a))
        return RACE_EXIT_USAGE;
    if (a.help) {
        usage(stdout);
        return RACE_EXIT_KEPT;
    }
    replay r;
    memset(&r, 0, sizeof r);
    r.json = a.json;
    race_database db;
    char err[512];
    bool batch = false;
    if (!check_names(&a, &r, &batch))
        return RACE_EXIT_USAGE;
    if (!race_database_choose(a.database, a.data_dir, &db, err, sizeof err)) {
        fprintf(stderr, "pgtx-race replay: %s (see pgtx-race replay --help)\n", err);
        return RACE_EXIT_USAGE;
    }
    const char *conninfo = NULL;
    if (!race_database_open(&db, &conninfo, err, sizeof err)) {
        fprintf(stderr, "pgtx-race replay: %s\n", err);
        return RACE_EXIT_CANNOT_RUN;
    }
    if (batch)
        return race_database_finish(replay_batch_run(conninfo, r.strategy, r.json));
    return race_database_finish(run(&r, conninfo));
}
