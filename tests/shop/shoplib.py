"""shoplib - the shared harness of pgtx-shop's end-to-end tests.

The tests drive the real binary over HTTP on 127.0.0.1 and check the
database with psql, from the contract (API.md) and the fixed table names:

- Server: starts `pgtx-shop --database DSN --listen HOST:PORT --admin-token T`,
  waits (with a deadline) for its `pgtx-shop: listening on http://HOST:PORT`
  line, keeps its stderr in a file, and stops it with SIGTERM, requiring exit
  0 within a deadline (SIGKILL only as a last resort, and that is a failure).
- Client: one keep-alive http.client connection; Harness.client() hands each
  thread its own.
- create_account/product/coupon: fresh entities with names unique to the
  test run; every id created is tracked, so that the invariant check and the
  "nothing changed" snapshot look only at this test's rows (the database may
  be shared with other test files running at the same time).
- check_invariants(): the invariants of API.md as SQL over the fixed schema.
- OpenAPI: every HTTP response that reaches a test through Client.request
  or raw_exchange is checked against docs/openapi.yaml (the operation by
  method and path template, the status, the JSON body against its schema,
  the headers the document names); a mismatch fails the test.

- ShopTestCase: the unittest fixture.  A class starts its server(s) once
  (setUpClass) and stops them (tearDownClass: each must exit 0 on SIGTERM,
  else the class fails); each test method makes its own entities, so that it
  runs alone and in any order.  The binary comes from $PGTX_SHOP_BINARY
  (unittest owns argv); main() also takes it as the first argument.  On a
  failure the servers' stderr tails are printed.
- wait_until(predicate, deadline, what): every poll of a test.
- run(test_name, main): the older one-main-per-file entry, kept for files
  written against it.

Every loop is bounded in count and time; waits poll with deadlines.
Standard library, plus Debian's python3-yaml and python3-jsonschema (run
under /usr/bin/python3) for the OpenAPI check.
"""

import atexit
import collections
import concurrent.futures
import http.client
import itertools
import json
import os
import re
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import warnings

try:
    import jsonschema
    import yaml
except ImportError as e:
    sys.exit("shoplib: %s: the end-to-end tests check every answer against docs/openapi.yaml and "
             "need python3-yaml and python3-jsonschema; run them with /usr/bin/python3 "
             "(scripts/deps.sh installs both)" % e)

STRATEGIES = ("atomic", "lock", "optimistic", "serializable")
INT64_MAX = 2**63 - 1

# The database: PGTX_TEST_DSN when set, else "" = libpq's PG* environment
# (what scripts/with-pg.sh exports).  Never the embedded cluster.
DSN = os.environ.get("PGTX_TEST_DSN", "")

# Sanitizer builds run several times slower; deadlines stretch, sizes don't.
SLOW = 3.0 if os.environ.get("ASAN_OPTIONS") or os.environ.get("PGTX_E2E_SLOW") else 1.0
START_DEADLINE = 60.0 * SLOW   # until the "listening" line
STOP_DEADLINE = 30.0 * SLOW    # from SIGTERM to exit
HTTP_TIMEOUT = 60.0 * SLOW     # per socket operation

SETPRIV = shutil.which("setpriv")

LISTEN_RE = re.compile(r"^pgtx-shop: listening on http://([0-9.]+|\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):(\d+)$")


class TestFailure(AssertionError):
    """A check failed: the message says what was expected and what came.
    An AssertionError, so that unittest counts it as a failure (not an
    error)."""


def fail(msg):
    raise TestFailure(msg)


def check(cond, msg):
    if not cond:
        raise TestFailure(msg() if callable(msg) else msg)


def log(msg):
    print(msg, flush=True)


# ---------------------------------------------------------------- psql -----

class _Psql:
    """One psql process kept open for the whole test (a fresh psql per check
    costs tens of milliseconds; a test runs hundreds of checks).  Scripts
    are separated by an \\echo marker; any SQL error fails the test."""

    def __init__(self):
        self.lock = threading.Lock()
        self.proc = None
        self.buf = b""
        self.seq = 0
        self.err = []

    def _start(self):
        cmd = ["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"]
        if DSN:
            cmd += ["-d", DSN]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        self.buf, self.err = b"", []
        self.err_reader = threading.Thread(target=self._drain_err, args=(self.proc, self.err), daemon=True)
        self.err_reader.start()

    @staticmethod
    def _drain_err(proc, sink):
        for line in proc.stderr:
            sink.append(line.decode("utf-8", "replace").rstrip())

    def run(self, script, timeout=60.0):
        with self.lock:
            if self.proc is None or self.proc.poll() is not None:
                self._start()
            self.seq += 1
            marker = "__shoplib_end_%d__" % self.seq
            try:
                self.proc.stdin.write((script + "\n\\echo " + marker + "\n").encode())
                self.proc.stdin.flush()
            except OSError:
                pass  # psql died: reported below
            deadline = time.monotonic() + timeout
            end = ("\n" + marker + "\n").encode()
            fd = self.proc.stdout.fileno()
            while end not in b"\n" + self.buf:
                left = deadline - time.monotonic()
                if left <= 0:
                    self.close()
                    fail("psql gave no answer within %.0f s; script:\n%s" % (timeout, script))
                ready, _, _ = select.select([fd], [], [], min(left, 1.0))
                if ready:
                    chunk = os.read(fd, 65536)
                    if not chunk:
                        rc = self.proc.wait(timeout=10)
                        self.err_reader.join(timeout=10)  # psql's last words
                        err = "\n".join(self.err)
                        self.proc = None
                        fail("psql failed (exit %s): %s\nscript:\n%s" % (rc, err, script))
                    self.buf += chunk
            text, _, self.buf = (b"\n" + self.buf).partition(end)
            return [line for line in text.decode("utf-8").split("\n") if line != ""]

    def close(self):
        if self.proc is not None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
            self.proc = None


_psql = _Psql()


def psql(script, timeout=60.0):
    """Runs an SQL script (unaligned, tuples only); returns stdout lines."""
    return _psql.run(script, timeout)


def sql_json(*queries):
    """Each query's rows as a list of dicts (one psql run for all)."""
    script = "".join("SELECT coalesce(jsonb_agg(t), '[]'::jsonb) FROM (%s) t;\n" % q for q in queries)
    lines = psql(script)
    check(len(lines) == len(queries), "psql returned %d lines for %d queries" % (len(lines), len(queries)))
    out = [json.loads(line) for line in lines]
    return out if len(queries) > 1 else out[0]


