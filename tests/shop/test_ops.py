#!/usr/bin/env python3
"""test_ops - operational behaviour of pgtx-shop: overload, start-up errors,
shutdown with a request in flight, the generated admin token, IPv6.

1. Overload.  A psql session holds the account's row lock, so that the
   deposits sent to it stay in the server until the lock goes; a burst of
   concurrent deposits then meets a full house:
   - `--threads 1 --queue 1`: one deposit runs (blocked on the row), at most
     one waits in the queue, every other is refused at once: 503 `overloaded`
     with `Retry-After`; no checkout gave up (the pool's timeout counter).
   - `--threads 8 --pool-size 1 --max-overflow 0 --pool-timeout-ms 50`: one
     deposit holds the only connection; every other, taking its turn for
     the row (two writes of a row at once), gives up waiting for the
     connection: 503 `overloaded` with `Retry-After`, each one counted by
     the pool's timeout counter.
   Both with `--lock-timeout-ms 0`, so that the held row never turns the
   blocked deposit into a 503 `row_busy`, however slow the machine.
   Then the lock goes, the admitted deposits answer 200, and the balance is
   the initial one plus the 200s: a 503 changed nothing.  A second burst per
   server runs without the lock (real contention, any mix of 200 and 503).
   Every request has a client timeout; every wait has a deadline.
2. Start-up errors.  Bad flags exit 2 at once with exactly one line on
   stderr, print nothing on stdout and listen nowhere; --help exits 0 and
   lists every flag; an unreachable database ends the process (non-zero,
   within 15 s) with one error line.  Bad connection strings (a port that is
   not a number, no `=`, a broken URI) from --database or DATABASE_URL are
   exit 2 with one line, at once, and a URI's password is not printed.
   Every variable with a bad value is exit 2 naming it; all of them bad at
   once, each overridden by a good flag, and the server starts and serves.
3. SIGTERM mid-request.  A `lock`-strategy deposit waits for a row lock held
   by psql; SIGTERM arrives (the server logs that it is shutting down); the
   lock goes: the deposit answers 200, the server exits 0 and the deposit is
   in the database.
4. The generated admin token (embedded cluster in a temporary folder): the
   token printed on the `admin token:` line is in DIR/admin-token, mode
   0600; it works; it is the same after a restart; after SIGTERM, and after
   SIGINT (Ctrl-C), the server exits 0 and no PostgreSQL process of that
   data folder is left.
5. IPv6: `--listen [::1]:0` serves /healthz (skipped with a note when ::1 is
   not configured).
6. One address, one process, unless asked: while a server holds its port,
   a second process on it exits 1 at once with one line naming the address
   and --reuse-port, with or without --reuse-port of its own (the first did
   not ask), and the first keeps serving.  Two processes that both pass
   --reuse-port share the port: fresh connections reach both (each one's
   request log shows some); a third without the flag is refused, one with
   PGTX_REUSE_PORT=1 joins.

usage: PGTX_SHOP_BINARY=build/pgtx-shop python3 -m unittest test_ops (from tests/shop)
"""

import collections
import http.client
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import shoplib  # noqa: E402
from shoplib import check, fail, log  # noqa: E402

SLOW = shoplib.SLOW
BURST = 40                        # concurrent requests per burst
INITIAL = 1000                    # each account's starting balance
CLIENT_TIMEOUT = 20.0 * SLOW      # per request (socket operations)
BLOCK_DEADLINE = 10.0 * SLOW      # for the server's request to reach the row lock
SETTLE_DEADLINE = 10.0 * SLOW     # for the refused requests to be answered
BAD_FLAG_DEADLINE = 5.0 * SLOW    # a bad flag must end the process this fast
UNREACHABLE_DEADLINE = 15.0 * SLOW
BUSY_DEADLINE = 5.0 * SLOW        # a busy address must end the process this fast
SHARE_CONNECTIONS = 200           # fresh connections spread over two processes, at most
SHARE_DEADLINE = 30.0 * SLOW

FLAGS = ("--database", "--data-dir", "--listen", "--reuse-port", "--admin-token", "--threads", "--queue",
         "--pool-size", "--max-overflow", "--idle-timeout-ms", "--statement-cache", "--pool-timeout-ms",
         "--db-timeout-ms", "--strategy", "--allow-unsafe", "--log-level", "--max-body", "--help", "--version")


def clean_env(extra=None):
    """The environment without the service's own variables: each run here
    is configured by its flags alone (and `extra`, when given)."""
    env = {k: v for k, v in os.environ.items() if not (k.startswith("PGTX_") or k == "DATABASE_URL")}
    env.update(extra or {})
    return env


def refuses(host, port):
    """True when nothing accepts connections on host:port."""
    try:
        socket.create_connection((host, port), timeout=2).close()
        return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False  # a timeout is not a refusal


class LineReader:
    """Reads lines from a pipe with deadlines (no thread)."""

    def __init__(self, pipe):
        self.fd = pipe.fileno()
        self.buf = b""

    def line(self, deadline):
        """The next line, or None at EOF; fails at the deadline."""
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            ready, _, _ = select.select([self.fd], [], [], min(left, 1.0))
            if ready:
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    return None
                self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line.decode("utf-8", "replace")


