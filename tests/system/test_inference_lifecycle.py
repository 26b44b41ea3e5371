# SPDX-License-Identifier: Apache-2.0
"""Model lifecycle, scheduling and observability of `loom serve inference`.

Version policies (latest N, all, specific); model control: none (the load/unload API is
refused with 400 and the repository is not rescanned), poll (a new version directory, a changed
config.json, a new model and a removed model are picked up within a few poll intervals; a
corrupt new version leaves the old one serving), explicit (load and unload through the API, a
`parameters.config` override, unload then infer); model files that are corrupt, truncated,
hostile (huge numbers, cycles in the children arrays, out-of-range feature indices), empty or
not XGBoost fail to load with a reason in /v2/repository/index while the other models keep
serving; hot reload under load (20 explicit reloads with changed configurations, and new
versions picked up by polling, while threads hammer infer: zero failed requests); no memory
growth over 1,000 load/unload cycles (RSS after 100 and after 1,000 cycles); dynamic batching
(concurrent single-row requests merge: execution_count < inference_count), a bounded queue
(503 with Retry-After when max_queue_size is reached), the per-request `timeout` parameter (503
when it expires in the queue); statistics counts; /metrics per model and version (checked with
`promtool check metrics`); readiness once the repository has loaded.

Models are mostly tiny linear models whose answer says which version served it
(y = x . [1, 2, 3] + 100 * version), plus train.py's cancer model where size matters.
"""

import json
import os
import shutil
import threading
import time

import numpy as np
import pytest
import requests

from inference_fixtures import *  # noqa: F401,F403
from conftest import run_loom
from inference_fixtures import (SANITIZED, SLOW, copy_reference, linear_model, promtool_check,
                                wait_until, write_config, write_model)
from kserve_client import InferenceServerClient, InferenceServerError

X1 = np.array([[1, 2, 3]], dtype=np.float32)  # x . [1, 2, 3] = 14
FIGURES = []


def lin(version):
    """A linear model answering 14 + 100 * version for X1."""
    return linear_model([1.0, 2.0, 3.0], 100.0 * version)


def answer(c, model, version=None, x=X1):
    r = c.infer(model, {"input__0": x}, version=version)
    return r.get_response()["model_version"], float(r.as_numpy("output__0")[0, 0])


def served_version(c, model):
    try:
        v, y = answer(c, model)
    except InferenceServerError:
        return None
    assert y == 14 + 100 * int(v), (v, y)  # the answer comes from the version it names
    return v


def index_of(c):
    return {(e["name"], e.get("version")): e for e in c.repository_index()}


def lin_config(**kw):
    cfg = {"backend": "linear", "max_batch_size": 8}
    cfg.update(kw)
    return cfg


@pytest.fixture(scope="module", autouse=True)
def _print_figures():
    yield
    if FIGURES:
        print("\n" + "\n".join(["inference lifecycle figures:"] + ["  " + f for f in FIGURES]))
        path = os.environ.get("LOOM_INFERENCE_SUMMARY")
        if path:
            with open(path, "a") as f:
                f.write("\n".join(FIGURES) + "\n")


# ---- version policies ----


def test_version_policies(inference_server, tmp_path):
    repo = tmp_path / "repo"
    versions = {1: lin(1), 2: lin(2), 3: lin(3)}
    write_model(repo, "default", lin_config(), versions)
    write_model(repo, "latest2", lin_config(version_policy={"latest": {"num_versions": 2}}),
                versions)
    write_model(repo, "all", lin_config(version_policy={"all": {}}), versions)
    write_model(repo, "specific", lin_config(version_policy={"specific": {"versions": [1, 3]}}),
                versions)
    write_model(repo, "specific_missing",
                lin_config(version_policy={"specific": {"versions": [2, 9]}}), versions)
    c = inference_server(repo).client()
    expect = {"default": ["3"], "latest2": ["2", "3"], "all": ["1", "2", "3"],
              "specific": ["1", "3"], "specific_missing": ["2"]}
    idx = index_of(c)
    for model, served in expect.items():
        assert c.model_metadata(model)["versions"] == served, model
        assert served_version(c, model) == served[-1], model  # no version: the highest
        for v in ("1", "2", "3"):
            if v in served:
                assert answer(c, model, v) == (v, 14 + 100 * int(v))
                assert c.is_model_ready(model, v)
                assert idx[(model, v)]["state"] == "READY"
                assert c.model_metadata(model, v)["versions"] == [v]
            else:
                with pytest.raises(InferenceServerError) as e:
                    answer(c, model, v)
                assert e.value.status in (404, 503), (model, v, e.value)
                assert not c.is_model_ready(model, v)
    assert c.model_config("latest2")["version_policy"] == {"latest": {"num_versions": 2}}
    assert c.model_config("specific")["version_policy"] == {"specific": {"versions": [1, 3]}}


def test_one_bad_version_among_good_ones(inference_server, tmp_path):
    repo = tmp_path / "repo"
    write_model(repo, "m", lin_config(version_policy={"all": {}}),
                {1: lin(1), 2: "{\"loom_model\": \"linear\"}", 3: lin(3)})
    c = inference_server(repo).client()
    assert c.model_metadata("m")["versions"] == ["1", "3"]
    assert served_version(c, "m") == "3"
    assert answer(c, "m", "1") == ("1", 114.0)
    with pytest.raises(InferenceServerError) as e:
        answer(c, "m", "2")
    assert e.value.status == 503 and e.value.header("Retry-After"), e.value
    idx = index_of(c)
    assert idx[("m", "2")]["state"] == "UNAVAILABLE" and "m/2/model.json" in idx[("m", "2")][
        "reason"], idx
    assert idx[("m", "1")]["state"] == idx[("m", "3")]["state"] == "READY"
    assert not c.is_model_ready("m", 2) and c.is_model_ready("m")


