#!/usr/bin/env python3
"""test_openapi - docs/openapi.yaml is a sound OpenAPI 3.1 document of the
server that serves it.

1. The document: `openapi: 3.1.0`; every schema passes the JSON Schema
   Draft 2020-12 meta-schema; every $ref resolves (to the kind of object
   its place calls for); every {name} of a path template is a declared,
   required path parameter and every declared one is in the template;
   operationIds are present and unique; every operation has responses,
   each with a description, and every JSON body a schema; every error
   answer is the error shape; the statuses any request can get (400, 413,
   503) are documented on every operation, every 503 requires Retry-After,
   and every write's successes require Pgtx-Retries.
2. The document against the source: its paths and methods are exactly the
   route table of src/shop/app.c plus the two paths http.c answers itself;
   every error code it names is one the source sends, and every
   (status, code) the source sends directly is documented under that
   status.
3. The served document: GET /openapi.yaml answers it byte for byte as
   application/yaml; HEAD answers the same headers without the body;
   another method is 405 with Allow: GET, HEAD.  (These answers, like every
   answer of every e2e test, are also checked against the document by
   shoplib.)

usage: PGTX_SHOP_BINARY=build/pgtx-shop python3 -m unittest test_openapi (from tests/shop)
"""

import os
import re
import sys

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import shoplib  # noqa: E402
from shoplib import check, fail, log  # noqa: E402

import jsonschema  # noqa: E402  (shoplib has told the user how to get it)

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
SRC = os.path.join(ROOT, "src", "shop")
METHODS = shoplib.OpenApi.METHODS
# Statuses any request can get before routing: ambiguous framing, a body
# over --max-body, a full queue.
ALWAYS = ("400", "413", "503")


