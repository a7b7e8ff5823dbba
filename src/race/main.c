/* main.c — pgtx-race: dispatch to replay or bench. */
#include "race.h"

#include <stdio.h>
#include <string.h>

static void usage(FILE *to)
{
    fprintf(to,
            "usage: pgtx-race replay SCENARIO --strategy S [--json] [--database CONNINFO]\n"
            "       pgtx-race bench [--scenario NAME] [--strategy S|all] [--clients 1,8,32]\n"
            "                       [--duration SECONDS | --ops N] [--pool-size N]\n"
            "                       [--database CONNINFO] [--json] [--plot FILE.svg]\n"
            "                       [--pgbench] [--quantity N] [--stock N]\n"
            "       pgtx-race SUBCOMMAND --help\n"
            "       pgtx-race --version\n"
            "\n"
            "Without --database or DATABASE_URL, an embedded PostgreSQL cluster is\n"
            "started in ./.pgtx/pgdata (or PGTX_DATA_DIR) and stopped on exit.\n");
}

int main(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (strcmp(argv[1], "--version") == 0) {
        printf("pgtx-race %s\n", PGTX_VERSION);
        return 0;
    }
    if (strcmp(argv[1], "replay") == 0)
        return race_replay_main(argc - 1, argv + 1);
    if (strcmp(argv[1], "bench") == 0)
        return race_bench_main(argc - 1, argv + 1);
    fprintf(stderr, "pgtx-race: unknown subcommand '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
