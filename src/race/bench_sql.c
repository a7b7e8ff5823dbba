/* bench_sql.c — the bench scenarios: their tables, one transaction each under libpgtx's strategies, and the invariants checked afterwards. */
#include "bench.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* ---- names -------------------------------------------------------------- */

static const char *const SCENARIOS[BENCH_SCENARIO_COUNT] = {
    "counter", "coupon", "order", "spread"};

static const char *const REFUSALS[] = {
    "committed", "coupon_exhausted", "coupon_already_claimed", "out_of_stock",
    "insufficient_funds", "retry_exhausted"};

const char *bench_scenario_name(bench_scenario s)
{
    return (unsigned)s < BENCH_SCENARIO_COUNT ? SCENARIOS[s] : "unknown";
}

bool bench_scenario_parse(const char *name, bench_scenario *out)
{
    for (int i = 0; i < BENCH_SCENARIO_COUNT; i++)
        if (strcmp(name, SCENARIOS[i]) == 0) {
            *out = (bench_scenario)i;
            return true;
        }
    return false;
}

/* Errors are named after their status without the prefix: "commit_unknown". */
const char *bench_outcome_name(int outcome)
{
    static const char *const errors[] = {
#define BENCH_X_NAME(name, cls, text) #name,
        PGTX_STATUS_MAP(BENCH_X_NAME)
#undef BENCH_X_NAME
    };
    if (outcome >= 0 && outcome < BENCH_OUT_ERROR)
        return REFUSALS[outcome];
    if (outcome >= BENCH_OUT_ERROR && outcome < BENCH_OUTCOME_COUNT)
        return errors[outcome - BENCH_OUT_ERROR];
    return "unknown";
}

/* ---- set-up ------------------------------------------------------------- */

/* No CHECK constraints on purpose: the strategies alone must keep the
   invariants, so that a broken one shows in the check instead of an error. */
static const char COUNTER_TABLES[] =
    "DROP TABLE IF EXISTS race_counter;"
    "CREATE TABLE race_counter (id int PRIMARY KEY, value bigint NOT NULL,"
    " version bigint NOT NULL DEFAULT 0);"
    "INSERT INTO race_counter (id, value) SELECT g, 0 FROM generate_series(1, %d) g";

static const char COUPON_TABLES[] =
    "DROP TABLE IF EXISTS race_claim, race_coupon;"
    "CREATE TABLE race_coupon (id int PRIMARY KEY, quantity bigint NOT NULL,"
    " remaining bigint NOT NULL, version bigint NOT NULL DEFAULT 0);"
    "CREATE TABLE race_claim (coupon_id int NOT NULL, account_id bigint NOT NULL,"
    " UNIQUE (coupon_id, account_id));"
    "INSERT INTO race_coupon (id, quantity, remaining) VALUES (1, %lld, %lld)";

static const char ORDER_TABLES[] =
    "DROP TABLE IF EXISTS race_order, race_ledger, race_account, race_product;"
    "CREATE TABLE race_product (id int PRIMARY KEY, price bigint NOT NULL,"
    " stock bigint NOT NULL, initial_stock bigint NOT NULL,"
    " version bigint NOT NULL DEFAULT 0);"
    "CREATE TABLE race_account (id bigint PRIMARY KEY, balance bigint NOT NULL,"
    " version bigint NOT NULL DEFAULT 0);"
    "CREATE TABLE race_ledger (id bigserial PRIMARY KEY, account_id bigint NOT NULL,"
    " amount bigint NOT NULL);"
    "CREATE TABLE race_order (id bigserial PRIMARY KEY, account_id bigint NOT NULL,"
    " product_id int NOT NULL, quantity bigint NOT NULL, unit_price bigint NOT NULL);"
    "INSERT INTO race_product (id, price, stock, initial_stock)"
    " VALUES (1, %d, %lld, %lld);"
    /* every 5th account cannot afford even one */
    "INSERT INTO race_account (id, balance) SELECT g,"
    " CASE WHEN g %% 5 = 0 THEN %d ELSE %d END FROM generate_series(1, %d) g;"
    "INSERT INTO race_ledger (account_id, amount) SELECT id, balance FROM race_account";