class Doc:
    def __init__(self, oas):
        self.oas = oas
        self.doc = oas.doc
        self.problems = []

    def bad(self, msg):
        self.problems.append(msg)

    def operations(self):
        for template, item in self.doc.get("paths", {}).items():
            for m in METHODS:
                if m in item:
                    yield template, m, item[m]

    # ---- $ref
    def pointer(self, ref):
        target = self.doc
        for part in ref[2:].split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(target, (dict, list)):
                return None
            if isinstance(target, list):
                if not part.isdigit() or int(part) >= len(target):
                    return None
                target = target[int(part)]
            elif part in target:
                target = target[part]
            else:
                return None
        return target

    def check_refs(self, node, where="#"):
        """Every $ref is local and resolves; returns how many were seen."""
        n = 0
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str):
                n += 1
                if not ref.startswith("#/"):
                    self.bad("%s: $ref %r is not a local JSON pointer" % (where, ref))
                elif self.pointer(ref) is None:
                    self.bad("%s: $ref %r does not resolve" % (where, ref))
            for k, v in node.items():
                n += self.check_refs(v, "%s/%s" % (where, k))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                n += self.check_refs(v, "%s/%d" % (where, i))
        return n

    def ref_kind(self, obj, kind, where):
        """An object in a place for `kind` (responses, parameters...): a $ref
        there must point into components/<kind>."""
        if isinstance(obj, dict) and "$ref" in obj:
            if not obj["$ref"].startswith("#/components/%s/" % kind):
                self.bad("%s: $ref %r in a place for %s" % (where, obj["$ref"], kind))
        return self.oas.resolve(obj)

    # ---- schemas
    def schemas(self):
        """(where, schema) of every Schema Object of the document."""
        for name, s in self.doc.get("components", {}).get("schemas", {}).items():
            yield "#/components/schemas/" + name, s
        for where, p in self.all_parameters():
            if "schema" in p:
                yield where + "/schema", p["schema"]
        for where, h in self.all_headers():
            if "schema" in h:
                yield where + "/schema", h["schema"]
        for where, content in self.all_content():
            for mt, media in content.items():
                if "schema" in media:
                    yield "%s/content/%s/schema" % (where, mt), media["schema"]

    def all_parameters(self):
        comps = self.doc.get("components", {}).get("parameters", {})
        for name, p in comps.items():
            yield "#/components/parameters/" + name, p
        for template, item in self.doc.get("paths", {}).items():
            for i, p in enumerate(item.get("parameters", [])):
                if "$ref" not in p:
                    yield "paths/%s/parameters/%d" % (template, i), p
            for m in METHODS:
                for i, p in enumerate(item.get(m, {}).get("parameters", [])):
                    if "$ref" not in p:
                        yield "paths/%s/%s/parameters/%d" % (template, m, i), p

    def all_responses(self):
        for name, r in self.doc.get("components", {}).get("responses", {}).items():
            yield "#/components/responses/" + name, r
        for template, m, op in self.operations():
            for status, r in op.get("responses", {}).items():
                if "$ref" not in r:
                    yield "paths/%s/%s/responses/%s" % (template, m, status), r
        for kind, section in self.doc.get("x-pgtx-unrouted", {}).items():
            for status, r in section.get("responses", {}).items():
                if "$ref" not in r:
                    yield "x-pgtx-unrouted/%s/responses/%s" % (kind, status), r

    def all_headers(self):
        for name, h in self.doc.get("components", {}).get("headers", {}).items():
            yield "#/components/headers/" + name, h
        for where, r in self.all_responses():
            for name, h in r.get("headers", {}).items():
                if "$ref" not in h:
                    yield "%s/headers/%s" % (where, name), h

    def all_content(self):
        for where, r in self.all_responses():
            if "content" in r:
                yield where, r["content"]
        for name, b in self.doc.get("components", {}).get("requestBodies", {}).items():
            yield "#/components/requestBodies/" + name, b.get("content", {})
        for template, m, op in self.operations():
            b = op.get("requestBody")
            if b is not None and "$ref" not in b:
                yield "paths/%s/%s/requestBody" % (template, m), b.get("content", {})

    def check_schemas(self):
        n = 0
        for where, s in self.schemas():
            n += 1
            try:
                jsonschema.Draft202012Validator.check_schema(s)
            except jsonschema.exceptions.SchemaError as e:
                self.bad("%s: not a Draft 2020-12 schema: %s" % (where, e.message))
        return n

    # ---- operations
    def check_path_parameters(self):
        for template, item in self.doc.get("paths", {}).items():
            named = re.findall(r"\{([^}]+)\}", template)
            if len(named) != len(set(named)):
                self.bad("%s: a template name appears twice" % template)
            shared = [self.ref_kind(p, "parameters", template) for p in item.get("parameters", [])]
            for m in METHODS:
                if m not in item:
                    continue
                own = [self.ref_kind(p, "parameters", "%s %s" % (m, template))
                       for p in item[m].get("parameters", [])]
                params = {(p.get("in"), p.get("name")): p for p in shared + own}
                path_params = {name: p for (where, name), p in params.items() if where == "path"}
                for name in named:
                    p = path_params.get(name)
                    if p is None:
                        self.bad("%s %s: {%s} is not a declared path parameter" % (m.upper(), template, name))
                    elif p.get("required") is not True:
                        self.bad("%s %s: path parameter %s is not required: true" % (m.upper(), template, name))
                for name in path_params:
                    if name not in named:
                        self.bad("%s %s: path parameter %s is not in the template" % (m.upper(), template, name))
                for (where, name), p in params.items():
                    if where not in ("path", "query", "header", "cookie"):
                        self.bad("%s %s: parameter %s is in %r" % (m.upper(), template, name, where))
                    if "schema" not in p and "content" not in p:
                        self.bad("%s %s: parameter %s has no schema" % (m.upper(), template, name))

    def is_error_schema(self, schema):
        """The error shape: the Error schema, by $ref or narrowed."""
        return isinstance(schema, dict) and schema.get("$ref") == "#/components/schemas/Error"

    def check_operations(self):
        ids = {}
        for template, m, op in self.operations():
            what = "%s %s" % (m.upper(), template)
            oid = op.get("operationId")
            if not oid:
                self.bad("%s: no operationId" % what)
            elif oid in ids:
                self.bad("%s: operationId %s is also %s's" % (what, oid, ids[oid]))
            else:
                ids[oid] = what
            responses = op.get("responses") or {}
            if not responses:
                self.bad("%s: no responses" % what)
            for status in ALWAYS:
                if status not in responses:
                    self.bad("%s: %s is not documented, and any request can get it" % (what, status))
            if m == "post":
                names = {self.oas.resolve(p).get("name") for p in op.get("parameters", [])}
                if "Pgtx-Strategy" not in names:
                    self.bad("%s: a write without the Pgtx-Strategy parameter" % what)
            if "security" not in op:
                self.bad("%s: no security requirement (use [] for anyone)" % what)
            for req in op.get("security", []):
                for scheme in req:
                    if scheme not in self.doc.get("components", {}).get("securitySchemes", {}):
                        self.bad("%s: security scheme %s is not defined" % (what, scheme))
            body = op.get("requestBody")
            if body is not None:
                body = self.ref_kind(body, "requestBodies", what)
                if "application/json" not in body.get("content", {}):
                    self.bad("%s: the request body is not application/json" % what)
            for status, resp in responses.items():
                self.check_response(what, m, status, self.ref_kind(resp, "responses", what))
        for kind, section in self.doc.get("x-pgtx-unrouted", {}).items():
            for status, resp in section.get("responses", {}).items():
                self.check_response("x-pgtx-unrouted." + kind, "any", status,
                                    self.ref_kind(resp, "responses", kind))
        return len(ids)

    def check_response(self, what, method, status, resp):
        where = "%s %s" % (what, status)
        if not re.fullmatch(r"[1-5](\d\d|XX)|default", str(status)):
            self.bad("%s: %r is not a status" % (where, status))
        if not resp.get("description"):
            self.bad("%s: no description" % where)
        headers = {k.lower(): self.ref_kind(h, "headers", where) for k, h in resp.get("headers", {}).items()}
        for name, h in headers.items():
            if "schema" not in h:
                self.bad("%s: header %s has no schema" % (where, name))
        content = resp.get("content") or {}
        if not content:
            self.bad("%s: no content (every answer has a body)" % where)
        for mt, media in content.items():
            if "schema" not in media:
                self.bad("%s: %s has no schema" % (where, mt))
        if str(status)[0] in "45":
            schema = content.get("application/json", {}).get("schema")
            if not self.is_error_schema(schema):
                self.bad("%s: an error answer whose schema is not the Error shape" % where)
        if str(status) == "503" and not headers.get("retry-after", {}).get("required"):
            self.bad("%s: a 503 without a required Retry-After" % where)
        if str(status) == "405" and not headers.get("allow", {}).get("required"):
            self.bad("%s: a 405 without a required Allow" % where)
        if method == "post" and str(status)[0] == "2" and not headers.get("pgtx-retries", {}).get("required"):
            self.bad("%s: a write's success without a required Pgtx-Retries" % where)

    # ---- against the source
    def documented_codes(self):
        """status -> codes the document names for it."""
        out = {}
        for template, m, op in self.operations():
            for status, r in op.get("responses", {}).items():
                out.setdefault(str(status), set()).update(self.codes_of(self.oas.resolve(r)))
        for section in self.doc.get("x-pgtx-unrouted", {}).values():
            for status, r in section.get("responses", {}).items():
                out.setdefault(str(status), set()).update(self.codes_of(self.oas.resolve(r)))
        return out

    @staticmethod
    def codes_of(resp):
        schema = resp.get("content", {}).get("application/json", {}).get("schema", {})
        try:
            return set(schema["properties"]["error"]["properties"]["code"]["enum"])
        except (KeyError, TypeError):
            return set()

    def check_source(self):
        text = ""
        for name in sorted(os.listdir(SRC)):
            if name.endswith(".c"):
                with open(os.path.join(SRC, name), encoding="utf-8") as f:
                    text += f.read()
        # routes: app.c's table and the paths http.c answers itself
        routes = set(re.findall(r'ROUTE\("([A-Z]+)",\s*"([^"]+)"', text))
        routes |= {("GET", p) for p in re.findall(r'strcmp\(job->req\.path,\s*"([^"]+)"\)', text)}
        documented = {(m.upper(), t) for t, m, _ in self.operations()}
        for m, t in sorted(routes - documented):
            self.bad("the server routes %s %s, the document does not" % (m, t))
        for m, t in sorted(documented - routes):
            self.bad("the document has %s %s, the server routes no such thing" % (m, t))
        # error codes: what the document names is sent somewhere...
        codes = self.documented_codes()
        for status, names in sorted(codes.items()):
            for code in sorted(names):
                if '"%s"' % code not in text:
                    self.bad("the document's %s %s is nowhere in src/shop" % (status, code))
        # ...and what the source sends with a literal status is documented
        sent = set(re.findall(r'\b(?:reply_error|fault_abort|set_error|answer_now)\([^;]*?\b([1-5]\d\d),\s*"([a-z_]+)"',
                              text, re.S))
        sent |= {("503", c) for c in re.findall(r'reply_unavailable\([^,]+,\s*"([a-z_]+)"', text)}
        for status, code in sorted(sent):
            if code not in codes.get(status, set()):
                self.bad("the server sends %s %s, the document does not name it under %s" % (status, code, status))
        return len(routes), len(sent)


