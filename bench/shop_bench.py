#!/usr/bin/env python3
"""shop_bench.py — pgtx-shop over HTTP against pgbench running the same SQL.

    python3 bench/shop_bench.py [--build build] [--duration 10] [--quick]
        [--scenarios orders,hot-order,deposits,claims] [--clients N]
        [--warmup 1] [--wait-quiet S] [--json FILE|-] [--keep-data]
        [--shop-args FLAGS] [--strategies atomic|all|LIST] [--results DIR]

What `make bench` runs.  One run starts build/pgtx-shop on its own embedded
PostgreSQL cluster (a fresh folder under build/bench-data; fsync and
synchronous_commit stay on, as the cluster has them), loads the data in SQL,
then for each scenario runs pgbench with the textbook SQL (and, for orders,
the service's own SQL; for hot-order, at 8, 32 and 64 clients) and
bench/http-load against the service twice, write combining off (pgtx-shop
--batch-limit 1) and on (its default), each for the same time at the same
number of clients.  The shop is restarted on the same cluster between its two
runs, which alternate in order from one scenario to the next so that it
restarts once per scenario.  After every run it checks the invariants of
docs/API.md in SQL, and that the rows written match what the runner says it
committed.  It prints one markdown table and the targets of the combining
work (each "met" or "not met", with the measured ratio), and writes both to
bench/results/shop-bench.txt, with a bar chart in bench/results/shop-bench.svg.

Every run lasts warm-up + duration seconds; only the operations that finish
in the last `duration` seconds count, and the machine's CPU (/proc/stat) is
sampled at the same two instants, so "CPU ms/op" is the whole machine's busy
CPU (database, service, load client) per counted operation.

Exit status: 0 when every run completed and every invariant held, 1 when an
invariant failed or a run did not complete, 2 on a bad option.  A target
that is not met is printed as such and does not change the exit status.
Python 3 standard library only.
"""

import argparse
import glob
import json
import math
import os
import re
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import shlex
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SCRIPTS = os.path.join(HERE, "pgbench")
RESULTS = os.path.join(HERE, "results")

SHOP_START_S = 120.0     # initdb + migrations on a slow disk
SHOP_STOP_S = 60.0       # drain, close the pool, stop the cluster
PSQL_TIMEOUT_S = 600.0   # the data set up, an invariant check
RUN_GRACE_S = 60.0       # beyond warm-up + duration before a runner is killed
HTTP_TIMEOUT_S = 30.0    # http-load's per-request socket timeout
FOREIGN_WARN = 0.10      # share of the machine used by others: a row note

SHOP_ARGS = []           # --shop-args: more flags for pgtx-shop
SHOP_POOL_SIZE = 10      # pgtx-shop's defaults (README, Configuration)
SHOP_MAX_OVERFLOW = 10
BIG = 10 ** 12           # balances and stock that no run can use up
N_ACCOUNTS = 500
N_PRODUCTS = 500
COUPON_QUANTITY = 10_000_000
CLAIMS_PER_S_BOUND = 8000  # sizes the claims accounts: above what 2 cores commit

# scenario -> (default clients, pgbench scripts in run order)
SCENARIOS = {
    "orders": (32, ["textbook.sql", "service_order.sql"]),
    "hot-order": (64, ["textbook.sql"]),
    "deposits": (32, ["deposit.sql"]),
    "claims": (32, ["claim.sql"]),
}
RUNNER_OF_SCRIPT = {
    "textbook.sql": "pgbench textbook",
    "service_order.sql": "pgbench service SQL",
    "deposit.sql": "pgbench textbook",
    "claim.sql": "pgbench textbook",
}
# the two HTTP rows of every scenario and the flags that make them; the
# flags go after --shop-args, so that "off" stays off whatever those say
HTTP_OFF = "pgtx-shop HTTP, combining off"
HTTP_ON = "pgtx-shop HTTP, combining on"
HTTP_RUNNERS = {HTTP_OFF: ("--batch-limit", "1"), HTTP_ON: ()}
# --strategies: the HTTP runs of each strategy (Pgtx-Strategy); atomic's rows
# keep the plain names, which the targets read
STRATEGIES = ["atomic"]
ALL_STRATEGIES = ("atomic", "lock", "optimistic", "serializable")


def http_runs():
    """(runner, strategy) of every HTTP run of a scenario, in table order."""
    return [(runner, s) for s in STRATEGIES for runner in HTTP_RUNNERS]


def http_row_name(runner, strategy):
    if strategy == "atomic":
        return runner
    return runner.replace("pgtx-shop HTTP", "pgtx-shop HTTP %s" % strategy)


def claim_runners():
    """pgbench and each HTTP run: their own claim accounts."""
    return 1 + len(http_runs())
BASELINE = "pgbench textbook"
# textbook runs at more client counts than the scenario's, so that the
# targets can compare with pgbench's best (not in --quick)
PGBENCH_MORE_CLIENTS = {"hot-order": (8, 32)}
# the shop's combining figures in /metrics: series named pgtx_shop_*batch*
# (pgtx_shop_batch_..., pgtx_shop_http_batch_...), whatever they turn out to
# be; counters and histograms are taken over the run, gauges as they end it
BATCH_METRIC_PREFIX = "pgtx_shop_"
CUMULATIVE_SUFFIXES = ("_bucket", "_sum", "_count", "_total")
METRICS_TIMEOUT_S = 10.0


class BenchError(Exception):
    """A failure that ends the whole benchmark (not one bad run)."""


class Interrupted(Exception):
    """SIGTERM: unwinds like Ctrl-C so that every finally block runs."""


def log(msg):
    print("shop-bench: " + msg, file=sys.stderr, flush=True)


# ---- processes ----------------------------------------------------------------

def clean_env(extra=None):
    """The environment without the variables that would point a child at
    another database or change the shop's configuration behind our back."""
    env = {k: v for k, v in os.environ.items()
           if not (k.startswith("PG") or k == "DATABASE_URL")}
    env.update(extra or {})
    return env


def pid_is_postmaster_of(pid, data_dir):
    """Only a process whose command line names our data folder is ours to
    signal: postmaster.pid may be stale and its pid reused."""
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            args = f.read().split(b"\0")
    except OSError:
        return False
    return bool(args) and b"postgres" in os.path.basename(args[0]) and \
        any(a == data_dir.encode() for a in args)


