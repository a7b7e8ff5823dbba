#!/usr/bin/env python3
"""test_faults - the database fails under a running pgtx-shop.

The server reaches PostgreSQL through a small TCP proxy of this test's
(127.0.0.1 only), which can cut a connection at an exact point of the
protocol or stop answering altogether:

1. COMMIT lost on the way in: the proxy drops the order's COMMIT and closes
   the connection, so the transaction rolls back.  The client gets 503
   `commit_unknown` with Retry-After; sent again with the same
   Idempotency-Key the order is created (201), once.
2. COMMIT's answer lost on the way back: the proxy passes COMMIT, swallows
   PostgreSQL's reply and closes.  503 `commit_unknown` again; sent again
   with the same key the first order comes back (200, the body GET gives),
   and there is still one order for that key.
3. COMMIT held: the proxy keeps the connection open and passes nothing
   more.  After --db-timeout-ms the server gives up on it: 503
   `commit_unknown`, and the same key then creates the order (201), once.
4. The database goes away (every connection closed, every new one refused
   at once), hangs (new connections accepted, never answered) or stalls
   (open connections stop answering too): /healthz and every database
   route answer 503 with Retry-After within the pool's timeout (plus
   --db-timeout-ms for a stalled connection), /metrics still answers and
   counts the failed connects, the log has one warning for the outage, and
   nothing changes in the database.
5. It comes back: /healthz is 200 again within a deadline, writes succeed,
   and the invariants of API.md hold, with exactly the acknowledged writes
   in the ledger.

usage: PGTX_SHOP_BINARY=build/pgtx-shop python3 -m unittest test_faults (from tests/shop)
"""

import os
import socket
import struct
import sys
import threading
import time

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import shoplib  # noqa: E402
from shoplib import check, log  # noqa: E402

SLOW = shoplib.SLOW
POOL_TIMEOUT_MS = 1000
DB_TIMEOUT_MS = 1500
# A refused request may wait out the pool's timeout (and, on a connection
# that stalled, the database timeout first) plus a scheduling hiccup; far
# below that is fine, beyond it is a hang.
ANSWER_BOUND = {"down": POOL_TIMEOUT_MS / 1000.0 + 4.0,
                "hang": POOL_TIMEOUT_MS / 1000.0 + 4.0,
                "stall": (DB_TIMEOUT_MS + POOL_TIMEOUT_MS) / 1000.0 + 4.0}
RECOVER_DEADLINE = 30.0 * SLOW
CLIENT_TIMEOUT = 30.0 * SLOW
OUTAGE_REQUESTS = 3              # per kind of request, per outage
SSL_REQUEST, GSS_REQUEST = 80877103, 80877104


def recv_exact(sock, n):
    """n bytes, or None when the peer closed first."""
    buf = b""
    while len(buf) < n:
        try:
            chunk = sock.recv(n - len(buf))
        except OSError:
            return None
        if not chunk:
            return None
        buf += chunk
    return buf


def close_quietly(sock):
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


class Pair:
    """One client connection through the proxy and its server connection."""

    def __init__(self, client):
        self.client = client
        self.server = None
        self.swallow = False  # the next server bytes answer a COMMIT: drop them, then cut
        self.frozen = False   # nothing passes either way, and nothing is closed

    def close(self):
        close_quietly(self.client)
        if self.server is not None:
            close_quietly(self.server)


