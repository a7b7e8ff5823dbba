/*
 * localpg.h — start and own a local PostgreSQL cluster in a data folder of
 * its own, for the programs (pgtx-race, pgtx-shop) when no database is given.
 *
 * What it does, in order, on lpg_start():
 *  - finds the server binaries (initdb, pg_ctl, postgres): options.bin_dir
 *    (PGTX_PG_BINDIR), else /usr/lib/postgresql/<version>/bin (the version
 *    of an existing cluster first, then the highest), else PATH;
 *  - creates the data folder on first use and runs initdb in it (superuser
 *    "postgres"; unix-socket connections trusted, TCP ones need a password
 *    generated at initdb and kept in the folder), or reuses the cluster that
 *    is already there (a PG_VERSION file present: no initdb);
 *  - takes a lock on the folder for the lifetime of the handle, so two
 *    programs never drive one cluster; a server left running by a run that
 *    was killed is stopped and started again with the current options, and
 *    the stale postmaster.pid of a killed server is cleared (even when its
 *    PID has been reused by an unrelated process, which is never signalled);
 *  - starts the server (pg_ctl start -w) listening on a unix socket inside
 *    the data folder, and on 127.0.0.1 only when options.tcp_port asks.  Its
 *    log is appended to server.log in the data folder.
 *
 * The server runs in a session of its own (pg_ctl's doing): a Ctrl-C sent to
 * the program's process group does not reach it, lpg_stop() stops it.  If
 * the program dies without lpg_stop(), the server keeps running until the
 * next lpg_start() on the folder stops it and starts it afresh.
 *
 * When the process is root, the cluster is owned by and runs as an
 * unprivileged user (PostgreSQL refuses root): options.run_as_user, else the
 * owner of an existing cluster, else "postgres", else "nobody".  The data
 * folder (mode 0700, that user's) keeps the socket private: only that user
 * and root can connect through it.  Every folder above the data folder must
 * be searchable by that user; lpg_start checks this and names the folder
 * that blocks it (a data folder under /root, mode 0700, is the usual case).
 *
 * Conventions (those of pgtx.h):
 *  - Functions that can fail return lpg_status: LPG_OK (0) on success, or a
 *    non-zero status with *err (when not NULL) holding the status and a
 *    message meant for a human; out-parameters are untouched on failure.
 *  - lpg_start() returns a handle the caller owns and releases with
 *    lpg_stop().  Strings returned by accessors are borrowed from the handle
 *    and valid until lpg_stop().
 *  - Nothing is written to stdout or stderr unless options.verbose is set.
 *
 * Limits: Linux only (it reads /proc to tell PostgreSQL's processes from
 * others).  lpg_start and lpg_stop fork and wait for their children, so the
 * process must not ignore SIGCHLD nor reap children it did not start; they
 * may be called from any thread, one call per handle at a time, but never
 * from a signal handler: a program that stops on SIGINT/SIGTERM sets a flag
 * in its handler and calls lpg_stop() from its normal shutdown path.
 */
#ifndef PGTX_LOCALPG_H
#define PGTX_LOCALPG_H

#include <stdbool.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define LPG_MUSTCHECK __attribute__((warn_unused_result))
#else
#define LPG_MUSTCHECK
#endif

/* The data folder used when options.data_dir is NULL; relative to the
   working directory. */
#define LPG_DEFAULT_DATA_DIR ".pgtx/pgdata"
/* Names the unix socket (.s.PGSQL.5432) when no TCP port is asked for; it
   cannot collide with another server since the socket folder is private. */
#define LPG_DEFAULT_PORT 5432
/* The cluster's superuser, created by initdb, and the database to use. */
#define LPG_SUPERUSER "postgres"
#define LPG_DBNAME "postgres"
/* Environment variable read by lpg_options_init() into options.bin_dir. */
#define LPG_BINDIR_ENV "PGTX_PG_BINDIR"
/* The Debian package that provides the server binaries. */
#define LPG_PACKAGE "postgresql"

/* X(name, text): one table generates the enum and lpg_status_name/text. */
#define LPG_STATUS_MAP(X)                                                      \
    X(OK, "success")                                                           \
    X(INVALID, "invalid option")                                               \
    X(NOMEM, "out of memory")                                                  \
    X(NO_BINARIES, "PostgreSQL server binaries not found")                     \
    X(NO_USER, "no unprivileged user to run PostgreSQL as")                    \
    X(DATA_DIR, "the data folder cannot be used")                              \
    X(BUSY, "the data folder is in use by another process")                    \
    X(INITDB, "initdb failed")                                                 \
    X(START, "the PostgreSQL server did not start")                            \
    X(STOP, "the PostgreSQL server did not stop")                              \
    X(SYSTEM, "a system call failed")

typedef enum lpg_status {
#define LPG_X_ENUM(name, text) LPG_##name,
    LPG_STATUS_MAP(LPG_X_ENUM)
#undef LPG_X_ENUM
        LPG_STATUS_COUNT_
} lpg_status;

