/* race.h — what the parts of pgtx-race (replay, bench, main) share. */
#ifndef PGTX_RACE_H
#define PGTX_RACE_H

#include <stdbool.h>
#include <stddef.h>

#include "one_line.h" /* an error on stderr is one line */
#include "pgtx.h"

/* The strategies are libpgtx's (pgtx_strategy); this is the order in which
   the lab runs and shows them: naive first, the baseline that loses, as
   the recorded results, the tests and the man page have it. */
extern const pgtx_strategy RACE_STRATEGY_ORDER[PGTX_STRATEGY_COUNT];

/* Entry points: argv[0] is the subcommand ("replay", "bench"); return the
   process exit status. */
int race_replay_main(int argc, char **argv);
int race_bench_main(int argc, char **argv);

/* Exit statuses, the same for replay and bench; each non-zero one comes
   with one line on stderr saying why. */
enum {
    RACE_EXIT_KEPT = 0,      /* every strategy kept its promise */
    RACE_EXIT_BROKEN = 1,    /* a promise was broken */
    RACE_EXIT_USAGE = 2,     /* bad usage or a bad value */
    RACE_EXIT_CANNOT_RUN = 3 /* no database, no cluster, an unexpected error */
};

/* The embedded cluster's folder, apart from pgtx-shop's .pgtx/pgdata: the
   lab and `make run` in one checkout never fight over one cluster. */
#define RACE_DEFAULT_DATA_DIR ".pgtx/race/pgdata"
#define RACE_DATA_DIR_ENV "PGTX_RACE_DATA_DIR"

/* Where the database comes from, settled before anything runs. */
typedef struct race_database {
    const char *conninfo; /* NULL: the embedded cluster in data_dir */
    const char *data_dir;
} race_database;

/*
 * Settles *db from the flags (NULL when not given), then DATABASE_URL and
 * PGTX_RACE_DATA_DIR; a flag wins and its variable is then not read, and
 * an empty variable counts as unset.  A connection string is checked for
 * syntax and port now.  False with one line in err (naming the flag or
 * variable): exit RACE_EXIT_USAGE.
 */
bool race_database_choose(const char *database_flag, const char *data_dir_flag,
                          race_database *db, char *err, size_t errlen);

/*
 * The connection string of *db, starting its embedded cluster when it has
 * none (stopped by race_database_close()).  *conninfo is borrowed until
 * race_database_close().  False with one line in err: exit
 * RACE_EXIT_CANNOT_RUN.
 */
bool race_database_open(const race_database *db, const char **conninfo, char *err,
                        size_t errlen);
/* Stops the embedded cluster, if one was started; false (with a line on
   stderr) when it would not stop. */
bool race_database_close(void);
/* race_database_close() at the end of a run that would exit rc: a cluster
   that would not stop turns a clean run into RACE_EXIT_CANNOT_RUN. */
int race_database_finish(int rc);


#endif
