# SPDX-License-Identifier: Apache-2.0
"""The KServe v2 / Open Inference Protocol REST surface of `loom serve inference`, checked
against the specification's schemas with the spec-only client in kserve_client.py.

One server (module-scoped) serves the reference models from tests/models/train.py (cancer,
iris) and small linear models whose answers are exact integers (y = x . [1, 2, 3]), with
batching (max_batch_size 8), without it (max_batch_size 0), with a 3-D input, and with other
input/output datatypes. Covered: health, server/model metadata, model ready and config,
inference responses (keys, types, shapes, datatypes, `id` echo, model_version as a string,
Content-Type), flat and nested data, every numeric datatype in JSON and binary (FP16 binary
only), `outputs` selection, binary outputs and their layout, request and input `parameters`,
the classification extension (JSON and binary BYTES), a raw binary request
(Inference-Header-Content-Length: 0), the repository and statistics endpoints' schemas, and
the error contract: each malformed request gets 400 with a JSON {"error": "..."} naming the
problem, 404 for unknown models and versions, 405 with Allow, and the server keeps answering
after every one of them.
"""

import json

import numpy as np
import pytest

from conftest import Reader, request_bytes
from inference_fixtures import *  # noqa: F401,F403 - fixtures and helpers
from inference_fixtures import copy_reference, linear_model, rows_json, write_model
from kserve_client import (InferenceServerError, InferInput, InferRequestedOutput,
                           InferResult, deserialize_bytes)

W = np.array([1.0, 2.0, 3.0])  # the linear models' weights; bias 0
NUMERIC = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
           "FP16", "FP32", "FP64"]


@pytest.fixture(scope="module")
def env(module_servers, reference_models, tmp_path_factory):
    repo = tmp_path_factory.mktemp("repo")
    copy_reference(reference_models, repo, "cancer")
    copy_reference(reference_models, repo, "iris")
    lin = linear_model(W, 0.0)
    write_model(repo, "lin", {"backend": "linear", "max_batch_size": 8}, {1: lin})
    write_model(repo, "lin0", {"backend": "linear", "max_batch_size": 0}, {1: lin})
    write_model(repo, "lin3d", {"backend": "linear", "max_batch_size": 0,
                                "input": [{"name": "x", "data_type": "TYPE_FP32",
                                           "dims": [-1, -1, 3]}],
                                "output": [{"name": "y", "data_type": "TYPE_FP32",
                                            "dims": [-1, -1, 1]}]}, {1: lin})
    write_model(repo, "linint", {"backend": "linear", "max_batch_size": 8,
                                 "input": [{"name": "x", "data_type": "TYPE_INT16", "dims": [3]}],
                                 "output": [{"name": "y", "data_type": "TYPE_INT32",
                                             "dims": [1]}]}, {1: lin})
    write_model(repo, "lin64", {"backend": "linear", "max_batch_size": 8,
                                "output": [{"name": "output__0", "data_type": "TYPE_FP64",
                                            "dims": [1]}]}, {1: lin})
    srv = module_servers(repo)
    c = srv.client()
    return {"srv": srv, "c": c, "ref": reference_models}


def post_raw(srv, path, body, headers=None):
    """POST over a raw socket (no client-side URL normalisation); RawResponse."""
    with srv.connect() as s:
        s.sendall(request_bytes("POST", path, dict(headers or {}, Connection="close"), body))
        return Reader(s).read_response()


def still_serving(c):
    """The server answers a valid request after an error."""
    r = c.infer("lin", {"input__0": np.array([[1, 1, 1]], dtype=np.float32)})
    assert r.as_numpy("output__0").tolist() == [[6.0]]


def assert_error(r, status, *words):
    """r: requests.Response. JSON {"error": str} naming the problem (every word, any case)."""
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers.get("Content-Type", "").startswith("application/json"), r.headers
    body = r.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], body
    msg = body["error"].lower()
    for w in words:
        assert w.lower() in msg, f"error {body['error']!r} does not mention {w!r}"
    return body["error"]


# ---- health and metadata ----


