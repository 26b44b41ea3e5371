# SPDX-License-Identifier: Apache-2.0
"""Structural checks of api/openapi.yaml, the platform API's contract (no server is started).

The document must stay a valid OpenAPI 3.1 document that the system suites can validate
answers against (openapi_contract.py):

- it is plain JSON once parsed (string keys, no YAML dates or other non-JSON values), so that
  PyYAML here and the gateway's libyaml conversion (/openapi.json) read the same thing;
- every `$ref` is local and resolves; every schema is a valid JSON Schema Draft 2020-12 schema;
- every operation has an operationId (unique), declared tags, responses with descriptions and
  valid status codes, security requirements naming declared schemes, and parameters that match
  its path template; every example validates against its schema;
- every route a service registers (the route tables of services/*/*.c that git tracks, the
  gateway's own handlers in its GW_ROUTE_LIST; inference's KServe routes and the echo example
  service excepted) has a path item with that method, and every documented operation is served
  by some service and reachable through the gateway (but for the paths listed as not routed);
- the trainer's job spec and identity's request schemas accept and refuse what the services do
  for what can be judged without a dataset or a store (the same cases as their suites).
"""

import json
import os
import re
import subprocess

import jsonschema
import pytest

import openapi_contract

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
HTTP_METHODS = ("get", "put", "post", "patch", "delete", "head", "options", "trace")

# Route tables not held to this document, and why.
EXCEPT_TABLES = {
    "echo_routes": "the example service: not behind the gateway, not part of the platform API",
}
# Registered routes left out of the document, and why.
UNDOCUMENTED = {
    ("POST", "/v2/repository/{}/index"): "named repositories: answered 400, not supported",
    ("POST", "/v2/repository/{}/models/{}/load"): "named repositories: answered 400",
    ("POST", "/v2/repository/{}/models/{}/unload"): "named repositories: answered 400",
}
# Documented operations the gateway does not route, and why.
NOT_ROUTED = {
    ("GET", "/.well-known/oauth-authorization-server"):
        "identity's RFC 8414 metadata: served by identity only",
}
# The trainer's and identity's routes, as their route tables must keep them (a route added or
# removed there is a change to this document too).
TRAINER_ROUTES = {
    ("POST", "/api/v1/datasets"), ("GET", "/api/v1/datasets"),
    ("GET", "/api/v1/datasets/{}"), ("POST", "/api/v1/training-jobs"),
    ("GET", "/api/v1/training-jobs"), ("GET", "/api/v1/training-jobs/{}"),
    ("POST", "/api/v1/training-jobs/{}/cancel"),
}
IDENTITY_ROUTES = {
    ("POST", "/oauth/token"), ("GET", "/.well-known/jwks.json"),
    ("GET", "/.well-known/oauth-authorization-server"), ("POST", "/api/v1/clients"),
    ("GET", "/api/v1/clients"), ("GET", "/api/v1/clients/{}"), ("PATCH", "/api/v1/clients/{}"),
    ("DELETE", "/api/v1/clients/{}"), ("POST", "/api/v1/clients/{}/rotate-secret"),
}


@pytest.fixture(scope="module")
def contract():
    return openapi_contract.load()


@pytest.fixture(scope="module")
def doc(contract):
    return contract.doc


def operations(doc):
    for tpl, item in doc["paths"].items():
        for m in HTTP_METHODS:
            if m in item:
                yield tpl, m, item, item[m]


def resolve(doc, ref):
    assert isinstance(ref, str) and ref.startswith("#/"), f"not a local $ref: {ref!r}"
    node = doc
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and part in node, f"$ref {ref} does not resolve"
        node = node[part]
    return node


def deref(doc, obj):
    seen = set()
    while isinstance(obj, dict) and "$ref" in obj:
        assert obj["$ref"] not in seen, f"$ref loop at {obj['$ref']}"
        seen.add(obj["$ref"])
        obj = resolve(doc, obj["$ref"])
    return obj


def normalize(tpl):
    return re.sub(r"\{[^}]*\}", "{}", tpl)