class PgProxy:
    """A PostgreSQL protocol proxy on 127.0.0.1 with faults on demand.

    mode: "up" forwards; "down" closes every connection and refuses new
    ones at once; "hang" closes every connection and accepts new ones that
    it never answers; "stall" keeps every connection open and passes nothing
    more either way (a partition, a frozen server), and new ones hang.
    arm_cut("before" | "after" | "hold") acts on the next COMMIT: cuts its
    connection before passing it on, or after PostgreSQL answered it, or
    holds it (that connection stalls).  It answers SSL and GSS encryption
    requests with 'N' itself, so that it can read the messages it forwards."""

    def __init__(self, upstream):
        self.upstream = upstream
        self.lock = threading.Lock()
        self.mode = "up"
        self.cut = None
        self.cuts = []           # what was cut, in order
        self.pairs = set()
        self.hung = []           # sockets accepted in "hang" or "stall" mode
        self.stopping = False
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.threads = [threading.Thread(target=self._accept_loop, name="proxy-accept", daemon=True)]
        self.threads[0].start()

    # ---- control
    def set_mode(self, mode):
        with self.lock:
            self.mode = mode
            pairs = list(self.pairs)
            keep_hung = mode in ("hang", "stall")
            hung, self.hung = ([], self.hung) if keep_hung else (self.hung, [])
        for p in pairs:
            if mode == "stall":
                p.frozen = True
            elif mode != "up" or p.frozen:
                p.close()  # a frozen one's peer has given up on it anyway
        for s in hung:
            close_quietly(s)

    def arm_cut(self, where):
        with self.lock:
            self.cut = where

    def stop(self):
        with self.lock:
            self.stopping = True
        self.set_mode("down")
        for t in self.threads:
            t.join(timeout=10)
        self.sock.close()

    # ---- plumbing
    def _accept_loop(self):
        while True:
            with self.lock:
                if self.stopping:
                    return
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            c.settimeout(None)
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self.lock:
                mode = self.mode
                if mode in ("hang", "stall"):
                    self.hung.append(c)
                    continue
            if mode == "down":
                close_quietly(c)
                continue
            p = Pair(c)
            with self.lock:
                self.pairs.add(p)
            t = threading.Thread(target=self._serve, args=(p,), name="proxy-conn", daemon=True)
            with self.lock:
                self.threads = [x for x in self.threads if x.is_alive()] + [t]
            t.start()

    def _connect_upstream(self):
        if self.upstream[0] == "unix":
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(self.upstream[1])
        else:
            s = socket.create_connection(self.upstream[1:], timeout=10)
            s.settimeout(None)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s

    def _startup(self, p):
        """Reads the client's startup packet (answering encryption requests
        with 'N' on the way) and passes it on; False when it went away."""
        for _ in range(3):
            head = recv_exact(p.client, 8)
            if head is None:
                return False
            length, code = struct.unpack("!II", head)
            if length == 8 and code in (SSL_REQUEST, GSS_REQUEST):
                p.client.sendall(b"N")
                continue
            rest = recv_exact(p.client, length - 8)
            if rest is None:
                return False
            p.server = self._connect_upstream()
            p.server.sendall(head + rest)
            return True
        return False

    def _serve(self, p):
        try:
            if not self._startup(p):
                return
            back = threading.Thread(target=self._pump_back, args=(p,), name="proxy-back", daemon=True)
            back.start()
            self._pump_forward(p)
            p.close()  # wakes the other direction
            back.join(timeout=CLIENT_TIMEOUT)
        except OSError:
            pass
        finally:
            p.close()
            with self.lock:
                self.pairs.discard(p)

    @staticmethod
    def _is_commit(typ, body):
        """COMMIT as a simple Query, or as the Parse of an extended-protocol
        statement (libpgtx pipelines it behind the transaction's statements:
        cutting there cuts after they ran, before COMMIT did)."""
        if typ == b"Q":
            sql = body.rstrip(b"\0")
        elif typ == b"P":
            sql = body.split(b"\0", 2)[1] if body.count(b"\0") >= 2 else b""
        else:
            return False
        return sql.strip().upper() == b"COMMIT"

    def _take_cut(self, typ, body):
        if not self._is_commit(typ, body):
            return None
        with self.lock:
            where, self.cut = self.cut, None
        return where

    def _pump_forward(self, p):
        while True:
            head = recv_exact(p.client, 5)
            if head is None:
                return
            typ, length = head[:1], struct.unpack("!I", head[1:])[0]
            body = recv_exact(p.client, length - 4)
            if body is None:
                return
            if p.frozen:
                continue
            where = self._take_cut(typ, body)
            if where == "hold":
                with self.lock:
                    self.cuts.append("hold")
                p.frozen = True
                continue
            if where == "before":
                with self.lock:
                    self.cuts.append("before")
                return  # COMMIT never reaches PostgreSQL: it rolls back
            if where == "after":
                p.swallow = True
            p.server.sendall(head + body)

    def _pump_back(self, p):
        while True:
            try:
                data = p.server.recv(65536)
            except OSError:
                data = b""
            if not data:
                p.close()
                return
            if p.frozen:
                continue
            if p.swallow:
                # PostgreSQL has answered COMMIT (it committed); the client
                # never hears it
                with self.lock:
                    self.cuts.append("after")
                p.close()
                return
            try:
                p.client.sendall(data)
            except OSError:
                p.close()
                return


# ------------------------------------------------------------------ test -----

def timed(c, method, path, body=None, token=None, headers=None):
    t0 = time.monotonic()
    r = c.request(method, path, body, token=token, headers=headers)
    return r, time.monotonic() - t0


