#!/usr/bin/env bash
# A high-availability lab on one machine: a pg_auto_failover monitor and two
# (or three) local PostgreSQL 15 clusters on 127.0.0.1, synchronous
# replication between node1 and node2, and an optional read replica (node3)
# that never becomes primary.  Run `scripts/ha.sh --help` for the commands.
set -euo pipefail

usage() {
  cat <<EOF
usage: ha.sh COMMAND [ARGS]

A pg_auto_failover formation on 127.0.0.1 for trying failover by hand and as
a test fixture.  Every node is a local PostgreSQL 15 cluster with its own
port; trust authentication, no TLS.  Connect as user postgres to database
pgtx (the monitor's database is pg_auto_failover).

Commands:
  up [--replica] [--replica-delay-ms N]
        Create the formation (or start it again if the state folder exists)
        and wait until there is one primary, a synchronous secondary and,
        with --replica, the read replica node3 streaming.  node3 has
        candidate priority 0 and no part in the write quorum; with
        --replica-delay-ms it applies WAL N ms late (recovery_min_apply_delay).
        Prints the time it took and the connection strings.
  down  Stop every keeper and postgres of the lab (SIGKILL after a bounded
        wait) and remove the state folder.  Safe to run twice or after a crash.
  status
        pg_autoctl show state, the primary's synchronous_standby_names and
        synchronous_commit, its replication slots' view of each standby and
        each standby's replay LSN.
  uri write|read|monitor|node N
        write:   every node that can be primary, target_session_attrs=read-write
                 (libpq connects to whichever is primary now)
        read:    node3 first when it exists, then node1 and node2, with
                 target_session_attrs=prefer-standby
        monitor: the monitor's database
        node N:  data node N alone
  primary
        The name and port of the current primary, from the monitor.
  failover
        Planned failover (the monitor's perform_failover(), which is what
        pg_autoctl perform failover calls); waits until another node is
        primary and the old one is a secondary again.  Prints seconds.
  kill-primary [--no-rejoin]
        Unplanned failover: SIGKILL the primary's keeper and postmaster, wait
        until another node is primary, then start the killed node's keeper
        again and wait until it is back as a secondary (skipped with
        --no-rejoin).  Prints seconds.
  run [--replica] [--replica-delay-ms N] -- CMD [ARG...]
        up, run CMD with the variables below exported, then down (on failure
        and interrupt too); exits with CMD's status.
          PGTX_HA_WRITE_URI PGTX_HA_READ_URI PGTX_HA_MONITOR_URI
          PGTX_HA_DIR PGTX_HA_SCRIPT (this script's absolute path)
          PGTX_HA_PORT PGTX_HA_TIMEOUT PGTX_HA_PGBIN (so that CMD can call
          PGTX_HA_SCRIPT failover, kill-primary, ... on the same lab)
        CMD gets no other PG* variable.

Environment:
  PGTX_HA_PORT     monitor port; node N listens on PGTX_HA_PORT+N (default 6540)
  PGTX_HA_DIR      state folder: data folders, logs, pid files
                   (default /tmp/pgtx-ha-\$USER)
  PGTX_HA_TIMEOUT  seconds any one wait may last (default 120)
  PGTX_HA_PGBIN    PostgreSQL binaries (default /usr/lib/postgresql/15/bin)

As root, every cluster and keeper runs as the postgres OS user, since
pg_autoctl refuses to run as root; the state folder then belongs to postgres.
EOF
}

# libpq and pg_autoctl read PG* variables (scripts/with-pg.sh exports some):
# the lab names its own hosts, ports and folders, so none may leak in.
while read -r v; do
  case $v in PGTX_*) ;; PG*) unset "$v" ;; esac
done < <(compgen -e)