def test_health_live_and_ready(env):
    c, srv = env["c"], env["srv"]
    for path in ("/v2/health/live", "/v2/health/ready", "/livez", "/readyz"):
        r = c.request("GET", path)
        assert r.status_code == 200, (path, r.text)
        if r.content and path.startswith("/v2"):
            body = r.json()  # the OIP spec's {"live": true} / {"ready": true}, if any body
            assert body.get(path.rsplit("/", 1)[1]) is True, body
    assert c.is_server_live() and c.is_server_ready()
    assert srv.proc.poll() is None


def test_server_metadata(env):
    c = env["c"]
    r = c.request("GET", "/v2")
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("application/json")
    md = r.json()
    assert isinstance(md["name"], str) and md["name"]
    assert isinstance(md["version"], str) and md["version"]
    assert isinstance(md["extensions"], list)
    assert all(isinstance(e, str) for e in md["extensions"])
    for ext in ("binary_tensor_data", "classification", "model_repository", "statistics",
                "model_configuration"):
        assert ext in md["extensions"], md


def _check_tensor_meta(t):
    assert set(t) >= {"name", "datatype", "shape"}, t
    assert isinstance(t["name"], str) and t["name"]
    assert t["datatype"] in NUMERIC + ["BYTES"], t
    assert isinstance(t["shape"], list) and all(isinstance(d, int) for d in t["shape"]), t


def test_model_metadata_schema(env):
    c = env["c"]
    for name, platform, ins, outs in (("cancer", "fil", [-1, 30], [-1, 1]),
                                      ("iris", "fil", [-1, 4], [-1, 3]),
                                      ("lin", "linear", [-1, 3], [-1, 1]),
                                      ("lin0", "linear", [-1, 3], [-1, 1]),
                                      ("lin3d", "linear", [-1, -1, 3], [-1, -1, 1])):
        md = c.model_metadata(name)
        assert md["name"] == name
        assert md["versions"] == ["1"]
        assert isinstance(md["platform"], str) and md["platform"] == platform, md
        assert len(md["inputs"]) == 1 and len(md["outputs"]) == 1
        for t in md["inputs"] + md["outputs"]:
            _check_tensor_meta(t)
        assert md["inputs"][0]["shape"] == ins, md
        assert md["outputs"][0]["shape"] == outs, md
        assert c.model_metadata(name, version=1)["versions"] == ["1"]
    md = c.model_metadata("linint")
    assert md["inputs"][0] == {"name": "x", "datatype": "INT16", "shape": [-1, 3]}
    assert md["outputs"][0] == {"name": "y", "datatype": "INT32", "shape": [-1, 1]}


def test_model_ready_and_config(env):
    c = env["c"]
    assert c.is_model_ready("cancer") and c.is_model_ready("cancer", 1)
    assert not c.is_model_ready("nope")
    assert not c.is_model_ready("cancer", 9)
    r = c.request("GET", "/v2/models/cancer/ready")
    if r.content:
        assert r.json() == {"name": "cancer", "ready": True}
    cfg = c.model_config("cancer")
    assert cfg["name"] == "cancer" and cfg["max_batch_size"] == 32768
    assert cfg["input"][0]["name"] == "input__0" and cfg["input"][0]["dims"] == [30]
    assert c.model_config("cancer", 1) == cfg


# ---- inference responses ----


def _check_response(res, model, n_out=1, request_id=None):
    resp = res.get_response()
    assert resp["model_name"] == model
    assert isinstance(resp["model_version"], str) and resp["model_version"] == "1"
    if request_id is None:
        assert "id" not in resp
    else:
        assert resp["id"] == request_id
    assert isinstance(resp["outputs"], list) and len(resp["outputs"]) == n_out
    for o in resp["outputs"]:
        assert isinstance(o["name"], str)
        assert o["datatype"] in NUMERIC + ["BYTES"]
        assert isinstance(o["shape"], list) and all(isinstance(d, int) and d >= 0
                                                    for d in o["shape"])
        if "data" in o:
            assert isinstance(o["data"], list)
            assert len(o["data"]) == int(np.prod(o["shape"])), o  # flat, row-major
        else:
            assert isinstance(o["parameters"]["binary_data_size"], int)
    return resp