class RowLock:
    """A psql session holding `SELECT ... FOR UPDATE` on one account row in
    an open transaction until release(); close() kills it if still there."""

    def __init__(self, account_id):
        self.account_id = account_id
        self.errf = tempfile.TemporaryFile()
        cmd = ["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"]
        if shoplib.DSN:
            cmd += ["-d", shoplib.DSN]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.errf, start_new_session=True)
        self.out = LineReader(self.proc.stdout)
        self.pid = None

    def _stderr(self):
        self.errf.seek(0)
        return self.errf.read().decode("utf-8", "replace").strip()

    def _send(self, sql, marker, timeout=10.0):
        try:
            self.proc.stdin.write((sql + "\n\\echo " + marker + "\n").encode())
            self.proc.stdin.flush()
        except OSError:
            pass  # reported as EOF below
        lines, deadline = [], time.monotonic() + timeout * SLOW
        while True:
            line = self.out.line(deadline)
            if line is None or line is False:
                fail("lock-holding psql: no %r (%s); stderr: %s"
                     % (marker, "EOF" if line is None else "timeout", self._stderr()))
            if line == marker:
                return lines
            lines.append(line)

    def acquire(self):
        lines = self._send("BEGIN;\nSELECT pg_backend_pid();\n"
                           "SELECT id FROM account WHERE id = %d FOR UPDATE;" % self.account_id,
                           "__locked__")
        check(len(lines) == 2 and lines[1] == str(self.account_id),
              "lock-holding psql: unexpected output %r" % lines)
        self.pid = int(lines[0])
        return self

    def waiters(self):
        return int(shoplib.psql("SELECT count(*) FROM pg_stat_activity WHERE %d = ANY(pg_blocking_pids(pid));"
                                % self.pid)[0])

    def wait_waiters(self, n, timeout=BLOCK_DEADLINE):
        """Polls until n sessions wait for this lock; returns the seconds."""
        t0 = time.monotonic()
        shoplib.wait_until(lambda: self.waiters() >= n, timeout,
                           lambda _: "%d session(s) waiting for the row lock on account %d, want %d"
                           % (self.waiters(), self.account_id, n), interval=0.02)
        return time.monotonic() - t0

    def release(self):
        self._send("COMMIT;", "__released__")
        self.close()

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.errf.close()


class Burst:
    """n concurrent deposits of 1 to one account, each on its own
    connection, released together by a barrier."""

    def __init__(self, addr, account_id, token, n, strategy):
        self.addr, self.account_id, self.token, self.n = addr, account_id, token, n
        self.headers = {"Pgtx-Strategy": strategy}
        self.results = [None] * n       # Response, or the exception raised
        self.done = 0
        self.cv = threading.Condition()
        self.barrier = threading.Barrier(n, timeout=10 * SLOW)
        self.threads = [threading.Thread(target=self._one, args=(i,), daemon=True) for i in range(n)]
        self.t0 = None

    def start(self):
        self.t0 = time.monotonic()
        for t in self.threads:
            t.start()
        return self

    def _one(self, i):
        c = shoplib.Client(*self.addr, timeout=CLIENT_TIMEOUT)
        try:
            self.barrier.wait()
            r = c.request("POST", "/v1/accounts/%d/deposits" % self.account_id, {"amount": 1},
                          token=self.token, headers=self.headers)
        except (OSError, http.client.HTTPException, threading.BrokenBarrierError) as e:
            r = e
        finally:
            c.close()
        with self.cv:
            self.results[i] = r
            self.done += 1
            self.cv.notify_all()

    def wait_outstanding(self, at_most, timeout=SETTLE_DEADLINE):
        """Waits until at most `at_most` requests are unanswered; returns
        how many are."""
        deadline = time.monotonic() + timeout
        with self.cv:
            while self.n - self.done > at_most and time.monotonic() < deadline:
                self.cv.wait(min(0.5, max(0.0, deadline - time.monotonic())))
            return self.n - self.done

    def join(self):
        deadline = time.monotonic() + CLIENT_TIMEOUT + 15 * SLOW
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        alive = sum(t.is_alive() for t in self.threads)
        check(alive == 0, "%d of %d requests still unanswered %.0f s after the burst began"
              % (alive, self.n, time.monotonic() - self.t0))
        return time.monotonic() - self.t0

    def classify(self, what):
        """Every answer is a 200 (this account, a plausible balance) or a 503
        `overloaded` with Retry-After; returns (n200, n503, Retry-After values)."""
        n200, n503, retry_after = 0, 0, collections.Counter()
        for i, r in enumerate(self.results):
            req = "POST /v1/accounts/%d/deposits {\"amount\": 1} %r" % (self.account_id, self.headers)
            if not isinstance(r, shoplib.Response):
                fail("%s: request %d (%s) got no answer: %r" % (what, i, req, r))
            if r.status == 200:
                j = r.json
                check(isinstance(j, dict) and j.get("id") == self.account_id
                      and isinstance(j.get("balance"), int) and j["balance"] > INITIAL,
                      lambda: "%s: %s -> 200 with an unexpected body: %r" % (what, req, r))
                n200 += 1
            elif r.status == 503:
                ra = r.headers.get("retry-after")
                check(r.error_code == "overloaded" and ra is not None and ra.isdigit(),
                      lambda: "%s: %s -> %r, headers %r; want 503 overloaded with Retry-After: <seconds>"
                      % (what, req, r, r.headers))
                n503 += 1
                retry_after[int(ra)] += 1
            else:
                fail("%s: %s -> %r; want 200, or 503 overloaded" % (what, req, r))
        return n200, n503, retry_after


