#!/usr/bin/env python3
"""test_pgbouncer - pgtx-shop behind PgBouncer in transaction mode.

PgBouncer (started by this test on 127.0.0.1, pool_mode = transaction,
4 server connections) sits between two pgtx-shop processes (8 pooled
connections each, so 16 client connections share the 4 server ones) and
PostgreSQL.  In transaction mode consecutive transactions of one client run
on whichever server connection is free, so anything a transaction leaves on
its session (SET, a prepared statement, an isolation level) reaches other
clients' transactions, and anything a client expects to find on its session
may be gone.  Then:

1. 32 clients make 25 deposits each to one account, the four strategies
   mixed on the same row (READ COMMITTED and SERIALIZABLE engines on the
   same server connections): every deposit answers 200 and the balance is
   exact.
2. 200 buyers order 1 each of a product of stock 100, strategies mixed,
   each with its own Idempotency-Key, while every server connection is
   shared: exactly 100 orders, no oversell, the invariants of API.md hold.
3. Nothing was left on the shared server sessions: four transactions held
   open at once through PgBouncer (so each is on its own server connection)
   see the server's defaults for the isolation level, read-only, statement
   and lock timeouts.
4. PgBouncer's own counters show the sharing: at most 4 server
   connections, more transactions than that many sessions could have run
   alone.

usage: PGTX_SHOP_BINARY=build/pgtx-shop python3 -m unittest test_pgbouncer (from tests/shop)
"""

import collections
import concurrent.futures
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import shoplib  # noqa: E402
from shoplib import STRATEGIES, check, fail, log  # noqa: E402

SLOW = shoplib.SLOW
SERVER_CONNECTIONS = 4
CLIENTS, PER_CLIENT = 32, 25
STOCK, BUYERS = 100, 200
START_DEADLINE = 20.0 * SLOW
ROUND_DEADLINE = 120.0 * SLOW
# the defaults every pooled session must still have afterwards
DEFAULTS = {"transaction_isolation": "read committed", "transaction_read_only": "off",
            "statement_timeout": "0", "lock_timeout": "0"}