def test_infer_response_schema_and_id_echo(env, reference_models):
    c = env["c"]
    X, _ = rows_json(reference_models, "cancer")
    res = c.infer("cancer", {"input__0": X[:5]}, request_id="req-42 \u00e9\"\\")
    assert res.http.headers["Content-Type"].startswith("application/json")
    resp = _check_response(res, "cancer", request_id="req-42 \u00e9\"\\")
    assert resp["outputs"][0] == {**resp["outputs"][0], "name": "output__0", "datatype": "FP32",
                                  "shape": [5, 1]}
    res = c.infer("cancer", {"input__0": X[:2]})
    _check_response(res, "cancer")
    res = c.infer("cancer", {"input__0": X[:2]}, request_id="")
    assert res.get_response().get("id", "") == ""


def test_flat_and_nested_data_agree(env):
    c = env["c"]
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    flat = c.infer("lin", [InferInput.from_numpy("input__0", x)])
    nested = c.infer("lin", [InferInput.from_numpy("input__0", x, nested=True)])
    want = (x.astype(np.float64) @ W).reshape(4, 1)
    assert flat.as_numpy("output__0").tolist() == want.tolist()
    assert nested.as_numpy("output__0").tolist() == want.tolist()
    # 3-D input, nested three deep
    x3 = np.arange(2 * 2 * 3, dtype=np.float32).reshape(2, 2, 3)
    r = c.infer("lin3d", [InferInput.from_numpy("x", x3, nested=True)])
    assert r.output("y")["shape"] == [2, 2, 1]
    assert r.as_numpy("y").tolist() == (x3.astype(np.float64) @ W).reshape(2, 2, 1).tolist()


def _values_for(datatype):
    """Two rows of three exactly representable values for each datatype."""
    if datatype == "BOOL":
        return np.array([[True, False, True], [False, True, True]])
    dt = np.dtype({"UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
                   "UINT64": np.uint64, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32,
                   "INT64": np.int64, "FP16": np.float16, "FP32": np.float32,
                   "FP64": np.float64}[datatype])
    if datatype.startswith("UINT"):
        hi = min(np.iinfo(dt).max, 1 << 20)
        return np.array([[0, 1, hi], [7, 200 if hi >= 200 else 2, 3]], dtype=dt)
    if datatype.startswith("INT"):
        lo = max(np.iinfo(dt).min, -(1 << 20))
        return np.array([[lo, -1, 5], [7, 100, -3]], dtype=dt)
    return np.array([[0.5, -1.25, 2.0], [1024.0, 0.0, -0.375]], dtype=dt)


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("datatype", NUMERIC)
def test_every_numeric_datatype_is_converted(env, datatype, binary):
    c = env["c"]
    if datatype == "FP16" and not binary:
        pytest.skip("FP16 travels in binary only (Triton rejects FP16 JSON data)")
    x = _values_for(datatype)
    want = (x.astype(np.float64) @ W).astype(np.float32).reshape(2, 1)
    inp = InferInput.from_numpy("input__0", x, datatype=datatype, binary=binary)
    res = c.infer("lin", [inp])
    assert res.as_numpy("output__0").tolist() == want.tolist(), datatype
    # integers at the edges of their range convert exactly to float32 where representable
    if datatype.startswith(("INT", "UINT")):
        info = np.iinfo(np.dtype(x.dtype))
        edge = np.array([[info.min, info.max, 0]], dtype=x.dtype)
        r = c.infer("lin", [InferInput.from_numpy("input__0", edge, binary=binary)])
        got = r.as_numpy("output__0")[0, 0]
        exp = np.float32(np.float32(info.min) + np.float32(2.0) * np.float32(info.max))
        assert got == pytest.approx(float(exp), rel=1e-6), (datatype, got, exp)


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_output_datatypes_follow_the_config(env, binary):
    c = env["c"]
    x = np.array([[1.5, 2, 3], [-1, -1, -0.5]], dtype=np.float32)
    r = c.infer("linint", [InferInput.from_numpy("x", x)], outputs=[
        InferRequestedOutput("y", binary=binary)])
    assert r.output("y")["datatype"] == "INT32"
    y = r.as_numpy("y")
    assert y.dtype == np.int32 and y.tolist() == [[14], [-4]]  # 14.5 and -4.5, truncated
    r = c.infer("lin64", {"input__0": x}, binary_outputs=binary)
    assert r.output("output__0")["datatype"] == "FP64"
    assert r.as_numpy("output__0").dtype == np.float64
    assert r.as_numpy("output__0").tolist() == [[14.5], [-4.5]]


