#!/usr/bin/env python3
"""test_routes - every route of API.md against the real pgtx-shop binary.

Happy paths with exact bodies and statuses (and Pgtx-Retries on every
successful write), then every error the contract names: 400 (malformed JSON,
wrong types, missing and unknown fields, bad strategies, bad framing), 401,
403, 404, 405 (with Allow), 409 (each business code), 413, 422 (invalid
values, 64-bit overflow, idempotency key reuse).  After every error the
test's rows are compared with a snapshot taken before it (nothing may
change) and the invariants are checked.

usage: test_routes.py PGTX_SHOP_BINARY
"""

import concurrent.futures
import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import shoplib  # noqa: E402
from shoplib import INT64_MAX, STRATEGIES, check, fail  # noqa: E402

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
    def __init__(self, h):
        self.h = h
        self.c = h.client()
        self.snap = None
        self.cases = 0
        self.errors_checked = 0
        self.writes_with_retries = 0
        self.sections = []

    # ---- plumbing
    def tok(self, token):
        return self.h.admin_token if token is ADMIN else token

    @contextlib.contextmanager
    def section(self, name):
        """Failures inside a section are recorded and the test goes on."""
        n0, t0 = self.cases, time.monotonic()
        try:
            yield
            self.sections.append((name, self.cases - n0, "ok %.1fs" % (time.monotonic() - t0)))
        except shoplib.TestFailure as e:
            self.h.failures.append("[%s] %s" % (name, e))
            self.sections.append((name, self.cases - n0, "FAILED"))
            self.snap = None
        except (OSError, shoplib.http.client.HTTPException) as e:
            self.h.failures.append("[%s] connection error: %r" % (name, e))
            self.sections.append((name, self.cases - n0, "FAILED"))
            self.snap = None
            self.c.close()

    def soft(self, fn):
        """Runs one check; a failure is recorded and the section goes on."""
        try:
            fn()
        except shoplib.TestFailure as e:
            self.h.failures.append(str(e))
            self.snap = None

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
        return p

    def coupon(self, discount=30, quantity=5, code=None, strategy=None):
        code = code or self.h.unique("coupon")
        body = {"code": code, "discount": discount, "quantity": quantity}
        hdr = {"Pgtx-Strategy": strategy} if strategy else None
        k = self.ok("POST", "/v1/coupons", body, status=201, headers=hdr)
        want = {"id": k.get("id"), "code": code, "discount": discount, "quantity": quantity, "remaining": quantity}
        check(k == want and is_int(k["id"]), lambda: "POST /v1/coupons %s: body %s" % (json.dumps(body), json.dumps(k)))
        self.h.coupons.add(k["id"])
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


# ------------------------------------------------------------------ tests ---

