#!/usr/bin/env python3
"""test_restart - kill and restart servers under load; nothing acknowledged
is lost or doubled.

Two pgtx-shop processes share a port (--reuse-port).  Client threads (one account each)
alternate orders (each with its own Idempotency-Key) and deposits.  Mid-load
one process is SIGKILLed and restarted on the same port; later the other is
SIGTERMed (it must exit 0 while the load goes on) and restarted.  Then:
- while the servers went away, a request failed only with a connection error
  or a 503, never anything else;
- every order acknowledged with 201/200 is in `orders`, exactly once, with
  its key; every unacknowledged order, sent again with its key, resolves to
  exactly one order (201 if it never committed, 200 if it had) - so the
  database ends with exactly one order per key;
- per account, the deposits in the ledger add up to at least the
  acknowledged ones and at most all those sent (one in flight at a SIGKILL
  may have committed unacknowledged), and balance = sum(ledger);
- the invariants hold.

usage: PGTX_SHOP_BINARY=build/pgtx-shop python3 -m unittest test_restart (from tests/shop)
"""

import collections
import concurrent.futures
import http.client
import os
import sys
import threading
import time

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import shoplib  # noqa: E402
from shoplib import check  # noqa: E402

WORKERS = 12
MAX_OPS = 5000            # per worker, a bound that time should hit first
PHASE_ACKS = 300          # acknowledged writes to wait for between faults
PHASE_DEADLINE = 60.0 * shoplib.SLOW
INITIAL = 10**9
PRICE = 3


class Worker:
    def __init__(self, h, n, addr, acct, prod, stop):
        self.h, self.n, self.addr, self.acct, self.prod, self.stop = h, n, addr, acct, prod, stop
        self.orders = {}        # key -> (quantity, outcome); outcome: order body or None
        self.deposits = []      # (amount, acknowledged)
        self.conn_errors = collections.Counter()
        self.refused = collections.Counter()  # 503 codes
        self.bad = []           # anything else
        self.acks = 0

    def run(self):
        c = shoplib.Client(*self.addr, timeout=30 * shoplib.SLOW)
        deadline = time.monotonic() + 4 * PHASE_DEADLINE + 60
        try:
            for i in range(MAX_OPS):
                if self.stop.is_set() or time.monotonic() > deadline:
                    break
                if i % 2 == 0:
                    key = "%sw%d-%d" % (self.h.prefix, self.n, i)
                    q = 1 + i % 3
                    self.orders[key] = (q, None)
                    body = {"account_id": self.acct["id"], "product_id": self.prod["id"], "quantity": q}
                    r = self.send(c, "POST", "/v1/orders", body, {"Idempotency-Key": key})
                    if r is not None and r.status == 201:
                        want = {"id": r.json.get("id") if r.json else None, "account_id": self.acct["id"],
                                "product_id": self.prod["id"], "quantity": q, "unit_price": PRICE,
                                "discount": 0, "total": PRICE * q, "coupon_id": None}
                        if r.json != want:
                            self.bad.append("order %s: body %r" % (key, r))
                        else:
                            self.orders[key] = (q, r.json)
                            self.acks += 1
                    elif r is not None:
                        self.classify(r, "order " + key)
                else:
                    amount = 1 + i % 7
                    r = self.send(c, "POST", "/v1/accounts/%d/deposits" % self.acct["id"], {"amount": amount})
                    ok = r is not None and r.status == 200
                    self.deposits.append((amount, ok))
                    if ok:
                        self.acks += 1
                    elif r is not None:
                        self.classify(r, "deposit")
        finally:
            c.close()

    def send(self, c, method, path, body, headers=None):
        try:
            return c.request(method, path, body, token=self.acct["token"], headers=headers)
        except TimeoutError as e:
            self.bad.append("%s %s: timed out (%r)" % (method, path, e))
        except (OSError, http.client.HTTPException) as e:
            self.conn_errors[type(e).__name__] += 1
            # the next request reconnects; a short pause so that a refused
            # connect does not spin while a listener comes back
            self.stop.wait(0.005)
        return None

    def classify(self, r, what):
        if r.status == 503 and r.error_code in ("overloaded", "retry_exhausted", "commit_unknown",
                                                 "database_unavailable"):
            self.refused[r.error_code] += 1
        else:
            self.bad.append("%s: %r" % (what, r))


def wait_acks(workers, target, what):
    shoplib.wait_until(lambda: sum(w.acks for w in workers) >= target, PHASE_DEADLINE,
                       lambda _: "%s: only %d acknowledged writes (want %d)"
                       % (what, sum(w.acks for w in workers), target), interval=0.02)


def request_lines(server):
    return sum(1 for line in server.log_text().splitlines() if "route=" in line)


