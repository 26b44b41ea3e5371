# SPDX-License-Identifier: Apache-2.0
"""Black-box tests of the model registry (`loom serve registry`), through the real binary.

Every test runs twice, on SQLite and on a real PostgreSQL 15 (registry_fixtures), and every
response is validated against api/openapi.yaml. Covers: models (create, get, list, patch,
delete), versions, aliases (set, move, resolve, delete, refusals), artifacts (digests,
idempotent uploads, pickle and unknown formats refused, size limits, a tampered file refused
at download, kill -9 mid-upload), Idempotency-Key (replay, 422, 409 in flight), cursor
pagination walks, the event log and projection rebuilds, restarts, errors as problem+json,
/metrics and /readyz, and the `loom models` command line.
"""

import base64
import hashlib
import json
import os
import pickle
import socket
import threading
import time

import pytest

from conftest import Reader, read_response
from registry_fixtures import *  # noqa: F401,F403
from registry_fixtures import (assert_problem, linear_model, sha256_hex, SLOW)

V1 = "/api/v1"


# ---- helpers ----


def upload(api, data, **kw):
    return api.post(f"{V1}/artifacts", data=data,
                    headers={"Content-Type": "application/octet-stream", **kw.pop("headers", {})},
                    **kw)


def new_model(api, name, **body):
    r = api.post(f"{V1}/models", json={"name": name, **body})
    assert r.status_code == 201, r.text
    return r.json()


def new_version(api, model, data, **body):
    r = upload(api, data)
    assert r.status_code in (200, 201), r.text
    r = api.post(f"{V1}/models/{model}/versions",
                 json={"artifact_digest": r.json()["digest"], **body})
    assert r.status_code == 201, r.text
    return r.json()


def walk(api, path, limit, cursor=None):
    """Every item of a paginated list (from `cursor`), and the number of pages."""
    items, pages = [], 0
    while True:
        sep = "&" if "?" in path else "?"
        q = f"{path}{sep}limit={limit}" + (f"&cursor={cursor}" if cursor else "")
        r = api.get(q)
        assert r.status_code == 200, r.text
        body = r.json()
        assert len(body["items"]) <= limit
        items += body["items"]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            return items, pages
        assert pages < 1000


def raw_request(srv, head, body=b""):
    with srv.connect() as s:
        s.sendall(head + body)
        return read_response(s)


# ---- models ----


def test_model_lifecycle(registry):
    srv = registry()
    api = srv.api()
    m = new_model(api, "fraud", description="Card fraud", tags={"team": "risk"})
    assert m["name"] == "fraud" and m["description"] == "Card fraud"
    assert m["tags"] == {"team": "risk"} and m["latest_version"] is None and m["aliases"] == {}
    assert api.get(f"{V1}/models/fraud").json() == m
    assert_problem(api.post(f"{V1}/models", json={"name": "fraud"}), 409, "fraud", "exists")
    r = api.patch(f"{V1}/models/fraud", json={"description": "Card fraud v2",
                                              "tags": {"team": "risk", "tier": "1"}})
    assert r.status_code == 200, r.text
    assert r.json()["description"] == "Card fraud v2"
    assert r.json()["tags"] == {"team": "risk", "tier": "1"}
    r = api.patch(f"{V1}/models/fraud", json={"tags": {}})
    assert r.json()["tags"] == {} and r.json()["description"] == "Card fraud v2"
    assert api.get(f"{V1}/models").json()["items"][0]["name"] == "fraud"
    r = api.delete(f"{V1}/models/fraud")
    assert r.status_code == 204 and r.content == b""
    assert_problem(api.get(f"{V1}/models/fraud"), 404, "fraud")
    assert_problem(api.delete(f"{V1}/models/fraud"), 404)
    assert_problem(api.patch(f"{V1}/models/fraud", json={}), 404)
    # the name can be used again
    new_model(api, "fraud")


@pytest.mark.parametrize("name", ["Fraud", "-fraud", ".x", "a" * 101, "fr aud", "fr@ud", "f/x",
                                  ""])
def test_bad_model_names(registry, name):
    api = registry().api()
    assert_problem(api.post(f"{V1}/models", json={"name": name}), 400)


