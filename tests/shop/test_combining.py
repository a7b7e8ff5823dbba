#!/usr/bin/env python3
"""test_combining - writes of one row that wait together share a transaction,
and each is answered as if it had run alone, in the order they arrived.

pgtx-shop lets one transaction of a row's deposits, orders or claims be in
flight at a time (--batch-limit > 1, the default); the requests that arrive
meanwhile wait without a worker, and the next transaction takes all of them.
Here the hot row (an account, a product, a coupon) is held FOR UPDATE by
psql while a sequence of requests arrives one at a time: the first goes in
flight and waits on the lock, the others wait for their turn.  On release,
the first runs alone and the rest run as ONE transaction (Pgtx-Batch says
how many).  The same sequence is then run one request at a time on fresh
rows; every answer of the combined run must be the same (status, error
code, the order's figures, the account's balance) — every business outcome
of a route is in the sequences: replays and reused Idempotency-Keys, missing
rows, overflows, out of stock, coupons not claimed or already used (by an
earlier call of the same batch), insufficient funds (two calls of one
account), claims made twice or past the last one.  Under every strategy:
atomic runs the combined statement, the others a savepoint per call.  The
invariants hold afterwards.

usage: PGTX_SHOP_BINARY=build/pgtx-shop python3 -m unittest test_combining
       (from tests/shop), or python3 test_combining.py PGTX_SHOP_BINARY
"""

import concurrent.futures
import os
import sys

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import shoplib  # noqa: E402
from shoplib import check, log, wait_until  # noqa: E402

SLOW = shoplib.SLOW
DEADLINE = 30.0 * SLOW
MISSING_ID = 9_000_000_000_000_000_000 // 1000  # no row has it
SAVEPOINT_BATCH_MAX = 8  # calls per transaction with a savepoint each


def outcome(r, fields):
    """What must be the same whether the request ran alone or combined."""
    if r.status >= 300:
        return (r.status, r.error_code)
    body = r.json
    return (r.status,) + tuple(body.get(f) for f in fields)