static int64_t coupon_accounts(const bench_config *cfg)
{
    /* Twice the coupons, so that it runs out and some claims repeat. */
    return cfg->quantity * 2 > 1000 ? cfg->quantity * 2 : 1000;
}

bool bench_setup(PGconn *admin, const bench_config *cfg, char *err, size_t errlen)
{
    char sql[2048];
    long long q = (long long)cfg->quantity, s = (long long)cfg->stock;
    switch (cfg->scenario) {
    case BENCH_COUNTER:
    case BENCH_SPREAD:
        snprintf(sql, sizeof sql, COUNTER_TABLES,
                 cfg->scenario == BENCH_SPREAD ? BENCH_SPREAD_ROWS : 1);
        break;
    case BENCH_COUPON:
        snprintf(sql, sizeof sql, COUPON_TABLES, q, q);
        break;
    default:
        snprintf(sql, sizeof sql, ORDER_TABLES, BENCH_PRICE, s, s, BENCH_PRICE - 1,
                 5 * BENCH_PRICE, BENCH_ORDER_ACCOUNTS);
        break;
    }
    PGresult *r = PQexec(admin, sql);
    bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    if (!ok)
        snprintf(err, errlen, "setting up the %s tables: %s",
                 bench_scenario_name(cfg->scenario), PQerrorMessage(admin));
    PQclear(r);
    return ok;
}

void bench_op_init(bench_op *op, const bench_config *cfg, pgtx_strategy st,
                   uint64_t random)
{
    memset(op, 0, sizeof *op);
    op->strategy = st;
    op->row = 1;
    if (cfg->scenario == BENCH_SPREAD)
        op->row = 1 + (int64_t)(random % BENCH_SPREAD_ROWS);
    else if (cfg->scenario == BENCH_COUPON)
        op->account = 1 + (int64_t)(random % (uint64_t)coupon_accounts(cfg));
    else if (cfg->scenario == BENCH_ORDER)
        op->account = 1 + (int64_t)(random % BENCH_ORDER_ACCOUNTS);
}

/* ---- the transaction bodies: libpgtx's strategies ---------------------- */

/*
 * Every change of a counter, a coupon's remaining, a stock or a balance is
 * one row's delta, so each strategy's SQL is the library's
 * (pgtx_delta_apply); what is left here are the inserts and the business
 * answers.  naive and serializable share the code, only the engine differs.
 */

typedef struct num {
    char s[24];
} num;

static num num_of(int64_t v)
{
    num n;
    snprintf(n.s, sizeof n.s, "%lld", (long long)v);
    return n;
}

/* Record a business refusal and roll back. */
static pgtx_status refuse(bench_op *op, bench_outcome why, pgtx_error *err)
{
    op->refusal = why;
    return pgtx_fail(err, PGTX_ABORTED, "%s", bench_outcome_name((int)why));
}

/* `delta` on `column` of row `key` of a bench table; a floor of 0 when
   `guarded`.  Every bench table has an id key and a version column. */
static pgtx_delta row_delta(const char *table, const char *column, int64_t key,
                            int64_t delta, bool guarded)
{
    return (pgtx_delta){.table = table, .key_column = "id", .column = column,
                        .version_column = "version", .key = key, .delta = delta,
                        .has_floor = guarded, .floor = 0};
}

/* Apply d under op's strategy; *refused when the floor said no.  The row
   was created by the set-up, so a missing one is an error. */
static pgtx_status apply(pgtx_tx *tx, const bench_op *op, const pgtx_delta *d,
                         bool *refused, pgtx_error *err)
{
    pgtx_delta_result res = {0};
    pgtx_status st = pgtx_delta_apply(tx, op->strategy, d, &res, err);
    if (st == PGTX_OK && !res.found)
        st = pgtx_fail(err, PGTX_SQL, "no row %lld in %s", (long long)d->key,
                       d->table);
    *refused = res.refused;
    return st;
}

/* ---- counter and spread: value = value + 1 on one row ------------------- */

static pgtx_status counter_tx(pgtx_tx *tx, void *arg, pgtx_error *err)
{
    bench_op *op = arg;
    op->refusal = BENCH_OUT_COMMITTED;
    pgtx_delta d = row_delta("race_counter", "value", op->row, 1, false);
    bool refused = false;
    return apply(tx, op, &d, &refused, err);
}

/* ---- coupon: one claim per account, never more claims than coupons ------ */

