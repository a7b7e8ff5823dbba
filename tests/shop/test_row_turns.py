#!/usr/bin/env python3
"""test_row_turns - writes of one row take their turns without a worker.

pgtx-shop hands at most 2 writes per row (an order's product, account and
coupon; a deposit's account; a claim's coupon) to its workers at once; the
others wait for their turn suspended, holding no thread and no pooled
connection.  Here a product is held `FOR UPDATE` by another client (psql)
while three times as many buyers as the server has workers order it:

- with no lock wait bound (--lock-timeout-ms 0): exactly 2 of the server's
  backends wait on the row lock in PostgreSQL (pg_stat_activity) and the
  rest are counted in pgtx_shop_http_row_waiting; meanwhile an order of
  another product, a deposit and reads are answered before the lock is
  released (without the turns, every worker would be stuck on the row and
  they would only be answered after it); once released, every buyer's
  order succeeds and the stock is exact;
- with --lock-timeout-ms: every buyer gets 503 row_busy with Retry-After,
  never more than 2 backends wait on the lock at once, the waiting ones
  are answered together with the first lock timeout, and nothing changed.

Those run with --batch-limit 1 (each order its own transaction).  With
write combining on (the default), the orders of one product have a lane:
one transaction of them in flight, so exactly 1 backend waits on the lock
and all the other buyers wait for their turn, then share one transaction.

usage: PGTX_SHOP_BINARY=build/pgtx-shop python3 -m unittest test_row_turns
       (from tests/shop), or python3 test_row_turns.py PGTX_SHOP_BINARY
"""

import concurrent.futures
import os
import sys
import threading
import time

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import shoplib  # noqa: E402
from shoplib import check, log, wait_until  # noqa: E402

SLOW = shoplib.SLOW
THREADS = 4
ROW_IN_FLIGHT = 2          # the server's writes per row at once
BUYERS = 3 * THREADS       # more than the workers: all of them would be stuck
PRICE, STOCK, BALANCE = 10, 100, 1000
DEADLINE = 20.0 * SLOW     # for anything the server must do while the lock is held
LOCK_TIMEOUT_MS = 500


def order(addr, buyer, product):
    c = shoplib.Client(*addr)
    try:
        return c.request("POST", "/v1/orders", {"account_id": buyer["id"], "product_id": product["id"],
                                                "quantity": 1}, token=buyer["token"])
    finally:
        c.close()


class Sampler(threading.Thread):
    """The most backends seen waiting on a lock at once, until stop()."""

    def __init__(self, holder):
        super().__init__(daemon=True)
        self.holder = holder
        self.most, self.samples = 0, 0
        self._stop_event = threading.Event()

    def run(self):
        end = time.monotonic() + DEADLINE
        while not self._stop_event.is_set() and time.monotonic() < end:
            self.most = max(self.most, self.holder.waiters())
            self.samples += 1
            time.sleep(0.02)

    def stop(self):
        self._stop_event.set()
        self.join()


class Unbounded(shoplib.ShopTestCase):
    """No lock wait bound: writes of the held row wait as long as it is held."""

    SERVER_EXTRA = ("--threads", str(THREADS), "--pool-size", str(THREADS), "--max-overflow", "0",
                    "--lock-timeout-ms", "0", "--batch-limit", "1")
    IN_FLIGHT = ROW_IN_FLIGHT

    def test_held_row_takes_two_workers(self):
        c = self.client()
        hot, other = self.product(PRICE, STOCK), self.product(PRICE, STOCK)
        buyers = [self.account(BALANCE) for _ in range(BUYERS)]
        someone = self.account(BALANCE)
        waiting0 = shoplib.metric(c, "pgtx_shop_http_row_waits_total")
        taken0 = shoplib.metric(c, "pgtx_shop_http_batch_size_sum")
        holder = shoplib.LockHolder("product", hot["id"])
        try:
            with concurrent.futures.ThreadPoolExecutor(BUYERS) as ex:
                stuck = [ex.submit(order, self.srv.addr, b, hot) for b in buyers]
                wait_until(lambda: self.queued(c, taken0), DEADLINE,
                           lambda _: "%d orders waiting for the held row's turn (%d are)"
                           % (BUYERS - self.IN_FLIGHT, shoplib.metric(c, "pgtx_shop_http_row_waiting")))
                wait_until(lambda: holder.waiters() >= self.IN_FLIGHT, DEADLINE, "backends waiting on the row lock")
                waiters = holder.waiters()
                # the rest of the service: answered while the row is held
                t0 = time.monotonic()
                r_other = order(self.srv.addr, someone, other)
                r_dep = c.request("POST", "/v1/accounts/%d/deposits" % someone["id"], {"amount": 5},
                                  token=someone["token"])
                r_get = c.request("GET", "/v1/products/%d" % hot["id"])
                took = time.monotonic() - t0
                still = holder.waiters()
                check(not any(f.done() for f in stuck), "an order of the held row was answered while it was held")
                holder.release()
                answers = [f.result(timeout=DEADLINE) for f in stuck]
        finally:
            holder.close()
        log("held row: %d orders, %d backends on the row lock, %d waiting for their turn; another order, a "
            "deposit and a read answered in %.1f ms meanwhile" % (BUYERS, waiters, BUYERS - self.IN_FLIGHT,
                                                                 took * 1000))
        check(waiters == self.IN_FLIGHT and still == self.IN_FLIGHT,
              "backends waiting on the held row: %d, then %d; want %d" % (waiters, still, self.IN_FLIGHT))
        check(r_other.status == 201, lambda: "order of another product: %r" % r_other)
        check(r_dep.status == 200, lambda: "deposit: %r" % r_dep)
        check(r_get.status == 200 and r_get.json["stock"] == STOCK, lambda: "read of the held product: %r" % r_get)
        bad = [r for r in answers if r.status != 201]
        check(not bad, lambda: "orders of the released row: %s" % bad[:3])
        waits = shoplib.metric(c, "pgtx_shop_http_row_waits_total") - waiting0
        check(waits >= BUYERS - self.IN_FLIGHT, "row_waits_total rose by %d" % waits)
        sizes = [int(r.headers.get("pgtx-batch") or 0) for r in answers]
        transactions = sum(1.0 / k for k in sizes if k > 0)
        log("Pgtx-Batch of the buyers' answers: %s: %.0f transaction(s)" % (sorted(set(sizes)), transactions))
        if self.IN_FLIGHT == 1:
            check(all(sizes) and round(transactions) <= 2, "Pgtx-Batch %s: want the buyers in at most 2 "
                  "transactions (the one that waited on the lock, and the rest)" % sizes)

    def queued(self, c, taken0):
        """Every buyer in flight or waiting for its turn."""
        return shoplib.metric(c, "pgtx_shop_http_row_waiting") == BUYERS - self.IN_FLIGHT
        check(self.h.get("/v1/products/%d" % hot["id"])["stock"] == STOCK - BUYERS, "stock after the release")
        self.check_invariants(what="after the held row was released")