def order_once(h, c, acct, prod, key):
    return c.request("POST", "/v1/orders", {"account_id": acct, "product_id": prod, "quantity": 1},
                     token=h.admin_token, headers={"Idempotency-Key": key, "Pgtx-Strategy": "lock"})


def orders_with_key(acct, key):
    return int(shoplib.psql("SELECT count(*) FROM orders WHERE account_id = %d AND idempotency_key = '%s';"
                            % (acct, key))[0])


def check_commit_cut(h, proxy, c, acct, prod, where, want_retry_status):
    key = h.unique("key-" + where)
    proxy.arm_cut(where)
    t0 = time.monotonic()
    r = order_once(h, c, acct, prod, key)
    took = time.monotonic() - t0
    check(r.status == 503 and r.error_code == "commit_unknown" and r.headers.get("retry-after"),
          lambda: "COMMIT cut %s: want 503 commit_unknown with Retry-After, got %r %s"
          % (where, r, r.headers))
    check(proxy.cuts[-1:] == [where], lambda: "the proxy cut %r, want %r last" % (proxy.cuts, where))
    again = order_once(h, c, acct, prod, key)
    check(again.status == want_retry_status, lambda: "COMMIT cut %s, same key again: want %d, got %r"
          % (where, want_retry_status, again))
    got = c.request("GET", "/v1/orders/%d" % again.json["id"], token=h.admin_token)
    check(got.status == 200 and got.json == again.json,
          lambda: "GET the order: %r, the retry said %r" % (got, again))
    n = orders_with_key(acct, key)
    check(n == 1, lambda: "COMMIT cut %s: %d orders with the key, want 1" % (where, n))
    unknown = shoplib.metric(c, "pgtx_shop_pool_commit_unknown_total")
    check(unknown == len(proxy.cuts), lambda: "pool_commit_unknown_total %d after %d cuts" % (unknown, len(proxy.cuts)))
    silent = shoplib.metric(c, "pgtx_shop_pool_socket_timeouts_total")
    want = proxy.cuts.count("hold")
    check(silent == want, lambda: "pool_socket_timeouts_total %d after %d held COMMITs" % (silent, want))
    return "%s: 503 commit_unknown after %.2f s, same key again -> %d, 1 order" % (
        where, took, again.status)


def outage(h, proxy, c, mode, acct, prod):
    """mode "down", "hang" or "stall": every database route is a prompt 503."""
    errors0 = shoplib.metric(c, "pgtx_shop_pool_connect_errors_total")
    silent0 = shoplib.metric(c, "pgtx_shop_pool_socket_timeouts_total")
    proxy.set_mode(mode)
    slowest, codes = 0.0, set()
    for i in range(OUTAGE_REQUESTS):
        for method, path, body in (("GET", "/healthz", None),
                                   ("GET", "/v1/products/%d" % prod, None),
                                   ("POST", "/v1/accounts/%d/deposits" % acct, {"amount": 7}),
                                   ("POST", "/v1/orders", {"account_id": acct, "product_id": prod,
                                                           "quantity": 1})):
            headers = {"Idempotency-Key": h.unique("outage")} if path == "/v1/orders" else None
            r, took = timed(c, method, path, body, token=h.admin_token, headers=headers)
            slowest = max(slowest, took)
            check(r.status == 503 and r.error_code in ("database_unavailable", "overloaded")
                  and r.headers.get("retry-after"),
                  lambda: "database %s: %s %s: want 503 database_unavailable|overloaded with "
                  "Retry-After, got %r %s" % (mode, method, path, r, r.headers))
            bound = ANSWER_BOUND[mode] * SLOW
            check(took <= bound, lambda: "database %s: %s %s answered after %.1f s (bound %.1f s)"
                  % (mode, method, path, took, bound))
            codes.add(r.error_code)
    # /metrics needs no database, and shows the outage
    errors = shoplib.metric(c, "pgtx_shop_pool_connect_errors_total") - errors0
    check(errors >= 1, lambda: "database %s: pool_connect_errors_total went up by %d" % (mode, errors))
    # only a stall leaves open connections without an answer
    silent = shoplib.metric(c, "pgtx_shop_pool_socket_timeouts_total") - silent0
    check((silent >= 1) == (mode == "stall"), lambda: "database %s: pool_socket_timeouts_total went up by %d"
          % (mode, silent))
    return "%s: %d requests, all 503 %s, slowest %.2f s; /metrics: %d connect errors, %d socket timeouts" % (
        mode, 4 * OUTAGE_REQUESTS, "|".join(sorted(codes)), slowest, errors, silent)


