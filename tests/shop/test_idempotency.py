#!/usr/bin/env python3
"""test_idempotency - one Idempotency-Key, ten clients at once.

Under each safe strategy, a few times over: 10 clients (on their own
connections, over two server processes sharing a port with --reuse-port)
send the same order with the same Idempotency-Key at the same instant.
Exactly one order row exists afterwards; all 10 get 201 or 200 with the
same order (one 201 is the usual outcome); the account is charged and the
stock taken once.  Then the same key with a different body is 422
idempotency_key_reused, sequentially and when both bodies race: the losers
of the race never get an order.

usage: PGTX_SHOP_BINARY=build/pgtx-shop python3 -m unittest test_idempotency (from tests/shop)
"""

import collections
import os
import sys
import threading

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import shoplib  # noqa: E402
from shoplib import STRATEGIES, check  # noqa: E402

CLIENTS = 10
REPEATS = 5
PRICE = 7


FIRST_201 = collections.Counter()  # (strategy, 201s in a round) -> rounds: the summary


class Idempotency(shoplib.PairCase):
    """Two processes on one port, a pool of CLIENTS threads (the class's);
    per strategy one method of same-key rounds and one of mixed bodies, each
    round with an account and a product of its own."""

    POOL = CLIENTS

    @classmethod
    def setUpPair(cls):
        h = cls.h
        # each pool thread opens its keep-alive connection first, so that the
        # rounds' requests leave together
        warm = at_once(cls.ex, lambda i: h.client().request("GET", "/healthz"), CLIENTS)
        check(all(r.status == 200 for r in warm), lambda: "GET /healthz: %s" % warm)

    @classmethod
    def tearDownPair(cls):
        n = cls.h.check_invariants(what="end of test_idempotency")
        shoplib.log("invariants: ok over %d entities" % n)
        shoplib.log("summary: %d same-key rounds x %d clients per strategy; 201s per round:"
                    % (REPEATS, CLIENTS))
        for s in STRATEGIES:
            shoplib.log("  %-12s %s" % (s, ", ".join("%d x %d" % (FIRST_201[(s, k)], k)
                                                       for k in sorted({k for (t, k) in FIRST_201 if t == s}))))

    def same_key(self, s):
        for rep in range(REPEATS):
            n201 = same_key_round(self.h, self.ex, s, quantity=1 + rep % 3)
            FIRST_201[(s, n201)] += 1

    def test_sequential_reuse(self):
        sequential_reuse(self.h)


for _s in STRATEGIES:
    setattr(Idempotency, "test_same_key_" + _s, lambda self, s=_s: self.same_key(s))
    setattr(Idempotency, "test_mixed_bodies_" + _s, lambda self, s=_s: mixed_round(self.h, self.ex, s))


def at_once(ex, fn, n):
    """Runs fn(i) for i < n on n pool threads released together."""
    barrier = threading.Barrier(n, timeout=60 * shoplib.SLOW)

    def go(i):
        barrier.wait()
        return fn(i)
    return list(ex.map(go, range(n)))


def same_key_round(h, ex, strategy, quantity):
    acct = h.create_account(1000)
    prod = h.create_product(price=PRICE, stock=100)
    key = h.unique("idem")
    body = {"account_id": acct["id"], "product_id": prod["id"], "quantity": quantity}
    hdr = {"Idempotency-Key": key, "Pgtx-Strategy": strategy}
    results = at_once(ex, lambda i: h.client().request("POST", "/v1/orders", body, token=acct["token"],
                                                       headers=hdr), CLIENTS)
    statuses = collections.Counter(r.status for r in results)
    check(set(statuses) <= {200, 201}, lambda: "%s: statuses %s; e.g. %s"
          % (strategy, dict(statuses), [r for r in results if r.status not in (200, 201)][:3]))
    bodies = {tuple(sorted(r.json.items())) for r in results}
    check(len(bodies) == 1, lambda: "%s: %d different bodies for one key: %s" % (strategy, len(bodies), bodies))
    o = results[0].json
    want = {"id": o.get("id"), "account_id": acct["id"], "product_id": prod["id"], "quantity": quantity,
            "unit_price": PRICE, "discount": 0, "total": PRICE * quantity, "coupon_id": None}
    check(o == want, lambda: "%s: order %s, want %s" % (strategy, o, want))
    # one request inserted the row, and that one must have been told 201
    check(statuses[201] >= 1, lambda: "%s: no 201 among %s" % (strategy, dict(statuses)))
    rows = shoplib.sql_json("SELECT id, idempotency_key FROM orders WHERE account_id = %d" % acct["id"])
    check(rows == [{"id": o["id"], "idempotency_key": key}],
          lambda: "%s: orders of the account %s, want exactly order %d with key %s" % (strategy, rows, o["id"], key))
    bal = h.get("/v1/accounts/%d" % acct["id"])["balance"]
    stock = h.get("/v1/products/%d" % prod["id"])["stock"]
    check(bal == 1000 - PRICE * quantity and stock == 100 - quantity,
          lambda: "%s: balance %d stock %d, want %d and %d (charged once)"
          % (strategy, bal, stock, 1000 - PRICE * quantity, 100 - quantity))
    h.check_invariants(accounts=[acct["id"]], products=[prod["id"]], coupons=[], what=strategy)
    return statuses[201]


