#!/usr/bin/env python3
"""test_ha - pgtx-shop on the high-availability lab (scripts/ha.sh): a
primary, a synchronous standby and a read replica whose replay is delayed,
under pg_auto_failover.

Failover under load (one process, then two sharing a port): 16 clients
place orders, each with its own Idempotency-Key, and send a 503 or a broken
connection again with the same key until they get a final answer.  A
planned failover (`ha.sh failover`) comes at a fifth of the run, an
unplanned one (`ha.sh kill-primary`: SIGKILL to the primary's postmaster and
its keeper) at a bit over half.  Afterwards, on the new primary:
- every order acknowledged (201, or 200 for a replay) is there exactly once,
  under its key, with the id the answer gave: the standby that took over
  had every acknowledged commit;
- no order exists for a key whose final answer was 4xx (a scarce product
  runs out during the run, so there are some);
- every final answer was 201, 200 or 409 out_of_stock, never a 500;
- the contract's invariants hold.
It prints, per failover, the time from the trigger to the first failed
write, and from the first failed write to the first successful one.

Read-your-writes: with --read-database on the delayed replica, a client
deposits and then reads its balance with the deposit's Pgtx-Commit-LSN,
1000 times: the balance read is never older than the deposit.  Reads
without the header, some of the time, show the replica's delay is real
(they see older balances), and reads after waiting out the delay show the
replica does serve when it has caught up.

Read throughput: GETs with --read-database on the synchronous standby
against GETs on the primary alone, alternated, printed as a ratio.

The lab: the one `scripts/ha.sh run` exported (PGTX_HA_*), else one this
module starts on free loopback ports and takes down.
PGTX_HA_SECONDS: length of each failover run (default 60).

usage: PGTX_SHOP_BINARY=build/pgtx-shop python3 -m unittest test_ha (from tests/shop)
"""

import collections
import http.client
import os
import random
import socket
import subprocess
import sys
import threading
import time

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import shoplib  # noqa: E402
from shoplib import check, log  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HA = os.path.join(ROOT, "scripts", "ha.sh")
SECONDS = float(os.environ.get("PGTX_HA_SECONDS", "60"))
CLIENTS = 16
REPLAY_DELAY_MS = 500
ANSWER_DEADLINE = 120.0 * shoplib.SLOW  # one request's retries, all told
RYW_ROUNDS = 1000


def ports_free(base, n):
    for p in range(base, base + n):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p))
            except OSError:
                return False
    return True


