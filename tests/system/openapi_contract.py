# SPDX-License-Identifier: Apache-2.0
"""The platform API's contract (api/openapi.yaml), for the system suites to check answers against.

`load()` reads the document once per process (PyYAML) and returns the shared `Contract`.
`Contract.check(method, path, status, headers, body)` validates one answer:

- the operation is found from the method and the path (literal templates before templated
  ones, as the servers' routers do); a path the document does not describe (/metrics, /readyz,
  an unknown route) is not checked;
- the status must be one the operation documents (an undocumented status fails);
- without documented content the body must be empty; with it, the Content-Type must be one of
  the documented media types, and a JSON body (any `...json` type) is validated against its
  schema: JSON Schema Draft 2020-12 with python3-jsonschema, `$ref`s resolved inside the
  document, formats `uuid` and `date-time` (RFC 3339) checked;
- documented response headers are validated when present, and must be present when the
  document marks them `required: true` (the artifact's Digest and ETag on a 200 too);
- when the answer is a success (2xx) and the request carried a body of a media type the
  operation documents (JSON, or a form), that body must validate against the request schema:
  a schema that refuses what the server accepts is as wrong as one that accepts what it
  refuses.

`check_response(r)` does it for a `requests.Response`, `check_raw(method, path, raw)` for
conftest's raw-socket `RawResponse`, and `attach(session)` installs a response hook on a
`requests.Session` so that every answer it receives is checked; with `known=True` a path the
document does not describe fails instead of passing unchecked. Failures are pytest failures
naming the operation, the status and the first schema errors. `checked` counts the answers
validated, `seen` the (method, template, status) triples; with LOOM_CONTRACT_REPORT=FILE set,
the triples seen by the process are written to FILE (JSON) at exit.
"""

import atexit
import datetime
import json
import os
import re
import urllib.parse

import jsonschema
import pytest
import yaml
from requests.structures import CaseInsensitiveDict

__all__ = ["Contract", "load", "OPENAPI", "METHODS"]

HERE = os.path.dirname(os.path.abspath(__file__))
OPENAPI = os.path.join(os.path.dirname(os.path.dirname(HERE)), "api", "openapi.yaml")
METHODS = ("get", "put", "post", "patch", "delete", "head", "options", "trace")

_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")

FORMATS = jsonschema.FormatChecker()


@FORMATS.checks("date-time", raises=ValueError)
def _date_time(value):
    if not isinstance(value, str):
        return True
    if not _RFC3339.match(value):
        return False
    datetime.datetime.fromisoformat(re.sub(r"[Zz]$", "+00:00", value).replace("t", "T"))
    return True


