#!/usr/bin/env python3
"""test_notify - pgtx-shop tells systemd when it serves (the unit's
Type=notify) and when it stops.

A unix datagram socket of the test's own stands in for systemd's: the
server gets its path in NOTIFY_SOCKET, the kernel stamps every datagram
with its sender's pid (SO_PASSCRED), and only the server's own messages
count, as under systemd's default NotifyAccess=main.

1. Given database: READY=1 arrives once, after the "listening on" line (the
   line is already in the stdout pipe when the datagram comes, since the
   server flushes it first), and /healthz answers 200 right then; SIGTERM
   brings STOPPING=1, then exit 0.
2. Embedded cluster (temporary data folder): the same, after migrations on
   a cluster made by initdb; the postmaster inherits NOTIFY_SOCKET and may
   say READY=1 itself, from its own pid: not ours, ignored.
3. NOTIFY_SOCKET naming no socket: a warning on stderr, and the server
   serves and exits 0 all the same.

Without NOTIFY_SOCKET (every other test) nothing changes.

usage: PGTX_SHOP_BINARY=build/pgtx-shop python3 -m unittest test_notify (from tests/shop)
"""

import http.client
import os
import select
import shutil
import signal
import socket
import struct
import sys
import tempfile
import time

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import shoplib  # noqa: E402
from shoplib import check, log  # noqa: E402

UCRED = struct.Struct("iII")  # struct ucred: pid, uid, gid


def clean_env(notify_socket):
    """The environment without the service's own variables (each run is
    configured by its flags alone), plus NOTIFY_SOCKET."""
    env = {k: v for k, v in os.environ.items()
           if not (k.startswith("PGTX_") or k in ("DATABASE_URL", "NOTIFY_SOCKET"))}
    env["NOTIFY_SOCKET"] = notify_socket
    return env


class Manager:
    """The stand-in for systemd's notification socket."""

    def __init__(self, path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        os.chmod(path, 0o666)  # the embedded postmaster may run as postgres
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)

    def receive(self, deadline):
        """(sender pid, {field: value}) of the next datagram, or None when
        the deadline passes first."""
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([self.sock], [], [], left)[0]:
            return None
        data, anc, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(UCRED.size))
        pid = None
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = UCRED.unpack(payload[:UCRED.size])[0]
        check(pid is not None, "a datagram without the sender's credentials: %r" % data)
        fields = dict(line.split("=", 1) for line in data.decode().split("\n") if "=" in line)
        return pid, fields

    def close(self):
        self.sock.close()


class Shop(shoplib.OwnProcess):
    """One pgtx-shop with NOTIFY_SOCKET set, its stdout left unread until
    READY=1 comes (so that what the pipe holds then was written before)."""

    def __init__(self, h, name, flags, notify_socket):
        super().__init__(name, [h.binary] + flags, clean_env(notify_socket), prefix="pgtx-notify")

    def stdout_now(self):
        """What the stdout pipe holds right now, without waiting."""
        fd = self.proc.stdout.fileno()
        if not select.select([fd], [], [], 0)[0]:
            return ""
        return os.read(fd, 65536).decode("utf-8", "replace")

    def listen_line(self, deadline):
        """The listening address, reading stdout until the first line."""
        out = ""
        fd = self.proc.stdout.fileno()
        while "\n" not in out:
            left = deadline - time.monotonic()
            check(left > 0, lambda: "%s printed no line in time; stderr:\n%s" % (self.name, self.stderr_text()))
            if select.select([fd], [], [], left)[0]:
                chunk = os.read(fd, 65536).decode("utf-8", "replace")
                check(chunk, lambda: "%s closed stdout (exit %s); stderr:\n%s"
                      % (self.name, self.proc.wait(10), self.stderr_text()))
                out += chunk
        return parse_listen(self.name, out)


def parse_listen(name, out):
    first = out.split("\n", 1)[0]
    m = shoplib.LISTEN_RE.match(first)
    check(m, "%s: first stdout line %r, want 'pgtx-shop: listening on http://HOST:PORT'" % (name, first))
    return m.group(1).strip("[]"), int(m.group(2))


def healthz(addr):
    c = http.client.HTTPConnection(addr[0], addr[1], timeout=shoplib.HTTP_TIMEOUT)
    try:
        c.request("GET", "/healthz")
        return c.getresponse().status
    finally:
        c.close()