class Shop:
    """build/pgtx-shop on 127.0.0.1, a free port, its own embedded cluster."""

    def __init__(self, binary, data_dir, token, max_overflow):
        self.binary, self.data_dir, self.token = binary, data_dir, token
        self.max_overflow = max_overflow
        self.proc = None
        self.port = None
        self.extra = None        # the flags after SHOP_ARGS of the running shop
        self.out_path = os.path.join(os.path.dirname(data_dir), "shop.stdout")
        self.err_path = os.path.join(os.path.dirname(data_dir), "shop.log")

    def start(self, extra=()):
        cmd = [self.binary, "--listen", "127.0.0.1:0", "--data-dir", self.data_dir,
               "--log-level", "warn", "--max-overflow", str(self.max_overflow)] + \
            SHOP_ARGS + list(extra)
        self.extra = tuple(extra)
        # the token goes by environment, not argv, so that ps does not show it
        env = clean_env({"PGTX_ADMIN_TOKEN": self.token})
        # the log accumulates over restarts; stdout is read for this start's
        # "listening" line only
        with open(self.out_path, "wb") as out, open(self.err_path, "ab") as err:
            err.write(("--- %s\n" % " ".join(cmd)).encode())
            err.flush()
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=err, env=env, cwd=ROOT)
        with open(shop_pid_path(self.data_dir), "w") as f:
            f.write("%d\n" % self.proc.pid)
        self.port = self._wait_listening()

    def _wait_listening(self):
        """The first stdout line is the service's contract with scripts:
        `pgtx-shop: listening on http://HOST:PORT`."""
        pattern = re.compile(r"^pgtx-shop: listening on http://127\.0\.0\.1:(\d+)$", re.M)
        deadline = time.monotonic() + SHOP_START_S
        while time.monotonic() < deadline:
            with open(self.out_path, encoding="utf-8", errors="replace") as f:
                m = pattern.search(f.read())
            if m:
                return int(m.group(1))
            if self.proc.poll() is not None:
                raise BenchError("pgtx-shop exited with %s before listening:\n%s"
                                 % (self.proc.returncode, self.log_tail()))
            time.sleep(0.1)
        raise BenchError("pgtx-shop did not listen within %.0f s:\n%s"
                         % (SHOP_START_S, self.log_tail()))

    def log_tail(self, n=20):
        try:
            with open(self.err_path, encoding="utf-8", errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        """SIGTERM stops the service and its cluster; a kill is the last
        resort, and then the cluster it leaves behind is stopped by pid."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=SHOP_STOP_S)
            wait_cluster_gone(self.data_dir)
            return
        except subprocess.TimeoutExpired:
            log("pgtx-shop did not stop in %.0f s: killing it" % SHOP_STOP_S)
        self.proc.kill()
        self.proc.wait(timeout=10)
        stop_orphan_cluster(self.data_dir)

    def restart(self, extra):
        """The same cluster and data under other flags: a stopped shop has
        stopped its cluster, so the next start finds it as it was left."""
        self.stop()
        self.start(extra)


def wait_cluster_gone(data_dir, limit_s=30.0):
    """The shop stops its cluster before it exits; should a postmaster still
    hold the folder, the next start would fail on it: it is stopped."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        pid = postmaster_pid(data_dir)
        if not pid or not pid_is_postmaster_of(pid, data_dir):
            return
        time.sleep(0.1)
    stop_orphan_cluster(data_dir)


def shop_pid_path(data_dir):
    return os.path.join(os.path.dirname(data_dir), "shop.pid")


def stop_orphan_shop(binary, data_dir):
    """A pgtx-shop that a killed bench left running on data_dir, found by
    the pid it wrote and recognised by its command line, stopped like ours."""
    try:
        with open(shop_pid_path(data_dir)) as f:
            pid = int(f.readline())
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            args = f.read().split(b"\0")
    except (OSError, ValueError):
        return
    if not args or args[0] != binary.encode() or data_dir.encode() not in args:
        return
    log("stopping pgtx-shop %d left by an earlier run" % pid)
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + SHOP_STOP_S
    while time.monotonic() < deadline and os.path.exists("/proc/%d" % pid):
        time.sleep(0.2)
    if os.path.exists("/proc/%d" % pid):
        os.kill(pid, signal.SIGKILL)


def postmaster_pid(data_dir):
    """The first line of postmaster.pid; 0 when there is none."""
    try:
        with open(os.path.join(data_dir, "postmaster.pid")) as f:
            return int(f.readline())
    except (OSError, ValueError):
        return 0


def stop_orphan_cluster(data_dir):
    """The postmaster a killed pgtx-shop left in data_dir, if any, stopped
    by its pid (PostgreSQL's immediate shutdown), bounded in time."""
    pid = postmaster_pid(data_dir)
    if not pid or not pid_is_postmaster_of(pid, data_dir):
        return
    os.kill(pid, signal.SIGQUIT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and os.path.exists("/proc/%d" % pid):
        time.sleep(0.2)


def run_bounded(cmd, timeout, env=None, input_text=None):
    """A child with a time limit: subprocess.run kills it on timeout."""
    try:
        return subprocess.run(cmd, input=input_text, capture_output=True, text=True,
                              timeout=timeout, env=env, cwd=ROOT)
    except subprocess.TimeoutExpired as e:
        raise BenchError("%s took more than %.0f s" % (cmd[0], timeout)) from e


# ---- the database -------------------------------------------------------------

class Db:
    """psql and pgbench over the cluster's unix socket, in the data folder
    (localpg names it .s.PGSQL.5432; root may use it, the folder is the
    postgres user's)."""

    def __init__(self, data_dir):
        self.env = clean_env({"PGHOST": data_dir, "PGPORT": "5432",
                              "PGUSER": "postgres", "PGDATABASE": "postgres"})

    def psql(self, sql, timeout=PSQL_TIMEOUT_S):
        r = run_bounded(["psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-f", "-"],
                        timeout, env=self.env, input_text=sql)
        if r.returncode != 0:
            raise BenchError("psql failed: %s" % r.stderr.strip())
        return r.stdout

    def value(self, sql):
        return self.psql(sql).strip()

    def json(self, sql):
        return json.loads(self.value(sql))


def setup_sql(claim_accounts):
    """The data set, in SQL: fast, and independent of the routes under test.
    Every product costs 1 so that the textbook script can use a constant
    price; every account gets its 'initial' ledger row so that balance =
    sum(ledger) from the start (claim accounts have nothing, and need none)."""
    return """
BEGIN;
INSERT INTO account (name, balance, token_hash)
  SELECT 'bench-buyer-' || g, {big}, decode(repeat('00', 32), 'hex')
  FROM generate_series(1, {na}) g;
INSERT INTO account (name, balance, token_hash)
  VALUES ('bench-depositor', {big}, decode(repeat('00', 32), 'hex'));
INSERT INTO ledger (account_id, amount, kind)
  SELECT id, balance, 'initial' FROM account;
INSERT INTO account (name, balance, token_hash)
  SELECT 'bench-claimer-' || g, 0, decode(repeat('00', 32), 'hex')
  FROM generate_series(1, {nc}) g;
INSERT INTO product (name, price, stock, initial_stock)
  SELECT 'bench-product-' || g, 1, {big}, {big} FROM generate_series(1, {np}) g;
INSERT INTO product (name, price, stock, initial_stock)
  VALUES ('bench-hot', 1, {big}, {big});
INSERT INTO coupon (code, discount, quantity, remaining)
  VALUES ('bench-claims', 0, {cq}, {cq});
COMMIT;
VACUUM ANALYZE;
CHECKPOINT;
""".format(big=BIG, na=N_ACCOUNTS, nc=claim_accounts, np=N_PRODUCTS, cq=COUPON_QUANTITY)


IDS_SQL = """
SELECT json_build_object(
  'buyers', (SELECT json_build_array(min(id), count(*), max(id)) FROM account
             WHERE name LIKE 'bench-buyer-%'),
  'claimers', (SELECT json_build_array(min(id), count(*), max(id)) FROM account
               WHERE name LIKE 'bench-claimer-%'),
  'products', (SELECT json_build_array(min(id), count(*), max(id)) FROM product
               WHERE name LIKE 'bench-product-%'),
  'depositor', (SELECT id FROM account WHERE name = 'bench-depositor'),
  'hot', (SELECT id FROM product WHERE name = 'bench-hot'),
  'coupon', (SELECT id FROM coupon WHERE code = 'bench-claims'))
"""


def load_data(db, claim_accounts):
    """Creates the data and returns its ids; ranges must be contiguous since
    both runners draw ids as FIRST + offset."""
    db.psql(setup_sql(claim_accounts))
    ids = db.json(IDS_SQL)
    for key in ("buyers", "claimers", "products"):
        first, count, last = ids[key]
        if last - first + 1 != count:
            raise BenchError("%s ids are not contiguous: %r" % (key, ids[key]))
        ids[key] = (first, count)
    # an account claims a coupon once: pgbench takes the first share of the
    # claimers, each HTTP run one of the next (a run that reused another's
    # accounts would get 409s)
    share = ids["claimers"][1] // claim_runners()
    ids["claim_pgbench"] = (ids["claimers"][0], share)
    ids["claim_http"] = {http_row_name(runner, st): (ids["claimers"][0] + (1 + i) * share, share)
                         for i, (runner, st) in enumerate(http_runs())}
    first, count = ids["claim_pgbench"]
    db.psql("CREATE SEQUENCE bench_claim_seq MINVALUE %d START %d MAXVALUE %d NO CYCLE;"
            % (first, first, first + count - 1))
    return ids


INVARIANTS_SQL = """
SELECT json_build_object(
  'products', (SELECT count(*) FROM product p
     LEFT JOIN (SELECT product_id, sum(quantity) q FROM orders GROUP BY 1) o
       ON o.product_id = p.id
     LEFT JOIN (SELECT product_id, sum(quantity) q FROM restock GROUP BY 1) r
       ON r.product_id = p.id
     WHERE p.stock + coalesce(o.q, 0) <> p.initial_stock + coalesce(r.q, 0)),
  'accounts', (SELECT count(*) FROM account a
     LEFT JOIN (SELECT account_id, sum(amount) s FROM ledger GROUP BY 1) l
       ON l.account_id = a.id
     WHERE a.balance <> coalesce(l.s, 0) OR a.balance < 0),
  'coupons', (SELECT count(*) FROM coupon c
     LEFT JOIN (SELECT coupon_id, count(*) n FROM coupon_claim GROUP BY 1) k
       ON k.coupon_id = c.id
     WHERE c.remaining + coalesce(k.n, 0) <> c.quantity),
  'double_claims', (SELECT count(*) FROM (SELECT 1 FROM coupon_claim
     GROUP BY coupon_id, account_id HAVING count(*) > 1) d))
"""

# the rows one operation of each scenario adds: "every 2xx is in the database
# exactly once" is checked by counting them before and after a run
WRITES_SQL = {
    "orders": "SELECT count(*) FROM orders",
    "hot-order": "SELECT count(*) FROM orders",
    "deposits": "SELECT count(*) FROM ledger WHERE kind = 'deposit'",
    "claims": "SELECT count(*) FROM coupon_claim",
}


def check_invariants(db):
    """The invariants of API.md over every row; returns the broken ones."""
    bad = db.json(INVARIANTS_SQL)
    return ["%s invariant broken by %d rows" % (k, v) for k, v in sorted(bad.items()) if v]


def tidy(db):
    """Each run starts from the same state: dead rows of the last run gone,
    and no checkpoint of its dirty pages landing inside the next one."""
    db.psql("VACUUM ANALYZE;\nCHECKPOINT;")


# ---- measures -----------------------------------------------------------------

def cpu_sample():
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal (guest is inside user)
    idle = fields[3] + fields[4]
    total = sum(fields[:8])
    return total - idle, total


def proc_stat(pid):
    """(ppid, utime + stime, cutime + cstime) in clock ticks, or None once
    the process is gone.  The name field may hold spaces: split after ')'."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            rest = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(rest[1]), int(rest[11]) + int(rest[12]), int(rest[13]) + int(rest[14])


def all_pids():
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


class Probe:
    """The machine's busy CPU and the part of it that is ours (the shop,
    PostgreSQL's processes, the runner, this script), so that another load
    on the machine shows as a note instead of silently inflating CPU ms/op.
    A process that exits between two samples is still counted: PostgreSQL
    reaps its backends (their time moves to the postmaster's children
    time) and this script reaps the runner (its rusage of children)."""

    def __init__(self, shop_pid, postmaster_pid):
        self.shop_pid, self.postmaster_pid = shop_pid, postmaster_pid

    def ours(self, runner_pid):
        ticks = 0
        for pid in all_pids():
            st = proc_stat(pid)
            if st is None:
                continue
            if pid == self.postmaster_pid:
                ticks += st[1] + st[2]
            elif pid in (self.shop_pid, runner_pid) or st[0] == self.postmaster_pid:
                ticks += st[1]
        hz = os.sysconf("SC_CLK_TCK")
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
            ru = resource.getrusage(who)
            ticks += (ru.ru_utime + ru.ru_stime) * hz
        return ticks

    def sample(self, runner_pid):
        busy, total = cpu_sample()
        return busy, total, self.ours(runner_pid)


def cpu_window(a, b):
    """Busy CPU seconds of the machine between two samples, and the share of
    the machine's capacity that processes not ours used meanwhile."""
    hz = os.sysconf("SC_CLK_TCK")
    busy = (b[0] - a[0]) / hz
    total = b[1] - a[1]
    foreign = max(0.0, (b[0] - a[0]) - (b[2] - a[2])) / total if total > 0 else 0.0
    return busy, foreign


def wait_quiet(limit_s):
    """On a shared machine, waits (at most limit_s) until a second passes
    with the machine under FOREIGN_WARN busy; nothing of ours runs between
    two runs, so what is busy then is someone else.  Returns the share of
    the last second."""
    deadline = time.monotonic() + limit_s
    while True:
        a = cpu_sample()
        time.sleep(1.0)
        b = cpu_sample()
        share = (b[0] - a[0]) / max(1, b[1] - a[1])
        if share < FOREIGN_WARN or time.monotonic() >= deadline:
            return share


def percentile(sorted_values, p):
    """Nearest rank, the same definition as http-load's."""
    if not sorted_values:
        return 0.0
    rank = max(1, min(len(sorted_values), math.ceil(p / 100.0 * len(sorted_values))))
    return sorted_values[rank - 1]


def timed_run(cmd, warmup, duration, env, probe):
    """Starts cmd and samples the machine's CPU at start + warmup and at
    start + warmup + duration (or when cmd exits, if earlier): the window in
    which operations are counted.  Returns (process result, (cpu busy s,
    foreign share), window start in epoch seconds)."""
    # files, not pipes: a chatty runner must never block on a full pipe
    # while we sleep through its window
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.monotonic()
        epoch0 = time.time()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                env=env, cwd=ROOT)
        try:
            a = wait_sample(proc, t0 + warmup, probe)
            b = wait_sample(proc, t0 + warmup + duration, probe)
            proc.wait(timeout=RUN_GRACE_S + HTTP_TIMEOUT_S)
            killed = ""
        except subprocess.TimeoutExpired:
            # a hung runner is a failed run, reported as such, not a hung bench
            proc.kill()
            proc.wait()
            killed = "\n%s killed: still running %.0f s after its end" % (
                os.path.basename(cmd[0]), RUN_GRACE_S + HTTP_TIMEOUT_S)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        out.seek(0)
        err.seek(0)
        result = (proc.returncode, out.read(), err.read() + killed)
    return result, cpu_window(a, b), epoch0 + warmup


def wait_sample(proc, until, probe):
    """Sleeps until the monotonic time `until` unless proc exits first."""
    left = until - time.monotonic()
    if left > 0:
        try:
            proc.wait(timeout=left)
        except subprocess.TimeoutExpired:
            pass
    return probe.sample(proc.pid)


# ---- the runners --------------------------------------------------------------

def pgbench_defines(scenario, ids):
    """The -D variables each script reads (see its header)."""
    if scenario == "orders":
        return {"afirst": ids["buyers"][0], "naccounts": ids["buyers"][1],
                "pfirst": ids["products"][0], "nproducts": ids["products"][1]}
    if scenario == "hot-order":
        return {"afirst": ids["buyers"][0], "naccounts": ids["buyers"][1],
                "pfirst": ids["hot"], "nproducts": 1}
    if scenario == "deposits":
        return {"aid": ids["depositor"]}
    return {"cid": ids["coupon"]}


def parse_pgbench_logs(prefix, window_start, duration):
    """Per-transaction logs (client, tx, latency us, script, epoch s, us):
    the transactions that finished inside the window, and the failed ones."""
    lat_ms, failed = [], 0
    lo, hi = window_start, window_start + duration
    for path in glob.glob(prefix + ".*"):
        with open(path) as f:
            for line in f:
                p = line.split()
                if len(p) < 6:
                    continue
                end = int(p[4]) + int(p[5]) / 1e6
                if not lo <= end <= hi:
                    continue
                if not p[2].isdigit():  # failed, serialization, deadlock
                    failed += 1
                    continue
                lat_ms.append(int(p[2]) / 1000.0)
    lat_ms.sort()
    return lat_ms, failed


def pgbench_summary(out):
    """Transactions pgbench committed over its whole run (its own count)."""
    m = re.search(r"number of transactions actually processed: (\d+)", out)
    return int(m.group(1)) if m else None


def run_pgbench(ctx, scenario, script, clients):
    logdir = os.path.join(ctx.work, "pgbench-logs",
                          "%s-%s-%d" % (scenario, script[:-4], clients))
    os.makedirs(logdir, exist_ok=True)
    prefix = os.path.join(logdir, "tx")
    cmd = ["pgbench", "-n", "-M", "prepared", "-c", str(clients),
           "-j", str(min(2, clients)), "-T", str(ctx.warmup + ctx.duration),
           "-f", os.path.join(SCRIPTS, script), "-l", "--log-prefix", prefix]
    for k, v in pgbench_defines(scenario, ctx.ids).items():
        cmd += ["-D", "%s=%s" % (k, v)]
    (rc, out, err), (cpu_s, foreign), start = timed_run(cmd, ctx.warmup, ctx.duration,
                                                        ctx.db.env, ctx.probe)
    with open(os.path.join(logdir, "pgbench.out"), "w") as f:
        f.write(out + "\n--- stderr\n" + err)
    lat, failed = parse_pgbench_logs(prefix, start, ctx.duration)
    notes = []
    if rc != 0:
        tail = [l for l in err.strip().splitlines() if l][-3:]
        notes.append("pgbench exited %d: %s" % (rc, " | ".join(tail)))
    if failed:
        notes.append("%d failed transactions" % failed)
    return {"ops": len(lat), "seconds": float(ctx.duration), "cpu_s": cpu_s,
            "foreign": foreign,
            "p50": percentile(lat, 50), "p99": percentile(lat, 99),
            "committed": pgbench_summary(out), "unknown": 0,
            "complete": rc == 0, "notes": notes}


def http_args(scenario, ids, runner, strategy):
    """The ids each http-load scenario needs (http_load.c's options)."""
    if strategy != "atomic":
        return ["--strategy", strategy] + http_ids(scenario, ids, http_row_name(runner, strategy))
    return http_ids(scenario, ids, runner)


def http_ids(scenario, ids, runner):
    buyers = "%d:%d" % ids["buyers"]
    if scenario == "orders":
        return ["--accounts", buyers, "--products", "%d:%d" % ids["products"]]
    if scenario == "hot-order":
        return ["--accounts", buyers, "--product", str(ids["hot"])]
    if scenario == "deposits":
        return ["--account", str(ids["depositor"])]
    return ["--coupon", str(ids["coupon"]),
            "--accounts", "%d:%d" % ids["claim_http"][runner]]


def run_http(ctx, scenario, runner, clients, strategy="atomic"):
    """http-load against the running shop.  The combining figures come from
    the answers' Pgtx-Batch header, else from the shop's batch series of
    /metrics over the run, else they are None."""
    cmd = [ctx.http_load, "--host", "127.0.0.1", "--port", str(ctx.shop.port),
           "--scenario", scenario, "--clients", str(clients),
           "--warmup", str(ctx.warmup), "--duration", str(ctx.duration),
           "--timeout", str(HTTP_TIMEOUT_S)] + http_args(scenario, ctx.ids, runner, strategy)
    env = clean_env({"PGTX_ADMIN_TOKEN": ctx.token})
    before = batch_metrics(ctx.shop.port)
    (rc, out, err), (cpu_s, foreign), _ = timed_run(cmd, ctx.warmup, ctx.duration, env,
                                                    ctx.probe)
    if rc != 0 or not out.strip():
        return failed_run("http-load exited %d: %s" % (rc, err.strip()[-300:]), cpu_s,
                          foreign)
    r = json.loads(out.strip().splitlines()[-1])
    notes = http_notes(r, ctx.duration)
    row = {"ops": r["ok"], "seconds": r["seconds"], "cpu_s": cpu_s, "foreign": foreign,
           "p50": r["p50_ms"], "p99": r["p99_ms"], "committed": r["all_ok"],
           "unknown": r["all_errors"] + r["all_5xx"], "complete": True,
           "notes": notes, "by_status": r["by_status"], "errors": r["errors"],
           "shop_args": list(SHOP_ARGS) + list(ctx.shop.extra)}
    row["batch_metrics"] = metrics_delta(before, batch_metrics(ctx.shop.port))
    row.update(batch_figures(r, row["batch_metrics"]))
    return row


def batch_figures(r, metrics):
    """Calls per transaction, mean and largest.  From the Pgtx-Batch headers
    of the window's answers when http-load saw any (batch_mean is the
    header's mean over answers, where a transaction of k calls counts k
    times; batch_tx_mean counts it once); else from a *batch_size_sum and
    *batch_size_count pair of /metrics over the whole run, with a *largest
    or *max gauge, which is since the shop's start; else None."""
    if r.get("batch_answers"):
        return {"batch_source": "header", "batch_mean": r["batch_mean"],
                "batch_tx_mean": r["batch_tx_mean"], "batch_max": r["batch_max"]}
    none = {"batch_source": None, "batch_mean": None, "batch_tx_mean": None,
            "batch_max": None}

    def first(test):
        return next((v for k, v in sorted(metrics.items()) if test(k.split("{")[0])), None)
    total = first(lambda n: n.endswith("batch_size_sum"))
    count = first(lambda n: n.endswith("batch_size_count"))
    if not total or not count:
        return none
    largest = first(lambda n: "batch" in n and (n.endswith("largest") or n.endswith("_max")))
    return {"batch_source": "metrics", "batch_mean": None, "batch_tx_mean": total / count,
            "batch_max": None if largest is None else int(largest)}


def batch_metrics(port):
    """{series: value} of the shop's pgtx_shop_*batch* series of /metrics
    (loopback, no token): {} when there are none or /metrics does not
    answer, which only costs the figures, never the run."""
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port,
                                    timeout=METRICS_TIMEOUT_S) as f:
            text = f.read().decode("utf-8", "replace")
    except (OSError, ValueError):
        return {}
    out = {}
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if not name.startswith(BATCH_METRIC_PREFIX) or "batch" not in name:
            continue
        series, _, value = line.rpartition(" ")
        try:
            out[series] = float(value)
        except ValueError:
            pass
    return out


