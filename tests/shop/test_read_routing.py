#!/usr/bin/env python3
"""test_read_routing - --read-database and Pgtx-Commit-LSN on one server,
without the high-availability lab (test_ha.py has the real standbys).

- With --read-database naming the same server (a "standby" that is in fact
  the primary, never behind): writes answer with Pgtx-Commit-LSN, growing
  from write to write and at or past the server's position before the
  write; an order replayed under its Idempotency-Key gets a position past
  the first order's; GETs sent with it are served by the read database
  (Pgtx-Read-From: standby).
- With --read-database on a port where nothing listens: every GET is still
  answered, by the primary (Pgtx-Read-From: primary), and /metrics counts
  them as unavailable.
- Without --read-database: no Pgtx-Commit-LSN, no Pgtx-Read-From, and a
  good Pgtx-Commit-LSN on a GET changes nothing.
- Everywhere: a Pgtx-Commit-LSN that is not a WAL position is 400
  invalid_commit_lsn on a GET under /v1 and changes nothing; /openapi.yaml
  does not look at it.

usage: PGTX_SHOP_BINARY=build/pgtx-shop python3 -m unittest test_read_routing (from tests/shop)
"""

import os
import sys
import time

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import shoplib  # noqa: E402
from shoplib import check, log  # noqa: E402

BAD_LSNS = ["bogus", "", "1/", "/1", "1/2/3", "123456789/0", "0x1/0", "-1/0", "0/1 0"]


def lsn(text):
    hi, lo = text.split("/")
    return int(hi, 16) << 32 | int(lo, 16)


def same_server():
    """The test database as an explicit connection string: --read-database
    takes no "" (libpq's PG* variables)."""
    if shoplib.DSN:
        return shoplib.DSN
    keys = {"PGHOST": "host", "PGPORT": "port", "PGDATABASE": "dbname", "PGUSER": "user"}
    return " ".join("%s=%s" % (k, shoplib.conninfo_quote(os.environ[e]))
                    for e, k in keys.items() if os.environ.get(e))


def server_position():
    return lsn(shoplib.psql("SELECT pg_current_wal_insert_lsn();")[0])


class ReadDatabaseIsTheSameServer(shoplib.ShopTestCase):
    @classmethod
    def setUpClass(cls):
        cls.SERVER_EXTRA = ("--read-database", same_server())
        super().setUpClass()

    def test_writes_carry_their_position_and_reads_use_it(self):
        h, c = self.h, self.client()
        acct = self.account(1000)
        before = server_position()
        r = c.request("POST", "/v1/accounts/%d/deposits" % acct["id"], {"amount": 5}, token=h.admin_token)
        check(r.status == 200, lambda: "deposit: %r" % r)
        first = lsn(r.headers["pgtx-commit-lsn"])
        check(first > before, "Pgtx-Commit-LSN %x not past the position before the write %x" % (first, before))
        r = c.request("POST", "/v1/accounts/%d/deposits" % acct["id"], {"amount": 5}, token=h.admin_token)
        second = lsn(r.headers["pgtx-commit-lsn"])
        check(second > first, "the second deposit's position %x is not past the first's %x" % (second, first))
        g = c.request("GET", "/v1/accounts/%d" % acct["id"], token=h.admin_token,
                      headers={"Pgtx-Commit-LSN": r.headers["pgtx-commit-lsn"]})
        check(g.status == 200 and g.json["balance"] == 1010, lambda: "read: %r" % g)
        check(g.headers.get("pgtx-read-from") == "standby", lambda: "read from %r" % g.headers)
        check("pgtx-commit-lsn" not in g.headers, "a GET answered with Pgtx-Commit-LSN")
        # a row the read database lacks is looked for on the primary
        g = c.request("GET", "/v1/products/%d" % shoplib.INT64_MAX)
        check(g.status == 404 and g.headers.get("pgtx-read-from") == "primary",
              lambda: "missing row: %r %r" % (g, g.headers))

    def test_an_order_replay_carries_a_position_past_the_order(self):
        h, c = self.h, self.client()
        acct, prod = self.account(1000), self.product(10, 5)
        body = {"account_id": acct["id"], "product_id": prod["id"], "quantity": 1}
        key = {"Idempotency-Key": h.unique("key")}
        r1 = c.request("POST", "/v1/orders", body, token=h.admin_token, headers=key)
        check(r1.status == 201, lambda: "order: %r" % r1)
        r2 = c.request("POST", "/v1/orders", body, token=h.admin_token, headers=key)
        check(r2.status == 200 and r2.json["id"] == r1.json["id"], lambda: "replay: %r" % r2)
        check(lsn(r2.headers["pgtx-commit-lsn"]) >= lsn(r1.headers["pgtx-commit-lsn"]),
              lambda: "replay's position %s before the order's %s"
              % (r2.headers["pgtx-commit-lsn"], r1.headers["pgtx-commit-lsn"]))

    def test_a_bad_position_is_refused_and_changes_nothing(self):
        check_bad_positions(self)