class OpenApiDocument(shoplib.ShopTestCase):
    SERVER = False

    def test_document(self):
        # the document itself, and against the source's routes and codes
        oas = shoplib.OPENAPI
        d = Doc(oas)
        doc = oas.doc
        check(doc.get("openapi") == "3.1.0", lambda: "openapi is %r, want 3.1.0" % doc.get("openapi"))
        check(isinstance(doc.get("info"), dict) and doc["info"].get("title") and doc["info"].get("version"),
              "info.title and info.version are required")
        check(doc.get("paths"), "no paths")
        refs = d.check_refs(doc)
        n_schemas = d.check_schemas()
        d.check_path_parameters()
        n_ops = d.check_operations()
        n_routes, n_sent = d.check_source()
        log("document: %d operations, %d schemas checked against Draft 2020-12, %d $refs resolved; "
            "%d routes of the source, %d (status, code) pairs it sends; %d problem(s)"
            % (n_ops, n_schemas, refs, n_routes, n_sent, len(d.problems)))
        check(not d.problems, lambda: "%s: %d problem(s):\n  %s" % (oas.name, len(d.problems), "\n  ".join(d.problems)))


class OpenApiServed(shoplib.ShopTestCase):
    def test_served_as_the_file(self):
        oas = shoplib.OPENAPI
        s = self.srv
        c = self.h.client()
        r = c.request("GET", "/openapi.yaml")
        check(r.status == 200, lambda: "GET /openapi.yaml: %r" % r)
        check(r.headers.get("content-type") == "application/yaml",
              lambda: "GET /openapi.yaml: Content-Type %r, want application/yaml" % r.headers.get("content-type"))
        if r.body != oas.raw:
            at = next((i for i, (a, b) in enumerate(zip(r.body, oas.raw)) if a != b),
                      min(len(r.body), len(oas.raw)))
            fail("GET /openapi.yaml differs from %s: %d bytes served, %d in the file, first difference at byte %d"
                 " (served %r, file %r)" % (oas.name, len(r.body), len(oas.raw), at,
                                            r.body[at:at + 40], oas.raw[at:at + 40]))
        r = c.request("HEAD", "/openapi.yaml")
        check(r.status == 200 and not r.body and r.headers.get("content-type") == "application/yaml"
              and r.headers.get("content-length") == str(len(oas.raw)),
              lambda: "HEAD /openapi.yaml: %r %s" % (r, r.headers))
        for method in ("POST", "PUT", "DELETE"):
            r = c.request(method, "/openapi.yaml", {} if method != "DELETE" else None)
            check(r.status == 405 and r.error_code == "method_not_allowed" and r.headers.get("allow") == "GET, HEAD",
                  lambda: "%s /openapi.yaml: want 405 with Allow: GET, HEAD, got %r %s" % (method, r, r.headers))
        for path in ("/openapi.yaml/", "/openapi.json", "/openapi.yaml/x"):
            r = c.request("GET", path)
            check(r.status == 404 and r.error_code == "not_found", lambda: "GET %s: want 404, got %r" % (path, r))
        log("served: GET /openapi.yaml is the file, %d bytes, application/yaml; HEAD the same headers; "
            "POST, PUT, DELETE 405 with Allow: GET, HEAD (server on port %d)" % (len(oas.raw), s.port))


if __name__ == "__main__":
    shoplib.main()