#define COUPON_CLAIM                                                           \
    "INSERT INTO race_claim (coupon_id, account_id) VALUES (1, $1::bigint)"

static pgtx_status coupon_tx(pgtx_tx *tx, void *arg, pgtx_error *err)
{
    bench_op *op = arg;
    op->refusal = BENCH_OUT_COMMITTED;
    op->on_unique = BENCH_OUT_COUPON_ALREADY_CLAIMED;
    pgtx_delta d = row_delta("race_coupon", "remaining", 1, -1, true);
    bool refused = false;
    pgtx_status st = apply(tx, op, &d, &refused, err);
    if (st != PGTX_OK)
        return st;
    if (refused)
        return refuse(op, BENCH_OUT_COUPON_EXHAUSTED, err);
    /* Queued: the claim rides with the COMMIT, so it costs no round trip
       and no longer hold on the coupon row.  A second claim by the account
       fails there (unique violation): op->on_unique names that refusal. */
    num account = num_of(op->account);
    const char *params[] = {account.s};
    return pgtx_queue(tx, COUPON_CLAIM, 1, params, NULL, err);
}

/* ---- order: stock, balance, order row and ledger row, all or nothing ---- */

#define ORDER_RECORD                                                           \
    "WITH o AS (INSERT INTO race_order (account_id, product_id, quantity, "    \
    "unit_price) VALUES ($1::bigint, 1, 1, $2::bigint)) "                      \
    "INSERT INTO race_ledger (account_id, amount) VALUES ($1::bigint, -$2::bigint)"

/* Product first, then account, in every strategy: one lock order, so the
   lock strategy cannot deadlock with itself.  The price is the one the
   set-up wrote (BENCH_PRICE, never changed): a delta changes one column
   and reads no other. */
static pgtx_status order_tx(pgtx_tx *tx, void *arg, pgtx_error *err)
{
    bench_op *op = arg;
    op->refusal = BENCH_OUT_COMMITTED;
    op->price = BENCH_PRICE;
    pgtx_delta stock = row_delta("race_product", "stock", 1, -1, true);
    pgtx_delta debit = row_delta("race_account", "balance", op->account, -op->price, true);
    bool refused = false;
    pgtx_status st = apply(tx, op, &stock, &refused, err);
    if (st == PGTX_OK && refused)
        return refuse(op, BENCH_OUT_OUT_OF_STOCK, err);
    if (st == PGTX_OK)
        st = apply(tx, op, &debit, &refused, err);
    if (st == PGTX_OK && refused)
        return refuse(op, BENCH_OUT_INSUFFICIENT_FUNDS, err);
    if (st != PGTX_OK)
        return st;
    /* The order row and the ledger's debit ride with the COMMIT. */
    num account = num_of(op->account), price = num_of(op->price);
    const char *params[] = {account.s, price.s};
    return pgtx_queue(tx, ORDER_RECORD, 2, params, NULL, err);
}

pgtx_tx_fn bench_tx_fn(bench_scenario s)
{
    switch (s) {
    case BENCH_COUPON:
        return coupon_tx;
    case BENCH_ORDER:
        return order_tx;
    default:
        return counter_tx;
    }
}

/* ---- the same work, combined: pgtx_batch_ops ----------------------------- */

/* `one`: a call is one operation's transaction body, between the
   library's SAVEPOINT and RELEASE (or ROLLBACK TO on a refusal). */
static pgtx_status counter_one(pgtx_tx *tx, pgtx_call *call, pgtx_error *err)
{
    return counter_tx(tx, call->arg, err);
}

static pgtx_status coupon_one(pgtx_tx *tx, pgtx_call *call, pgtx_error *err)
{
    return coupon_tx(tx, call->arg, err);
}

static pgtx_status order_one(pgtx_tx *tx, pgtx_call *call, pgtx_error *err)
{
    return order_tx(tx, call->arg, err);
}

static void reset_ops(pgtx_call *calls, int n, bench_outcome on_unique)
{
    for (int i = 0; i < n; i++) {
        bench_op *op = calls[i].arg;
        op->refusal = BENCH_OUT_COMMITTED;
        op->on_unique = on_unique;
    }
}

/* `set`, atomic only: the batch's calls share their row (the combiner's
   key), so their increments are one delta of n in one UPDATE. */