def metrics_delta(before, after):
    """Counters and histograms over the run (after - before); gauges as the
    run left them."""
    out = {}
    for series, v in after.items():
        if series.split("{", 1)[0].endswith(CUMULATIVE_SUFFIXES):
            v -= before.get(series, 0.0)
        out[series] = v
    return out


def http_notes(r, duration):
    """What a reader must know to trust the HTTP row: anything but 2xx."""
    notes = []
    other = {s: n for s, n in r["by_status"].items() if not s.startswith("2")}
    if other:
        notes.append("statuses " + ", ".join("%s: %d" % kv for kv in sorted(other.items())))
    if r["errors"]:
        notes.append("%d transport errors" % r["errors"])
    if r["seconds"] < duration * 0.99:
        notes.append("stopped after %.2f s (ran out of ids)" % r["seconds"])
    return notes


def failed_run(why, cpu_s=0.0, foreign=0.0):
    return {"ops": 0, "seconds": 0.0, "cpu_s": cpu_s, "foreign": foreign,
            "p50": 0.0, "p99": 0.0,
            "committed": None, "unknown": 0, "complete": False, "notes": [why]}


# ---- one scenario ---------------------------------------------------------------

def exactly_once(before, after, r):
    """Rows added must be what the runner saw committed; for HTTP, requests
    with no answer (or a 5xx) may or may not have committed."""
    if r["committed"] is None:
        return None
    added = after - before
    if r["committed"] <= added <= r["committed"] + r["unknown"]:
        return None
    return "%d rows written, runner saw %d committed" % (added, r["committed"])