class Bouncer:
    """A PgBouncer of this test's, in a folder of its own; as root it runs
    as the postgres user (it refuses root)."""

    def __init__(self, upstream, user, db):
        self.exe = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
        check(os.access(self.exe, os.X_OK), "pgbouncer is not installed (scripts/deps.sh installs it)")
        self.dir = tempfile.mkdtemp(prefix="pgtx-bouncer-", dir="/tmp")
        self.user, self.db = user, db
        if upstream[0] == "unix":
            self.server = "host=%s port=%s" % (os.path.dirname(upstream[1]), upstream[1].rsplit(".", 1)[1])
        else:
            self.server = "host=%s port=%s" % upstream[1:]
        self.server += " dbname=%s user=%s" % (db, user)
        if os.environ.get("PGPASSWORD"):
            self.server += " password=%s" % os.environ["PGPASSWORD"]
        # PgBouncer cannot be told port 0: a free port, and another if
        # something took it meanwhile
        for attempt in range(3):
            self.port = shoplib.free_port()
            self.proc = self._start()
            if self._wait_ready(last=attempt == 2):
                return

    def _write_config(self):
        ini = os.path.join(self.dir, "pgbouncer.ini")
        with open(ini, "w") as f:
            f.write("[databases]\nshop = %s\n\n[pgbouncer]\n" % self.server)
            f.write("listen_addr = 127.0.0.1\nlisten_port = %d\nunix_socket_dir =\n" % self.port)
            f.write("auth_type = trust\nauth_file = %s\n" % os.path.join(self.dir, "users.txt"))
            f.write("admin_users = %s\nstats_users = %s\n" % (self.user, self.user))
            f.write("pool_mode = transaction\ndefault_pool_size = %d\nmin_pool_size = 0\n"
                    "reserve_pool_size = 0\nmax_client_conn = 200\n" % SERVER_CONNECTIONS)
            f.write("logfile = %s\npidfile = %s\n" % (os.path.join(self.dir, "pgbouncer.log"),
                                                      os.path.join(self.dir, "pgbouncer.pid")))
        with open(os.path.join(self.dir, "users.txt"), "w") as f:
            f.write('"%s" ""\n' % self.user)
        return ini

    def _start(self):
        ini = self._write_config()
        cmd = [self.exe, ini]
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            for name in os.listdir(self.dir) + [""]:
                os.chown(os.path.join(self.dir, name), pw.pw_uid, pw.pw_gid)
            cmd = [self.exe, "-u", "postgres", ini]
        if shoplib.SETPRIV:
            cmd = [shoplib.SETPRIV, "--pdeathsig", "KILL"] + cmd
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)

    def dsn(self, db="shop"):
        return "host=127.0.0.1 port=%d dbname=%s user=%s sslmode=disable" % (
            self.port, db, shoplib.conninfo_quote(self.user))

    def psql(self, sql, db="shop", timeout=30.0):
        r = subprocess.run(["psql", "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-d", self.dsn(db), "-c", sql],
                           capture_output=True, timeout=timeout * SLOW, stdin=subprocess.DEVNULL)
        check(r.returncode == 0, lambda: "psql via pgbouncer %r: %s" % (sql, r.stderr.decode(errors="replace")))
        return r.stdout.decode().splitlines()

    def _wait_ready(self, last):
        """True once it answers; False when it exited at start and this was
        not the last attempt."""
        tried = []

        def answers_or_exited():
            if self.proc.poll() is not None:
                return "exited"
            r = subprocess.run(["psql", "-X", "-A", "-t", "-d", self.dsn(), "-c", "SELECT 1"],
                               capture_output=True, timeout=10, stdin=subprocess.DEVNULL)
            tried[:] = [r.stderr.decode(errors="replace")]
            return "ready" if r.returncode == 0 else None

        got = shoplib.wait_until(answers_or_exited, START_DEADLINE,
                                 lambda _: "pgbouncer answering: %s; log:\n%s"
                                 % ("".join(tried), self.log_tail()), interval=0.1)
        if got == "exited":
            if not last:
                return False
            fail("pgbouncer exited with %s at start; log:\n%s" % (self.proc.returncode, self.log_tail()))
        return True

    def admin(self, command):
        """Rows of an admin console command, as dicts."""
        r = subprocess.run(["psql", "-X", "-A", "-F", "\t", "-P", "footer=off", "-d", self.dsn("pgbouncer"),
                            "-c", command], capture_output=True, timeout=10 * SLOW, stdin=subprocess.DEVNULL)
        check(r.returncode == 0, lambda: "pgbouncer %s: %s" % (command, r.stderr.decode(errors="replace")))
        lines = r.stdout.decode().splitlines()
        names = lines[0].split("\t")
        return [dict(zip(names, line.split("\t"))) for line in lines[1:]]

    def log_tail(self, n=20):
        try:
            with open(os.path.join(self.dir, "pgbouncer.log"), errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return "(no log)"

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # safe shutdown
            try:
                self.proc.wait(timeout=10 * SLOW)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


def buy_round(h, addr, prod, accounts):
    """Each account orders 1 at once, strategies mixed; returns a Counter of
    (status, code) and the seconds it took."""
    barrier = threading.Barrier(len(accounts), timeout=60 * SLOW)

    def buyer(i):
        c = shoplib.Client(*addr)
        try:
            check(c.request("GET", "/healthz").status == 200, "GET /healthz")
            barrier.wait()
            r = c.request("POST", "/v1/orders", {"account_id": accounts[i]["id"], "product_id": prod,
                                                 "quantity": 1},
                          token=accounts[i]["token"],
                          headers={"Pgtx-Strategy": STRATEGIES[i % len(STRATEGIES)],
                                   "Idempotency-Key": h.unique("bouncer")})
            return r.status, r.error_code
        finally:
            c.close()

    with concurrent.futures.ThreadPoolExecutor(len(accounts)) as ex:
        t0 = time.monotonic()
        out = collections.Counter(ex.map(buyer, range(len(accounts))))
        took = time.monotonic() - t0
    return out, took


def check_sessions_clean(b):
    """Four transactions open at once, so on four different server
    connections: each sees the server's defaults."""
    sql = ("BEGIN; SELECT concat_ws('|', current_setting('transaction_isolation'),"
           " current_setting('transaction_read_only'), current_setting('statement_timeout'),"
           " current_setting('lock_timeout'), pg_backend_pid()) FROM pg_sleep(0.5); COMMIT;")
    with concurrent.futures.ThreadPoolExecutor(SERVER_CONNECTIONS) as ex:
        rows = list(ex.map(lambda _: b.psql(sql)[0], range(SERVER_CONNECTIONS)))
    pids = set()
    for row in rows:
        iso, ro, st, lt, pid = row.split("|")
        got = dict(zip(("transaction_isolation", "transaction_read_only", "statement_timeout", "lock_timeout"),
                       (iso, ro, st, lt)))
        check(got == DEFAULTS, lambda: "a pooled server session was left changed: %r, want %r" % (got, DEFAULTS))
        pids.add(pid)
    return pids


class PgBouncer(shoplib.ShopTestCase):
    """Two processes behind one pgbouncer of the test's own; the session
    check counts what the load did: one method."""

    SERVER = False

    def test_transaction_mode(self):
        upstream, user, db = shoplib.upstream_address()
        b = Bouncer(upstream, user, db)
        try:
            run(self.h, b)
        finally:
            b.stop()


def run(h, b):
    # Transaction mode moves a client among server connections between
    # transactions: a statement prepared on one is unknown on the next.
    # The two processes share one port, which each must ask for.
    flags = ["--pool-size", "8", "--max-overflow", "0", "--pool-timeout-ms", "10000",
             "--statement-cache", "0", "--reuse-port"]
    a = h.start_server(database=b.dsn(), extra=flags)
    h.default_addr = a.addr
    h.start_server("127.0.0.1:%d" % a.port, extra=flags, database=b.dsn())

    acct = h.create_account(1000)
    statuses, retries, elapsed, odd = shoplib.hammer_deposits(a.addr, acct, "mixed", CLIENTS, PER_CLIENT,
                                                              ROUND_DEADLINE)
    total = CLIENTS * PER_CLIENT
    bal = h.get("/v1/accounts/%d" % acct["id"])["balance"]
    log("deposits through pgbouncer: %d clients x %d, strategies mixed: %s in %.2f s (%.0f/s), %d retries,"
        " balance %d (want %d)" % (CLIENTS, PER_CLIENT, dict(statuses), elapsed, total / elapsed, retries,
                                   bal, 1000 + total))
    check(statuses == {200: total}, lambda: "deposits: %s, e.g. %s" % (dict(statuses), odd[:3]))
    check(bal == 1000 + total, lambda: "balance %d, want %d" % (bal, 1000 + total))

    prod = h.create_product(price=10, stock=STOCK)["id"]
    buyers = h.create_accounts(BUYERS, lambda i: 100)
    outcome, took = buy_round(h, a.addr, prod, buyers)
    log("orders through pgbouncer: %d buyers, stock %d, strategies mixed: %s in %.2f s"
        % (BUYERS, STOCK, dict(outcome), took))
    check(outcome == {(201, None): STOCK, (409, "out_of_stock"): BUYERS - STOCK},
          lambda: "orders: %s, want %d x 201 and %d x 409 out_of_stock" % (dict(outcome), STOCK, BUYERS - STOCK))
    stock = h.get("/v1/products/%d" % prod)["stock"]
    check(stock == 0, lambda: "stock %d after the sale, want 0" % stock)
    n = h.check_invariants(what="through pgbouncer")

    pids = check_sessions_clean(b)
    servers = b.admin("SHOW SERVERS")
    stats = [r for r in b.admin("SHOW STATS") if r.get("database") == "shop"]
    xacts = int(stats[0]["total_xact_count"]) if stats else 0
    log("after: %d server sessions checked, all at the defaults %s; pgbouncer has %d server connection(s),"
        " %d transactions; invariants hold over %d entities" % (len(pids), DEFAULTS, len(servers), xacts, n))
    check(len(servers) <= SERVER_CONNECTIONS, lambda: "pgbouncer opened %d server connections, pool is %d"
          % (len(servers), SERVER_CONNECTIONS))
    check(xacts > total, lambda: "pgbouncer counted %d transactions for %d deposits" % (xacts, total))


if __name__ == "__main__":
    shoplib.main()