static pgtx_status counter_set(pgtx_tx *tx, pgtx_call *calls, int n, pgtx_error *err)
{
    reset_ops(calls, n, BENCH_OUT_COMMITTED);
    const bench_op *op = calls[0].arg;
    pgtx_delta d = row_delta("race_counter", "value", op->row, n, false);
    bool refused = false;
    return apply(tx, op, &d, &refused, err);
}

#define COUPON_CLAIMS                                                          \
    "INSERT INTO race_claim (coupon_id, account_id)"                          \
    " SELECT 1, a FROM unnest($1::bigint[]) AS a"

/* Every call of the batch refused: none is left.  They changed nothing. */
static pgtx_status all_exhausted(pgtx_call *calls, int n)
{
    for (int i = 0; i < n; i++) {
        bench_op *op = calls[i].arg;
        op->refusal = BENCH_OUT_COUPON_EXHAUSTED;
        calls[i].status = pgtx_fail(&calls[i].err, PGTX_ABORTED, "%s",
                                    bench_outcome_name(BENCH_OUT_COUPON_EXHAUSTED));
    }
    return PGTX_OK;
}

/* `set`, atomic only: n coupons taken in one guarded UPDATE, n claims in one
   INSERT.  None left: every call is refused here.  Some left but fewer than
   n, or a claim already made (23505 at the COMMIT), fails the whole batch
   with a business status, and the library runs it again with a savepoint
   per call: each call then gets its own answer from coupon_one(). */
static pgtx_status coupon_set(pgtx_tx *tx, pgtx_call *calls, int n, pgtx_error *err)
{
    reset_ops(calls, n, BENCH_OUT_COUPON_ALREADY_CLAIMED);
    pgtx_delta d = row_delta("race_coupon", "remaining", 1, -(int64_t)n, true);
    pgtx_delta_result res = {0};
    const bench_op *first = calls[0].arg;
    pgtx_status st = pgtx_delta_apply(tx, first->strategy, &d, &res, err);
    if (st == PGTX_OK && !res.found)
        st = pgtx_fail(err, PGTX_SQL, "no coupon 1");
    if (st != PGTX_OK)
        return st;
    /* remaining only ever goes down, so a refused 0 is the current value */
    if (res.refused && res.value == 0)
        return all_exhausted(calls, n);
    if (res.refused)
        return pgtx_fail(err, PGTX_ABORTED, "fewer than %d coupons left", n);
    char list[BENCH_MAX_BATCH * 24 + 3];
    size_t at = 0;
    list[at++] = '{';
    for (int i = 0; i < n && at < sizeof list - 24; i++) {
        const bench_op *op = calls[i].arg;
        at += (size_t)snprintf(list + at, sizeof list - at, "%s%lld", i ? "," : "",
                               (long long)op->account);
    }
    snprintf(list + at, sizeof list - at, "}");
    const char *params[] = {list};
    return pgtx_queue(tx, COUPON_CLAIMS, 1, params, NULL, err);
}

const pgtx_batch_ops *bench_batch_ops(bench_scenario s, pgtx_strategy st)
{
    static const pgtx_batch_ops COUNTER_ONE = {.one = counter_one};
    static const pgtx_batch_ops COUNTER_SET = {.set = counter_set, .one = counter_one};
    static const pgtx_batch_ops COUPON_ONE = {.one = coupon_one};
    static const pgtx_batch_ops COUPON_SET = {.set = coupon_set, .one = coupon_one};
    static const pgtx_batch_ops ORDER_ONE = {.one = order_one};
    bool atomic = st == PGTX_STRATEGY_ATOMIC;
    switch (s) {
    case BENCH_COUPON:
        return atomic ? &COUPON_SET : &COUPON_ONE;
    case BENCH_ORDER:
        return &ORDER_ONE; /* two rows per call, refused apart: no set */
    default:
        return atomic ? &COUNTER_SET : &COUNTER_ONE;
    }
}

/* Every operation of coupon and order writes coupon 1 or product 1 first;
   counter and spread write their row. */
uint64_t bench_op_key(const bench_config *cfg, const bench_op *op)
{
    if (cfg->scenario == BENCH_COUPON || cfg->scenario == BENCH_ORDER)
        return 1;
    return (uint64_t)op->row;
}

