/* replay_scenarios.h — the races `pgtx-race replay` knows: per strategy, the
   statements each of the two transactions runs. */
#ifndef PGTX_RACE_REPLAY_SCENARIOS_H
#define PGTX_RACE_REPLAY_SCENARIOS_H

#include "race.h"

typedef enum op_kind { OP_BEGIN, OP_READ, OP_WRITE, OP_COMMIT } op_kind;

/* What zero rows written means: nothing, a stale version (retry), or a
   guard that said no (the business rule refuses). */
typedef enum zero_rows { ZR_IGNORE, ZR_STALE, ZR_REFUSE } zero_rows;

/* A value read that makes the application refuse (no stock, no coupon left,
   already claimed). */
typedef enum refuse_when { REFUSE_NEVER, REFUSE_LE0, REFUSE_GT0 } refuse_when;

/* One step.  `sql` may hold {v} and {ver} (first and second column of the
   transaction's last read) and {acct} (its account id); several statements
   separated by ';' run as one step. */
typedef struct op {
    op_kind kind;
    const char *label;
    const char *sql;
    zero_rows on_zero;
    refuse_when refuse;
} op;

typedef struct program {
    op ops[4]; /* BEGIN, READ, WRITE, COMMIT */
} program;

typedef struct scenario {
    const char *name;
    const char *summary;
    const char *setup_sql;   /* drops and creates the replay_ tables */
    const char *check_sql;   /* one row: (description, correct boolean) */
    const char *refusal;     /* the business code a refusal stands for */
    bool naive_loses;        /* the promise of `naive` here */
    int accounts[2];         /* {acct} of T1 and T2 */
    program programs[PGTX_STRATEGY_COUNT];
} scenario;

extern const scenario *const SCENARIOS[];
extern const int N_SCENARIOS;

/* T1 begins, T1 reads, T2 begins, T2 reads, T1 writes, T1 commits, T2
   writes, T2 commits: the interleaving of every scenario. */
extern const int SCHEDULE[8];

#endif