class Combining(shoplib.ShopTestCase):
    """The default --batch-limit: requests that waited together share one
    transaction."""

    SERVER_EXTRA = ("--threads", "4", "--lock-timeout-ms", "0", "--batch-limit", "64")

    def send(self, req, strategy):
        method, path, body, token, key = req
        headers = {"Pgtx-Strategy": strategy}
        if key:
            headers["Idempotency-Key"] = key
        c = shoplib.Client(*self.srv.addr)
        try:
            return c.request(method, path, body, token=token, headers=headers)
        finally:
            c.close()

    def queued(self, table, row_id, reqs, strategy):
        """reqs sent one at a time while table's row_id is held: the first
        in flight on the lock, the rest waiting for their turn, in order."""
        c = self.client()
        holder = shoplib.LockHolder(table, row_id)
        waiting0 = shoplib.metric(c, "pgtx_shop_http_row_waiting")
        try:
            with concurrent.futures.ThreadPoolExecutor(len(reqs)) as ex:
                futures = []
                for i, req in enumerate(reqs):
                    futures.append(ex.submit(self.send, req, strategy))
                    if i == 0:
                        wait_until(lambda: holder.waiters() >= 1, DEADLINE, "the first request on the held row")
                    else:
                        wait_until(lambda: shoplib.metric(c, "pgtx_shop_http_row_waiting") - waiting0 >= i,
                                   DEADLINE, "%d requests waiting for their turn" % i)
                check(not any(f.done() for f in futures), "a request of the held row was answered while it "
                      "was held")
                holder.release()
                return [f.result(timeout=DEADLINE) for f in futures]
        finally:
            holder.close()

    def alone(self, reqs, strategy):
        return [self.send(req, strategy) for req in reqs]

    def compare(self, what, strategy, combined, alone, fields):
        got = [outcome(r, fields) for r in combined]
        want = [outcome(r, fields) for r in alone]
        if os.environ.get("DEBUG_COMBINING"):
            for g, w in zip(got, want):
                log("%r %r" % (g, w))
        for i, (g, w) in enumerate(zip(got, want)):
            check(g == w, lambda: "%s, %s, request %d: combined %r, alone %r\ncombined: %r\nalone: %r"
                  % (what, strategy, i, g, w, combined[i], alone[i]))
        # the first alone (on the lock); the rest in one transaction, or
        # under a savepoint per call in transactions of at most 8
        sizes = [int(r.headers.get("pgtx-batch") or 0) for r in combined]
        rest = len(combined) - 1
        most = rest if strategy == "atomic" else min(rest, SAVEPOINT_BATCH_MAX)
        transactions = sum(1.0 / k for k in sizes[1:] if k > 0)
        check(sizes[0] == 1 and all(s == most or s == rest % most for s in sizes[1:])
              and round(transactions) == -(-rest // most),
              "%s, %s: Pgtx-Batch %s, want 1 then transactions of %d" % (what, strategy, sizes, most))
        log("%s, %s: %d requests, Pgtx-Batch %s, the same answers as one at a time"
            % (what, strategy, len(combined), sorted(set(sizes))))

    # ---- orders

    def order_requests(self):
        """A product (price 10, stock 6) and the orders of the sequence."""
        product = self.product(10, 6)
        rich, poor, pair = self.account(1000), self.account(5), self.account(15)
        holder_ = self.account(1000)
        coupon = self.coupon(discount=4, quantity=5)
        r = self.client().request("POST", "/v1/coupons/%d/claims" % coupon["id"], {"account_id": holder_["id"]},
                                  token=holder_["token"])
        check(r.status == 201, lambda: "claim: %r" % r)
        admin = self.h.admin_token
        key = self.h.unique("key")

        def order(acct, qty, coupon_id=None, token=None, k=None, account_id=None):
            body = {"account_id": account_id or acct["id"], "product_id": product["id"], "quantity": qty}
            if coupon_id:
                body["coupon_id"] = coupon_id
            return ("POST", "/v1/orders", body, token or acct["token"], k)

        reqs = [
            order(rich, 1),                                   # in flight alone: 201, stock 5
            order(rich, 1, k=key),                            # 201, stock 4
            order(rich, 1, k=key),                            # the same order again: 200 replay
            order(rich, 2, k=key),                            # another request, same key: 422
            order(None, 1, token=admin, account_id=MISSING_ID),  # 404 account
            order(rich, 1, coupon_id=MISSING_ID),             # 404 coupon
            order(rich, 2 ** 62),                             # 422 price * quantity overflows
            order(rich, 10),                                  # 409 out of stock (4 left)
            order(poor, 1),                                   # 409 insufficient funds
            order(rich, 1, coupon_id=coupon["id"]),           # 409 coupon not claimed
            order(holder_, 1, coupon_id=coupon["id"]),        # 201 with the discount, stock 3
            order(holder_, 1, coupon_id=coupon["id"]),        # 409 used by the call before
            order(pair, 1),                                   # 201, balance 5, stock 2
            order(pair, 1),                                   # 409 insufficient funds (5 < 10)
            order(rich, 3),                                   # 409 out of stock (2 left)
            order(rich, 2),                                   # 201: the refusals took nothing; stock 0
        ]
        return product, reqs

    def test_orders(self):
        self.each_strategy("orders", "product", self.order_requests,
                           ("quantity", "unit_price", "discount", "total"), "stock", 0)

    # ---- claims

    def claim_requests(self):
        coupon = self.coupon(discount=1, quantity=3)
        a, b, c, d = (self.account(10) for _ in range(4))
        admin = self.h.admin_token

        def claim(acct, token=None, account_id=None):
            return ("POST", "/v1/coupons/%d/claims" % coupon["id"],
                    {"account_id": account_id or acct["id"]}, token or acct["token"], None)

        reqs = [
            claim(a),                                         # in flight alone: 201
            claim(b),                                         # 201
            claim(b),                                         # 409 already claimed (by the call before)
            claim(a),                                         # 409 already claimed (stored)
            claim(None, token=admin, account_id=MISSING_ID),  # 404 account
            claim(c),                                         # 201, the last one
            claim(d),                                         # 409 exhausted
            claim(c),                                         # 409 already claimed before exhausted
        ]
        return coupon, reqs

    def test_claims(self):
        self.each_strategy("claims", "coupon", self.claim_requests, (), "remaining", 0)

    # ---- deposits

    def deposit_requests(self):
        acct = self.account(0)

        def deposit(amount):
            return ("POST", "/v1/accounts/%d/deposits" % acct["id"], {"amount": amount}, acct["token"], None)

        # The overflow fails the combined statement: the calls then run one
        # by one, and only that one is refused.
        reqs = [deposit(1), deposit(5), deposit(7), deposit(shoplib.INT64_MAX), deposit(3)]
        return acct, reqs

    def test_deposits(self):
        self.each_strategy("deposits", "account", self.deposit_requests, ("balance", "version"),
                           "balance", 16)

    # ---- every route the same way

    def each_strategy(self, what, table, requests, fields, column, final):
        """Under each strategy: the sequence of requests() queued behind a
        held row (of `table`), then on fresh rows one at a time; the same
        answers, and `column` of the row ends at `final`."""
        for strategy in shoplib.STRATEGIES:
            row, reqs = requests()
            combined = self.queued(table, row["id"], reqs, strategy)
            _, reqs_alone = requests()
            alone = self.alone(reqs_alone, strategy)
            self.compare(what, strategy, combined, alone, fields)
            path = {"product": "/v1/products/%d", "coupon": "/v1/coupons/%d",
                    "account": "/v1/accounts/%d"}[table] % row["id"]
            got = self.h.get(path)[column]
            check(got == final, "%s, %s: %s %d after the combined requests, want %d"
                  % (what, strategy, column, got, final))
            self.check_invariants(what="after combined %s, %s" % (what, strategy))


def deposit(addr, acct, amount):
    c = shoplib.Client(*addr)
    try:
        return c.request("POST", "/v1/accounts/%d/deposits" % acct["id"], {"amount": amount},
                         token=acct["token"])
    finally:
        c.close()


def deposits_of_a_held_row(case, acct, n, release_when=None):
    """n deposits sent at once while acct is held FOR UPDATE; the lock is
    released once release_when() is true (None: kept until all answered)."""
    holder = shoplib.LockHolder("account", acct["id"])
    try:
        with concurrent.futures.ThreadPoolExecutor(n) as ex:
            futures = [ex.submit(deposit, case.srv.addr, acct, i + 1) for i in range(n)]
            if release_when:
                wait_until(release_when, DEADLINE, "deposits waiting for their turn")
                holder.release()
            answers = [f.result(timeout=DEADLINE) for f in futures]
        check(release_when or holder.holding(), "the lock holder let go before the deposits were answered")
        return answers
    finally:
        holder.close()


class LaneDeadline(shoplib.ShopTestCase):
    """A write waiting in its row's lane has the lock wait as deadline:
    then 503 row_busy with Retry-After, nothing changed."""

    LOCK_TIMEOUT_MS = 300
    SERVER_EXTRA = ("--threads", "4", "--lock-timeout-ms", str(LOCK_TIMEOUT_MS), "--batch-limit", "64")

    def test_wait_ends(self):
        acct = self.account(0)
        n = 6
        answers = deposits_of_a_held_row(self, acct, n)
        bad = [r for r in answers if (r.status, r.error_code) != (503, "row_busy")
               or not (r.headers.get("retry-after") or "").isdigit()]
        check(not bad, lambda: "deposits of a held row: %r" % bad[:3])
        check(self.h.get("/v1/accounts/%d" % acct["id"])["balance"] == 0, "balance after refused deposits")
        self.check_invariants(what="after the lane's deadline")
        log("%d deposits of a held row: 503 row_busy after --lock-timeout-ms %d" % (n, self.LOCK_TIMEOUT_MS))


class NotCombining(shoplib.ShopTestCase):
    """--batch-limit 1: each request its own transaction (Pgtx-Batch: 1),
    even when many wait for one row."""

    SERVER_EXTRA = ("--threads", "4", "--lock-timeout-ms", "0", "--batch-limit", "1")

    def test_each_alone(self):
        acct = self.account(0)
        n = 12
        answers = deposits_of_a_held_row(
            self, acct, n, lambda: shoplib.metric(self.client(), "pgtx_shop_http_row_waiting") >= n - 2)
        check(all(r.status == 200 and r.headers.get("pgtx-batch") == "1" for r in answers),
              lambda: "deposits: %r" % [(r.status, r.headers.get("pgtx-batch")) for r in answers])
        check(self.h.get("/v1/accounts/%d" % acct["id"])["balance"] == n * (n + 1) // 2, "balance")
        self.check_invariants(what="after deposits one by one")


if __name__ == "__main__":
    shoplib.main()