def mixed_round(h, ex, strategy):
    """Half the clients send quantity 1, half quantity 2, same key, at once:
    one order; the clients whose body matches it get it, the others 422."""
    acct = h.create_account(1000)
    prod = h.create_product(price=PRICE, stock=100)
    key = h.unique("mixed")

    def send(i):
        body = {"account_id": acct["id"], "product_id": prod["id"], "quantity": 1 + i % 2}
        r = h.client().request("POST", "/v1/orders", body, token=acct["token"],
                               headers={"Idempotency-Key": key, "Pgtx-Strategy": strategy})
        return body["quantity"], r
    results = at_once(ex, send, CLIENTS)
    rows = shoplib.sql_json("SELECT id, quantity FROM orders WHERE account_id = %d" % acct["id"])
    check(len(rows) == 1, lambda: "%s mixed: %d orders for one key: %s" % (strategy, len(rows), rows))
    winner = rows[0]
    for q, r in results:
        if q == winner["quantity"]:
            check(r.status in (200, 201) and r.json.get("id") == winner["id"],
                  lambda: "%s mixed: quantity %d (the stored one) got %r" % (strategy, q, r))
        else:
            check(r.status == 422 and r.error_code == "idempotency_key_reused",
                  lambda: "%s mixed: quantity %d (not stored) got %r, want 422 idempotency_key_reused"
                  % (strategy, q, r))
    bal = h.get("/v1/accounts/%d" % acct["id"])["balance"]
    check(bal == 1000 - PRICE * winner["quantity"], "%s mixed: balance %d" % (strategy, bal))
    shoplib.log("%-12s mixed bodies: stored quantity %d, %s" % (
        strategy, winner["quantity"], dict(collections.Counter((q, r.status) for q, r in results))))


def sequential_reuse(h):
    acct = h.create_account(1000)
    prod = h.create_product(price=PRICE, stock=100)
    key = h.unique("seq")
    c = h.client()
    body = {"account_id": acct["id"], "product_id": prod["id"], "quantity": 1}
    first = c.request("POST", "/v1/orders", body, token=acct["token"], headers={"Idempotency-Key": key})
    check(first.status == 201, lambda: "first order: %r" % first)
    again = c.request("POST", "/v1/orders", body, token=acct["token"], headers={"Idempotency-Key": key})
    check(again.status == 200 and again.json == first.json,
          lambda: "same key, same body: want 200 %s, got %r" % (first.json, again))
    for other in ({"quantity": 2}, {"product_id": h.create_product(price=1, stock=5)["id"]}):
        b2 = dict(body, **other)
        r = c.request("POST", "/v1/orders", b2, token=acct["token"], headers={"Idempotency-Key": key})
        check(r.status == 422 and r.error_code == "idempotency_key_reused",
              lambda: "same key, body %s: want 422 idempotency_key_reused, got %r" % (b2, r))
    rows = shoplib.sql_json("SELECT id FROM orders WHERE account_id = %d" % acct["id"])
    check(rows == [{"id": first.json["id"]}], lambda: "orders after the reuse: %s" % rows)
    shoplib.log("sequential: same key same body -> 200 same order; different body -> 422; one order row")


if __name__ == "__main__":
    shoplib.main()
