"""routes_common - what the test_routes_*.py files share: the Routes
checker (exact bodies of the happy paths, error bodies, "nothing changed"
after every error, the invariants) and RoutesCase, their fixture.

Not a test file itself.
"""

import json
import types

import shoplib
from shoplib import check, fail

ADMIN = object()  # "use the admin token"
ACCOUNT_KEYS = {"id", "name", "balance", "version"}
PRODUCT_KEYS = {"id", "name", "price", "stock", "version"}
COUPON_KEYS = {"id", "code", "discount", "quantity", "remaining"}
ORDER_KEYS = {"id", "account_id", "product_id", "quantity", "unit_price", "discount", "total", "coupon_id"}
WRITE_METHODS = ("POST", "PUT", "PATCH", "DELETE")
BIG = "99999999999999999999"  # > 2^64


def is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def describe(method, path, body=None, raw=None, headers=None, token=None):
    parts = [method, path]
    if raw is not None:
        parts.append("raw=%r" % (raw[:120],))
    elif body is not None:
        parts.append(json.dumps(body)[:200])
    if headers:
        parts.append("headers=%r" % headers)
    if token is None:
        parts.append("(no token)")
    return " ".join(parts)


class Routes:
    def __init__(self, tc):
        self.tc = tc
        self.h = tc.h
        self.c = tc.h.client()
        self.snap = None
        self.cases = 0
        self.errors_checked = 0
        self.writes_with_retries = 0
        self.mine = {"accounts": set(), "products": set(), "coupons": set()}  # this test's entities

    # ---- plumbing
    def tok(self, token):
        return self.h.admin_token if token is ADMIN else token

    def soft(self, fn, what=""):
        """Runs one check as a subtest: a failure is recorded and the test
        goes on."""
        with self.tc.subTest(what or "soft check"):
            try:
                fn()
            except shoplib.TestFailure:
                self.snap = None
                raise

    def request(self, method, path, body=None, token=ADMIN, headers=None, raw=None, c=None):
        c = c or self.c
        self.cases += 1
        return c.request(method, path, body=body, token=self.tok(token), headers=headers, raw=raw)

    def ok(self, method, path, body=None, token=ADMIN, status=200, headers=None, raw=None, c=None):
        what = describe(method, path, body, raw, headers, self.tok(token))
        r = self.request(method, path, body, token, headers, raw, c)
        self.snap = None
        check(r.status == status, lambda: "%s: want %d, got %r" % (what, status, r))
        check(r.headers.get("content-type", "").startswith("application/json"),
              lambda: "%s: Content-Type %r, want application/json" % (what, r.headers.get("content-type")))
        check(r.json is not None, lambda: "%s: body is not JSON: %r" % (what, r.body[:200]))
        if method == "POST":
            check(is_int(r.retries) and r.retries >= 0,
                  lambda: "%s: Pgtx-Retries header %r, want an integer >= 0" % (what, r.headers.get("pgtx-retries")))
            self.writes_with_retries += 1
        return r.json

    def state(self):
        snap, bad = self.h.snapshot_and_invariants()
        if bad:
            fail("invariants broken: %s" % "; ".join("%s: %s" % (n, json.dumps(rows)[:600]) for n, rows in bad))
        return snap

    def err(self, method, path, body=None, token=ADMIN, status=400, code=None, codes=None,
            headers=None, raw=None, c=None, allow=None):
        """An error case: status and code as given, a well-formed error body,
        and nothing changed in this test's rows."""
        if self.snap is None:
            self.snap = self.state()
        what = describe(method, path, body, raw, headers, self.tok(token))
        r = self.request(method, path, body, token, headers, raw, c)
        self.check_error(what, r, status, code, codes, allow)
        after = self.state()
        if after != self.snap:
            before, self.snap = self.snap, after
            fail("%s -> %d, but the database changed:\n  before %s\n  after  %s"
                 % (what, r.status, json.dumps(before)[:1500], json.dumps(after)[:1500]))
        self.errors_checked += 1
        return r

    def check_error(self, what, r, status, code=None, codes=None, allow=None):
        want = set(codes) if codes else {code}
        statuses = status if isinstance(status, (set, frozenset)) else {status}
        check(r.status in statuses and r.error_code in want,
              lambda: "%s: want %s %s, got %r" % (what, "/".join(map(str, sorted(statuses))),
                                                  "/".join(sorted(want)), r))
        check(r.headers.get("content-type", "").startswith("application/json"),
              lambda: "%s: error Content-Type %r" % (what, r.headers.get("content-type")))
        msg = r.json["error"].get("message")
        check(isinstance(msg, str) and msg.strip(),
              lambda: "%s: error.message missing or empty: %r" % (what, r))
        if allow is not None:
            got = r.headers.get("allow")
            check(got is not None, lambda: "%s: 405 without an Allow header" % what)
            methods = {m.strip().upper() for m in got.split(",")}
            check(set(allow) <= methods and method_of(what) not in methods,
                  lambda: "%s: Allow %r, want %s (and not %s)" % (what, got, ", ".join(allow), method_of(what)))

    def unchanged_by(self, what, fn):
        """fn() must leave this test's rows exactly as they were."""
        before = self.state()
        out = fn()
        after = self.state()
        check(after == before, lambda: "%s changed the database:\n  before %s\n  after  %s"
              % (what, json.dumps(before)[:1500], json.dumps(after)[:1500]))
        self.snap = after
        return out

    # ---- entities through the API (checked)
    def account(self, balance=1000, name=None, strategy=None):
        name = name or self.h.unique("acct")
        body = {"name": name, "balance": balance}
        hdr = {"Pgtx-Strategy": strategy} if strategy else None
        a = self.ok("POST", "/v1/accounts", body, status=201, headers=hdr)
        check(set(a) == ACCOUNT_KEYS | {"token"}, lambda: "POST /v1/accounts: keys %s" % sorted(a))
        check(is_int(a["id"]) and a["id"] > 0 and a["name"] == name and a["balance"] == balance
              and is_int(a["version"]) and isinstance(a["token"], str) and len(a["token"]) >= 16,
              lambda: "POST /v1/accounts %s: body %s" % (json.dumps(body), json.dumps(a)))
        self.h.accounts.add(a["id"])
        self.mine["accounts"].add(a["id"])
        return a

    def product(self, price=100, stock=10, name=None, strategy=None):
        name = name or self.h.unique("prod")
        body = {"name": name, "price": price, "stock": stock}
        hdr = {"Pgtx-Strategy": strategy} if strategy else None
        p = self.ok("POST", "/v1/products", body, status=201, headers=hdr)
        check(set(p) == PRODUCT_KEYS, lambda: "POST /v1/products: keys %s" % sorted(p))
        check(is_int(p["id"]) and p["name"] == name and p["price"] == price and p["stock"] == stock
              and is_int(p["version"]), lambda: "POST /v1/products %s: body %s" % (json.dumps(body), json.dumps(p)))
        self.h.products.add(p["id"])
        self.mine["products"].add(p["id"])
        return p

    def coupon(self, discount=30, quantity=5, code=None, strategy=None):
        code = code or self.h.unique("coupon")
        body = {"code": code, "discount": discount, "quantity": quantity}
        hdr = {"Pgtx-Strategy": strategy} if strategy else None
        k = self.ok("POST", "/v1/coupons", body, status=201, headers=hdr)
        want = {"id": k.get("id"), "code": code, "discount": discount, "quantity": quantity, "remaining": quantity}
        check(k == want and is_int(k["id"]), lambda: "POST /v1/coupons %s: body %s" % (json.dumps(body), json.dumps(k)))
        self.h.coupons.add(k["id"])
        self.mine["coupons"].add(k["id"])
        return k

    def get_account(self, aid, token=ADMIN):
        a = self.ok("GET", "/v1/accounts/%d" % aid, token=token)
        check(set(a) == ACCOUNT_KEYS and a["id"] == aid, lambda: "GET /v1/accounts/%d: %s" % (aid, json.dumps(a)))
        return a

    def get_product(self, pid, token=None):
        p = self.ok("GET", "/v1/products/%d" % pid, token=token)
        check(set(p) == PRODUCT_KEYS and p["id"] == pid, lambda: "GET /v1/products/%d: %s" % (pid, json.dumps(p)))
        return p

    def get_coupon(self, kid, token=None):
        k = self.ok("GET", "/v1/coupons/%d" % kid, token=token)
        check(set(k) == COUPON_KEYS and k["id"] == kid, lambda: "GET /v1/coupons/%d: %s" % (kid, json.dumps(k)))
        return k

    def deposit(self, acct, amount, token=ADMIN, strategy=None):
        before = self.get_account(acct["id"])
        hdr = {"Pgtx-Strategy": strategy} if strategy else None
        path = "/v1/accounts/%d/deposits" % acct["id"]
        a = self.ok("POST", path, {"amount": amount}, token=token, headers=hdr)
        check(set(a) == ACCOUNT_KEYS and a["id"] == acct["id"] and a["name"] == before["name"]
              and a["balance"] == before["balance"] + amount and a["version"] > before["version"],
              lambda: "POST %s {amount:%d} (%s): %s, before %s" % (path, amount, strategy, json.dumps(a),
                                                                  json.dumps(before)))
        check(self.get_account(acct["id"]) == a, lambda: "GET after deposit differs from the deposit's body")
        return a

    def order(self, acct, prod, quantity=1, coupon=None, token=ADMIN, strategy=None, key=None, status=201,
              discount=0):
        body = {"account_id": acct["id"], "product_id": prod["id"], "quantity": quantity}
        if coupon is not None:
            body["coupon_id"] = coupon["id"]
        hdr = {}
        if strategy:
            hdr["Pgtx-Strategy"] = strategy
        if key:
            hdr["Idempotency-Key"] = key
        o = self.ok("POST", "/v1/orders", body, token=token, headers=hdr or None, status=status)
        total = max(0, prod["price"] * quantity - discount)
        want = {"id": o.get("id"), "account_id": acct["id"], "product_id": prod["id"], "quantity": quantity,
                "unit_price": prod["price"], "discount": discount, "total": total,
                "coupon_id": coupon["id"] if coupon else None}
        check(o == want and is_int(o["id"]), lambda: "POST /v1/orders %s: got %s, want %s"
              % (json.dumps(body), json.dumps(o), json.dumps(want)))
        return o