# ---- model control: none ----


def test_none_mode_refuses_the_api_and_ignores_the_repository(inference_server, tmp_path):
    repo = tmp_path / "repo"
    write_model(repo, "m", lin_config(), {1: lin(1)})
    c = inference_server(repo, "--inference.model-control=none").client()
    for op in ("load", "unload"):
        r = c.request("POST", f"/v2/repository/models/m/{op}")
        assert r.status_code == 400 and "explicit" in r.json()["error"], r.text
    with pytest.raises(InferenceServerError) as e:
        c.load_model("m", config=lin_config())
    assert e.value.status == 400
    write_model(repo, "m", None, {2: lin(2)})
    write_model(repo, "new", lin_config(), {1: lin(1)})
    time.sleep(0.6)
    assert served_version(c, "m") == "1"
    with pytest.raises(InferenceServerError) as e:
        answer(c, "new")
    assert e.value.status in (404, 503)


# ---- model control: poll ----

POLL = ["--inference.model-control=poll", "--inference.poll-interval=100ms"]


def test_poll_picks_up_versions_configs_models_and_removals(inference_server, tmp_path):
    repo = tmp_path / "repo"
    write_model(repo, "m", lin_config(), {1: lin(1)})
    srv = inference_server(repo, *POLL)
    c = srv.client()
    assert served_version(c, "m") == "1"
    r = c.request("POST", "/v2/repository/models/m/unload")
    assert r.status_code == 400 and "explicit" in r.json()["error"], r.text  # poll owns it

    t0 = time.monotonic()
    write_model(repo, "m", None, {2: lin(2)})
    wait_until(lambda: served_version(c, "m") == "2", 5, what="version 2 to be served")
    FIGURES.append(f"poll: new version served after {time.monotonic() - t0:.2f} s "
                   f"(interval 0.1 s)")
    assert c.model_metadata("m")["versions"] == ["2"]

    # a changed config.json: serve every version, and a smaller max_batch_size
    write_config(repo, "m", lin_config(max_batch_size=2, version_policy={"all": {}}))
    wait_until(lambda: c.model_metadata("m")["versions"] == ["1", "2"], 5,
               what="version_policy all")
    wait_until(lambda: c.model_config("m")["max_batch_size"] == 2, 5, what="max_batch_size 2")
    with pytest.raises(InferenceServerError) as e:
        c.infer("m", {"input__0": np.ones((3, 3), dtype=np.float32)})
    assert e.value.status == 400 and "max_batch_size" in e.value.message
    assert answer(c, "m", "1") == ("1", 114.0)

    # a new model appears, a removed one goes
    write_model(repo, "n", lin_config(), {4: lin(4)})
    wait_until(lambda: served_version(c, "n") == "4", 5, what="model n")
    shutil.rmtree(repo / "m")
    wait_until(lambda: served_version(c, "m") is None, 5, what="model m to go")
    with pytest.raises(InferenceServerError) as e:
        answer(c, "m")
    assert e.value.status in (404, 503)
    # gone from serving: the index drops it or lists it as no longer available
    gone = [e for e in c.repository_index() if e["name"] == "m"]
    assert all(e.get("state") not in ("READY", "LOADING") for e in gone), gone
    assert all(e.get("reason") for e in gone if e.get("state") == "UNAVAILABLE"), gone
    assert "m" not in {e["name"] for e in c.repository_index(ready=True)}
    assert not c.is_model_ready("m")
    assert served_version(c, "n") == "4"