def deposits_in_db(account_id):
    row = shoplib.sql_json("SELECT a.balance, (SELECT count(*) FROM ledger l WHERE l.account_id = a.id"
                           " AND l.kind = 'deposit') AS deposits FROM account a WHERE a.id = %d" % account_id)
    check(len(row) == 1, "account %d not in the database" % account_id)
    return row[0]["balance"], row[0]["deposits"]


def overload_round(h, s, flags, max_admitted, pool_refusals):
    """One server, two bursts (row locked, then free); returns a summary.
    max_admitted: how many deposits may still be unanswered while one of
    them holds the worker and the connection; pool_refusals: whether the
    503s come from checkouts that gave up (else from the full queue)."""
    c = shoplib.Client(*s.addr, timeout=CLIENT_TIMEOUT)
    try:
        acct = h.create_account(INITIAL, c=c)
        aid = acct["id"]
        timeouts0 = shoplib.metric(c, "pgtx_shop_pool_timeouts_total")
        lock = RowLock(aid)
        try:
            lock.acquire()
            burst = Burst(s.addr, aid, h.admin_token, BURST, "serializable").start()
            lock.wait_waiters(1)
            left = burst.wait_outstanding(max_admitted)
            check(left <= max_admitted,
                  "%s: one deposit holds the row; %d of %d requests are still unanswered after %.0f s,"
                  " want at most %d (the rest refused with 503 overloaded)"
                  % (flags, left, BURST, SETTLE_DEADLINE, max_admitted))
            refused_at = time.monotonic() - burst.t0
            lock.release()
        finally:
            lock.close()
        took = burst.join()
        n200, n503, ra = burst.classify(flags + ", row locked")
        check(n503 >= 1 and n200 >= 1, "%s, row locked: %d x 200, %d x 503; want some of each" % (flags, n200, n503))
        check(n200 <= max_admitted, "%s, row locked: %d x 200, want at most %d" % (flags, n200, max_admitted))
        timeouts = shoplib.metric(c, "pgtx_shop_pool_timeouts_total") - timeouts0
        if pool_refusals:
            check(timeouts == n503, "%s: pool_timeouts_total rose by %d, %d answers were 503"
                  % (flags, timeouts, n503))
        else:
            check(timeouts == 0, "%s: pool_timeouts_total rose by %d; the 503s should come from the full queue"
                  % (flags, timeouts))
        balance, rows = deposits_in_db(aid)
        check(balance == INITIAL + n200 and rows == n200,
              "%s, row locked: balance %d with %d deposit rows; want %d + %d x 200 = %d"
              % (flags, balance, rows, INITIAL, n200, INITIAL + n200))

        # no lock: the burst meets the server as it is
        free = Burst(s.addr, aid, h.admin_token, BURST, "serializable").start()
        free_took = free.join()
        f200, f503, fra = free.classify(flags + ", free burst")
        balance, rows = deposits_in_db(aid)
        check(balance == INITIAL + n200 + f200 and rows == n200 + f200,
              "%s, after the free burst: balance %d with %d deposit rows; want %d + %d x 200 = %d"
              % (flags, balance, rows, INITIAL, n200 + f200, INITIAL + n200 + f200))
        h.check_invariants(accounts=[aid], products=[], coupons=[], what=flags)
        ras = sorted((ra + fra).items())
        return ("%s: row locked: %d x 200, %d x 503 overloaded (all but %d refused within %.2f s;"
                " pool timeouts +%d), all answered in %.2f s; free burst: %d x 200, %d x 503 in %.2f s;"
                " Retry-After %s; balance %d = %d + %d"
                % (flags, n200, n503, left, refused_at, timeouts, took, f200, f503, free_took,
                   ",".join("%d (x%d)" % kv for kv in ras), balance, INITIAL, n200 + f200))
    finally:
        c.close()


def check_overload(h):
    flags = ["--threads", "1", "--queue", "1", "--pool-size", "1", "--max-overflow", "0",
             "--lock-timeout-ms", "0"]
    s = h.start_server(extra=flags, name="queue1")
    try:
        log("overload (queue): " + overload_round(h, s, " ".join(flags), 2, False))
    finally:
        s.stop()
    # Each deposit its own transaction (--batch-limit 1), so that they queue
    # for the one pooled connection; combined, they would wait in their
    # row's lane instead (test_combining).
    flags = ["--threads", "8", "--pool-size", "1", "--max-overflow", "0", "--pool-timeout-ms", "50",
             "--lock-timeout-ms", "0", "--batch-limit", "1"]
    s = h.start_server(extra=flags, name="pool1")
    try:
        log("overload (pool): " + overload_round(h, s, " ".join(flags), 1, True))
    finally:
        s.stop()


# ------------------------------------------------------------ start-up -----

def run_bounded(cmd, timeout, env=None):
    t0 = time.monotonic()
    try:
        p = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           env=clean_env(env), timeout=timeout)
    except subprocess.TimeoutExpired:
        fail("%r still running after %.0f s (killed)" % (cmd, timeout))
    return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace"), \
        time.monotonic() - t0