class LockHolder:
    """A psql session of its own that holds FOR UPDATE on one row until
    release() (or, should this test die, its idle-in-transaction timeout)."""

    def __init__(self, table, row_id):
        cmd = ["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"]
        if DSN:
            cmd += ["-d", DSN]
        self.released = False
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        self.send("SET idle_in_transaction_session_timeout = '60s';\nBEGIN;\n"
                  "SELECT 'pid=' || pg_backend_pid();\n"
                  "SELECT id FROM %s WHERE id = %d FOR UPDATE;\n\\echo locked" % (table, row_id))
        seen = self.wait_for("locked")
        self.pid = int(re.search(rb"pid=(\d+)", seen).group(1))

    def send(self, script):
        self.proc.stdin.write((script + "\n").encode())
        self.proc.stdin.flush()

    def wait_for(self, word, timeout=30.0):
        deadline = time.monotonic() + timeout * SLOW
        seen = b""
        fd = self.proc.stdout.fileno()
        while word.encode() + b"\n" not in seen:
            left = deadline - time.monotonic()
            check(left > 0, lambda: "the lock holder did not say %r: %r" % (word, seen))
            ready, _, _ = select.select([fd], [], [], min(left, 1.0))
            if ready:
                chunk = os.read(fd, 4096)
                check(chunk, lambda: "the lock holder (psql) exited: %r" % seen)
                seen += chunk
        return seen

    def waiters(self, application="pgtx-shop"):
        """Backends of `application` waiting, directly or behind another
        waiter, for this holder's lock (other servers on the same cluster,
        of tests running at the same time, do not count)."""
        rows = sql_json(
            "WITH RECURSIVE b(pid) AS (SELECT pid FROM pg_stat_activity"
            " WHERE %d = ANY(pg_blocking_pids(pid))"
            " UNION SELECT a.pid FROM pg_stat_activity a, b WHERE b.pid = ANY(pg_blocking_pids(a.pid)))"
            " SELECT count(*) AS n FROM b JOIN pg_stat_activity s USING (pid)"
            " WHERE s.application_name = '%s'" % (self.pid, application))
        return rows[0]["n"]

    def holding(self):
        """Whether the lock is surely still held (psql alive, not released)."""
        return not self.released and self.proc.poll() is None

    def release(self):
        self.released = True
        self.send("ROLLBACK;\n\\echo released")
        self.wait_for("released")
        self.close()

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


def upstream_address():
    """Where PostgreSQL listens for this test's DSN: ('tcp', host, port) or
    ('unix', path), plus the user and database to log in as."""
    row = psql("SELECT concat_ws('|', coalesce(host(inet_server_addr()), ''),"
                       " current_setting('port'), current_setting('unix_socket_directories'),"
                       " current_user, current_database());")[0]
    host, port, sockdirs, user, db = row.split("|")
    if host:
        return ("tcp", host, int(port)), user, db
    first = sockdirs.split(",")[0].strip()
    return ("unix", os.path.join(first, ".s.PGSQL.%s" % port)), user, db


def conninfo_quote(v):
    return "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"


def id_array(ids):
    return "'{%s}'::bigint[]" % ",".join(str(int(i)) for i in sorted(ids))


# ------------------------------------------------------------- OpenAPI -----

OPENAPI_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "docs", "openapi.yaml")
JSON_TYPES = ("application/json",)


def media_type(value):
    """'text/plain; a=b' -> ('text/plain', 'text/plain; a=b'), normalised."""
    parts = [p.strip() for p in (value or "").split(";") if p.strip()]
    if not parts:
        return "", ""
    return parts[0].lower(), "; ".join([parts[0].lower()] + parts[1:])


def unescape_unreserved(path):
    """The path as the server routes it: only %XX of unreserved characters
    decoded (see http.c); the query string ignored."""
    def unescape(m):
        c = chr(int(m.group(1), 16))
        return c if re.fullmatch(r"[A-Za-z0-9._~-]", c) else m.group(0)
    return re.sub(r"%([0-9A-Fa-f]{2})", unescape, path.split("?", 1)[0])