PGBIN=${PGTX_HA_PGBIN:-/usr/lib/postgresql/15/bin}
BASE=${PGTX_HA_PORT:-6540}
TIMEOUT=${PGTX_HA_TIMEOUT:-120}
# pg_autoctl keys its configuration by the data folder's absolute path
DIR=$(realpath -m "${PGTX_HA_DIR:-/tmp/pgtx-ha-$(id -un)}")
# a socket's path (DIR/sock/.s.PGSQL.NNNNN) has room for 107 bytes
if [ ${#DIR} -gt 80 ]; then echo "ha.sh: PGTX_HA_DIR is too long (80 at most)" >&2; exit 1; fi
SELF=$(realpath "${BASH_SOURCE[0]}")
HOST=127.0.0.1
MARK=.pgtx-ha # only a folder holding it is ever removed by `down`
PSQL=$PGBIN/psql
[ -x "$PSQL" ] || PSQL=psql

die() { echo "ha.sh: $*" >&2; exit 1; }

case $BASE in '' | *[!0-9]*) die "PGTX_HA_PORT must be a port number" ;; esac
case $TIMEOUT in '' | *[!0-9]*) die "PGTX_HA_TIMEOUT must be a number of seconds" ;; esac
if [ "$BASE" -lt 1024 ] || [ "$BASE" -gt 65531 ]; then die "PGTX_HA_PORT out of 1024..65531"; fi

port_of() { # node name -> port
  case $1 in
    monitor) echo "$BASE" ;;
    node[1-3]) echo $((BASE + ${1#node})) ;;
    *) die "no node $1" ;;
  esac
}

now_ms() { date +%s%3N; }
secs_since() { # ms timestamp -> seconds elapsed, one decimal
  local d=$(($(now_ms) - $1))
  printf '%d.%d' $((d / 1000)) $((d % 1000 / 100))
}

# pg_autoctl will not run as root, so as root the clusters belong to the
# postgres OS user.  setpriv execs in place (runuser would stay as a parent),
# so the pid recorded for a keeper started in the background is the keeper's.
# XDG_* keep pg_autoctl's configuration, state and pid files in the state
# folder instead of the owner's home and /tmp; PGHOST is where pg_autoctl
# finds the clusters' sockets (see init_cluster), and PGUSER the superuser
# initdb made, whatever the OS user's name.
OWNER=()
if [ "$(id -u)" -eq 0 ]; then
  OWNER=(setpriv --reuid=postgres --regid=postgres --init-groups --reset-env --)
fi
OWNER+=(env HOME="$DIR" XDG_CONFIG_HOME="$DIR/config" XDG_DATA_HOME="$DIR/share"
        XDG_RUNTIME_DIR="$DIR/run" PGHOST="$DIR/sock" PGUSER=postgres
        PATH="$PGBIN:/usr/sbin:/usr/bin:/sbin:/bin" LC_ALL=C.UTF-8)
as_owner() { (cd "$DIR" && exec "${OWNER[@]}" "$@"); }

sql() { # port db query: one unaligned result, errors on stderr
  PGCONNECT_TIMEOUT=3 "$PSQL" -X -q -A -t -v ON_ERROR_STOP=1 \
    -h "$HOST" -p "$1" -U postgres -d "$2" -c "$3"
}
msql() { sql "$BASE" pg_auto_failover "$1"; }

log_of() { echo "$DIR/log/$1.log"; }
keeper_pidfile() { echo "$DIR/run/pg_autoctl$DIR/$1/pg_autoctl.pid"; }

port_busy() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# Running, not a zombie: an orphan is reparented to PID 1, which may reap it
# late (or, in some containers, not at all), and kill -0 succeeds on a zombie.
alive() {
  local state
  [ -n "${1:-}" ] && state=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) \
    && [ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ]
}

keeper_pid() { # the running keeper of a node, if any
  local f pid
  for f in "$DIR/pid/$1.pid" "$(keeper_pidfile "$1")"; do
    [ -r "$f" ] || continue
    pid=$(head -n 1 "$f")
    if alive "$pid" && grep -q pg_autoctl "/proc/$pid/cmdline" 2>/dev/null; then
      echo "$pid"
      return 0
    fi
  done
  return 1
}

postmaster_pid() {
  local f="$DIR/$1/postmaster.pid" pid
  [ -r "$f" ] || return 1
  pid=$(head -n 1 "$f")
  alive "$pid" && grep -q postgres "/proc/$pid/cmdline" 2>/dev/null && echo "$pid"
}

show_logs() { # the tail of each named node's keeper log and server log
  local n f
  for n in "$@"; do
    f=$(log_of "$n")
    [ -r "$f" ] && { echo "--- tail of $f"; tail -n 25 "$f"; }
    f=$(find "$DIR/$n/log" -name '*.log' 2>/dev/null | sort | tail -n 1)
    [ -n "$f" ] && { echo "--- tail of $f"; tail -n 10 "$f"; }
  done >&2
  if msql "select 1" >/dev/null 2>&1; then
    echo "--- pg_autoctl show state" >&2
    as_owner pg_autoctl show state --pgdata "$DIR/monitor" >&2 2>&1 || true
  fi
}

