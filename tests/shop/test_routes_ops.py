#!/usr/bin/env python3
"""test_routes_ops - the service's own routes and behaviour against the real
pgtx-shop binary: the start-up lines (the printed curl command works),
/healthz (GET and HEAD), /metrics (text, pgtx_shop_ series, numbers),
keep-alive over errors, and 503 overloaded with Retry-After from a tiny
queue and pool (the balance counts exactly the 200s).

usage: PGTX_SHOP_BINARY=build/pgtx-shop python3 -m unittest test_routes_ops
       (from tests/shop), or python3 test_routes_ops.py PGTX_SHOP_BINARY
"""

import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
import threading

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import shoplib  # noqa: E402
from routes_common import RoutesCase, is_int  # noqa: E402
from shoplib import check, fail  # noqa: E402


class Ops(RoutesCase):
    def test_start_lines_and_curl(self):
        # server start: stdout lines, the quick-start curl line works
        h = self.h
        srv = self.srv
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

    def test_healthz_and_metrics(self):
        # healthz and metrics
        T = self.T
        P = T.product(price=100, stock=10)
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

    def test_keep_alive(self):
        # keep-alive: one connection, several requests (incl. errors)
        T = self.T
        srv = self.srv
        B = T.account(1000)
        P = T.product(price=100, stock=10)
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


class Overload(RoutesCase):
    def test_503_overloaded(self):
        # 503 overloaded: a tiny queue and pool under 40 concurrent deposits
        T = self.T
        busy = self.start_server(extra=["--threads", "2", "--queue", "1", "--pool-size", "1", "--max-overflow", "0",
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


if __name__ == "__main__":
    shoplib.main()
