#!/usr/bin/env python3
"""test_http_strict - pgtx-shop refuses requests whose framing a proxy in
front could read differently (request smuggling), and answers a too-large
body with a 413 the client can read.

1. Header sections RFC 9110/9112 refuse: a space or a tab before the colon
   (`Content-Length : N`), a control character in a value (SOH, DEL, a bare
   CR), two Authorization headers.  Each request carries a smuggled deposit
   after it, framed as its body by the lenient reading: the answer is 400
   `bad_request`, it is the only answer, the server closes the connection,
   and the balances (read with psql) are unchanged: the smuggled deposit
   never ran.
2. A NUL byte in a JSON body (`{"amount": 1<NUL>}`): 400 `malformed_json`,
   nothing changed.
3. A 10 MB body under the 64 KiB default limit, with Content-Length and
   chunked, sent by http.client (which writes the whole body before it
   reads): the client reads 413 `body_too_large` with Connection: close,
   nothing changed.  A declared body past the drain bound (16 MiB over the
   limit) is answered 413 at once, before any of it is sent.
4. Control: the same requests written correctly run, so the checks above
   fail for the right reason.

What libmicrohttpd 0.9.75 parses before the application sees it (a bare LF
ending a header line or a chunk line, a NUL inside a header value) cannot
be refused through its API; section 5 logs how the server treats them today
without asserting (see docs/API.md, Limits).

Loopback only; every socket has a deadline; the server is stopped at the end.
"""

import http.client
import socket
import time
import types

import shoplib
from shoplib import check, fail

SLOW = shoplib.SLOW
READ_DEADLINE = 20.0 * SLOW   # until the server closes the connection
BIG = 10 * 1000 * 1000       # bytes, well within the 16 MiB drain bound


def parse_responses(data):
    """Every complete response in data, in order (Content-Length framed)."""
    out = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if not sep:
            break
        lines = head.decode("latin-1").split("\r\n")
        try:
            status = int(lines[0].split(" ")[1])
        except (IndexError, ValueError):
            fail("not an HTTP status line: %r" % lines[0])
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        n = int(headers.get("content-length", "0"))
        out.append(shoplib.Response(status, headers, rest[:n]))
        data = rest[n:]
    return out


def exchange(addr, data, stop_after=None):
    """Sends data on a fresh connection and reads until the server closes it,
    stop_after responses are in, or the deadline passes.  Returns
    (responses, closed_by_server)."""
    s = socket.create_connection(addr, timeout=READ_DEADLINE)
    got, closed = b"", False
    deadline = time.monotonic() + READ_DEADLINE
    try:
        s.sendall(data)
        while time.monotonic() < deadline:
            s.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                b = s.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                closed = True
                break
            if not b:
                closed = True
                break
            got += b
            if stop_after and len(parse_responses(got)) >= stop_after:
                break
    finally:
        s.close()
    return parse_responses(got), closed


def request_bytes(method, path, headers, body=b"", eol=b"\r\n"):
    lines = [("%s %s HTTP/1.1" % (method, path)).encode(), b"Host: 127.0.0.1"] + headers
    return eol.join(lines) + eol + eol + body


def make_env(tc):
    """Two accounts of the test's own, the requests and the checks its
    cases share."""
    h, srv = tc.h, tc.srv
    addr = (srv.host, srv.port)
    outer = h.create_account(100)
    victim = h.create_account(100)
    ids = [outer["id"], victim["id"]]
    auth = ("Authorization: Bearer %s" % h.admin_token).encode()
    json_type = b"Content-Type: application/json"
    outer_path = "/v1/accounts/%d/deposits" % outer["id"]
    one = b'{"amount": 1}'
    # What a lenient reading runs as a second request: a deposit of 1000.
    smuggled = request_bytes("POST", "/v1/accounts/%d/deposits" % victim["id"],
                             [auth, json_type, b"Content-Length: %d" % len(one)], one)

    def soft(name, fn):
        """One case, as a subtest: a failure is recorded and the next case
        still runs."""
        with tc.subTest(name):
            fn()

    def balances():
        rows = shoplib.sql_json("SELECT id, balance FROM account WHERE id IN (%d, %d)" % tuple(ids))
        return {r["id"]: r["balance"] for r in rows}

    def refused(name, data, code="bad_request"):
        soft(name, lambda: refused_case(name, data, code))

    def refused_case(name, data, code):
        before = balances()
        t0 = time.monotonic()
        rs, closed = exchange(addr, data)
        took = time.monotonic() - t0
        check(len(rs) >= 1, "%s: no answer (closed=%s)" % (name, closed))
        r = shoplib.check_openapi("POST", outer_path, rs[0])
        check(r.status == 400 and r.error_code == code,
              lambda: "%s: want 400 %s, got %r" % (name, code, r))
        check(len(rs) == 1, lambda: "%s: %d answers, the bytes after it ran: %r" % (name, len(rs), rs[1:]))
        check(closed, "%s: the connection was left open after the 400" % name)
        check(r.headers.get("connection", "").lower() == "close",
              lambda: "%s: no Connection: close on the 400: %r" % (name, r.headers))
        after = balances()
        check(after == before, "%s: balances changed %r -> %r" % (name, before, after))
        shoplib.log("%-34s 400 %s, closed, balances unchanged (%.3f s)" % (name, code, took))

    def outer_request(extra, body=b""):
        return request_bytes("POST", outer_path, [auth, json_type] + extra, body)

    def nul_in_body():
        nul_body = b'{"amount": 1\x00}'
        before = balances()
        rs, _ = exchange(addr, outer_request([b"Content-Length: %d" % len(nul_body)], nul_body), stop_after=1)
        check(len(rs) == 1, lambda: "NUL in the body: want one answer, got %r" % rs)
        r = shoplib.check_openapi("POST", outer_path, rs[0])
        check(r.status == 400 and r.error_code == "malformed_json",
              lambda: "NUL in the body: want 400 malformed_json, got %r" % r)
        check(balances() == before, "NUL in the body: balances changed")
        shoplib.log("NUL in the JSON body: 400 malformed_json (%s), balances unchanged" % r.json["error"]["message"])

    big = b'{"amount": 1' + b" " * (BIG - len(one)) + b"}"

    def too_large(name, **kw):
        before = balances()
        c = http.client.HTTPConnection(srv.host, srv.port, timeout=READ_DEADLINE)
        t0 = time.monotonic()
        try:
            c.request("POST", outer_path, headers={"Authorization": "Bearer " + h.admin_token,
                                                   "Content-Type": "application/json"}, **kw)
            resp = c.getresponse()
            r = shoplib.Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
        except (OSError, http.client.HTTPException) as e:
            fail("%s: want to read a 413, the connection failed: %r" % (name, e))
        finally:
            c.close()
        took = time.monotonic() - t0
        shoplib.check_openapi("POST", outer_path, r)
        check(r.status == 413 and r.error_code == "body_too_large",
              lambda: "%s: want 413 body_too_large, got %r" % (name, r))
        check(r.headers.get("connection", "").lower() == "close", "%s: no Connection: close" % name)
        check(balances() == before, "%s: balances changed" % name)
        shoplib.log("%-34s 413 body_too_large read by http.client in %.3f s" % (name, took))

    return types.SimpleNamespace(**locals())