class UnboundedCombining(Unbounded):
    """The same with write combining: one transaction of the row in flight
    (the lane), every other buyer waiting for its turn."""

    SERVER_EXTRA = ("--threads", str(THREADS), "--pool-size", str(THREADS), "--max-overflow", "0",
                    "--lock-timeout-ms", "0", "--batch-limit", "64")
    IN_FLIGHT = 1

    def queued(self, c, taken0):
        """Every buyer in the transaction on the lock or waiting for the
        next: requests that arrived together may all be in the first."""
        taken = shoplib.metric(c, "pgtx_shop_http_batch_size_sum") - taken0
        return taken + shoplib.metric(c, "pgtx_shop_http_row_waiting") == BUYERS


class Bounded(shoplib.ShopTestCase):
    """--lock-timeout-ms: writes of the held row are refused, fast and all."""

    SERVER_EXTRA = ("--threads", str(THREADS), "--pool-size", str(THREADS), "--max-overflow", "0",
                    "--lock-timeout-ms", str(LOCK_TIMEOUT_MS), "--batch-limit", "1")

    def test_held_row_refuses_the_queue(self):
        c = self.client()
        hot = self.product(PRICE, STOCK)
        buyers = [self.account(BALANCE) for _ in range(BUYERS)]
        before = shoplib.sql_json("SELECT stock, version FROM product WHERE id = %d" % hot["id"],
                                  "SELECT sum(balance) AS b FROM account WHERE id = ANY(%s)"
                                  % shoplib.id_array(b["id"] for b in buyers))
        expired0 = shoplib.metric(c, "pgtx_shop_http_row_wait_expired_total")
        holder = shoplib.LockHolder("product", hot["id"])
        sampler = Sampler(holder)
        try:
            sampler.start()
            t0 = time.monotonic()
            with concurrent.futures.ThreadPoolExecutor(BUYERS) as ex:
                answers = list(ex.map(lambda b: (order(self.srv.addr, b, hot), time.monotonic() - t0), buyers))
            sampler.stop()
            check(holder.holding(), "the lock holder let go before the orders were answered")
        finally:
            sampler.stop()
            holder.close()
        expired = shoplib.metric(c, "pgtx_shop_http_row_wait_expired_total") - expired0
        slowest = max(t for _, t in answers)
        log("held row, --lock-timeout-ms %d: %d orders answered within %.0f ms, %d of them before their turn; "
            "at most %d backends on the row lock (%d samples)"
            % (LOCK_TIMEOUT_MS, BUYERS, slowest * 1000, expired, sampler.most, sampler.samples))
        bad = [r for r, _ in answers if (r.status, r.error_code) != (503, "row_busy")
               or not (r.headers.get("retry-after") or "").isdigit()]
        check(not bad, lambda: "orders of the held row, want 503 row_busy with Retry-After: %s" % bad[:3])
        check(1 <= sampler.most <= ROW_IN_FLIGHT, "backends waiting on the row lock at once: %d, want 1 to %d"
              % (sampler.most, ROW_IN_FLIGHT))
        check(expired >= 1, "no order was refused before its turn (row_wait_expired_total +%d)" % expired)
        after = shoplib.sql_json("SELECT stock, version FROM product WHERE id = %d" % hot["id"],
                                 "SELECT sum(balance) AS b FROM account WHERE id = ANY(%s)"
                                 % shoplib.id_array(b["id"] for b in buyers))
        check(after == before, lambda: "refused orders changed something: %s -> %s" % (before, after))


if __name__ == "__main__":
    shoplib.main()