def test_outputs_selection_and_binary_layout(env, reference_models):
    c = env["c"]
    X, _ = rows_json(reference_models, "iris")
    x = X[:4]
    base = c.infer("iris", {"input__0": x})
    assert [o["name"] for o in base.get_response()["outputs"]] == ["output__0"]
    # explicitly listed, JSON
    r = c.infer("iris", {"input__0": x}, outputs=[InferRequestedOutput("output__0")])
    assert np.array_equal(r.as_numpy("output__0"), base.as_numpy("output__0"))
    # empty list: every output (the spec: absent -> all; loom treats [] like absent)
    req = {"inputs": [{"name": "input__0", "shape": [4, 4], "datatype": "FP32",
                       "data": x.reshape(-1).tolist()}], "outputs": []}
    rr = c.infer_raw("iris", json.dumps(req).encode(), {"Content-Type": "application/json"})
    assert rr.status_code == 200, rr.text
    # binary output: JSON header then the raw little-endian tensor
    r = c.infer("iris", {"input__0": x}, outputs=[InferRequestedOutput("output__0",
                                                                       binary=True)])
    h = r.http.headers
    assert h["Content-Type"] == "application/octet-stream"
    hlen = int(h["Inference-Header-Content-Length"])
    header = json.loads(r.http.content[:hlen])
    out = header["outputs"][0]
    assert "data" not in out
    assert out["parameters"]["binary_data_size"] == 4 * 3 * 4
    assert len(r.http.content) == hlen + 4 * 3 * 4
    assert int(h["Content-Length"]) == len(r.http.content)
    blob = np.frombuffer(r.http.content[hlen:], dtype="<f4").reshape(4, 3)
    assert np.array_equal(blob, r.as_numpy("output__0"))
    # JSON is the float32 value's shortest/exact decimal: both agree bit for bit
    assert np.array_equal(blob, base.as_numpy("output__0").astype(np.float32))
    # request-level binary_data_output
    r2 = c.infer("iris", {"input__0": x}, parameters={"binary_data_output": True})
    assert r2.http.headers["Content-Type"] == "application/octet-stream"
    assert np.array_equal(r2.as_numpy("output__0"), blob)
    # per-output binary_data false overrides the request-level default
    r3 = c.infer("iris", {"input__0": x}, parameters={"binary_data_output": True},
                 outputs=[InferRequestedOutput("output__0", parameters={"binary_data": False})])
    assert "data" in r3.output("output__0")
    assert "Inference-Header-Content-Length" not in r3.http.headers


