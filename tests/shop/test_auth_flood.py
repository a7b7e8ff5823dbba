#!/usr/bin/env python3
"""test_auth_flood - unauthenticated load does not reach the database.

A well-formed account token ("<id>.<43 base64url characters>") that
matches nothing is answered 401; before answering, the server must learn
that from the database.  A flood of such tokens must cost the database at
most one lookup per account id per cache lifetime (AUTH_TTL, 1 s in
auth.c), however many requests arrive and however many at once:

1. One id: FLOOD requests, CLIENTS at a time, all with fresh random secrets
   for one id that does not exist: all 401.
2. A few ids: the same spread over IDS ids, one of them a real account's
   with wrong secrets: all 401.
   For both, the database's side is counted twice: the lookups the server
   counts (pgtx_shop_auth_lookups_total) and the transactions the pool
   committed (pgtx_shop_pool_commits_total: each lookup is one read-only
   transaction, and nothing else runs meanwhile).  Both must stay within
   ids * (duration / AUTH_TTL + 1); the figures are printed.
3. The cache never turns a good token away: the real account's own token
   works right after the wrong-secret flood; an account created just after
   its id was looked up and not found (the next id of the sequence, probed
   with a made-up token) is served at once with its new token.

usage: PGTX_SHOP_BINARY=build/pgtx-shop python3 -m unittest test_auth_flood (from tests/shop)
"""

import concurrent.futures
import os
import secrets
import sys
import time

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import shoplib  # noqa: E402
from shoplib import check, log  # noqa: E402

FLOOD = 500          # requests per phase
CLIENTS = 8          # at once
IDS = 5              # ids of phase 2
AUTH_TTL = 1.0       # seconds, auth.c's AUTH_TTL_MS
LOOKUPS = "pgtx_shop_auth_lookups_total"
COMMITS = "pgtx_shop_pool_commits_total"


def made_up(account_id):
    return "%d.%s" % (account_id, secrets.token_urlsafe(32))


def counters(h):
    """(lookups, commits); lookups is None on a server that does not count
    them (the pool's commits still tell)."""
    r = h.client().request("GET", "/metrics")
    check(r.status == 200, lambda: "GET /metrics: %r" % r)
    values = {}
    for line in r.body.decode("utf-8", "replace").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in (LOOKUPS, COMMITS):
            values[parts[0]] = float(parts[1])
    check(COMMITS in values, "GET /metrics: no %s" % COMMITS)
    return values.get(LOOKUPS), values[COMMITS]


def flood(h, ex, ids, what):
    """FLOOD GETs of /v1/accounts/{id}, ids taken in turn, each with a fresh
    made-up token; every one must be 401.  Checks and prints the lookups."""
    def one(i):
        account_id = ids[i % len(ids)]
        r = h.client().request("GET", "/v1/accounts/%d" % account_id, token=made_up(account_id))
        return r.status, r.error_code

    before = counters(h)
    t0 = time.monotonic()
    answers = list(ex.map(one, range(FLOOD)))
    took = time.monotonic() - t0
    after = counters(h)
    bad = [a for a in answers if a != (401, "unauthorized")]
    check(not bad, lambda: "%s: answers other than 401 unauthorized: %s" % (what, bad[:5]))
    lookups = None if after[0] is None else after[0] - before[0]
    commits = after[1] - before[1]
    bound = len(ids) * (took / AUTH_TTL + 1)
    log("%s: %d requests with made-up tokens for %d id(s), %d at once, in %.2f s (%.0f/s): "
        "%s database lookups, %d transactions committed; bound %.1f"
        % (what, FLOOD, len(ids), CLIENTS, took, FLOOD / took,
           "%d" % lookups if lookups is not None else "(not counted)", commits, bound))
    check(commits <= bound, "%s: %d transactions committed > %.1f" % (what, commits, bound))
    check(lookups is not None, "GET /metrics: no %s" % LOOKUPS)
    check(lookups <= bound, "%s: %d lookups > %.1f" % (what, lookups, bound))


def good_tokens_still_work(h, real):
    r = h.client().request("GET", "/v1/accounts/%d" % real["id"], token=real["token"])
    check(r.status == 200, lambda: "the real account's token after the flood: %r" % r)
    probe = real["id"] + 1
    for _ in range(3):  # another test sharing the database may take the id
        r = h.client().request("GET", "/v1/accounts/%d" % probe, token=made_up(probe))
        check(r.status == 401, lambda: "probe of id %d: %r" % (probe, r))
        a = h.create_account(balance=1)
        if a["id"] == probe:
            r = h.client().request("GET", "/v1/accounts/%d" % probe, token=a["token"])
            check(r.status == 200, lambda: "account %d created after its id was probed: %r" % (probe, r))
            log("account %d, probed with a made-up token before it existed, works at once" % probe)
            return
        probe = a["id"] + 1
    log("note: other tests took the probed ids; the created-after-probe check was skipped")


class AuthFlood(shoplib.ShopTestCase):
    SERVER_EXTRA = ["--threads", str(CLIENTS)]

    def flood(self, ids, what):
        with concurrent.futures.ThreadPoolExecutor(CLIENTS) as ex:
            flood(self.h, ex, ids, what)

    @staticmethod
    def unknown_base():
        # unknown ids: far above anything the sequence hands out
        return shoplib.INT64_MAX - 1000 - secrets.randbelow(10**9)

    def test_one_unknown_id(self):
        self.flood([self.unknown_base()], "one unknown id")

    def test_several_ids_wrong_secrets(self):
        real = self.h.create_account(balance=1)
        base = self.unknown_base()
        self.flood([base + 1 + i for i in range(IDS - 1)] + [real["id"]], "%d ids (one real, wrong secrets)" % IDS)
        good_tokens_still_work(self.h, real)

    def test_good_tokens_and_new_ids_served(self):
        good_tokens_still_work(self.h, self.h.create_account(balance=1))


if __name__ == "__main__":
    shoplib.main()
