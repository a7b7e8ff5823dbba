#!/usr/bin/env python3
"""test_routes_accounts - POST /v1/accounts, GET /v1/accounts/{id} and
deposits against the real pgtx-shop binary: exact bodies, Pgtx-Retries on
every write, Unicode names, owner and admin tokens, and a balance that would
pass INT64_MAX refused (422 out_of_range) under every strategy.

usage: PGTX_SHOP_BINARY=build/pgtx-shop python3 -m unittest test_routes_accounts
       (from tests/shop), or python3 test_routes_accounts.py PGTX_SHOP_BINARY
"""

import os
import sys

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import shoplib  # noqa: E402
from routes_common import ACCOUNT_KEYS, RoutesCase  # noqa: E402
from shoplib import INT64_MAX, STRATEGIES, check  # noqa: E402


class Accounts(RoutesCase):
    def test_create_get_deposit(self):
        T = self.T
        A = T.account(1000)
        Z = T.account(0)  # a zero balance is allowed
        U = T.account(1, name=T.h.unique("Zo\u00eb \U0001F600 \u4e2d\"q\" \\ /"))  # Unicode and escapes round-trip
        check(T.get_account(U["id"])["name"] == U["name"], "a Unicode name changed on the way back")
        check(T.get_account(Z["id"])["balance"] == 0, "zero-balance account")
        got = T.get_account(A["id"])
        check(got == {k: A[k] for k in ACCOUNT_KEYS}, lambda: "GET account %s vs create %s" % (got, A))
        check(T.get_account(A["id"], token=A["token"]) == got, "owner GET differs from admin GET")
        T.deposit(A, 5)
        T.deposit(A, 7, token=A["token"])
        shoplib.log("accounts: ok (account version after 2 deposits: %d)" % T.get_account(A["id"])["version"])

    def test_deposit_past_int64_max(self):
        # balance + amount would overflow: 422 out_of_range, nothing changed
        T = self.T
        rich = T.account(INT64_MAX - 5)
        rp = "/v1/accounts/%d/deposits" % rich["id"]
        T.err("POST", rp, {"amount": 6}, status=422, code="out_of_range")
        T.err("POST", rp, {"amount": INT64_MAX}, status=422, code="out_of_range")
        for s in STRATEGIES:
            T.err("POST", rp, {"amount": 6}, headers={"Pgtx-Strategy": s}, status=422, code="out_of_range")
        T.deposit(rich, 5)
        check(T.get_account(rich["id"])["balance"] == INT64_MAX, "balance at INT64_MAX")
        T.err("POST", rp, {"amount": 1}, token=rich["token"], status=422, code="out_of_range")


if __name__ == "__main__":
    shoplib.main()
