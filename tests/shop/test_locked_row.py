#!/usr/bin/env python3
"""test_locked_row - one row held locked by another client stalls nothing else.

A second database client (psql) holds `BEGIN; SELECT ... FOR UPDATE` on one
product for HOLD_S seconds while, against a server of THREADS workers and as
many pooled connections:
 - LOCKED_CLIENTS clients (as many as there are workers, so that waits
   without a bound would take every worker) order that product, one
   strategy each;
 - OTHER_CLIENTS clients order other products, read products (the locked
   one too: a plain read never waits for a row lock), read their account
   and GET /healthz;
 - one more client polls /healthz.
Wanted: every order of the locked product is `503 row_busy` with
`Retry-After`, answered within --lock-timeout-ms plus a margin and before
the lock is released, and changed nothing (the product, its orders, the
buyers' accounts and ledgers are as they were); every other request
succeeds before the release; after it, the locked product sells again;
invariants hold.  p50/p99 latencies of each kind are printed.

Then, on a server with --lock-timeout-ms 0 (no bound), orders of the held
row take every worker and pooled connection for as long as it is held:
/healthz must still answer 200 before the release (its own thread and
connection), and those orders go through once it is released.

The hold is 8 s (x SLOW under sanitizers): long enough for several lock
waits of 1 s per client and to leave every request sent during the first
5 s at least 3 s to be answered before the release (a stalled server shows
up as answers arriving only after it); short enough to stay well below
--db-timeout-ms (15 s), whose closing of connections is another failure
than the one tested here, and to keep the test quick.

usage: PGTX_SHOP_BINARY=build/pgtx-shop python3 -m unittest test_locked_row (from tests/shop)
"""

import collections
import concurrent.futures
import os
import sys
import time

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import shoplib  # noqa: E402
from shoplib import STRATEGIES, check, log  # noqa: E402

SLOW = shoplib.SLOW
THREADS = 4
LOCK_TIMEOUT_MS = 1000
LOCKED_CLIENTS = THREADS
OTHER_CLIENTS = 4
HOLD_S = 8.0 * SLOW
# requests are only sent this long into the hold, so that each one has at
# least 3 s (x SLOW) to be answered before the lock goes away
SEND_FOR_S = HOLD_S - 3.0 * SLOW
MARGIN_S = 2.0 * SLOW  # over --lock-timeout-ms for a row_busy answer
PRICE, STOCK, BALANCE = 10, 1000, 100000
MAX_REQUESTS = 2000  # per client: a bound on the loops whatever the timing
HOLD2_S = 4.0 * SLOW  # the hold with no lock timeout: well below --db-timeout-ms


LockHolder = shoplib.LockHolder


def percentile(values, p):
    s = sorted(values)
    return s[min(len(s) - 1, int(p / 100.0 * len(s)))] if s else float("nan")


def latency_line(what, samples):
    ms = [x * 1000 for x in samples]
    return "%-34s n=%4d  p50 %7.1f ms  p99 %7.1f ms  max %7.1f ms" % (
        what, len(ms), percentile(ms, 50), percentile(ms, 99), max(ms) if ms else float("nan"))


def timed(c, *args, **kw):
    t0 = time.monotonic()
    r = c.request(*args, **kw)
    t1 = time.monotonic()
    return r, t1 - t0, t1


def locked_orders(h, hot, buyer, strategy, until):
    """Orders of the locked product until `until`: [(response, secs, end)]."""
    c = shoplib.Client(*h.default_addr)
    out = []
    body = {"account_id": buyer["id"], "product_id": hot["id"], "quantity": 1}
    try:
        while time.monotonic() < until and len(out) < MAX_REQUESTS:
            out.append(timed(c, "POST", "/v1/orders", body, token=buyer["token"],
                             headers={"Pgtx-Strategy": strategy}))
    finally:
        c.close()
    return out


def other_requests(h, hot, other, buyer, strategy, until):
    """Requests that do not need the locked row, in turn, until `until`:
    [(kind, expected status, response, secs, end)]."""
    kinds = [
        ("POST /v1/orders (other product)", 201,
         ("POST", "/v1/orders", {"account_id": buyer["id"], "product_id": other["id"], "quantity": 1}),
         {"token": buyer["token"], "headers": {"Pgtx-Strategy": strategy}}),
        ("GET /v1/products/{other}", 200, ("GET", "/v1/products/%d" % other["id"]), {}),
        ("GET /v1/products/{locked}", 200, ("GET", "/v1/products/%d" % hot["id"]), {}),
        ("GET /v1/accounts/{id}", 200, ("GET", "/v1/accounts/%d" % buyer["id"]), {"token": buyer["token"]}),
        ("GET /healthz", 200, ("GET", "/healthz"), {}),
    ]
    c = shoplib.Client(*h.default_addr)
    out = []
    try:
        while time.monotonic() < until and len(out) < MAX_REQUESTS:
            kind, want, args, kw = kinds[len(out) % len(kinds)]
            out.append((kind, want) + timed(c, *args, **kw))
    finally:
        c.close()
    return out