def test_request_and_input_parameters(env):
    c = env["c"]
    x = np.array([[1, 2, 3]], dtype=np.float32)
    r = c.infer("lin", {"input__0": x}, parameters={"custom": "v", "n": 3, "flag": True})
    assert r.as_numpy("output__0").tolist() == [[14.0]]
    inp = InferInput.from_numpy("input__0", x)
    inp.parameters["note"] = "hello"
    assert c.infer("lin", [inp]).as_numpy("output__0").tolist() == [[14.0]]
    with pytest.raises(InferenceServerError) as e:
        c.infer("lin", {"input__0": x}, parameters={"triton_thing": 1})
    assert e.value.status == 400 and "triton_" in e.value.message
    with pytest.raises(InferenceServerError) as e:
        c.infer("lin", {"input__0": x}, parameters={"nested": {"a": 1}})
    assert e.value.status == 400 and "nested" in e.value.message
    still_serving(c)


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_classification_extension(env, reference_models, binary):
    c = env["c"]
    X, _ = rows_json(reference_models, "iris")
    x = X[:6]
    probs = c.infer("iris", {"input__0": x}).as_numpy("output__0")
    r = c.infer("iris", {"input__0": x}, outputs=[
        InferRequestedOutput("output__0", binary=binary, classification=2)])
    out = r.output("output__0")
    assert out["datatype"] == "BYTES" and out["shape"] == [6, 2]
    got = r.as_numpy("output__0")
    for i in range(6):
        order = np.argsort(-probs[i], kind="stable")
        for k in range(2):
            s = got[i, k]
            s = s.decode() if isinstance(s, bytes) else s
            value, index = s.split(":")[:2]
            assert int(index) == order[k], (i, s, probs[i])
            assert float(value) == pytest.approx(float(probs[i, order[k]]), abs=1e-6)
    if binary:
        hlen = int(r.http.headers["Inference-Header-Content-Length"])
        items = deserialize_bytes(r.http.content[hlen:])
        assert len(items) == 12


def test_raw_binary_request(env):
    c = env["c"]
    # batching model: the body is one row of the input's datatype
    row = np.array([1, 2, 3], dtype="<f4")
    r = c.infer_raw("lin", row.tobytes(), {"Inference-Header-Content-Length": "0",
                                           "Content-Type": "application/octet-stream"})
    assert r.status_code == 200, r.text
    res = InferResult(r)
    assert res.output("output__0")["shape"] == [1, 1]
    assert res.as_numpy("output__0").tolist() == [[14.0]]
    # no batching and a variable first dim: the row count follows from the size
    rows = np.array([[1, 2, 3], [4, 5, 6]], dtype="<f4")
    r = c.infer_raw("lin0", rows.tobytes(), {"Inference-Header-Content-Length": "0"})
    assert r.status_code == 200, r.text
    assert InferResult(r).as_numpy("output__0").tolist() == [[14.0], [32.0]]
    # the input's configured datatype (INT16) is what the raw bytes hold
    r = c.infer_raw("linint", np.array([1, 2, 3], dtype="<i2").tobytes(),
                    {"Inference-Header-Content-Length": "0"})
    assert r.status_code == 200, r.text
    assert InferResult(r).as_numpy("y").tolist() == [[14]]
    # a size that fits no whole row
    r = c.infer_raw("lin", row.tobytes()[:5], {"Inference-Header-Content-Length": "0"})
    assert_error(r, 400, "raw", "5 bytes")
    still_serving(c)


# ---- the error contract ----


def _bin(header, blob, hlen=None):
    h = json.dumps(header).encode()
    return h + blob, {"Inference-Header-Content-Length": str(len(h) if hlen is None else hlen)}


def _req(**kw):
    inp = {"name": "input__0", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}
    inp.update(kw)
    return {"inputs": [inp]}


BLOB = np.array([1, 2, 3], dtype="<f4").tobytes()
BIN_HDR = {"inputs": [{"name": "input__0", "shape": [1, 3], "datatype": "FP32",
                       "parameters": {"binary_data_size": 12}}]}