# Runs "$@" until it succeeds, every 0.2 s, for at most TIMEOUT seconds.
wait_for() {
  local what=$1
  shift
  local deadline=$(($(now_ms) + TIMEOUT * 1000))
  until "$@" >/dev/null 2>&1; do
    if [ "$(now_ms)" -ge "$deadline" ]; then
      echo "ha.sh: timed out after ${TIMEOUT}s waiting for $what" >&2
      return 1
    fi
    sleep 0.2
  done
}

start_keeper() { # node, pg_autoctl arguments: detached, logged, pid recorded
  local node=$1
  shift
  if keeper_pid "$node" >/dev/null; then return 0; fi
  # setsid: the keeper outlives this script and its terminal, and
  # kill-primary can kill its whole process group (the keeper's services and
  # the postmaster)
  # exec all the way down, so that $! is the keeper's pid (setsid does not
  # fork here: a background job of a script leads no process group)
  (cd "$DIR" && exec "${OWNER[@]}" setsid pg_autoctl "$@") </dev/null >>"$(log_of "$node")" 2>&1 &
  echo $! >"$DIR/pid/$node.pid"
  # not this shell's job any more: no "Killed" notice from bash when
  # kill-primary kills it
  disown $!
}

# Settings for every cluster, in postgresql.auto.conf, which wins over the
# file pg_autoctl writes (which sizes shared_buffers at a quarter of RAM, too
# much for four clusters on a shared machine).  Standbys get a copy with
# pg_basebackup.  pg_autoctl's pg_basebackup asks for a spread checkpoint,
# which took 90 s on a fresh cluster (100 ms per dirty buffer): a completion
# target of 0 lets every checkpoint write at full speed.  The sockets go to
# the state folder: Debian's /var/run/postgresql is writable by the
# postgres group only.
init_cluster() {
  local pgdata=$1
  as_owner "$PGBIN/initdb" -D "$pgdata" -U postgres -A trust -E UTF8 \
    --no-instructions >"$DIR/log/initdb-$(basename "$pgdata").log" 2>&1 \
    || { cat "$DIR/log/initdb-$(basename "$pgdata").log" >&2; die "initdb $pgdata failed"; }
  as_owner tee -a "$pgdata/postgresql.auto.conf" >/dev/null <<EOF
shared_buffers = '32MB'
max_connections = 100
wal_keep_size = '256MB'
checkpoint_completion_target = 0
unix_socket_directories = '$DIR/sock'
EOF
}

# The monitor's defaults take 20-30 s to call a node dead: a health check
# every 5 s, 2 retries 2 s apart, unhealthy after 20 s without a report; then
# it gives the old primary 30 s to demote itself before it promotes another
# node.  A lab on loopback can decide in about 2 s: keepers report every
# second, and a node is failed only when it has not reported for
# node_considered_unhealthy_timeout AND a health check failed, so a keeper
# slowed down by a busy machine alone does not cause a failover.  The demote
# timeout stays above the keepers' network_partition_timeout (below), after
# which a primary cut off from the monitor and its standbys demotes itself.
# All of these are sighup.
MONITOR_GUCS=(
  "pgautofailover.health_check_period=1000"
  "pgautofailover.health_check_timeout=1000"
  "pgautofailover.health_check_max_retries=1"
  "pgautofailover.health_check_retry_delay=500"
  "pgautofailover.node_considered_unhealthy_timeout=2500"
  "pgautofailover.startup_grace_period=2000"
  "pgautofailover.primary_demote_timeout=3000"
)

tune_monitor() {
  local g
  for g in "${MONITOR_GUCS[@]}"; do
    msql "alter system set ${g%%=*} = ${g#*=}" >/dev/null
  done
  msql "select pg_reload_conf()" >/dev/null
}

# The keeper's own timeouts (seconds, defaults 20, 30, 5, 20): a primary
# alone demotes itself, a standby about to be promoted waits for WAL, and
# postgres that keeps failing to restart is reported down.
KEEPER_SETTINGS=(
  "timeout.network_partition_timeout=2"
  "timeout.prepare_promotion_catchup=10"
  "timeout.prepare_promotion_walreceiver=1"
  "timeout.postgresql_restart_failure_timeout=5"
)