class Contract:
    def __init__(self, path=OPENAPI):
        with open(path) as f:
            self.doc = yaml.safe_load(f)
        assert self.doc["openapi"].startswith("3.1"), self.doc["openapi"]
        self.resolver = jsonschema.RefResolver(base_uri="", referrer=self.doc)
        self.ops = []
        for tpl, item in self.doc["paths"].items():
            rx = re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", tpl) + "$")
            for m in METHODS:
                if m in item:
                    self.ops.append((m.upper(), rx, tpl, item[m]))
        # literal templates first, as the routers do
        self.ops.sort(key=lambda o: o[2].count("{"))
        self.checked = 0
        self.seen = {}

    def deref(self, obj):
        while isinstance(obj, dict) and "$ref" in obj:
            ref = obj["$ref"]
            assert ref.startswith("#/"), ref
            node = self.doc
            for part in ref[2:].split("/"):
                node = node[part.replace("~1", "/").replace("~0", "~")]
            obj = node
        return obj

    def operation(self, method, path):
        method = "GET" if method == "HEAD" else method
        for m, rx, tpl, op in self.ops:
            if m == method and rx.match(path):
                return tpl, op
        return None, None

    def header_value(self, schema, text):
        """A header's text as the value its schema describes (OpenAPI's simple style):
        an integer or a number when the schema says so and the text is one."""
        types = self.deref(schema).get("type")
        types = types if isinstance(types, list) else [types]
        if "integer" in types and re.fullmatch(r"-?[0-9]+", text.strip()):
            return int(text)
        if "number" in types:
            try:
                return float(text)
            except ValueError:
                pass
        return text

    def errors(self, schema, instance):
        """The schema errors of instance, most specific first (empty when it validates)."""
        v = jsonschema.Draft202012Validator(schema, resolver=self.resolver,
                                            format_checker=FORMATS)
        return sorted(v.iter_errors(instance), key=lambda e: (list(e.path), -len(e.context)))

    def validate(self, schema, instance, where):
        errors = self.errors(schema, instance)
        if errors:
            msgs = "\n".join(f"  at {list(e.path)}: {e.message[:300]}" for e in errors[:5])
            pytest.fail(f"{where}: does not match api/openapi.yaml:\n{msgs}\n"
                        f"value: {json.dumps(instance)[:2000]}", pytrace=False)

    def check(self, method, path, status, headers, body, request=None, known=False):
        """Validate one answer. headers: a mapping (any case); body: bytes. request, when
        given, is (Content-Type, body bytes) of the request, checked on a 2xx. known: the
        path must be one the document describes (else it is let through unchecked)."""
        headers = CaseInsensitiveDict(dict(headers or {}))
        path = path.split("?", 1)[0]
        tpl, op = self.operation(method, path)
        if op is None:
            # not a path of the platform API (/metrics, /readyz, unknown routes)
            assert not known, f"{method} {path}: no operation of api/openapi.yaml matches"
            return
        where = f"{method} {path} ({tpl}) -> {status}"
        responses = op["responses"]
        assert str(status) in responses, \
            f"{where}: status {status} is not documented: {bytes(body or b'')[:300]!r}"
        resp = self.deref(responses[str(status)])
        content = resp.get("content")
        ctype = (headers.get("content-type") or "").split(";")[0].strip().lower()
        if not content:
            assert not body, f"{where}: a body where none is documented: {body[:200]!r}"
        else:
            assert ctype in content, f"{where}: Content-Type {ctype!r} not in {list(content)}"
            schema = content[ctype].get("schema", {})
            if ctype.endswith("json") and method != "HEAD":
                try:
                    instance = json.loads(body)
                except ValueError as e:
                    pytest.fail(f"{where}: the body is not JSON ({e}): {body[:300]!r}",
                                pytrace=False)
                self.validate(schema, instance, f"{where} body")
        for name, h in (resp.get("headers") or {}).items():
            h = self.deref(h)
            val = headers.get(name)
            if val is None:
                must = h.get("required") or (name.lower() in ("digest", "etag") and status == 200)
                assert not must, f"{where}: header {name} missing"
                continue
            if "schema" in h:
                self.validate(h["schema"], self.header_value(h["schema"], val),
                              f"{where} header {name}")
        if request is not None and 200 <= int(status) < 300:
            self.check_request(op, where, *request)
        self.checked += 1
        key = (method, tpl, int(status))
        self.seen[key] = self.seen.get(key, 0) + 1

    def check_request(self, op, where, ctype, body):
        """A body the server accepted must be one the request schema accepts."""
        rb = self.deref(op.get("requestBody") or {})
        content = rb.get("content") or {}
        ctype = (ctype or "").split(";")[0].strip().lower()
        if not isinstance(body, (bytes, str)) or not body or ctype not in content or \
                "schema" not in content[ctype]:
            return
        if isinstance(body, str):
            body = body.encode()
        if ctype.endswith("json"):
            try:
                instance = json.loads(body)
            except ValueError:
                return  # the server accepted something that is not JSON: not ours to judge
        elif ctype == "application/x-www-form-urlencoded":
            instance = dict(urllib.parse.parse_qsl(body.decode("utf-8", "replace"),
                                                   keep_blank_values=True))
        else:
            return
        self.validate(content[ctype]["schema"], instance, f"{where}: the accepted request body")

    def check_response(self, r, known=False):
        """Validate a requests.Response (the request it answers included)."""
        req = r.request
        self.check(req.method, req.path_url, r.status_code, r.headers, r.content,
                   request=(req.headers.get("content-type"), req.body), known=known)
        return r

    def check_raw(self, method, path, raw, known=False):
        """Validate conftest's RawResponse (headers as a list of (name, value))."""
        self.check(method, path, raw.status, {k: v for k, v in raw.headers}, raw.body,
                   known=known)
        return raw

    def attach(self, session, known=False):
        """Check every answer this requests.Session receives."""
        session.hooks.setdefault("response", []).append(
            lambda r, *args, **kwargs: self.check_response(r, known=known))
        return session


_CONTRACT = None


def load():
    """The shared Contract: the document is read once per process."""
    global _CONTRACT
    if _CONTRACT is None:
        _CONTRACT = Contract()
        report = os.environ.get("LOOM_CONTRACT_REPORT")
        if report:
            atexit.register(_write_report, _CONTRACT, report)
    return _CONTRACT


def _write_report(contract, path):
    rows = sorted([m, t, s, n] for (m, t, s), n in contract.seen.items())
    with open(path, "w") as f:
        json.dump({"checked": contract.checked, "seen": rows}, f, indent=1)
