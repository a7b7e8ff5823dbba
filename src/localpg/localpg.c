/* localpg.c — start and own a local PostgreSQL cluster (see localpg.h). */
#include "localpg.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

#define DEFAULT_TIMEOUT_S 60
#define MAX_GROUPS 64
#define PASSWORD_LEN 24
#define PASSWORD_FILE "pgtx.password" /* in the data folder, mode 0600 */
#define LOG_FILE "server.log"         /* in the data folder, pg_ctl -l */
#define OUTPUT_TAIL 2048              /* bytes of a child's output kept */
#define POLL_MS 20                    /* between looks at /proc */
#define DEBIAN_PG_ROOT "/usr/lib/postgresql"

/* Who initdb, pg_ctl and the server run as. */
typedef struct run_as {
    bool drop;                /* we are root: children switch to uid/gid */
    uid_t uid;                /* owns the data folder */
    gid_t gid;
    gid_t groups[MAX_GROUPS]; /* supplementary groups, set before setuid */
    int ngroups;
    char name[64];
    char home[256];
} run_as;

struct lpg_cluster {
    char *data_dir;     /* canonical absolute path: PGDATA, socket folder */
    char *bin_dir;      /* holds initdb, pg_ctl, postgres */
    char *conninfo;     /* over the unix socket */
    char *conninfo_tcp; /* NULL unless tcp_port */
    char password[PASSWORD_LEN + 1]; /* for TCP; "" if the file is missing */
    run_as user;
    int port;           /* names the socket; the TCP port when tcp_port */
    int tcp_port;       /* 0: unix socket only */
    int max_connections; /* 0: PostgreSQL's default */
    int timeout_s;
    bool verbose;
    bool has_cluster;   /* PG_VERSION present (before or after initdb) */
    bool created;       /* initdb ran in this lpg_start */
    pid_t pid;          /* postmaster, once started */
    int lock_fd;        /* the data folder, flock()ed; -1 when not held */
};

/* ------------------------------------------------------------------------
 * Statuses, errors, small helpers
 * ------------------------------------------------------------------------ */

const char *lpg_status_name(lpg_status st)
{
    switch (st) {
#define LPG_X_NAME(name, text)                                                 \
    case LPG_##name:                                                           \
        return "LPG_" #name;
        LPG_STATUS_MAP(LPG_X_NAME)
#undef LPG_X_NAME
    default:
        return "LPG_UNKNOWN";
    }
}

const char *lpg_status_text(lpg_status st)
{
    switch (st) {
#define LPG_X_TEXT(name, text)                                                 \
    case LPG_##name:                                                           \
        return text;
        LPG_STATUS_MAP(LPG_X_TEXT)
#undef LPG_X_TEXT
    default:
        return "unknown status";
    }
}

__attribute__((format(printf, 3, 4))) static lpg_status
fail(lpg_error *err, lpg_status st, const char *fmt, ...)
{
    va_list ap;
    err->status = st;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
    return st;
}

/* strerror is not thread-safe; this is the XSI strerror_r. */
static const char *errstr(int e, char *buf, size_t len)
{
    if (strerror_r(e, buf, len) != 0)
        snprintf(buf, len, "error %d", e);
    return buf;
}

static lpg_status fail_errno(lpg_error *err, lpg_status st, const char *what,
                             const char *path)
{
    char eb[128];
    return fail(err, st, "%s %s: %s", what, path,
                errstr(errno, eb, sizeof eb));
}

/* A new string from a printf format; NULL when out of memory. */
__attribute__((format(printf, 1, 2))) static char *xfmt(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return NULL;
    char *s = malloc((size_t)n + 1);
    if (s == NULL)
        return NULL;
    va_start(ap, fmt);
    vsnprintf(s, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return s;
}

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        continue;
}

/* Read a small file into buf (NUL-terminated, trailing whitespace cut);
   false when it cannot be read. */
static bool read_small_file(const char *dir, const char *name, char *buf,
                            size_t len)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    ssize_t n = read(fd, buf, len - 1);
    close(fd);
    if (n < 0)
        return false;
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == ' '))
        n--;
    buf[n] = '\0';
    return true;
}

/* Keep the last lines of `text` that fit, on one line ("a; b; c"), so that
   an error message ends with what initdb or the server said last. */
static void squeeze_tail(const char *text, char *out, size_t len)
{
    size_t n = strlen(text);
    while (n > 0 && (text[n - 1] == '\n' || text[n - 1] == ' '))
        n--;
    size_t start = n > len - 1 ? n - (len - 1) : 0;
    while (start > 0 && start < n && text[start - 1] != '\n')
        start++; /* begin at a line start */
    size_t o = 0;
    for (size_t i = start; i < n && o + 2 < len; i++) {
        if (text[i] != '\n') {
            out[o++] = text[i];
        } else if (o > 0) {
            out[o++] = ';';
            out[o++] = ' ';
        }
    }
    out[o] = '\0';
}

/* ------------------------------------------------------------------------
 * Options and the data folder's path
 * ------------------------------------------------------------------------ */

void lpg_options_init(lpg_options *o)
{
    memset(o, 0, sizeof *o);
    o->data_dir = LPG_DEFAULT_DATA_DIR;
    const char *bin = getenv(LPG_BINDIR_ENV);
    o->bin_dir = (bin != NULL && bin[0] != '\0') ? bin : NULL;
    o->timeout_s = DEFAULT_TIMEOUT_S;
}

/*
 * pg_ctl runs the server through /bin/sh with -D "path" in double quotes,
 * and we pass the socket folder in single quotes; the socket folder setting
 * is a comma-separated list.  Rather than escape for three parsers, accept
 * only characters that mean nothing to any of them.
 */
static bool path_chars_ok(const char *path)
{
    for (const unsigned char *p = (const unsigned char *)path; *p; p++) {
        bool ok = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
                  (*p >= '0' && *p <= '9') || *p >= 0x80 ||
                  strchr("/._-+@%~:= ", *p) != NULL;
        if (!ok)
            return false;
    }
    return true;
}

/* The socket is <dir>/.s.PGSQL.<port>, and must fit sockaddr_un. */
static bool socket_path_fits(const char *dir)
{
    struct sockaddr_un sun;
    return strlen(dir) + sizeof "/.s.PGSQL.65535" <= sizeof sun.sun_path;
}