/* "LPG_NO_BINARIES" etc.; a static string, never NULL. */
const char *lpg_status_name(lpg_status st);
/* A human sentence for the status; a static string, never NULL. */
const char *lpg_status_text(lpg_status st);

/* Room for a sentence plus the last lines of initdb's or the server's log. */
#define LPG_ERROR_SIZE 1024

/* A failure, owned by the caller; the module only writes into it. */
typedef struct lpg_error {
    lpg_status status;
    char message[LPG_ERROR_SIZE];
} lpg_error;

typedef struct lpg_options {
    /* The data folder (PGDATA, and the folder of the unix socket).  Relative
       paths are taken from the working directory.  Created with its parents
       when missing; an existing one must be empty or hold a cluster.  Its
       absolute path may use letters, digits, space and / . _ - + @ % ~ : =
       (pg_ctl hands it to a shell), and must fit a unix socket path (about
       90 bytes).  Default LPG_DEFAULT_DATA_DIR.  Borrowed during lpg_start. */
    const char *data_dir;
    /* 0: unix socket only.  1..65535: also listen on 127.0.0.1:tcp_port
       (never on other addresses); the socket then carries this number. */
    int tcp_port;
    /* Only when the process is root: the user that owns and runs the
       cluster.  NULL: the owner of an existing cluster, else "postgres",
       else "nobody".  Borrowed during lpg_start. */
    const char *run_as_user;
    /* Folder holding initdb, pg_ctl and postgres; NULL searches (see the top
       of this file).  lpg_options_init() sets it from PGTX_PG_BINDIR. */
    const char *bin_dir;
    /* PostgreSQL's max_connections; 0 keeps its default (100). */
    int max_connections;
    /* Upper bound in seconds for each of initdb, starting and stopping the
       server, and waiting for the processes of a killed server to exit;
       0 means 60. */
    int timeout_s;
    /* Copy the output of initdb and pg_ctl to stderr as it comes.  Off, it
       is kept and only its last lines appear in error messages. */
    bool verbose;
} lpg_options;

/* Fill *o with the defaults: data_dir LPG_DEFAULT_DATA_DIR, tcp_port 0,
   run_as_user NULL, bin_dir getenv(PGTX_PG_BINDIR) (borrowed from the
   environment) or NULL, max_connections 0, timeout_s 60, verbose false. */
void lpg_options_init(lpg_options *o);

typedef struct lpg_cluster lpg_cluster;

/*
 * Start the cluster described by *opts (see the top of this file) and wait
 * until it accepts connections.  On success *out is a handle the caller
 * owns: stop the server and free it with lpg_stop().
 * Errors: INVALID (bad option or data folder path), NOMEM, NO_BINARIES (the
 * message names the package to install), NO_USER (root, and the run-as user
 * does not exist or is root), DATA_DIR (cannot be created, is not empty and
 * holds no cluster, holds a cluster initdb did not finish, belongs to another
 * user, or cannot be reached by the run-as user), BUSY (another process holds
 * the folder, or processes of an old server or initdb did not exit in time),
 * INITDB, START (the message ends with the server log's last lines), STOP (a
 * leftover server would not stop), SYSTEM.
 * On failure no server of ours is left running, and a cluster that initdb
 * created is kept for the next attempt.
 */
LPG_MUSTCHECK lpg_status lpg_start(const lpg_options *opts, lpg_cluster **out,
                                   lpg_error *err);

/*
 * Stop the server (pg_ctl stop -m fast, then -m immediate if that fails),
 * wait until none of its processes is left, release the folder and free the
 * handle, whatever happens.  Returns OK when no server process of this data
 * folder runs any more (also when the server had already died), STOP when
 * one still does (the message says which).  NULL is a no-op returning OK.
 */
lpg_status lpg_stop(lpg_cluster *c, lpg_error *err);

/* libpq connection string over the unix socket, for LPG_SUPERUSER on
   LPG_DBNAME: "host='/abs/data' port=5432 user=postgres dbname=postgres".
   Borrowed, valid until lpg_stop(); never NULL. */
const char *lpg_conninfo(const lpg_cluster *c);

/* libpq connection string over 127.0.0.1 with the superuser's password
   (left out when unknown: a cluster lpg_start did not create has none on
   file), or NULL when no tcp_port was asked for.  It holds a secret: do
   not log it.  Borrowed, valid until lpg_stop(). */
const char *lpg_conninfo_tcp(const lpg_cluster *c);

/* The data folder, absolute and with symlinks resolved; also the folder of
   the unix socket.  Borrowed, valid until lpg_stop(); never NULL. */
const char *lpg_data_dir(const lpg_cluster *c);

/* The port the server uses (names the socket; the TCP port if asked). */
int lpg_port(const lpg_cluster *c);

/* True when this lpg_start() ran initdb, false when it reused a cluster. */
bool lpg_created(const lpg_cluster *c);

/* The postmaster's process id, as it was when the server started. */
pid_t lpg_server_pid(const lpg_cluster *c);

#ifdef __cplusplus
}
#endif

#endif