class Restart(shoplib.ShopTestCase):
    """One load scenario (its phases build on each other): one method."""

    SERVER = False

    def test_kill_and_restart_under_load(self):
        h = self.h
        a, b = h.start_pair(extra=["--reuse-port"])
        prod = h.create_product(price=PRICE, stock=10**12)
        accts = h.create_accounts(WORKERS, lambda i: INITIAL)
        stop = threading.Event()
        workers = [Worker(h, n, a.addr, accts[n], prod, stop) for n in range(WORKERS)]
        timeline = []
        t0 = time.monotonic()
        ex = concurrent.futures.ThreadPoolExecutor(WORKERS)
        futures = [ex.submit(w.run) for w in workers]
        try:
            wait_acks(workers, PHASE_ACKS, "warm-up")
            acks = sum(w.acks for w in workers)
            served = request_lines(a)
            a.kill()
            timeline.append("%.2f s: SIGKILL %s after %d acks (it had logged %d requests)"
                            % (time.monotonic() - t0, a.name, acks, served))
            ts = time.monotonic()
            a.restart()
            timeline.append("%.2f s: %s back in %.2f s" % (time.monotonic() - t0, a.name, time.monotonic() - ts))
            wait_acks(workers, acks + PHASE_ACKS, "after the SIGKILL")
            acks = sum(w.acks for w in workers)
            took = b.stop()
            timeline.append("%.2f s: SIGTERM %s under load after %d acks (it had logged %d requests): exit 0 in %.2f s"
                            % (time.monotonic() - t0, b.name, acks, request_lines(b), took))
            ts = time.monotonic()
            b.restart()
            timeline.append("%.2f s: %s back in %.2f s" % (time.monotonic() - t0, b.name, time.monotonic() - ts))
            wait_acks(workers, acks + PHASE_ACKS, "after the SIGTERM")
        finally:
            stop.set()
            for f in futures:
                f.result(timeout=120 * shoplib.SLOW)
            ex.shutdown()
        timeline.append("%.2f s: load stopped, %d acks" % (time.monotonic() - t0, sum(w.acks for w in workers)))
        for line in timeline:
            shoplib.log(line)

        conn_errors = sum((w.conn_errors for w in workers), collections.Counter())
        refused = sum((w.refused for w in workers), collections.Counter())
        bad = [x for w in workers for x in w.bad]
        shoplib.log("client errors: connection %s, 503 %s, other %d" % (dict(conn_errors), dict(refused), len(bad)))
        check(not bad, lambda: "responses other than 2xx, a connection error or 503: %s" % bad[:10])

        # every order: acknowledged ones are in the database; the others resolve
        # with their key to exactly one order
        c = shoplib.Client(*a.addr)  # a fresh connection: the old ones died with their servers
        resent = collections.Counter()
        by_key = {}
        for w in workers:
            for key, (q, body) in w.orders.items():
                if body is not None:
                    by_key[key] = body["id"]
                    continue
                req = {"account_id": w.acct["id"], "product_id": prod["id"], "quantity": q}
                r = None
                for _ in range(20):  # a 503 may be answered again; bounded
                    r = c.request("POST", "/v1/orders", req, token=w.acct["token"], headers={"Idempotency-Key": key})
                    if r.status != 503:
                        break
                check(r.status in (200, 201) and r.json.get("quantity") == q,
                      lambda: "re-sending unacknowledged order %s: %r" % (key, r))
                resent[r.status] += 1
                by_key[key] = r.json["id"]
        shoplib.log("unacknowledged orders re-sent with their key: %d had committed (200), %d had not (201)"
                    % (resent[200], resent[201]))
        rows = shoplib.sql_json("SELECT id, account_id, idempotency_key, quantity FROM orders WHERE product_id = %d"
                                % prod["id"])
        in_db = collections.Counter(r["idempotency_key"] for r in rows)
        dup = [k for k, n in in_db.items() if n > 1]
        check(not dup, lambda: "keys with more than one order: %s" % dup[:10])
        db_ids = {r["idempotency_key"]: r["id"] for r in rows}
        check(db_ids == by_key, lambda: "orders in the database (%d) vs the keys sent (%d): differ on %s"
              % (len(db_ids), len(by_key), sorted(set(db_ids.items()) ^ set(by_key.items()))[:10]))
        acked_orders = sum(1 for w in workers for q, body in w.orders.values() if body is not None)

        # deposits: acknowledged <= committed <= sent; balance = sum(ledger)
        ids = [w.acct["id"] for w in workers]
        sums = {r["account_id"]: r for r in shoplib.sql_json(
            "SELECT a.id AS account_id, a.balance,"
            " (SELECT coalesce(sum(amount), 0) FROM ledger l WHERE l.account_id = a.id AND kind = 'deposit')"
            "  AS deposits,"
            " (SELECT count(*) FROM ledger l WHERE l.account_id = a.id AND kind = 'deposit') AS deposit_rows,"
            " (SELECT coalesce(sum(total), 0) FROM orders o WHERE o.account_id = a.id) AS spent"
            " FROM account a WHERE a.id = ANY(%s)" % shoplib.id_array(ids))}
        unacked_committed = 0
        for w in workers:
            s = sums[w.acct["id"]]
            acked = sum(amt for amt, ok in w.deposits if ok)
            sent = sum(amt for amt, ok in w.deposits)
            n_acked = sum(1 for _, ok in w.deposits if ok)
            check(acked <= s["deposits"] <= sent and n_acked <= s["deposit_rows"] <= len(w.deposits),
                  lambda: "account %d: deposits in the ledger %d (%d rows); acknowledged %d (%d), sent %d (%d)"
                  % (w.acct["id"], s["deposits"], s["deposit_rows"], acked, n_acked, sent, len(w.deposits)))
            check(s["balance"] == INITIAL + s["deposits"] - s["spent"],
                  lambda: "account %d: balance %d != initial %d + deposits %d - orders %d"
                  % (w.acct["id"], s["balance"], INITIAL, s["deposits"], s["spent"]))
            unacked_committed += s["deposit_rows"] - n_acked
        n = h.check_invariants(what="after the restarts")
        deposits_acked = sum(1 for w in workers for _, ok in w.deposits if ok)
        deposits_sent = sum(len(w.deposits) for w in workers)
        shoplib.log("orders: %d acknowledged, %d in the database, one per key" % (acked_orders, len(rows)))
        shoplib.log("deposits: %d acknowledged of %d sent; %d committed without an acknowledgement"
                    % (deposits_acked, deposits_sent, unacked_committed))
        shoplib.log("invariants: ok over %d entities" % n)


if __name__ == "__main__":
    shoplib.main()
