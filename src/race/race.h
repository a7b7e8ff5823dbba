/* race.h — what the parts of pgtx-race (replay, bench, main) share. */
#ifndef PGTX_RACE_H
#define PGTX_RACE_H

#include <stdbool.h>
#include <stddef.h>

#include "pgtx.h"

/* The ways to write a read-modify-write; see README "Strategies". */
typedef enum race_strategy {
    RACE_NAIVE = 0,    /* read, compute in C, write back: loses updates */
    RACE_ATOMIC,       /* one UPDATE ... SET x = x + $1 (guarded) RETURNING */
    RACE_LOCK,         /* SELECT ... FOR UPDATE, then write */
    RACE_OPTIMISTIC,   /* version column; zero rows updated = stale, retry */
    RACE_SERIALIZABLE, /* the naive code in a SERIALIZABLE engine + retry */
    RACE_STRATEGY_COUNT
} race_strategy;

/* "naive", "atomic", "lock", "optimistic", "serializable". */
const char *race_strategy_name(race_strategy s);
/* Parse one name; returns false for an unknown one. */
bool race_strategy_parse(const char *name, race_strategy *out);

/* Entry points: argv[0] is the subcommand ("replay", "bench"); return the
   process exit status. */
int race_replay_main(int argc, char **argv);
int race_bench_main(int argc, char **argv);

/*
 * The database to use: `flag` (from --database) if not NULL, else
 * DATABASE_URL, else an embedded local cluster started now (data folder
 * PGTX_DATA_DIR or ./.pgtx/pgdata) and stopped by race_database_close().
 * On success *conninfo is a libpq connection string, borrowed until
 * race_database_close().  On failure returns false with a message in err.
 */
bool race_database_open(const char *flag, const char **conninfo, char *err,
                        size_t errlen);
void race_database_close(void);

#endif