static lpg_status check_path(const char *path, lpg_error *err)
{
    if (!path_chars_ok(path))
        return fail(err, LPG_INVALID,
                    "data folder %s: only letters, digits, space and "
                    "/ . _ - + @ %% ~ : = are allowed in its path",
                    path);
    if (!socket_path_fits(path))
        return fail(err, LPG_INVALID,
                    "data folder %s: path too long for the unix socket "
                    "inside it (at most %zu bytes); choose a shorter one",
                    path, sizeof((struct sockaddr_un *)NULL)->sun_path -
                              sizeof "/.s.PGSQL.65535");
    return LPG_OK;
}

static lpg_status check_options(const lpg_options *o, lpg_error *err)
{
    if (o == NULL)
        return fail(err, LPG_INVALID, "no options");
    if (o->tcp_port < 0 || o->tcp_port > 65535)
        return fail(err, LPG_INVALID, "tcp_port %d out of range", o->tcp_port);
    if (o->max_connections < 0 || o->timeout_s < 0)
        return fail(err, LPG_INVALID, "negative max_connections or timeout");
    if (o->data_dir != NULL && o->data_dir[0] == '\0')
        return fail(err, LPG_INVALID, "empty data folder path");
    return LPG_OK;
}

/* Absolute form of `path` (not yet canonical: it may not exist). */
static char *absolute_path(const char *path)
{
    if (path[0] == '/')
        return strdup(path);
    char cwd[PATH_MAX];
    if (getcwd(cwd, sizeof cwd) == NULL)
        return NULL;
    while (path[0] == '.' && path[1] == '/')
        path += 2;
    return xfmt("%s/%s", strcmp(cwd, "/") == 0 ? "" : cwd, path);
}

/* Absolute, without trailing slashes; NULL when out of memory. */
static char *data_dir_path(const char *path)
{
    char *abs = absolute_path(path);
    size_t n = abs ? strlen(abs) : 0;
    while (n > 1 && abs[n - 1] == '/')
        abs[--n] = '\0';
    return abs;
}

/* ------------------------------------------------------------------------
 * Finding the server binaries
 * ------------------------------------------------------------------------ */

static bool bindir_complete(const char *dir)
{
    static const char *const need[] = {"initdb", "pg_ctl", "postgres"};
    char path[PATH_MAX];
    for (size_t i = 0; i < sizeof need / sizeof need[0]; i++) {
        int n = snprintf(path, sizeof path, "%s/%s", dir, need[i]);
        if (n < 0 || (size_t)n >= sizeof path || access(path, X_OK) != 0)
            return false;
    }
    return true;
}

/* "15" -> 15000, "9.6" -> 9006; -1 if not a version. */
static long version_key(const char *name)
{
    char *end;
    long major = strtol(name, &end, 10);
    long minor = 0;
    if (end == name || major < 0)
        return -1;
    if (*end == '.')
        minor = strtol(end + 1, &end, 10);
    return *end == '\0' ? major * 1000 + minor : -1;
}

/* Debian installs each major version in /usr/lib/postgresql/<v>/bin. */
static char *debian_bindir(void)
{
    DIR *d = opendir(DEBIAN_PG_ROOT);
    if (d == NULL)
        return NULL;
    char best[PATH_MAX] = "";
    long best_key = -1;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        char dir[PATH_MAX];
        long key = version_key(e->d_name);
        snprintf(dir, sizeof dir, "%s/%s/bin", DEBIAN_PG_ROOT, e->d_name);
        if (key > best_key && bindir_complete(dir)) {
            best_key = key;
            memcpy(best, dir, sizeof best);
        }
    }
    closedir(d);
    return best_key >= 0 ? strdup(best) : NULL;
}

/* A PATH entry with pg_ctl: the folder the symlink leads to (pg_ctl finds
   postgres next to its real self). */
static char *path_bindir(void)
{
    const char *path = getenv("PATH");
    if (path == NULL)
        return NULL;
    for (const char *p = path; *p;) {
        size_t n = strcspn(p, ":");
        char cand[PATH_MAX], real[PATH_MAX];
        snprintf(cand, sizeof cand, "%.*s/pg_ctl", (int)n, p);
        if (n > 0 && realpath(cand, real) != NULL) {
            *strrchr(real, '/') = '\0';
            if (bindir_complete(real))
                return strdup(real);
        }
        p += n + (p[n] == ':');
    }
    return NULL;
}

static lpg_status find_binaries(lpg_cluster *c, const lpg_options *o,
                                const char *cluster_version, lpg_error *err)
{
    char dir[PATH_MAX];
    if (o->bin_dir != NULL) {
        if (bindir_complete(o->bin_dir))
            c->bin_dir = strdup(o->bin_dir);
    } else {
        snprintf(dir, sizeof dir, DEBIAN_PG_ROOT "/%s/bin", cluster_version);
        if (cluster_version[0] != '\0' && bindir_complete(dir))
            c->bin_dir = strdup(dir);
        if (c->bin_dir == NULL)
            c->bin_dir = debian_bindir();
        if (c->bin_dir == NULL)
            c->bin_dir = path_bindir();
    }
    if (c->bin_dir != NULL)
        return LPG_OK;
    return fail(err, LPG_NO_BINARIES,
                "PostgreSQL server binaries (initdb, pg_ctl, postgres) not "
                "found in %s: install the Debian package '%s' "
                "(apt-get install %s), or set %s to their folder",
                o->bin_dir != NULL ? o->bin_dir
                                   : DEBIAN_PG_ROOT "/*/bin or PATH",
                LPG_PACKAGE, LPG_PACKAGE, LPG_BINDIR_ENV);
}

/* ------------------------------------------------------------------------
 * The user the cluster runs as
 * ------------------------------------------------------------------------ */

/* Fill *u from the password entry of `name` (or of `uid` when name is NULL);
   false when there is none. */