def test_bad_requests(registry):
    srv = registry()
    api = srv.api()
    new_model(api, "m")
    hdr = {"Content-Type": "application/json"}
    cases = [
        api.post(f"{V1}/models", data=b"{not json", headers=hdr),
        api.post(f"{V1}/models", data=b"[1,2]", headers=hdr),
        api.post(f"{V1}/models", data=b"", headers=hdr),
        api.post(f"{V1}/models", json={"name": "x", "colour": "red"}),
        api.post(f"{V1}/models", json={"name": 5}),
        api.post(f"{V1}/models", json={"description": "no name"}),
        api.post(f"{V1}/models", json={"name": "x", "tags": {"a": 1}}),
        api.post(f"{V1}/models", json={"name": "x", "tags": ["a"]}),
        api.patch(f"{V1}/models/m", json={"name": "renamed"}),
        api.get(f"{V1}/models/UPPER"),
        api.get(f"{V1}/models/m/versions/0"),
        api.get(f"{V1}/models/m/versions/x"),
        api.get(f"{V1}/models/m/versions/-1"),
        api.get(f"{V1}/models/m/versions/01"),
        api.get(f"{V1}/models/m/versions/99999999999999999999"),
        api.get(f"{V1}/models?limit=0"),
        api.get(f"{V1}/models?limit=501"),
        api.get(f"{V1}/models?limit=ten"),
        api.get(f"{V1}/models?cursor=!!!"),
        api.get(f"{V1}/models/m/versions?cursor=" +
                base64.urlsafe_b64encode(b"m:zzz").decode().rstrip("=")),
        api.get(f"{V1}/models/m/versions?status=deleted"),
        api.get(f"{V1}/models/m/events?after=-3"),
        api.put(f"{V1}/models/m/aliases/Prod", json={"version": 1}),
        api.put(f"{V1}/models/m/aliases/{'a' * 64}", json={"version": 1}),
        api.put(f"{V1}/models/m/aliases/prod", json={"version": 0}),
        api.put(f"{V1}/models/m/aliases/prod", json={"version": "1"}),
        api.put(f"{V1}/models/m/aliases/prod", json={}),
        api.post(f"{V1}/models/m/versions", json={}),
        api.post(f"{V1}/models/m/versions", json={"artifact_digest": "md5:abc"}),
        api.post(f"{V1}/models/m/versions", json={"artifact_digest": "sha256:" + "A" * 64}),
        api.post(f"{V1}/models/m/versions", json={"artifact_digest": "sha256:" + "a" * 64,
                                                  "status": "archived"}),
        api.post(f"{V1}/models/m/versions", json={"artifact_digest": "sha256:" + "a" * 64,
                                                  "metadata": {"metrics": {"auc": "high"}}}),
        api.post(f"{V1}/models/m/versions", json={"artifact_digest": "sha256:" + "a" * 64,
                                                  "metadata": {"secret": 1}}),
        api.post(f"{V1}/models/m/versions", json={"artifact_digest": "sha256:" + "a" * 64,
                                                  "metadata": {"lineage": {"dataset": "x"}}}),
        api.post(f"{V1}/models/m/versions", json={"artifact_digest": "sha256:" + "a" * 64,
                                                  "metadata": []}),
        api.patch(f"{V1}/models/m/versions/1", json={"status": "gone"}),
        api.get(f"{V1}/artifacts/sha256:xyz"),
        api.get(f"{V1}/artifacts/{'a' * 64}"),
        api.get(f"{V1}/resolve/m"),
        api.get(f"{V1}/resolve/m@"),
        api.get(f"{V1}/resolve/m:0"),
        api.get(f"{V1}/resolve/m:x"),
        api.get(f"{V1}/resolve/M@prod"),
        api.post(f"{V1}/models", json={"name": "y"}, headers={"Idempotency-Key": "k" * 256}),
    ]
    for r in cases:
        assert_problem(r, 400)
        assert r.json()["instance"] == r.request.path_url.split("?")[0], r.json()
    # details say what to fix
    assert_problem(api.post(f"{V1}/models", json={"name": "x", "colour": "red"}), 400, "colour")
    assert_problem(api.get(f"{V1}/models?limit=501"), 400, "500")


def test_not_found(registry):
    api = registry().api()
    new_model(api, "m")
    d = "sha256:" + "a" * 64
    for r in [api.get(f"{V1}/models/nope"), api.get(f"{V1}/models/nope/versions"),
              api.get(f"{V1}/models/m/versions/1"), api.get(f"{V1}/models/m/versions/1/artifact"),
              api.patch(f"{V1}/models/m/versions/1", json={"status": "archived"}),
              api.post(f"{V1}/models/nope/versions", json={"artifact_digest": d}),
              api.post(f"{V1}/models/m/versions", json={"artifact_digest": d}),
              api.get(f"{V1}/models/m/aliases/prod"), api.delete(f"{V1}/models/m/aliases/prod"),
              api.get(f"{V1}/models/nope/aliases"),
              api.put(f"{V1}/models/m/aliases/prod", json={"version": 1}),
              api.get(f"{V1}/models/nope/events"), api.get(f"{V1}/artifacts/{d}"),
              api.get(f"{V1}/resolve/m@prod"), api.get(f"{V1}/resolve/m:1"),
              api.get(f"{V1}/resolve/nope:1")]:
        assert_problem(r, 404)
    assert_problem(api.post(f"{V1}/models/m/versions", json={"artifact_digest": d}), 404,
                   "artifact", "upload")


def test_server_errors_are_problems(registry):
    srv = registry()
    api = srv.api()
    r = api.get("/api/v1/nothing/here")
    assert_problem(r, 404)
    r = api.request("PUT", f"{V1}/models")
    assert r.status_code == 405 and r.headers["content-type"].startswith("application/problem")
    assert "GET" in r.headers["allow"] and "POST" in r.headers["allow"]


# ---- pagination ----