def wait_for(mgr, shop, what, timeout):
    """Datagrams until the server's own one holding `what`; returns it with
    the messages of other processes seen meanwhile.  Fails on a message of
    the server's that comes out of order (STOPPING before READY, a second
    READY)."""
    deadline = time.monotonic() + timeout
    foreign = []
    while True:
        got = mgr.receive(min(deadline, time.monotonic() + 0.5))
        if got is None:
            check(time.monotonic() < deadline and shop.proc.poll() is None,
                  lambda: "%s: no %s=1 within %.0f s (exit %s); stderr:\n%s"
                  % (shop.name, what, timeout, shop.proc.poll(), shop.stderr_text()))
            continue
        pid, fields = got
        if pid != shop.pid:
            foreign.append((pid, fields))
            continue
        unexpected = {"READY", "STOPPING"} & set(fields) - {what}
        check(not unexpected, "%s: %r while waiting for %s=1" % (shop.name, fields, what))
        if what in fields:
            check(fields[what] == "1", "%s: %s=%r, want 1" % (shop.name, what, fields[what]))
            return fields, foreign


def run_one(h, mgr, name, flags, timeout):
    """Start, READY=1 after the listening line, serving, SIGTERM,
    STOPPING=1, exit 0.  Returns what the log line needs."""
    shop = Shop(h, name, flags, mgr.path)
    try:
        t0 = time.monotonic()
        ready, foreign = wait_for(mgr, shop, "READY", timeout)
        started = time.monotonic() - t0
        out = shop.stdout_now()
        check(out, "%s: READY=1 came before any stdout line" % name)
        addr = parse_listen(name, out)
        status = healthz(addr)
        check(status == 200, "%s: GET /healthz right after READY=1: %d, want 200" % (name, status))
        shop.proc.send_signal(signal.SIGTERM)
        stopping, later = wait_for(mgr, shop, "STOPPING", shoplib.STOP_DEADLINE)
        shop.terminate(signalled=True)
        return started, ready, stopping, foreign + later
    finally:
        shop.close()


def check_given_database(h, mgr):
    flags = ["--database", shoplib.DSN, "--listen", "127.0.0.1:0", "--admin-token", h.admin_token]
    started, ready, stopping, foreign = run_one(h, mgr, "given", flags, shoplib.START_DEADLINE)
    check(not foreign, "given database: messages from other processes: %r" % foreign)
    log("given database: READY=1 (%r) %.2f s after start, after the listening line, /healthz 200;"
        " SIGTERM -> STOPPING=1 (%r), exit 0" % (ready, started, stopping))


def check_embedded(h, mgr, base):
    flags = ["--data-dir", os.path.join(base, "pgdata"), "--listen", "127.0.0.1:0"]
    started, ready, stopping, foreign = run_one(h, mgr, "embedded", flags, shoplib.START_DEADLINE)
    log("embedded cluster: READY=1 %.2f s after start (initdb, migrations), after the listening line,"
        " /healthz 200; SIGTERM -> STOPPING=1, exit 0; %d message(s) from other pids ignored %r"
        % (started, len(foreign), [f for _, f in foreign]))


def check_no_manager(h, base):
    missing = os.path.join(base, "no-such-socket")
    flags = ["--database", shoplib.DSN, "--listen", "127.0.0.1:0", "--admin-token", h.admin_token]
    shop = Shop(h, "no-manager", flags, missing)
    try:
        addr = shop.listen_line(time.monotonic() + shoplib.START_DEADLINE)
        status = healthz(addr)
        check(status == 200, "no manager: GET /healthz: %d, want 200" % status)
        shop.terminate()
        err = shop.stderr_text()
        check("cannot send READY=1 to the service manager" in err,
              "no manager: no warning about READY=1 on stderr:\n%s" % err)
    finally:
        shop.close()
    log("NOTIFY_SOCKET naming no socket: warned on stderr, served /healthz 200, exit 0 on SIGTERM")


class Notify(shoplib.ShopTestCase):
    """One method per part above; each has a folder and a stand-in manager
    of its own, and starts (and stops) its own process."""

    SERVERS_PER_TEST = True

    def setUp(self):
        super().setUp()
        self.base = tempfile.mkdtemp(prefix="pgtx-notify-", dir="/tmp")
        self.addCleanup(shutil.rmtree, self.base, ignore_errors=True)
        os.chmod(self.base, 0o755)  # the embedded cluster may run as the postgres user
        self.mgr = Manager(os.path.join(self.base, "notify"))
        self.addCleanup(self.mgr.close)

    def test_given_database(self):
        check_given_database(self.h, self.mgr)

    def test_embedded_cluster(self):
        check_embedded(self.h, self.mgr, self.base)

    def test_no_manager(self):
        check_no_manager(self.h, self.base)


if __name__ == "__main__":
    shoplib.main()
