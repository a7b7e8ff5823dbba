#!/usr/bin/env python3
"""test_routes_orders - POST /v1/orders, GET /v1/orders/{id} and
GET /v1/accounts/{id}/orders against the real pgtx-shop binary: exact
bodies, coupons and discounts, every strategy on every write route, the
round trips of each write under each strategy (from /metrics), 409
out_of_stock / insufficient_funds / coupon_not_claimed / coupon_already_used,
idempotency keys (replay, reuse with another body, per account), and a
price * quantity past INT64_MAX.  Nothing changes after an error.

usage: PGTX_SHOP_BINARY=build/pgtx-shop python3 -m unittest test_routes_orders
       (from tests/shop), or python3 test_routes_orders.py PGTX_SHOP_BINARY
"""

import json
import os
import sys

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import shoplib  # noqa: E402
from routes_common import RoutesCase  # noqa: E402
from shoplib import INT64_MAX, STRATEGIES, check  # noqa: E402


class Orders(RoutesCase):
    def metric_line(self, prefix):
        text = self.T.request("GET", "/metrics", token=None).body.decode()
        return int(next(line.split()[-1] for line in text.splitlines() if line.startswith(prefix)))

    def test_place_get_list(self):
        T = self.T
        w = self.world()
        A, B, P, K = w.A, w.B, w.P, w.K
        T.ok("POST", w.clm_path, {"account_id": A["id"]}, token=A["token"], status=201)
        orders_of_A = []
        bal = T.get_account(A["id"])["balance"]
        o1 = T.order(A, P, 1, token=A["token"])
        o2 = T.order(A, P, 3)
        o3 = T.order(A, P, 1, coupon=K, token=A["token"], discount=30)
        orders_of_A += [o1, o2, o3]
        check(T.get_account(A["id"])["balance"] == bal - 100 - 300 - 70, "balance after 3 orders")
        check(T.get_product(P["id"])["stock"] == 5, "stock after 5 sold")
        for o in orders_of_A:
            check(T.ok("GET", "/v1/orders/%d" % o["id"], token=A["token"]) == o, "GET order (owner)")
            check(T.ok("GET", "/v1/orders/%d" % o["id"]) == o, "GET order (admin)")
        lst = T.ok("GET", "/v1/accounts/%d/orders" % A["id"], token=A["token"])
        check(set(lst) == {"orders"} and isinstance(lst["orders"], list), lambda: "list: %s" % json.dumps(lst)[:300])
        check(sorted(lst["orders"], key=lambda o: o["id"]) == sorted(orders_of_A, key=lambda o: o["id"]),
              lambda: "GET /v1/accounts/%d/orders = %s, want %s" % (A["id"], json.dumps(lst), json.dumps(orders_of_A)))
        check(T.ok("GET", "/v1/accounts/%d/orders" % A["id"]) == lst, "list (admin) differs")
        check(T.ok("GET", "/v1/accounts/%d/orders" % B["id"], token=B["token"]) == {"orders": []},
              "an account without orders lists {\"orders\": []}")

    def test_discount_above_price(self):
        # total 0, allowed on a zero balance
        T = self.T
        Z = T.account(0)
        P = T.product(price=100, stock=10)
        big = T.coupon(discount=500, quantity=1)
        T.ok("POST", "/v1/coupons/%d/claims" % big["id"], {"account_id": Z["id"]}, token=Z["token"], status=201)
        o = T.order(Z, P, 1, coupon=big, token=Z["token"], discount=500)
        check(o["total"] == 0 and T.get_account(Z["id"])["balance"] == 0, "total floors at 0")

    def test_every_strategy_on_every_write_route(self):
        T = self.T
        for s in STRATEGIES:
            a = T.account(100, strategy=s)
            T.deposit(a, 11, strategy=s)
            T.deposit(a, 1, token=a["token"], strategy=s)
            p = T.product(price=10, stock=3, strategy=s)
            r = T.ok("POST", "/v1/products/%d/restock" % p["id"], {"quantity": 2}, headers={"Pgtx-Strategy": s})
            check(r["stock"] == 5, lambda: "restock under %s: %s" % (s, r))
            k = T.coupon(discount=4, quantity=2, strategy=s)
            r = T.ok("POST", "/v1/coupons/%d/claims" % k["id"], {"account_id": a["id"]}, token=a["token"],
                     status=201, headers={"Pgtx-Strategy": s})
            check(r == {"coupon_id": k["id"], "account_id": a["id"]}, lambda: "claim under %s: %s" % (s, r))
            T.order(a, p, 2, coupon=k, token=a["token"], strategy=s, discount=4)
            T.order(a, p, 1, strategy=s, key=T.h.unique("key"))
            check(T.get_account(a["id"])["balance"] == 100 + 12 - 16 - 10, "balance under " + s)
            check(T.get_product(p["id"])["stock"] == 2, "stock under " + s)
            check(T.get_coupon(k["id"])["remaining"] == 1, "remaining under " + s)
        T.h.check_invariants(what="after the strategy loop", **T.mine)

    def test_round_trips_per_strategy(self):
        # atomic writes in one, the others in as few as their reads allow.
        # The class's server serves only this test while it runs (unittest
        # runs a class's tests one after the other).
        T = self.T

        def trips_of(call):
            before = self.metric_line("pgtx_shop_pool_round_trips_total ")
            call()
            return self.metric_line("pgtx_shop_pool_round_trips_total ") - before

        p = T.product(price=1, stock=100)
        k = T.coupon(discount=0, quantity=100)
        # reads, then the write with COMMIT; optimistic checks its versions
        # before COMMIT
        for s, want in (("atomic", 1), ("lock", 2), ("serializable", 2), ("optimistic", 3)):
            a = T.account(1000)
            got = [trips_of(lambda: T.ok("POST", "/v1/accounts/%d/deposits" % a["id"],
                                         {"amount": 1}, headers={"Pgtx-Strategy": s})),
                   trips_of(lambda: T.ok("POST", "/v1/coupons/%d/claims" % k["id"],
                                         {"account_id": a["id"]}, status=201,
                                         headers={"Pgtx-Strategy": s})),
                   trips_of(lambda: T.order(a, p, 1, strategy=s)),
                   trips_of(lambda: T.order(a, p, 1, strategy=s, key=T.h.unique("rt")))]
            shoplib.log("round trips under %-12s deposit, claim, order, keyed order: %r" % (s, got))
            check(got == [want] * 4,
                  lambda: "round trips of deposit, claim, order, keyed order under %s: %r, want %d each"
                  % (s, got, want))
        T.h.check_invariants(what="after the round-trip counts", **T.mine)

    def test_out_of_stock(self):
        T = self.T
        q = T.product(price=10, stock=2)
        buyer = T.account(1000)

        def atomic_tx(outcome):
            return self.metric_line('pgtx_shop_transactions_total{strategy="atomic",outcome="%s"} ' % outcome)

        before = (atomic_tx("committed"), atomic_tx("failed"))
        T.err("POST", "/v1/orders", {"account_id": buyer["id"], "product_id": q["id"], "quantity": 3},
              token=buyer["token"], status=409, code="out_of_stock")
        # the atomic order committed having changed nothing: a refusal all the same
        after = (atomic_tx("committed"), atomic_tx("failed"))
        check(after == (before[0], before[1] + 1),
              lambda: "atomic transactions (committed, failed) around an out_of_stock order: %r -> %r"
              % (before, after))
        T.order(buyer, q, 2, token=buyer["token"])
        for s in STRATEGIES:
            T.err("POST", "/v1/orders", {"account_id": buyer["id"], "product_id": q["id"], "quantity": 1},
                  headers={"Pgtx-Strategy": s}, status=409, code="out_of_stock")
        check(T.get_product(q["id"])["stock"] == 0, "stock after selling out")
        check(T.get_account(buyer["id"])["balance"] == 980, "balance after out_of_stock attempts")

    def test_insufficient_funds(self):
        T = self.T
        P = T.product(price=100, stock=10)
        poor = T.account(99)
        for s in (None,) + STRATEGIES:
            T.err("POST", "/v1/orders", {"account_id": poor["id"], "product_id": P["id"], "quantity": 1},
                  token=poor["token"], headers={"Pgtx-Strategy": s} if s else None, status=409,
                  code="insufficient_funds")
        T.deposit(poor, 1)
        T.order(poor, P, 1, token=poor["token"])
        check(T.get_account(poor["id"])["balance"] == 0, "balance spent to exactly 0")

    def test_coupon_not_claimed_already_used(self):
        T = self.T
        w = self.world()
        A, C, P, K = w.A, w.C, w.P, w.K
        k2 = T.coupon(discount=10, quantity=3)
        body = {"account_id": C["id"], "product_id": P["id"], "quantity": 1, "coupon_id": k2["id"]}
        for s in (None,) + STRATEGIES:
            T.err("POST", "/v1/orders", body, token=C["token"], headers={"Pgtx-Strategy": s} if s else None,
                  status=409, code="coupon_not_claimed")
        T.ok("POST", "/v1/coupons/%d/claims" % k2["id"], {"account_id": C["id"]}, token=C["token"], status=201)
        T.order(C, P, 1, coupon=k2, token=C["token"], discount=10)
        for s in (None,) + STRATEGIES:
            T.err("POST", "/v1/orders", body, token=C["token"], headers={"Pgtx-Strategy": s} if s else None,
                  status=409, code="coupon_already_used")
        # A claims K and uses it on an order, then tries again (as the admin)
        T.ok("POST", w.clm_path, {"account_id": A["id"]}, token=A["token"], status=201)
        T.order(A, P, 1, coupon=K, token=A["token"], discount=30)
        T.err("POST", "/v1/orders", {"account_id": A["id"], "product_id": P["id"], "quantity": 1,
                                     "coupon_id": K["id"]}, status=409, code="coupon_already_used")

    def test_price_times_quantity_past_int64_max(self):
        T = self.T
        rich = T.account(INT64_MAX - 5)
        T.deposit(rich, 5)
        check(T.get_account(rich["id"])["balance"] == INT64_MAX, "balance at INT64_MAX")
        # price * quantity would overflow
        dear = T.product(price=2**62, stock=10)
        for s in (None,) + STRATEGIES:
            T.err("POST", "/v1/orders", {"account_id": rich["id"], "product_id": dear["id"], "quantity": 2},
                  headers={"Pgtx-Strategy": s} if s else None, status=422, code="out_of_range")
        # an unknown account is reported before the overflow, under every strategy
        for s in (None,) + STRATEGIES:
            T.err("POST", "/v1/orders", {"account_id": 10 ** 15, "product_id": dear["id"], "quantity": 2},
                  headers={"Pgtx-Strategy": s} if s else None, status=404, code="not_found")
        T.order(rich, dear, 1)

    def test_idempotency(self):
        # same key same body -> 200 same order; different body -> 422
        T = self.T
        P = T.product(price=100, stock=100)
        buyer = T.account(1000)
        key = T.h.unique("idem")
        first = T.order(buyer, P, 2, token=buyer["token"], key=key)
        for s in (None,) + STRATEGIES:
            hdr = {"Idempotency-Key": key}
            if s:
                hdr["Pgtx-Strategy"] = s
            body = {"account_id": buyer["id"], "product_id": P["id"], "quantity": 2}

            def replay():
                return T.ok("POST", "/v1/orders", body, token=buyer["token"], headers=hdr, status=200)
            again = T.unchanged_by("the replay of an order (%s)" % s, replay)
            check(again == first, lambda: "replay body %s != first %s" % (json.dumps(again), json.dumps(first)))
        for other in [{"quantity": 1}, {"product_id": T.product(price=1, stock=5)["id"]}]:
            body = dict({"account_id": buyer["id"], "product_id": P["id"], "quantity": 2}, **other)
            T.err("POST", "/v1/orders", body, token=buyer["token"], headers={"Idempotency-Key": key}, status=422,
                  code="idempotency_key_reused")
        # the key belongs to the account: another account may use the same key
        other = T.account(1000)
        o = T.order(other, P, 2, token=other["token"], key=key)
        check(o["id"] != first["id"], "the same key from another account returned the first account's order")
        check(T.get_account(buyer["id"])["balance"] == 800, "buyer charged once")
        # a refused order leaves nothing behind: its key is still free
        late = T.account(50)
        key2 = T.h.unique("idem")
        body = {"account_id": late["id"], "product_id": P["id"], "quantity": 1}
        T.err("POST", "/v1/orders", body, token=late["token"], headers={"Idempotency-Key": key2}, status=409,
              code="insufficient_funds")
        T.deposit(late, 50)
        T.order(late, P, 1, token=late["token"], key=key2)


if __name__ == "__main__":
    shoplib.main()
