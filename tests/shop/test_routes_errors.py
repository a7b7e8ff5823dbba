#!/usr/bin/env python3
"""test_routes_errors - every error the contract names, on every route,
against the real pgtx-shop binary: 400 (malformed JSON, hostile bodies,
wrong types, missing and unknown fields, bad strategies, bad framing), 401,
403, 404, 405 (with Allow), 413 (--max-body), 422 (invalid values, 64-bit
overflow).  After every error the test's rows are compared with a snapshot
taken before it (nothing may change) and the invariants are checked.

usage: PGTX_SHOP_BINARY=build/pgtx-shop python3 -m unittest test_routes_errors
       (from tests/shop), or python3 test_routes_errors.py PGTX_SHOP_BINARY
"""

import json
import os
import sys

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import shoplib  # noqa: E402
from routes_common import ADMIN, BIG, WRITE_METHODS, RoutesCase, raw_request  # noqa: E402
from shoplib import check, fail  # noqa: E402


class Errors(RoutesCase):
    def test_400_malformed_json(self):
        # 400 malformed_json
        T = self.T
        w = self.world()
        A, P = w.A, w.P
        dep_path, rst_path, clm_path = w.dep_path, w.rst_path, w.clm_path
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

    def test_hostile_bodies(self):
        # hostile bodies: a 4xx with an error body, never a 5xx, nothing changed
        T = self.T
        w = self.world()
        dep_path = w.dep_path
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

    def test_400_invalid_type(self):
        # 400 invalid_type (string, float, bool, null, array, object for ints; non-strings)
        T = self.T
        w = self.world()
        A, P, K = w.A, w.P, w.K
        dep_path, rst_path, clm_path = w.dep_path, w.rst_path, w.clm_path
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

    def test_400_missing_field(self):
        # 400 missing_field
        T = self.T
        w = self.world()
        A, P = w.A, w.P
        dep_path, rst_path, clm_path = w.dep_path, w.rst_path, w.clm_path
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

    def test_400_unknown_field(self):
        # 400 unknown_field
        T = self.T
        w = self.world()
        A, P = w.A, w.P
        dep_path, rst_path, clm_path = w.dep_path, w.rst_path, w.clm_path
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

    def test_400_invalid_strategy(self):
        # 400 invalid_strategy / unsafe_strategy_disabled on every write route
        T = self.T
        w = self.world()
        C, P = w.C, w.P
        dep_path, rst_path, clm_path = w.dep_path, w.rst_path, w.clm_path
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

    def test_401_unauthorized(self):
        # 401 unauthorized: no token, bad token, wrong scheme
        T = self.T
        w = self.world()
        A, B, C, P = w.A, w.B, w.C, w.P
        acc_path, dep_path, rst_path, clm_path = w.acc_path, w.dep_path, w.rst_path, w.clm_path
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

    def test_403_forbidden(self):
        # 403 forbidden: an account token on another account, and on admin routes
        T = self.T
        w = self.world()
        A, B, C, P = w.A, w.B, w.C, w.P
        rst_path, clm_path = w.rst_path, w.clm_path
        BO = T.order(B, P, 1)
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

    def test_404_not_found(self):
        # 404 not_found: unknown routes and unknown ids
        T = self.T
        w = self.world()
        A, P = w.A, w.P
        clm_path = w.clm_path
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
            T.soft(lambda: T.err("GET", path, status=404, code="not_found"), "GET " + path)
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

    def test_405_method_not_allowed(self):
        # 405 method_not_allowed with Allow
        T = self.T
        w = self.world()
        A, P, K = w.A, w.P, w.K
        acc_path, dep_path, rst_path, clm_path = w.acc_path, w.dep_path, w.rst_path, w.clm_path
        oid = T.order(A, P, 1)["id"]
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

    def test_422_invalid_value(self):
        # 422 invalid_value: negative, zero, empty, too long
        T = self.T
        w = self.world()
        A, P = w.A, w.P
        dep_path, rst_path = w.dep_path, w.rst_path
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

    def test_422_out_of_range(self):
        # 422 out_of_range: 64-bit overflow in values and results
        T = self.T
        w = self.world()
        A, P = w.A, w.P
        dep_path, rst_path, clm_path = w.dep_path, w.rst_path, w.clm_path
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

    def test_400_bad_framing(self):
        # 400 bad_request: duplicate Content-Length, Content-Length with chunked
        T = self.T
        w = self.world()
        A = w.A
        dep_path = w.dep_path
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
                r = shoplib.raw_exchange(self.srv.host, self.srv.port,
                                         raw_request("POST", dep_path, headers, payload))
            except (OSError, shoplib.http.client.HTTPException) as e:
                fail("%s: want 400 bad_request, the connection failed: %r" % (what, e))
            T.check_error(what, r, 400, "bad_request")
            check(T.state() == T.snap, "%s changed the database" % what)
        # a well-formed chunked body is fine
        before = T.get_account(A["id"])["balance"]
        r = shoplib.raw_exchange(self.srv.host, self.srv.port, raw_request(
            "POST", dep_path, [auth, "Content-Type: application/json", "Transfer-Encoding: chunked"],
            b"5\r\n" + body[:5] + b"\r\n%x\r\n" % (len(body) - 5) + body[5:] + b"\r\n0\r\n\r\n"))
        check(r.status == 200 and r.json and r.json.get("balance") == before + 1,
              lambda: "chunked deposit: want 200 balance %d, got %r" % (before + 1, r))
        T.snap = None


class BodyLimit(RoutesCase):
    def test_413_body_too_large(self):
        # 413 body_too_large (--max-body 1024)
        T = self.T
        w = self.world()
        A = w.A
        dep_path = w.dep_path
        small = self.start_server(extra=["--max-body", "1024"])
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


if __name__ == "__main__":
    shoplib.main()