static bool lookup_user(const char *name, uid_t uid, run_as *u)
{
    struct passwd pw, *res = NULL;
    char buf[16384];
    if (name != NULL)
        getpwnam_r(name, &pw, buf, sizeof buf, &res);
    else
        getpwuid_r(uid, &pw, buf, sizeof buf, &res);
    if (res == NULL)
        return false;
    u->uid = pw.pw_uid;
    u->gid = pw.pw_gid;
    snprintf(u->name, sizeof u->name, "%s", pw.pw_name);
    snprintf(u->home, sizeof u->home, "%s", pw.pw_dir ? pw.pw_dir : "/");
    /* Computed here because initgroups() is not safe after fork. */
    u->ngroups = MAX_GROUPS;
    if (getgrouplist(pw.pw_name, pw.pw_gid, u->groups, &u->ngroups) < 0) {
        u->groups[0] = pw.pw_gid;
        u->ngroups = 1;
    }
    return true;
}

static lpg_status choose_user(lpg_cluster *c, const lpg_options *o,
                              const char *abs_dir, lpg_error *err)
{
    run_as *u = &c->user;
    struct stat st;
    if (geteuid() != 0) {
        u->drop = false;
        u->uid = geteuid();
        u->gid = getegid();
        return LPG_OK;
    }
    u->drop = true;
    bool found;
    if (o->run_as_user != NULL)
        found = lookup_user(o->run_as_user, 0, u);
    else if (c->has_cluster && stat(abs_dir, &st) == 0 && st.st_uid != 0)
        found = lookup_user(NULL, st.st_uid, u);
    else
        found = lookup_user("postgres", 0, u) || lookup_user("nobody", 0, u);
    if (!found)
        return fail(err, LPG_NO_USER,
                    "running as root, PostgreSQL needs an unprivileged user "
                    "to run as, and %s%s%s does not exist",
                    o->run_as_user ? "user '" : "the owner of ",
                    o->run_as_user ? o->run_as_user : abs_dir,
                    o->run_as_user ? "'" : "");
    if (u->uid == 0)
        return fail(err, LPG_NO_USER,
                    "user '%s' is root: PostgreSQL refuses to run as root",
                    u->name);
    return LPG_OK;
}

/* ------------------------------------------------------------------------
 * Creating and checking the data folder
 * ------------------------------------------------------------------------ */

/* mkdir -p of the folders above `path`.  When root, the ones we create get
   mode 0711 whatever the umask, so that the run-as user can pass through. */
static lpg_status make_parents(const char *path, bool root, lpg_error *err)
{
    char buf[PATH_MAX];
    snprintf(buf, sizeof buf, "%s", path);
    char *last = strrchr(buf, '/');
    for (char *p = strchr(buf + 1, '/'); p != NULL && p <= last;
         p = strchr(p + 1, '/')) {
        *p = '\0';
        if (mkdir(buf, 0755) == 0) {
            if (root && chmod(buf, 0711) != 0)
                return fail_errno(err, LPG_DATA_DIR, "cannot chmod", buf);
        } else if (errno != EEXIST) {
            return fail_errno(err, LPG_DATA_DIR, "cannot create", buf);
        }
        *p = '/';
    }
    return LPG_OK;
}

static bool dir_is_empty(const char *path)
{
    DIR *d = opendir(path);
    if (d == NULL)
        return false;
    struct dirent *e;
    bool empty = true;
    while (empty && (e = readdir(d)) != NULL)
        empty = strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0;
    closedir(d);
    return empty;
}

/* Does another process hold the folder's lock (see lock_data_dir)? */
static bool folder_locked(const char *path)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return false;
    bool locked = flock(fd, LOCK_EX | LOCK_NB) != 0 && errno == EWOULDBLOCK;
    close(fd);
    return locked;
}

/* An existing folder: owned by the run-as user (an empty one is handed
   over when we are root), and a cluster or empty.  Ownership first: a
   folder we may not read would otherwise look like a non-empty one. */
static lpg_status check_existing_dir(lpg_cluster *c, const char *path,
                                     lpg_error *err)
{
    struct stat st;
    if (stat(path, &st) != 0)
        return fail_errno(err, LPG_DATA_DIR, "cannot stat", path);
    if (!S_ISDIR(st.st_mode))
        return fail(err, LPG_DATA_DIR, "data folder %s is not a folder", path);
    bool mine = st.st_uid == c->user.uid;
    if (!mine && (c->has_cluster || !c->user.drop))
        return fail(err, LPG_DATA_DIR,
                    "data folder %s belongs to uid %ld, but PostgreSQL would "
                    "run as uid %ld%s%s%s",
                    path, (long)st.st_uid, (long)c->user.uid,
                    c->user.drop ? " ('" : "", c->user.drop ? c->user.name : "",
                    c->user.drop ? "')" : "");
    if (!c->has_cluster && !dir_is_empty(path) && folder_locked(path))
        return fail(err, LPG_BUSY,
                    "data folder %s is being set up by another process",
                    path);
    if (!c->has_cluster && !dir_is_empty(path))
        return fail(err, LPG_DATA_DIR,
                    "data folder %s is not empty and holds no PostgreSQL "
                    "cluster (no PG_VERSION): refusing to touch it; choose "
                    "an empty or new folder",
                    path);
    if (!mine && (chown(path, c->user.uid, c->user.gid) != 0 ||
                  chmod(path, 0700) != 0))
        return fail_errno(err, LPG_DATA_DIR, "cannot hand over", path);
    return LPG_OK;
}

static lpg_status ensure_data_dir(lpg_cluster *c, const char *abs_dir,
                                  lpg_error *err)
{
    lpg_status st = make_parents(abs_dir, c->user.drop, err);
    if (st != LPG_OK)
        return st;
    if (mkdir(abs_dir, 0700) == 0) {
        if (c->user.drop && chown(abs_dir, c->user.uid, c->user.gid) != 0)
            return fail_errno(err, LPG_DATA_DIR, "cannot chown", abs_dir);
    } else if (errno != EEXIST) {
        return fail_errno(err, LPG_DATA_DIR, "cannot create", abs_dir);
    } else if ((st = check_existing_dir(c, abs_dir, err)) != LPG_OK) {
        return st;
    }
    char real[PATH_MAX];
    if (realpath(abs_dir, real) == NULL)
        return fail_errno(err, LPG_DATA_DIR, "cannot resolve", abs_dir);
    if ((st = check_path(real, err)) != LPG_OK)
        return st;
    c->data_dir = strdup(real);
    return c->data_dir ? LPG_OK : fail(err, LPG_NOMEM, "out of memory");
}