# ---- the document as data ----


def test_document_is_plain_json(doc):
    def walk(o, where):
        if isinstance(o, dict):
            for k, v in o.items():
                assert isinstance(k, str), f"{where}: a key that is not a string: {k!r}"
                walk(v, f"{where}/{k}")
        elif isinstance(o, list):
            for i, v in enumerate(o):
                walk(v, f"{where}/{i}")
        else:
            assert o is None or isinstance(o, (str, bool, int, float)), \
                f"{where}: {type(o).__name__} {o!r} is not JSON (quote it)"
            if isinstance(o, float):
                assert o == o and abs(o) != float("inf"), f"{where}: {o}"

    walk(doc, "")
    assert json.loads(json.dumps(doc)) == doc
    assert doc["openapi"].startswith("3.1.")
    assert doc["info"]["title"] and doc["info"]["version"]
    assert doc["info"]["license"]["identifier"] == "Apache-2.0"


def test_every_ref_resolves(doc):
    refs = []

    def walk(o):
        if isinstance(o, dict):
            if isinstance(o.get("$ref"), str):
                refs.append(o["$ref"])
            for v in o.values():
                walk(v)
        elif isinstance(o, list):
            for v in o:
                walk(v)

    walk(doc)
    assert refs
    for ref in refs:
        resolve(doc, ref)


def schemas(doc):
    """(where, schema) for every schema of the document."""
    for name, s in doc["components"]["schemas"].items():
        yield f"#/components/schemas/{name}", s

    def media(where, content):
        for ctype, mt in (content or {}).items():
            if "schema" in mt:
                yield f"{where} {ctype}", mt["schema"]

    def params(where, ps):
        for p in ps or []:
            p = deref(doc, p)
            if "schema" in p:
                yield f"{where} parameter {p['name']}", p["schema"]
            yield from media(f"{where} parameter {p.get('name')}", p.get("content"))

    for kind in ("parameters", "headers"):
        for name, p in (doc["components"].get(kind) or {}).items():
            if "schema" in p:
                yield f"#/components/{kind}/{name}", p["schema"]
    for name, r in (doc["components"].get("responses") or {}).items():
        yield from media(f"#/components/responses/{name}", r.get("content"))
        for h, ho in (r.get("headers") or {}).items():
            ho = deref(doc, ho)
            if "schema" in ho:
                yield f"#/components/responses/{name} header {h}", ho["schema"]
    for tpl, m, item, op in operations(doc):
        where = f"{m.upper()} {tpl}"
        yield from params(where, item.get("parameters"))
        yield from params(where, op.get("parameters"))
        if "requestBody" in op:
            yield from media(f"{where} request", deref(doc, op["requestBody"]).get("content"))
        for code, resp in op["responses"].items():
            if "$ref" in resp:
                continue
            yield from media(f"{where} {code}", resp.get("content"))
            for h, ho in (resp.get("headers") or {}).items():
                ho = deref(doc, ho)
                if "schema" in ho:
                    yield f"{where} {code} header {h}", ho["schema"]


def test_schemas_are_valid_draft_2020_12(doc, contract):
    n = 0
    for where, s in schemas(doc):
        try:
            jsonschema.Draft202012Validator.check_schema(s)
        except jsonschema.SchemaError as e:
            pytest.fail(f"{where}: not a valid Draft 2020-12 schema: {e.message}", pytrace=False)
        # every $ref inside it resolves from the validator too
        contract.errors(s, None)
        n += 1
    assert n > 100