# (id, model, body, headers, status, words the message must contain)
ERRORS = [
    ("bad-json", "lin", b'{"inputs": [', None, 400, ["json"]),
    ("not-an-object", "lin", b"[1, 2]", None, 400, ["object"]),
    ("empty-body", "lin", b"", None, 400, ["empty"]),
    ("no-inputs", "lin", {"inputs": []}, None, 400, ["inputs"]),
    ("unknown-datatype", "lin", _req(datatype="FP128"), None, 400, ["datatype", "FP128"]),
    ("count-short", "lin", _req(data=[1, 2]), None, 400, ["3 elements", "2"]),
    ("count-long", "lin", _req(data=[1, 2, 3, 4]), None, 400, ["3 elements", "4"]),
    ("count-nested", "lin", _req(shape=[2, 3], data=[[1, 2, 3]]), None, 400, ["6 elements"]),
    ("negative-dim", "lin", _req(shape=[-1, 3]), None, 400, ["shape", "non-negative"]),
    ("dim-not-integer", "lin", _req(shape=[1, "3"]), None, 400, ["shape"]),
    ("overflowing-dims", "lin3d", {"inputs": [{"name": "x", "shape": [2 ** 62, 2 ** 62, 3],
                                               "datatype": "FP32", "data": [1, 2, 3]}]},
     None, 400, ["elements"]),
    ("dim-over-int64", "lin", _req(shape=[2 ** 64, 3]), None, 400, ["shape"]),
    ("too-many-elements", "lin0", _req(shape=[6_000_000, 3]), None, 400,
     ["more than", "elements"]),
    ("batch-over-max", "lin", _req(shape=[9, 3], data=[1] * 27), None, 400,
     ["max_batch_size", "9"]),
    ("wrong-feature-count", "lin", _req(shape=[1, 4], data=[1, 2, 3, 4]), None, 400,
     ["shape", "[1,4]"]),
    ("wrong-input-name", "lin", _req(name="features"), None, 400, ["features", "input__0"]),
    ("duplicate-inputs", "lin", {"inputs": _req()["inputs"] * 2}, None, 400, ["twice"]),
    ("unknown-output", "lin", dict(_req(), outputs=[{"name": "probabilities"}]), None, 400,
     ["probabilities"]),
    ("duplicate-output", "lin", dict(_req(), outputs=[{"name": "output__0"}] * 2), None, 400,
     ["twice"]),
    ("nan-linear", "lin", b'{"inputs":[{"name":"input__0","shape":[1,3],"datatype":"FP32",'
                          b'"data":[1,NaN,3]}]}', None, 400, ["nan", "finite"]),
    ("inf-linear", "lin", b'{"inputs":[{"name":"input__0","shape":[1,3],"datatype":"FP32",'
                          b'"data":[1,2,Infinity]}]}', None, 400, ["inf", "finite"]),
    ("fp32-overflow", "lin", _req(data=[1e39, 1, 1]), None, 400, ["range", "FP32"]),
    ("bytes-for-numeric", "lin", _req(datatype="BYTES", data=["a", "b", "c"]), None, 400,
     ["BYTES", "numbers"]),
    ("string-in-fp32", "lin", _req(data=["1", 2, 3]), None, 400, ["not a number"]),
    ("int8-out-of-range", "lin", _req(datatype="INT8", data=[128, 1, 1]), None, 400,
     ["range", "INT8"]),
    ("uint8-negative", "lin", _req(datatype="UINT8", data=[-1, 1, 1]), None, 400,
     ["range", "UINT8"]),
    ("uint64-over", "lin", _req(datatype="UINT64", data=[2 ** 64, 1, 1]), None, 400,
     ["range", "UINT64"]),
    ("int32-fraction", "lin", _req(datatype="INT32", data=[1.5, 1, 1]), None, 400,
     ["integer"]),
    ("bool-as-number", "lin", _req(datatype="BOOL", data=[1, 0, 1]), None, 400,
     ["true or false"]),
    ("id-not-string", "lin", dict(_req(), id=7), None, 400, ["id"]),
    ("binary-short", "lin", *_bin(BIN_HDR, BLOB[:8]), 400, ["12 bytes", "8"]),
    ("binary-long", "lin", *_bin(BIN_HDR, BLOB + b"xyz"), 400, ["3 bytes"]),
    ("binary-size-vs-shape", "lin",
     *_bin({"inputs": [{"name": "input__0", "shape": [1, 3], "datatype": "FP32",
                        "parameters": {"binary_data_size": 8}}]}, BLOB[:8]),
     400, ["binary_data_size", "12"]),
    ("binary-missing-header", "lin", json.dumps(BIN_HDR).encode(), None, 400,
     ["Inference-Header-Content-Length"]),
    ("binary-header-over-body", "lin", _bin(BIN_HDR, BLOB)[0],
     {"Inference-Header-Content-Length": "100000"}, 400, ["Inference-Header-Content-Length"]),
    ("binary-header-not-a-number", "lin", _bin(BIN_HDR, BLOB)[0],
     {"Inference-Header-Content-Length": "12abc"}, 400, ["Inference-Header-Content-Length"]),
    ("binary-and-data", "lin", _req(parameters={"binary_data_size": 12}), None, 400,
     ["binary_data_size", "data"]),
    ("no-data", "lin", {"inputs": [{"name": "input__0", "shape": [1, 3], "datatype": "FP32"}]},
     None, 400, ["data"]),
    ("triton-parameter", "lin", dict(_req(), parameters={"triton_x": 1}), None, 400,
     ["triton_"]),
    ("classification-zero", "iris",
     {"inputs": [{"name": "input__0", "shape": [1, 4], "datatype": "FP32",
                  "data": [1, 2, 3, 4]}],
      "outputs": [{"name": "output__0", "parameters": {"classification": 0}}]},
     None, 400, ["classification"]),
]