def test_poll_reloads_a_changed_file_and_retries_a_partial_copy(inference_server, tmp_path):
    repo = tmp_path / "repo"
    write_model(repo, "m", lin_config(), {1: lin(1)})
    srv = inference_server(repo, *POLL)
    c = srv.client()
    # the file of a served version is replaced in place: the new weights are served
    write_model(repo, "m", None, {1: linear_model([1.0, 2.0, 3.0], 50.0)})
    wait_until(lambda: answer(c, "m") == ("1", 64.0), 5, what="the changed file")
    # a version directory whose file is still being copied (not atomically): it fails, the
    # old version serves, and once the copy completes the new version is served
    vdir = repo / "m" / "2"
    vdir.mkdir()
    text = json.dumps(lin(2))
    n_logs = len(srv.lines)
    with open(vdir / "model.json", "w") as f:
        f.write(text[: len(text) // 2])
    assert srv.wait_log(lambda o: o.get("msg") == "model version failed to load",
                        timeout=5 * SLOW, start=n_logs)
    assert answer(c, "m") == ("1", 64.0)
    with open(vdir / "model.json", "w") as f:
        f.write(text)
    wait_until(lambda: served_version(c, "m") == "2", 5, what="the completed copy")


def _corrupt_new_version(inference_server, tmp_path):
    repo = tmp_path / "repo"
    write_model(repo, "m", lin_config(), {1: lin(1)})
    srv = inference_server(repo, *POLL)
    c = srv.client()
    n_logs = len(srv.lines)
    write_model(repo, "m", None, {2: "{\"loom_model\": \"linear\", truncated"})
    srv.wait_log(lambda o: o.get("msg") == "model version failed to load", timeout=5 * SLOW,
                 start=n_logs)
    return srv, c


def test_poll_corrupt_new_version_keeps_the_old_serving(inference_server, tmp_path):
    srv, c = _corrupt_new_version(inference_server, tmp_path)
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:  # across several poll intervals
        assert served_version(c, "m") == "1"
    assert c.is_model_ready("m")
    # and a good version 3 then replaces it
    write_model(tmp_path / "repo", "m", None, {3: lin(3)})
    wait_until(lambda: served_version(c, "m") == "3", 5, what="version 3")


def test_poll_corrupt_new_version_reason_in_index(inference_server, tmp_path):
    srv, c = _corrupt_new_version(inference_server, tmp_path)
    assert served_version(c, "m") == "1"
    reasons = [e.get("reason", "") for e in c.repository_index() if e["name"] == "m"]
    assert any("model.json" in r or "2" in r for r in reasons), reasons


def test_poll_bad_config_change_keeps_serving(inference_server, tmp_path):
    repo = tmp_path / "repo"
    write_model(repo, "m", lin_config(), {1: lin(1)})
    srv = inference_server(repo, *POLL)
    c = srv.client()
    write_config(repo, "m", {"backend": "linear", "max_batch_size": "lots", "bogus": 1})
    time.sleep(0.5)
    assert served_version(c, "m") == "1"
    assert c.model_config("m")["max_batch_size"] == 8
    write_config(repo, "m", lin_config(max_batch_size=4))
    wait_until(lambda: c.model_config("m")["max_batch_size"] == 4, 5, what="fixed config")


# ---- model control: explicit ----

EXPLICIT = ["--inference.model-control=explicit"]


def test_explicit_load_unload_and_config_override(inference_server, tmp_path):
    repo = tmp_path / "repo"
    write_model(repo, "a", lin_config(), {1: lin(1)})
    write_model(repo, "b", lin_config(), {2: lin(2)})
    write_model(repo, "broken", lin_config(), {1: "not json at all"})
    c = inference_server(repo, *EXPLICIT, "--inference.load-models=a").client()
    assert served_version(c, "a") == "1"
    idx = {e["name"]: e for e in c.repository_index()}
    assert idx["a"]["state"] == "READY"
    assert idx["b"].get("state", "UNKNOWN") in ("UNKNOWN", "UNAVAILABLE")  # known, not loaded
    with pytest.raises(InferenceServerError) as e:
        answer(c, "b")
    assert e.value.status in (404, 503)

    r = c.load_model("b")
    assert r.status_code == 200
    assert served_version(c, "b") == "2"
    assert c.repository_index(ready=True) and {e["name"] for e in
                                               c.repository_index(ready=True)} == {"a", "b"}

    # reload with a configuration override (a JSON string, as Triton's load API takes it)
    c.load_model("b", config=json.dumps(lin_config(max_batch_size=2)))
    assert c.model_config("b")["max_batch_size"] == 2
    with pytest.raises(InferenceServerError) as e:
        c.infer("b", {"input__0": np.ones((3, 3), dtype=np.float32)})
    assert e.value.status == 400
    # a bad override is refused and the model keeps its configuration
    with pytest.raises(InferenceServerError) as e:
        c.load_model("b", config='{"backend": "linear", "max_batch_size": -4}')
    assert e.value.status == 400 and "max_batch_size" in e.value.message
    assert c.model_config("b")["max_batch_size"] == 2 and served_version(c, "b") == "2"
    for bad in ('{"parameters": {"config": 5}}', '{"parameters": []}', "[1]"):
        r = c.request("POST", "/v2/repository/models/b/load", body=bad.encode())
        assert r.status_code == 400 and r.json()["error"], (bad, r.text)
    # a plain load goes back to the repository's config.json
    c.load_model("b")
    assert c.model_config("b")["max_batch_size"] == 8

    c.unload_model("b")
    with pytest.raises(InferenceServerError) as e:
        answer(c, "b")
    assert e.value.status in (404, 503)
    assert not c.is_model_ready("b")
    idx = {e["name"]: e for e in c.repository_index()}
    assert idx["b"].get("state") == "UNAVAILABLE" and idx["b"].get("reason") == "unloaded", idx
    assert served_version(c, "a") == "1"  # the others are untouched

    # loading what is not there, or what does not load
    with pytest.raises(InferenceServerError) as e:
        c.load_model("missing")
    assert e.value.status in (400, 404) and "missing" in e.value.message
    with pytest.raises(InferenceServerError) as e:
        c.load_model("broken")
    assert e.value.status == 400 and "model.json" in e.value.message
    idx = {e["name"]: e for e in c.repository_index()}
    assert idx["broken"]["state"] == "UNAVAILABLE" and idx["broken"]["reason"], idx
    # Triton's file: overrides are refused with a reason
    with pytest.raises(InferenceServerError) as e:
        c.load_model("a", config=lin_config(), files={"1/model.json": b"{}"})
    assert e.value.status == 400 and "file" in e.value.message
    assert served_version(c, "a") == "1"


def test_explicit_load_models_star(inference_server, tmp_path):
    repo = tmp_path / "repo"
    for i, name in enumerate(("x", "y", "z")):
        write_model(repo, name, lin_config(), {i + 1: lin(i + 1)})
    c = inference_server(repo, *EXPLICIT, "--inference.load-models=*").client()
    assert [served_version(c, n) for n in ("x", "y", "z")] == ["1", "2", "3"]
    c.unload_model("y")
    assert served_version(c, "y") is None
    c.load_model("y")
    assert served_version(c, "y") == "2"


# ---- bad model files ----


BASES = {}  # small valid models the hostile ones are edited from (filled by bad_env)


def _bases(xgb):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 4)).astype(np.float32)
    p = {"max_depth": 2, "seed": 0, "nthread": 1}
    tiny = xgb.train(p, xgb.DMatrix(X, label=X[:, 0] + X[:, 1]), 2)
    dart = xgb.train(dict(p, booster="dart", rate_drop=0.5), xgb.DMatrix(X, label=X[:, 0]), 3)
    Xk = np.empty((300, 2), dtype=np.float32)
    Xk[:, 0] = rng.integers(0, 5, 300)
    Xk[:, 1] = rng.normal(size=300)
    cat = xgb.train(dict(p, tree_method="hist", max_cat_to_onehot=1),
                    xgb.DMatrix(Xk, label=(Xk[:, 0] % 2 == 0) * 1.0, feature_types=["c", "q"],
                                enable_categorical=True), 2)
    return {k: json.loads(b.save_raw("json").decode())
            for k, b in (("tiny", tiny), ("dart", dart), ("cat", cat))}


