/* test_localpg.c — src/localpg against real PostgreSQL servers it starts. */
#define _XOPEN_SOURCE 700 /* nftw() and its FTW_* flags */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <libpq-fe.h>
#include <netinet/in.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "localpg.h"

/* One per test: a private temporary folder, and whatever must be cleaned
   up even when the test fails half-way. */
typedef struct fixture {
    char tmp[64];     /* mkdtemp under /tmp, removed by teardown */
    char data[160];   /* tmp/pg: the data folder most tests use */
    lpg_cluster *c;   /* stopped by teardown when not NULL */
    pid_t bystander;  /* an unrelated process, killed by teardown */
} fixture;

/* ------------------------------------------------------------------------
 * Helpers
 * ------------------------------------------------------------------------ */

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {0, (long)ms * 1000000L};
    nanosleep(&ts, NULL);
}

static int rm_entry(const char *path, const struct stat *st, int flag,
                    struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path) == 0 || errno == ENOENT ? 0 : -1;
}

/* rm -rf, only ever of our own mkdtemp folders. */
static void rm_rf(const char *dir)
{
    if (strncmp(dir, "/tmp/lpgtest-", 13) != 0)
        return;
    if (nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS) != 0)
        fprintf(stderr, "could not remove %s: %s\n", dir, strerror(errno));
}

static lpg_options options_for(const fixture *f)
{
    lpg_options o;
    lpg_options_init(&o);
    o.data_dir = f->data;
    return o;
}

static lpg_cluster *start_ok(const lpg_options *o)
{
    lpg_error err;
    lpg_cluster *c = NULL;
    lpg_status st = lpg_start(o, &c, &err);
    if (st != LPG_OK)
        fail_msg("lpg_start: %s: %s", lpg_status_name(st), err.message);
    assert_non_null(c);
    return c;
}

static void stop_ok(fixture *f)
{
    lpg_error err;
    lpg_status st = lpg_stop(f->c, &err);
    f->c = NULL;
    if (st != LPG_OK)
        fail_msg("lpg_stop: %s: %s", lpg_status_name(st), err.message);
}

static PGconn *connect_ok(const char *conninfo)
{
    PGconn *pg = PQconnectdb(conninfo);
    if (PQstatus(pg) != CONNECTION_OK) {
        fprintf(stderr, "connect %s: %s", conninfo, PQerrorMessage(pg));
        PQfinish(pg);
        fail_msg("could not connect");
    }
    return pg;
}

/* Run SQL; the first value of the first row (or "") into out. */
static void query(const char *conninfo, const char *sql, char *out, size_t len)
{
    PGconn *pg = connect_ok(conninfo);
    PGresult *r = PQexec(pg, sql);
    ExecStatusType s = PQresultStatus(r);
    if (s != PGRES_TUPLES_OK && s != PGRES_COMMAND_OK) {
        fprintf(stderr, "%s: %s", sql, PQerrorMessage(pg));
        PQclear(r);
        PQfinish(pg);
        fail_msg("query failed");
    }
    snprintf(out, len, "%s",
             s == PGRES_TUPLES_OK && PQntuples(r) > 0 ? PQgetvalue(r, 0, 0)
                                                      : "");
    PQclear(r);
    PQfinish(pg);
}

static long query_long(const char *conninfo, const char *sql)
{
    char buf[64];
    query(conninfo, sql, buf, sizeof buf);
    return strtol(buf, NULL, 10);
}

static pid_t pid_file_pid(const char *dir)
{
    char path[256], buf[32] = "";
    snprintf(path, sizeof path, "%s/postmaster.pid", dir);
    FILE *fp = fopen(path, "r");
    if (fp == NULL)
        return 0;
    if (fgets(buf, sizeof buf, fp) == NULL)
        buf[0] = '\0';
    fclose(fp);
    return (pid_t)strtol(buf, NULL, 10);
}

