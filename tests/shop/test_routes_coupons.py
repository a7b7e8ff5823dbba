#!/usr/bin/env python3
"""test_routes_coupons - POST /v1/coupons, GET /v1/coupons/{id} and claims
against the real pgtx-shop binary: exact bodies, claims by the owner and by
the admin, and 409 coupon_exhausted / coupon_already_claimed /
coupon_code_taken under every strategy, nothing changed after each.

usage: PGTX_SHOP_BINARY=build/pgtx-shop python3 -m unittest test_routes_coupons
       (from tests/shop), or python3 test_routes_coupons.py PGTX_SHOP_BINARY
"""

import json
import os
import sys

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import shoplib  # noqa: E402
from routes_common import RoutesCase  # noqa: E402
from shoplib import STRATEGIES, check  # noqa: E402


class Coupons(RoutesCase):
    def claim_two(self, w):
        """K claimed by A (own token) and by the admin for B: remaining 3."""
        T = self.T
        r = T.ok("POST", w.clm_path, {"account_id": w.A["id"]}, token=w.A["token"], status=201)
        check(r == {"coupon_id": w.K["id"], "account_id": w.A["id"]}, lambda: "claim (owner): %s" % json.dumps(r))
        r = T.ok("POST", w.clm_path, {"account_id": w.B["id"]}, status=201)
        check(r == {"coupon_id": w.K["id"], "account_id": w.B["id"]}, lambda: "claim (admin): %s" % json.dumps(r))
        check(T.get_coupon(w.K["id"])["remaining"] == 3, "remaining after 2 claims")

    def test_create_get_claim(self):
        T = self.T
        w = self.world()
        K = w.K
        check(T.get_coupon(K["id"]) == K, "GET coupon differs from create")
        check(T.get_coupon(K["id"], token=w.A["token"]) == K, "GET coupon (account token) differs")
        T.coupon(discount=0, quantity=0)  # zero discount and quantity are allowed
        self.claim_two(w)

    def test_exhausted_already_claimed_code_taken(self):
        T = self.T
        w = self.world()
        A, B, K = w.A, w.B, w.K
        self.claim_two(w)
        one = T.coupon(discount=1, quantity=1)
        T.ok("POST", "/v1/coupons/%d/claims" % one["id"], {"account_id": A["id"]}, status=201)
        for s in (None,) + STRATEGIES:
            T.err("POST", "/v1/coupons/%d/claims" % one["id"], {"account_id": B["id"]}, token=B["token"],
                  headers={"Pgtx-Strategy": s} if s else None, status=409, code="coupon_exhausted")
        none = T.coupon(discount=1, quantity=0)
        T.err("POST", "/v1/coupons/%d/claims" % none["id"], {"account_id": A["id"]}, status=409,
              code="coupon_exhausted")
        for s in (None,) + STRATEGIES:
            T.err("POST", w.clm_path, {"account_id": A["id"]}, token=A["token"],
                  headers={"Pgtx-Strategy": s} if s else None, status=409, code="coupon_already_claimed")
        check(T.get_coupon(K["id"])["remaining"] == 3, "remaining after refused claims")
        T.err("POST", "/v1/coupons", {"code": K["code"], "discount": 1, "quantity": 1}, status=409,
              code="coupon_code_taken")


if __name__ == "__main__":
    shoplib.main()