def _hostile(doc, edit):
    d = json.loads(json.dumps(doc))
    t = d["learner"]["gradient_booster"]["model"]["trees"][0]
    edit(d, t)
    return json.dumps(d)


def _categories(edit):
    def build(d, c):
        doc = json.loads(json.dumps(BASES["cat"]))
        trees = [t for t in doc["learner"]["gradient_booster"]["model"]["trees"]
                 if t["categories"]]
        assert trees, "the categorical base model has no categorical split"
        edit(trees[0])
        return json.dumps(doc)
    return build


BAD_MODELS = {
    # name: (content builder(tiny doc, cancer text), words one of which the reason mentions)
    "corrupt": (lambda d, c: bytes(range(256)) * 8, ["json", "model"]),
    "truncated": (lambda d, c: c[: len(c) // 2], ["json", "end"]),
    "empty": (lambda d, c: b"", ["empty", "json", "value"]),
    "not_xgboost": (lambda d, c: json.dumps({"hello": "world", "weights": [1, 2]}),
                    ["learner", "xgboost", "model"]),
    "json_array": (lambda d, c: "[1, 2, 3]", ["object", "learner"]),
    "cycle_to_root": (lambda d, c: _hostile(d, lambda d, t: t["left_children"].__setitem__(1, 0)),
                      ["cycle", "child", "node", "tree"]),
    "self_loop": (lambda d, c: _hostile(d, lambda d, t: t["right_children"].__setitem__(0, 0)),
                  ["cycle", "child", "node", "tree"]),
    "child_out_of_range": (lambda d, c: _hostile(
        d, lambda d, t: t["left_children"].__setitem__(0, 99999999999)),
        ["child", "node", "range", "tree"]),
    "feature_out_of_range": (lambda d, c: _hostile(
        d, lambda d, t: t["split_indices"].__setitem__(0, 1000)),
        ["feature", "split_ind", "range"]),
    "negative_feature": (lambda d, c: _hostile(
        d, lambda d, t: t["split_indices"].__setitem__(0, -3)),
        ["feature", "split_ind", "range", "negative"]),
    "huge_num_nodes": (lambda d, c: _hostile(
        d, lambda d, t: t["tree_param"].__setitem__("num_nodes", "99999999999999999999")),
        ["num_nodes", "node", "range", "limit"]),
    "huge_num_trees": (lambda d, c: _hostile(
        d, lambda d, t: d["learner"]["gradient_booster"]["model"]["gbtree_model_param"]
        .__setitem__("num_trees", "1e300")), ["num_trees", "tree"]),
    "huge_num_feature": (lambda d, c: _hostile(
        d, lambda d, t: d["learner"]["learner_model_param"]
        .__setitem__("num_feature", "123456789012345")), ["num_feature", "feature", "limit"]),
    "huge_num_class": (lambda d, c: _hostile(
        d, lambda d, t: d["learner"]["learner_model_param"]
        .__setitem__("num_class", "4000000000")), ["num_class", "class", "limit"]),
    "tree_info_out_of_range": (lambda d, c: _hostile(
        d, lambda d, t: d["learner"]["gradient_booster"]["model"]["tree_info"]
        .__setitem__(0, 7)), ["tree_info", "group", "class"]),
    "arrays_disagree": (lambda d, c: _hostile(
        d, lambda d, t: t["split_conditions"].pop()), ["split_conditions", "nodes", "length"]),
    "unknown_objective": (lambda d, c: _hostile(
        d, lambda d, t: d["learner"]["objective"].__setitem__("name", "rank:ndcg_magic")),
        ["objective"]),
    "deep_nesting": (lambda d, c: "[" * 100000 + "]" * 100000, ["deep", "nest", "depth", "json"]),
    "threshold_overflow": (lambda d, c: _hostile(
        d, lambda d, t: t["split_conditions"].__setitem__(0, 1e39)),
        ["split_conditions", "float"]),
    "base_score_nan": (lambda d, c: _hostile(
        d, lambda d, t: d["learner"]["learner_model_param"].__setitem__("base_score", "nan")),
        ["base_score", "finite"]),
    "category_out_of_range": (_categories(lambda t: t["categories"].__setitem__(-1, 4 << 30)),
                              ["categories", "range"]),
    "category_negative": (_categories(lambda t: t["categories"].__setitem__(-1, -5)),
                          ["categories", "range"]),
    "category_segment_out_of_range": (
        _categories(lambda t: t["categories_segments"].__setitem__(0, 99999)),
        ["categories_segments", "range"]),
    "dart_weight_drop_short": (lambda d, c: json.dumps(dict(BASES["dart"], learner=dict(
        BASES["dart"]["learner"], gradient_booster=dict(
            BASES["dart"]["learner"]["gradient_booster"], weight_drop=[1.0])))),
        ["weight_drop"]),
    "linear_nan_weight": (lambda d, c: '{"loom_model":"linear","version":1,"objective":'
                          '"reg:squarederror","num_features":2,"weights":[1,NaN],"bias":0}',
                          ["json", "finite", "nan"]),
    "linear_huge_weight": (lambda d, c: '{"loom_model":"linear","version":1,"objective":'
                           '"reg:squarederror","num_features":2,"weights":[1,1e39],"bias":0}',
                           ["weights[1]", "range"]),
    "linear_shape": (lambda d, c: '{"loom_model":"linear","version":1,"objective":'
                     '"reg:squarederror","num_features":3,"weights":[1,2],"bias":0}',
                     ["weights", "2 values"]),
}


@pytest.fixture(scope="module")
def bad_env(module_servers, xgb, reference_models, tmp_path_factory):
    repo = tmp_path_factory.mktemp("bad")
    BASES.update(_bases(xgb))
    tiny = BASES["tiny"]
    with open(os.path.join(str(reference_models), "cancer", "1", "model.json"), "rb") as f:
        cancer = f.read()
    for name, (build, _) in BAD_MODELS.items():
        backend = "linear" if name.startswith("linear") else "xgboost"
        write_model(repo, name, {"backend": backend, "max_batch_size": 8},
                    {1: build(tiny, cancer)})
    copy_reference(reference_models, repo, "cancer", as_name="good")
    write_model(repo, "good_tiny", {"backend": "xgboost", "max_batch_size": 8},
                {1: json.dumps(tiny)})
    # configuration problems
    write_model(repo, "cfg_bad_json", None, {1: json.dumps(tiny)})
    write_config(repo, "cfg_bad_json", "{\"backend\": ")
    write_model(repo, "cfg_name_mismatch", {"name": "other", "backend": "xgboost"},
                {1: json.dumps(tiny)})
    write_model(repo, "cfg_backend", {"backend": "onnxruntime"}, {1: json.dumps(tiny)})
    write_model(repo, "cfg_dims", {"backend": "xgboost", "max_batch_size": 8,
                                   "input": [{"name": "input__0", "data_type": "TYPE_FP32",
                                              "dims": [5]}]}, {1: json.dumps(tiny)})
    write_model(repo, "cfg_unknown_field", {"backend": "xgboost", "sequence_batching": {}},
                {1: json.dumps(tiny)})
    write_model(repo, "no_file", {"backend": "xgboost"}, {})
    os.makedirs(os.path.join(str(repo), "no_file", "1"))
    write_model(repo, "no_version", {"backend": "xgboost"}, {})
    srv = module_servers(repo)
    c = srv.client()
    return {"srv": srv, "c": c, "index": c.repository_index(), "tiny": tiny}


CONFIG_PROBLEMS = {
    "cfg_bad_json": ["config.json"], "cfg_name_mismatch": ["name", "other"],
    "cfg_backend": ["onnxruntime"], "cfg_dims": ["dims", "5", "4 features"],
    "cfg_unknown_field": ["sequence_batching"], "no_file": ["1/", "no such file"],
    "no_version": ["version"],
}
def _bad_params():
    return list(BAD_MODELS) + list(CONFIG_PROBLEMS)


@pytest.mark.parametrize("name", _bad_params())
def test_bad_model_fails_to_load_with_a_reason(bad_env, name):
    c = bad_env["c"]
    entries = [e for e in bad_env["index"] if e["name"] == name]
    assert entries, f"{name} is not in the index: {bad_env['index']}"
    assert all(e.get("state") == "UNAVAILABLE" for e in entries), entries
    reason = " ".join(e.get("reason", "") for e in entries)
    assert reason.strip(), f"{name}: no reason in the index: {entries}"
    reason = reason.replace(f"{name}/", "/").replace(f"'{name}'", "''")  # words, not the name
    words = BAD_MODELS[name][1] if name in BAD_MODELS else CONFIG_PROBLEMS[name]
    if name in CONFIG_PROBLEMS:
        assert all(w.lower() in reason.lower() for w in words), (name, reason)
    else:
        assert any(w.lower() in reason.lower() for w in words), (name, reason)
    with pytest.raises(InferenceServerError) as e:
        c.infer(name, {"input__0": np.zeros((1, 4), dtype=np.float32)})
    assert e.value.status in (404, 503), e.value
    if e.value.status == 503:
        assert e.value.header("Retry-After")
    # the good models keep serving
    r = c.infer("good_tiny", {"input__0": np.zeros((1, 4), dtype=np.float32)})
    assert r.as_numpy("output__0").shape == (1, 1)
    assert c.is_server_ready() and c.is_model_ready("good")


def test_bad_models_do_not_stop_the_good(bad_env, reference_models):
    c = bad_env["c"]
    from inference_fixtures import rows_json
    X, want = rows_json(reference_models, "cancer")
    got = c.infer("good", {"input__0": X}).as_numpy("output__0")
    assert np.max(np.abs(got - want)) <= 1e-6
    ready = {e["name"] for e in c.repository_index(ready=True)}
    assert ready == {"good", "good_tiny"}, ready
    warned = {o.get("model") for o in bad_env["srv"].json_logs()
              if o.get("level") == "warn" and o.get("msg") == "model version failed to load"}
    assert {"corrupt", "truncated", "cycle_to_root"} <= warned


# ---- hot reload under load ----


class Hammer:
    """Threads sending infer requests in a loop until stopped; counts answers."""

    def __init__(self, base, model, x, expect, threads=2):
        self.base, self.model, self.x, self.expect = base, model, x, expect
        self.ok = 0
        self.failures = []
        self.versions = set()
        self.stop_flag = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self):
        c = InferenceServerClient(self.base, timeout=30)
        try:
            while not self.stop_flag.is_set():
                try:
                    r = c.infer(self.model, {"input__0": self.x})
                    v = r.get_response()["model_version"]
                    y = r.as_numpy("output__0")
                    good = self.expect(v, y)
                    with self.lock:
                        self.versions.add(v)
                        if good:
                            self.ok += 1
                        else:
                            self.failures.append(f"wrong answer from version {v}: {y}")
                except (InferenceServerError, requests.RequestException, ValueError) as e:
                    with self.lock:
                        self.failures.append(repr(e))
        finally:
            c.close()

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop_flag.set()
        for t in self.threads:
            t.join(30)


def test_hot_reload_under_load_explicit(inference_server, reference_models, tmp_path):
    repo = tmp_path / "repo"
    copy_reference(reference_models, repo, "cancer")
    X, want = rows_json(reference_models, "cancer")
    srv = inference_server(repo, *EXPLICIT, "--inference.load-models=cancer",
                           "--inference.threads=2")
    c = srv.client()
    cfg = json.load(open(repo / "cancer" / "config.json"))
    x = X[:8]

    def expect(v, y):
        return v == "1" and np.max(np.abs(y - want[:8])) <= 1e-6

    with Hammer(srv.base, "cancer", x, expect, threads=3) as h:
        wait_until(lambda: h.ok > 10, 5, what="traffic")
        for i in range(20):
            variant = dict(cfg)
            if i % 2:
                variant.pop("dynamic_batching")
            variant["max_batch_size"] = 64 + i
            n = h.ok
            r = c.load_model("cancer", config=variant)
            assert r.status_code == 200
            assert c.model_config("cancer")["max_batch_size"] == 64 + i
            # requests were in flight across the swap, and go on after it
            wait_until(lambda: h.ok > n + 3, 5, what=f"traffic across reload {i}")
        n = h.ok
        wait_until(lambda: h.ok > n + 10, 5, what="traffic after the reloads")
    FIGURES.append(f"hot reload (explicit, 20 reloads): {h.ok} requests answered, "
                   f"{len(h.failures)} failed")
    assert not h.failures, h.failures[:5]


def test_hot_reload_under_load_poll(inference_server, tmp_path):
    repo = tmp_path / "repo"
    write_model(repo, "m", lin_config(dynamic_batching={"max_queue_delay_microseconds": 500}),
                {1: lin(1)})
    srv = inference_server(repo, *POLL)
    c = srv.client()

    def expect(v, y):
        return y[0, 0] == 14 + 100 * int(v)

    with Hammer(srv.base, "m", X1, expect, threads=2) as h:
        for v in range(2, 8):
            write_model(repo, "m", None, {v: lin(v)})
            wait_until(lambda: served_version(c, "m") == str(v), 5, what=f"version {v}")
        n = h.ok
        wait_until(lambda: h.ok > n + 10, 5, what="traffic after the reloads")
    FIGURES.append(f"hot reload (poll, 6 new versions): {h.ok} requests answered over "
                   f"versions {sorted(h.versions, key=int)}, {len(h.failures)} failed")
    assert not h.failures, h.failures[:5]
    assert len(h.versions) >= 3


# ---- memory ----


def test_no_memory_growth_across_1000_load_unload_cycles(inference_server, reference_models,
                                                         tmp_path):
    repo = tmp_path / "repo"
    copy_reference(reference_models, repo, "cancer")
    X, want = rows_json(reference_models, "cancer")
    srv = inference_server(repo, *EXPLICIT)
    c = srv.client()
    rss = {}
    t0 = time.monotonic()
    for i in range(1, 1001):
        c.load_model("cancer")
        if i % 10 == 0:
            y = c.infer("cancer", {"input__0": X[:4]}).as_numpy("output__0")
            assert np.max(np.abs(y - want[:4])) <= 1e-6
        c.unload_model("cancer")
        if i in (100, 1000):
            time.sleep(0.05)  # let retired snapshots go
            rss[i] = srv.rss_kb()
    took = time.monotonic() - t0
    growth = rss[1000] - rss[100]
    FIGURES.append(f"RSS after 100 load/unload cycles {rss[100]} KiB, after 1000 "
                   f"{rss[1000]} KiB (growth {growth} KiB, {took:.1f} s)")
    print(FIGURES[-1])
    if not SANITIZED:  # ASan's quarantine keeps freed memory; LeakSanitizer checks at exit
        assert growth <= 1024, f"RSS grew by {growth} KiB over 900 load/unload cycles"
    with pytest.raises(InferenceServerError):
        c.infer("cancer", {"input__0": X[:1]})


# ---- dynamic batching, queue bounds, timeouts ----


def _concurrent(base, model, n, body_fn, barrier_timeout=10):
    """n threads, each with its own warmed-up connection, POST at once; [(status, headers,
    json)]."""
    results = [None] * n
    barrier = threading.Barrier(n)

    def run(i):
        with requests.Session() as s:
            s.get(base + "/v2/health/live", timeout=10)
            barrier.wait(barrier_timeout)
            r = s.post(f"{base}/v2/models/{model}/infer", data=json.dumps(body_fn(i)),
                       headers={"Content-Type": "application/json"}, timeout=30)
            results[i] = (r.status_code, dict(r.headers), r.json())

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def _one_row(i):
    return {"inputs": [{"name": "input__0", "shape": [1, 3], "datatype": "FP32",
                        "data": [i, 1, 1]}]}


def test_dynamic_batching_merges_concurrent_requests(inference_server, tmp_path):
    repo = tmp_path / "repo"
    write_model(repo, "b", lin_config(max_batch_size=64, dynamic_batching={
        "max_queue_delay_microseconds": 50000}), {1: lin(0)})
    srv = inference_server(repo)
    c = srv.client()
    n = 32
    res = _concurrent(srv.base, "b", n, _one_row)
    for i, (status, _, body) in enumerate(res):
        assert status == 200, body
        assert body["outputs"][0]["data"] == [i + 5.0]  # each answer is its own row's
    st = c.statistics("b")["model_stats"][0]
    FIGURES.append(f"dynamic batching: {st['inference_count']} inferences in "
                   f"{st['execution_count']} executions; batch sizes "
                   f"{[b['batch_size'] for b in st['batch_stats']]}")
    assert st["inference_count"] == n
    assert st["execution_count"] < st["inference_count"], st
    assert st["inference_stats"]["success"]["count"] == n
    assert sum(b["compute_infer"]["count"] * b["batch_size"] for b in st["batch_stats"]) == n


@pytest.mark.parametrize("trigger", ["preferred_batch_size", "max_batch_size"])
def test_full_batch_executes_without_waiting_out_the_delay(inference_server, tmp_path, trigger):
    """A 2 s max_queue_delay, but 4 waiting rows reach a preferred batch size (or the
    max_batch_size): the batch runs at once, as one execution."""
    repo = tmp_path / "repo"
    batching = {"max_queue_delay_microseconds": 2000000}
    if trigger == "preferred_batch_size":
        batching["preferred_batch_size"] = [4]
    write_model(repo, "p", lin_config(max_batch_size=64 if trigger != "max_batch_size" else 4,
                                      dynamic_batching=batching), {1: lin(0)})
    srv = inference_server(repo)
    c = srv.client()
    t0 = time.monotonic()
    res = _concurrent(srv.base, "p", 4, _one_row)
    took = time.monotonic() - t0
    assert [s for s, _, _ in res] == [200] * 4, res
    assert [b["outputs"][0]["data"] for _, _, b in res] == [[5.0], [6.0], [7.0], [8.0]]
    st = c.statistics("p")["model_stats"][0]
    assert (st["inference_count"], st["execution_count"]) == (4, 1), st
    assert [b["batch_size"] for b in st["batch_stats"]] == [4]
    assert took < 1.5 * SLOW, f"a full batch waited {took:.2f} s"


def test_queue_bound_gives_503_with_retry_after(inference_server, tmp_path):
    repo = tmp_path / "repo"
    write_model(repo, "q", lin_config(max_batch_size=64, dynamic_batching={
        "max_queue_delay_microseconds": 1500000, "max_queue_size": 1}), {1: lin(0)})
    srv = inference_server(repo)
    c = srv.client()
    first = {}

    def waiting():
        with InferenceServerClient(srv.base) as c1:
            t = time.monotonic()
            first["answer"] = answer(c1, "q")
            first["took"] = time.monotonic() - t

    t = threading.Thread(target=waiting)
    t.start()
    gauge = 'loom_inference_queue_depth{model="q",version="1"}'
    wait_until(lambda: srv.metric(gauge) == 1, 5, what="one request queued")
    r = c.request("POST", "/v2/models/q/infer", json_body=_one_row(0))
    t.join(30)
    assert r.status_code == 503, r.text
    assert r.headers.get("Retry-After"), r.headers
    assert "queue" in r.json()["error"].lower()
    assert first["answer"] == ("1", 14.0) and first["took"] >= 1.0
    # the same through a burst of concurrent requests: some are refused, none is lost
    res = _concurrent(srv.base, "q", 6, _one_row)
    statuses = sorted(s for s, _, _ in res)
    assert set(statuses) <= {200, 503} and 200 in statuses and 503 in statuses, statuses
    assert all(h.get("Retry-After") for s, h, _ in res if s == 503)


def test_request_timeout_expires_in_the_queue(inference_server, tmp_path):
    repo = tmp_path / "repo"
    write_model(repo, "t", lin_config(max_batch_size=64, dynamic_batching={
        "max_queue_delay_microseconds": 1500000}), {1: lin(0)})
    write_model(repo, "tdef", lin_config(max_batch_size=64, dynamic_batching={
        "max_queue_delay_microseconds": 1500000,
        "default_queue_policy": {"default_timeout_microseconds": 20000,
                                 "allow_timeout_override": False}}), {1: lin(0)})
    srv = inference_server(repo)
    c = srv.client()
    t0 = time.monotonic()
    with pytest.raises(InferenceServerError) as e:
        c.infer("t", {"input__0": X1}, parameters={"timeout": 2000})
    took = time.monotonic() - t0
    assert e.value.status == 503 and e.value.header("Retry-After")
    assert "timed out" in e.value.message
    assert took < 0.75 * SLOW, f"the timeout fired after {took:.2f} s, not near 2 ms"
    # the queue policy's default applies without a request timeout
    t0 = time.monotonic()
    with pytest.raises(InferenceServerError) as e:
        c.infer("tdef", {"input__0": X1})
    assert e.value.status == 503 and time.monotonic() - t0 < 0.75 * SLOW
    # without a timeout the request waits out the batching delay and succeeds
    t0 = time.monotonic()
    assert answer(c, "t") == ("1", 14.0)
    assert time.monotonic() - t0 >= 1.2
    st = c.statistics("t")["model_stats"][0]
    assert st["inference_stats"]["fail"]["count"] == 1
    assert st["inference_stats"]["success"]["count"] == 1
    assert st["inference_count"] == 1 and st["execution_count"] == 1


# ---- statistics, metrics, readiness ----


def test_statistics_and_metrics(inference_server, tmp_path):
    repo = tmp_path / "repo"
    write_model(repo, "s", lin_config(), {1: lin(1)})
    write_model(repo, "s2", lin_config(version_policy={"all": {}}), {1: lin(1), 2: lin(2)})
    srv = inference_server(repo)
    c = srv.client()
    x2 = np.array([[1, 2, 3], [0, 0, 0]], dtype=np.float32)
    for _ in range(5):
        c.infer("s", {"input__0": x2})
    for bad in ({"inputs": []}, _one_row(0) | {"id": 5},
                {"inputs": [{"name": "nope", "shape": [1, 3], "datatype": "FP32",
                             "data": [1, 2, 3]}]}):
        r = c.request("POST", "/v2/models/s/infer", json_body=bad)
        assert r.status_code == 400
    answer(c, "s2", "1")
    answer(c, "s2", "2")
    answer(c, "s2", "2")
    m = c.statistics("s")["model_stats"][0]
    st = m["inference_stats"]
    assert (m["inference_count"], m["execution_count"]) == (10, 5), m
    assert st["success"]["count"] == 5 and st["fail"]["count"] == 3, st
    for k in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert st[k]["count"] == 5, (k, st)
    assert st["success"]["ns"] > 0 and st["compute_infer"]["ns"] >= 0
    assert [b["batch_size"] for b in m["batch_stats"]] == [2]
    assert m["batch_stats"][0]["compute_infer"]["count"] == 5
    per = {s["version"]: s["inference_count"] for s in c.statistics("s2")["model_stats"]}
    assert per == {"1": 1, "2": 2}, per
    assert c.statistics("s2", 2)["model_stats"][0]["inference_count"] == 2

    text = srv.metrics()
    samples = {}
    for line in text.splitlines():
        if line.startswith("loom_inference_") and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            samples[k] = float(v)

    def sample(name, model, version):
        key = f'{name}{{model="{model}",version="{version}"}}'
        assert key in samples, f"{key} not in /metrics"
        return samples[key]

    assert sample("loom_inference_request_success_total", "s", "1") == 5
    assert sample("loom_inference_request_failure_total", "s", "1") == 3
    assert sample("loom_inference_inference_count_total", "s", "1") == 10
    assert sample("loom_inference_execution_count_total", "s", "1") == 5
    assert sample("loom_inference_model_ready", "s", "1") == 1
    assert sample("loom_inference_request_success_total", "s2", "2") == 2
    assert sample("loom_inference_request_success_total", "s2", "1") == 1
    assert sample("loom_inference_request_duration_seconds_count", "s", "1") == 5
    assert any(k.startswith("loom_inference_batch_size_bucket{") and 'model="s"' in k
               for k in samples)
    checked = promtool_check(text)
    if checked is None:
        pytest.skip("promtool is not installed")
    ok, out = checked
    assert ok, f"promtool check metrics:\n{out}"


def test_statistics_of_a_version_that_never_ran(tmp_path):
    """Statistics before any inference: zero counts and no batch_stats. The server is managed
    here (not by the fixture) so that a sanitizer report fails this test only."""
    from inference_fixtures import InferenceLoom
    repo = tmp_path / "repo"
    write_model(repo, "idle", lin_config(), {1: lin(1)})
    srv = InferenceLoom(repo, [], str(tmp_path / "data")).start()
    try:
        with InferenceServerClient(srv.base) as c:
            try:
                for m in (c.statistics("idle")["model_stats"][0],
                          c.statistics()["model_stats"][0]):
                    assert (m["inference_count"], m["execution_count"]) == (0, 0)
                    assert m["last_inference"] == 0 and m["batch_stats"] == []
            except requests.RequestException as e:
                pytest.fail(f"the server broke the connection: {e}")
        time.sleep(0.1)
        bad = [line for line in srv.stderr_text().splitlines() if not line.startswith("{")]
        assert not bad, "\n".join(bad[:5])
        assert srv.proc.poll() is None
    finally:
        if srv.proc.poll() is None:
            srv.proc.terminate()
        srv.proc.wait(15)


def test_model_ready_metric_follows_unload(inference_server, tmp_path):
    repo = tmp_path / "repo"
    write_model(repo, "r", lin_config(), {1: lin(1)})
    srv = inference_server(repo, *EXPLICIT, "--inference.load-models=r")
    c = srv.client()
    gauge = 'loom_inference_model_ready{model="r",version="1"}'
    assert srv.metric(gauge) == 1
    c.unload_model("r")
    assert srv.metric(gauge) == 0
    c.load_model("r")
    assert srv.metric(gauge) == 1


def test_ready_only_after_the_repository_loaded(inference_server, reference_models, tmp_path):
    repo = tmp_path / "repo"
    names = [f"cancer{i:02d}" for i in range(24)]
    for n in names:
        copy_reference(reference_models, repo, "cancer", as_name=n)
    srv = inference_server(repo, wait_ready=False)
    c = srv.client()
    seen_503 = False
    deadline = time.monotonic() + 20 * SLOW
    while True:
        r = c.request("GET", "/v2/health/ready")
        if r.status_code == 200:
            break
        assert r.status_code == 503, r.text
        seen_503 = True
        assert time.monotonic() < deadline, "never ready"
        time.sleep(0.005)
    # ready means every model of the repository has been loaded
    idx = c.repository_index()
    assert sorted(e["name"] for e in idx) == names
    assert all(e.get("state") == "READY" for e in idx), idx
    assert c.request("GET", "/readyz").status_code == 200
    assert all(c.is_model_ready(n) for n in names)
    FIGURES.append(f"readiness: 24 models loaded before /v2/health/ready said 200 "
                   f"(a 503 was {'seen' if seen_503 else 'not seen'} first)")


# ---- start and stop ----


def test_a_missing_repository_fails_startup_clearly(tmp_path):
    r = run_loom("serve", "inference", f"--inference.model-repository={tmp_path}/nowhere",
                 "--inference.listen=127.0.0.1:0", f"--data-dir={tmp_path}/data", timeout=30)
    assert r.returncode != 0
    lines = [json.loads(line) for line in r.stderr.splitlines() if line.strip()]
    assert any("nowhere" in o.get("msg", "") and o.get("level") == "error" for o in lines), \
        r.stderr


def test_sigterm_answers_queued_requests_then_exits_0(inference_server, tmp_path):
    repo = tmp_path / "repo"
    write_model(repo, "q", lin_config(max_batch_size=64, dynamic_batching={
        "max_queue_delay_microseconds": 1000000}), {1: lin(0)})
    srv = inference_server(repo)
    got = {}

    def waiting():
        with InferenceServerClient(srv.base) as c1:
            try:
                got["answer"] = answer(c1, "q")
            except Exception as e:  # noqa: BLE001 - reported below
                got["answer"] = e

    t = threading.Thread(target=waiting)
    t.start()
    wait_until(lambda: srv.metric('loom_inference_queue_depth{model="q",version="1"}') == 1, 5,
               what="one request queued")
    srv.close_clients()
    took = srv.stop()  # SIGTERM; exit code 0 and JSON logs are checked
    t.join(30)
    assert got["answer"] == ("1", 14.0), got
    assert took < 10 * SLOW