class HttpStrict(shoplib.ShopTestCase):
    """One server; each method has two accounts of its own (make_env)."""

    def test_0_control_pair_runs_both(self):
        e = make_env(self)
        # correctly written, the same bytes run both requests
        before = e.balances()
        rs, _ = exchange(e.addr, e.outer_request([b"Content-Length: %d" % len(e.one)], e.one) + e.smuggled,
                         stop_after=2)
        check([r.status for r in rs] == [200, 200], lambda: "control: want two 200s, got %r" % rs)
        after = e.balances()
        check(after == {i: before[i] + 1 for i in e.ids}, "control: balances %r -> %r" % (before, after))
        shoplib.log("control: a well-formed pair of requests runs both")
        self.h.check_invariants(what="after the strict HTTP checks")

    def test_1_refused_header_sections(self):
        e = make_env(self)
        cl, one = len(e.smuggled), e.one
        e.refused("space before the colon", e.outer_request([b"Content-Length : %d" % cl], e.smuggled))
        e.refused("tab before the colon", e.outer_request([b"Content-Length\t: %d" % cl], e.smuggled))
        for what, value in (("SOH", b"a\x01b"), ("DEL", b"a\x7fb"), ("bare CR", b"a\rb")):
            e.refused("%s in a header value" % what,
                      e.outer_request([b"X-Note: " + value, b"Content-Length: %d" % len(one)], one + e.smuggled))
        e.refused("two Authorization headers",
                  e.outer_request([b"Authorization: Bearer not-the-token", b"Content-Length: %d" % len(one)],
                                  one + e.smuggled))
        self.h.check_invariants(what="after the strict HTTP checks")

    def test_2_nul_in_json_body(self):
        make_env(self).nul_in_body()
        self.h.check_invariants(what="after the strict HTTP checks")

    def test_3_too_large_body_read_by_client(self):
        e = make_env(self)
        e.soft("10 MB body", lambda: e.too_large("10 MB body with Content-Length", body=e.big))
        e.soft("10 MB chunked", lambda: e.too_large(
            "10 MB chunked body", body=iter([e.big[i:i + 65536] for i in range(0, len(e.big), 65536)]),
            encode_chunked=True))
        self.h.check_invariants(what="after the strict HTTP checks")

    def test_4_declared_32mib_headers_only(self):
        e = make_env(self)
        # past the drain bound: answered from the headers alone
        rs, closed = exchange(e.addr, e.outer_request([b"Content-Length: %d" % (32 * 1024 * 1024)]))
        check(len(rs) == 1 and rs[0].status == 413 and rs[0].error_code == "body_too_large" and closed,
              lambda: "32 MiB declared, nothing sent: want 413 and close, got %r closed=%s" % (rs, closed))
        shoplib.check_openapi("POST", e.outer_path, rs[0])
        shoplib.log("32 MiB declared, headers only: 413 at once, closed")
        self.h.check_invariants(what="after the strict HTTP checks")

    def test_5_known_gaps_logged(self):
        e = make_env(self)
        one, length = e.one, b"Content-Length: %d" % len(e.one)
        # not refused by libmicrohttpd 0.9.75 (logged, not asserted)
        gaps = (
            ("bare LF line endings", request_bytes("POST", e.outer_path, [e.auth, e.json_type, length],
                                                   one, eol=b"\n") + e.smuggled),
            ("LF-only chunk lines", e.outer_request([b"Transfer-Encoding: chunked"],
                                                    b"%x\n%s\n0\n\n" % (len(one), one) + e.smuggled)),
            ("NUL in a header value", e.outer_request([b"X-Note: a\x00b", length], one + e.smuggled)),
        )
        for name, data in gaps:
            before = e.balances()
            rs, closed = exchange(e.addr, data, stop_after=2)
            after = e.balances()
            shoplib.log("known gap, %-24s answers %s, closed=%s, balance deltas %s" % (
                name, [r.status for r in rs], closed, [after[i] - before[i] for i in e.ids]))
        self.h.check_invariants(what="after the strict HTTP checks")


if __name__ == "__main__":
    shoplib.main()