def health_poll(h, until):
    c = shoplib.Client(*h.default_addr)
    out = []
    try:
        while time.monotonic() < until and len(out) < MAX_REQUESTS:
            out.append(("GET /healthz (poller)", 200) + timed(c, "GET", "/healthz"))
            time.sleep(0.05)
    finally:
        c.close()
    return out


def health_with_every_worker_stuck(h):
    s = h.start_server(extra=["--threads", str(THREADS), "--pool-size", str(THREADS),
                              "--max-overflow", "0", "--lock-timeout-ms", "0"])
    c = shoplib.Client(*s.addr)
    hot = h.create_product(price=PRICE, stock=STOCK, c=c)
    buyers = [h.create_account(BALANCE, c=c) for _ in range(THREADS)]

    def order(b):
        oc = shoplib.Client(*s.addr)
        try:
            return oc.request("POST", "/v1/orders", {"account_id": b["id"], "product_id": hot["id"],
                                                     "quantity": 1}, token=b["token"])
        finally:
            oc.close()

    holder = LockHolder("product", hot["id"])
    t_locked = time.monotonic()
    released = []

    def release_later():
        # on a clock of its own: a stalled probe must not delay it
        time.sleep(max(0.0, t_locked + HOLD2_S - time.monotonic()))
        released.append(time.monotonic())
        holder.release()

    probes = []
    try:
        with concurrent.futures.ThreadPoolExecutor(THREADS + 1) as ex:
            stuck = [ex.submit(order, b) for b in buyers]
            release = ex.submit(release_later)
            time.sleep(1.0 * SLOW)  # the orders reach the row and wait
            until = t_locked + HOLD2_S - 1.0 * SLOW  # the row is surely still held
            while time.monotonic() < until and len(probes) < MAX_REQUESTS:
                probes.append(timed(c, "GET", "/healthz"))
                time.sleep(0.05)
            release.result()
            orders = [f.result() for f in stuck]
    finally:
        holder.close()
        c.close()
    t_release = released[0]
    log(latency_line("GET /healthz (every worker stuck)", [x for _, x, _ in probes]))
    bad = [r for r, _, end in probes if r.status != 200 or end >= t_release]
    check(probes and not bad, lambda: "/healthz with every worker waiting on a row: %d of %d not 200 before "
          "the release: %s" % (len(bad), len(probes), bad[:3]))
    check(all(r.status == 201 for r in orders), lambda: "orders that waited for the row: %s" % orders)
    log("--lock-timeout-ms 0: %d orders waited while the row was held %.1f s, then 201; /healthz answered "
        "%d times meanwhile" % (len(orders), t_release - t_locked, len(probes)))


def frozen_state(hot, buyers):
    """What a refused order must not change: the product row, its orders,
    and the buyers' accounts and ledgers."""
    ids = shoplib.id_array(b["id"] for b in buyers)
    return shoplib.sql_json(
        "SELECT id, stock, version FROM product WHERE id = %d" % hot["id"],
        "SELECT count(*) AS n FROM orders WHERE product_id = %d OR account_id = ANY(%s)" % (hot["id"], ids),
        "SELECT id, balance, version FROM account WHERE id = ANY(%s) ORDER BY id" % ids,
        "SELECT count(*) AS n FROM ledger WHERE account_id = ANY(%s)" % ids)