def test_pagination_walk(registry):
    srv = registry()
    api = srv.api()
    names = [f"m{i:03d}" for i in range(120)]
    for n in reversed(names):
        new_model(api, n)
    items, pages = walk(api, f"{V1}/models", 7)
    got = [m["name"] for m in items]
    assert got == sorted(names), got  # every model exactly once, in name order
    assert pages == 18
    # the default page is 50, the largest 500
    r = api.get(f"{V1}/models").json()
    assert len(r["items"]) == 50 and r["next_cursor"]
    r = api.get(f"{V1}/models?limit=500").json()
    assert len(r["items"]) == 120 and r["next_cursor"] is None
    # a page is stable: asking for the same cursor twice gives the same page
    c = api.get(f"{V1}/models?limit=7").json()["next_cursor"]
    assert api.get(f"{V1}/models?limit=7&cursor={c}").json() == \
        api.get(f"{V1}/models?limit=7&cursor={c}").json()
    # items added behind the cursor do not disturb a walk
    first = api.get(f"{V1}/models?limit=60").json()
    new_model(api, "a-first")
    rest, _ = walk(api, f"{V1}/models", 25, cursor=first["next_cursor"])
    assert [m["name"] for m in first["items"] + rest] == sorted(names)
    # a cursor from another list is refused
    assert_problem(api.get(f"{V1}/models/m000/versions?cursor={c}"), 400, "cursor")


def test_versions_and_events_pagination(registry):
    srv = registry()
    api = srv.api()
    new_model(api, "m")
    for i in range(23):
        new_version(api, "m", linear_model(bias=i / 10),
                    status="rejected" if i % 3 == 0 else "ready")
    items, pages = walk(api, f"{V1}/models/m/versions", 4)
    assert [v["version"] for v in items] == list(range(1, 24)) and pages == 6
    rejected, _ = walk(api, f"{V1}/models/m/versions?status=rejected", 3)
    assert [v["version"] for v in rejected] == [i + 1 for i in range(23) if i % 3 == 0]
    events, _ = walk(api, f"{V1}/models/m/events", 5)
    assert [e["seq"] for e in events] == list(range(1, 25))
    after, _ = walk(api, f"{V1}/models/m/events?after=20", 2)
    assert [e["seq"] for e in after] == [21, 22, 23, 24]
    for i in range(9):
        r = api.put(f"{V1}/models/m/aliases/a{i}", json={"version": 2})
        assert r.status_code == 200, r.text
    aliases, pages = walk(api, f"{V1}/models/m/aliases", 4)
    assert [a["alias"] for a in aliases] == [f"a{i}" for i in range(9)] and pages == 3


# ---- artifacts ----


def test_artifact_upload_and_download(registry, models):
    srv = registry()
    api = srv.api()
    data = models["xgb"]
    r = upload(api, data)
    assert r.status_code == 201, r.text
    a = r.json()
    assert a["digest"] == "sha256:" + sha256_hex(data) and a["size"] == len(data)
    assert a["format"] == "xgboost-json" and a["backend"] == "xgboost"
    assert a["signature"]["num_features"] == 4 and a["signature"]["num_outputs"] == 1
    assert a["signature"]["objective"] == "binary:logistic"
    assert a["signature"]["feature_names"] == ["amount", "age", "hour", "score"]
    # the same bytes again: the same digest, nothing new
    r = upload(api, data)
    assert r.status_code == 200 and r.json() == a
    with open(srv.artifact_file(a["digest"]), "rb") as f:
        assert f.read() == data
    r = api.get(f"{V1}/artifacts/{a['digest']}")
    assert r.status_code == 200 and r.content == data
    assert r.headers["etag"] == f'"{a["digest"]}"'
    assert r.headers["digest"] == "sha-256=" + base64.b64encode(
        hashlib.sha256(data).digest()).decode()
    r = api.get(f"{V1}/artifacts/{a['digest']}", headers={"If-None-Match": f'"{a["digest"]}"'})
    assert r.status_code == 304 and r.content == b""
    # a linear model, chunked (no Content-Length)
    lin = linear_model(bias=0.25)
    r = upload(api, iter([lin[:10], lin[10:]]))
    assert r.status_code == 201, r.text
    assert r.json()["format"] == "loom-linear" and r.json()["backend"] == "linear"
    assert r.json()["signature"]["feature_names"] == ["f0", "f1", "f2"]
    # a larger model streams through
    r = upload(api, models["big"])
    assert r.status_code == 201, r.text
    assert r.json()["signature"]["num_features"] == 20
    assert os.listdir(os.path.join(srv.data_dir, "artifacts", "tmp")) == []


def test_refused_formats(registry):
    srv = registry()
    api = srv.api()
    for proto in (2, 4, 5):
        r = upload(api, pickle.dumps({"weights": [1.0, 2.0]}, protocol=proto))
        assert_problem(r, 415, "pickle", "xgboost json")
    for data in (b"hello world", b"\x00\x01\x02binary", b"PK\x03\x04zip", b"[1, 2, 3]",
                 b'{"a": 1}', b'{"config": {}, "numbers": [1, 2]}', b""):
        assert_problem(upload(api, data), 415, "accepts")
    # a model format loom knows, but a model that does not load
    bad_linear = json.dumps({"loom_model": "linear", "version": 1, "objective":
                             "binary:logistic", "num_features": 3, "weights": [1.0]}).encode()
    assert_problem(upload(api, bad_linear), 422, "does not load")
    assert_problem(upload(api, b'{"learner": {"gradient_booster": 5}}'), 422)
    # nothing of those was kept
    assert os.listdir(os.path.join(srv.data_dir, "artifacts", "tmp")) == []
    assert os.listdir(os.path.join(srv.data_dir, "artifacts", "sha256")) == []