/* flock() on the folder itself: released by the kernel when the process
   dies, so a killed run never leaves the folder locked.  O_CLOEXEC (and the
   children closing every fd) keeps the server from inheriting it. */
static lpg_status lock_data_dir(lpg_cluster *c, lpg_error *err)
{
    c->lock_fd = open(c->data_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (c->lock_fd < 0)
        return fail_errno(err, LPG_DATA_DIR, "cannot open", c->data_dir);
    if (flock(c->lock_fd, LOCK_EX | LOCK_NB) == 0) {
        /* Decide on initdb under the lock: another process may have run it
           since we looked. */
        char version[32];
        c->has_cluster = read_small_file(c->data_dir, "PG_VERSION", version,
                                         sizeof version);
        return LPG_OK;
    }
    if (errno == EWOULDBLOCK)
        return fail(err, LPG_BUSY,
                    "data folder %s is in use by another process that owns "
                    "its server; stop it or choose another folder",
                    c->data_dir);
    return fail_errno(err, LPG_SYSTEM, "cannot lock", c->data_dir);
}

/* ------------------------------------------------------------------------
 * Child processes: initdb, pg_ctl, and the reachability probe
 * ------------------------------------------------------------------------ */

/* What a child runs, and what run_child() sets up for it. */
typedef struct child_spec {
    const char *const *argv; /* absolute argv[0]; NULL: run the probe */
    const char *probe_path;  /* with argv NULL: the folder to reach */
    const char *input;       /* NULL, or the text the child reads on stdin */
    /* filled by run_child() and spawn() */
    const char *cwd;
    const run_as *user;
    char **envp;
    int max_fd;
    int devnull;
    int out_fd;
} child_spec;

/* Only async-signal-safe calls from here to execve: the parent may have
   threads, and another thread may hold malloc's or stdio's locks. */
static void child_say(const char *what)
{
    int e = errno;
    char num[16];
    size_t i = sizeof num;
    num[--i] = '\n';
    do {
        num[--i] = (char)('0' + e % 10);
        e /= 10;
    } while (e > 0 && i > 0);
    if (write(2, "localpg child: ", 15) < 0 ||
        write(2, what, strlen(what)) < 0 || write(2, ": errno ", 8) < 0 ||
        write(2, num + i, sizeof num - i) < 0)
        return;
}

static void child_close_fds(int max_fd)
{
#ifdef SYS_close_range
    if (syscall(SYS_close_range, 3U, ~0U, 0U) == 0)
        return;
#endif
    for (int fd = 3; fd < max_fd; fd++)
        close(fd);
}

/* Signals ignored or blocked by our process would be inherited through
   exec; give the child a clean slate. */
static void child_reset_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_DFL;
    sigemptyset(&sa.sa_mask);
    for (int s = 1; s < NSIG; s++)
        sigaction(s, &sa, NULL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
}

static int child_switch_user(const run_as *u)
{
    if (setgroups((size_t)u->ngroups, u->groups) != 0)
        return -1;
    if (setgid(u->gid) != 0 || setuid(u->uid) != 0)
        return -1;
    return 0;
}

/* Walk the path as the run-as user; print the first folder it cannot enter
   (or the data folder itself if it cannot write there) and exit 1. */
_Noreturn static void child_probe(const char *path)
{
    char buf[PATH_MAX];
    size_t len = strlen(path);
    if (len >= sizeof buf)
        _exit(2);
    memcpy(buf, path, len + 1);
    for (size_t i = 1; i <= len; i++) {
        if (buf[i] != '/' && buf[i] != '\0')
            continue;
        char saved = buf[i];
        buf[i] = '\0';
        int mode = saved == '\0' ? (R_OK | W_OK | X_OK) : X_OK;
        if (access(buf, mode) != 0) {
            if (write(1, buf, strlen(buf)) < 0)
                _exit(1);
            _exit(1);
        }
        buf[i] = saved;
    }
    _exit(0);
}

/* Stdin from a pipe holding `text` (less than a pipe buffer).  Made after
   the switch of user, so that the child may reopen it as /dev/stdin. */
static int child_stdin_text(const char *text)
{
    int p[2];
    size_t len = strlen(text);
    if (pipe(p) != 0 || write(p[1], text, len) != (ssize_t)len)
        return -1;
    close(p[1]);
    if (dup2(p[0], 0) < 0)
        return -1;
    close(p[0]);
    return 0;
}

_Noreturn static void child_main(const child_spec *cs)
{
    if (dup2(cs->devnull, 0) < 0 || dup2(cs->out_fd, 1) < 0 ||
        dup2(cs->out_fd, 2) < 0)
        _exit(127);
    child_close_fds(cs->max_fd);
    child_reset_signals();
    if (cs->user->drop && child_switch_user(cs->user) != 0) {
        child_say("cannot switch to the run-as user");
        _exit(127);
    }
    if (cs->argv == NULL)
        child_probe(cs->probe_path);
    if (cs->input != NULL && child_stdin_text(cs->input) != 0) {
        child_say("cannot fill stdin");
        _exit(127);
    }
    if (chdir(cs->cwd) != 0) {
        child_say("cannot enter the data folder");
        _exit(127);
    }
    /* execve takes char *const[] for historical reasons; it writes nothing. */
    execve(cs->argv[0], (char *const *)(uintptr_t)cs->argv, cs->envp);
    child_say("cannot run the PostgreSQL binary");
    _exit(127);
}

static bool env_skip(const char *e, bool drop)
{
    /* PGDATA, PGPORT, PGHOST... would change what initdb, pg_ctl and the
       server do (a test harness exports them for another server). */
    if (strncmp(e, "PG", 2) == 0)
        return true;
    /* Under systemd, a postmaster that finds NOTIFY_SOCKET reports its own
       readiness to the service manager, which takes it from the unit's
       main process only and logs the rest as noise. */
    if (strncmp(e, "NOTIFY_SOCKET=", 14) == 0)
        return true;
    return drop && (strncmp(e, "HOME=", 5) == 0 ||
                    strncmp(e, "USER=", 5) == 0 ||
                    strncmp(e, "LOGNAME=", 8) == 0);
}

static void free_env(char **envp)
{
    for (size_t i = 0; envp != NULL && envp[i] != NULL; i++)
        free(envp[i]);
    free(envp);
}

/* Our environment minus the above, plus the run-as user's identity.  A copy
   made for each child: environ may change between calls. */
static char **build_env(const run_as *u)
{
    size_t n = 0;
    while (environ != NULL && environ[n] != NULL)
        n++;
    char **envp = calloc(n + 4, sizeof *envp);
    if (envp == NULL)
        return NULL;
    size_t k = 0;
    bool ok = true;
    for (size_t i = 0; i < n && ok; i++)
        if (!env_skip(environ[i], u->drop))
            ok = (envp[k++] = strdup(environ[i])) != NULL;
    if (ok && u->drop) {
        ok = (envp[k++] = xfmt("HOME=%s", u->home)) != NULL &&
             (envp[k++] = xfmt("USER=%s", u->name)) != NULL &&
             (envp[k++] = xfmt("LOGNAME=%s", u->name)) != NULL;
    }
    if (!ok) {
        free_env(envp);
        return NULL;
    }
    return envp;
}

/* A pipe whose ends do not leak into children started by other threads. */
static int cloexec_pipe(int fds[2])
{
#ifdef SYS_pipe2
    if (syscall(SYS_pipe2, fds, O_CLOEXEC) == 0)
        return 0;
#endif
    if (pipe(fds) != 0)
        return -1;
    fcntl(fds[0], F_SETFD, FD_CLOEXEC);
    fcntl(fds[1], F_SETFD, FD_CLOEXEC);
    return 0;
}

/* Append a chunk to the tail buffer, dropping its oldest bytes. */
static void tail_append(char *tail, size_t cap, const char *chunk, size_t n)
{
    size_t len = strlen(tail);
    if (n > cap - 1) {
        chunk += n - (cap - 1);
        n = cap - 1;
    }
    if (len + n > cap - 1) {
        size_t drop = len + n - (cap - 1);
        memmove(tail, tail + drop, len - drop);
        len -= drop;
    }
    memcpy(tail + len, chunk, n);
    tail[len + n] = '\0';
}

/* Read the child's output until EOF or the deadline; false on timeout. */
static bool collect_output(int fd, long long deadline, bool verbose,
                           char *tail, size_t cap)
{
    char chunk[512];
    tail[0] = '\0';
    for (;;) {
        long long left = deadline - now_ms();
        if (left <= 0)
            return false;
        struct pollfd p = {fd, POLLIN, 0};
        int r = poll(&p, 1, (int)(left > INT_MAX ? INT_MAX : left));
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return r < 0; /* a poll error ends reading; 0 is a timeout */
        ssize_t n = read(fd, chunk, sizeof chunk);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return true;
        if (verbose && write(2, chunk, (size_t)n) < 0)
            verbose = false;
        tail_append(tail, cap, chunk, (size_t)n);
    }
}

static int wait_child(pid_t pid)
{
    int status;
    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR)
            return -1;
    }
    if (WIFEXITED(status))
        return WEXITSTATUS(status);
    return 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
}