def main(h):
    srv = h.start_server()
    T = Routes(h)
    A = B = P = K = None

    with T.section("server start: stdout lines, the quick-start curl line works"):
        lines = srv.wait_stdout(3)
        shoplib.log("stdout: %s" % " | ".join(lines[:3]))
        check(lines[1].startswith("admin token: "), lambda: "second stdout line %r, want 'admin token: ...'"
              % lines[1])
        check("curl" in lines[2], lambda: "third stdout line %r, want a curl command" % lines[2])
        if shutil.which("curl"):
            # the printed command, run as printed, with the token in the
            # environment variable it names (or given inline)
            cmd = lines[2].split(":", 1)[1].strip() if lines[2].startswith("try:") else lines[2]
            env = dict(os.environ, PGTX_ADMIN_TOKEN=h.admin_token)
            p = subprocess.run(["sh", "-c", cmd], env=env, capture_output=True, text=True, timeout=30)
            try:
                made = json.loads(p.stdout)
            except ValueError:
                made = None
            check(p.returncode == 0 and isinstance(made, dict) and is_int(made.get("id")),
                  lambda: "the printed curl line %r, run with PGTX_ADMIN_TOKEN set, gave exit %d and %r"
                  % (cmd, p.returncode, (p.stdout + p.stderr)[:300]))

    # ---- happy paths -------------------------------------------------------
    with T.section("accounts: create, get (admin and owner), deposit"):
        A = T.account(1000)
        B = T.account(1000)
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

    with T.section("products: create, get (anyone), restock"):
        P = T.product(price=100, stock=10)
        check(T.get_product(P["id"]) == P, "GET product (no token) differs from create")
        check(T.get_product(P["id"], token=A["token"]) == P, "GET product (account token) differs")
        check(T.get_product(P["id"], token=T.h.admin_token) == P, "GET product (admin) differs")
        R = T.product(price=0, stock=0)  # zero price and stock are allowed
        r = T.ok("POST", "/v1/products/%d/restock" % R["id"], {"quantity": 4})
        check(r["stock"] == 4 and r["id"] == R["id"] and set(r) == PRODUCT_KEYS and r["version"] > R["version"],
              lambda: "restock: %s" % json.dumps(r))
        check(T.get_product(R["id"]) == r, "GET after restock differs")

    with T.section("coupons: create, get (anyone), claim (owner and admin)"):
        K = T.coupon(discount=30, quantity=5)
        check(T.get_coupon(K["id"]) == K, "GET coupon differs from create")
        check(T.get_coupon(K["id"], token=A["token"]) == K, "GET coupon (account token) differs")
        T.coupon(discount=0, quantity=0)  # zero discount and quantity are allowed
        r = T.ok("POST", "/v1/coupons/%d/claims" % K["id"], {"account_id": A["id"]}, token=A["token"], status=201)
        check(r == {"coupon_id": K["id"], "account_id": A["id"]}, lambda: "claim (owner): %s" % json.dumps(r))
        r = T.ok("POST", "/v1/coupons/%d/claims" % K["id"], {"account_id": B["id"]}, status=201)
        check(r == {"coupon_id": K["id"], "account_id": B["id"]}, lambda: "claim (admin): %s" % json.dumps(r))
        check(T.get_coupon(K["id"])["remaining"] == 3, "remaining after 2 claims")

    orders_of_A = []
    with T.section("orders: place (owner/admin, coupon, quantity > 1), get, list"):
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
        # a discount above the price: total 0, allowed on a zero balance
        big = T.coupon(discount=500, quantity=1)
        T.ok("POST", "/v1/coupons/%d/claims" % big["id"], {"account_id": Z["id"]}, token=Z["token"], status=201)
        o = T.order(Z, P, 1, coupon=big, token=Z["token"], discount=500)
        check(o["total"] == 0 and T.get_account(Z["id"])["balance"] == 0, "total floors at 0")

    with T.section("every strategy on every write route"):
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
        T.h.check_invariants(what="after the strategy loop")

    with T.section("round trips: atomic writes in one, the others in as few as their reads allow"):
        def round_trips():
            text = T.request("GET", "/metrics", token=None).body.decode()
            return int(next(line.split()[-1] for line in text.splitlines()
                            if line.startswith("pgtx_shop_pool_round_trips_total ")))

        def trips_of(what, call):
            before = round_trips()
            call()
            return round_trips() - before

        p = T.product(price=1, stock=100)
        k = T.coupon(discount=0, quantity=100)
        # reads, then the write with COMMIT; optimistic checks its versions
        # before COMMIT
        for s, want in (("atomic", 1), ("lock", 2), ("serializable", 2), ("optimistic", 3)):
            a = T.account(1000)
            got = [trips_of("deposit", lambda: T.ok("POST", "/v1/accounts/%d/deposits" % a["id"],
                                                    {"amount": 1}, headers={"Pgtx-Strategy": s})),
                   trips_of("claim", lambda: T.ok("POST", "/v1/coupons/%d/claims" % k["id"],
                                                  {"account_id": a["id"]}, status=201,
                                                  headers={"Pgtx-Strategy": s})),
                   trips_of("order", lambda: T.order(a, p, 1, strategy=s)),
                   trips_of("order with key", lambda: T.order(a, p, 1, strategy=s, key=T.h.unique("rt")))]
            check(got == [want] * 4,
                  lambda: "round trips of deposit, claim, order, keyed order under %s: %r, want %d each"
                  % (s, got, want))
        T.h.check_invariants(what="after the round-trip counts")

    with T.section("healthz and metrics"):
        r = T.request("GET", "/healthz", token=None)
        check(r.status == 200, lambda: "GET /healthz: %r" % r)
        # HEAD is GET without the body, on the service's own routes too
        r = T.request("HEAD", "/healthz", token=None)
        check(r.status == 200 and not r.body, lambda: "HEAD /healthz: %r" % r)
        r = T.request("HEAD", "/v1/products/%d" % P["id"], token=None)
        check(r.status == 200 and not r.body, lambda: "HEAD /v1/products/{id}: %r" % r)
        r = T.request("GET", "/metrics", token=None)
        check(r.status == 200, lambda: "GET /metrics: %r" % r)
        check(r.headers.get("content-type", "").startswith("text/plain"),
              lambda: "GET /metrics Content-Type %r, want text/plain" % r.headers.get("content-type"))
        text = r.body.decode("utf-8", "replace")
        names = {line.split("{")[0].split(" ")[0] for line in text.splitlines()
                 if line and not line.startswith("#")}
        shop = sorted(n for n in names if n.startswith("pgtx_shop_"))
        check(shop, lambda: "GET /metrics has no pgtx_shop_ metric: %r" % text[:300])
        for line in text.splitlines():
            if line and not line.startswith("#"):
                value = line.rsplit(" ", 1)[-1]
                try:
                    float(value)
                except ValueError:
                    fail("GET /metrics: line %r does not end in a number" % line)
        shoplib.log("metrics: %d pgtx_shop_ series names, e.g. %s" % (len(shop), ", ".join(shop[:4])))

    with T.section("keep-alive: one connection, several requests (incl. errors)"):
        kc = shoplib.Client(srv.host, srv.port)
        seen = []
        for method, path, body, want in [
                ("GET", "/v1/products/%d" % P["id"], None, 200),
                ("POST", "/v1/accounts/%d/deposits" % B["id"], {"amount": 1}, 200),
                ("GET", "/v1/accounts/%d" % B["id"], None, 200),
                ("POST", "/v1/orders", {"account_id": B["id"], "product_id": P["id"], "quantity": 1000}, 409),
                ("GET", "/v1/accounts/%d" % (10**15), None, 404),
                ("GET", "/healthz", None, 200)]:
            r = T.request(method, path, body, c=kc)
            check(r.status == want, lambda: "keep-alive %s %s: want %d, got %r" % (method, path, want, r))
            check(kc.conn is not None and kc.conn.sock is not None,
                  lambda: "keep-alive: the server closed the connection after %s %s (%d)" % (method, path, r.status))
            seen.append(kc.conn.sock.getsockname())
        check(kc.connects == 1 and len(set(seen)) == 1, lambda: "keep-alive: %d connections for 6 requests"
              % kc.connects)
        kc.close()
        T.snap = None

    # ---- 400 ---------------------------------------------------------------
    acc_path = "/v1/accounts/%d" % A["id"]
    dep_path = acc_path + "/deposits"
    rst_path = "/v1/products/%d/restock" % P["id"]
    clm_path = "/v1/coupons/%d/claims" % K["id"]
    C = None
    with T.section("400 malformed_json"):
        for path, raw in [
                ("/v1/accounts", b'{"name": "x", "balance": 1'),
                ("/v1/accounts", b"{'name': 'x', 'balance': 1}"),
                ("/v1/accounts", b'{"name": "\xff\xfe", "balance": 1}'),  # not UTF-8
                (dep_path, b'{"amount":'),
                (dep_path, b"{amount: 1}"),
                (dep_path, b'{"amount": 1,}'),
                (dep_path, b'{"amount": 1} trailing'),
                (dep_path, b'{"amount": 1}{"amount": 1}'),
                (dep_path, b"not json at all"),
                (dep_path, b'{"amount": 01}'),
                (dep_path, b'{"amount": NaN}'),
                ("/v1/products", b'{"name": "x", "price": 1, "stock": }'),
                (rst_path, b"{"),
                ("/v1/coupons", b'{"code": "x" "discount": 1, "quantity": 1}'),
                (clm_path, b'["account_id", 1'),
                ("/v1/orders", b'{"account_id": %d, "product_id": %d, "quantity": 1' % (A["id"], P["id"]))]:
            T.err("POST", path, raw=raw, status=400, code="malformed_json")
        # not an object at all, or an empty body: malformed or wrong type
        for raw in [b"[]", b"1", b'"amount"', b"null", b"[{\"amount\": 1}]"]:
            T.err("POST", dep_path, raw=raw, status=400, codes={"malformed_json", "invalid_type"})
        T.err("POST", dep_path, raw=b"", status=400, codes={"malformed_json", "missing_field"})

    with T.section("hostile bodies: a 4xx with an error body, never a 5xx, nothing changed"):
        n = T.h.unique("h")
        for raw in [b'{"name": "a\\u0000b", "balance": 1}', b'{"name": "\\ud800", "balance": 1}',
                    b'{"name": "%s", "balance": 1, "name": "y"}' % n.encode(), b"[" * 5000 + b"]" * 5000,
                    b'{"name": {"a": ' * 3000 + b"1" + b"}" * 3000, b'\xef\xbb\xbf{"name": "x", "balance": 1}',
                    b'{"name": "%s", "balance": 1}\x00' % n.encode(), b"\x00" * 100,
                    ('{"name": "%s", "balance": 1e400}' % n).encode(), b'{"name": "x", "balance": -}']:
            T.err("POST", "/v1/accounts", raw=raw, status={400, 422},
                  codes={"malformed_json", "invalid_type", "invalid_value", "out_of_range"})
        T.soft(lambda: T.err("POST", dep_path, raw=b'{"amount": 1, "amount": 1000}', status=400,
                             codes={"malformed_json", "invalid_value"}))

    with T.section("400 invalid_type (string, float, bool, null, array, object for ints; non-strings)"):
        bad_ints = ['"1"', "1.0", "1.5", "1e2", "true", "false", "null", "[1]", '{"v": 1}']
        for v in bad_ints:
            T.err("POST", dep_path, raw=('{"amount": %s}' % v).encode(), status=400, code="invalid_type")
        for v in ['"5"', "5.0", "true", "null"]:
            T.err("POST", "/v1/accounts", raw=('{"name": "%s", "balance": %s}' % (T.h.unique("t"), v)).encode(),
                  status=400, code="invalid_type")
        for v in ["5", "null", "true", '["x"]']:
            T.err("POST", "/v1/accounts", raw=('{"name": %s, "balance": 5}' % v).encode(), status=400,
                  code="invalid_type")
        pn = T.h.unique("t")
        T.err("POST", "/v1/products", {"name": pn, "price": "100", "stock": 1}, status=400, code="invalid_type")
        T.err("POST", "/v1/products", {"name": pn, "price": 100, "stock": 1.0}, status=400, code="invalid_type")
        T.err("POST", "/v1/products", {"name": 7, "price": 100, "stock": 1}, status=400, code="invalid_type")
        T.err("POST", rst_path, {"quantity": False}, status=400, code="invalid_type")
        T.err("POST", rst_path, {"quantity": "2"}, status=400, code="invalid_type")
        cc = T.h.unique("t")
        T.err("POST", "/v1/coupons", {"code": 7, "discount": 1, "quantity": 1}, status=400, code="invalid_type")
        T.err("POST", "/v1/coupons", {"code": cc, "discount": "1", "quantity": 1}, status=400, code="invalid_type")
        T.err("POST", "/v1/coupons", {"code": cc, "discount": 1, "quantity": None}, status=400, code="invalid_type")
        T.err("POST", clm_path, {"account_id": str(A["id"])}, status=400, code="invalid_type")
        T.err("POST", clm_path, raw=b'{"account_id": %d.0}' % A["id"], status=400, code="invalid_type")
        base = {"account_id": A["id"], "product_id": P["id"], "quantity": 1}
        for field, v in [("account_id", str(A["id"])), ("product_id", float(P["id"])), ("quantity", True),
                         ("quantity", None), ("coupon_id", str(K["id"])), ("coupon_id", 1.5)]:
            T.err("POST", "/v1/orders", dict(base, **{field: v}), status=400, code="invalid_type")

    with T.section("400 missing_field"):
        n = T.h.unique("m")
        for body in [{}, {"name": n}, {"balance": 5}]:
            T.err("POST", "/v1/accounts", body, status=400, code="missing_field")
        T.err("POST", dep_path, {}, status=400, code="missing_field")
        for body in [{"price": 1, "stock": 1}, {"name": n, "stock": 1}, {"name": n, "price": 1}]:
            T.err("POST", "/v1/products", body, status=400, code="missing_field")
        T.err("POST", rst_path, {}, status=400, code="missing_field")
        for body in [{"discount": 1, "quantity": 1}, {"code": n, "quantity": 1}, {"code": n, "discount": 1}]:
            T.err("POST", "/v1/coupons", body, status=400, code="missing_field")
        T.err("POST", clm_path, {}, status=400, code="missing_field")
        base = {"account_id": A["id"], "product_id": P["id"], "quantity": 1}
        for field in base:
            T.err("POST", "/v1/orders", {k: v for k, v in base.items() if k != field}, status=400,
                  code="missing_field")

    with T.section("400 unknown_field"):
        n = T.h.unique("u")
        T.err("POST", "/v1/accounts", {"name": n, "balance": 1, "token": "x"}, status=400, code="unknown_field")
        T.err("POST", "/v1/accounts", {"name": n, "balance": 1, "id": 5}, status=400, code="unknown_field")
        T.err("POST", dep_path, {"amount": 1, "note": "x"}, status=400, code="unknown_field")
        T.err("POST", dep_path, {"Amount": 1}, status=400, codes={"unknown_field", "missing_field"})
        T.err("POST", "/v1/products", {"name": n, "price": 1, "stock": 1, "color": "red"}, status=400,
              code="unknown_field")
        T.err("POST", rst_path, {"quantity": 1, "price": 5}, status=400, code="unknown_field")
        T.err("POST", "/v1/coupons", {"code": n, "discount": 1, "quantity": 1, "remaining": 9}, status=400,
              code="unknown_field")
        T.err("POST", clm_path, {"account_id": A["id"], "x": 1}, status=400, code="unknown_field")
        T.err("POST", "/v1/orders", {"account_id": A["id"], "product_id": P["id"], "quantity": 1, "total": 0},
              status=400, code="unknown_field")

    with T.section("400 invalid_strategy / unsafe_strategy_disabled on every write route"):
        C = T.account(1000)
        writes = [
            ("/v1/accounts", {"name": T.h.unique("s"), "balance": 1}, ADMIN),
            (dep_path, {"amount": 1}, ADMIN),
            ("/v1/accounts/%d/deposits" % C["id"], {"amount": 1}, C["token"]),
            ("/v1/products", {"name": T.h.unique("s"), "price": 1, "stock": 1}, ADMIN),
            (rst_path, {"quantity": 1}, ADMIN),
            ("/v1/coupons", {"code": T.h.unique("s"), "discount": 1, "quantity": 1}, ADMIN),
            (clm_path, {"account_id": C["id"]}, C["token"]),
            ("/v1/orders", {"account_id": C["id"], "product_id": P["id"], "quantity": 1}, C["token"]),
        ]
        for path, body, tok in writes:
            for s in ["fast", "ATOMIC", "Atomic", "naive2", "atomic,lock"]:
                T.err("POST", path, body, token=tok, headers={"Pgtx-Strategy": s}, status=400,
                      code="invalid_strategy")
            T.err("POST", path, body, token=tok, headers={"Pgtx-Strategy": "naive"}, status=400,
                  code="unsafe_strategy_disabled")

    # ---- 401 / 403 -----------------------------------------------------------
    with T.section("401 unauthorized: no token, bad token, wrong scheme"):
        BO = T.order(B, P, 1)
        routes = [
            ("POST", "/v1/accounts", {"name": T.h.unique("x"), "balance": 1}),
            ("GET", acc_path, None),
            ("POST", dep_path, {"amount": 1}),
            ("POST", "/v1/products", {"name": T.h.unique("x"), "price": 1, "stock": 1}),
            ("POST", rst_path, {"quantity": 1}),
            ("POST", "/v1/coupons", {"code": T.h.unique("x"), "discount": 1, "quantity": 1}),
            ("POST", clm_path, {"account_id": C["id"]}),
            ("POST", "/v1/orders", {"account_id": A["id"], "product_id": P["id"], "quantity": 1}),
            ("GET", "/v1/orders/%d" % BO["id"], None),
            ("GET", "/v1/accounts/%d/orders" % A["id"], None),
        ]
        bad_auth = [None, "Bearer nope", "Bearer " + T.h.admin_token + "x", "Bearer " + A["token"][:-1],
                    "Basic " + T.h.admin_token, "Bearer", "Bearer ", "bearer-" + T.h.admin_token,
                    T.h.admin_token]
        for method, path, body in routes:
            for auth in bad_auth:
                hdr = {"Authorization": auth} if auth is not None else None
                T.err(method, path, body, token=None, headers=hdr, status=401, code="unauthorized")

    with T.section("403 forbidden: an account token on another account, and on admin routes"):
        tok = A["token"]
        bpath = "/v1/accounts/%d" % B["id"]
        T.err("GET", bpath, token=tok, status=403, code="forbidden")
        T.err("POST", bpath + "/deposits", {"amount": 1}, token=tok, status=403, code="forbidden")
        T.err("GET", bpath + "/orders", token=tok, status=403, code="forbidden")
        T.err("POST", clm_path, {"account_id": C["id"]}, token=tok, status=403, code="forbidden")
        T.err("POST", "/v1/orders", {"account_id": B["id"], "product_id": P["id"], "quantity": 1}, token=tok,
              status=403, code="forbidden")
        T.err("POST", "/v1/orders", {"account_id": B["id"], "product_id": P["id"], "quantity": 1}, token=tok,
              headers={"Idempotency-Key": T.h.unique("k")}, status=403, code="forbidden")
        # another account's order is as unknown as a missing one: a 403 would
        # tell that the id exists
        T.err("GET", "/v1/orders/%d" % BO["id"], token=tok, status=404, code="not_found")
        T.err("POST", "/v1/accounts", {"name": T.h.unique("x"), "balance": 1}, token=tok, status=403,
              code="forbidden")
        T.err("POST", "/v1/products", {"name": T.h.unique("x"), "price": 1, "stock": 1}, token=tok, status=403,
              code="forbidden")
        T.err("POST", rst_path, {"quantity": 1}, token=tok, status=403, code="forbidden")
        T.err("POST", "/v1/coupons", {"code": T.h.unique("x"), "discount": 1, "quantity": 1}, token=tok,
              status=403, code="forbidden")

    # ---- 404 / 405 -----------------------------------------------------------
    with T.section("404 not_found: unknown routes and unknown ids"):
        for path in ["/", "/v1", "/v2/accounts", "/v1/accountsx", "/v1/accounts/%d/foo" % A["id"],
                     "/v1/nope", "/v1/accounts/%d/deposits/1" % A["id"], "/healthz/x", "/metricsx"]:
            T.err("GET", path, status=404, code="not_found")
        T.err("POST", "/v1/nope", {"amount": 1}, status=404, code="not_found")
        gone = 10**15 + 7
        for path in ["/v1/accounts/%d" % gone, "/v1/products/%d" % gone, "/v1/coupons/%d" % gone,
                     "/v1/orders/%d" % gone, "/v1/accounts/%d/orders" % gone, "/v1/accounts/0",
                     "/v1/accounts/abc", "/v1/accounts/-1", "/v1/accounts/1.5", "/v1/accounts/" + BIG,
                     "/v1/products/0x10", "/v1/orders/+1"]:
            T.err("GET", path, status=404, code="not_found")
        # percent-escapes are not decoded into an id (a NUL would cut the path short)
        for path in ["/v1/accounts/%d%%00" % A["id"], "/v1/accounts/%d%%00x" % A["id"],
                     "/v1/accounts/%d%%2F" % A["id"], "/v1/accounts/%d%%20" % A["id"]]:
            T.soft(lambda: T.err("GET", path, status=404, code="not_found"))
        T.err("POST", "/v1/accounts/%d/deposits" % gone, {"amount": 1}, status=404, code="not_found")
        T.err("POST", "/v1/products/%d/restock" % gone, {"quantity": 1}, status=404, code="not_found")
        T.err("POST", "/v1/coupons/%d/claims" % gone, {"account_id": A["id"]}, status=404, code="not_found")
        T.err("POST", clm_path, {"account_id": gone}, status=404, code="not_found")
        T.err("POST", "/v1/orders", {"account_id": A["id"], "product_id": gone, "quantity": 1}, status=404,
              code="not_found")
        T.err("POST", "/v1/orders", {"account_id": gone, "product_id": P["id"], "quantity": 1}, status=404,
              code="not_found")
        # an unknown coupon in an order: 404, or 409 coupon_not_claimed (the contract allows reading it so)
        if T.snap is None:
            T.snap = T.state()
        body = {"account_id": A["id"], "product_id": P["id"], "quantity": 1, "coupon_id": gone}
        r = T.request("POST", "/v1/orders", body)
        check((r.status, r.error_code) in {(404, "not_found"), (409, "coupon_not_claimed")},
              lambda: "POST /v1/orders %s: want 404 not_found (or 409 coupon_not_claimed), got %r"
              % (json.dumps(body), r))
        check(T.state() == T.snap, "an order naming an unknown coupon changed the database")

    with T.section("405 method_not_allowed with Allow"):
        oid = orders_of_A[0]["id"] if orders_of_A else 1
        for method, path, allow in [
                ("DELETE", acc_path, ["GET"]), ("PUT", acc_path, ["GET"]), ("POST", acc_path, ["GET"]),
                ("GET", "/v1/accounts", ["POST"]), ("PUT", "/v1/accounts", ["POST"]),
                ("GET", dep_path, ["POST"]), ("DELETE", dep_path, ["POST"]),
                ("GET", "/v1/products", ["POST"]), ("PATCH", "/v1/products/%d" % P["id"], ["GET"]),
                ("DELETE", "/v1/products/%d" % P["id"], ["GET"]), ("GET", rst_path, ["POST"]),
                ("GET", "/v1/coupons", ["POST"]), ("DELETE", "/v1/coupons/%d" % K["id"], ["GET"]),
                ("GET", clm_path, ["POST"]),
                ("GET", "/v1/orders", ["POST"]), ("DELETE", "/v1/orders", ["POST"]),
                ("POST", "/v1/orders/%d" % oid, ["GET"]), ("DELETE", "/v1/orders/%d" % oid, ["GET"]),
                ("POST", acc_path + "/orders", ["GET"]),
                ("POST", "/healthz", ["GET"]), ("POST", "/metrics", ["GET"])]:
            body = {} if method in WRITE_METHODS else None
            T.err(method, path, body, status=405, code="method_not_allowed", allow=allow)

    # ---- 409 -----------------------------------------------------------------
    with T.section("409 out_of_stock"):
        q = T.product(price=10, stock=2)
        buyer = T.account(1000)

        def atomic_tx(outcome):
            text = T.request("GET", "/metrics", token=None).body.decode()
            key = 'pgtx_shop_transactions_total{strategy="atomic",outcome="%s"} ' % outcome
            return int(next(line.split()[-1] for line in text.splitlines() if line.startswith(key)))

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

    with T.section("409 insufficient_funds"):
        poor = T.account(99)
        for s in (None,) + STRATEGIES:
            T.err("POST", "/v1/orders", {"account_id": poor["id"], "product_id": P["id"], "quantity": 1},
                  token=poor["token"], headers={"Pgtx-Strategy": s} if s else None, status=409,
                  code="insufficient_funds")
        T.deposit(poor, 1)
        T.order(poor, P, 1, token=poor["token"])
        check(T.get_account(poor["id"])["balance"] == 0, "balance spent to exactly 0")

    with T.section("409 coupon_exhausted / coupon_already_claimed / coupon_code_taken"):
        one = T.coupon(discount=1, quantity=1)
        T.ok("POST", "/v1/coupons/%d/claims" % one["id"], {"account_id": A["id"]}, status=201)
        for s in (None,) + STRATEGIES:
            T.err("POST", "/v1/coupons/%d/claims" % one["id"], {"account_id": B["id"]}, token=B["token"],
                  headers={"Pgtx-Strategy": s} if s else None, status=409, code="coupon_exhausted")
        none = T.coupon(discount=1, quantity=0)
        T.err("POST", "/v1/coupons/%d/claims" % none["id"], {"account_id": A["id"]}, status=409,
              code="coupon_exhausted")
        for s in (None,) + STRATEGIES:
            T.err("POST", clm_path, {"account_id": A["id"]}, token=A["token"],
                  headers={"Pgtx-Strategy": s} if s else None, status=409, code="coupon_already_claimed")
        check(T.get_coupon(K["id"])["remaining"] == 3, "remaining after refused claims")
        T.err("POST", "/v1/coupons", {"code": K["code"], "discount": 1, "quantity": 1}, status=409,
              code="coupon_code_taken")

    with T.section("409 coupon_not_claimed / coupon_already_used"):
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
        # A used K on o3 above
        T.err("POST", "/v1/orders", {"account_id": A["id"], "product_id": P["id"], "quantity": 1,
                                     "coupon_id": K["id"]}, status=409, code="coupon_already_used")

    # ---- 422 -----------------------------------------------------------------
    with T.section("422 invalid_value: negative, zero, empty, too long"):
        n = T.h.unique("v")
        T.err("POST", "/v1/accounts", {"name": n, "balance": -1}, status=422, code="invalid_value")
        T.err("POST", "/v1/accounts", {"name": "", "balance": 1}, status=422, code="invalid_value")
        for amount in [0, -1, -1000]:
            T.err("POST", dep_path, {"amount": amount}, status=422, code="invalid_value")
        T.err("POST", "/v1/products", {"name": n, "price": -1, "stock": 1}, status=422, code="invalid_value")
        T.err("POST", "/v1/products", {"name": n, "price": 1, "stock": -1}, status=422, code="invalid_value")
        T.err("POST", "/v1/products", {"name": "", "price": 1, "stock": 1}, status=422, code="invalid_value")
        for qn in [0, -5]:
            T.err("POST", rst_path, {"quantity": qn}, status=422, code="invalid_value")
        T.err("POST", "/v1/coupons", {"code": n, "discount": -1, "quantity": 1}, status=422, code="invalid_value")
        T.err("POST", "/v1/coupons", {"code": n, "discount": 1, "quantity": -1}, status=422, code="invalid_value")
        T.err("POST", "/v1/coupons", {"code": "", "discount": 1, "quantity": 1}, status=422, code="invalid_value")
        for qn in [0, -1]:
            T.err("POST", "/v1/orders", {"account_id": A["id"], "product_id": P["id"], "quantity": qn},
                  status=422, code="invalid_value")
        T.err("POST", "/v1/orders", {"account_id": A["id"], "product_id": P["id"], "quantity": 1},
              headers={"Idempotency-Key": "k" * 1000}, status=422, code="invalid_value")

    with T.section("422 out_of_range: 64-bit overflow in values and results"):
        T.err("POST", dep_path, raw=('{"amount": %s}' % BIG).encode(), status=422, code="out_of_range")
        T.err("POST", dep_path, raw=('{"amount": -%s}' % BIG).encode(), status=422, code="out_of_range")
        T.err("POST", dep_path, raw=b'{"amount": 9223372036854775808}', status=422, code="out_of_range")
        T.err("POST", "/v1/accounts", raw=('{"name": "%s", "balance": %s}' % (T.h.unique("o"), BIG)).encode(),
              status=422, code="out_of_range")
        T.err("POST", "/v1/products",
              raw=('{"name": "%s", "price": 1, "stock": %s}' % (T.h.unique("o"), BIG)).encode(),
              status=422, code="out_of_range")
        T.err("POST", "/v1/coupons",
              raw=('{"code": "%s", "discount": %s, "quantity": 1}' % (T.h.unique("o"), BIG)).encode(),
              status=422, code="out_of_range")
        T.err("POST", rst_path, raw=('{"quantity": %s}' % BIG).encode(), status=422, code="out_of_range")
        T.err("POST", clm_path, raw=('{"account_id": %s}' % BIG).encode(), status=422, code="out_of_range")
        T.err("POST", "/v1/orders", raw=('{"account_id": %d, "product_id": %d, "quantity": %s}'
                                         % (A["id"], P["id"], BIG)).encode(), status=422, code="out_of_range")
        # balance + amount would overflow
        rich = T.account(INT64_MAX - 5)
        rp = "/v1/accounts/%d/deposits" % rich["id"]
        T.err("POST", rp, {"amount": 6}, status=422, code="out_of_range")
        T.err("POST", rp, {"amount": INT64_MAX}, status=422, code="out_of_range")
        for s in STRATEGIES:
            T.err("POST", rp, {"amount": 6}, headers={"Pgtx-Strategy": s}, status=422, code="out_of_range")
        T.deposit(rich, 5)
        check(T.get_account(rich["id"])["balance"] == INT64_MAX, "balance at INT64_MAX")
        T.err("POST", rp, {"amount": 1}, token=rich["token"], status=422, code="out_of_range")
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
        # stock + restock would overflow
        full = T.product(price=1, stock=INT64_MAX - 1)
        fp = "/v1/products/%d/restock" % full["id"]
        for s in (None,) + STRATEGIES:
            T.err("POST", fp, {"quantity": 2}, headers={"Pgtx-Strategy": s} if s else None, status=422,
                  code="out_of_range")
        r = T.ok("POST", fp, {"quantity": 1})
        check(r["stock"] == INT64_MAX, lambda: "restock to INT64_MAX: %s" % r)

    with T.section("idempotency: same key same body -> 200 same order; different body -> 422"):
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

    # ---- framing, body size ----------------------------------------------------
    with T.section("400 bad_request: duplicate Content-Length, Content-Length with chunked"):
        auth = "Authorization: Bearer " + T.h.admin_token
        body = b'{"amount": 1}'
        cases = [
            ("two equal Content-Length", [auth, "Content-Type: application/json",
                                          "Content-Length: %d" % len(body), "Content-Length: %d" % len(body)], body),
            ("two different Content-Length", [auth, "Content-Type: application/json",
                                              "Content-Length: %d" % len(body), "Content-Length: 5"], body),
            ("Content-Length with chunked", [auth, "Content-Type: application/json",
                                             "Content-Length: %d" % len(body), "Transfer-Encoding: chunked"],
             b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)),
            ("chunked with Content-Length", [auth, "Content-Type: application/json", "Transfer-Encoding: chunked",
                                             "Content-Length: %d" % len(body)],
             b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)),
        ]
        for name, headers, payload in cases:
            if T.snap is None:
                T.snap = T.state()
            what = "raw POST %s (%s)" % (dep_path, name)
            T.cases += 1
            try:
                r = shoplib.raw_exchange(srv.host, srv.port, raw_request("POST", dep_path, headers, payload))
            except (OSError, shoplib.http.client.HTTPException) as e:
                fail("%s: want 400 bad_request, the connection failed: %r" % (what, e))
            T.check_error(what, r, 400, "bad_request")
            check(T.state() == T.snap, "%s changed the database" % what)
        # a well-formed chunked body is fine
        before = T.get_account(A["id"])["balance"]
        r = shoplib.raw_exchange(srv.host, srv.port, raw_request(
            "POST", dep_path, [auth, "Content-Type: application/json", "Transfer-Encoding: chunked"],
            b"5\r\n" + body[:5] + b"\r\n%x\r\n" % (len(body) - 5) + body[5:] + b"\r\n0\r\n\r\n"))
        check(r.status == 200 and r.json and r.json.get("balance") == before + 1,
              lambda: "chunked deposit: want 200 balance %d, got %r" % (before + 1, r))
        T.snap = None

    with T.section("413 body_too_large (--max-body 1024)"):
        small = h.start_server(extra=["--max-body", "1024"])
        sc = shoplib.Client(small.host, small.port)
        n = T.h.unique("big")

        def padded(obj, size):
            s = json.dumps(obj).encode()
            return s[:-1] + b" " * (size - len(s)) + b"}"
        T.err("POST", "/v1/accounts", raw=padded({"name": n, "balance": 1}, 2000), status=413,
              code="body_too_large", c=sc)
        sc.close()
        T.err("POST", dep_path, raw=padded({"amount": 1}, 1025), status=413, code="body_too_large", c=sc)
        sc.close()
        T.err("POST", dep_path, raw=padded({"amount": 1}, 200000), status=413, code="body_too_large", c=sc)
        sc.close()
        # exactly at the limit is accepted
        before = T.get_account(A["id"])["balance"]
        r = T.request("POST", dep_path, raw=padded({"amount": 1}, 1024), c=sc)
        check(r.status == 200 and r.json.get("balance") == before + 1,
              lambda: "a 1024-byte body under --max-body 1024: want 200, got %r" % r)
        T.snap = None
        # a chunked body over the limit
        auth = "Authorization: Bearer " + T.h.admin_token
        payload = padded({"amount": 1}, 3000)
        T.snap = T.state()
        try:
            r = shoplib.raw_exchange(small.host, small.port, raw_request(
                "POST", dep_path, [auth, "Content-Type: application/json", "Transfer-Encoding: chunked"],
                b"".join(b"%x\r\n%s\r\n" % (len(payload[i:i + 500]), payload[i:i + 500])
                         for i in range(0, len(payload), 500)) + b"0\r\n\r\n"))
            T.check_error("chunked 3000-byte body", r, 413, "body_too_large")
        except (OSError, shoplib.http.client.HTTPException) as e:
            fail("chunked 3000-byte body under --max-body 1024: want 413, connection failed: %r" % e)
        check(T.state() == T.snap, "a too-large chunked body changed the database")
        sc.close()
        took = small.stop()
        shoplib.log("413: ok; the --max-body server stopped in %.2f s" % took)

    with T.section("503 overloaded: a tiny queue and pool under 40 concurrent deposits"):
        busy = h.start_server(extra=["--threads", "2", "--queue", "1", "--pool-size", "1", "--max-overflow", "0",
                                     "--pool-timeout-ms", "1"])
        acct = T.account(0)
        path = "/v1/accounts/%d/deposits" % acct["id"]
        n = 40
        barrier = threading.Barrier(n, timeout=60 * shoplib.SLOW)

        def hit(_):
            bc = shoplib.Client(busy.host, busy.port)
            try:
                barrier.wait()
                return bc.request("POST", path, {"amount": 1}, token=acct["token"])
            finally:
                bc.close()
        with concurrent.futures.ThreadPoolExecutor(n) as ex:
            results = list(ex.map(hit, range(n)))
        T.cases += n
        T.snap = None
        ok = [r for r in results if r.status == 200]
        over = [r for r in results if r.status == 503]
        odd = [r for r in results if r.status not in (200, 503)]
        check(not odd, lambda: "overload: statuses other than 200/503: %s" % odd[:3])
        for r in over:
            T.check_error("POST %s under overload" % path, r, 503, "overloaded")
            check(r.headers.get("retry-after") == "1", lambda: "503 overloaded with Retry-After %r, want 1"
                  % r.headers.get("retry-after"))
        bal = T.get_account(acct["id"])["balance"]
        rows = shoplib.sql_json("SELECT count(*) AS n FROM ledger WHERE account_id = %d AND kind = 'deposit'"
                                % acct["id"])[0]["n"]
        check(bal == len(ok) and rows == len(ok), lambda: "overload: %d x 200 but balance %d and %d deposit rows"
              % (len(ok), bal, rows))
        busy.stop()
        shoplib.log("overload: %d x 200, %d x 503 overloaded (Retry-After: 1); balance = the 200s" % (len(ok),
                                                                                                  len(over)))

    with T.section("final invariants"):
        n = T.h.check_invariants(what="end of test_routes")
        shoplib.log("invariants: ok over %d entities" % n)

    shoplib.log("sections:")
    for name, n, status in T.sections:
        shoplib.log("  %-9s %4d requests  %s" % (status, n, name))
    shoplib.log("test_routes: %d requests, %d error cases each checked for no change, %d writes with Pgtx-Retries"
                % (T.cases, T.errors_checked, T.writes_with_retries))


if __name__ == "__main__":
    shoplib.run("test_routes", main)
