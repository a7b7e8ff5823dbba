/* replay_scenarios.c — the four classic races, each written five ways.
 *
 * The statements are written out here, not taken from pgtx_delta_apply()
 * as bench does: the replay sends a transaction's read and its write as two
 * steps with the other transaction's steps in between, on raw connections,
 * and shows each statement; one library call runs both at once.  Two of
 * the races (coupon-limit, double-claim) are not one row's delta at all:
 * they count or look up claim rows and insert one.
 */
#include "replay_scenarios.h"

#include <stddef.h>

const int SCHEDULE[8] = {1, 1, 2, 2, 1, 1, 2, 2};

#define BEGIN_OP {OP_BEGIN, "BEGIN", NULL, ZR_IGNORE, REFUSE_NEVER}
#define COMMIT_OP {OP_COMMIT, "COMMIT", "COMMIT", ZR_IGNORE, REFUSE_NEVER}
#define READ(label, sql, refuse) {OP_READ, label, sql, ZR_IGNORE, refuse}
#define WRITE(label, sql, zero) {OP_WRITE, label, sql, zero, REFUSE_NEVER}
#define PROGRAM(read, write) {{BEGIN_OP, read, write, COMMIT_OP}}
/* Update a guard row, then insert only if the update touched it: one
   statement, so zero rows (the guard failed) inserts nothing. */
#define GUARDED_INSERT(label, update, insert, zero) \
    WRITE(label, "WITH g AS (" update " RETURNING id) " insert " FROM g RETURNING 1", zero)
#define CLAIM_ROW "INSERT INTO replay_claim SELECT id, {acct}"
#define ORDER_ROW "INSERT INTO replay_order (product_id, account_id) SELECT id, {acct}"

/* ---- lost-update: two deposits of 100 to a balance of 100 -------------- */

#define LU_READ "SELECT balance FROM replay_account WHERE id = 1"
#define LU_NAIVE_WRITE \
    WRITE("write balance = {v} + 100", \
          "UPDATE replay_account SET balance = {v} + 100 WHERE id = 1 RETURNING balance", \
          ZR_IGNORE)

static const scenario LOST_UPDATE = {
    "lost-update",
    "two deposits of 100 to a balance of 100, both read before either writes",
    "DROP TABLE IF EXISTS replay_account;"
    "CREATE TABLE replay_account (id int PRIMARY KEY, balance bigint NOT NULL,"
    " version int NOT NULL DEFAULT 0);"
    "INSERT INTO replay_account VALUES (1, 100)",
    "SELECT format('balance = %s (expected 300: 100 + two deposits of 100)', balance),"
    " balance = 300 FROM replay_account WHERE id = 1",
    NULL,
    true,
    {1, 2},
    {
        [PGTX_STRATEGY_NAIVE] = PROGRAM(READ("read balance", LU_READ, REFUSE_NEVER), LU_NAIVE_WRITE),
        [PGTX_STRATEGY_ATOMIC] = PROGRAM(
            READ("read balance (not used)", LU_READ, REFUSE_NEVER),
            WRITE("balance = balance + 100",
                  "UPDATE replay_account SET balance = balance + 100 WHERE id = 1"
                  " RETURNING balance", ZR_IGNORE)),
        [PGTX_STRATEGY_LOCK] = PROGRAM(READ("read balance FOR UPDATE", LU_READ " FOR UPDATE",
                                   REFUSE_NEVER), LU_NAIVE_WRITE),
        [PGTX_STRATEGY_OPTIMISTIC] = PROGRAM(
            READ("read balance, version",
                 "SELECT balance, version FROM replay_account WHERE id = 1", REFUSE_NEVER),
            WRITE("write {v} + 100 if version = {ver}",
                  "UPDATE replay_account SET balance = {v} + 100, version = version + 1"
                  " WHERE id = 1 AND version = {ver} RETURNING balance", ZR_STALE)),
        [PGTX_STRATEGY_SERIALIZABLE] = PROGRAM(READ("read balance", LU_READ, REFUSE_NEVER),
                                      LU_NAIVE_WRITE),
    },
};

/* ---- coupon-limit: one claim left, two claimers count the claims ------- */

#define CL_LEFT \
    "SELECT c.quantity - (SELECT count(*) FROM replay_claim WHERE coupon_id = 1)" \
    " FROM replay_coupon c WHERE c.id = 1"