tune_keeper() {
  local s try
  for s in "${KEEPER_SETTINGS[@]}"; do
    # the keeper rewrites the same file as it goes: try again a few times
    for try in 1 2 3 4 5; do
      if as_owner pg_autoctl config set --pgdata "$DIR/$1" "${s%%=*}" "${s#*=}" \
           >>"$(log_of ops)" 2>&1; then
        break
      fi
      [ "$try" -lt 5 ] || echo "ha.sh: warning: $1: could not set $s (see $(log_of ops))" >&2
      sleep 0.5
    done
  done
  # the running keeper reads its configuration again on SIGHUP
  as_owner pg_autoctl reload --pgdata "$DIR/$1" >/dev/null 2>&1 || true
}

monitor_uri_internal() {
  echo "postgresql://autoctl_node@$HOST:$BASE/pg_auto_failover?sslmode=disable"
}

up_monitor() {
  if [ ! -f "$DIR/monitor/PG_VERSION" ]; then
    init_cluster "$DIR/monitor"
    as_owner pg_autoctl create monitor --pgdata "$DIR/monitor" --pgport "$BASE" \
      --listen "$HOST" --hostname "$HOST" --auth trust --no-ssl \
      --pgctl "$PGBIN/pg_ctl" >>"$(log_of monitor)" 2>&1 \
      || { show_logs monitor; die "pg_autoctl create monitor failed"; }
  fi
  start_keeper monitor run --pgdata "$DIR/monitor"
  wait_for "the monitor on port $BASE" msql "select 1" || { show_logs monitor; die "no monitor"; }
  tune_monitor
}

# node, extra create options: create the node (its keeper stays running) or
# start its keeper again.
up_node() {
  local node=$1
  shift
  if [ -f "$(keeper_config "$node")" ]; then
    start_keeper "$node" run --pgdata "$DIR/$node"
    return 0
  fi
  # node1 is initialized here with the lab's settings; the other nodes are
  # copies of the primary made by pg_autoctl
  [ "$node" = node1 ] && [ ! -f "$DIR/node1/PG_VERSION" ] && init_cluster "$DIR/node1"
  start_keeper "$node" create postgres --pgdata "$DIR/$node" --pgport "$(port_of "$node")" \
    --listen "$HOST" --hostname "$HOST" --name "$node" --dbname pgtx --username postgres \
    --monitor "$(monitor_uri_internal)" --auth trust --no-ssl --pgctl "$PGBIN/pg_ctl" \
    "$@" --run
}

keeper_config() { echo "$DIR/config/pg_autoctl$DIR/$1/pg_autoctl.cfg"; }

# --- the formation's state, from the monitor --------------------------------

node_state() { # node -> "reported goal"
  msql "select reportedstate || ' ' || goalstate from pgautofailover.node
        where nodename = '$1'"
}

# -> the node that takes writes now: reported and assigned a primary state
# (single: alone; wait_primary: primary without a standby in sync)
primary_node() {
  local n
  n=$(msql "select nodename from pgautofailover.node
            where reportedstate = goalstate
              and reportedstate in ('single', 'wait_primary', 'primary')")
  [ -n "$n" ] && [ "$(wc -l <<<"$n")" -eq 1 ] && echo "$n"
}

data_nodes() { # the nodes this lab has created
  local n
  for n in node1 node2 node3; do
    [ -d "$DIR/$n" ] && echo "$n"
  done
}

# Healthy: one primary, every other node a secondary in its goal state and
# streaming to the primary, the primary's synchronous_standby_names set
# and at least one standby in sync.
healthy() {
  local p n st want=0 streaming sync names
  p=$(primary_node) || return 1
  for n in $(data_nodes); do
    [ "$n" = "$p" ] && continue
    st=$(node_state "$n") || return 1
    [ "$st" = "secondary secondary" ] || return 1
    want=$((want + 1))
  done
  streaming=$(sql "$(port_of "$p")" pgtx \
    "select count(*) from pg_stat_replication where state = 'streaming'") || return 1
  [ "$streaming" -eq "$want" ] || return 1
  sync=$(sql "$(port_of "$p")" pgtx \
    "select count(*) from pg_stat_replication where sync_state in ('sync', 'quorum')") || return 1
  names=$(sql "$(port_of "$p")" pgtx "show synchronous_standby_names") || return 1
  [ "$sync" -ge 1 ] && [ -n "$names" ]
}

wait_healthy() {
  # shellcheck disable=SC2046 # node names have no blanks
  wait_for "$1" healthy || { show_logs monitor $(data_nodes); die "the formation is not healthy"; }
}

# --- connection strings -------------------------------------------------------

uri_for() { # db, extra query, ports...
  local db=$1 q=$2 hosts="" p
  shift 2
  for p in "$@"; do hosts+="${hosts:+,}$HOST:$p"; done
  echo "postgresql://postgres@$hosts/$db${q:+?$q}"
}

uri() {
  case ${1:-} in
    write) uri_for pgtx target_session_attrs=read-write "$(port_of node1)" "$(port_of node2)" ;;
    read)
      if [ -d "$DIR/node3" ]; then
        uri_for pgtx target_session_attrs=prefer-standby \
          "$(port_of node3)" "$(port_of node1)" "$(port_of node2)"
      else
        uri_for pgtx target_session_attrs=prefer-standby "$(port_of node1)" "$(port_of node2)"
      fi
      ;;
    monitor) uri_for pg_auto_failover "" "$BASE" ;;
    node)
      case ${2:-} in 1 | 2 | 3) uri_for pgtx "" "$(port_of "node$2")" ;;
        *) die "usage: uri node 1|2|3" ;; esac
      ;;
    *) die "usage: uri write|read|monitor|node N" ;;
  esac
}