class Lab:
    """The HA lab: ha.sh's commands, with this module's environment."""

    def __init__(self):
        self.own = "PGTX_HA_WRITE_URI" not in os.environ
        self.env = dict(os.environ)
        self.started = False

    def ha(self, *args, timeout=300):
        p = subprocess.run([HA] + list(args), env=self.env, stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
        out, err = p.stdout.decode(), p.stderr.decode()
        check(p.returncode == 0, lambda: "ha.sh %s: exit %d\n%s\n%s" % (" ".join(args), p.returncode, out, err))
        return out

    def start(self):
        if self.own:
            for _ in range(50):
                base = random.randrange(20000, 29000, 10)
                if ports_free(base, 4):
                    break
            self.env["PGTX_HA_PORT"] = str(base)
            self.env["PGTX_HA_DIR"] = "/tmp/pgtx-ha-e2e-%d-%d" % (os.getpid(), base)
            t0 = time.monotonic()
            self.started = True
            self.ha("up", "--replica", "--replica-delay-ms", str(REPLAY_DELAY_MS), timeout=400)
            log("ha lab up in %.1f s (ports %d..%d)" % (time.monotonic() - t0, base, base + 3))
        self.write_uri = self.ha("uri", "write").strip()
        self.node = {n: self.ha("uri", "node", str(n)).strip() for n in (1, 2, 3)}
        shoplib.DSN = self.write_uri  # psql checks go to the primary, wherever it is

    def stop(self):
        if self.own and self.started:
            self.ha("down", timeout=300)

    def primary(self):
        name, port = self.ha("primary").split()
        return name, int(port)

    def standby_uri(self):
        """The data node that is not primary (node 1 or 2): the synchronous standby."""
        name, _ = self.primary()
        return self.node[2 if name == "node1" else 1]


LAB = Lab()


def setUpModule():
    LAB.start()


def tearDownModule():
    shoplib._psql.close()
    LAB.stop()


def fresh_psql():
    """The checks' psql session died with the primary it was on: a new one
    follows the write URI to the new primary."""
    shoplib._psql.close()


def start_processes(cls, extra):
    """The class's PROCESSES servers on the lab, sharing one port when two."""
    if cls.PROCESSES == 1:
        cls.h.start_server(extra=extra, database=LAB.write_uri)
        return
    a = cls.h.start_server(extra=extra + ["--reuse-port"], database=LAB.write_uri)
    cls.h.start_server("127.0.0.1:%d" % a.port, extra + ["--reuse-port"], database=LAB.write_uri)


# ------------------------------------------------------------ failovers -----

class Orderer:
    """One client: orders with fresh keys, each sent until a final answer."""

    def __init__(self, h, n, addr, acct, products, stop):
        self.h, self.n, self.addr, self.acct, self.products, self.stop = h, n, addr, acct, products, stop
        self.final = {}      # key -> (status, code, order id or None)
        self.unanswered = []  # keys still 503/broken at ANSWER_DEADLINE
        self.attempts = []   # (sent, received, ok): ok True 2xx, False 503/broken, None other
        self.resent = collections.Counter()

    def run(self):
        c = shoplib.Client(*self.addr, timeout=30 * shoplib.SLOW)
        try:
            for i in range(100000):
                if self.stop.is_set():
                    break
                self.one(c, i)
        finally:
            c.close()

    def one(self, c, i):
        key = "%s-c%d-o%d" % (self.h.prefix, self.n, i)
        prod = self.products[i % len(self.products)]
        body = {"account_id": self.acct["id"], "product_id": prod["id"], "quantity": 1}
        give_up = time.monotonic() + ANSWER_DEADLINE
        while True:
            t0 = time.monotonic()
            try:
                r = c.request("POST", "/v1/orders", body, token=self.h.admin_token,
                              headers={"Idempotency-Key": key})
            except (OSError, http.client.HTTPException) as e:
                self.attempts.append((t0, time.monotonic(), False))
                self.resent[type(e).__name__] += 1
                r = None
            if r is not None and r.status != 503:
                ok = r.status in (200, 201)
                self.attempts.append((t0, time.monotonic(), True if ok else None))
                oid = r.json.get("id") if ok else None
                self.final[key] = (r.status, r.error_code, oid)
                return
            if r is not None:
                self.attempts.append((t0, time.monotonic(), False))
                self.resent[r.error_code] += 1
            if time.monotonic() > give_up:
                self.unanswered.append(key)
                return
            time.sleep(0.05 + random.random() * 0.1)


def outage(attempts, trigger, until):
    """The longest stretch without a successful write between the trigger
    and `until` (seconds, monotonic): (its start, its end) in seconds from
    the trigger, the end being the first successful write after it."""
    done = sorted(r for _, r, ok in attempts if ok is True and trigger - 1 <= r <= until)
    if len(done) < 2:
        return None, None
    gap, start, end = max((b - a, a, b) for a, b in zip(done, done[1:]))
    return start - trigger, end - trigger


class FailoverUnderLoad(shoplib.ShopTestCase):
    SERVER = False
    PROCESSES = 1

    @classmethod
    def setUpServers(cls):
        # a request the database does not answer within 5 s is a 503, not a
        # worker held for as long as the failover takes
        start_processes(cls, ["--db-timeout-ms", "5000", "--pool-timeout-ms", "5000"])

    def trigger(self, what, *args):
        before = LAB.primary()
        t = time.monotonic()
        out = LAB.ha(*args, timeout=400)
        after = LAB.primary()
        log("%s: %s -> %s; %s" % (what, before[0], after[0], " / ".join(out.strip().splitlines())))
        check(after != before, "%s: the primary is still %s" % (what, before))
        return t

    def test_failovers_under_load(self):
        h = self.h
        accounts = h.create_accounts(CLIENTS, lambda i: 10**9)
        plenty = h.create_product(3, 10**9)
        scarce = h.create_product(5, 150)  # runs out: some final 409s
        stop = threading.Event()
        addr = h.servers[0].addr
        workers = [Orderer(h, i, addr, accounts[i], [plenty, scarce], stop) for i in range(CLIENTS)]
        threads = [threading.Thread(target=w.run, name="orderer-%d" % i) for i, w in enumerate(workers)]
        t_start = time.monotonic()
        for t in threads:
            t.start()
        try:
            time.sleep(SECONDS * 0.2)
            planned = self.trigger("planned failover", "failover")
            time.sleep(max(5.0, t_start + SECONDS * 0.55 - time.monotonic()))
            unplanned = self.trigger("unplanned failover (SIGKILL)", "kill-primary")
            time.sleep(max(5.0, t_start + SECONDS - time.monotonic()))
            end = time.monotonic()
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=ANSWER_DEADLINE + 60)
        check(not any(t.is_alive() for t in threads), "a client is still running")
        self.check_outcome(workers, accounts, [("planned", planned, unplanned),
                                               ("unplanned (SIGKILL)", unplanned, end)])

    def check_outcome(self, workers, accounts, triggers):
        attempts = [a for w in workers for a in w.attempts]
        final = {k: v for w in workers for k, v in w.final.items()}
        unanswered = [k for w in workers for k in w.unanswered]
        resent = sum((w.resent for w in workers), collections.Counter())
        statuses = collections.Counter((s, code) for s, code, _ in final.values())
        log("%s: %d orders answered %s; %d without a final answer; sent again after %s"
            % (self.__class__.__name__, len(final), dict(statuses), len(unanswered), dict(resent)))
        for what, t, until in triggers:
            start, end = outage(attempts, t, until)
            check(start is not None, "%s failover: fewer than two writes succeeded around it" % what)
            log("%s failover: no write succeeded from %.2f s to %.2f s after the trigger: "
                "writes recovered %.2f s after the trigger, %.2f s without a successful write"
                % (what, start, end, end, end - start))
        bad = {k: v for k, v in final.items() if not (v[0] in (200, 201) or (v[0], v[1]) == (409, "out_of_stock"))}
        check(not bad, lambda: "final answers other than 201/200/409 out_of_stock: %r" % list(bad.items())[:10])
        check(not unanswered, lambda: "%d requests never got a final answer: %r" % (len(unanswered), unanswered[:5]))
        fresh_psql()
        rows = shoplib.sql_json("SELECT idempotency_key AS k, id FROM orders WHERE account_id = ANY(%s)"
                                % shoplib.id_array(a["id"] for a in accounts))
        by_key = collections.defaultdict(list)
        for r in rows:
            by_key[r["k"]].append(r["id"])
        acked = {k: v[2] for k, v in final.items() if v[0] in (200, 201)}
        lost = [k for k in acked if by_key.get(k) != [acked[k]]]
        refused = [k for k, v in final.items() if v[0] >= 400 and by_key.get(k)]
        strangers = [k for k in by_key if k not in final]
        log("%s: %d acknowledged orders, %d of them missing or doubled on the new primary %s"
            % (self.__class__.__name__, len(acked), len(lost), LAB.primary()))
        check(not lost, lambda: "acknowledged orders missing or doubled: %r"
              % [(k, acked[k], by_key.get(k)) for k in lost[:10]])
        check(not refused, lambda: "orders exist for keys answered 4xx: %r" % refused[:10])
        check(not strangers, lambda: "orders under keys never sent: %r" % strangers[:10])
        check(len(acked) > CLIENTS, "only %d orders acknowledged" % len(acked))
        self.check_invariants()


