/* bench_pgbench.c — the database's own limit for the atomic SQL, measured by pgbench with a custom script. */
#include "bench.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

/* pgbench's report is a few hundred bytes; more is read and dropped. */
#define OUTPUT_MAX 16384

static bool write_script(const bench_config *cfg, char *path, size_t len,
                         char *err, size_t errlen)
{
    const char *dir = getenv("TMPDIR");
    snprintf(path, len, "%s/pgtx-race-XXXXXX", dir && *dir ? dir : "/tmp");
    int fd = mkstemp(path);
    if (fd < 0) {
        snprintf(err, errlen, "pgbench script: %s: %s", path, strerror(errno));
        return false;
    }
    char script[4096];
    bench_pgbench_script(cfg, script, sizeof script);
    size_t n = strlen(script);
    bool ok = write(fd, script, n) == (ssize_t)n;
    if (close(fd) != 0 || !ok) {
        snprintf(err, errlen, "pgbench script: %s: %s", path, strerror(errno));
        unlink(path);
        return false;
    }
    return true;
}

/* -j: pgbench's own threads should not be the bottleneck being measured. */
static int pgbench_threads(int clients)
{
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    int j = cpus > 2 ? (int)cpus : 2;
    return clients < j ? clients : j;
}

typedef struct argv_buf {
    char c[16], j[16], limit[32];
    const char *argv[16];
} argv_buf;

/* The argument vector, no shell: the conninfo is pgbench's dbname argument,
   and with none given pgbench reads libpq's PG* environment as we do. */
static void build_argv(argv_buf *a, const bench_config *cfg, const char *script,
                       const char *conninfo, int clients)
{
    snprintf(a->c, sizeof a->c, "%d", clients);
    snprintf(a->j, sizeof a->j, "%d", pgbench_threads(clients));
    bool by_count = cfg->ops > 0;
    if (by_count)
        snprintf(a->limit, sizeof a->limit, "%lld",
                 (long long)(cfg->ops / clients > 0 ? cfg->ops / clients : 1));
    else
        snprintf(a->limit, sizeof a->limit, "%d", (int)fmax(1.0, ceil(cfg->duration_s)));
    const char *v[] = {"pgbench", "-n", "-M", "prepared", "-f", script,
                       "-c", a->c, "-j", a->j, by_count ? "-t" : "-T", a->limit};
    size_t n = sizeof v / sizeof v[0];
    memcpy(a->argv, v, sizeof v);
    a->argv[n++] = conninfo && *conninfo ? conninfo : NULL;
    a->argv[n] = NULL;
}

static size_t read_all(int fd, char *buf, size_t cap)
{
    size_t n = 0;
    char sink[512];
    for (;;) {
        char *to = n + 1 < cap ? buf + n : sink;
        size_t room = n + 1 < cap ? cap - 1 - n : sizeof sink;
        ssize_t got = read(fd, to, room);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0)
            break;
        if (to != sink)
            n += (size_t)got;
    }
    buf[n] = '\0';
    return n;
}

/* Spawn pgbench with its stdout on a pipe; returns the spawn error (0 ok). */
static int spawn_pgbench(char *const argv[], pid_t *pid, int *out_fd)
{
    int fds[2];
    if (pipe(fds) != 0)
        return errno;
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&fa, fds[1], 1);
    posix_spawn_file_actions_addclose(&fa, fds[0]);
    posix_spawn_file_actions_addclose(&fa, fds[1]);
    int rc = posix_spawnp(pid, "pgbench", &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    close(fds[1]);
    if (rc != 0)
        close(fds[0]);
    else
        *out_fd = fds[0];
    return rc;
}

static bench_pgbench_status finish(pid_t pid, int fd, double *tps, char *err,
                                   size_t errlen)
{
    char *out = malloc(OUTPUT_MAX);
    if (out != NULL)
        read_all(fd, out, OUTPUT_MAX);
    close(fd);
    int ws = 0;
    while (waitpid(pid, &ws, 0) < 0 && errno == EINTR)
        continue;
    const char *at = out ? strstr(out, "\ntps = ") : NULL;
    bench_pgbench_status st = BENCH_PGBENCH_FAILED;
    if (!WIFEXITED(ws) || WEXITSTATUS(ws) != 0)
        snprintf(err, errlen, "pgbench failed (%s %d)",
                 WIFEXITED(ws) ? "exit status" : "signal",
                 WIFEXITED(ws) ? WEXITSTATUS(ws) : WTERMSIG(ws));
    else if (at == NULL || (*tps = strtod(at + 7, NULL)) <= 0)
        snprintf(err, errlen, "pgbench printed no tps figure");
    else
        st = BENCH_PGBENCH_OK;
    free(out);
    return st;
}

bench_pgbench_status bench_pgbench_run(const bench_config *cfg,
                                       const char *conninfo, int clients,
                                       double *tps, char *err, size_t errlen)
{
    char script[512];
    if (!write_script(cfg, script, sizeof script, err, errlen))
        return BENCH_PGBENCH_FAILED;
    argv_buf a;
    build_argv(&a, cfg, script, conninfo, clients);
    pid_t pid;
    int fd = -1;
    /* posix_spawn's argv is char *const[] for historical reasons; it does
       not write to the strings. */
    union { const char **in; char *const *out; } cast = {a.argv};
    int rc = spawn_pgbench(cast.out, &pid, &fd);
    bench_pgbench_status st;
    if (rc == ENOENT) {
        snprintf(err, errlen, "pgbench is not installed (Debian package "
                              "postgresql-client); no \"vs pgbench\" column");
        st = BENCH_PGBENCH_MISSING;
    } else if (rc != 0) {
        snprintf(err, errlen, "could not start pgbench: %s", strerror(rc));
        st = BENCH_PGBENCH_FAILED;
    } else {
        st = finish(pid, fd, tps, err, errlen);
    }
    unlink(script);
    return st;
}