class LockedRow(shoplib.ShopTestCase):
    """A row held by a psql session of the test's own: 503 row_busy for
    what needs it, everything else served; then /healthz with every worker
    waiting on a row.  Each method starts (and stops) its own server."""

    SERVERS_PER_TEST = True

    @classmethod
    def setUpServers(cls):
        # the variable, not the flag: HEAD's binary (which has no such flag)
        # can run this test too and show the stall
        os.environ["PGTX_LOCK_TIMEOUT_MS"] = str(LOCK_TIMEOUT_MS)

    def test_row_busy_while_locked(self):
        h = self.h
        h.start_server(extra=["--threads", str(THREADS), "--pool-size", str(THREADS),
                              "--max-overflow", "0"])
        hot = h.create_product(price=PRICE, stock=STOCK)
        others = [h.create_product(price=PRICE, stock=STOCK) for _ in range(OTHER_CLIENTS)]
        locked_buyers = [h.create_account(BALANCE) for _ in range(LOCKED_CLIENTS)]
        other_buyers = [h.create_account(BALANCE) for _ in range(OTHER_CLIENTS)]
        before = frozen_state(hot, locked_buyers)

        holder = LockHolder("product", hot["id"])
        try:
            t_locked = time.monotonic()
            until = t_locked + SEND_FOR_S
            with concurrent.futures.ThreadPoolExecutor(LOCKED_CLIENTS + OTHER_CLIENTS + 1) as ex:
                locked_f = [ex.submit(locked_orders, h, hot, locked_buyers[i], STRATEGIES[i % len(STRATEGIES)], until)
                            for i in range(LOCKED_CLIENTS)]
                other_f = [ex.submit(other_requests, h, hot, others[i], other_buyers[i],
                                     STRATEGIES[i % len(STRATEGIES)], until) for i in range(OTHER_CLIENTS)]
                health_f = ex.submit(health_poll, h, until)
                # the lock is held HOLD_S whatever the clients do
                time.sleep(max(0.0, t_locked + HOLD_S - time.monotonic()))
                t_release = time.monotonic()
                holder.release()
                locked = [x for f in locked_f for x in f.result()]
                other = [x for f in other_f for x in f.result()] + health_f.result()
        finally:
            holder.close()
        log("lock held %.1f s; requests sent during the first %.1f s" % (t_release - t_locked, SEND_FOR_S))

        # every figure first, then every check (all failures are reported)
        outcome = collections.Counter((r.status, r.error_code) for r, _, _ in locked)
        log("orders of the locked product: %s" % dict(outcome))
        log(latency_line("POST /v1/orders (locked product)", [s for _, s, _ in locked]))
        by_kind = collections.defaultdict(list)
        for kind, _, _, secs, _ in other:
            by_kind[kind].append(secs)
        for kind in sorted(by_kind):
            log(latency_line(kind, by_kind[kind]))
        log(latency_line("all requests not needing the row", [s for _, _, _, s, _ in other]))

        soft_failures = []

        def soft(cond, msg):
            if not cond:
                soft_failures.append(msg() if callable(msg) else msg)

        # the locked product: 503 row_busy with Retry-After, within the lock
        # wait plus a margin, and before the lock went away
        soft(locked, "no order of the locked product was sent")
        wrong = [r for r, _, _ in locked if (r.status, r.error_code) != (503, "row_busy")]
        soft(not wrong, lambda: "orders of the locked product, wanted 503 row_busy: %s" % wrong[:5])
        no_header = [r for r, _, _ in locked if not (r.headers.get("retry-after") or "").isdigit()
                     or int(r.headers["retry-after"]) < 1]
        soft(not no_header, lambda: "answers without a Retry-After of at least 1: %s" % no_header[:5])
        slow = [round(s, 2) for _, s, _ in locked if s > LOCK_TIMEOUT_MS / 1000.0 + MARGIN_S]
        soft(not slow, lambda: "orders of the locked product answered later than %d ms + %.1f s: %s"
             % (LOCK_TIMEOUT_MS, MARGIN_S, slow[:10]))
        late = [r for r, _, end in locked if end >= t_release]
        soft(not late, lambda: "%d order(s) of the locked product answered only once the lock was released"
             % len(late))

        # everything else: answered as usual, while the row was still locked
        bad = [(kind, r) for kind, want, r, _, _ in other if r.status != want]
        soft(not bad, lambda: "%d of %d requests that do not need the locked row failed: %s"
             % (len(bad), len(other), bad[:5]))
        late = [kind for kind, _, _, _, end in other if end >= t_release]
        soft(not late, lambda: "%d of %d requests that do not need the locked row were answered only after "
             "the release: %s" % (len(late), len(other), dict(collections.Counter(late))))
        check(not soft_failures, lambda: "\n".join(soft_failures))

        # nothing changed for the refused orders
        after = frozen_state(hot, locked_buyers)
        check(after == before, lambda: "refused orders changed something: before %s, after %s" % (before, after))

        # released: the product sells again, once per buyer
        for i, b in enumerate(locked_buyers):
            r = h.client().request("POST", "/v1/orders",
                                   {"account_id": b["id"], "product_id": hot["id"], "quantity": 1}, token=b["token"],
                                   headers={"Pgtx-Strategy": STRATEGIES[i % len(STRATEGIES)]})
            check(r.status == 201, lambda: "order of the released product: %r" % r)
        stock = h.get("/v1/products/%d" % hot["id"])["stock"]
        check(stock == STOCK - LOCKED_CLIENTS,
              lambda: "stock %d after %d orders of %d" % (stock, LOCKED_CLIENTS, STOCK))
        log("after the release: %d orders of the product succeeded; %d row_busy, %d other requests all "
            "answered while the row was locked" % (LOCKED_CLIENTS, len(locked), len(other)))
        n = h.check_invariants(what="after the locked rows were released")
        log("invariants ok over %d entities" % n)


    def test_health_with_every_worker_stuck(self):
        health_with_every_worker_stuck(self.h)
        n = self.h.check_invariants(what="after the locked rows were released")
        log("invariants ok over %d entities" % n)


if __name__ == "__main__":
    shoplib.main()