class ReadDatabaseIsDown(shoplib.ShopTestCase):
    @classmethod
    def setUpClass(cls):
        cls.SERVER_EXTRA = ("--read-database", "host=127.0.0.1 port=%d dbname=x connect_timeout=2"
                            % shoplib.free_port())
        super().setUpClass()

    def test_reads_go_to_the_primary(self):
        h, c = self.h, self.client()
        acct = self.account(300)
        t0 = time.monotonic()
        for i in range(20):
            g = c.request("GET", "/v1/accounts/%d" % acct["id"], token=h.admin_token,
                          headers={"Pgtx-Commit-LSN": "0/1"} if i % 2 else None)
            check(g.status == 200 and g.json["balance"] == 300, lambda: "read %d: %r" % (i, g))
            check(g.headers.get("pgtx-read-from") == "primary", lambda: "read %d from %r" % (i, g.headers))
        took = time.monotonic() - t0
        log("20 reads with the read database down: %.3f s in all" % took)
        m = c.request("GET", "/metrics").body.decode()
        line = [x for x in m.splitlines() if x.startswith('pgtx_shop_reads_total{served_by="primary",reason="unavailable"}')]
        check(line and int(line[0].split()[-1]) >= 20, lambda: "metrics: %r" % line)


class NoReadDatabase(shoplib.ShopTestCase):
    def test_no_positions_no_routing(self):
        h, c = self.h, self.client()
        acct = self.account(50)
        r = c.request("POST", "/v1/accounts/%d/deposits" % acct["id"], {"amount": 1}, token=h.admin_token)
        check(r.status == 200 and "pgtx-commit-lsn" not in r.headers, lambda: "deposit: %r %r" % (r, r.headers))
        g = c.request("GET", "/v1/accounts/%d" % acct["id"], token=h.admin_token,
                      headers={"Pgtx-Commit-LSN": "FFFFFFFF/FFFFFFFF"})
        check(g.status == 200 and g.json["balance"] == 51, lambda: "read: %r" % g)
        check("pgtx-read-from" not in g.headers, lambda: "read from %r" % g.headers)

    def test_a_bad_position_is_refused_and_changes_nothing(self):
        check_bad_positions(self)


def check_bad_positions(t):
    h, c = t.h, t.client()
    acct, prod = t.account(70), t.product(3, 4)
    for bad in BAD_LSNS:
        for path in ("/v1/accounts/%d" % acct["id"], "/v1/products/%d" % prod["id"],
                     "/v1/accounts/%d/orders" % acct["id"]):
            g = c.request("GET", path, token=h.admin_token, headers={"Pgtx-Commit-LSN": bad})
            check(g.status == 400 and g.error_code == "invalid_commit_lsn",
                  lambda: "GET %s with Pgtx-Commit-LSN %r: %r" % (path, bad, g))
    d = c.request("GET", "/openapi.yaml", headers={"Pgtx-Commit-LSN": "bogus"})
    check(d.status == 200, lambda: "GET /openapi.yaml with a bad position: %r" % d)
    t.check_invariants()


if __name__ == "__main__":
    shoplib.main()