def test_artifact_size_limit(registry):
    srv = registry("--registry.max-artifact-bytes=2KiB")
    api = srv.api()
    small = linear_model()
    assert upload(api, small).status_code == 201
    big = linear_model(features=400)
    assert len(big) > 2048
    assert_problem(upload(api, big), 413, "larger")
    # chunked: the limit is found while streaming (the server answers, then closes)
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in (big[:1000], big[1000:2000],
                                                                big[2000:])) + b"0\r\n\r\n"
    raw = raw_request(srv, f"POST {V1}/artifacts HTTP/1.1\r\nHost: x\r\n"
                      "Transfer-Encoding: chunked\r\n\r\n".encode(), chunks)
    assert raw.status == 413 and raw.header("connection") == "close", raw
    assert json.loads(raw.body)["status"] == 413
    contract_check(srv, "POST", f"{V1}/artifacts", raw)
    assert os.listdir(os.path.join(srv.data_dir, "artifacts", "tmp")) == []


def test_tampered_artifact_is_never_served(registry, models):
    srv = registry()
    api = srv.api()
    new_model(api, "m")
    v = new_version(api, "m", models["xgb"])
    path = srv.artifact_file(v["artifact_digest"])
    with open(path, "r+b") as f:
        f.seek(100)
        b = f.read(1)
        f.seek(100)
        f.write(bytes([b[0] ^ 1]))
    for url in (f"{V1}/artifacts/{v['artifact_digest']}", f"{V1}/models/m/versions/1/artifact"):
        r = api.get(url)
        p = assert_problem(r, 500, v["artifact_digest"], "verification")
        assert "digest" not in r.headers
    assert any(o.get("msg") == "artifact failed verification" for o in srv.json_logs())
    # a file gone is refused as well
    os.unlink(path)
    assert_problem(api.get(f"{V1}/artifacts/{v['artifact_digest']}"), 500,
                   v["artifact_digest"])
    # uploading the original bytes again repairs the store
    assert upload(api, models["xgb"]).status_code == 200
    r = api.get(f"{V1}/models/m/versions/1/artifact")
    assert r.status_code == 200 and r.content == models["xgb"]


def test_kill9_mid_upload_leaves_nothing(registry, models):
    srv = registry()
    api = srv.api()
    new_model(api, "m")
    data = models["big"] + b" " * (8 << 20)  # 8.7 MB: the registry dies after half of it
    tmp = os.path.join(srv.data_dir, "artifacts", "tmp")
    s = srv.connect()
    s.sendall(f"POST {V1}/artifacts HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\n"
              f"Content-Type: application/octet-stream\r\n\r\n".encode())
    half = len(data) // 2
    for off in range(0, half, 65536):
        s.sendall(data[off:min(off + 65536, half)])
        time.sleep(0.002)
    deadline = time.monotonic() + 5 * SLOW
    while time.monotonic() < deadline:
        files = os.listdir(tmp)
        if files and os.path.getsize(os.path.join(tmp, files[0])) >= half - 65536:
            break
        time.sleep(0.01)
    assert len(os.listdir(tmp)) == 1, "the upload streams to a temporary file"
    srv.kill9()
    s.close()
    srv.restart()
    api = srv.api()
    assert os.listdir(tmp) == [], "the temporary file is cleaned at start"
    assert os.listdir(os.path.join(srv.data_dir, "artifacts", "sha256")) == []
    assert api.get(f"{V1}/models/m/versions").json()["items"] == []
    digest = "sha256:" + sha256_hex(data)
    assert_problem(api.get(f"{V1}/artifacts/{digest}"), 404)
    assert any(o.get("msg") == "removed unfinished uploads" for o in srv.json_logs())
    # and the same upload works afterwards (trailing whitespace is still the same model)
    r = upload(api, data)
    assert r.status_code == 201 and r.json()["digest"] == digest


# ---- versions ----


def test_versions(registry, models):
    srv = registry()
    api = srv.api()
    new_model(api, "fraud")
    meta = {"metrics": {"auc": 0.97, "logloss": 0.12, "f1": None}, "parameters": {"max_depth": 3,
            "eta": 0.3, "objective": "binary:logistic"},
            "lineage": {"dataset_digest": "sha256:" + "b" * 64, "training_job": "job-1",
                        "code_version": "abc123"},
            "report": {"confusion": [[10, 2], [1, 12]], "note": None}, "description": "first"}
    v1 = new_version(api, "fraud", models["xgb"], metadata=meta)
    assert v1["version"] == 1 and v1["status"] == "ready" and v1["metadata"] == meta
    assert v1["artifact_digest"] == "sha256:" + sha256_hex(models["xgb"])
    assert v1["size"] == len(models["xgb"]) and v1["backend"] == "xgboost"
    assert v1["signature"]["num_features"] == 4
    # the same artifact may back several versions; status at creation
    v2 = new_version(api, "fraud", models["xgb"], status="rejected")
    assert v2["version"] == 2 and v2["status"] == "rejected" and v2["metadata"] == {}
    v3 = new_version(api, "fraud", linear_model())
    assert v3["version"] == 3 and v3["backend"] == "linear"
    assert api.get(f"{V1}/models/fraud").json()["latest_version"] == 3
    assert api.get(f"{V1}/models/fraud/versions/1").json() == v1
    lst = api.get(f"{V1}/models/fraud/versions").json()
    assert [v["version"] for v in lst["items"]] == [1, 2, 3] and lst["next_cursor"] is None
    assert [v["version"] for v in
            api.get(f"{V1}/models/fraud/versions?status=ready").json()["items"]] == [1, 3]
    r = api.patch(f"{V1}/models/fraud/versions/1", json={"status": "archived",
                                                          "description": "superseded"})
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "archived" and r.json()["metadata"]["description"] == "superseded"
    assert r.json()["metadata"]["metrics"] == meta["metrics"]
    assert [v["version"] for v in
            api.get(f"{V1}/models/fraud/versions?status=archived").json()["items"]] == [1]
    r = api.get(f"{V1}/models/fraud/versions/3/artifact")
    assert r.status_code == 200 and r.content == linear_model()
    assert api.get(f"{V1}/resolve/fraud:2").json()["version"] == 2