def outage_log_lines(server, since):
    """An outage is one warning and one line when it ends, not a line per
    failed connect attempt."""
    text = server.log_text()[since:]
    warned = sum(1 for line in text.splitlines() if "level=warn" in line and "connect failed" in line)
    back = sum(1 for line in text.splitlines() if "connected again after" in line)
    return warned, back


def recover(h, proxy, c):
    proxy.set_mode("up")
    t0 = time.monotonic()
    shoplib.wait_until(lambda: c.request("GET", "/healthz").status == 200, RECOVER_DEADLINE,
                       "database back, /healthz 200", interval=0.1)
    return time.monotonic() - t0


class Faults(shoplib.ShopTestCase):
    """One server whose database is the test's PostgreSQL protocol proxy;
    the scenario's steps build on each other (the cuts, then the outages,
    then the counts of what was acknowledged): one method."""

    SERVER = False

    def test_commit_cuts_and_outages(self):
        upstream, user, db = shoplib.upstream_address()
        proxy = PgProxy(upstream)
        try:
            run_faults(self.h, proxy, user, db)
        finally:
            proxy.stop()


def run_faults(h, proxy, user, db):
    dsn = "host=127.0.0.1 port=%d user=%s dbname=%s connect_timeout=5 sslmode=disable" % (
        proxy.port, shoplib.conninfo_quote(user), shoplib.conninfo_quote(db))
    s = h.start_server(database=dsn, extra=["--pool-size", "2", "--max-overflow", "0",
                                            "--pool-timeout-ms", str(POOL_TIMEOUT_MS),
                                            "--db-timeout-ms", str(DB_TIMEOUT_MS), "--threads", "4"])
    c = shoplib.Client(*s.addr, timeout=CLIENT_TIMEOUT)
    h.default_addr = s.addr
    acct = h.create_account(balance=1_000_000, c=c)["id"]
    prod = h.create_product(price=10, stock=100, c=c)["id"]
    first = order_once(h, c, acct, prod, h.unique("key-ok"))
    check(first.status == 201, lambda: "an order through the proxy: %r" % first)

    log("commit cut " + check_commit_cut(h, proxy, c, acct, prod, "before", 201))
    log("commit cut " + check_commit_cut(h, proxy, c, acct, prod, "after", 200))
    log("commit cut " + check_commit_cut(h, proxy, c, acct, prod, "hold", 201))

    before, bad = h.snapshot_and_invariants()
    check(not bad, lambda: "invariants before the outage: %r" % bad)
    for mode in ("down", "hang", "stall"):
        log_mark = len(s.log_text())
        log("database " + outage(h, proxy, c, mode, acct, prod))
        took = recover(h, proxy, c)
        after, bad = h.snapshot_and_invariants()
        check(after == before, lambda: "a 503 during the %s outage changed the database:\n%r\n%r"
              % (mode, before, after))
        warned, back = outage_log_lines(s, log_mark)
        check(warned == 1 and back == 1, lambda: "the %s outage logged %d connect warnings and %d"
              " 'connected again' lines, want 1 and 1:\n%s" % (mode, warned, back, s.log_tail()))
        log("database back after %s: /healthz 200 after %.2f s, nothing changed; logged: 1 connect"
            " warning, 1 'connected again'" % (mode, took))

    dep = c.request("POST", "/v1/accounts/%d/deposits" % acct, {"amount": 5}, token=h.admin_token)
    check(dep.status == 200, lambda: "a deposit after the outages: %r" % dep)
    last = order_once(h, c, acct, prod, h.unique("key-last"))
    check(last.status == 201, lambda: "an order after the outages: %r" % last)
    deposits, orders = (int(x) for x in shoplib.psql(
        "SELECT count(*) FILTER (WHERE kind = 'deposit'), count(*) FILTER (WHERE kind = 'order')"
        " FROM ledger WHERE account_id = %d;" % acct)[0].split("|"))
    # only the acknowledged writes: one deposit; the first order, one per
    # cut, the last one
    check(deposits == 1, lambda: "%d deposits in the ledger, want the 1 acknowledged" % deposits)
    check(orders == 5, lambda: "%d orders in the ledger, want 5" % orders)
    n = h.check_invariants(what="after the faults")
    c.close()
    log("after: deposit 200, order 201; %d orders, invariants hold over %d entities; proxy cuts %s"
        % (orders, n, proxy.cuts))


if __name__ == "__main__":
    shoplib.main()