@pytest.mark.parametrize("case", ERRORS, ids=[e[0] for e in ERRORS])
def test_malformed_request_is_400_with_a_message(env, case):
    name, model, body, headers, status, words = case
    c = env["c"]
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
    h = {"Content-Type": "application/json"}
    h.update(headers or {})
    r = c.infer_raw(model, body, h)
    assert_error(r, status, *words)
    still_serving(c)
    assert env["srv"].proc.poll() is None


def test_binary_data_without_header_names_the_header(env):
    """A binary request whose Inference-Header-Content-Length header was forgotten: the body is
    JSON followed by bytes. The answer is 400 either way; it should say what is missing."""
    c = env["c"]
    body, _ = _bin(BIN_HDR, BLOB)
    r = c.infer_raw("lin", body, {"Content-Type": "application/octet-stream"})
    msg = assert_error(r, 400)
    assert "json" in msg.lower() or "inference-header-content-length" in msg.lower(), msg
    still_serving(c)


@pytest.mark.parametrize("outputs", [5, "output__0"], ids=["number", "string"])
def test_outputs_must_be_an_array(env, outputs):
    c = env["c"]
    r = c.infer_raw("lin", json.dumps(dict(_req(), outputs=outputs)).encode(),
                    {"Content-Type": "application/json"})
    assert_error(r, 400, "outputs")


def test_unknown_model_and_version_are_404(env):
    c = env["c"]
    body = json.dumps(_req()).encode()
    for path in ("/v2/models/nope/infer", "/v2/models/lin/versions/7/infer"):
        r = c.request("POST", path, body=body)
        assert_error(r, 404, "nope" if "nope" in path else "7")
    for path in ("/v2/models/nope", "/v2/models/nope/ready", "/v2/models/nope/config",
                 "/v2/models/nope/stats", "/v2/models/lin/versions/7",
                 "/v2/models/lin/versions/7/config", "/v2/models/lin/versions/7/stats"):
        assert_error(c.request("GET", path), 404)
    r = c.request("POST", "/v2/models/lin/versions/abc/infer", body=body)
    assert r.status_code in (400, 404), r.text  # not a version number
    assert_error(c.request("GET", "/v2/no/such/route"), 404)
    still_serving(c)


def test_wrong_method_is_405_with_allow(env):
    c = env["c"]
    for method, path, allowed in (("GET", "/v2/models/lin/infer", "POST"),
                                  ("PUT", "/v2/models/lin", "GET"),
                                  ("DELETE", "/v2", "GET"),
                                  ("GET", "/v2/repository/index", "POST"),
                                  ("POST", "/v2/health/live", "GET")):
        r = c.request(method, path)
        assert_error(r, 405)
        allow = [a.strip() for a in r.headers.get("Allow", "").split(",")]
        assert allowed in allow, (method, path, r.headers)
    still_serving(c)


@pytest.mark.parametrize("path", [
    "/v2/models/../infer", "/v2/models/a..b/infer", "/v2/models/%2e%2e/infer",
    "/v2/models/..%2F..%2Fetc/infer", "/v2/repository/models/../load",
    "/v2/repository/models/a..b/unload"])