def test_concurrent_version_creates_get_distinct_numbers(registry):
    srv = registry()
    api = srv.api()
    new_model(api, "m")
    digest = upload(api, linear_model()).json()["digest"]
    results, errors = [], []

    def worker():
        a = srv.api()
        for _ in range(5):
            r = a.post(f"{V1}/models/m/versions", json={"artifact_digest": digest})
            (results if r.status_code == 201 else errors).append(r)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, [e.text for e in errors]
    assert sorted(r.json()["version"] for r in results) == list(range(1, 41))
    assert [e["seq"] for e in walk(api, f"{V1}/models/m/events", 500)[0]] == list(range(1, 42))


def test_two_registries_share_one_store(registry):
    """Two registry processes on one store (a PostgreSQL database, or one SQLite file on one
    host) and one artifacts directory: writes through both never collide."""
    a = registry()
    store = a.store or f"sqlite:{a.data_dir}/registry.db"
    b = registry(f"--registry.artifacts={a.data_dir}/artifacts", store=store)
    apis = [a.api(), b.api()]
    new_model(apis[0], "m")
    digest = upload(apis[1], linear_model()).json()["digest"]
    errors, versions = [], []

    def worker(api):
        for _ in range(10):
            r = api.post(f"{V1}/models/m/versions", json={"artifact_digest": digest})
            (versions if r.status_code == 201 else errors).append(r)

    threads = [threading.Thread(target=worker, args=(srv.api(),)) for srv in (a, b, a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, [e.text for e in errors]
    assert sorted(r.json()["version"] for r in versions) == list(range(1, 41))
    assert apis[0].get(f"{V1}/models/m").json() == apis[1].get(f"{V1}/models/m").json()
    r = apis[0].get(f"{V1}/models/m/versions/40/artifact")
    assert r.status_code == 200 and r.content == linear_model()


# ---- aliases ----


def test_aliases(registry):
    srv = registry()
    api = srv.api()
    new_model(api, "fraud")
    for i in range(3):
        new_version(api, "fraud", linear_model(bias=i), status="rejected" if i == 2 else "ready")
    r = api.put(f"{V1}/models/fraud/aliases/production", json={"version": 1})
    assert r.status_code == 200, r.text
    assert r.json() == {"model": "fraud", "alias": "production", "version": 1,
                        "previous_version": None}
    r = api.put(f"{V1}/models/fraud/aliases/production", json={"version": 2})
    assert r.json()["previous_version"] == 1 and r.json()["version"] == 2
    r = api.put(f"{V1}/models/fraud/aliases/canary", json={"version": 1})
    assert r.status_code == 200
    assert api.get(f"{V1}/resolve/fraud@production").json()["version"] == 2
    assert api.get(f"{V1}/resolve/fraud@canary").json()["version"] == 1
    assert api.get(f"{V1}/resolve/fraud:3").json()["status"] == "rejected"
    a = api.get(f"{V1}/models/fraud/aliases/production").json()
    assert a["version"] == 2 and a["alias"] == "production" and a["model"] == "fraud"
    assert [x["alias"] for x in api.get(f"{V1}/models/fraud/aliases").json()["items"]] == \
        ["canary", "production"]
    assert api.get(f"{V1}/models/fraud").json()["aliases"] == {"canary": 1, "production": 2}
    # refused: a version that is not ready; leaving ready while aliased; deleting the model
    assert_problem(api.put(f"{V1}/models/fraud/aliases/production", json={"version": 3}), 409,
                   "rejected", "ready")
    assert_problem(api.put(f"{V1}/models/fraud/aliases/x", json={"version": 9}), 404)
    assert_problem(api.patch(f"{V1}/models/fraud/versions/2", json={"status": "archived"}), 409,
                   "production")
    assert_problem(api.delete(f"{V1}/models/fraud"), 409, "production", "canary")
    # moving to the same version changes nothing
    r = api.put(f"{V1}/models/fraud/aliases/production", json={"version": 2})
    assert r.json()["previous_version"] == 2
    assert api.delete(f"{V1}/models/fraud/aliases/production").status_code == 204
    assert_problem(api.delete(f"{V1}/models/fraud/aliases/production"), 404)
    assert_problem(api.get(f"{V1}/resolve/fraud@production"), 404, "production")
    assert api.delete(f"{V1}/models/fraud/aliases/canary").status_code == 204
    assert api.patch(f"{V1}/models/fraud/versions/2", json={"status": "archived"}).status_code \
        == 200
    assert api.delete(f"{V1}/models/fraud").status_code == 204
    assert_problem(api.get(f"{V1}/resolve/fraud:1"), 404)


# ---- idempotency ----


def test_idempotency_replay_and_mismatch(registry):
    srv = registry()
    api = srv.api()
    k = {"Idempotency-Key": "create-fraud-1"}
    r1 = api.post(f"{V1}/models", json={"name": "fraud"}, headers=k)
    assert r1.status_code == 201 and "idempotent-replayed" not in r1.headers
    r2 = api.post(f"{V1}/models", json={"name": "fraud"}, headers=k)
    assert r2.status_code == 201 and r2.headers["idempotent-replayed"] == "true"
    assert r2.content == r1.content
    assert_problem(api.post(f"{V1}/models", json={"name": "other"}, headers=k), 422,
                   "create-fraud-1")
    # without the key the duplicate is a conflict
    assert_problem(api.post(f"{V1}/models", json={"name": "fraud"}), 409)
    # a version created once, however often the client retries
    digest = upload(api, linear_model()).json()["digest"]
    kv = {"Idempotency-Key": "v-1"}
    body = {"artifact_digest": digest, "metadata": {"metrics": {"auc": 0.5}}}
    first = api.post(f"{V1}/models/fraud/versions", json=body, headers=kv)
    assert first.status_code == 201
    for _ in range(3):
        again = api.post(f"{V1}/models/fraud/versions", json=body, headers=kv)
        assert again.status_code == 201 and again.content == first.content
        assert again.headers["idempotent-replayed"] == "true"
    assert len(api.get(f"{V1}/models/fraud/versions").json()["items"]) == 1
    # the same key on another path is another request
    assert_problem(api.post(f"{V1}/models", json={"name": "zz"}, headers=kv), 422)
    # an error answer is replayed too (the first attempt's 404)
    kx = {"Idempotency-Key": "v-missing"}
    miss = {"artifact_digest": "sha256:" + "c" * 64}
    r = api.post(f"{V1}/models/fraud/versions", json=miss, headers=kx)
    assert_problem(r, 404)
    r = api.post(f"{V1}/models/fraud/versions", json=miss, headers=kx)
    assert_problem(r, 404)
    assert r.headers["idempotent-replayed"] == "true"
    # artifact uploads
    ka = {"Idempotency-Key": "art-1"}
    a1 = upload(api, linear_model(bias=5), headers=ka)
    a2 = upload(api, linear_model(bias=5), headers=ka)
    assert a1.status_code == 201 and a2.status_code == 201 and a2.content == a1.content
    assert a2.headers["idempotent-replayed"] == "true"
    assert_problem(upload(api, linear_model(bias=6), headers=ka), 422, "art-1")


def test_idempotency_in_flight_conflict(registry, models):
    srv = registry()
    api = srv.api()
    data = models["big"]
    head = (f"POST {V1}/artifacts HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\n"
            f"Idempotency-Key: slow-1\r\n\r\n").encode()
    s = srv.connect(timeout=30 * SLOW)
    s.sendall(head + data[:1000])
    # the key is claimed when the head arrives; then the body streams to a temporary file
    tmp = os.path.join(srv.data_dir, "artifacts", "tmp")
    deadline = time.monotonic() + 10 * SLOW
    while not os.listdir(tmp):
        assert time.monotonic() < deadline, "the upload never started"
        time.sleep(0.005)
    r = upload(api, data, headers={"Idempotency-Key": "slow-1"})
    assert_problem(r, 409, "slow-1", "in progress")
    s.sendall(data[1000:])
    first = Reader(s).read_response()
    s.close()
    assert first.status == 201, first
    contract_check(srv, "POST", f"{V1}/artifacts", first)
    r = upload(api, data, headers={"Idempotency-Key": "slow-1"})
    assert r.status_code == 201 and r.headers["idempotent-replayed"] == "true"
    assert r.content == first.body


def store_sql(srv, request, sql):
    """Run one statement on a server's store, behind its back (to age idempotency keys)."""
    if srv.store:
        pg = request.getfixturevalue("postgres")
        dbname = srv.store.rsplit("/", 1)[1]
        pg._as_pg("/usr/lib/postgresql/15/bin/psql", "-h", "127.0.0.1", "-p", str(pg.port),
                  "-U", "postgres", "-d", dbname, "-q", "-c", sql)
    else:
        import sqlite3
        con = sqlite3.connect(os.path.join(srv.data_dir, "registry.db"), timeout=10)
        with con:
            con.execute(sql)
        con.close()


def test_idempotency_keys_expire(registry, request):
    srv = registry()
    api = srv.api()
    k = {"Idempotency-Key": "old-key"}
    assert api.post(f"{V1}/models", json={"name": "a"}, headers=k).status_code == 201
    assert_problem(api.post(f"{V1}/models", json={"name": "b"}, headers=k), 422)
    day = 24 * 3600 * 1000
    store_sql(srv, request, f"UPDATE registry_idempotency SET created_ms = created_ms - {day + 1000}")
    r = api.post(f"{V1}/models", json={"name": "b"}, headers=k)
    assert r.status_code == 201 and "idempotent-replayed" not in r.headers, r.text
    # a claim left in flight by a registry that died is given up after an hour
    store_sql(srv, request, "INSERT INTO registry_idempotency (idem_key, scope, body_sha, status,"
              " content_type, response, created_ms) VALUES ('stuck', 'POST /api/v1/models', '',"
              f" 0, '', '', {int(time.time() * 1000)})")
    assert_problem(api.post(f"{V1}/models", json={"name": "c"},
                            headers={"Idempotency-Key": "stuck"}), 409)
    store_sql(srv, request, f"UPDATE registry_idempotency SET created_ms = "
              f"{int(time.time() * 1000) - 3600 * 1000 - 1000} WHERE idem_key = 'stuck'")
    r = api.post(f"{V1}/models", json={"name": "c"}, headers={"Idempotency-Key": "stuck"})
    assert r.status_code == 201, r.text


def contract_check(srv, method, path, raw):
    hdrs = {k: v for k, v in raw.headers}
    srv.contract.check(method, path, raw.status, hdrs, raw.body)


# ---- the event log ----


def snapshot(api, names):
    out = {"models": walk(api, f"{V1}/models", 3)[0]}
    for n in names:
        out[n] = {
            "model": api.get(f"{V1}/models/{n}").json(),
            "versions": walk(api, f"{V1}/models/{n}/versions", 2)[0],
            "aliases": walk(api, f"{V1}/models/{n}/aliases", 2)[0],
            "events": walk(api, f"{V1}/models/{n}/events", 4)[0],
        }
    return out


def test_events_trail_and_projection_rebuild(registry):
    srv = registry()
    api = srv.api()
    new_model(api, "fraud", tags={"team": "risk"})
    new_model(api, "churn")
    new_model(api, "gone")
    for i in range(3):
        new_version(api, "fraud", linear_model(bias=i))
    new_version(api, "churn", linear_model(bias=9), status="rejected")
    api.put(f"{V1}/models/fraud/aliases/production", json={"version": 1})
    api.put(f"{V1}/models/fraud/aliases/production", json={"version": 2})
    api.put(f"{V1}/models/fraud/aliases/canary", json={"version": 3})
    api.delete(f"{V1}/models/fraud/aliases/canary")
    api.patch(f"{V1}/models/fraud/versions/3", json={"status": "archived", "description": "old"})
    api.patch(f"{V1}/models/fraud", json={"description": "Card fraud", "tags": {}})
    api.delete(f"{V1}/models/gone")
    ev = walk(api, f"{V1}/models/fraud/events", 100)[0]
    assert [e["type"] for e in ev] == [
        "loom.model.created", "loom.model.version.created", "loom.model.version.created",
        "loom.model.version.created", "loom.model.alias.changed", "loom.model.alias.changed",
        "loom.model.alias.changed", "loom.model.alias.changed", "loom.model.version.updated",
        "loom.model.updated"]
    assert [e["seq"] for e in ev] == list(range(1, 11))
    assert len({e["id"] for e in ev}) == 10 and [e["id"] for e in ev] == sorted(e["id"]
                                                                              for e in ev)
    assert ev[5]["data"] == {"alias": "production", "version": 2, "previous_version": 1}
    assert ev[7]["data"] == {"alias": "canary", "version": None, "previous_version": 3}
    assert ev[8]["data"]["status"] == "archived" and ev[8]["data"]["description"] == "old"
    assert ev[1]["data"]["artifact_digest"].startswith("sha256:")
    assert all(e["model"] == "fraud" and e["source"] == f"{V1}/models/fraud" for e in ev)
    # a deleted model's trail stays readable
    gone = api.get(f"{V1}/models/gone/events").json()["items"]
    assert [e["type"] for e in gone] == ["loom.model.created", "loom.model.deleted"]
    before = snapshot(api, ["fraud", "churn"])
    # a rebuild from the log gives identical answers
    srv.restart("--registry.rebuild-projections")
    assert any(o.get("msg") == "projections rebuilt from the event log" and o.get("events") == 14
               for o in srv.json_logs()), srv.stderr_text()
    api = srv.api()
    assert snapshot(api, ["fraud", "churn"]) == before
    assert_problem(api.get(f"{V1}/models/gone"), 404)
    # and the log goes on where it was
    api.put(f"{V1}/models/fraud/aliases/canary", json={"version": 1})
    assert api.get(f"{V1}/models/fraud/events?after=10").json()["items"][0]["seq"] == 11


def test_restart_keeps_everything(registry, models):
    srv = registry()
    api = srv.api()
    new_model(api, "fraud", description="d", tags={"a": "b"})
    v = new_version(api, "fraud", models["xgb"], metadata={"metrics": {"auc": 0.9}})
    api.put(f"{V1}/models/fraud/aliases/production", json={"version": 1})
    api.post(f"{V1}/models", json={"name": "k"}, headers={"Idempotency-Key": "restart-key"})
    before = snapshot(api, ["fraud"])
    srv.restart()
    api = srv.api()
    assert snapshot(api, ["fraud"]) == before
    r = api.get(f"{V1}/models/fraud/versions/1/artifact")
    assert r.status_code == 200 and r.content == models["xgb"]
    assert api.get(f"{V1}/resolve/fraud@production").json() == v
    r = api.post(f"{V1}/models", json={"name": "k"}, headers={"Idempotency-Key": "restart-key"})
    assert r.status_code == 201 and r.headers["idempotent-replayed"] == "true"


# ---- operations ----


def test_metrics_and_readyz(registry):
    srv = registry()
    api = srv.api()
    r = api.get("/readyz")
    assert r.status_code == 200
    new_model(api, "a")
    new_model(api, "b")
    new_version(api, "a", linear_model())
    api.get(f"{V1}/models/a")
    assert srv.metric("loom_registry_models") == 2
    assert srv.metric("loom_registry_versions") == 1
    assert srv.metric('loom_registry_events_total{type="loom.model.created"}') == 2
    assert srv.metric('loom_registry_events_total{type="loom.model.version.created"}') == 1
    text = srv.metrics()
    assert 'route="/api/v1/models/{model}"' in text, text[:3000]
    api.delete(f"{V1}/models/b")
    assert srv.metric("loom_registry_models") == 1


def test_settings_are_listed():
    from conftest import run_loom
    out = run_loom("serve", "--help").stdout
    for key in ("registry.store", "registry.artifacts", "registry.max-artifact-bytes",
                "registry.rebuild-projections", "registry.listen"):
        assert f"--{key}=" in out or f"--{key}[=" in out, key
    r = run_loom("serve", "registry", "--print-config",
                 "--registry.store=postgres://u:hunter2@h:5432/db")
    assert r.returncode == 0 and "hunter2" not in r.stdout


def test_bad_store_fails_start(tmp_path):
    from conftest import run_loom
    r = run_loom("serve", "registry", f"--data-dir={tmp_path}", "--registry.listen=127.0.0.1:0",
                 "--registry.store=mysql://x")
    assert r.returncode != 0
    assert "registry store" in r.stderr


# ---- the command line ----


def loom_models(srv, *args, timeout=30):
    from conftest import run_loom
    return run_loom("models", f"--registry={srv.base}", *args, timeout=timeout)


def test_cli(registry, models):
    from conftest import run_loom
    if run_loom("models", "--help").returncode != 0:
        pytest.skip("`loom models` is not wired into cmd/main.c in this build")
    srv = registry()
    api = srv.api()
    r = loom_models(srv, "push", models["xgb_path"], "--name", "fraud", "--metrics",
                    "auc=0.97,logloss=0.1")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "fraud" in out and "version 1" in out and sha256_hex(models["xgb"]) in out, out
    assert "4 features" in out and "binary:logistic" in out, out
    v = api.get(f"{V1}/models/fraud/versions/1").json()
    assert v["metadata"]["metrics"] == {"auc": 0.97, "logloss": 0.1}
    r = loom_models(srv, "push", models["xgb_path"], "--name", "fraud")
    assert r.returncode == 0 and "version 2" in r.stdout, r.stdout + r.stderr
    r = loom_models(srv, "alias", "set", "fraud@production", "1")
    assert r.returncode == 0, r.stderr
    assert api.get(f"{V1}/resolve/fraud@production").json()["version"] == 1
    r = loom_models(srv, "list")
    assert r.returncode == 0 and "fraud" in r.stdout and "production" in r.stdout, r.stdout
    r = loom_models(srv, "show", "fraud")
    assert r.returncode == 0 and "production" in r.stdout and "auc" in r.stdout, r.stdout
    # the server says no: exit 1 with its detail
    r = loom_models(srv, "alias", "set", "fraud@production", "7")
    assert r.returncode == 1 and "no version 7" in r.stderr, r.stderr
    r = loom_models(srv, "show", "nope")
    assert r.returncode == 1 and "nope" in r.stderr
    with open(os.path.join(srv.data_dir, "x.pkl"), "wb") as f:
        f.write(pickle.dumps([1, 2]))
    r = loom_models(srv, "push", os.path.join(srv.data_dir, "x.pkl"), "--name", "fraud")
    assert r.returncode == 1 and "pickle" in r.stderr.lower()
    r = loom_models(srv, "alias", "rm", "fraud@production")
    assert r.returncode == 0, r.stderr
    assert_problem(api.get(f"{V1}/resolve/fraud@production"), 404)
    # usage errors: exit 2
    for args in (["push", models["xgb_path"]], ["push"], ["alias", "set", "fraud", "1"],
                 ["alias", "set", "fraud@prod", "x"], ["frob"], [], ["show"],
                 ["push", "/nonexistent", "--name", "x"], ["push", models["xgb_path"],
                                                          "--name", "x", "--metrics", "auc"]):
        r = loom_models(srv, *args)
        assert r.returncode == 2, (args, r.returncode, r.stdout, r.stderr)
        assert r.stderr, args
    for args in (["--help"], ["push", "--help"], ["list", "--help"], ["alias", "--help"],
                 ["alias", "set", "--help"], ["show", "--help"]):
        r = run_loom("models", *args)
        assert r.returncode == 0 and "Usage: loom models" in r.stdout, (args, r.stdout)
    # no server: a clear error, exit 1
    from conftest import free_port
    r = run_loom("models", f"--registry=http://127.0.0.1:{free_port()}", "list")
    assert r.returncode == 1 and "registry" in r.stderr.lower(), r.stderr
    # $LOOM_REGISTRY is the default
    r = run_loom("models", "list", env={"LOOM_REGISTRY": srv.base})
    assert r.returncode == 0 and "fraud" in r.stdout