class OpenApi:
    """docs/openapi.yaml as a checker of the server's answers.  check()
    raises TestFailure naming the route, the status, the body and what the
    document says instead."""

    METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")

    def __init__(self, path=OPENAPI_PATH):
        self.path = os.path.normpath(path)
        # as the repository names it, for messages
        self.name = os.path.relpath(self.path, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
        with open(self.path, "rb") as f:
            self.raw = f.read()
        self.doc = yaml.safe_load(self.raw)
        self._local = threading.local()
        self.lock = threading.Lock()
        self.checked = collections.Counter()  # (route, status) -> responses checked
        self.routes = [self._route(t, item) for t, item in self.doc.get("paths", {}).items()]
        unrouted = self.doc.get("x-pgtx-unrouted", {})
        self.unknown_path = unrouted.get("unknownPath", {}).get("responses", {})
        self.other_method = unrouted.get("otherMethod", {}).get("responses", {})
        # headers the document describes anywhere: present where it does not
        # name them, they are undocumented
        self.named_headers = set()
        for resp in self._all_responses():
            self.named_headers |= {k.lower() for k in self.resolve(resp).get("headers", {})}

    # ---- the document
    def resolve(self, obj):
        """Follows $ref (local JSON pointers) until an object without one."""
        seen = 0
        while isinstance(obj, dict) and "$ref" in obj and set(obj) <= {"$ref", "summary", "description"}:
            ref = obj["$ref"]
            check(ref.startswith("#/"), "openapi: only local $refs are supported: %r" % ref)
            target = self.doc
            for part in ref[2:].split("/"):
                part = part.replace("~1", "/").replace("~0", "~")
                check(isinstance(target, dict) and part in target, "openapi: $ref %r does not resolve" % ref)
                target = target[part]
            obj, seen = target, seen + 1
            check(seen < 20, "openapi: $ref loop at %r" % ref)
        return obj

    def _all_responses(self):
        for _, item in self.doc.get("paths", {}).items():
            for m in self.METHODS:
                if m in item:
                    yield from item[m].get("responses", {}).values()
        yield from self.unknown_path.values()
        yield from self.other_method.values()
        yield from self.doc.get("components", {}).get("responses", {}).values()

    def _route(self, template, item):
        item = self.resolve(item)
        params = {}
        for p in item.get("parameters", []):
            p = self.resolve(p)
            if p.get("in") == "path":
                params[p["name"]] = p
        ops = {m: item[m] for m in self.METHODS if m in item}
        for op in ops.values():
            for p in op.get("parameters", []):
                p = self.resolve(p)
                if p.get("in") == "path":
                    params[p["name"]] = p
        segments = []
        for seg in template.strip("/").split("/") if template != "/" else []:
            m = re.fullmatch(r"\{([^}]+)\}", seg)
            segments.append(("param", m.group(1)) if m else ("literal", seg))
        return {"template": template, "segments": segments, "params": params, "ops": ops}

    def _param_ok(self, param, text):
        """A path segment against its parameter: an integer schema takes
        canonical decimal only (as the server does), then the schema."""
        schema = param.get("schema", {})
        types = self._types(schema)
        value = text
        if "integer" in types:
            if not re.fullmatch(r"[1-9][0-9]*|0", text):
                return False
            value = int(text)
        return self._validator(schema).is_valid(value)

    def _types(self, schema, depth=0):
        schema = self.resolve(schema)
        t = schema.get("type")
        types = set([t] if isinstance(t, str) else t or [])
        if "$ref" in schema and depth < 10:
            types |= self._types({"$ref": schema["$ref"]}, depth + 1)
        return types

    def match(self, path):
        """(route, path parameters) of the path, or (None, None)."""
        segs = path.strip("/").split("/") if path != "/" else []
        if path.endswith("/") and path != "/":
            return None, None  # a trailing / matches no route
        for route in self.routes:
            if len(route["segments"]) != len(segs):
                continue
            values, ok = {}, True
            for (kind, name), seg in zip(route["segments"], segs):
                if kind == "literal":
                    ok = seg == name
                else:
                    param = route["params"].get(name)
                    ok = param is not None and self._param_ok(param, seg)
                    values[name] = seg
                if not ok:
                    break
            if ok:
                return route, values
        return None, None

    def _validator(self, schema):
        cache = getattr(self._local, "validators", None)
        if cache is None:
            cache = self._local.validators = {}
            self._local.resolver = jsonschema.RefResolver("", self.doc)
        v = cache.get(id(schema))
        if v is None:
            v = cache[id(schema)] = jsonschema.Draft202012Validator(schema, resolver=self._local.resolver)
        return v

    # ---- one answer
    def check(self, method, path, r):
        method = method.upper()
        route, _ = self.match(unescape_unreserved(path))
        op_method = "get" if method == "HEAD" else method.lower()
        op = route["ops"].get(op_method) if route else None
        if op is not None:
            where = "%s %s (operationId %s)" % (method, route["template"], op.get("operationId"))
            responses = op.get("responses", {})
        elif route is not None:
            where = "%s %s (no such operation: x-pgtx-unrouted.otherMethod)" % (method, route["template"])
            responses = self.other_method
        else:
            where = "%s %s (no path matches: x-pgtx-unrouted.unknownPath)" % (method, path)
            responses = self.unknown_path

        def bad(what):
            body = r.body[:600].decode("utf-8", "replace")
            fail("OpenAPI (%s): %s answered %d, which %s\n    body: %s\n    headers: %s"
                 % (self.name, where, r.status, what, body,
                    {k: v for k, v in r.headers.items() if k in self.named_headers or k == "content-type"}))

        key = next((k for k in (str(r.status), "%dXX" % (r.status // 100), "default") if k in responses), None)
        if key is None:
            bad("is not documented (documented: %s)" % ", ".join(sorted(responses)))
        resp = self.resolve(responses[key])
        self._check_headers(resp, r, bad)
        if r.status == 405 and route is not None:
            allow = {m.strip().upper() for m in r.headers.get("allow", "").split(",") if m.strip()}
            want = {m.upper() for m in route["ops"]} | ({"HEAD"} if "get" in route["ops"] else set())
            if allow != want:
                bad("says Allow: %r, but the path's operations are %s" % (r.headers.get("allow"),
                                                                         ", ".join(sorted(want))))
        self._check_body(resp, method, r, bad)
        with self.lock:
            self.checked[(route["template"] if route else "(unrouted)", r.status)] += 1

    def _check_headers(self, resp, r, bad):
        documented = {}
        for name, h in resp.get("headers", {}).items():
            documented[name.lower()] = self.resolve(h)
        for name in sorted(self.named_headers - set(documented)):
            if name in r.headers:
                bad("carries %s: %r, which the document does not name for this response"
                    % (name, r.headers[name]))
        for name, h in sorted(documented.items()):
            value = r.headers.get(name)
            if value is None:
                if h.get("required"):
                    bad("lacks the required header %s" % name)
                continue
            schema = h.get("schema", {})
            if "integer" in self._types(schema):
                try:
                    value = int(value)
                except ValueError:
                    bad("has %s: %r, not an integer" % (name, value))
            err = jsonschema.exceptions.best_match(self._validator(schema).iter_errors(value))
            if err is not None:
                bad("has %s: %r: %s" % (name, r.headers.get(name), err.message))

    def _check_body(self, resp, method, r, bad):
        content = resp.get("content")
        if not content:
            if r.body:
                bad("has a body, but the document gives this response none")
            return
        base, full = media_type(r.headers.get("content-type"))
        keys = {media_type(k)[1]: k for k in content}
        mt = keys.get(full) or next((k for n, k in keys.items() if n == base), None)
        if mt is None:
            bad("has Content-Type %r; the document says %s"
                % (r.headers.get("content-type"), " or ".join(sorted(content))))
        if method == "HEAD":
            if r.body:
                bad("has a body, though the request was HEAD")
            return
        if not r.body:
            bad("has an empty body; the document says %s" % mt)
        schema = content[mt].get("schema")
        if schema is None or media_type(mt)[0] not in JSON_TYPES:
            return
        try:
            value = json.loads(r.body.decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            bad("is not JSON (%s)" % e)
        errors = sorted(self._validator(schema).iter_errors(value), key=jsonschema.exceptions.relevance)
        if errors:
            lines = []
            for e in errors[:5]:
                e = jsonschema.exceptions.best_match([e])  # the deepest reason under oneOf and the like
                at = "/".join(str(p) for p in e.absolute_path) or "(the body)"
                lines.append("at %s: %s\n      (schema %s: %s)" % (
                    at, e.message, "/".join(str(p) for p in e.absolute_schema_path), json.dumps(e.schema)[:240]))
            bad("does not match the schema %s:\n    %s" % (json.dumps(schema)[:120], "\n    ".join(lines)))


OPENAPI = OpenApi()


def check_openapi(method, path, r):
    """Checks one answer against docs/openapi.yaml (TestFailure if not)."""
    OPENAPI.check(method, path, r)
    return r


# ---------------------------------------------------------------- HTTP -----

class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers  # lower-case name -> value (last one wins)
        self.body = body
        self._json = None
        self._parsed = False

    @property
    def json(self):
        if not self._parsed:
            self._parsed = True
            try:
                self._json = json.loads(self.body.decode("utf-8"))
            except (ValueError, UnicodeDecodeError):
                self._json = None
        return self._json

    @property
    def error_code(self):
        j = self.json
        if isinstance(j, dict) and isinstance(j.get("error"), dict):
            return j["error"].get("code")
        return None

    @property
    def retries(self):
        v = self.headers.get("pgtx-retries")
        if v is None:
            return None
        try:
            return int(v)
        except ValueError:
            return v

    def __repr__(self):
        body = self.body[:400].decode("utf-8", "replace")
        return "HTTP %d %s" % (self.status, body)


class Client:
    """One keep-alive HTTP/1.1 connection (reopened after the server closes
    it, e.g. after `Connection: close`).  Not thread-safe: one per thread."""

    def __init__(self, host, port, timeout=HTTP_TIMEOUT):
        self.host, self.port, self.timeout = host, port, timeout
        self.conn = None
        self.connects = 0

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def request(self, method, path, body=None, token=None, headers=None, raw=None):
        """body: a JSON value to send; raw: bytes to send as is.  Raises
        OSError / http.client.HTTPException on connection errors (the
        connection is dropped; the next request opens a new one)."""
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            self.connects += 1
        hdrs = {}
        data = None
        if raw is not None:
            data = raw
            hdrs["Content-Type"] = "application/json"
        elif body is not None:
            data = json.dumps(body).encode()
            hdrs["Content-Type"] = "application/json"
        if token is not None:
            hdrs["Authorization"] = "Bearer " + token
        if headers:
            hdrs.update(headers)
        try:
            self.conn.request(method, path, body=data, headers=hdrs)
            resp = self.conn.getresponse()
            payload = resp.read()
        except (OSError, http.client.HTTPException):
            self.close()
            raise
        r = Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, payload)
        if resp.will_close:
            self.close()
        return check_openapi(method, path, r)


def metric(c, name):
    """The value of one unlabelled sample of GET /metrics, through client c."""
    r = c.request("GET", "/metrics")
    check(r.status == 200, lambda: "GET /metrics: %r" % r)
    for line in r.body.decode("utf-8", "replace").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == name:
            return float(parts[1])
    fail("GET /metrics: no %s" % name)


def free_port():
    """A port nothing listens on right now: for a process that cannot be
    told port 0, or one that must not listen on it."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
    finally:
        s.close()


def raw_exchange(host, port, data, timeout=HTTP_TIMEOUT):
    """Sends raw bytes on a fresh socket; returns the parsed first response
    (or raises on a connection error)."""
    method, path = data.split(b"\r\n", 1)[0].decode("latin-1").split(" ")[:2]
    s = socket.create_connection((host, port), timeout=timeout)
    try:
        s.sendall(data)
        resp = http.client.HTTPResponse(s, method=method)
        resp.begin()
        payload = resp.read()
        r = Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, payload)
    finally:
        s.close()
    return check_openapi(method, path, r)


# -------------------------------------------------------------- servers -----

class OwnProcess:
    """A pgtx-shop started with a command line and environment of the test's
    own (not Server's, which always passes --database and --admin-token):
    stdout a pipe for the caller to read, stderr kept in a file, killed with
    the test (setpriv --pdeathsig), its own session."""

    def __init__(self, name, cmd, env, prefix="pgtx-own"):
        self.name = name
        self.errf = tempfile.NamedTemporaryFile(prefix="%s-%s-" % (prefix, name), suffix=".log", delete=False)
        if SETPRIV:
            cmd = [SETPRIV, "--pdeathsig", "KILL"] + list(cmd)  # setpriv execs: same pid
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self.errf,
                                     env=env, start_new_session=True)
        self.pid = self.proc.pid

    def stderr_text(self):
        with open(self.errf.name, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def terminate(self, sig=signal.SIGTERM, signalled=False):
        """Send `sig` (unless sent already: a second SIGTERM kills) and
        require exit 0 within the deadline; returns the seconds it took."""
        t0 = time.monotonic()
        name = signal.Signals(sig).name
        if not signalled:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout=STOP_DEADLINE)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            fail("%s did not exit within %.0f s of %s (killed); stderr:\n%s"
                 % (self.name, STOP_DEADLINE, name, self.stderr_text()))
        check(rc == 0, lambda: "%s exited %s after %s, want 0; stderr:\n%s"
              % (self.name, rc, name, self.stderr_text()))
        return time.monotonic() - t0

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc.stdout.close()
        self.errf.close()
        os.unlink(self.errf.name)


class Server:
    """One pgtx-shop process."""

    _seq = itertools.count(1)

    def __init__(self, harness, listen="127.0.0.1:0", extra=(), name=None, database=None):
        self.h = harness
        self.listen = listen
        self.database = DSN if database is None else database
        self.extra = list(extra)
        self.name = name or "server%d" % next(Server._seq)
        self.proc = None
        self.host = self.port = None
        self.stdout_lines = []  # this process's stdout so far
        self._cv = threading.Condition()
        self._eof = None  # [bool] per process
        self.log_path = None  # this process's stderr
        self.log_paths = []   # every process's (one per start)

    @property
    def addr(self):
        return (self.host, self.port)

    def start(self):
        fd, self.log_path = tempfile.mkstemp(prefix="pgtx-shop-e2e-%s-" % self.name, suffix=".log")
        self.log_paths.append(self.log_path)
        # fresh per process: a killed predecessor's reader may still be
        # finishing with its own pipe
        lines, eof = [], [False]
        self.stdout_lines, self._eof = lines, eof
        cmd = [self.h.binary, "--database", self.database, "--listen", self.listen,
               "--admin-token", self.h.admin_token] + self.extra
        if SETPRIV:
            # a safety net only: should this test die without its clean-up,
            # the server goes with it (servers are started from the main
            # thread, which lives as long as the test)
            cmd = [SETPRIV, "--pdeathsig", "KILL"] + cmd
        with os.fdopen(fd, "wb") as logf:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=logf, start_new_session=True)
        if self not in self.h.servers:
            self.h.servers.append(self)
        threading.Thread(target=self._drain, args=(self.proc, lines, eof),
                         name="drain-" + self.name, daemon=True).start()
        deadline = time.monotonic() + START_DEADLINE
        with self._cv:
            while not lines:
                if eof[0]:
                    rc = self.proc.wait(timeout=STOP_DEADLINE)
                    fail("%s exited with %s before its listening line; stderr:\n%s"
                         % (self.name, rc, self.log_tail()))
                left = deadline - time.monotonic()
                if left <= 0:
                    fail("%s printed no line within %.0f s; stderr:\n%s"
                         % (self.name, START_DEADLINE, self.log_tail()))
                self._cv.wait(min(left, 1.0))
            first = lines[0]
        m = LISTEN_RE.match(first)
        check(m, lambda: "%s: first stdout line is %r, expected 'pgtx-shop: listening on http://HOST:PORT'"
              % (self.name, first))
        self.host, self.port = m.group(1).strip("[]"), int(m.group(2))
        want_port = int(self.listen.rsplit(":", 1)[1])
        check(want_port == 0 or want_port == self.port,
              "%s: asked for port %d, listening line says %d" % (self.name, want_port, self.port))
        check(self.port != 0, "%s: listening line shows port 0" % self.name)
        return self

    def _drain(self, proc, lines, eof):
        for raw in proc.stdout:
            with self._cv:
                lines.append(raw.decode("utf-8", "replace").rstrip("\r\n"))
                self._cv.notify_all()
        with self._cv:
            eof[0] = True
            self._cv.notify_all()

    def wait_stdout(self, n, timeout=10.0):
        """The first n stdout lines (fewer if the deadline passes first)."""
        deadline = time.monotonic() + timeout * SLOW
        with self._cv:
            lines = self.stdout_lines
            while len(lines) < n and not self._eof[0] and time.monotonic() < deadline:
                self._cv.wait(min(0.5, max(0.0, deadline - time.monotonic())))
            check(len(lines) >= n, lambda: "%s: %d stdout lines, want %d: %r" % (self.name, len(lines), n, lines))
            return list(lines)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def log_tail(self, n=30):
        return "\n".join(self.log_text().splitlines()[-n:])

    def stop(self):
        """SIGTERM; the server must exit 0 within STOP_DEADLINE.  Returns the
        time it took (failure raised otherwise)."""
        if self.proc is None or self.proc.returncode is not None:
            return 0.0
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=STOP_DEADLINE)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=STOP_DEADLINE)
            fail("%s did not exit within %.0f s of SIGTERM (killed); stderr:\n%s"
                 % (self.name, STOP_DEADLINE, self.log_tail()))
        took = time.monotonic() - t0
        check(rc == 0, lambda: "%s exited %s after SIGTERM (want 0); stderr:\n%s"
              % (self.name, rc, self.log_tail()))
        return took

    def kill(self):
        """SIGKILL on purpose (a crash); waits for it to die."""
        self.proc.kill()
        self.proc.wait(timeout=STOP_DEADLINE)

    def restart(self):
        """Starts a new process on the same HOST:PORT with the same flags."""
        self.listen = "%s:%d" % (self.host, self.port)
        return self.start()


# -------------------------------------------------------------- harness -----

class Harness:
    """What a test needs: the binary, its servers, clients, tracked
    entities, checks.  One per ShopTestCase class."""

    def __init__(self, binary, test_name):
        self.binary = os.path.abspath(binary)
        self.test_name = test_name
        self.admin_token = "e2e-admin-" + secrets.token_hex(16)
        self.prefix = "e2e-%s-%s-" % (test_name, secrets.token_hex(4))
        self.servers = []
        self.failures = []
        self._seq = itertools.count(1)
        self._lock = threading.Lock()
        self._local = threading.local()
        self.accounts, self.products, self.coupons = set(), set(), set()
        self.default_addr = None
        self.all_clients = []

    # ---- servers
    def start_server(self, listen="127.0.0.1:0", extra=(), name=None, database=None):
        """database: a connection string other than DSN (a proxy's, say)."""
        s = Server(self, listen, extra, name, database).start()
        if self.default_addr is None:
            self.default_addr = s.addr
        return s

    def start_pair(self, extra=()):
        """Two processes sharing one port (SO_REUSEPORT): the first picks a
        free port, the second listens on the same one."""
        a = self.start_server("127.0.0.1:0", extra)
        b = self.start_server("127.0.0.1:%d" % a.port, extra)
        check(b.port == a.port, "second server on %d, first on %d" % (b.port, a.port))
        return a, b

    def stop_all(self):
        for s in self.servers:
            if s.alive():
                try:
                    s.stop()
                except TestFailure as e:
                    self.failures.append(str(e))

    # ---- clients
    def client(self, addr=None):
        """This thread's keep-alive client to addr (default: the first server)."""
        addr = addr or self.default_addr
        d = getattr(self._local, "clients", None)
        if d is None:
            d = self._local.clients = {}
        c = d.get(addr)
        if c is None:
            c = d[addr] = Client(*addr)
            with self._lock:
                self.all_clients.append(c)  # closed by close_clients(), not left to the GC
        return c

    def close_clients(self):
        with self._lock:
            clients, self.all_clients = self.all_clients, []
        for c in clients:
            c.close()

    def unique(self, what):
        return "%s%s%d" % (self.prefix, what, next(self._seq))

    # ---- entities (admin token; tracked)
    def create_account(self, balance=0, name=None, c=None):
        c = c or self.client()
        name = name or self.unique("acct")
        r = c.request("POST", "/v1/accounts", {"name": name, "balance": balance}, token=self.admin_token)
        check(r.status == 201, lambda: "POST /v1/accounts %r: %r" % ({"name": name, "balance": balance}, r))
        a = r.json
        with self._lock:
            self.accounts.add(a["id"])
        return a

    def create_product(self, price, stock, name=None, c=None):
        c = c or self.client()
        name = name or self.unique("prod")
        body = {"name": name, "price": price, "stock": stock}
        r = c.request("POST", "/v1/products", body, token=self.admin_token)
        check(r.status == 201, lambda: "POST /v1/products %r: %r" % (body, r))
        p = r.json
        with self._lock:
            self.products.add(p["id"])
        return p

    def create_coupon(self, discount, quantity, code=None, c=None):
        c = c or self.client()
        code = code or self.unique("coupon")
        body = {"code": code, "discount": discount, "quantity": quantity}
        r = c.request("POST", "/v1/coupons", body, token=self.admin_token)
        check(r.status == 201, lambda: "POST /v1/coupons %r: %r" % (body, r))
        k = r.json
        with self._lock:
            self.coupons.add(k["id"])
        return k

    def create_accounts(self, n, balance_of, workers=32):
        """n accounts created concurrently; balance_of(i) gives each one's
        starting balance.  Returns them in order of i."""
        with concurrent.futures.ThreadPoolExecutor(workers) as ex:
            return list(ex.map(lambda i: self.create_account(balance_of(i)), range(n)))

    def get(self, path, token=None, c=None):
        c = c or self.client()
        r = c.request("GET", path, token=token if token is not None else self.admin_token)
        check(r.status == 200, lambda: "GET %s: %r" % (path, r))
        return r.json

    # ---- database checks
    def _scope(self, accounts=None, products=None, coupons=None):
        with self._lock:
            a = set(self.accounts if accounts is None else accounts)
            p = set(self.products if products is None else products)
            k = set(self.coupons if coupons is None else coupons)
        return id_array(a), id_array(p), id_array(k)

    def invariant_queries(self, accounts=None, products=None, coupons=None):
        A, P, K = self._scope(accounts, products, coupons)
        in_orders = "(o.account_id = ANY(%s) OR o.product_id = ANY(%s))" % (A, P)
        return [
            ("product: stock + sum(orders.quantity) = initial_stock + sum(restock.quantity), stock >= 0",
             "SELECT p.id, p.stock, p.initial_stock, coalesce(o.q, 0) AS ordered, coalesce(r.q, 0) AS restocked"
             " FROM product p"
             " LEFT JOIN (SELECT product_id, sum(quantity) q FROM orders GROUP BY product_id) o ON o.product_id = p.id"
             " LEFT JOIN (SELECT product_id, sum(quantity) q FROM restock GROUP BY product_id) r ON r.product_id = p.id"
             " WHERE p.id = ANY(%s) AND (p.stock < 0"
             "  OR p.stock + coalesce(o.q, 0) <> p.initial_stock + coalesce(r.q, 0))" % P),
            ("account: balance = sum(ledger.amount) >= 0, exactly one 'initial' ledger row",
             "SELECT a.id, a.balance, coalesce(l.s, 0) AS ledger_sum, coalesce(l.initials, 0) AS initial_rows"
             " FROM account a LEFT JOIN (SELECT account_id, sum(amount) s,"
             "  count(*) FILTER (WHERE kind = 'initial') initials FROM ledger GROUP BY account_id) l"
             "  ON l.account_id = a.id"
             " WHERE a.id = ANY(%s) AND (a.balance < 0 OR a.balance <> coalesce(l.s, 0)"
             "  OR coalesce(l.initials, 0) <> 1)" % A),
            ("ledger: kinds and signs ('initial' >= 0, 'deposit' > 0, 'order' <= 0 with an order_id)",
             "SELECT l.id, l.account_id, l.amount, l.kind, l.order_id FROM ledger l"
             " WHERE l.account_id = ANY(%s) AND NOT ("
             "  (l.kind = 'initial' AND l.order_id IS NULL AND l.amount >= 0)"
             "  OR (l.kind = 'deposit' AND l.order_id IS NULL AND l.amount > 0)"
             "  OR (l.kind = 'order' AND l.order_id IS NOT NULL AND l.amount <= 0))" % A),
            ("coupon: remaining + count(claims) = quantity, remaining >= 0",
             "SELECT c.id, c.quantity, c.remaining, coalesce(k.n, 0) AS claims FROM coupon c"
             " LEFT JOIN (SELECT coupon_id, count(*) n FROM coupon_claim GROUP BY coupon_id) k ON k.coupon_id = c.id"
             " WHERE c.id = ANY(%s) AND (c.remaining < 0 OR c.remaining + coalesce(k.n, 0) <> c.quantity)" % K),
            ("coupon_claim: at most one claim per (coupon, account)",
             "SELECT coupon_id, account_id, count(*) AS n FROM coupon_claim"
             " WHERE coupon_id = ANY(%s) OR account_id = ANY(%s)"
             " GROUP BY coupon_id, account_id HAVING count(*) > 1" % (K, A)),
            ("orders: quantity > 0, unit_price = product price, discount = coupon's (0 without),"
             " total = max(0, unit_price*quantity - discount)",
             "SELECT o.id, o.quantity, o.unit_price, p.price, o.discount, c.discount AS coupon_discount, o.total"
             " FROM orders o LEFT JOIN product p ON p.id = o.product_id LEFT JOIN coupon c ON c.id = o.coupon_id"
             " WHERE %s AND (o.quantity <= 0 OR p.id IS NULL OR o.unit_price <> p.price"
             "  OR o.discount <> CASE WHEN o.coupon_id IS NULL THEN 0 ELSE c.discount END"
             "  OR o.total <> greatest(0, o.unit_price::numeric * o.quantity - o.discount))" % in_orders),
            ("orders: each order has one 'order' ledger row of -total on its account",
             "SELECT o.id, o.total, count(l.id) AS ledger_rows, sum(l.amount) AS ledger_sum"
             " FROM orders o LEFT JOIN ledger l ON l.order_id = o.id"
             " WHERE %s GROUP BY o.id, o.total, o.account_id"
             " HAVING NOT ((count(l.id) = 1 AND sum(l.amount) = -o.total"
             "   AND bool_and(l.kind = 'order') AND bool_and(l.account_id = o.account_id))"
             "  OR (count(l.id) = 0 AND o.total = 0))" % in_orders),
            ("orders with a coupon: the account's claim of it is marked used by this order",
             "SELECT o.id, o.coupon_id, o.account_id, k.order_id AS claim_order_id"
             " FROM orders o LEFT JOIN coupon_claim k ON k.coupon_id = o.coupon_id AND k.account_id = o.account_id"
             " WHERE %s AND o.coupon_id IS NOT NULL AND (k.coupon_id IS NULL OR k.order_id IS DISTINCT FROM o.id)"
             % in_orders),
            ("coupon_claim.order_id: names an order of that account with that coupon",
             "SELECT k.coupon_id, k.account_id, k.order_id FROM coupon_claim k LEFT JOIN orders o ON o.id = k.order_id"
             " WHERE (k.coupon_id = ANY(%s) OR k.account_id = ANY(%s)) AND k.order_id IS NOT NULL"
             "  AND (o.id IS NULL OR o.coupon_id IS DISTINCT FROM k.coupon_id OR o.account_id <> k.account_id)"
             % (K, A)),
        ]

    def snapshot_query(self):
        A, P, K = self._scope()
        like = self.prefix.replace("_", "\\_") + "%"
        return (
            "SELECT jsonb_build_object("
            " 'accounts', (SELECT jsonb_agg(jsonb_build_array(id, name, balance, version) ORDER BY id)"
            "   FROM account WHERE id = ANY(%(A)s)),"
            " 'products', (SELECT jsonb_agg(jsonb_build_array(id, name, price, stock, initial_stock, version)"
            "   ORDER BY id) FROM product WHERE id = ANY(%(P)s)),"
            " 'coupons', (SELECT jsonb_agg(jsonb_build_array(id, code, discount, quantity, remaining, version)"
            "   ORDER BY id) FROM coupon WHERE id = ANY(%(K)s)),"
            " 'claims', (SELECT jsonb_agg(jsonb_build_array(coupon_id, account_id, order_id)"
            "   ORDER BY coupon_id, account_id) FROM coupon_claim WHERE coupon_id = ANY(%(K)s)"
            "   OR account_id = ANY(%(A)s)),"
            " 'orders', (SELECT count(*) FROM orders WHERE account_id = ANY(%(A)s) OR product_id = ANY(%(P)s)),"
            " 'ledger', (SELECT count(*) FROM ledger WHERE account_id = ANY(%(A)s)),"
            " 'restock', (SELECT count(*) FROM restock WHERE product_id = ANY(%(P)s)),"
            " 'named_accounts', (SELECT count(*) FROM account WHERE name LIKE '%(L)s'),"
            " 'named_products', (SELECT count(*) FROM product WHERE name LIKE '%(L)s'),"
            " 'named_coupons', (SELECT count(*) FROM coupon WHERE code LIKE '%(L)s'))"
            % {"A": A, "P": P, "K": K, "L": like})

    def violations(self, accounts=None, products=None, coupons=None):
        qs = self.invariant_queries(accounts, products, coupons)
        results = sql_json(*[q for _, q in qs])
        return [(name, rows) for (name, _), rows in zip(qs, results) if rows]

    def check_invariants(self, accounts=None, products=None, coupons=None, what=""):
        """The API.md invariants over this test's entities (or the ids given).
        Returns the number of entities checked."""
        bad = self.violations(accounts, products, coupons)
        if bad:
            fail("invariants broken%s:\n%s" % (
                " (" + what + ")" if what else "",
                "\n".join("  %s: %s" % (n, json.dumps(rows)[:2000]) for n, rows in bad)))
        with self._lock:
            return (len(self.accounts if accounts is None else accounts)
                    + len(self.products if products is None else products)
                    + len(self.coupons if coupons is None else coupons))

    def snapshot_and_invariants(self):
        """One psql run: the snapshot of this test's rows plus the invariants."""
        qs = self.invariant_queries()
        lines = psql(self.snapshot_query() + ";\n" + "".join(
            "SELECT coalesce(jsonb_agg(t), '[]'::jsonb) FROM (%s) t;\n" % q for _, q in qs))
        check(len(lines) == 1 + len(qs), "psql: %d lines" % len(lines))
        snap = json.loads(lines[0])
        bad = [(n, json.loads(l)) for (n, _), l in zip(qs, lines[1:]) if json.loads(l)]
        return snap, bad


# ---------------------------------------------------------------- load -----

def hammer_deposits(addr, acct, strategy, clients, per_client, deadline_s):
    """`clients` threads, each on its own keep-alive connection to addr,
    make `per_client` deposits of 1 to one account, starting together.
    Returns (statuses, retries, elapsed, samples of odd responses).
    strategy "mixed": client i uses STRATEGIES[i % 4], all on the same row
    at once."""
    path = "/v1/accounts/%d/deposits" % acct["id"]
    started = []
    barrier = threading.Barrier(clients, action=lambda: started.append(time.monotonic()),
                                timeout=60 * SLOW)

    def worker(i):
        hdr = {"Pgtx-Strategy": STRATEGIES[i % len(STRATEGIES)] if strategy == "mixed" else strategy}
        c = Client(*addr)
        statuses, retries, odd = collections.Counter(), 0, []
        try:
            r = c.request("GET", "/healthz")  # connect before the start line
            check(r.status == 200, lambda: "GET /healthz: %r" % r)
            barrier.wait()
            deadline = started[0] + deadline_s
            for _ in range(per_client):
                if time.monotonic() > deadline:
                    fail("%s round exceeded %.0f s" % (strategy, deadline_s))
                r = c.request("POST", path, {"amount": 1}, token=acct["token"], headers=hdr)
                statuses[r.status] += 1
                if r.status == 200 and isinstance(r.retries, int):
                    retries += r.retries
                else:
                    if len(odd) < 3:
                        odd.append(r)
                    if r.status == 200:
                        odd.append("200 with Pgtx-Retries %r" % r.headers.get("pgtx-retries"))
        finally:
            c.close()
        return statuses, retries, odd

    with concurrent.futures.ThreadPoolExecutor(clients) as ex:
        results = list(ex.map(worker, range(clients)))
    elapsed = time.monotonic() - started[0]
    statuses, retries, odd = collections.Counter(), 0, []
    for s, r, o in results:
        statuses.update(s)
        retries += r
        odd += o
    return statuses, retries, elapsed, odd


# ------------------------------------------------------------- unittest -----

BINARY_ENV = "PGTX_SHOP_BINARY"
_reported = []      # the exit hook has printed the answers line
_test_modules = []  # modules whose classes ran, for that line


def _report_answers(name):
    _reported.append(name)
    log("%s: %d answers checked against %s (%d route and status pairs)"
        % (name, sum(OPENAPI.checked.values()), OPENAPI.name, len(OPENAPI.checked)))


def _at_exit():
    _psql.close()
    if not _reported and _test_modules:
        _report_answers("+".join(_test_modules))


atexit.register(_at_exit)


def _terminated(signum, _frame):
    # ctest's timeout: fail the running test, so that tearDownClass still
    # stops the servers
    raise TestFailure("terminated by signal %d" % signum)


if threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGTERM, _terminated)


def wait_until(predicate, deadline, what, interval=0.05, must=True):
    """Polls predicate() until it returns something true (returned) or
    `deadline` seconds pass: then a TestFailure naming `what` (a string or a
    function of the last value), or with must=False the last value, for a
    caller that prints a figure before its own check.  The caller scales
    the deadline with SLOW where it stands for the server's speed."""
    end = time.monotonic() + deadline
    polls = 0
    while True:
        value = predicate()
        polls += 1
        if value:
            return value
        left = end - time.monotonic()
        if left <= 0:
            if not must:
                return value
            fail("%s: not within %.1f s (%d polls; last %r)"
                 % (what(value) if callable(what) else what, deadline, polls, value))
        time.sleep(min(interval, left))


def binary_from_env():
    binary = os.environ.get(BINARY_ENV, "")
    if not binary:
        fail("%s is not set: give the pgtx-shop binary to test, e.g. %s=build/pgtx-shop"
             % (BINARY_ENV, BINARY_ENV))
    if not os.access(binary, os.X_OK):
        fail("%s=%s is not an executable" % (BINARY_ENV, binary))
    return binary


class ShopTestCase(unittest.TestCase):
    """One Harness per class.  SERVER_EXTRA: flags of the class's server;
    SERVER = False: the class starts its own (setUpServers)."""

    SERVER = True
    SERVER_EXTRA = ()
    SERVERS_PER_TEST = False  # each test starts its own servers (no class server)
    maxDiff = None
    h = None
    srv = None

    @classmethod
    def setUpClass(cls):
        mod = cls.__module__.rsplit(".", 1)[-1]
        if mod == "__main__":  # python3 test_x.py
            mod = os.path.splitext(os.path.basename(sys.argv[0]))[0]
        if mod not in _test_modules:
            _test_modules.append(mod)
        # unittest's runner turns ResourceWarning on: a socket of a test's
        # own left to the GC is not this harness's concern
        warnings.simplefilter("ignore", ResourceWarning)
        cls.h = Harness(binary_from_env(), "%s-%s" % (mod, cls.__name__))
        try:
            if cls.SERVER and not cls.SERVERS_PER_TEST:
                cls.srv = cls.h.start_server(extra=list(cls.SERVER_EXTRA))
            cls.setUpServers()
            cls._class_servers = len(cls.h.servers)
        except BaseException:
            cls._print_logs("setUpClass failed")
            cls._stop_servers(quiet=True)
            raise

    @classmethod
    def setUpServers(cls):
        """A hook: more servers, or other class-wide set-up."""

    @classmethod
    def tearDownClass(cls):
        cls.h.close_clients()
        errors = cls._stop_servers()
        if errors:
            cls._print_logs("a server did not stop cleanly")
            fail("; ".join(errors))
        for s in cls.h.servers:
            for path in s.log_paths:
                try:
                    os.unlink(path)
                except OSError:
                    pass

    @classmethod
    def _stop_servers(cls, quiet=False):
        errors = []
        for s in cls.h.servers if cls.h else ():
            if s.alive():
                try:
                    took = s.stop()
                    if not quiet:
                        log("%s stopped on SIGTERM in %.2f s" % (s.name, took))
                except TestFailure as e:
                    errors.append(str(e))
        if cls.h and cls.h.failures:
            errors += cls.h.failures
        return [] if quiet else errors

    @classmethod
    def _print_logs(cls, why, since=0):
        """The stderr tails of the class's own servers and of those started
        from server number `since` on (one test's)."""
        servers = cls.h.servers if cls.h else []
        own = getattr(cls, "_class_servers", len(servers))
        for s in servers[:own] + servers[max(since, own):]:
            if s.log_path:
                print("--- %s stderr (%s, tail; %s) ---\n%s" % (s.name, s.log_path, why, s.log_tail(15)),
                      file=sys.stderr, flush=True)

    def run(self, result=None):
        bad = (lambda: len(result.failures) + len(result.errors)) if result is not None else (lambda: 0)
        n = bad()
        t0 = time.monotonic()
        first = len(self.h.servers) if self.h else 0
        out = super().run(result)
        if bad() > n:
            self._print_logs("%s failed" % self.id(), since=first)
        elif result is not None and os.environ.get("PGTX_E2E_TIMES"):
            log("%s: %.2f s" % (self.id(), time.monotonic() - t0))
        return out

    def setUp(self):
        self._first_own_server = len(self.h.servers)
        if self.SERVERS_PER_TEST:
            self.h.default_addr = None  # the test's first server is its default

    def tearDown(self):
        # servers this test started and left running: stopped now, each
        # must exit 0 on SIGTERM
        errors = []
        for s in self.h.servers[self._first_own_server:]:
            if s.alive():
                try:
                    s.stop()
                except TestFailure as e:
                    errors.append(str(e))
        # failures a helper recorded on the harness (h.failures) belong to
        # the test that just ran
        if self.h.failures:
            errors += self.h.failures
            self.h.failures[:] = []
        if errors:
            fail("\n".join(errors))

    # ---- a server of one test: stopped (exit 0 required) in tearDown
    def start_server(self, listen="127.0.0.1:0", extra=(), name=None, database=None):
        return self.h.start_server(listen, extra, name, database)

    def client(self, addr=None):
        return self.h.client(addr)

    # ---- entities (admin token; tracked for the invariant check)
    def account(self, balance=1000, **kw):
        return self.h.create_account(balance, **kw)

    def product(self, price=100, stock=10, **kw):
        return self.h.create_product(price, stock, **kw)

    def coupon(self, discount=10, quantity=5, **kw):
        return self.h.create_coupon(discount, quantity, **kw)

    def check_invariants(self, **kw):
        return self.h.check_invariants(**kw)


class PairCase(ShopTestCase):
    """Two processes sharing one port (--reuse-port) and a pool of POOL
    client threads (`cls.ex`), both the class's.  Subclasses add their own
    class set-up in setUpPair and their end-of-class checks in tearDownPair,
    which run before the servers stop."""

    SERVER = False
    POOL = 8

    @classmethod
    def setUpServers(cls):
        cls.pair = cls.h.start_pair(extra=["--reuse-port"])
        cls.ex = concurrent.futures.ThreadPoolExecutor(cls.POOL)
        cls.setUpPair()

    @classmethod
    def setUpPair(cls):
        """A hook: entities of the class, warming the pool."""

    @classmethod
    def tearDownPair(cls):
        """A hook: checks at the end of the class."""

    @classmethod
    def tearDownClass(cls):
        try:
            if getattr(cls, "ex", None):
                cls.ex.shutdown()
            cls.tearDownPair()
        finally:
            super().tearDownClass()


def main(argv=None):
    """`python3 test_x.py [BINARY] [unittest arguments]`: the binary may be
    given as the first argument instead of $PGTX_SHOP_BINARY."""
    argv = list(sys.argv if argv is None else argv)
    if len(argv) > 1 and os.path.isfile(argv[1]) and os.access(argv[1], os.X_OK):
        os.environ[BINARY_ENV] = os.path.abspath(argv.pop(1))
    unittest.main(module="__main__", argv=argv, verbosity=2)