def measured(ctx, scenario, runner, clients, fn):
    """One run between two invariant checks; never raises for the run's own
    failure, so that one bad run still leaves a row in the table."""
    tidy(ctx.db)
    writes = WRITES_SQL[scenario]
    before = int(ctx.db.value(writes))
    log("%s: %s, %d clients, %d+%d s" % (scenario, runner, clients, ctx.warmup, ctx.duration))
    if not ctx.shop.alive():
        raise BenchError("pgtx-shop died:\n" + ctx.shop.log_tail())
    if ctx.wait_quiet > 0:
        share = wait_quiet(ctx.wait_quiet)
        if share >= FOREIGN_WARN:
            log("the machine is still %.0f%% busy after %d s; running anyway"
                % (100 * share, ctx.wait_quiet))
    r = fn()
    r["foreign"] = round(r["foreign"], 3)
    if r["foreign"] > FOREIGN_WARN:
        r["notes"].append("other processes used %.0f%% of the machine during this run: "
                          "its numbers are unreliable" % (100 * r["foreign"]))
    broken = check_invariants(ctx.db)
    lost = exactly_once(before, int(ctx.db.value(writes)), r)
    if lost:
        broken.append(lost)
    r.update(scenario=scenario, runner=runner, clients=clients,
             invariants_ok=not broken, broken=broken)
    r["ops_s"] = r["ops"] / r["seconds"] if r["seconds"] > 0 else 0.0
    r["cpu_ms_op"] = r["cpu_s"] / r["ops"] * 1000.0 if r["ops"] else 0.0
    return r


