#!/usr/bin/env python3
"""test_hot_product - 500 buyers, 50 in stock, some too poor.

500 accounts (every 5th with a balance below the price) each order one unit
of a product with stock 50, all at once from 100 client threads over two
server processes sharing a port (--reuse-port), under each safe strategy (a fresh product
each time; the accounts carry over, rich ones can afford every round).
No oversell: exactly 50 orders succeed (the 400 solvent buyers outnumber the
stock), count(201) = 50 - final stock, stock never below 0; every 201's
order id is in `orders` exactly once with the right account and total; the
409s are out_of_stock or insufficient_funds only, and a poor buyer never
gets 201; every balance is its start minus what its 201s cost; invariants.

usage: PGTX_SHOP_BINARY=build/pgtx-shop python3 -m unittest test_hot_product (from tests/shop)
"""

import collections
import os
import sys
import time

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import shoplib  # noqa: E402
from shoplib import STRATEGIES, check  # noqa: E402

BUYERS = 500
STOCK = 50
PRICE = 100
THREADS = 100


def is_poor(i):
    return i % 5 == 4


REPORT = []  # (strategy, orders/s, retries, seconds, outcome): the summary


class HotProduct(shoplib.PairCase):
    """Two processes on one port and 500 buyers (the class's: each solvent
    one can pay for one order per strategy); one method per strategy, each
    with a product of its own.  The balances are checked at the end."""

    POOL = THREADS

    @classmethod
    def setUpPair(cls):
        h = cls.h
        t0 = time.monotonic()
        cls.accounts = list(cls.ex.map(
            lambda i: h.create_account(PRICE - 1 if is_poor(i) else PRICE * len(STRATEGIES)), range(BUYERS)))
        shoplib.log("created %d accounts (%d poor) in %.2f s"
                    % (BUYERS, sum(map(is_poor, range(BUYERS))), time.monotonic() - t0))
        cls.start_balance = {a["id"]: a["balance"] for a in cls.accounts}
        cls.spent = collections.Counter()

    @classmethod
    def tearDownPair(cls):
        # every balance: start - what its acknowledged orders cost
        h, start_balance, spent = cls.h, cls.start_balance, cls.spent
        rows = shoplib.sql_json("SELECT id, balance FROM account WHERE id = ANY(%s)"
                                % shoplib.id_array(start_balance))
        wrong = [(r["id"], r["balance"], start_balance[r["id"]] - spent[r["id"]]) for r in rows
                 if r["balance"] != start_balance[r["id"]] - spent[r["id"]]]
        check(len(rows) == BUYERS and not wrong,
              lambda: "balances != start - acknowledged orders (id, got, want): %s" % wrong[:10])
        n = h.check_invariants(what="end of the hot product test")
        shoplib.log("balances: all %d exact; invariants: ok over %d entities" % (BUYERS, n))
        shoplib.log("summary (%d buyers, stock %d, price %d):" % (BUYERS, STOCK, PRICE))
        for s, rate, retries, took, outcome in REPORT:
            shoplib.log("  %-12s %6.0f orders/s  %5d retries  %5.2f s  %s" % (s, rate, retries, took, outcome))

    def round(self, strategy):
        REPORT.append(hot_round(self.h, self.ex, self.accounts, strategy, self.spent))


for _s in STRATEGIES:
    setattr(HotProduct, "test_" + _s, lambda self, s=_s: self.round(s))


def hot_round(h, ex, accounts, strategy, spent):
    p = h.create_product(price=PRICE, stock=STOCK)
    hdr = {"Pgtx-Strategy": strategy}
    deadline = time.monotonic() + 120 * shoplib.SLOW

    def buy(i):
        check(time.monotonic() < deadline, "%s: the round ran past its deadline" % strategy)
        a = accounts[i]
        body = {"account_id": a["id"], "product_id": p["id"], "quantity": 1}
        return i, h.client().request("POST", "/v1/orders", body, token=a["token"], headers=hdr)

    t0 = time.monotonic()
    results = list(ex.map(buy, range(len(accounts))))
    took = time.monotonic() - t0
    outcome = collections.Counter((r.status, r.error_code) for _, r in results)
    retries = sum(r.retries for _, r in results if isinstance(r.retries, int))
    shoplib.log("%-12s %s in %.2f s, retries %d" % (strategy, dict(outcome), took, retries))

    allowed = {(201, None), (409, "out_of_stock"), (409, "insufficient_funds")}
    odd = [(accounts[i]["id"], r) for i, r in results if (r.status, r.error_code) not in allowed]
    check(not odd, lambda: "%s: responses other than 201 / 409 out_of_stock / insufficient_funds: %s"
          % (strategy, odd[:5]))
    poor_won = [accounts[i]["id"] for i, r in results if is_poor(i) and r.status == 201]
    check(not poor_won, lambda: "%s: accounts with balance %d < price %d bought: %s"
          % (strategy, PRICE - 1, PRICE, poor_won[:10]))
    rich_broke = [accounts[i]["id"] for i, r in results if not is_poor(i) and r.error_code == "insufficient_funds"]
    check(not rich_broke, lambda: "%s: solvent accounts got insufficient_funds: %s" % (strategy, rich_broke[:10]))

    stock = h.get("/v1/products/%d" % p["id"])["stock"]
    wins = [(accounts[i], r.json) for i, r in results if r.status == 201]
    check(stock >= 0 and len(wins) == STOCK - stock,
          lambda: "%s: %d x 201 but stock went %d -> %d (oversold %d)"
          % (strategy, len(wins), STOCK, stock, len(wins) - (STOCK - stock)))
    check(stock == 0 and len(wins) == STOCK,
          lambda: "%s: %d x 201, final stock %d: 400 solvent buyers should have bought all %d"
          % (strategy, len(wins), stock, STOCK))
    for a, o in wins:
        want = {"id": o.get("id"), "account_id": a["id"], "product_id": p["id"], "quantity": 1,
                "unit_price": PRICE, "discount": 0, "total": PRICE, "coupon_id": None}
        check(o == want and isinstance(o["id"], int), lambda: "%s: order body %s, want %s" % (strategy, o, want))
        spent[a["id"]] += PRICE
    rows = shoplib.sql_json("SELECT id, account_id, quantity, total FROM orders WHERE product_id = %d" % p["id"])
    by_id = collections.Counter(r["id"] for r in rows)
    acked = {o["id"]: (a["id"], o["total"]) for a, o in wins}
    check(len(acked) == len(wins), "%s: two 201s carried the same order id" % strategy)
    in_db = {r["id"]: (r["account_id"], r["total"]) for r in rows}
    check(in_db == acked and all(n == 1 for n in by_id.values()),
          lambda: "%s: orders in the database %s differ from the 201s %s"
          % (strategy, sorted(in_db.items())[:10], sorted(acked.items())[:10]))
    h.check_invariants(accounts=[a["id"] for a, _ in wins], products=[p["id"]], coupons=[], what=strategy)
    return strategy, len(accounts) / took, retries, took, dict(outcome)


if __name__ == "__main__":
    shoplib.main()