static lpg_status spawn(child_spec *cs, pid_t *pid, int *out, lpg_error *err)
{
    int fds[2];
    cs->devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (cs->devnull < 0)
        return fail_errno(err, LPG_SYSTEM, "cannot open", "/dev/null");
    if (cloexec_pipe(fds) != 0) {
        close(cs->devnull);
        return fail_errno(err, LPG_SYSTEM, "cannot create", "a pipe");
    }
    cs->out_fd = fds[1];
    long max_fd = sysconf(_SC_OPEN_MAX);
    cs->max_fd = (max_fd < 0 || max_fd > 65536) ? 65536 : (int)max_fd;
    *pid = fork();
    if (*pid == 0)
        child_main(cs);
    int fork_errno = errno;
    close(fds[1]);
    close(cs->devnull);
    if (*pid < 0) {
        close(fds[0]);
        errno = fork_errno;
        return fail_errno(err, LPG_SYSTEM, "cannot fork for", "a child");
    }
    *out = fds[0];
    return LPG_OK;
}

/*
 * Run a child as the run-as user in the data folder, keep the tail of its
 * output, and give its exit code (128+signal when killed).  The child is
 * killed when timeout_s passes.
 */
static lpg_status run_child(const lpg_cluster *c, child_spec *cs,
                            int timeout_s, int *code, char *tail, size_t cap,
                            lpg_error *err)
{
    const char *const *argv = cs->argv;
    cs->cwd = c->data_dir;
    cs->user = &c->user;
    cs->envp = build_env(&c->user);
    if (cs->envp == NULL)
        return fail(err, LPG_NOMEM, "out of memory");
    pid_t pid = -1;
    int out = -1;
    lpg_status st = spawn(cs, &pid, &out, err);
    free_env(cs->envp);
    if (st != LPG_OK)
        return st;
    long long deadline = now_ms() + (long long)timeout_s * 1000;
    bool done =
        collect_output(out, deadline, c->verbose && argv != NULL, tail, cap);
    close(out);
    if (!done)
        kill(pid, SIGKILL);
    *code = wait_child(pid);
    if (*code < 0)
        return fail_errno(err, LPG_SYSTEM, "cannot wait for", argv ? argv[0]
                                                                    : "probe");
    if (!done)
        return fail(err, LPG_SYSTEM, "%s did not finish within %d s",
                    argv ? argv[0] : "probe", timeout_s);
    return LPG_OK;
}

/* Every folder above the data folder must be searchable by the run-as user
   (PostgreSQL enters it by its absolute path).  Rather than chmod the
   caller's folders (say /root), name the one that blocks. */