/* ---- pgbench scripts: the atomic strategy's SQL ------------------------- */

/* pgbench cannot call the library: these are the atomic strategy's
   guarded UPDATEs written out by hand, the same row changes and inserts. */

/* pgbench aborts a client on any error, so a repeated account must not
   raise one: accounts come from a range where repeats are rare, and
   ON CONFLICT makes the rare one harmless. */
static const char PGBENCH_COUPON[] =
    "\\set a random(1, 1000000000)\n"
    "WITH c AS (UPDATE race_coupon SET remaining = remaining - 1, "
    "version = version + 1 WHERE id = 1 AND remaining > 0 RETURNING id) "
    "INSERT INTO race_claim (coupon_id, account_id) SELECT id, :a FROM c "
    "ON CONFLICT DO NOTHING;\n";

/* \gset and \if give pgbench the same branches as order_atomic().  With
   -M prepared a variable is a parameter of unknown type: cast where the
   operator alone cannot tell. */
static const char PGBENCH_ORDER[] =
    "\\set a random(1, %d)\n"
    "BEGIN;\n"
    "WITH u AS (UPDATE race_product SET stock = stock - 1, version = version + 1 "
    "WHERE id = 1 AND stock >= 1 RETURNING price) "
    "SELECT count(*) AS n, coalesce(max(price), 0) AS p FROM u \\gset\n"
    "\\if :n\n"
    "WITH u AS (UPDATE race_account SET balance = balance - :p, "
    "version = version + 1 WHERE id = :a AND balance >= :p RETURNING balance) "
    "SELECT count(*) AS m FROM u \\gset\n"
    "\\if :m\n"
    "WITH o AS (INSERT INTO race_order (account_id, product_id, quantity, "
    "unit_price) VALUES (:a, 1, 1, :p)) "
    "INSERT INTO race_ledger (account_id, amount) VALUES (:a, -(:p::bigint));\n"
    "COMMIT;\n"
    "\\else\nROLLBACK;\n\\endif\n"
    "\\else\nROLLBACK;\n\\endif\n";

void bench_pgbench_script(const bench_config *cfg, char *buf, size_t len)
{
    switch (cfg->scenario) {
    case BENCH_COUPON:
        snprintf(buf, len, "%s", PGBENCH_COUPON);
        break;
    case BENCH_ORDER:
        snprintf(buf, len, PGBENCH_ORDER, BENCH_ORDER_ACCOUNTS);
        break;
    case BENCH_SPREAD:
        snprintf(buf, len, "\\set r random(1, %d)\n%s;\n", BENCH_SPREAD_ROWS,
                 "UPDATE race_counter SET value = value + 1, version = version + 1 "
                 "WHERE id = :r");
        break;
    default:
        snprintf(buf, len, "%s;\n",
                 "UPDATE race_counter SET value = value + 1, version = version + 1 "
                 "WHERE id = 1");
        break;
    }
}

/* ---- invariants --------------------------------------------------------- */

/* Run a one-row query on the set-up connection and read n integers. */
static bool query_ints(PGconn *admin, const char *sql, int64_t *out, int n,
                       char *err, size_t errlen)
{
    PGresult *r = PQexec(admin, sql);
    bool ok = PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1;
    for (int i = 0; ok && i < n; i++)
        ok = pgtx_result_int64(r, 0, i, &out[i]) == PGTX_OK;
    if (!ok)
        snprintf(err, errlen, "checking the invariants: %s",
                 PQresultStatus(r) == PGRES_TUPLES_OK ? "unexpected result"
                                                      : PQerrorMessage(admin));
    PQclear(r);
    return ok;
}

/* The first broken invariant wins: it is the one the table shows. */
static void verdict(bench_result *r, bool holds, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void verdict(bench_result *r, bool holds, const char *fmt, ...)
{
    if (holds || !r->correct)
        return;
    r->correct = false;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->detail, sizeof r->detail, fmt, ap);
    va_end(ap);
}

/* A COMMIT whose outcome is unknown may or may not be in the database. */
static bool matches_committed(const bench_result *r, int64_t found)
{
    int64_t committed = r->outcomes[BENCH_OUT_COMMITTED];
    int64_t unknown = r->outcomes[BENCH_OUT_ERROR + PGTX_COMMIT_UNKNOWN];
    return found >= committed && found <= committed + unknown;
}