# --- commands -----------------------------------------------------------------

cmd_up() {
  local replica=0 delay="" t0
  while [ $# -gt 0 ]; do
    case $1 in
      --replica) replica=1 ;;
      --replica-delay-ms)
        [ $# -ge 2 ] || die "--replica-delay-ms needs a value"
        delay=$2
        shift
        case $delay in '' | *[!0-9]*) die "--replica-delay-ms: a number of ms" ;; esac
        replica=1
        ;;
      *) die "up: unknown argument $1 (see --help)" ;;
    esac
    shift
  done
  command -v pg_autoctl >/dev/null || die "pg_autoctl not found (apt install postgresql-15-auto-failover)"
  [ -x "$PGBIN/initdb" ] || die "no PostgreSQL binaries in $PGBIN"
  t0=$(now_ms)
  if [ ! -d "$DIR" ]; then
    local port
    for port in "$BASE" $((BASE + 1)) $((BASE + 2)) $((BASE + 3)); do
      if port_busy "$port"; then die "port $port on $HOST is in use (set PGTX_HA_PORT)"; fi
    done
    mkdir -p "$DIR"
    touch "$DIR/$MARK"
  fi
  [ -f "$DIR/$MARK" ] || die "$DIR exists and is not a lab folder (no $MARK)"
  mkdir -p "$DIR/log" "$DIR/pid" "$DIR/run" "$DIR/sock"
  # pg_autoctl uses XDG_RUNTIME_DIR only when it is private
  chmod 700 "$DIR" "$DIR/run"
  if [ "$(id -u)" -eq 0 ]; then
    chown -R postgres: "$DIR"
    as_owner test -w "$DIR" || die "user postgres cannot write $DIR (a parent folder closed?)"
  fi
  up_monitor
  up_node node1
  wait_for "node1 to be primary" primary_node || { show_logs monitor node1; die "node1 is not primary"; }
  # what is dirty now needs no writing by the checkpoint of the base backups
  sql "$(port_of "$(primary_node)")" pgtx checkpoint >/dev/null || true
  up_node node2
  if [ "$replica" -eq 1 ] || [ -d "$DIR/node3" ]; then
    up_node node3 --candidate-priority 0 --replication-quorum false
  fi
  wait_healthy "a primary and every standby streaming, one in sync"
  local n
  for n in $(data_nodes); do
    [ -f "$(keeper_config "$n")" ] && tune_keeper "$n"
  done
  if [ -n "$delay" ]; then
    # node3 alone: it never becomes primary, so the delay stays with it
    sql "$(port_of node3)" pgtx \
      "alter system set recovery_min_apply_delay = '${delay}ms'" >/dev/null
    sql "$(port_of node3)" pgtx "select pg_reload_conf()" >/dev/null
  fi
  echo "ha.sh: up in $(secs_since "$t0") s; primary: $(cmd_primary)"
  echo "write:   $(uri write)"
  echo "read:    $(uri read)"
  echo "monitor: $(uri monitor)"
}