def method_of(what):
    return what.split(" ", 1)[0]


def raw_request(method, path, headers, body=b""):
    lines = ["%s %s HTTP/1.1" % (method, path), "Host: 127.0.0.1"] + headers
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body




class RoutesCase(shoplib.ShopTestCase):
    """One server per class; per test a fresh Routes (its own counters and
    entities), the invariants over that test's entities checked at its end,
    and the counts printed per class."""

    totals = None

    @classmethod
    def setUpServers(cls):
        cls.totals = {"requests": 0, "errors": 0, "writes": 0}

    def setUp(self):
        super().setUp()
        self.T = Routes(self)

    def tearDown(self):
        T = self.T
        self.totals["requests"] += T.cases
        self.totals["errors"] += T.errors_checked
        self.totals["writes"] += T.writes_with_retries
        shoplib.log("  %-60s %4d requests" % (self.id().split(".", 1)[-1], T.cases))
        super().tearDown()
        if any(T.mine.values()):
            self.h.check_invariants(what="end of " + self.id(), **T.mine)

    @classmethod
    def tearDownClass(cls):
        if cls.totals is not None:
            shoplib.log("%s: %d requests, %d error cases each checked for no change, %d writes with Pgtx-Retries"
                        % (cls.h.test_name, cls.totals["requests"], cls.totals["errors"], cls.totals["writes"]))
        super().tearDownClass()

    def world(self):
        """Fresh entities for a test: accounts A, B, C (1000 each), product P
        (price 100, stock 10), coupon K (discount 30, quantity 5), and the
        paths the error cases post to."""
        T = self.T
        w = types.SimpleNamespace(A=T.account(1000), B=T.account(1000), C=T.account(1000),
                                  P=T.product(price=100, stock=10), K=T.coupon(discount=30, quantity=5))
        w.acc_path = "/v1/accounts/%d" % w.A["id"]
        w.dep_path = w.acc_path + "/deposits"
        w.rst_path = "/v1/products/%d/restock" % w.P["id"]
        w.clm_path = "/v1/coupons/%d/claims" % w.K["id"]
        return w
