#!/usr/bin/env python3
"""test_concurrent_deposits - one hot account, two server processes.

Two pgtx-shop processes share one port (--reuse-port); 64 clients, each on
its own keep-alive connection (the kernel spreads them over the two), make
50 deposits of 1 each to the same account.  Under every safe strategy every
response is 200 and the final balance is exact (initial + 3200); the test
reports ops/s and the total of Pgtx-Retries per strategy.  Then, on servers
started with --allow-unsafe, the naive strategy must lose updates (the
balance ends short), which shows the test can see a lost update at all.

usage: PGTX_SHOP_BINARY=build/pgtx-shop python3 -m unittest test_concurrent_deposits (from tests/shop)
"""

import os
import sys

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import shoplib  # noqa: E402
from shoplib import STRATEGIES, check  # noqa: E402

CLIENTS = 64
PER_CLIENT = 50
INITIAL = 1000
ROUND_DEADLINE = 120.0 * shoplib.SLOW


def deposit_lines(servers):
    """How many lines about deposits each server has logged so far (the
    one-line-per-request log on stderr)."""
    return [sum(1 for line in s.log_text().splitlines() if "deposits" in line) for s in servers]


REPORT = []  # (strategy, ops/s, retries, seconds, balance, split): the summary
LOST = []


class SafeStrategies(shoplib.ShopTestCase):
    """Two processes on one port; one method per strategy (and "mixed")."""

    SERVER = False

    @classmethod
    def setUpServers(cls):
        cls.servers = cls.h.start_pair(extra=["--reuse-port"])
        shoplib.log("two servers on 127.0.0.1:%d (pids %d, %d); %d clients x %d deposits of 1"
                    % (cls.servers[0].port, cls.servers[0].proc.pid, cls.servers[1].proc.pid, CLIENTS, PER_CLIENT))

    def hammer(self, s):
        h, servers = self.h, self.servers
        total = CLIENTS * PER_CLIENT
        acct = h.create_account(INITIAL)
        logged = deposit_lines(servers)
        statuses, retries, elapsed, odd = shoplib.hammer_deposits(servers[0].addr, acct, s, CLIENTS, PER_CLIENT,
                                                                  ROUND_DEADLINE)
        bal = h.get("/v1/accounts/%d" % acct["id"])["balance"]
        split = [n - m for n, m in zip(deposit_lines(servers), logged)]
        REPORT.append((s, total / elapsed, retries, elapsed, bal, split))
        shoplib.log("%-12s %7.0f ops/s  retries %5d  %5.2f s  balance %d (want %d)  per server %s"
                    % (s, total / elapsed, retries, elapsed, bal, INITIAL + total, split))
        check(statuses == {200: total}, lambda: "%s: statuses %s, want %d x 200; e.g. %s"
              % (s, dict(statuses), total, odd[:3]))
        check(not odd, lambda: "%s: %s" % (s, odd[:3]))
        check(bal == INITIAL + total, lambda: "%s: final balance %d, want %d (lost %d)"
              % (s, bal, INITIAL + total, INITIAL + total - bal))
        if sum(split):  # the server logs requests: both processes must have served some
            check(all(split), lambda: "%s: one process served nothing: %s" % (s, split))
        h.check_invariants(accounts=[acct["id"]], products=[], coupons=[], what=s)


for _s in STRATEGIES + ("mixed",):
    setattr(SafeStrategies, "test_" + _s, lambda self, s=_s: self.hammer(s))


class NaiveLosesUpdates(shoplib.ShopTestCase):
    """naive: the lost update, on servers that allow it (which shows the
    test can see a lost update at all)."""

    SERVER = False

    @classmethod
    def setUpServers(cls):
        cls.unsafe = cls.h.start_pair(extra=["--reuse-port", "--allow-unsafe"])

    def test_naive_loses_updates(self):
        h, unsafe = self.h, self.unsafe
        total = CLIENTS * PER_CLIENT
        lost = None
        for attempt in range(1, 4):
            acct = h.create_account(INITIAL, c=h.client(unsafe[0].addr))
            with h._lock:
                h.accounts.discard(acct["id"])  # its invariants break on purpose
            statuses, retries, elapsed, odd = shoplib.hammer_deposits(unsafe[0].addr, acct, "naive", CLIENTS,
                                                                      PER_CLIENT, ROUND_DEADLINE)
            bal = h.get("/v1/accounts/%d" % acct["id"], c=h.client(unsafe[0].addr))["balance"]
            ledger = shoplib.sql_json("SELECT coalesce(sum(amount), 0) AS s FROM ledger WHERE account_id = %d"
                                      % acct["id"])[0]["s"]
            shoplib.log("naive #%d     %7.0f ops/s  %5.2f s  statuses %s  balance %d (want %d)  ledger sum %s"
                        % (attempt, total / elapsed, elapsed, dict(statuses), bal, INITIAL + total, ledger))
            check(set(statuses) <= {200, 503}, lambda: "naive: unexpected statuses %s: %s"
                  % (dict(statuses), odd[:3]))
            acked = statuses[200]
            if bal < INITIAL + acked:
                lost = INITIAL + acked - bal
                shoplib.log("naive lost %d of %d acknowledged deposits (%.1f%%)"
                            % (lost, acked, 100.0 * lost / acked))
                break
        check(lost is not None, "naive: 3 rounds of 3200 concurrent deposits lost nothing; the test cannot see "
                                "a lost update (or naive is not the unsafe read-modify-write)")
        LOST.append(lost)


def tearDownModule():
    shoplib.log("summary (%d deposits per strategy, 2 processes):" % (CLIENTS * PER_CLIENT))
    for s, ops, retries, elapsed, bal, split in REPORT:
        shoplib.log("  %-12s %7.0f ops/s  %5d retries  %5.2f s  split %s" % (s, ops, retries, elapsed, split))
    for lost in LOST:
        shoplib.log("  %-12s lost %d updates" % ("naive", lost))


if __name__ == "__main__":
    shoplib.main()
