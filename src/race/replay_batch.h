/* replay_batch.h — `pgtx-race replay combined-batch`: one batch of libpgtx's
   write combining, round trip by round trip. */
#ifndef PGTX_RACE_REPLAY_BATCH_H
#define PGTX_RACE_REPLAY_BATCH_H

#include <stdbool.h>

#include "race.h"

#define REPLAY_BATCH_SCENARIO "combined-batch"
#define REPLAY_BATCH_SUMMARY                                                   \
    "three deposits to account 1 and an order that would take product 1's "  \
    "stock below 0, as ONE pgtx_run_batch() with a savepoint per call"

/* Run the scenario under strategy `s` on `conninfo` and print it (a table,
   or JSON); returns the exit status, with one line on stderr when it is
   not RACE_EXIT_KEPT. */
int replay_batch_run(const char *conninfo, pgtx_strategy s, bool json);

/* A JSON string on stdout (replay.c's). */
void replay_json_string(const char *s);

/* A connection of the replay, quiet below warnings, named `app`; NULL with
   the reason in err (replay.c's). */
PGconn *replay_connect(const char *conninfo, const char *app, char *err, size_t n);

#endif
