#!/usr/bin/env python3
"""test_routes_products - POST /v1/products, GET /v1/products/{id} (any
token or none) and restock against the real pgtx-shop binary: exact bodies,
zero price and stock, and a stock that would pass INT64_MAX refused (422
out_of_range) under every strategy.

usage: PGTX_SHOP_BINARY=build/pgtx-shop python3 -m unittest test_routes_products
       (from tests/shop), or python3 test_routes_products.py PGTX_SHOP_BINARY
"""

import json
import os
import sys

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import shoplib  # noqa: E402
from routes_common import PRODUCT_KEYS, RoutesCase  # noqa: E402
from shoplib import INT64_MAX, STRATEGIES, check  # noqa: E402


class Products(RoutesCase):
    def test_create_get_restock(self):
        T = self.T
        A = T.account(1000)
        P = T.product(price=100, stock=10)
        check(T.get_product(P["id"]) == P, "GET product (no token) differs from create")
        check(T.get_product(P["id"], token=A["token"]) == P, "GET product (account token) differs")
        check(T.get_product(P["id"], token=T.h.admin_token) == P, "GET product (admin) differs")
        R = T.product(price=0, stock=0)  # zero price and stock are allowed
        r = T.ok("POST", "/v1/products/%d/restock" % R["id"], {"quantity": 4})
        check(r["stock"] == 4 and r["id"] == R["id"] and set(r) == PRODUCT_KEYS and r["version"] > R["version"],
              lambda: "restock: %s" % json.dumps(r))
        check(T.get_product(R["id"]) == r, "GET after restock differs")

    def test_restock_past_int64_max(self):
        # stock + restock would overflow
        T = self.T
        full = T.product(price=1, stock=INT64_MAX - 1)
        fp = "/v1/products/%d/restock" % full["id"]
        for s in (None,) + STRATEGIES:
            T.err("POST", fp, {"quantity": 2}, headers={"Pgtx-Strategy": s} if s else None, status=422,
                  code="out_of_range")
        r = T.ok("POST", fp, {"quantity": 1})
        check(r["stock"] == INT64_MAX, lambda: "restock to INT64_MAX: %s" % r)


if __name__ == "__main__":
    shoplib.main()