def test_dotdot_in_model_name_is_400(env, path):
    r = post_raw(env["srv"], path, json.dumps(_req()).encode(),
                 {"Content-Type": "application/json"})
    assert r.status == 400, r
    assert ".." in r.json()["error"], r
    still_serving(env["c"])


# ---- repository and statistics schemas ----


def test_repository_index_schema(env):
    c = env["c"]
    idx = c.repository_index()
    assert isinstance(idx, list)
    names = {e["name"] for e in idx}
    assert {"cancer", "iris", "lin", "lin0", "lin3d", "linint", "lin64"} <= names
    for e in idx:
        assert isinstance(e["name"], str)
        if "version" in e:
            assert isinstance(e["version"], str)
        if "state" in e:
            assert e["state"] in ("UNKNOWN", "READY", "UNAVAILABLE", "LOADING", "UNLOADING")
        if "reason" in e:
            assert isinstance(e["reason"], str)
    assert all(e.get("state") == "READY" for e in c.repository_index(ready=True))
    # an empty body is allowed (tritonclient sends none)
    r = c.request("POST", "/v2/repository/index", body=b"")
    assert r.status_code == 200 and isinstance(r.json(), list)
    assert_error(c.request("POST", "/v2/repository/index", body=b"{bad"), 400)


def test_load_and_unload_refused_without_explicit_control(env):
    c = env["c"]
    for op in ("load", "unload"):
        r = c.request("POST", f"/v2/repository/models/lin/{op}")
        assert_error(r, 400, "explicit")
    still_serving(c)


def test_statistics_schema(env, reference_models):
    c = env["c"]
    X, _ = rows_json(reference_models, "cancer")
    c.infer("cancer", {"input__0": X[:3]})
    # every model has run once (the stats of a version that never ran are a separate test)
    c.infer("iris", {"input__0": np.ones((1, 4), dtype=np.float32)})
    for m in ("lin", "lin0", "lin64"):
        c.infer(m, {"input__0": np.ones((1, 3), dtype=np.float32)})
    c.infer("linint", {"x": np.ones((1, 3), dtype=np.float32)})
    c.infer("lin3d", {"x": np.ones((1, 1, 3), dtype=np.float32)})
    st = c.statistics("cancer")
    assert list(st) == ["model_stats"] and len(st["model_stats"]) == 1
    m = st["model_stats"][0]
    assert m["name"] == "cancer" and m["version"] == "1"
    for k in ("last_inference", "inference_count", "execution_count"):
        assert isinstance(m[k], int) and m[k] >= 0, k
    assert m["inference_count"] >= 3 and m["execution_count"] >= 1
    assert m["last_inference"] > 1_600_000_000_000  # ms since the epoch
    for k in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output"):
        d = m["inference_stats"][k]
        assert isinstance(d["count"], int) and isinstance(d["ns"], int), (k, d)
    assert m["inference_stats"]["success"]["count"] >= 1
    for b in m["batch_stats"]:
        assert isinstance(b["batch_size"], int) and b["batch_size"] >= 0
        for k in ("compute_input", "compute_infer", "compute_output"):
            assert isinstance(b[k]["count"], int) and isinstance(b[k]["ns"], int)
    one = c.statistics("cancer", 1)["model_stats"]
    assert len(one) == 1 and one[0]["version"] == "1"
    every = c.statistics()
    assert {m["name"] for m in every["model_stats"]} >= {"cancer", "iris", "lin"}
    assert all(isinstance(m["version"], str) for m in every["model_stats"])


def test_keep_alive_survives_errors(env):
    """Errors do not close a keep-alive connection: many requests, good and bad, on one."""
    srv = env["srv"]
    good = json.dumps(_req()).encode()
    bad = json.dumps(_req(data=[1])).encode()
    with srv.connect() as s:
        rd = Reader(s)
        for i in range(20):
            body = bad if i % 2 else good
            s.sendall(request_bytes("POST", "/v2/models/lin/infer",
                                    {"Content-Type": "application/json"}, body))
            r = rd.read_response()
            assert r.status == (400 if i % 2 else 200), r
            assert r.header("connection", "").lower() != "close", r