def test_operations_are_complete(doc):
    declared_tags = {t["name"] for t in doc.get("tags", [])}
    schemes = set(doc["components"].get("securitySchemes", {}))
    ids = {}
    for req in doc.get("security", []):
        assert set(req) <= schemes, req
    for tpl, m, item, op in operations(doc):
        where = f"{m.upper()} {tpl}"
        assert tpl.startswith("/"), where
        oid = op.get("operationId")
        assert oid and re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", oid), f"{where}: operationId {oid!r}"
        assert oid not in ids, f"{where}: operationId {oid} is also {ids[oid]}'s"
        ids[oid] = where
        assert op.get("tags") and set(op["tags"]) <= declared_tags, f"{where}: tags {op.get('tags')}"
        assert op.get("summary"), f"{where}: no summary"
        for req in op.get("security", []):
            assert set(req) <= schemes, f"{where}: security {req}"
        responses = op.get("responses")
        assert responses, f"{where}: no responses"
        for code, resp in responses.items():
            assert code == "default" or re.fullmatch(r"[1-5](XX|[0-9]{2})", code), \
                f"{where}: response key {code!r}"
            resp = deref(doc, resp)
            assert resp.get("description") is not None, f"{where} {code}: no description"
            for ctype, mt in (resp.get("content") or {}).items():
                assert re.fullmatch(r"[a-z]+/[a-z0-9.+*-]+", ctype), f"{where} {code}: {ctype}"
            if code in ("204", "304"):
                assert not resp.get("content"), f"{where} {code}: a body"
        if "requestBody" in op:
            rb = deref(doc, op["requestBody"])
            assert rb.get("content"), f"{where}: a request body without content"
        # parameters: the path's {names} exactly, each required; no duplicates
        ps = [deref(doc, p) for p in item.get("parameters", []) + op.get("parameters", [])]
        keys = [(p["name"].lower() if p["in"] == "header" else p["name"], p["in"]) for p in ps]
        op_keys = keys[len(item.get("parameters", [])):]
        assert len(set(op_keys)) == len(op_keys), f"{where}: a parameter twice: {op_keys}"
        for p in ps:
            assert p["in"] in ("query", "header", "path", "cookie"), f"{where}: {p}"
            assert ("schema" in p) != ("content" in p), f"{where}: {p['name']} schema or content"
        in_path = {p["name"] for p in ps if p["in"] == "path"}
        names = set(re.findall(r"\{([^}]+)\}", tpl))
        assert in_path == names, f"{where}: path parameters {in_path} for {names}"
        for p in ps:
            if p["in"] == "path":
                assert p.get("required") is True, f"{where}: path parameter {p['name']}"


def test_examples_validate(doc, contract):
    n = 0

    def check(where, schema, example):
        nonlocal n
        errors = contract.errors(schema, example)
        assert not errors, f"{where}: the example does not match its schema: " + \
            "; ".join(f"{list(e.path)}: {e.message[:200]}" for e in errors[:3])
        n += 1

    for tpl, m, item, op in operations(doc):
        where = f"{m.upper()} {tpl}"
        bodies = []
        if "requestBody" in op:
            bodies.append(("request", deref(doc, op["requestBody"])))
        for code, resp in op["responses"].items():
            bodies.append((code, deref(doc, resp)))
        for what, obj in bodies:
            for ctype, mt in (obj.get("content") or {}).items():
                if "example" in mt and "schema" in mt:
                    check(f"{where} {what} {ctype}", mt["schema"], mt["example"])
                for name, ex in (mt.get("examples") or {}).items():
                    ex = deref(doc, ex)
                    if "value" in ex:
                        check(f"{where} {what} {ctype} {name}", mt["schema"], ex["value"])
    for name, s in doc["components"]["schemas"].items():
        for i, ex in enumerate(s.get("examples") or []):
            check(f"#/components/schemas/{name} examples[{i}]", s, ex)
    assert n >= 10


# ---- the routes the services register ----


def tracked_sources():
    r = subprocess.run(["git", "ls-files", "services"], cwd=REPO, stdout=subprocess.PIPE,
                       stderr=subprocess.DEVNULL, text=True)
    if r.returncode != 0:  # not a git checkout: every source there is
        out = []
        for d, _, files in os.walk(os.path.join(REPO, "services")):
            out += [os.path.relpath(os.path.join(d, f), REPO) for f in files]
        return sorted(f for f in out if f.endswith(".c"))
    return sorted(f for f in r.stdout.split() if f.endswith(".c"))