static lpg_status probe_reachable(lpg_cluster *c, lpg_error *err)
{
    char tail[PATH_MAX + 64];
    int code;
    if (!c->user.drop)
        return LPG_OK;
    child_spec cs = {.argv = NULL, .probe_path = c->data_dir};
    lpg_status st =
        run_child(c, &cs, c->timeout_s, &code, tail, sizeof tail, err);
    if (st != LPG_OK || code == 0)
        return st;
    return fail(err, LPG_DATA_DIR,
                "data folder %s cannot be reached by user '%s' (uid %ld), "
                "which runs PostgreSQL because this process is root: it "
                "cannot enter %s.  Choose a data folder that user can reach "
                "(e.g. under /var/lib or /srv), or let it pass (chmod o+x %s)",
                c->data_dir, c->user.name, (long)c->user.uid,
                code == 1 && tail[0] ? tail : "a folder on the way",
                code == 1 && tail[0] ? tail : "<that folder>");
}

/* ------------------------------------------------------------------------
 * initdb
 * ------------------------------------------------------------------------ */

/* 24 characters from [A-Za-z0-9]: about 142 bits, nothing to quote. */
static lpg_status make_password(char out[PASSWORD_LEN + 1], lpg_error *err)
{
    static const char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    unsigned char raw[128];
    size_t k = 0;
    if (getentropy(raw, sizeof raw) != 0)
        return fail_errno(err, LPG_SYSTEM, "getentropy", "failed");
    for (size_t i = 0; i < sizeof raw && k < PASSWORD_LEN; i++)
        if (raw[i] < 248) /* 248 = 4 * 62: no modulo bias */
            out[k++] = alphabet[raw[i] % 62];
    out[k] = '\0';
    if (k < PASSWORD_LEN)
        return fail(err, LPG_SYSTEM, "not enough random bytes");
    return LPG_OK;
}

/* Write `text` to an open file given to the run-as user, then close it. */
static bool write_owned(int fd, const run_as *u, const char *text)
{
    size_t len = strlen(text);
    bool ok = fd >= 0 && (!u->drop || fchown(fd, u->uid, u->gid) == 0) &&
              write(fd, text, len) == (ssize_t)len;
    if (fd >= 0 && close(fd) != 0)
        ok = false;
    return ok;
}

static lpg_status save_password(const lpg_cluster *c, lpg_error *err)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", c->data_dir, PASSWORD_FILE);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (!write_owned(fd, &c->user, c->password))
        return fail_errno(err, LPG_SYSTEM, "cannot write", path);
    return LPG_OK;
}

/*
 * Unix-socket connections are trusted: the socket sits in the data folder,
 * which only the run-as user (and root) can enter.  TCP ones, possible from
 * any local user once tcp_port is set, need the superuser's password.
 * --no-locale: the same collation everywhere, and no dependency on which
 * locales the machine has.  fsync stays on.
 */
static lpg_status run_initdb(lpg_cluster *c, lpg_error *err)
{
    char tail[OUTPUT_TAIL], said[LPG_ERROR_SIZE / 2], input[PASSWORD_LEN + 2];
    lpg_status st = make_password(c->password, err);
    if (st != LPG_OK)
        return st;
    /* The password goes through a pipe, never a file: nothing is left
       behind if we are killed while initdb runs. */
    snprintf(input, sizeof input, "%s\n", c->password);
    char *initdb = xfmt("%s/initdb", c->bin_dir);
    const char *argv[] = {initdb, "-D", c->data_dir, "-U", LPG_SUPERUSER,
                          "--auth-local=trust", "--auth-host=scram-sha-256",
                          "--pwfile=/dev/stdin", "-E", "UTF8", "--no-locale",
                          NULL};
    child_spec cs = {.argv = argv, .input = input};
    int code = -1;
    if (initdb == NULL)
        return fail(err, LPG_NOMEM, "out of memory");
    st = run_child(c, &cs, c->timeout_s, &code, tail, sizeof tail, err);
    free(initdb);
    if (st == LPG_OK && code != 0) {
        squeeze_tail(tail, said, sizeof said);
        return fail(err, LPG_INITDB, "initdb in %s failed (exit %d): %s",
                    c->data_dir, code, said);
    }
    return st == LPG_OK ? save_password(c, err) : st;
}

/* ------------------------------------------------------------------------
 * Server processes, found through /proc
 * ------------------------------------------------------------------------ */

static pid_t read_postmaster_pid(const char *dir)
{
    char buf[64];
    if (!read_small_file(dir, "postmaster.pid", buf, sizeof buf))
        return 0;
    long pid = strtol(buf, NULL, 10);
    return pid > 0 && pid <= INT_MAX ? (pid_t)pid : 0;
}

/*
 * Is `pid` a PostgreSQL process of this data folder?  Every one of them
 * (postmaster and children) works in the data folder, and runs a binary
 * named postgres.  So does an initdb we started (child_main sets its working
 * folder): it outlives a run killed under it (it ignores SIGPIPE) and must
 * be let finish.  A zombie or a process that reused the PID fails this,
 * which is what keeps us from signalling an unrelated process.
 */
static bool is_server_proc(pid_t pid, const char *dir)
{
    char link[64], target[PATH_MAX];
    snprintf(link, sizeof link, "/proc/%ld/cwd", (long)pid);
    ssize_t n = readlink(link, target, sizeof target - 1);
    if (n < 0)
        return false;
    target[n] = '\0';
    if (strcmp(target, dir) != 0)
        return false;
    snprintf(link, sizeof link, "/proc/%ld/exe", (long)pid);
    n = readlink(link, target, sizeof target - 1);
    if (n < 0)
        return false;
    target[n] = '\0';
    const char *base = strrchr(target, '/');
    base = base ? base + 1 : target;
    return strncmp(base, "postgres", 8) == 0 || strncmp(base, "initdb", 6) == 0;
}

/* Some server process of this folder, or 0 when there is none. */
static pid_t find_server_proc(const char *dir)
{
    DIR *d = opendir("/proc");
    if (d == NULL)
        return 0;
    pid_t found = 0;
    struct dirent *e;
    while (found == 0 && (e = readdir(d)) != NULL) {
        char *end;
        long pid = strtol(e->d_name, &end, 10);
        if (*end == '\0' && pid > 0 && pid != (long)getpid() &&
            is_server_proc((pid_t)pid, dir))
            found = (pid_t)pid;
    }
    closedir(d);
    return found;
}

/* Poll (bounded by the deadline) until no server process of the folder is
   left; the one still there, or 0. */