def pgbench_runs(ctx, scenario, clients):
    """(script, clients) in run order: the textbook at the extra client
    counts first (ascending), then every script at the scenario's clients.
    The extra counts run only when the scenario runs at its default client
    count (--clients may change it) and not in --quick."""
    default_clients, scripts = SCENARIOS[scenario]
    runs = []
    if not ctx.quick and clients == default_clients:
        runs = [(scripts[0], c) for c in PGBENCH_MORE_CLIENTS.get(scenario, ())
                if c != clients]
    return runs + [(script, clients) for script in scripts]


def http_order(ctx):
    """Both HTTP runners, the one the running shop serves first: the order
    alternates from one scenario to the next, and the shop restarts once."""
    return sorted(HTTP_RUNNERS, key=lambda k: HTTP_RUNNERS[k] != ctx.shop.extra)


def use_shop(ctx, runner):
    """The shop with the runner's flags, restarted if it runs others."""
    extra = HTTP_RUNNERS[runner]
    if ctx.shop.extra == extra:
        return
    t0 = time.monotonic()
    ctx.shop.restart(extra)
    ctx.probe = Probe(ctx.shop.proc.pid, postmaster_pid(ctx.shop.data_dir))
    log("pgtx-shop restarted with %s in %.1f s"
        % (" ".join(SHOP_ARGS + list(extra)) or "its defaults", time.monotonic() - t0))


def run_scenario(ctx, scenario):
    clients = ctx.clients or SCENARIOS[scenario][0]
    rows = []
    for script, n in pgbench_runs(ctx, scenario, clients):
        rows.append(measured(ctx, scenario, RUNNER_OF_SCRIPT[script], n,
                             lambda s=script, n=n: run_pgbench(ctx, scenario, s, n)))
    http_rows = {}
    for runner in http_order(ctx):
        use_shop(ctx, runner)
        for st in STRATEGIES:
            name = http_row_name(runner, st)
            http_rows[name] = measured(ctx, scenario, name, clients,
                                       lambda: run_http(ctx, scenario, runner, clients, st))
    rows += [http_rows[http_row_name(k, st)] for k, st in http_runs()]
    add_ratios(rows)
    return rows


def add_ratios(rows):
    """Ratios to the textbook pgbench row of the same scenario, run and
    number of clients."""
    for r in rows:
        base = next((b for b in rows if b["runner"] == BASELINE
                     and b["clients"] == r["clients"]), None)
        ok = base is not None and base["ops_s"] > 0 and base["cpu_ms_op"] > 0
        r["ops_ratio"] = r["ops_s"] / base["ops_s"] if ok else None
        r["cpu_ratio"] = (r["cpu_ms_op"] / base["cpu_ms_op"]
                          if ok and r["cpu_ms_op"] > 0 else None)