#define CL_INSERT \
    WRITE("insert claim", \
          "INSERT INTO replay_claim VALUES (1, {acct}) RETURNING account_id", ZR_IGNORE)

/* The optimistic claim: the coupon's version moves only if nobody claimed
   since the read; zero rows is stale data, and the transaction is retried. */
#define CL_INSERT_IF_VERSION \
    GUARDED_INSERT("bump version if = {ver}, then insert claim", \
                   "UPDATE replay_coupon SET version = version + 1" \
                   " WHERE id = 1 AND version = {ver}", CLAIM_ROW, ZR_STALE)

#define COUPON_TABLES \
    "DROP TABLE IF EXISTS replay_claim, replay_coupon;" \
    "CREATE TABLE replay_coupon (id int PRIMARY KEY, quantity int NOT NULL," \
    " remaining int NOT NULL CHECK (remaining >= 0), version int NOT NULL DEFAULT 0);" \
    "CREATE TABLE replay_claim (coupon_id int NOT NULL REFERENCES replay_coupon," \
    " account_id int NOT NULL, UNIQUE (coupon_id, account_id));"

static const scenario COUPON_LIMIT = {
    "coupon-limit",
    "a coupon of quantity 2 with 1 claim left; both count the claims, both see 1 left",
    COUPON_TABLES
    "INSERT INTO replay_coupon VALUES (1, 2, 1);"
    "INSERT INTO replay_claim VALUES (1, 99)",
    "SELECT format('claims = %s of quantity %s', count(k.*), c.quantity),"
    " count(k.*) <= c.quantity FROM replay_coupon c"
    " LEFT JOIN replay_claim k ON k.coupon_id = c.id WHERE c.id = 1 GROUP BY c.quantity",
    "coupon_exhausted",
    true,
    {1, 2},
    {
        [PGTX_STRATEGY_NAIVE] = PROGRAM(READ("claims left", CL_LEFT, REFUSE_LE0), CL_INSERT),
        [PGTX_STRATEGY_ATOMIC] = PROGRAM(
            READ("claims left (not used)", CL_LEFT, REFUSE_NEVER),
            GUARDED_INSERT("remaining - 1 if > 0, then insert claim",
                           "UPDATE replay_coupon SET remaining = remaining - 1"
                           " WHERE id = 1 AND remaining > 0", CLAIM_ROW, ZR_REFUSE)),
        /* The lock is on the coupon row: claims not yet inserted have no row
           to lock.  The count is a new statement, so it sees what the
           transaction that held the lock committed. */
        [PGTX_STRATEGY_LOCK] = PROGRAM(
            READ("lock coupon FOR UPDATE; claims left",
                 "SELECT 1 FROM replay_coupon WHERE id = 1 FOR UPDATE;" CL_LEFT, REFUSE_LE0),
            CL_INSERT),
        [PGTX_STRATEGY_OPTIMISTIC] = PROGRAM(
            READ("claims left, coupon version",
                 "SELECT c.quantity - (SELECT count(*) FROM replay_claim WHERE coupon_id = 1),"
                 " c.version FROM replay_coupon c WHERE c.id = 1", REFUSE_LE0),
            CL_INSERT_IF_VERSION),
        [PGTX_STRATEGY_SERIALIZABLE] = PROGRAM(READ("claims left", CL_LEFT, REFUSE_LE0), CL_INSERT),
    },
};

/* ---- double-claim: one account claims the same coupon twice ------------ */

#define DC_CLAIMED \
    "SELECT count(*) FROM replay_claim WHERE coupon_id = 1 AND account_id = {acct}"