def check_startup_errors(h):
    bad = [(["--threads", "abc"], "--threads"),
           (["--pool-size", "-1"], "--pool-size"),
           (["--strategy", "nope"], "nope"),
           (["--listen", "nonsense"], "nonsense"),
           (["--unknown-flag"], "--unknown-flag"),
           (["--strategy", "naive"], "--allow-unsafe")]
    slowest = 0.0
    for args, names in bad:
        port = shoplib.free_port()
        cmd = [h.binary, "--database", shoplib.DSN, "--listen", "127.0.0.1:%d" % port] + args
        rc, out, err, took = run_bounded(cmd, BAD_FLAG_DEADLINE)
        what = "pgtx-shop ... %s" % " ".join(args)
        lines = err.splitlines()
        check(rc == 2, lambda: "%s: exit %d, want 2; stderr: %r" % (what, rc, err))
        check(len(lines) == 1, lambda: "%s: %d stderr lines, want exactly 1: %r" % (what, len(lines), err))
        check(names in lines[0], lambda: "%s: the error line does not name %r: %r" % (what, names, lines[0]))
        check(out == "", lambda: "%s: printed on stdout: %r" % (what, out))
        check(refuses("127.0.0.1", port), "%s: something accepts connections on 127.0.0.1:%d" % (what, port))
        slowest = max(slowest, took)

    rc, out, err, took = run_bounded([h.binary, "--help"], BAD_FLAG_DEADLINE)
    check(rc == 0, lambda: "pgtx-shop --help: exit %d, want 0; stderr %r" % (rc, err))
    listed = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", out))
    missing = [f for f in FLAGS if f not in listed]
    check(not missing, lambda: "pgtx-shop --help does not list %s:\n%s" % (", ".join(missing), out))

    # --version prints the header's version (the one place it is kept)
    header = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "include",
                               "pgtx.h")).read()
    want = ".".join(re.search(r"#define PGTX_VERSION_%s (\d+)" % p, header).group(1)
                    for p in ("MAJOR", "MINOR", "PATCH"))
    rc, out, err, took = run_bounded([h.binary, "--version"], BAD_FLAG_DEADLINE)
    check(rc == 0 and out == "pgtx-shop %s\n" % want,
          lambda: "pgtx-shop --version: exit %d, printed %r, want 'pgtx-shop %s'" % (rc, out, want))

    port = shoplib.free_port()
    dsn = "host=127.0.0.1 port=1 connect_timeout=1"
    cmd = [h.binary, "--database", dsn, "--listen", "127.0.0.1:%d" % port]
    rc, out, err, unreach = run_bounded(cmd, UNREACHABLE_DEADLINE)
    what = "pgtx-shop --database %r" % dsn
    lines = err.splitlines()
    errors = [l for l in lines if not l.startswith("level=")]
    check(rc != 0, lambda: "%s: exit 0, want non-zero; stderr %r" % (what, err))
    check(len(errors) == 1 and errors[0].startswith("pgtx-shop: ") and "127.0.0.1" in errors[0],
          lambda: "%s: want one error line naming the server; stderr: %r" % (what, err))
    check("listening" not in out, lambda: "%s: stdout %r" % (what, out))
    check(refuses("127.0.0.1", port), "%s: something accepts connections on 127.0.0.1:%d" % (what, port))
    log("start-up errors: %d bad invocations exit 2 with one stderr line, empty stdout, nothing listening"
        " (slowest %.2f s); --help exit 0 lists all %d flags; unreachable database: exit %d after %.1f s,"
        " %d stderr line(s), error: %s" % (len(bad), slowest, len(FLAGS), rc, unreach, len(lines), errors[0][:110]))


# ------------------------------------------------ where settings come from -----

# Each variable with a value it refuses, and the flag that puts it right.
# (PGTX_DATA_DIR and PGTX_ADMIN_TOKEN refuse only "", which counts as unset.)
BAD_ENV = (("DATABASE_URL", "host=localhost port=notaport", None),
           ("PGTX_LISTEN", "nonsense", None),
           ("PGTX_REUSE_PORT", "maybe", ["--reuse-port=no"]),
           ("PGTX_THREADS", "abc", ["--threads", "8"]),
           ("PGTX_QUEUE", "0", ["--queue", "64"]),
           ("PGTX_POOL_SIZE", "-1", ["--pool-size", "8"]),
           ("PGTX_MAX_OVERFLOW", "many", ["--max-overflow", "2"]),
           ("PGTX_IDLE_TIMEOUT_MS", "-5", ["--idle-timeout-ms", "1000"]),
           ("PGTX_STATEMENT_CACHE", "1e3", ["--statement-cache", "16"]),
           ("PGTX_POOL_TIMEOUT_MS", "0", ["--pool-timeout-ms", "2000"]),
           ("PGTX_DB_TIMEOUT_MS", "soon", ["--db-timeout-ms", "15000"]),
           ("PGTX_STRATEGY", "fast", ["--strategy", "atomic"]),
           ("PGTX_ALLOW_UNSAFE", "perhaps", ["--allow-unsafe=no"]),
           ("PGTX_LOG_LEVEL", "loud", ["--log-level", "info"]),
           ("PGTX_MAX_BODY", "0", ["--max-body", "65536"]))