static pid_t wait_server_gone(const char *dir, int timeout_s)
{
    long long deadline = now_ms() + (long long)timeout_s * 1000;
    pid_t left;
    while ((left = find_server_proc(dir)) != 0 && now_ms() < deadline)
        sleep_ms(POLL_MS);
    return left;
}

static bool postmaster_running(const lpg_cluster *c)
{
    pid_t pid = read_postmaster_pid(c->data_dir);
    return pid > 0 && is_server_proc(pid, c->data_dir);
}

/* ------------------------------------------------------------------------
 * pg_ctl start / stop
 * ------------------------------------------------------------------------ */

static lpg_status run_pg_ctl(const lpg_cluster *c, const char *const *args,
                             int *code, char *tail, size_t cap, lpg_error *err)
{
    char *pg_ctl = xfmt("%s/pg_ctl", c->bin_dir);
    char timeout[16];
    snprintf(timeout, sizeof timeout, "%d", c->timeout_s);
    const char *argv[16] = {pg_ctl, args[0], "-D", c->data_dir, "-w", "-t",
                            timeout, "-s"};
    size_t n = 8;
    for (size_t i = 1; args[i] != NULL && n < 15; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    child_spec cs = {.argv = argv};
    lpg_status st = pg_ctl == NULL
                        ? fail(err, LPG_NOMEM, "out of memory")
                        : run_child(c, &cs, c->timeout_s + 10, code, tail,
                                    cap, err);
    free(pg_ctl);
    return st;
}

/* pg_ctl stop -m mode, then wait until every server process is gone. */
static lpg_status stop_server(const lpg_cluster *c, const char *mode,
                              lpg_error *err)
{
    char tail[OUTPUT_TAIL], said[LPG_ERROR_SIZE / 2];
    int code = 0;
    const char *args[] = {"stop", "-m", mode, NULL};
    lpg_status st = LPG_OK;
    if (postmaster_running(c))
        st = run_pg_ctl(c, args, &code, tail, sizeof tail, err);
    if (st != LPG_OK)
        return st;
    pid_t left = wait_server_gone(c->data_dir, c->timeout_s);
    if (left == 0)
        return LPG_OK;
    squeeze_tail(code != 0 ? tail : "", said, sizeof said);
    return fail(err, LPG_STOP,
                "the server in %s did not stop (-m %s): process %ld is still "
                "there%s%s",
                c->data_dir, mode, (long)left, said[0] ? ": " : "", said);
}

/*
 * What a killed run may have left, cleared while we hold the folder's lock
 * (so it is no other live program's):
 *  - a running server (our program was killed, its server was not): stopped,
 *    then started again below with the current options;
 *  - the processes of a killed server: PostgreSQL will not start while they
 *    hold its shared memory, and they exit by themselves once they see the
 *    postmaster gone: waited for;
 *  - postmaster.pid and the socket lock files naming a dead postmaster:
 *    PostgreSQL removes them itself unless the PID now belongs to another
 *    process, in which case it refuses to start.  With no server process of
 *    this folder left they are stale for sure: removed.
 */
static lpg_status clear_leftovers(lpg_cluster *c, lpg_error *err)
{
    lpg_status st = stop_server(c, "fast", err);
    if (st == LPG_STOP && postmaster_running(c))
        st = stop_server(c, "immediate", err);
    if (st == LPG_STOP)
        err->status = st = LPG_BUSY;
    if (st != LPG_OK)
        return st;
    DIR *d = opendir(c->data_dir);
    if (d == NULL)
        return fail_errno(err, LPG_DATA_DIR, "cannot read", c->data_dir);
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, "postmaster.pid") == 0 ||
            strncmp(e->d_name, ".s.PGSQL.", 9) == 0)
            unlinkat(dirfd(d), e->d_name, 0);
    }
    closedir(d);
    return LPG_OK;
}

/* Size of the server's log (appended to across runs), 0 if none yet. */
static long log_size(const lpg_cluster *c)
{
    char path[PATH_MAX];
    struct stat st;
    snprintf(path, sizeof path, "%s/%s", c->data_dir, LOG_FILE);
    return stat(path, &st) == 0 ? (long)st.st_size : 0;
}

/* Tell why the server did not start: what this attempt wrote to its log
   (from offset `since`), else pg_ctl's own output. */
static lpg_status start_failed(const lpg_cluster *c, int code, long since,
                               const char *out, lpg_error *err)
{
    char log[OUTPUT_TAIL], said[LPG_ERROR_SIZE / 2];
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", c->data_dir, LOG_FILE);
    log[0] = '\0';
    FILE *f = fopen(path, "re");
    if (f != NULL) {
        long size = fseek(f, 0, SEEK_END) == 0 ? ftell(f) : 0;
        long from = size - (long)sizeof log + 1;
        if (from < since)
            from = since;
        if (from >= 0 && fseek(f, from, SEEK_SET) == 0)
            log[fread(log, 1, sizeof log - 1, f)] = '\0';
        fclose(f);
    }
    squeeze_tail(log[0] ? log : out, said, sizeof said);
    return fail(err, LPG_START,
                "PostgreSQL did not start in %s (pg_ctl exit %d; log %s): %s",
                c->data_dir, code, path, said);
}

/* The server's settings go on its command line, nothing is written into
   postgresql.conf: no TCP unless asked, and then on 127.0.0.1 only. */
static char *server_options(const lpg_cluster *c)
{
    char maxconn[32] = "";
    if (c->max_connections > 0)
        snprintf(maxconn, sizeof maxconn, " -N %d", c->max_connections);
    return xfmt("-p %d -k '%s' -h '%s'%s", c->port, c->data_dir,
                c->tcp_port > 0 ? "127.0.0.1" : "", maxconn);
}