# ---- the report -----------------------------------------------------------------

def fmt_ratio(x):
    return "-" if x is None else "%.2f" % x


def fmt_batch(r):
    """Calls per transaction, mean/largest; "-" where nothing says, "?"
    for a largest that /metrics does not give; (m): from /metrics."""
    if r.get("batch_tx_mean") is None:
        return "-"
    big = "?" if r["batch_max"] is None else "%d" % r["batch_max"]
    return "%.1f/%s%s" % (r["batch_tx_mean"], big,
                          " (m)" if r["batch_source"] == "metrics" else "")


def md_table(head, right, cells):
    width = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(head)]

    def line(vals):
        return "| " + " | ".join(v.rjust(w) if rt else v.ljust(w)
                                 for v, w, rt in zip(vals, width, right)) + " |"
    sep = "|" + "|".join(("-" * (w + 1) + ":") if rt else ("-" * (w + 2))
                         for w, rt in zip(width, right)) + "|"
    return "\n".join([line(head), sep] + [line(c) for c in cells])


def table(rows):
    head = ["scenario", "runner", "clients", "ops/s", "vs pgbench", "CPU ms/op",
            "CPU vs pgbench", "p50 ms", "p99 ms", "batch mean/max", "invariants"]
    right = [False, False, True, True, True, True, True, True, True, True, False]
    # a row with notes (failed run, non-2xx answers, a busy machine) is
    # marked where a reader looks first
    cells = [[r["scenario"], r["runner"], str(r["clients"]),
              "%.0f%s" % (r["ops_s"], " *" if r["notes"] else ""),
              fmt_ratio(r["ops_ratio"]), "%.3f" % r["cpu_ms_op"], fmt_ratio(r["cpu_ratio"]),
              "%.2f" % r["p50"], "%.2f" % r["p99"], fmt_batch(r),
              "yes" if r["invariants_ok"] else "NO"] for r in rows]
    return md_table(head, right, cells)


# ---- the targets ------------------------------------------------------------------

def row_of(rows, scenario, runner, clients):
    """The completed row of that run, or None."""
    return next((r for r in rows if r["scenario"] == scenario and r["runner"] == runner
                 and r["clients"] == clients and r["complete"] and r["ops"] > 0), None)


def not_measured(rows, scenario, clients):
    """Why a target has no figure: a reader must tell a skipped scenario
    from a failed run."""
    if not any(r["scenario"] == scenario for r in rows):
        return "not measured: %s was not run" % scenario
    if not any(r["scenario"] == scenario and r["clients"] == clients for r in rows):
        return "not measured: %s was not run at %d clients" % (scenario, clients)
    return "not measured: a %s run at %d clients failed" % (scenario, clients)


def target(name, goal, op, value, detail):
    """value None: not measured in this run (the scenario, the client count
    or a run is missing), which is neither met nor not met."""
    met = None if value is None else (value >= goal if op == ">=" else value <= goal)
    return {"target": name, "goal": "%s %g x" % (op, goal), "op": op, "goal_ratio": goal,
            "ratio": value, "met": met, "detail": detail}


def ops_target(rows, scenario, name, goal):
    """Combining on over pgbench's textbook, same scenario and clients."""
    clients = SCENARIOS[scenario][0]
    on = row_of(rows, scenario, HTTP_ON, clients)
    pg = row_of(rows, scenario, BASELINE, clients)
    if on is None or pg is None:
        return target(name, goal, ">=", None, not_measured(rows, scenario, clients))
    return target(name, goal, ">=", on["ops_s"] / pg["ops_s"],
                  "%.0f vs %.0f ops/s" % (on["ops_s"], pg["ops_s"]))


def hot_best_target(rows, quick):
    """Combining on at 64 clients over pgbench's best of 8, 32 and 64."""
    clients = SCENARIOS["hot-order"][0]
    counts = sorted(set(PGBENCH_MORE_CLIENTS["hot-order"]) | {clients})
    name = "hot-order, %d clients: combining on over pgbench's best of %s clients" % (
        clients, ", ".join(map(str, counts)))
    on = row_of(rows, "hot-order", HTTP_ON, clients)
    pgs = [r for r in (row_of(rows, "hot-order", BASELINE, c) for c in counts) if r]
    if on is None or not pgs:
        return target(name, 2.0, ">=", None, not_measured(rows, "hot-order", clients))
    best = max(pgs, key=lambda r: r["ops_s"])
    missing = [str(c) for c in counts if c not in [r["clients"] for r in pgs]]
    detail = "%.0f vs %.0f ops/s (pgbench at %d)" % (on["ops_s"], best["ops_s"],
                                                     best["clients"])
    if missing:
        detail += "; pgbench not run at %s%s" % (", ".join(missing),
                                                 " (--quick)" if quick else "")
    return target(name, 2.0, ">=", on["ops_s"] / best["ops_s"], detail)


def p99_target(rows):
    clients = SCENARIOS["hot-order"][0]
    name = "hot-order, %d clients: combining on's p99 over pgbench's" % clients
    on = row_of(rows, "hot-order", HTTP_ON, clients)
    pg = row_of(rows, "hot-order", BASELINE, clients)
    if on is None or pg is None or pg["p99"] <= 0:
        return target(name, 1.0, "<=", None, not_measured(rows, "hot-order", clients))
    return target(name, 1.0, "<=", on["p99"] / pg["p99"],
                  "%.2f vs %.2f ms" % (on["p99"], pg["p99"]))


def low_contention_target(rows):
    clients = SCENARIOS["orders"][0]
    name = "orders, %d clients (low contention): combining on over off" % clients
    on = row_of(rows, "orders", HTTP_ON, clients)
    off = row_of(rows, "orders", HTTP_OFF, clients)
    if on is None or off is None:
        return target(name, 0.95, ">=", None, not_measured(rows, "orders", clients))
    return target(name, 0.95, ">=", on["ops_s"] / off["ops_s"],
                  "%.0f vs %.0f ops/s" % (on["ops_s"], off["ops_s"]))


def invariants_target(rows):
    held = sum(1 for r in rows if r["invariants_ok"])
    return {"target": "invariants held after every run", "goal": "all runs", "op": None,
            "goal_ratio": None, "ratio": None, "met": held == len(rows) and bool(rows),
            "detail": "%d of %d runs" % (held, len(rows))}


def targets(rows, quick):
    """The goals of write combining, measured in this run.  They are
    reported, not enforced: the exit status does not depend on them."""
    return [
        ops_target(rows, "deposits", "deposits, 32 clients: combining on over pgbench", 3.0),
        hot_best_target(rows, quick),
        ops_target(rows, "claims", "claims, 32 clients: combining on over pgbench", 3.0),
        p99_target(rows),
        low_contention_target(rows),
        invariants_target(rows),
    ]


def targets_table(tgts):
    status = {True: "met", False: "not met", None: "not measured"}
    cells = [[t["target"], "-" if t["ratio"] is None else "%.2f x" % t["ratio"],
              t["goal"], t["detail"], status[t["met"]]] for t in tgts]
    return md_table(["target", "measured", "goal", "figures", "status"],
                    [False, True, False, False, False], cells)