class FailoverUnderLoadTwoProcesses(FailoverUnderLoad):
    PROCESSES = 2


# ------------------------------------------------------- read your writes -----

class ReadYourWrites(shoplib.ShopTestCase):
    SERVER = False
    PROCESSES = 1

    @classmethod
    def setUpServers(cls):
        start_processes(cls, ["--read-database", LAB.node[3]])

    def test_reads_never_older_than_own_writes(self):
        h = self.h
        c = h.client()
        # a row the replica has not got yet is still found: the primary
        # answers for a standby that does not have it
        new = h.create_account(0)
        g = c.request("GET", "/v1/accounts/%d" % new["id"], token=h.admin_token)
        check(g.status == 200 and g.headers.get("pgtx-read-from") == "primary",
              lambda: "a new account read at once: %r %r" % (g, g.headers))
        acct = h.create_account(0)
        path = "/v1/accounts/%d" % acct["id"]
        time.sleep(REPLAY_DELAY_MS / 1000.0 * 2 + 0.3)  # the account reaches the replica
        served = collections.Counter()
        stale_without = waited_standby = 0
        older = []
        for i in range(RYW_ROUNDS):
            r = c.request("POST", path + "/deposits", {"amount": 1}, token=h.admin_token)
            check(r.status == 200, lambda: "deposit %d: %r" % (i, r))
            lsn = r.headers.get("pgtx-commit-lsn")
            check(lsn, lambda: "deposit %d: no Pgtx-Commit-LSN: %r" % (i, r.headers))
            balance = r.json["balance"]
            if i % 10 == 5:  # the replica's own view, without the header
                g = c.request("GET", path, token=h.admin_token)
                check(g.status == 200 and g.headers.get("pgtx-read-from") == "standby",
                      lambda: "read without a position: %r %r" % (g, g.headers))
                stale_without += g.json["balance"] < balance
            waited = i % 100 == 50
            if waited:  # once it has had time to replay, the replica answers
                time.sleep(REPLAY_DELAY_MS / 1000.0 * 2 + 0.3)
            g = c.request("GET", path, token=h.admin_token, headers={"Pgtx-Commit-LSN": lsn})
            check(g.status == 200, lambda: "read %d: %r" % (i, g))
            frm = g.headers.get("pgtx-read-from")
            served[frm] += 1
            waited_standby += waited and frm == "standby"
            if g.json["balance"] < balance:
                older.append((i, balance, g.json["balance"], frm))
        log("%s: %d deposits, each read back with its Pgtx-Commit-LSN: served by %s; %d older "
            "than the deposit; reads without it: %d of %d older (replay delayed %d ms)"
            % (self.__class__.__name__, RYW_ROUNDS, dict(served), len(older), stale_without,
               RYW_ROUNDS // 10, REPLAY_DELAY_MS))
        check(not older, lambda: "reads older than the client's own deposit: %r" % older[:10])
        # the test proves something only if the replica really lags and
        # really serves once caught up
        check(stale_without > 0, "no read without a position saw an older balance: is replay delayed?")
        check(waited_standby > 0, "no read was served by the replica after waiting out its delay")
        self.check_invariants()


class ReadYourWritesTwoProcesses(ReadYourWrites):
    PROCESSES = 2


# --------------------------------------------------------- read throughput -----

class ReadThroughput(shoplib.ShopTestCase):
    SERVER = False
    THREADS = 8
    RUN_SECONDS = 3.0

    @classmethod
    def setUpServers(cls):
        cls.primary_only = cls.h.start_server(database=LAB.write_uri)
        cls.replicas = cls.h.start_server(extra=["--read-database", LAB.standby_uri()],
                                          database=LAB.write_uri)

    def rate(self, server, path):
        stop = time.monotonic() + self.RUN_SECONDS
        counts = [0] * self.THREADS
        froms = collections.Counter()

        def reader(n):
            c = shoplib.Client(*server.addr)
            try:
                while time.monotonic() < stop:
                    r = c.request("GET", path)
                    check(r.status == 200, lambda: "GET %s: %r" % (path, r))
                    froms[r.headers.get("pgtx-read-from")] += 1
                    counts[n] += 1
            finally:
                c.close()

        threads = [threading.Thread(target=reader, args=(n,)) for n in range(self.THREADS)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=self.RUN_SECONDS + 60)
        return sum(counts) / (time.monotonic() - t0), froms

    def test_read_throughput(self):
        prod = self.h.create_product(7, 100)
        path = "/v1/products/%d" % prod["id"]
        primary, standby = [], []
        for _ in range(2):  # alternated: the machine is shared
            primary.append(self.rate(self.primary_only, path)[0])
            r, froms = self.rate(self.replicas, path)
            standby.append(r)
            check(froms.get("standby", 0) > 0, "no read served by the standby: %r" % dict(froms))
        log("reads, %d clients: primary alone %s/s, with --read-database on the synchronous "
            "standby %s/s: %.2f x" % (self.THREADS, "/".join("%.0f" % x for x in primary),
                                      "/".join("%.0f" % x for x in standby),
                                      sum(standby) / max(1.0, sum(primary))))


if __name__ == "__main__":
    shoplib.main()