/* Gone or a zombie: our PID 1 need not reap the servers' orphans. */
static bool proc_gone(pid_t pid)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%ld/stat", (long)pid);
    FILE *fp = fopen(path, "r");
    if (fp == NULL)
        return true;
    size_t n = fread(buf, 1, sizeof buf - 1, fp);
    fclose(fp);
    buf[n] = '\0';
    const char *paren = strrchr(buf, ')');
    return paren == NULL || paren[1] == '\0' || paren[2] == 'Z' ||
           paren[2] == 'X';
}

static bool wait_gone(pid_t pid, int timeout_ms)
{
    long long deadline = now_ms() + timeout_ms;
    while (!proc_gone(pid) && now_ms() < deadline)
        sleep_ms(20);
    return proc_gone(pid);
}

static uid_t proc_uid(pid_t pid)
{
    char path[64];
    struct stat st;
    snprintf(path, sizeof path, "/proc/%ld", (long)pid);
    assert_int_equal(stat(path, &st), 0);
    return st.st_uid;
}

static bool file_exists(const char *dir, const char *name)
{
    char path[256];
    struct stat st;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return stat(path, &st) == 0;
}

/* Replace the first line (the PID) of a lock file, keeping the rest. */
static void rewrite_pid(const char *dir, const char *name, pid_t pid)
{
    char path[256], rest[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *fp = fopen(path, "r");
    assert_non_null(fp);
    size_t n = fread(rest, 1, sizeof rest - 1, fp);
    fclose(fp);
    rest[n] = '\0';
    const char *nl = strchr(rest, '\n');
    fp = fopen(path, "w");
    assert_non_null(fp);
    fprintf(fp, "%ld%s", (long)pid, nl ? nl : "\n");
    assert_int_equal(fclose(fp), 0);
}

/* A free loopback port: bind port 0 and ask which one we got. */
static int free_port(void)
{
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a;
    socklen_t len = sizeof a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_true(s >= 0);
    assert_int_equal(bind(s, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(getsockname(s, (struct sockaddr *)&a, &len), 0);
    close(s);
    return ntohs(a.sin_port);
}

/* Kill the postmaster like a crash would, and wait for it to be gone. */
static pid_t crash_server(fixture *f)
{
    pid_t pid = pid_file_pid(f->data);
    assert_true(pid > 0);
    assert_int_equal(kill(pid, SIGKILL), 0);
    assert_true(wait_gone(pid, 30000));
    /* The handle of the dead server: lpg_stop has nothing to stop but must
       wait for the orphaned children and release the folder. */
    stop_ok(f);
    assert_true(file_exists(f->data, "postmaster.pid")); /* stale, kept */
    assert_int_equal(pid_file_pid(f->data), pid);
    return pid;
}

/* ------------------------------------------------------------------------
 * Fixture
 * ------------------------------------------------------------------------ */

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    if (f == NULL)
        return -1;
    snprintf(f->tmp, sizeof f->tmp, "/tmp/lpgtest-XXXXXX");
    if (mkdtemp(f->tmp) == NULL) {
        free(f);
        return -1;
    }
    /* mkdtemp makes it 0700; when root the cluster's user must pass. */
    if (chmod(f->tmp, 0711) != 0) {
        rm_rf(f->tmp);
        free(f);
        return -1;
    }
    snprintf(f->data, sizeof f->data, "%s/pg", f->tmp);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    lpg_error err;
    if (f->c != NULL && lpg_stop(f->c, &err) != LPG_OK)
        fprintf(stderr, "teardown: lpg_stop: %s\n", err.message);
    if (f->bystander > 0) {
        kill(f->bystander, SIGKILL);
        waitpid(f->bystander, NULL, 0);
    }
    rm_rf(f->tmp);
    free(f);
    return 0;
}

/* ------------------------------------------------------------------------
 * Tests
 * ------------------------------------------------------------------------ */

static void test_first_start(void **state)
{
    fixture *f = *state;
    lpg_options o = options_for(f);
    f->c = start_ok(&o);

    assert_true(lpg_created(f->c));
    assert_string_equal(lpg_data_dir(f->c), f->data);
    assert_int_equal(lpg_port(f->c), LPG_DEFAULT_PORT);
    assert_true(file_exists(f->data, "PG_VERSION"));
    assert_true(file_exists(f->data, ".s.PGSQL.5432"));
    assert_non_null(strstr(lpg_conninfo(f->c), f->data));
    assert_null(lpg_conninfo_tcp(f->c));
    assert_int_equal(query_long(lpg_conninfo(f->c), "SELECT 1"), 1);

    char listen[64];
    query(lpg_conninfo(f->c), "SHOW listen_addresses", listen, sizeof listen);
    assert_string_equal(listen, ""); /* no TCP unless asked */

    pid_t pid = lpg_server_pid(f->c);
    assert_true(pid > 0);
    assert_int_equal(pid, pid_file_pid(f->data));
    stop_ok(f);
    assert_true(wait_gone(pid, 1000)); /* lpg_stop waited already */
    assert_false(file_exists(f->data, ".s.PGSQL.5432"));
    assert_false(file_exists(f->data, "postmaster.pid"));
}

static void test_second_start_reuses_folder(void **state)
{
    fixture *f = *state;
    lpg_options o = options_for(f);
    f->c = start_ok(&o);
    char out[64];
    query(lpg_conninfo(f->c), "CREATE TABLE kept (x int); "
                              "INSERT INTO kept VALUES (42)",
          out, sizeof out);
    stop_ok(f);

    f->c = start_ok(&o);
    assert_false(lpg_created(f->c)); /* no initdb the second time */
    assert_int_equal(query_long(lpg_conninfo(f->c), "SELECT x FROM kept"), 42);
}

static void test_default_folder_under_cwd(void **state)
{
    fixture *f = *state;
    char cwd[1024], work[128], expect[192];
    assert_non_null(getcwd(cwd, sizeof cwd));
    /* A space on the way: pg_ctl's shell, -k and conninfo must all cope. */
    snprintf(work, sizeof work, "%s/my work", f->tmp);
    assert_int_equal(mkdir(work, 0711), 0);
    assert_int_equal(chdir(work), 0);
    lpg_options o;
    lpg_options_init(&o);
    assert_string_equal(o.data_dir, LPG_DEFAULT_DATA_DIR);
    lpg_error err;
    lpg_status st = lpg_start(&o, &f->c, &err);
    assert_int_equal(chdir(cwd), 0);
    if (st != LPG_OK)
        fail_msg("lpg_start: %s", err.message);

    snprintf(expect, sizeof expect, "%s/%s", work, LPG_DEFAULT_DATA_DIR);
    assert_string_equal(lpg_data_dir(f->c), expect);
    if (geteuid() == 0) { /* the parent made for it lets the user through */
        struct stat parent;
        snprintf(expect, sizeof expect, "%s/.pgtx", work);
        assert_int_equal(stat(expect, &parent), 0);
        assert_int_equal(parent.st_mode & 0777, 0711);
    }
    assert_int_equal(query_long(lpg_conninfo(f->c), "SELECT 7"), 7);
}

static void test_root_runs_unprivileged(void **state)
{
    fixture *f = *state;
    if (geteuid() != 0)
        skip();
    lpg_options o = options_for(f);
    f->c = start_ok(&o);

    uid_t uid = proc_uid(lpg_server_pid(f->c));
    assert_int_not_equal(uid, 0);
    struct passwd *pw = getpwnam("postgres");
    if (pw != NULL)
        assert_int_equal(uid, pw->pw_uid);
    struct stat st;
    assert_int_equal(stat(f->data, &st), 0);
    assert_int_equal(st.st_uid, uid); /* the cluster is that user's */
    assert_int_equal(st.st_mode & 0777, 0700);
    /* Root, the client, still connects through the private socket. */
    assert_int_equal(query_long(lpg_conninfo(f->c), "SELECT 1"), 1);
}

static void test_root_run_as_user_then_owner(void **state)
{
    fixture *f = *state;
    struct passwd *pw = getpwnam("nobody");
    if (geteuid() != 0 || pw == NULL)
        skip();
    uid_t nobody = pw->pw_uid;
    lpg_options o = options_for(f);
    o.run_as_user = "nobody";
    f->c = start_ok(&o);
    assert_int_equal(proc_uid(lpg_server_pid(f->c)), nobody);
    stop_ok(f);

    /* Without run_as_user, an existing cluster runs as its owner. */
    o.run_as_user = NULL;
    f->c = start_ok(&o);
    assert_int_equal(proc_uid(lpg_server_pid(f->c)), nobody);
    assert_int_equal(query_long(lpg_conninfo(f->c), "SELECT 1"), 1);
}

static void test_stale_pid_file_after_kill9(void **state)
{
    fixture *f = *state;
    lpg_options o = options_for(f);
    f->c = start_ok(&o);
    pid_t old = crash_server(f);

    f->c = start_ok(&o);
    assert_false(lpg_created(f->c));
    assert_int_not_equal(lpg_server_pid(f->c), old);
    assert_int_equal(query_long(lpg_conninfo(f->c), "SELECT 1"), 1);
}

static void test_stale_pid_file_pid_reused(void **state)
{
    fixture *f = *state;
    lpg_options o = options_for(f);
    f->c = start_ok(&o);
    crash_server(f);

    /* The dead postmaster's PID now belongs to an unrelated process of the
       same user (PostgreSQL takes a PID it may not signal for a dead one):
       PostgreSQL alone would refuse to start, and nobody may signal it. */
    struct stat st;
    assert_int_equal(stat(f->data, &st), 0);
    f->bystander = fork();
    assert_true(f->bystander >= 0);
    if (f->bystander == 0) {
        if (geteuid() == 0 && (setgid(st.st_gid) != 0 || setuid(st.st_uid)))
            _exit(1);
        for (;;)
            pause();
    }
    rewrite_pid(f->data, "postmaster.pid", f->bystander);
    if (file_exists(f->data, ".s.PGSQL.5432.lock"))
        rewrite_pid(f->data, ".s.PGSQL.5432.lock", f->bystander);

    f->c = start_ok(&o);
    assert_int_equal(query_long(lpg_conninfo(f->c), "SELECT 1"), 1);
    assert_int_equal(waitpid(f->bystander, NULL, WNOHANG), 0); /* alive */
    assert_int_equal(proc_uid(f->bystander), st.st_uid);
}

static void test_server_left_by_killed_program(void **state)
{
    fixture *f = *state;
    lpg_options o = options_for(f);
    /* A program that starts the cluster and dies without stopping it. */
    pid_t prog = fork();
    assert_true(prog >= 0);
    if (prog == 0) {
        lpg_cluster *c = NULL;
        _exit(lpg_start(&o, &c, NULL) == LPG_OK ? 0 : 1);
    }
    int status;
    assert_int_equal(waitpid(prog, &status, 0), prog);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    pid_t old = pid_file_pid(f->data);
    assert_true(old > 0);
    assert_false(proc_gone(old)); /* its server outlived it */

    f->c = start_ok(&o); /* the leftover is stopped and started afresh */
    assert_int_not_equal(lpg_server_pid(f->c), old);
    assert_true(wait_gone(old, 1000));
    assert_int_equal(query_long(lpg_conninfo(f->c), "SELECT 1"), 1);
}

static void test_initdb_outlives_killed_program(void **state)
{
    fixture *f = *state;
    lpg_options o = options_for(f);
    pid_t prog = fork();
    assert_true(prog >= 0);
    if (prog == 0) {
        lpg_cluster *c = NULL;
        _exit(lpg_start(&o, &c, NULL) == LPG_OK ? 0 : 1);
    }
    /* Kill the program while its initdb runs (PG_VERSION comes first). */
    long long deadline = now_ms() + 30000;
    while (!file_exists(f->data, "PG_VERSION") && now_ms() < deadline)
        sleep_ms(5);
    kill(prog, SIGKILL);
    assert_int_equal(waitpid(prog, NULL, 0), prog);
    assert_true(file_exists(f->data, "PG_VERSION"));

    /* The orphaned initdb finishes (a dead reader must not kill it), the
       next start waits for it, and then uses the cluster. */
    f->c = start_ok(&o);
    assert_false(lpg_created(f->c));
    assert_int_equal(query_long(lpg_conninfo(f->c), "SELECT 1"), 1);
}

static void test_folder_in_use(void **state)
{
    fixture *f = *state;
    lpg_options o = options_for(f);
    f->c = start_ok(&o);
    lpg_cluster *second = NULL;
    lpg_error err;
    assert_int_equal(lpg_start(&o, &second, &err), LPG_BUSY);
    assert_null(second);
    assert_int_equal(err.status, LPG_BUSY);
    assert_non_null(strstr(err.message, f->data));
    /* The owner's server was not disturbed. */
    assert_int_equal(query_long(lpg_conninfo(f->c), "SELECT 1"), 1);
}

static void test_tcp_port_on_loopback(void **state)
{
    fixture *f = *state;
    lpg_options o = options_for(f);
    o.tcp_port = free_port();
    o.max_connections = 150;
    f->c = start_ok(&o);
    assert_int_equal(lpg_port(f->c), o.tcp_port);

    const char *tcp = lpg_conninfo_tcp(f->c);
    assert_non_null(tcp);
    assert_non_null(strstr(tcp, "host=127.0.0.1"));
    assert_int_equal(query_long(tcp, "SELECT 1"), 1);
    char buf[64];
    query(tcp, "SHOW listen_addresses", buf, sizeof buf);
    assert_string_equal(buf, "127.0.0.1");
    assert_int_equal(query_long(tcp, "SHOW max_connections"), 150);
    query(lpg_conninfo(f->c), "SELECT inet_server_addr() IS NULL", buf,
          sizeof buf);
    assert_string_equal(buf, "t"); /* the plain conninfo uses the socket */

    /* TCP needs the password (the socket does not). */
    char wrong[128];
    snprintf(wrong, sizeof wrong,
             "host=127.0.0.1 port=%d user=postgres dbname=postgres "
             "password=wrong",
             o.tcp_port);
    PGconn *pg = PQconnectdb(wrong);
    assert_int_equal(PQstatus(pg), CONNECTION_BAD);
    PQfinish(pg);
}

static void test_missing_binaries(void **state)
{
    fixture *f = *state;
    char empty[128];
    snprintf(empty, sizeof empty, "%s/empty", f->tmp);
    assert_int_equal(mkdir(empty, 0755), 0);
    /* Through the environment variable, as a user would. */
    assert_int_equal(setenv(LPG_BINDIR_ENV, empty, 1), 0);
    lpg_options o = options_for(f);
    unsetenv(LPG_BINDIR_ENV);
    assert_string_equal(o.bin_dir, empty);

    lpg_error err;
    assert_int_equal(lpg_start(&o, &f->c, &err), LPG_NO_BINARIES);
    assert_null(f->c);
    assert_non_null(strstr(err.message, "'" LPG_PACKAGE "'"));
    assert_non_null(strstr(err.message, "initdb"));
    assert_false(file_exists(f->tmp, "pg")); /* nothing created */
}

static void test_unreachable_folder(void **state)
{
    fixture *f = *state;
    if (geteuid() != 0)
        skip();
    char locked[128], data[160];
    snprintf(locked, sizeof locked, "%s/locked", f->tmp);
    assert_int_equal(mkdir(locked, 0700), 0); /* like /root */
    snprintf(data, sizeof data, "%s/pg", locked);
    lpg_options o = options_for(f);
    o.data_dir = data;
    lpg_error err;
    assert_int_equal(lpg_start(&o, &f->c, &err), LPG_DATA_DIR);
    assert_null(f->c);
    char says[192];
    snprintf(says, sizeof says, "cannot enter %s.", locked);
    if (strstr(err.message, says) == NULL)
        fail_msg("unexpected message: %s", err.message);
    assert_false(file_exists(data, "PG_VERSION"));
}

static void test_folder_not_a_cluster(void **state)
{
    fixture *f = *state;
    assert_int_equal(mkdir(f->data, 0700), 0);
    char keep[192];
    snprintf(keep, sizeof keep, "%s/keep.txt", f->data);
    FILE *fp = fopen(keep, "w");
    assert_non_null(fp);
    fputs("mine\n", fp);
    fclose(fp);

    lpg_options o = options_for(f);
    lpg_error err;
    assert_int_equal(lpg_start(&o, &f->c, &err), LPG_DATA_DIR);
    assert_non_null(strstr(err.message, "no PostgreSQL cluster"));
    assert_true(file_exists(f->data, "keep.txt"));
    assert_false(file_exists(f->data, "PG_VERSION"));
}

static void test_incomplete_cluster(void **state)
{
    fixture *f = *state;
    /* What an initdb killed half-way leaves: PG_VERSION, no pg_control. */
    assert_int_equal(mkdir(f->data, 0700), 0);
    char version[192];
    snprintf(version, sizeof version, "%s/PG_VERSION", f->data);
    FILE *fp = fopen(version, "w");
    assert_non_null(fp);
    fputs("15\n", fp);
    fclose(fp);
    if (geteuid() == 0) { /* a cluster is its run-as user's */
        struct passwd *pw = getpwnam("postgres");
        if (pw == NULL)
            skip();
        assert_int_equal(chown(f->data, pw->pw_uid, pw->pw_gid), 0);
    }

    lpg_options o = options_for(f);
    lpg_error err;
    assert_int_equal(lpg_start(&o, &f->c, &err), LPG_DATA_DIR);
    assert_null(f->c);
    assert_non_null(strstr(err.message, "incomplete cluster"));
    assert_false(file_exists(f->data, "postmaster.pid"));
}

static void test_invalid_options(void **state)
{
    fixture *f = *state;
    lpg_error err;
    lpg_options o = options_for(f);
    char path[256];

    snprintf(path, sizeof path, "%s/a$b", f->tmp);
    o.data_dir = path;
    assert_int_equal(lpg_start(&o, &f->c, &err), LPG_INVALID);
    assert_false(file_exists(f->tmp, "a$b"));

    snprintf(path, sizeof path, "%s/%0120d", f->tmp, 0);
    assert_int_equal(lpg_start(&o, &f->c, &err), LPG_INVALID);
    assert_non_null(strstr(err.message, "too long"));

    o = options_for(f);
    o.tcp_port = 70000;
    assert_int_equal(lpg_start(&o, &f->c, &err), LPG_INVALID);
    assert_int_equal(lpg_start(NULL, &f->c, NULL), LPG_INVALID);
    assert_null(f->c);
    assert_false(file_exists(f->tmp, "pg"));
}

static void test_status_names(void **state)
{
    (void)state;
    assert_string_equal(lpg_status_name(LPG_OK), "LPG_OK");
    assert_string_equal(lpg_status_name(LPG_NO_BINARIES), "LPG_NO_BINARIES");
    assert_string_equal(lpg_status_text(LPG_BUSY),
                        "the data folder is in use by another process");
    assert_string_equal(lpg_status_name(LPG_STATUS_COUNT_), "LPG_UNKNOWN");
    assert_int_equal(lpg_stop(NULL, NULL), LPG_OK);
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_status_names),
        T(test_invalid_options),
        T(test_missing_binaries),
        T(test_folder_not_a_cluster),
        T(test_incomplete_cluster),
        T(test_unreachable_folder),
        T(test_first_start),
        T(test_second_start_reuses_folder),
        T(test_default_folder_under_cwd),
        T(test_root_runs_unprivileged),
        T(test_root_run_as_user_then_owner),
        T(test_stale_pid_file_after_kill9),
        T(test_stale_pid_file_pid_reused),
        T(test_server_left_by_killed_program),
        T(test_initdb_outlives_killed_program),
        T(test_folder_in_use),
        T(test_tcp_port_on_loopback),
    };
#undef T
    return cmocka_run_group_tests(tests, NULL, NULL);
}