BAD_CONNINFO = ("host=localhost port=notaport", "foo", "postgresql://[bad", "postgresql://h:99999/db",
                "postgresql://app:s3cret@[bad")


def refused_at_once(h, what, cmd, env, names, port):
    """cmd exits 2 within BAD_FLAG_DEADLINE with one stderr line naming
    `names`, prints nothing and listens nowhere; returns that line."""
    rc, out, err, took = run_bounded(cmd, BAD_FLAG_DEADLINE, env)
    lines = err.splitlines()
    check(rc == 2, lambda: "%s: exit %d, want 2; stderr: %r" % (what, rc, err))
    check(len(lines) == 1, lambda: "%s: %d stderr lines, want exactly 1: %r" % (what, len(lines), err))
    check(names in lines[0], lambda: "%s: the error line does not name %r: %r" % (what, names, lines[0]))
    check(out == "", lambda: "%s: printed on stdout: %r" % (what, out))
    check(port is None or refuses("127.0.0.1", port),
          "%s: something accepts connections on 127.0.0.1:%s" % (what, port))
    return lines[0]


def check_config_sources(h):
    shown = []
    for bad in BAD_CONNINFO:
        port = shoplib.free_port()
        base = [h.binary, "--listen", "127.0.0.1:%d" % port, "--admin-token", h.admin_token]
        line = refused_at_once(h, "pgtx-shop --database %r" % bad, base + ["--database", bad], None,
                               "--database", port)
        check("s3cret" not in line, lambda: "--database %r: the password is printed: %r" % (bad, line))
        shown.append(line)
        refused_at_once(h, "DATABASE_URL=%r pgtx-shop" % bad, base, {"DATABASE_URL": bad}, "DATABASE_URL", port)
    for var, value, _ in BAD_ENV:
        port = shoplib.free_port()
        cmd = [h.binary, "--admin-token", h.admin_token]
        if var != "DATABASE_URL":
            cmd += ["--database", shoplib.DSN]
        if var != "PGTX_LISTEN":
            cmd += ["--listen", "127.0.0.1:%d" % port]
        refused_at_once(h, "%s=%r pgtx-shop" % (var, value), cmd, {var: value}, var,
                        port if var != "PGTX_LISTEN" else None)

    # All of them bad at once, each overridden by its flag: not read at all.
    env = {var: value for var, value, _ in BAD_ENV}
    cmd = [h.binary, "--database", shoplib.DSN, "--listen", "127.0.0.1:0", "--admin-token", h.admin_token]
    for _, _, flags in BAD_ENV:
        cmd += flags or []
    p = Proc("overridden", cmd, env)
    try:
        first = p.wait_lines(1, shoplib.START_DEADLINE)[0]
        m = shoplib.LISTEN_RE.match(first)
        check(m, lambda: "bad variables overridden by flags: first line %r; stderr:\n%s" % (first, p.stderr_text()))
        c = shoplib.Client(m.group(1), int(m.group(2)), timeout=CLIENT_TIMEOUT)
        r = c.request("GET", "/healthz")
        c.close()
        check(r.status == 200, lambda: "bad variables overridden by flags: GET /healthz %r" % r)
        p.terminate()
    finally:
        p.close()
    log("config sources: %d bad connection strings exit 2 at once from --database and DATABASE_URL (e.g. %s);"
        " %d variables with a bad value exit 2 naming it; all of them bad and overridden by flags: starts,"
        " /healthz 200, exit 0" % (len(BAD_CONNINFO), shown[0], len(BAD_ENV)))


# ----------------------------------------------------------- one port -----

def busy_port_refused(h, port, extra, what, env=None):
    """A process on 127.0.0.1:port, which another holds, exits 1 within
    BUSY_DEADLINE with one line naming the address and --reuse-port."""
    cmd = [h.binary, "--database", shoplib.DSN, "--listen", "127.0.0.1:%d" % port,
           "--admin-token", h.admin_token] + extra
    rc, out, err, took = run_bounded(cmd, BUSY_DEADLINE, env)
    lines = err.splitlines()
    check(rc == 1, lambda: "%s: exit %d, want 1; stderr: %r" % (what, rc, err))
    check(len(lines) == 1, lambda: "%s: %d stderr lines, want exactly 1: %r" % (what, len(lines), err))
    addr = "127.0.0.1:%d" % port
    check(addr in lines[0] and "in use" in lines[0] and "--reuse-port" in lines[0],
          lambda: "%s: want a line naming %s, 'in use' and --reuse-port: %r" % (what, addr, lines[0]))
    check(out == "", lambda: "%s: printed on stdout: %r" % (what, out))
    return took, lines[0]


def healthz_served(s):
    """How many GET /healthz this server's request log shows."""
    return s.log_text().count('route="GET /healthz" status=200')


def spread_healthz(p, q):
    """Fresh connections to the shared port (the kernel picks a process per
    connection) until both have answered some; returns (sent, p's, q's)."""
    sent, deadline = 0, time.monotonic() + SHARE_DEADLINE
    while sent < SHARE_CONNECTIONS and time.monotonic() < deadline:
        c = shoplib.Client(*p.addr, timeout=CLIENT_TIMEOUT)
        r = c.request("GET", "/healthz")
        c.close()
        check(r.status == 200, lambda: "GET /healthz on the shared port: %r" % r)
        sent += 1
        if sent % 10 == 0 and healthz_served(p) and healthz_served(q):
            break
    # a request's log line may follow its answer by a moment
    shoplib.wait_until(lambda: healthz_served(p) + healthz_served(q) >= sent, SETTLE_DEADLINE,
                       "log lines of the /healthz answers", must=False)
    return sent, healthz_served(p), healthz_served(q)