static bool check_counter(PGconn *admin, bench_result *r, char *err, size_t errlen)
{
    int64_t sum = 0;
    if (!query_ints(admin, "SELECT coalesce(sum(value), 0) FROM race_counter",
                    &sum, 1, err, errlen))
        return false;
    r->final = sum;
    long long c = (long long)r->outcomes[BENCH_OUT_COMMITTED];
    verdict(r, matches_committed(r, sum),
            "counter total is %lld but %lld increments committed (%lld %s)",
            (long long)sum, c, sum < c ? c - (long long)sum : (long long)sum - c,
            sum < c ? "lost" : "too many");
    return true;
}

static bool check_coupon(PGconn *admin, bench_result *r, char *err, size_t errlen)
{
    int64_t v[4]; /* quantity, remaining, claims, duplicates */
    if (!query_ints(admin,
                    "SELECT quantity, remaining, (SELECT count(*) FROM race_claim),"
                    " (SELECT count(*) - count(DISTINCT (coupon_id, account_id))"
                    " FROM race_claim) FROM race_coupon WHERE id = 1",
                    v, 4, err, errlen))
        return false;
    long long q = (long long)v[0], rem = (long long)v[1], n = (long long)v[2];
    r->final = v[2];
    verdict(r, v[3] == 0, "%lld duplicate claims", (long long)v[3]);
    verdict(r, n <= q, "%lld claims of a coupon limited to %lld", n, q);
    verdict(r, rem + n == q, "remaining %lld + claims %lld != quantity %lld", rem, n, q);
    verdict(r, matches_committed(r, v[2]), "%lld claims stored but %lld committed", n,
            (long long)r->outcomes[BENCH_OUT_COMMITTED]);
    verdict(r, r->outcomes[BENCH_OUT_COUPON_EXHAUSTED] == 0 || rem == 0,
            "claims refused as exhausted while %lld remain", rem);
    return true;
}

static bool check_order(PGconn *admin, bench_result *r, char *err, size_t errlen)
{
    int64_t v[6]; /* stock, initial, sold, orders, negative, unbalanced */
    if (!query_ints(admin,
                    "SELECT stock, initial_stock,"
                    " (SELECT coalesce(sum(quantity), 0) FROM race_order),"
                    " (SELECT count(*) FROM race_order),"
                    " (SELECT count(*) FROM race_account WHERE balance < 0),"
                    " (SELECT count(*) FROM race_account a LEFT JOIN"
                    "  (SELECT account_id, sum(amount) AS s FROM race_ledger"
                    "   GROUP BY account_id) l ON l.account_id = a.id"
                    "  WHERE a.balance <> coalesce(l.s, 0))"
                    " FROM race_product WHERE id = 1",
                    v, 6, err, errlen))
        return false;
    long long stock = (long long)v[0], sold = (long long)v[2];
    r->final = v[3];
    verdict(r, stock >= 0, "stock is %lld", stock);
    verdict(r, stock + sold == v[1], "stock %lld + sold %lld != initial %lld", stock,
            sold, (long long)v[1]);
    verdict(r, v[4] == 0, "%lld accounts below zero", (long long)v[4]);
    verdict(r, v[5] == 0, "%lld balances differ from their ledger", (long long)v[5]);
    verdict(r, matches_committed(r, v[3]), "%lld orders stored but %lld committed",
            (long long)v[3], (long long)r->outcomes[BENCH_OUT_COMMITTED]);
    verdict(r, r->outcomes[BENCH_OUT_OUT_OF_STOCK] == 0 || stock == 0,
            "orders refused as out of stock while %lld are left", stock);
    return true;
}

bool bench_check(PGconn *admin, const bench_config *cfg, bench_result *r,
                 char *err, size_t errlen)
{
    r->correct = true;
    bool ok;
    if (cfg->scenario == BENCH_COUPON)
        ok = check_coupon(admin, r, err, errlen);
    else if (cfg->scenario == BENCH_ORDER)
        ok = check_order(admin, r, err, errlen);
    else
        ok = check_counter(admin, r, err, errlen);
    if (ok && r->correct)
        snprintf(r->detail, sizeof r->detail, "all invariants hold");
    return ok;
}