def route_tables(files):
    """{table name: [(METHOD, template)]} from `const struct loom_route NAME[...] = {...};`."""
    tables = {}
    for f in files:
        with open(os.path.join(REPO, f)) as fh:
            src = fh.read()
        for m in re.finditer(r"struct loom_route (\w+)\s*\[[^\]]*\]\s*=\s*\{(.*?)\n\};", src, re.S):
            tables[m.group(1)] = re.findall(r"\{\s*LOOM_HTTP_(\w+)\s*,\s*\"([^\"]+)\"", m.group(2))
    return tables


def gateway_routes():
    """[(METHOD, template, upstream, handler)] from the gateway's GW_ROUTE_LIST."""
    with open(os.path.join(REPO, "services", "gateway", "routes.c")) as f:
        src = f.read().replace("\\\n", " ")
    body = re.search(r"#define GW_ROUTE_LIST\(X\)(.*?)\n#define", src, re.S).group(1)
    out = []
    for m in re.finditer(r"X\((\w+),\s*\"([^\"]+)\",\s*(\w+),([^()]*)\)", body):
        out.append((m.group(1), m.group(2), m.group(3), m.group(4).split(",")[-1].strip()))
    assert len(out) > 20, out
    return out


def documented(doc):
    return {(m.upper(), normalize(tpl)) for tpl, m, _, _ in operations(doc)}


def test_every_registered_route_is_documented(doc):
    tables = route_tables(tracked_sources())
    for name in ("reg_routes", "trn_routes", "idn_routes"):
        assert tables.get(name), f"no route table {name} found in services/"
    assert {(m, normalize(t)) for m, t in tables["trn_routes"]} == TRAINER_ROUTES
    assert {(m, normalize(t)) for m, t in tables["idn_routes"]} == IDENTITY_ROUTES
    have = documented(doc)
    missing = []
    for name, routes in sorted(tables.items()):
        if name in EXCEPT_TABLES:
            continue
        missing += [f"{name}: {m} {t}" for m, t in routes
                    if (m, normalize(t)) not in have and (m, normalize(t)) not in UNDOCUMENTED]
    own = [(m, t) for m, t, up, fn in gateway_routes()
           if up == "LOCAL" and fn not in ("NULL", "gw_h_no_route")]
    assert ("GET", "/openapi.json") in own
    missing += [f"gateway: {m} {t}" for m, t in own if (m, normalize(t)) not in have]
    assert not missing, "routes without a path item in api/openapi.yaml:\n  " + \
        "\n  ".join(missing)


def test_every_documented_operation_is_served(doc):
    served = set()
    for routes in route_tables(tracked_sources()).values():
        served |= {(m, normalize(t)) for m, t in routes}
    gw = gateway_routes()
    served |= {(m, normalize(t)) for m, t, up, fn in gw if up == "LOCAL"}

    def rx(t):
        """The router's template as a regex: {name} one segment, {name...} the rest."""
        parts = re.split(r"(\{[^}]*\})", t)
        return re.compile("^" + "".join(
            (".+" if p.endswith("...}") else "[^/]+") if p.startswith("{") else re.escape(p)
            for p in parts) + "$")

    edge = [(m, rx(t)) for m, t, up, fn in gw if t != "/{path...}"]
    unserved, unrouted = [], []
    for tpl, m, _, _ in operations(doc):
        key = (m.upper(), normalize(tpl))
        if key not in served:
            unserved.append(f"{m.upper()} {tpl}")
        sample = re.sub(r"\{[^}]*\}", "x1", tpl)
        if not any(em == m.upper() and r.match(sample) for em, r in edge) and \
                (m.upper(), tpl) not in NOT_ROUTED:
            unrouted.append(f"{m.upper()} {tpl}")
    assert not unserved, f"documented but no service registers them: {unserved}"
    assert not unrouted, f"documented but the gateway does not route them: {unrouted}"


# ---- request schemas against what the services accept and refuse ----


DIGEST = "sha256:" + "ab" * 32