def check_port_sharing(h):
    a = h.start_server(name="alone")
    try:
        took1, line = busy_port_refused(h, a.port, [], "second process, no --reuse-port")
        took2, _ = busy_port_refused(h, a.port, ["--reuse-port"], "second process with --reuse-port, the first"
                                     " without")
        check(a.alive(), "the first process died when others tried its port")
        c = shoplib.Client(*a.addr, timeout=CLIENT_TIMEOUT)
        r = c.request("GET", "/healthz")
        c.close()
        check(r.status == 200, lambda: "the first process after the refused ones: GET /healthz %r" % r)
    finally:
        a.stop()

    p, q = h.start_pair(extra=["--reuse-port"])
    joined = None
    try:
        sent, np, nq = spread_healthz(p, q)
        check(np > 0 and nq > 0, lambda: "%d fresh connections to the shared port %d: %d answered by %s,"
              " %d by %s; want both to serve" % (sent, p.port, np, p.name, nq, q.name))
        check(np + nq == sent, lambda: "%d requests sent, the two logs show %d + %d" % (sent, np, nq))
        took3, _ = busy_port_refused(h, p.port, [], "third process without --reuse-port on the shared port")
        joined = Proc("joined", [h.binary, "--database", shoplib.DSN, "--listen", "127.0.0.1:%d" % p.port,
                                 "--admin-token", h.admin_token], {"PGTX_REUSE_PORT": "1"})
        first = joined.wait_lines(1, shoplib.START_DEADLINE)[0]
        check(first == "pgtx-shop: listening on http://127.0.0.1:%d" % p.port,
              lambda: "PGTX_REUSE_PORT=1 on the shared port: first line %r; stderr:\n%s"
              % (first, joined.stderr_text()))
        joined.terminate()
    finally:
        if joined:
            joined.close()
        p.stop()
        q.stop()
    log("one port: a second process on a busy port exits 1 in %.2f s (%.2f s with --reuse-port alone): %s;"
        " the first serves on; --reuse-port on both: %d fresh connections, %d answered by one, %d by the"
        " other; a third without the flag exits 1 in %.2f s, one with PGTX_REUSE_PORT=1 joins"
        % (took1, took2, line, sent, np, nq, took3))


# ------------------------------------------------------------- SIGTERM -----

def check_sigterm(h):
    s = h.start_server(name="sigterm")
    c = shoplib.Client(*s.addr, timeout=CLIENT_TIMEOUT)
    acct = h.create_account(INITIAL, c=c)
    c.close()
    aid, amount = acct["id"], 7
    got = []
    lock = RowLock(aid)
    try:
        lock.acquire()

        def send():
            cl = shoplib.Client(*s.addr, timeout=CLIENT_TIMEOUT)
            try:
                got.append(cl.request("POST", "/v1/accounts/%d/deposits" % aid, {"amount": amount},
                                      token=h.admin_token, headers={"Pgtx-Strategy": "lock"}))
            except (OSError, http.client.HTTPException) as e:
                got.append(e)
            finally:
                cl.close()

        t = threading.Thread(target=send, daemon=True)
        t.start()
        lock.wait_waiters(1)
        t_sig = time.monotonic()
        s.proc.send_signal(signal.SIGTERM)
        shoplib.wait_until(lambda: "shutting down" in s.log_text() or not s.alive(),
                           t_sig + 10 * SLOW - time.monotonic(), "'shutting down' in the log",
                           interval=0.02, must=False)
        check("shutting down" in s.log_text(),
              lambda: "no 'shutting down' in the log within 10 s of SIGTERM; stderr:\n%s" % s.log_tail())
        seen = time.monotonic() - t_sig
        check(s.alive(), lambda: "the server exited (%s) with a request in flight" % s.proc.poll())
        check(t.is_alive() and not got, lambda: "the deposit was answered before the lock went: %r" % got)
        lock.release()
        t_rel = time.monotonic()
    finally:
        lock.close()
    t.join(CLIENT_TIMEOUT + 5)
    check(not t.is_alive(), "the deposit is unanswered %.0f s after the lock went" % (time.monotonic() - t_rel))
    r = got[0]
    req = "POST /v1/accounts/%d/deposits {\"amount\": %d} (Pgtx-Strategy: lock)" % (aid, amount)
    check(isinstance(r, shoplib.Response) and r.status == 200 and r.json.get("balance") == INITIAL + amount,
          lambda: "%s in flight at SIGTERM: %r; want 200 with balance %d" % (req, r, INITIAL + amount))
    answered = time.monotonic() - t_rel
    try:
        rc = s.proc.wait(timeout=shoplib.STOP_DEADLINE)
    except subprocess.TimeoutExpired:
        s.kill()
        fail("the server did not exit within %.0f s of SIGTERM (killed); stderr:\n%s"
             % (shoplib.STOP_DEADLINE, s.log_tail()))
    exited = time.monotonic() - t_sig
    check(rc == 0, lambda: "the server exited %s after SIGTERM, want 0; stderr:\n%s" % (rc, s.log_tail()))
    balance, rows = deposits_in_db(aid)
    check(balance == INITIAL + amount and rows == 1,
          "after the shutdown: balance %d with %d deposit rows; want %d with 1" % (balance, rows, INITIAL + amount))
    h.check_invariants(accounts=[aid], products=[], coupons=[], what="after the shutdown")
    log("SIGTERM mid-request: shutdown logged %.2f s after SIGTERM with the deposit blocked; lock released,"
        " deposit answered 200 (balance %d) %.2f s later; exit 0 %.2f s after SIGTERM; ledger has it once"
        % (seen, balance, answered, exited))