# The pids of every process whose working folder is in the state folder:
# the keepers (started there), the postmasters and their children (in
# their data folders).  This finds them after a crash of this script too.
# the process group of a pid (field 5 of stat; the command in field 2 has
# no blanks for the processes asked about)
pgid_of() { awk '{ print $5 }' "/proc/$1/stat" 2>/dev/null; }

# Only postgres and pg_autoctl processes: a shell that happens to be in the
# folder is not the lab's.
lab_pids() {
  local d cwd comm
  for d in /proc/[0-9]*; do
    # the name first, with a builtin: a busy machine has many processes
    read -r comm 2>/dev/null <"$d/comm" || continue
    case $comm in postgres | pg_autoctl) ;; *) continue ;; esac
    cwd=$(readlink "$d/cwd" 2>/dev/null) || continue
    case $cwd in "$DIR" | "$DIR"/*) echo "${d#/proc/}" ;; esac
  done
}

cmd_down() {
  local n pid pids deadline sig
  if [ ! -d "$DIR" ]; then
    echo "ha.sh: nothing to stop ($DIR does not exist)"
    return 0
  fi
  [ -f "$DIR/$MARK" ] || die "$DIR is not a lab folder (no $MARK); not touching it"
  # the keepers, which stop their postgres with a fast shutdown; a
  # postmaster whose keeper is gone gets SIGINT (fast shutdown) below
  for n in node3 node2 node1 monitor; do
    if pid=$(keeper_pid "$n"); then kill -TERM "$pid" 2>/dev/null || true; fi
  done
  deadline=$(($(now_ms) + 20000))
  while pids=$(lab_pids) && [ -n "$pids" ] && [ "$(now_ms)" -lt "$deadline" ]; do
    # After a crash: the services of a keeper killed outright live on (and
    # restart postgres), and so does a postmaster without its keeper.  Such
    # a service may ignore SIGTERM (the monitor's listener did for 10 s):
    # it has nothing to save, so SIGKILL after 5 s.
    sig=TERM
    [ "$(now_ms)" -lt $((deadline - 15000)) ] || sig=KILL
    for pid in $pids; do
      if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = pg_autoctl ] && ! alive "$(pgid_of "$pid")"; then
        kill -"$sig" "$pid" 2>/dev/null || true
      fi
    done
    for n in node3 node2 node1 monitor; do
      if ! keeper_pid "$n" >/dev/null && pid=$(postmaster_pid "$n"); then
        kill -INT "$pid" 2>/dev/null || true
      fi
    done
    sleep 0.2
  done
  pids=$(lab_pids)
  if [ -n "$pids" ]; then
    echo "ha.sh: SIGKILL to leftovers:" "$pids" >&2
    # shellcheck disable=SC2086 # one pid per word
    kill -KILL $pids 2>/dev/null || true
    sleep 0.5
  fi
  rm -rf "$DIR"
  echo "ha.sh: down"
}

cmd_primary() {
  local p
  [ -d "$DIR" ] || die "no lab in $DIR (ha.sh up)"
  p=$(primary_node 2>/dev/null) || die "no primary now (see ha.sh status)"
  echo "$p $(port_of "$p")"
}

cmd_status() {
  [ -d "$DIR" ] || die "no lab in $DIR (ha.sh up)"
  as_owner pg_autoctl show state --pgdata "$DIR/monitor" || true
  local p n port
  if p=$(primary_node); then
    port=$(port_of "$p")
    echo
    echo "primary $p (port $port): synchronous_standby_names = '$(sql "$port" pgtx \
      "show synchronous_standby_names")', synchronous_commit = $(sql "$port" pgtx \
      "show synchronous_commit"), current LSN $(sql "$port" pgtx "select pg_current_wal_lsn()")"
    sql "$port" pgtx "select application_name, state, sync_state, replay_lsn
                      from pg_stat_replication order by 1" | sed 's/^/  standby: /'
  else
    echo "no primary now"
  fi
  for n in $(data_nodes); do
    [ "$n" = "${p:-}" ] && continue
    echo "$n (port $(port_of "$n")): replay LSN $(sql "$(port_of "$n")" pgtx \
      "select pg_last_wal_replay_lsn()" 2>/dev/null || echo '(down)')"
  done
}

# Waits until a node other than $1 is primary; prints its name.
wait_new_primary() {
  local old=$1 deadline=$(($(now_ms) + TIMEOUT * 1000)) p
  while [ "$(now_ms)" -lt "$deadline" ]; do
    if p=$(primary_node 2>/dev/null) && [ "$p" != "$old" ]; then
      echo "$p"
      return 0
    fi
    sleep 0.1
  done
  return 1
}

cmd_failover() {
  local old new t0
  old=$(primary_node) || die "no primary to fail over from"
  t0=$(now_ms)
  # the monitor's function behind `pg_autoctl perform failover`, without
  # the command's own wait (and its start-up, which took seconds here):
  # this script times and bounds the steps itself
  msql "select pgautofailover.perform_failover('default', 0)" >/dev/null \
    || die "perform_failover refused (see ha.sh status)"
  # shellcheck disable=SC2046
  new=$(wait_new_primary "$old") || { show_logs monitor $(data_nodes); die "no new primary"; }
  echo "ha.sh: planned failover: $old -> $new (port $(port_of "$new")), new primary in $(secs_since "$t0") s"
  wait_healthy "$old back as a secondary"
  echo "ha.sh: planned failover: formation healthy again in $(secs_since "$t0") s"
}

cmd_kill_primary() {
  local rejoin=1 old new t0 t1 kpid ppid
  case ${1:-} in
    "") ;;
    --no-rejoin) rejoin=0 ;;
    *) die "kill-primary: unknown argument $1" ;;
  esac
  old=$(primary_node) || die "no primary to kill"
  kpid=$(keeper_pid "$old") || die "no keeper for $old"
  ppid=$(postmaster_pid "$old") || die "no postmaster for $old"
  t0=$(now_ms)
  # the keeper first: left alive, it would just restart postgres and the
  # monitor would never see the node fail
  kill -KILL -- "-$kpid" 2>/dev/null || kill -KILL "$kpid" 2>/dev/null || true
  kill -KILL "$ppid" 2>/dev/null || true
  # shellcheck disable=SC2046
  new=$(wait_new_primary "$old") || { show_logs monitor $(data_nodes); die "no new primary"; }
  echo "ha.sh: unplanned failover: $old killed, $new (port $(port_of "$new")) primary in $(secs_since "$t0") s"
  [ "$rejoin" -eq 1 ] || return 0
  # the backends of the killed postmaster go on their own; the new keeper
  # must find the old one's pid file stale
  wait_for "the killed keeper to be gone" eval "! alive $kpid" || true
  t1=$(now_ms)
  start_keeper "$old" run --pgdata "$DIR/$old"
  wait_healthy "$old to rejoin as a secondary"
  echo "ha.sh: unplanned failover: $old rejoined as a secondary in $(secs_since "$t1") s"
}

cmd_run() {
  local up_args=()
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do
    up_args+=("$1")
    shift
  done
  if [ "${1:-}" != "--" ] || [ $# -lt 2 ]; then
    die "usage: run [--replica] [--replica-delay-ms N] -- CMD..."
  fi
  shift
  # run owns the lab from up to down: a folder already there is another
  # run's lab (or a crashed one), which the down below would remove
  [ ! -e "$DIR" ] || die "$DIR exists: a lab is up there (ha.sh down removes it)"
  # down whatever happens from here on; INT/TERM end with the usual status
  trap 'cmd_down >&2' EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  cmd_up "${up_args[@]}"
  export PGTX_HA_WRITE_URI PGTX_HA_READ_URI PGTX_HA_MONITOR_URI PGTX_HA_DIR PGTX_HA_SCRIPT
  PGTX_HA_WRITE_URI=$(uri write)
  PGTX_HA_READ_URI=$(uri read)
  PGTX_HA_MONITOR_URI=$(uri monitor)
  PGTX_HA_DIR=$DIR
  PGTX_HA_SCRIPT=$SELF
  export PGTX_HA_PORT=$BASE PGTX_HA_TIMEOUT=$TIMEOUT PGTX_HA_PGBIN=$PGBIN
  local rc=0
  "$@" || rc=$?
  exit "$rc"
}

case ${1:-} in
  up) shift; cmd_up "$@" ;;
  down) cmd_down ;;
  status) cmd_status ;;
  uri) shift; uri "$@" ;;
  primary) cmd_primary ;;
  failover) cmd_failover ;;
  kill-primary) shift; cmd_kill_primary "$@" ;;
  run) shift; cmd_run "$@" ;;
  -h | --help | help) usage ;;
  "") usage >&2; exit 2 ;;
  *) echo "ha.sh: unknown command $1" >&2; usage >&2; exit 2 ;;
esac