def spec(**over):
    s = {"model": "fraud", "dataset": DIGEST, "label": "is_fraud", "sensitive": "region",
         "backend": "xgboost", "objective": "binary:logistic",
         "params": {"max_depth": 4, "eta": 0.1}, "rounds": 60,
         "split": {"validation": 0.2, "seed": 42},
         "gates": {"min_auc": 0.95, "max_equal_opportunity_diff": 0.4},
         "code_version": "test-1"}
    s.update(over)
    return {k: v for k, v in s.items() if v is not ...}


GOOD_SPECS = [
    spec(),
    {"model": "slow", "dataset": DIGEST, "label": "is_fraud", "rounds": 6000,
     "params": {"max_depth": 10, "eta": 0.001, "min_child_weight": 0}},
    spec(rounds=5, gates={}),
    spec(sensitive=None, features=None, code_version=None, description=None,
         gates={"min_auc": None, "max_p99_latency_us": 50}),
    spec(features=["amount", "region"], params={"booster": "dart", "seed": "7",
                                                "monotone_constraints": "(1,0)"}),
    spec(params={"max_depth": -3}),  # refused by the dry run of libxgboost, not by the shape
    spec(params={"eta": "fast"}),  # likewise
    {"model": "lin", "dataset": DIGEST, "label": "y", "backend": "linear",
     "objective": "binary:logistic", "params": {"lambda": 0, "tol": 1e-12}, "rounds": 100,
     "split": {"validation": 0.25, "seed": 7}},
    {"model": "lin", "dataset": DIGEST, "label": "y", "backend": "linear",
     "objective": "reg:squarederror", "params": {"lambda": "0.5"},
     "gates": {"max_rmse": 3, "max_p99_latency_us": 100}},
    spec(objective="reg:tweedie", sensitive=None, gates={"max_rmse": 1}),
]
BAD_SPECS = [
    ({}, "model required"),
    (spec(model="Fraud"), "model name"),
    (spec(model=...), "model required"),
    (spec(dataset="sha256:abc"), "digest"),
    (spec(label=""), "empty label"),
    (spec(features=[]), "no features"),
    (spec(features=["amount", "amount"]), "a feature twice"),
    (spec(backend="torch"), "backend"),
    (spec(objective="multi:softmax"), "objective"),
    (spec(backend="linear", objective="count:poisson"), "linear objective"),
    (spec(params={"foo": 1}), "unknown xgboost parameter"),
    (spec(params={"nthread": 4}), "nthread is the trainer's"),
    (spec(params={"objective": "reg:squarederror"}), "objective in params"),
    (spec(params={"booster": "gblinear"}), "booster"),
    (spec(params={"max_depth": None}), "null parameter"),
    (spec(params={"eta": ""}), "empty parameter"),
    (spec(backend="linear", params={"max_depth": 3}), "linear parameter"),
    (spec(backend="linear", params={"lambda": -1}), "negative lambda"),
    (spec(backend="linear", params={"lambda": "x"}), "lambda not a number"),
    (spec(rounds=0), "rounds 0"),
    (spec(rounds=10001), "rounds over"),
    (spec(rounds=1.5), "rounds not an integer"),
    (spec(split={"validation": 1.5}), "validation over"),
    (spec(split={"validation": 0}), "validation 0"),
    (spec(split={"seed": -1}), "negative seed"),
    (spec(split={"test": 0.1}), "unknown split setting"),
    (spec(gates={"min_f1": 0.5}), "unknown gate"),
    (spec(gates={"min_auc": "high"}), "gate not a number"),
    (spec(gates={"max_rmse": -1}), "negative gate"),
    (spec(sensitive=None, gates={"max_demographic_parity_diff": 0.1}), "fairness without sensitive"),
    (spec(sensitive=..., gates={"max_equal_opportunity_diff": 0.1}), "fairness without sensitive"),
    (spec(objective="reg:squarederror", gates={"min_auc": 0.9}), "binary gate, regression"),
    (spec(objective="reg:squarederror", gates={"max_demographic_parity_diff": 0.1}),
     "fairness gate, regression"),
    (spec(code_version=""), "empty code_version"),
    (spec(surprise=1), "unknown field"),
    ([], "not an object"),
]