# -------------------------------------------------- embedded admin token -----

class Proc(shoplib.OwnProcess):
    """A pgtx-shop started with flags of our own, its stdout read by line."""

    def __init__(self, name, cmd, env=None):
        super().__init__(name, cmd, clean_env(env), prefix="pgtx-ops")
        self.out = LineReader(self.proc.stdout)
        self.lines = []

    def wait_lines(self, n, timeout):
        deadline = time.monotonic() + timeout
        while len(self.lines) < n:
            line = self.out.line(deadline)
            if line is None or line is False:
                fail("%s: %d stdout line(s) (%s), want %d: %r; stderr:\n%s"
                     % (self.name, len(self.lines), "EOF, exit %s" % self.proc.wait(10) if line is None
                        else "timeout", n, self.lines, self.stderr_text()))
            self.lines.append(line)
        return self.lines


def proc_start_time(pid):
    """A process's start time (field 22 of /proc/PID/stat), None if gone."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            stat = f.read()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[19]


def postgres_processes(data_dir):
    """The postmaster's pid (from postmaster.pid) and {pid: start time} of
    it and its children."""
    with open(os.path.join(data_dir, "postmaster.pid")) as f:
        pm = int(f.readline())
    found = {pm: proc_start_time(pm)}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open("/proc/%s/stat" % d) as f:
                    ppid = int(f.read().rpartition(")")[2].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == pm:
                found[int(d)] = proc_start_time(int(d))
    return pm, {p: t for p, t in found.items() if t is not None}


def procs_naming(path):
    """Processes whose command line contains path."""
    hits = []
    for d in os.listdir("/proc"):
        if d.isdigit() and int(d) != os.getpid():
            try:
                with open("/proc/%s/cmdline" % d, "rb") as f:
                    args = f.read().decode("utf-8", "replace").split("\0")
            except OSError:
                continue
            if any(path in a for a in args):
                hits.append((int(d), " ".join(args).strip()))
    return hits


def pg_ctl_status(pg_ctl, data_dir):
    """pg_ctl status as the owner of the data folder (pg_ctl refuses root)."""
    cmd = [pg_ctl, "status", "-D", data_dir]
    st = os.stat(data_dir)
    if os.geteuid() == 0 and st.st_uid != 0 and shoplib.SETPRIV:
        cmd = [shoplib.SETPRIV, "--reuid=%d" % st.st_uid, "--regid=%d" % st.st_gid, "--clear-groups"] + cmd
    p = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       timeout=15, cwd="/")
    return p.returncode, p.stdout.decode("utf-8", "replace").strip()


def check_gone(data_dir, pids, pg_ctl, what):
    """No process of the cluster is left: polls (bounded) and returns the
    seconds it took."""
    t0 = time.monotonic()

    def left_behind():
        alive = {p: t for p, t in pids.items() if proc_start_time(p) == t}
        named = procs_naming(data_dir)
        pidfile = os.path.exists(os.path.join(data_dir, "postmaster.pid"))
        return (sorted(alive), named, pidfile) if alive or named or pidfile else None

    shoplib.wait_until(lambda: left_behind() is None, 10 * SLOW,
                       lambda _: "%s: PostgreSQL of %s still there: pids, processes, postmaster.pid %r"
                       % (what, data_dir, left_behind()))
    took = time.monotonic() - t0
    if pg_ctl:
        rc, out = pg_ctl_status(pg_ctl, data_dir)
        check(rc == 3, "%s: pg_ctl status -D %s: exit %d (%s), want 3 (no server running)"
              % (what, data_dir, rc, out))
    return took


TOKEN_RE = re.compile(r"^admin token: (\S+) \(stored in (.+)\)$")


def start_embedded(h, base, data_dir, name):
    p = Proc(name, [h.binary, "--data-dir", data_dir, "--listen", "127.0.0.1:0"])
    t0 = time.monotonic()
    lines = p.wait_lines(2, shoplib.START_DEADLINE)
    m = shoplib.LISTEN_RE.match(lines[0])
    check(m, "%s: first stdout line %r" % (name, lines[0]))
    t = TOKEN_RE.match(lines[1])
    check(t, "%s: second stdout line %r, want 'admin token: TOKEN (stored in PATH)'" % (name, lines[1]))
    want = os.path.realpath(os.path.join(base, "admin-token"))
    check(os.path.realpath(t.group(2)) == want, "%s: token stored in %r, want %r" % (name, t.group(2), want))
    return p, (m.group(1), int(m.group(2))), t.group(1), time.monotonic() - t0


def check_admin_token(h):
    base = tempfile.mkdtemp(prefix="pgtx-ops-", dir="/tmp")
    os.chmod(base, 0o755)  # the cluster may run as the postgres user
    data_dir = os.path.join(base, "pgdata")
    token_path = os.path.join(base, "admin-token")
    procs = []
    try:
        p, addr, token, started = start_embedded(h, base, data_dir, "embedded1")
        procs.append(p)
        st = os.stat(token_path)
        check(st.st_mode & 0o777 == 0o600, "%s: mode %o, want 600" % (token_path, st.st_mode & 0o777))
        with open(token_path) as f:
            stored = f.read().strip()
        check(stored == token, "%s holds %r, the server printed %r" % (token_path, stored, token))
        pm, pids = postgres_processes(data_dir)
        pg_ctl = os.path.join(os.path.dirname(os.readlink("/proc/%d/exe" % pm)), "pg_ctl")
        pg_ctl = pg_ctl if os.access(pg_ctl, os.X_OK) else shutil.which("pg_ctl")
        if pg_ctl:
            rc, out = pg_ctl_status(pg_ctl, data_dir)
            check(rc == 0, "pg_ctl status -D %s while the service runs: exit %d (%s)" % (data_dir, rc, out))

        c = shoplib.Client(*addr, timeout=CLIENT_TIMEOUT)
        body = {"name": h.unique("embedded"), "balance": 5}
        r = c.request("POST", "/v1/accounts", body, token=token)
        check(r.status == 201, lambda: "POST /v1/accounts %r with the printed admin token: %r" % (body, r))
        aid = r.json["id"]
        r = c.request("POST", "/v1/accounts", body, token=token + "x")
        check(r.status == 401, lambda: "POST /v1/accounts with a wrong token: %r, want 401" % r)
        c.close()
        stop1 = p.terminate()
        gone1 = check_gone(data_dir, pids, pg_ctl, "after the first SIGTERM")

        p, addr, token2, restarted = start_embedded(h, base, data_dir, "embedded2")
        procs.append(p)
        check(token2 == token, "after a restart the admin token is %r, was %r" % (token2, token))
        _, pids = postgres_processes(data_dir)
        c = shoplib.Client(*addr, timeout=CLIENT_TIMEOUT)
        r = c.request("GET", "/v1/accounts/%d" % aid, token=token)
        check(r.status == 200 and r.json.get("balance") == 5,
              lambda: "GET /v1/accounts/%d with the admin token after a restart: %r" % (aid, r))
        c.close()
        stop2 = p.terminate(signal.SIGINT)
        gone2 = check_gone(data_dir, pids, pg_ctl, "after the final SIGINT")
        log("admin token (embedded cluster): started in %.1f s, token in %s mode 600 matches the printed one"
            " and creates an account (a wrong one: 401); SIGTERM exit 0 in %.2f s, cluster gone %.2f s later;"
            " restart in %.1f s prints the same token, the account is there; SIGINT exit 0 in %.2f s, no postgres"
            " process of %s left (%d were running; %s)"
            % (started, token_path, stop1, gone1, restarted, stop2, data_dir, len(pids),
               "pg_ctl status: no server running" if pg_ctl else "pg_ctl not found"))
    finally:
        for p in procs:
            p.close()
        # a cluster left behind by a failed run: stop it by its pid
        try:
            with open(os.path.join(data_dir, "postmaster.pid")) as f:
                pm = int(f.readline())
            os.kill(pm, signal.SIGQUIT)
            shoplib.wait_until(lambda: proc_start_time(pm) is None, 10, "the left-behind cluster gone",
                               must=False)
        except (OSError, ValueError):
            pass
        shutil.rmtree(base, ignore_errors=True)


# --------------------------------------------------------------- IPv6 -----

def check_ipv6(h):
    try:
        probe = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        try:
            probe.bind(("::1", 0))
        finally:
            probe.close()
    except OSError as e:
        log("ipv6: skipped, ::1 is not configured here (%s)" % e)
        return
    s = h.start_server(listen="[::1]:0", name="ipv6")
    try:
        check(s.host == "::1", "listening on %r, want ::1" % s.host)
        c = shoplib.Client("::1", s.port, timeout=CLIENT_TIMEOUT)
        r = c.request("GET", "/healthz")
        c.close()
        check(r.status == 200, lambda: "GET http://[::1]:%d/healthz: %r" % (s.port, r))
    finally:
        took = s.stop()
    log("ipv6: listening on [::1]:%d, GET /healthz -> 200 %s, exit 0 %.2f s after SIGTERM"
        % (s.port, r.body.decode("utf-8", "replace"), took))


class Ops(shoplib.ShopTestCase):
    """One method per part of the scenario above; each starts (and stops)
    its own servers."""

    SERVERS_PER_TEST = True

    def test_overload(self):
        check_overload(self.h)

    def test_startup_errors(self):
        check_startup_errors(self.h)

    def test_config_sources(self):
        check_config_sources(self.h)

    def test_port_sharing(self):
        check_port_sharing(self.h)

    def test_sigterm(self):
        check_sigterm(self.h)

    def test_admin_token(self):
        check_admin_token(self.h)

    def test_ipv6(self):
        check_ipv6(self.h)


if __name__ == "__main__":
    shoplib.main()