def notes(rows):
    out = []
    for r in rows:
        for n in r["notes"] + r["broken"]:
            out.append("- %s, %s: %s" % (r["scenario"], r["runner"], n))
    return out


def report_text(meta, rows, tgts):
    lines = [
        "pgtx-shop over HTTP against pgbench running the same SQL, on the service's "
        "embedded cluster",
        "%s; fsync %s, synchronous_commit %s; %d cores; %d s warm-up + %d s per run%s"
        % (meta["server"], meta["fsync"], meta["synchronous_commit"], meta["cores"],
           meta["warmup"], meta["duration"], "; --quick" if meta.get("quick") else ""),
    ]
    if meta.get("shop_args"):
        lines.append("pgtx-shop flags: %s" % " ".join(meta["shop_args"]))
    lines += [
        "",
        table(rows),
        "",
        "ops/s: operations that committed (HTTP 2xx) in the measured window; "
        "vs pgbench: over pgbench's textbook SQL, same scenario and clients "
        "(-M prepared, -j 2).",
        "CPU ms/op: the whole machine's busy CPU (PostgreSQL, service, load "
        "client) over that window, per operation; p50/p99: per operation.",
        "invariants: API.md's, in SQL after each run, and every committed "
        "operation in the database exactly once.",
        "pgtx-shop runs with its defaults (strategy atomic, 4 x cores worker "
        "threads, at least 8): it runs at most that many transactions at once "
        "whatever the clients, and at most 2 writes of one row, where pgbench "
        "runs one per client.",
        "combining off: --batch-limit 1, each call its own transaction; on: the "
        "default --batch-limit 64, calls to one account, product or coupon that "
        "wait together share one transaction. The shop restarts on the same "
        "cluster between the two; their order alternates from one scenario to "
        "the next.",
        "batch mean/max: calls per transaction, from the Pgtx-Batch header of the "
        "window's answers (how many calls shared the answer's transaction; a "
        "transaction of k calls counted once); (m): from /metrics over the run, "
        "its largest since the shop's start; -: neither says.",
    ]
    if meta.get("quick"):
        lines.append("--quick: hot-order's pgbench runs at %d clients only."
                     % SCENARIOS["hot-order"][0])
    extra = notes(rows)
    if extra:
        lines += ["", "*: see below"] + extra
    lines += ["", "Targets (reported, not enforced: the exit status does not depend "
              "on them):", "", targets_table(tgts)]
    return "\n".join(lines) + "\n"


SVG_COLORS = {"pgbench textbook": "#4e79a7", "pgbench service SQL": "#a0cbe8",
              HTTP_OFF: "#f28e2b", HTTP_ON: "#e15759"}


def svg_panel(rows, key, title, x0, width, height):
    """One grouped bar chart (a group per scenario, a bar per runner)."""
    top, bottom = 40, 50
    plot_h = height - top - bottom
    vmax = max([r[key] for r in rows] + [1e-9]) * 1.15
    scenarios = list(dict.fromkeys(r["scenario"] for r in rows))
    group_w = width / max(1, len(scenarios))
    parts = ['<text x="%.1f" y="22" font-size="14" font-weight="bold">%s</text>'
             % (x0 + 10, title),
             '<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#333"/>'
             % (x0, top + plot_h, x0 + width, top + plot_h)]
    for gi, sc in enumerate(scenarios):
        group = [r for r in rows if r["scenario"] == sc]
        bar_w = (group_w - 20) / max(1, len(group))
        gx = x0 + gi * group_w + 10
        for bi, r in enumerate(group):
            h = plot_h * r[key] / vmax
            x, y = gx + bi * bar_w, top + plot_h - h
            parts.append('<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"/>'
                         % (x, y, bar_w - 2, h, SVG_COLORS.get(r["runner"], "#999")))
            label = "%.0f" % r[key] if r[key] >= 100 else "%.2f" % r[key]
            parts.append('<text x="%.1f" y="%.1f" font-size="10" text-anchor="middle">%s</text>'
                         % (x + (bar_w - 2) / 2, y - 3, label))
            # one runner at several client counts (hot-order's pgbench):
            # each bar says which
            if sum(1 for o in group if o["runner"] == r["runner"]) > 1:
                parts.append('<text x="%.1f" y="%d" font-size="9" text-anchor="middle" '
                             'fill="#555">%d</text>'
                             % (x + (bar_w - 2) / 2, top + plot_h + 30, r["clients"]))
        parts.append('<text x="%.1f" y="%d" font-size="12" text-anchor="middle">%s</text>'
                     % (gx + (group_w - 20) / 2, top + plot_h + 18, sc))
    return parts