def schema_of(doc, name):
    return {"$ref": f"#/components/schemas/{name}"}


def test_job_spec_schema(doc, contract):
    s = schema_of(doc, "TrainingJobSpec")
    for good in GOOD_SPECS:
        errors = contract.errors(s, good)
        assert not errors, (good, [e.message for e in errors[:3]])
    for bad, why in BAD_SPECS:
        assert contract.errors(s, bad), f"the spec schema accepts a spec the trainer refuses " \
                                        f"({why}): {bad}"


def test_identity_request_schemas(doc, contract):
    create = schema_of(doc, "ClientCreate")
    for good in ({"name": "fraud-api", "scopes": ["infer", "models:read"],
                  "quota": {"requests_per_second": 12.5, "burst": 30}},
                 {"name": "defaults", "scopes": []}, {"name": "x", "scopes": [], "quota": None}):
        assert not contract.errors(create, good), good
    for bad in ({"name": "x"}, {"scopes": ["infer"]}, {"name": "", "scopes": []},
                {"name": "-x", "scopes": []}, {"name": "a b", "scopes": []},
                {"name": "x" * 65, "scopes": []}, {"name": "x", "scopes": ["root"]},
                {"name": "x", "scopes": "infer"}, {"name": "x", "scopes": [1]},
                {"name": "x", "scopes": [], "quota": {"requests_per_second": 0}},
                {"name": "x", "scopes": [], "quota": {"requests_per_second": 2000000}},
                {"name": "x", "scopes": [], "quota": {"burst": 0}},
                {"name": "x", "scopes": [], "quota": {"burst": 1.5}},
                {"name": "x", "scopes": [], "quota": {"rps": 1}},
                {"name": "x", "scopes": [], "quota": {}},
                {"name": "x", "scopes": [], "quota": {"burst": 5}},
                {"name": "x", "scopes": [], "secret": "mine"},
                {"name": "x", "scopes": [], "id": "cl_mine"}, ["name"]):
        assert contract.errors(create, bad), f"ClientCreate accepts {bad}"
    patch = schema_of(doc, "ClientPatch")
    for good in ({"scopes": ["train"], "quota": {"burst": 5}}, {"disabled": True},
                 {"quota": {"requests_per_second": 1}}, {"quota": None}):
        assert not contract.errors(patch, good), good
    for bad in ({}, {"quota": {}}, {"scopes": [], "quota": {}}, {"name": "new"}, {"secret": "x"},
                {"disabled": "yes"}, {"scopes": ["bogus"]}):
        assert contract.errors(patch, bad), f"ClientPatch accepts {bad}"
    form = schema_of(doc, "TokenRequest")
    for good in ({"grant_type": "client_credentials"},
                 {"grant_type": "client_credentials", "scope": "models:read infer",
                  "resource": "x"},
                 {"grant_type": "client_credentials", "client_id": "admin",
                  "client_secret": "s3cret"}):
        assert not contract.errors(form, good), good
    for bad in ({}, {"grant_type": "password"}, {"grant_type": "CLIENT_CREDENTIALS"},
                {"grant_type": "client_credentials", "scope": "root"},
                {"grant_type": "client_credentials", "scope": "infer "},
                {"grant_type": "client_credentials", "scope": ""},
                {"grant_type": "client_credentials", "client_id": "ad min"}):
        assert contract.errors(form, bad), f"TokenRequest accepts {bad}"
    secretless = schema_of(doc, "Client")
    client = {"id": "cl_01m87qbn9cv9rthxekxfhhjgjm", "name": "c1", "scopes": ["infer"],
              "quota": {"requests_per_second": 2.5, "burst": 100}, "disabled": False,
              "created_at": "2026-11-24T21:28:30.252000Z",
              "updated_at": "2026-11-24T21:28:30.252000Z",
              "secret_rotated_at": "2026-11-24T21:28:30.252000Z"}
    assert not contract.errors(secretless, client)
    assert not contract.errors(secretless, dict(client, quota=None))
    with_secret = dict(client, secret="lsk_" + "A" * 43)
    assert contract.errors(secretless, with_secret), "a Client answer may not carry a secret"
    assert not contract.errors(schema_of(doc, "ClientWithSecret"), with_secret)
    assert contract.errors(schema_of(doc, "ClientWithSecret"), client)


