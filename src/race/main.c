/* main.c — pgtx-race: dispatch to replay or bench. */
#include "race.h"

#include <stdio.h>
#include <string.h>

static void usage(FILE *to)
{
    fprintf(to,
            "usage: pgtx-race replay SCENARIO --strategy S [--json] [--database CONNINFO]\n"
            "                        [--data-dir DIR]\n"
            "       pgtx-race bench [--scenario NAME] [--strategy S|all] [--clients 1,8,32]\n"
            "                       [--combining off|on|both]\n"
            "                       [--duration SECONDS | --ops N] [--pool-size N]\n"
            "                       [--database CONNINFO] [--data-dir DIR] [--json]\n"
            "                       [--plot FILE.svg] [--pgbench] [--quantity N] [--stock N]\n"
            "       pgtx-race SUBCOMMAND --help\n"
            "       pgtx-race --version\n"
            "\n"
            "Without --database or DATABASE_URL, an embedded PostgreSQL cluster is\n"
            "started in --data-dir (default ./%s, or %s),\n"
            "apart from pgtx-shop's .pgtx/pgdata, and stopped on exit.\n"
            "\n"
            "Exit status: 0 every strategy kept its promise; 1 a promise was broken\n"
            "(an invariant failed for a safe strategy, or a replay did not end as its\n"
            "strategy promises); 2 bad usage or a bad value; 3 could not run (database\n"
            "unreachable, cluster failed to start, unexpected SQL error).  Each\n"
            "non-zero status comes with one line on stderr saying why.\n",
            RACE_DEFAULT_DATA_DIR, RACE_DATA_DIR_ENV);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "pgtx-race: missing subcommand, replay or bench (see pgtx-race --help)\n");
        return RACE_EXIT_USAGE;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        usage(stdout);
        return RACE_EXIT_KEPT;
    }
    if (strcmp(argv[1], "--version") == 0) {
        printf("pgtx-race %s\n", PGTX_VERSION);
        return RACE_EXIT_KEPT;
    }
    if (strcmp(argv[1], "replay") == 0)
        return race_replay_main(argc - 1, argv + 1);
    if (strcmp(argv[1], "bench") == 0)
        return race_bench_main(argc - 1, argv + 1);
    fprintf(stderr, "pgtx-race: unknown subcommand '%s', want replay or bench "
                    "(see pgtx-race --help)\n", argv[1]);
    return RACE_EXIT_USAGE;
}