static const scenario DOUBLE_CLAIM = {
    "double-claim",
    "account 1 claims coupon 1 from two transactions at once",
    COUPON_TABLES
    "INSERT INTO replay_coupon VALUES (1, 10, 10)",
    "SELECT format('claims of coupon 1 by account 1 = %s', count(*)), count(*) = 1"
    " FROM replay_claim WHERE coupon_id = 1 AND account_id = 1",
    "coupon_already_claimed",
    false, /* the unique constraint protects even the naive code */
    {1, 1},
    {
        [PGTX_STRATEGY_NAIVE] = PROGRAM(READ("already claimed?", DC_CLAIMED, REFUSE_GT0), CL_INSERT),
        [PGTX_STRATEGY_ATOMIC] = PROGRAM(
            READ("already claimed? (not used)", DC_CLAIMED, REFUSE_NEVER),
            WRITE("insert claim ON CONFLICT DO NOTHING",
                  "INSERT INTO replay_claim VALUES (1, {acct}) ON CONFLICT DO NOTHING"
                  " RETURNING account_id", ZR_REFUSE)),
        [PGTX_STRATEGY_LOCK] = PROGRAM(
            READ("lock coupon FOR UPDATE; already claimed?",
                 "SELECT 1 FROM replay_coupon WHERE id = 1 FOR UPDATE;" DC_CLAIMED, REFUSE_GT0),
            CL_INSERT),
        [PGTX_STRATEGY_OPTIMISTIC] = PROGRAM(
            READ("already claimed?, coupon version",
                 "SELECT (SELECT count(*) FROM replay_claim WHERE coupon_id = 1"
                 " AND account_id = {acct}), version FROM replay_coupon WHERE id = 1",
                 REFUSE_GT0),
            CL_INSERT_IF_VERSION),
        [PGTX_STRATEGY_SERIALIZABLE] = PROGRAM(READ("already claimed?", DC_CLAIMED, REFUSE_GT0),
                                      CL_INSERT),
    },
};

/* ---- oversell: one item in stock, two buyers ---------------------------- */

#define OS_READ "SELECT stock FROM replay_product WHERE id = 1"
#define OS_NAIVE_WRITE \
    WRITE("stock = {v} - 1; insert order", \
          "UPDATE replay_product SET stock = {v} - 1 WHERE id = 1;" \
          "INSERT INTO replay_order (product_id, account_id) VALUES (1, {acct}) RETURNING id", \
          ZR_IGNORE)

static const scenario OVERSELL = {
    "oversell",
    "one item in stock, two buyers each read the stock and buy it",
    "DROP TABLE IF EXISTS replay_order, replay_product;"
    "CREATE TABLE replay_product (id int PRIMARY KEY, stock int NOT NULL,"
    " version int NOT NULL DEFAULT 0);"
    "CREATE TABLE replay_order (id serial PRIMARY KEY, product_id int NOT NULL,"
    " account_id int NOT NULL);"
    "INSERT INTO replay_product VALUES (1, 1)",
    "SELECT format('stock = %s, orders = %s (initial stock 1)', p.stock,"
    " (SELECT count(*) FROM replay_order)), p.stock >= 0 AND"
    " p.stock + (SELECT count(*) FROM replay_order) = 1 FROM replay_product p WHERE id = 1",
    "out_of_stock",
    true,
    {1, 2},
    {
        [PGTX_STRATEGY_NAIVE] = PROGRAM(READ("read stock", OS_READ, REFUSE_LE0), OS_NAIVE_WRITE),
        [PGTX_STRATEGY_ATOMIC] = PROGRAM(
            READ("read stock (not used)", OS_READ, REFUSE_NEVER),
            GUARDED_INSERT("stock - 1 if >= 1, then insert order",
                           "UPDATE replay_product SET stock = stock - 1"
                           " WHERE id = 1 AND stock >= 1", ORDER_ROW, ZR_REFUSE)),
        [PGTX_STRATEGY_LOCK] = PROGRAM(READ("read stock FOR UPDATE", OS_READ " FOR UPDATE", REFUSE_LE0),
                              OS_NAIVE_WRITE),
        [PGTX_STRATEGY_OPTIMISTIC] = PROGRAM(
            READ("read stock, version",
                 "SELECT stock, version FROM replay_product WHERE id = 1", REFUSE_LE0),
            GUARDED_INSERT("stock = {v} - 1 if version = {ver}; insert order",
                           "UPDATE replay_product SET stock = {v} - 1, version = version + 1"
                           " WHERE id = 1 AND version = {ver}", ORDER_ROW, ZR_STALE)),
        [PGTX_STRATEGY_SERIALIZABLE] = PROGRAM(READ("read stock", OS_READ, REFUSE_LE0), OS_NAIVE_WRITE),
    },
};

const scenario *const SCENARIOS[] = {&LOST_UPDATE, &COUPON_LIMIT, &DOUBLE_CLAIM, &OVERSELL};
const int N_SCENARIOS = sizeof SCENARIOS / sizeof SCENARIOS[0];