# ---- the validator itself ----


def test_contract_validator_catches_what_it_should(contract):
    """openapi_contract.Contract.check on made-up answers: the good pass, each fault fails."""
    failed = (AssertionError, pytest.fail.Exception)
    problem = json.dumps({"type": "about:blank", "title": "Not Found", "status": 404,
                          "detail": "no dataset", "field": "digest"}).encode()
    pj = {"Content-Type": "application/problem+json"}
    digest = "/api/v1/datasets/sha256:" + "0" * 64
    contract.check("GET", digest, 404, pj, problem)
    contract.check("GET", "/metrics", 200, {}, b"anything")  # not an API path: not checked
    dataset = {"digest": "sha256:" + "0" * 64, "rows": 1, "size": 8,
               "columns": [{"name": "a", "type": "number", "missing": 0, "min": 1, "max": 1}],
               "created_at": "2026-11-24T21:28:08.957000Z"}
    js = {"content-type": "application/json; charset=utf-8"}
    contract.check("GET", digest, 200, js, json.dumps(dataset).encode())
    client = {"id": "admin", "name": "admin", "scopes": ["admin"],
              "quota": {"requests_per_second": 50, "burst": 100}, "disabled": False,
              "created_at": "2026-11-24T21:28:04.957000Z",
              "updated_at": "2026-11-24T21:28:04.957000Z",
              "secret_rotated_at": "2026-11-24T21:28:04.957000Z"}
    oauth = {"error": "invalid_client", "error_description": "too many failed attempts"}
    nostore = {"Content-Type": "application/json", "Cache-Control": "no-store",
               "Pragma": "no-cache"}
    contract.check("POST", "/oauth/token", 429, dict(nostore, **{"Retry-After": "5"}),
                   json.dumps(oauth).encode())
    bad_spec = ("application/json", json.dumps({"model": "m", "dataset": "sha256:x"}).encode())
    faults = [
        ("an undocumented status", lambda: contract.check("GET", digest, 418, pj, problem)),
        ("another media type", lambda: contract.check("GET", digest, 404, js, problem)),
        ("a body that is not JSON", lambda: contract.check("GET", digest, 404, pj, b"{")),
        ("a missing member", lambda: contract.check(
            "GET", digest, 200, js, json.dumps(dict(dataset, rows=None)).encode())),
        ("a bad date-time", lambda: contract.check(
            "GET", digest, 200, js, json.dumps(dict(dataset, created_at="yesterday")).encode())),
        ("an unknown member", lambda: contract.check(
            "GET", digest, 200, js, json.dumps(dict(dataset, extra=1)).encode())),
        ("a secret where none may be", lambda: contract.check(
            "GET", "/api/v1/clients/admin", 200, js,
            json.dumps(dict(client, secret="lsk_" + "A" * 43)).encode())),
        ("a missing required header", lambda: contract.check(
            "POST", "/oauth/token", 429, nostore, json.dumps(oauth).encode())),
        ("a header that is not its type", lambda: contract.check(
            "POST", "/oauth/token", 429, dict(nostore, **{"Retry-After": "soon"}),
            json.dumps(oauth).encode())),
        ("a body on a 204", lambda: contract.check(
            "DELETE", "/api/v1/clients/admin", 204, {}, b"{}")),
        ("an accepted request the request schema refuses", lambda: contract.check_request(
            contract.operation("POST", "/api/v1/training-jobs")[1], "POST", *bad_spec)),
        ("an unknown path where known ones are expected", lambda: contract.check(
            "GET", "/api/v1/nothing", 200, js, b"{}", known=True)),
    ]
    for what, fault in faults:
        try:
            fault()
        except failed:
            continue
        pytest.fail(f"the contract let {what} through", pytrace=False)