def svg(meta, rows):
    w, h, panel_w = 1200, 340, 580
    parts = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" '
             'font-family="sans-serif">' % (w, h),
             '<rect width="100%" height="100%" fill="white"/>']
    parts += svg_panel(rows, "ops_s", "ops/s (higher is better)", 10, panel_w, h - 30)
    parts += svg_panel(rows, "cpu_ms_op", "machine CPU ms/op (lower is better)",
                       20 + panel_w, panel_w, h - 30)
    x = 20
    for runner, color in SVG_COLORS.items():
        if any(r["runner"] == runner for r in rows):
            parts.append('<rect x="%d" y="%d" width="12" height="12" fill="%s"/>'
                         % (x, h - 24, color))
            parts.append('<text x="%d" y="%d" font-size="12">%s</text>'
                         % (x + 16, h - 14, runner))
            x += 40 + 8 * len(runner)
    parts.append('<text x="%d" y="%d" font-size="11" fill="#555" text-anchor="end">'
                 '%d s per run, fsync on</text>' % (w - 10, h - 14, meta["duration"]))
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def write_atomically(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def publish(args, meta, rows):
    tgts = targets(rows, meta.get("quick", False))
    text = report_text(meta, rows, tgts)
    # with --json -, stdout carries only the JSON document
    print(text, end="", flush=True, file=sys.stderr if args.json == "-" else sys.stdout)
    os.makedirs(args.results, exist_ok=True)
    write_atomically(os.path.join(args.results, "shop-bench.txt"), text)
    write_atomically(os.path.join(args.results, "shop-bench.svg"), svg(meta, rows))
    if args.json:
        doc = json.dumps({"meta": meta, "rows": rows, "targets": tgts}, indent=2) + "\n"
        if args.json == "-":
            sys.stdout.write(doc)
        else:
            write_atomically(os.path.abspath(args.json), doc)


# ---- main -------------------------------------------------------------------------

class Context:
    """What every run needs: the paths, the processes and the ids."""

    def __init__(self, args):
        build = os.path.realpath(os.path.join(ROOT, args.build))
        self.shop_bin = os.path.join(build, "pgtx-shop")
        self.http_load = os.path.join(build, "http-load")
        self.work = os.path.join(build, "bench-data")
        self.duration, self.warmup, self.clients = args.duration, args.warmup, args.clients
        self.wait_quiet, self.quick = args.wait_quiet, args.quick
        self.token = secrets.token_urlsafe(32)
        self.shop = self.db = self.ids = self.probe = None


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--build", default="build", help="the build folder (default build)")
    p.add_argument("--duration", type=int, default=10, help="measured seconds per run")
    p.add_argument("--warmup", type=int, default=1, help="seconds before measuring")
    p.add_argument("--quick", action="store_true",
                   help="2 s runs, hot-order's pgbench at 64 clients only: a smoke test")
    p.add_argument("--scenarios", default=",".join(SCENARIOS),
                   help="comma-separated, of: " + ", ".join(SCENARIOS))
    p.add_argument("--clients", type=int, default=0,
                   help="clients for every scenario (default: 32, 64 for hot-order)")
    p.add_argument("--claim-accounts", type=int, default=0,
                   help="accounts per runner for claims (default: sized by duration)")
    p.add_argument("--wait-quiet", type=int, default=0, metavar="S",
                   help="before each run, wait up to S s for other loads on the "
                        "machine to stop (default 0: do not wait)")
    p.add_argument("--json", metavar="FILE", help="also write the rows as JSON ('-': stdout)")
    p.add_argument("--results", default=RESULTS, metavar="DIR",
                   help="where shop-bench.txt and .svg go (default bench/results, the "
                        "recorded run the README quotes)")
    p.add_argument("--strategies", default="atomic", metavar="LIST",
                   help="the strategies of the HTTP runs (Pgtx-Strategy), each with "
                        "combining off and on: 'all' or a comma-separated list of "
                        "atomic, lock, optimistic, serializable (default atomic; the "
                        "targets read atomic's rows)")
    p.add_argument("--shop-args", default="", metavar="FLAGS",
                   help="more flags for pgtx-shop, e.g. '--threads 16 --strategy lock'")
    p.add_argument("--keep-data", action="store_true",
                   help="keep the cluster (build/bench-data/pgdata) after the run; "
                        "the logs there are always kept")
    args = p.parse_args(argv)
    if args.quick:
        args.duration = 2
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    bad = [s for s in args.scenarios if s not in SCENARIOS]
    if bad or not args.scenarios:
        p.error("unknown scenario %s; choose among %s" % (bad, ", ".join(SCENARIOS)))
    if not 1 <= args.duration <= 3600 or not 0 <= args.warmup <= 600:
        p.error("--duration in 1..3600 and --warmup in 0..600")
    if args.clients and not 1 <= args.clients <= 1024:
        p.error("--clients in 1..1024")
    if not 0 <= args.wait_quiet <= 3600:
        p.error("--wait-quiet in 0..3600")
    SHOP_ARGS[:] = shlex.split(args.shop_args)
    STRATEGIES[:] = (list(ALL_STRATEGIES) if args.strategies == "all"
                     else [x.strip() for x in args.strategies.split(",") if x.strip()])
    if not STRATEGIES or any(x not in ALL_STRATEGIES for x in STRATEGIES):
        p.error("--strategies: 'all' or a comma-separated list of %s" % ", ".join(ALL_STRATEGIES))
    STRATEGIES.sort(key=ALL_STRATEGIES.index)
    return args


def check_tools(ctx):
    for path in (ctx.shop_bin, ctx.http_load):
        if not os.access(path, os.X_OK):
            raise BenchError("%s is missing: run `make` first" % path)
    for tool in ("pgbench", "psql"):
        if shutil.which(tool) is None:
            raise BenchError("%s is not installed (Debian: postgresql-client)" % tool)


def server_meta(ctx, args):
    v = ctx.db.json("SELECT json_build_object('server', 'PostgreSQL ' || "
                    "current_setting('server_version'), 'fsync', current_setting('fsync'), "
                    "'synchronous_commit', current_setting('synchronous_commit'), "
                    "'max_connections', current_setting('max_connections')::int)")
    v.update(cores=os.cpu_count() or 1, duration=args.duration, warmup=args.warmup,
             quick=args.quick, shop_args=list(SHOP_ARGS))
    return v


def max_clients(args):
    return max([args.clients or SCENARIOS[s][0] for s in args.scenarios])


def shop_max_overflow(args):
    """The shop sizes its embedded cluster's max_connections as pool size +
    max overflow + 20, which leaves no room for pgbench's 64 clients.  A
    larger --max-overflow is the only knob; it does not change how the
    service runs, since each of its --threads workers (4 on 2 cores) holds
    at most one connection, far below the pool's 10."""
    return max(SHOP_MAX_OVERFLOW, max_clients(args))


def check_connections(ctx, meta, args):
    """pgbench opens one connection per client next to the shop's idle
    pool and psql; more than the cluster allows would fail mid-run."""
    need = max_clients(args)
    room = meta["max_connections"] - SHOP_POOL_SIZE - 6
    if need > room:
        raise BenchError("%d clients: the embedded cluster takes %d connections, "
                         "about %d are left for pgbench" % (need, meta["max_connections"], room))


def claim_accounts_per_runner(args):
    if "claims" not in args.scenarios:
        return 2
    if args.claim_accounts:
        return args.claim_accounts
    return max(20000, CLAIMS_PER_S_BOUND * (args.warmup + args.duration + 3))


def fresh_work_dir(ctx):
    """Wiped first: the cluster must be a new one, with only our data (and
    a server that a killed run left in it must not run on deleted files)."""
    stop_orphan_shop(ctx.shop_bin, os.path.join(ctx.work, "pgdata"))
    stop_orphan_cluster(os.path.join(ctx.work, "pgdata"))
    shutil.rmtree(ctx.work, ignore_errors=True)
    os.makedirs(ctx.work)
    # the cluster runs as postgres, which must be able to reach its folder
    os.chmod(ctx.work, 0o755)


def bench(args):
    ctx = Context(args)
    check_tools(ctx)
    fresh_work_dir(ctx)
    ctx.shop = Shop(ctx.shop_bin, os.path.join(ctx.work, "pgdata"), ctx.token,
                    shop_max_overflow(args))
    try:
        log("starting pgtx-shop (embedded PostgreSQL in %s)" % ctx.shop.data_dir)
        ctx.shop.start()
        ctx.db = Db(ctx.shop.data_dir)
        ctx.probe = Probe(ctx.shop.proc.pid, postmaster_pid(ctx.shop.data_dir))
        meta = server_meta(ctx, args)
        check_connections(ctx, meta, args)
        log("%s, fsync %s, synchronous_commit %s; loading data"
            % (meta["server"], meta["fsync"], meta["synchronous_commit"]))
        ctx.ids = load_data(ctx.db, claim_runners() * claim_accounts_per_runner(args))
        rows = []
        for scenario in args.scenarios:
            rows += run_scenario(ctx, scenario)
    finally:
        # a second Ctrl-C or SIGTERM must not cut the shutdown short and
        # leave the shop and its cluster running (stop() is bounded in time)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        ctx.shop.stop()
    if not args.keep_data:
        shutil.rmtree(os.path.join(ctx.work, "pgdata"), ignore_errors=True)
    publish(args, meta, rows)
    return 0 if all(r["invariants_ok"] and r["complete"] for r in rows) else 1


def on_sigterm(signum, frame):
    raise Interrupted()


def main(argv):
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        return bench(args)
    except BenchError as e:
        log("error: %s" % e)
        return 1
    except (KeyboardInterrupt, Interrupted):
        log("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