static lpg_status start_server(lpg_cluster *c, lpg_error *err)
{
    char tail[OUTPUT_TAIL];
    char *opts = server_options(c);
    char *log = xfmt("%s/%s", c->data_dir, LOG_FILE);
    const char *args[] = {"start", "-l", log, "-o", opts, NULL};
    long since = log_size(c);
    int code = -1;
    lpg_status st = (opts == NULL || log == NULL)
                        ? fail(err, LPG_NOMEM, "out of memory")
                        : run_pg_ctl(c, args, &code, tail, sizeof tail, err);
    free(opts);
    free(log);
    if (st == LPG_OK && code != 0)
        st = start_failed(c, code, since, tail, err);
    if (st != LPG_OK) {
        lpg_error ignored;
        stop_server(c, "immediate", &ignored); /* a half-started server */
        return st;
    }
    c->pid = read_postmaster_pid(c->data_dir);
    return LPG_OK;
}

/* ------------------------------------------------------------------------
 * The handle
 * ------------------------------------------------------------------------ */

static void cluster_free(lpg_cluster *c)
{
    if (c->lock_fd >= 0)
        close(c->lock_fd); /* releases the flock */
    free(c->data_dir);
    free(c->bin_dir);
    free(c->conninfo);
    free(c->conninfo_tcp);
    free(c);
}

static lpg_status build_conninfo(lpg_cluster *c, lpg_error *err)
{
    /* The path has no quote or backslash (check_path), so quoting is
       enough for libpq even with spaces in it. */
    c->conninfo = xfmt("host='%s' port=%d user=%s dbname=%s", c->data_dir,
                       c->port, LPG_SUPERUSER, LPG_DBNAME);
    if (c->tcp_port > 0)
        c->conninfo_tcp =
            xfmt("host=127.0.0.1 port=%d user=%s dbname=%s%s%s", c->port,
                 LPG_SUPERUSER, LPG_DBNAME, c->password[0] ? " password=" : "",
                 c->password);
    if (c->conninfo == NULL || (c->tcp_port > 0 && c->conninfo_tcp == NULL))
        return fail(err, LPG_NOMEM, "out of memory");
    return LPG_OK;
}

/* initdb writes PG_VERSION first and global/pg_control last: a folder with
   the one and not the other is a cluster that initdb did not finish. */
static lpg_status check_complete(const lpg_cluster *c, lpg_error *err)
{
    char path[PATH_MAX];
    struct stat st;
    snprintf(path, sizeof path, "%s/global/pg_control", c->data_dir);
    if (!c->has_cluster || stat(path, &st) == 0)
        return LPG_OK;
    return fail(err, LPG_DATA_DIR,
                "data folder %s holds an incomplete cluster (PG_VERSION but "
                "no global/pg_control: initdb was interrupted?); remove the "
                "folder to start afresh",
                c->data_dir);
}

/* Binaries, user, folder, lock: everything before any server runs. */
static lpg_status prepare(lpg_cluster *c, const lpg_options *o,
                          lpg_error *err)
{
    char *abs_dir = data_dir_path(o->data_dir ? o->data_dir
                                              : LPG_DEFAULT_DATA_DIR);
    if (abs_dir == NULL)
        return fail(err, LPG_NOMEM, "cannot make the data folder's path "
                                    "absolute");
    char version[32] = "";
    c->has_cluster = read_small_file(abs_dir, "PG_VERSION", version,
                                     sizeof version);
    lpg_status st = check_path(abs_dir, err);
    if (st == LPG_OK)
        st = find_binaries(c, o, version, err);
    if (st == LPG_OK)
        st = choose_user(c, o, abs_dir, err);
    if (st == LPG_OK)
        st = ensure_data_dir(c, abs_dir, err);
    free(abs_dir);
    if (st == LPG_OK)
        st = lock_data_dir(c, err);
    if (st == LPG_OK)
        st = probe_reachable(c, err);
    return st;
}

static lpg_cluster *cluster_new(const lpg_options *o)
{
    lpg_cluster *c = calloc(1, sizeof *c);
    if (c == NULL)
        return NULL;
    c->lock_fd = -1;
    c->tcp_port = o->tcp_port;
    c->port = o->tcp_port > 0 ? o->tcp_port : LPG_DEFAULT_PORT;
    c->max_connections = o->max_connections;
    c->timeout_s = o->timeout_s > 0 ? o->timeout_s : DEFAULT_TIMEOUT_S;
    c->verbose = o->verbose;
    return c;
}

lpg_status lpg_start(const lpg_options *opts, lpg_cluster **out,
                     lpg_error *err)
{
    lpg_error local;
    if (err == NULL)
        err = &local;
    lpg_status st = check_options(opts, err);
    if (st != LPG_OK)
        return st;
    lpg_cluster *c = cluster_new(opts);
    if (c == NULL)
        return fail(err, LPG_NOMEM, "out of memory");
    st = prepare(c, opts, err);
    if (st == LPG_OK && !c->has_cluster) {
        st = run_initdb(c, err);
        c->created = c->has_cluster = st == LPG_OK;
    } else if (st == LPG_OK) {
        read_small_file(c->data_dir, PASSWORD_FILE, c->password,
                        sizeof c->password);
    }
    if (st == LPG_OK)
        st = clear_leftovers(c, err);
    if (st == LPG_OK)
        st = check_complete(c, err); /* once an orphaned initdb is done */
    if (st == LPG_OK)
        st = start_server(c, err);
    if (st == LPG_OK && (st = build_conninfo(c, err)) != LPG_OK)
        stop_server(c, "fast", &local);
    if (st != LPG_OK) {
        cluster_free(c);
        return st;
    }
    *out = c;
    return LPG_OK;
}

lpg_status lpg_stop(lpg_cluster *c, lpg_error *err)
{
    lpg_error local;
    if (err == NULL)
        err = &local;
    if (c == NULL)
        return LPG_OK;
    lpg_status st = stop_server(c, "fast", err);
    if (st == LPG_STOP && postmaster_running(c))
        st = stop_server(c, "immediate", err);
    cluster_free(c);
    return st;
}

const char *lpg_conninfo(const lpg_cluster *c)
{
    return c->conninfo;
}

const char *lpg_conninfo_tcp(const lpg_cluster *c)
{
    return c->conninfo_tcp;
}

const char *lpg_data_dir(const lpg_cluster *c)
{
    return c->data_dir;
}

int lpg_port(const lpg_cluster *c)
{
    return c->port;
}

bool lpg_created(const lpg_cluster *c)
{
    return c->created;
}

pid_t lpg_server_pid(const lpg_cluster *c)
{
    return c->pid;
}
