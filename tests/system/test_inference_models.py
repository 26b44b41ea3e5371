# SPDX-License-Identifier: Apache-2.0
"""Predictions of `loom serve inference` against XGBoost's own, through the v2 protocol.

Models are trained here with Debian's python3-xgboost (plus tests/models/train.py's reference
repository) and served from one repository: breast cancer (binary:logistic, 100 trees depth 6,
test rows with NaN), iris multi:softprob (served raw [n, 3], and through Triton FIL's
output_class/predict_proba), multi:softmax ([n, 1] class index), diabetes
(reg:squarederror), reg:logistic, binary:logitraw, dart (regression with a non-zero base score
and binary), a categorical model, FIL's output_class (0/1) and predict_proba ([1-p, p]) views,
a model with no config.json at all, extreme but valid models (a 100,000-level tree, a
category id of 2**24 - 1), and loom's linear format (regression, logistic, softprob,
softmax; expected values computed in numpy float32). Every answer must be within 1e-6
(absolute) of Booster.inplace_predict (what libxgboost's XGBoosterPredictFromDense returns);
the number of bit-identical values is reported. A 1,000-row request (split across the work
pool) must give the same answers as single-row requests. Model metadata (-1 batch dim,
platform, datatypes) and the config endpoint are checked for each kind of configuration.
"""

import ctypes
import json
import os

import numpy as np
import pytest

from inference_fixtures import *  # noqa: F401,F403
from inference_fixtures import copy_reference, linear_model, rows_json, write_model
from kserve_client import InferInput, InferRequestedOutput

TOL = 1e-6
_libm = ctypes.CDLL("libm.so.6")
_libm.expf.restype = ctypes.c_float
_libm.expf.argtypes = [ctypes.c_float]
f32 = np.float32

SUMMARY = []  # (model, values, bit-identical, max abs diff)


def expf(x):
    return f32(_libm.expf(float(x)))


def sigmoid(x):
    """XGBoost's float32 logistic (also loom_model_sigmoid)."""
    x = min(f32(-x), f32(88.7))
    return f32(f32(1) / f32(f32(expf(x) + f32(1)) + f32(1e-16)))


def softmax(row):
    wmax = row[0]
    for v in row[1:]:
        wmax = max(wmax, v)
    e = [expf(f32(v - wmax)) for v in row]
    s = 0.0
    for v in e:
        s += float(v)
    return [f32(v / f32(s)) for v in e]


def with_nans(X, fraction, seed):
    X = np.array(X, dtype=np.float32)
    rng = np.random.default_rng(seed)
    X[rng.random(X.shape) < fraction] = np.nan
    return X


def compare(name, got, want):
    got = np.asarray(got, dtype=np.float32)
    want = np.asarray(want, dtype=np.float32)
    assert got.shape == want.shape, (name, got.shape, want.shape)
    diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
    worst = float(np.nanmax(diff)) if diff.size else 0.0
    same = int(np.sum(got.view(np.uint32) == want.view(np.uint32)))
    SUMMARY.append((name, got.size, same, worst))
    bad = np.argwhere(~(diff <= TOL))
    assert bad.size == 0, (f"{name}: {len(bad)} of {got.size} values differ by more than {TOL} "
                           f"(worst {worst:.3g}); first at {bad[0].tolist()}: "
                           f"got {got[tuple(bad[0])]!r}, want {want[tuple(bad[0])]!r}")


@pytest.fixture(scope="module", autouse=True)
def _print_summary():
    yield
    if SUMMARY:
        lines = ["", "inference predictions vs XGBoost (values, bit-identical, max |diff|):"]
        for name, n, same, worst in SUMMARY:
            lines.append(f"  {name:34s} {n:6d} {same:6d} {'(all)' if same == n else '':6s}"
                         f" {worst:.3g}")
        print("\n".join(lines))
        path = os.environ.get("LOOM_INFERENCE_SUMMARY")
        if path:
            with open(path, "a") as f:
                f.write("\n".join(lines) + "\n")


def _fil_config(name, nfeat, nout, output_class="false", proba="false", fname="model.json"):
    return {"name": name, "backend": "fil", "max_batch_size": 4096,
            "input": [{"name": "input__0", "data_type": "TYPE_FP32", "dims": [nfeat]}],
            "output": [{"name": "output__0", "data_type": "TYPE_FP32", "dims": [nout]}],
            "default_model_filename": fname,
            "parameters": {"model_type": {"string_value": "xgboost_json"},
                           "output_class": {"string_value": output_class},
                           "predict_proba": {"string_value": proba}}}


@pytest.fixture(scope="module")
def env(module_servers, reference_models, xgb, tmp_path_factory):
    from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris

    repo = tmp_path_factory.mktemp("models")
    boosters, tests = {}, {}

    def train(name, X, y, params, rounds, config, nan=0.05, seed=1, dmatrix_kw=None):
        X = np.asarray(X, dtype=np.float32)
        d = xgb.DMatrix(X, label=y, **(dmatrix_kw or {}))
        bst = xgb.train(dict(params, seed=0, nthread=1), d, rounds)
        Xt = with_nans(X[: min(len(X), 150)], nan, seed)
        write_model(repo, name, config, {1: bst.save_raw("json").decode()})
        boosters[name], tests[name] = bst, Xt
        return bst

    Xc, yc = load_breast_cancer(return_X_y=True)
    Xi, yi = load_iris(return_X_y=True)
    Xd, yd = load_diabetes(return_X_y=True)
    xgb_cfg = {"backend": "xgboost", "max_batch_size": 4096}
    train("softprob", Xi, yi, {"objective": "multi:softprob", "num_class": 3, "max_depth": 4},
          40, xgb_cfg)
    train("softmax", Xi, yi, {"objective": "multi:softmax", "num_class": 3, "max_depth": 4},
          40, xgb_cfg)
    train("reglogistic", Xc, yc, {"objective": "reg:logistic", "max_depth": 5,
                                  "base_score": 0.3}, 60, xgb_cfg)
    train("logitraw", Xc, yc, {"objective": "binary:logitraw", "max_depth": 5,
                               "base_score": 0.3}, 60, xgb_cfg)
    train("dart_reg", Xd, yd, {"booster": "dart", "objective": "reg:squarederror",
                               "max_depth": 4, "rate_drop": 0.3, "base_score": 150.5},
          40, xgb_cfg)
    train("dart_binary", Xc, yc, {"booster": "dart", "objective": "binary:logistic",
                                  "max_depth": 4, "rate_drop": 0.2, "skip_drop": 0.2}, 40,
          xgb_cfg)
    rng = np.random.default_rng(0)
    Xk = np.empty((600, 4), dtype=np.float32)
    Xk[:, 0] = rng.integers(0, 6, 600)
    Xk[:, 1:] = rng.normal(size=(600, 3))
    yk = (Xk[:, 0] % 2 == 0) + 0.3 * Xk[:, 1]
    train("categorical", Xk, yk, {"tree_method": "hist", "max_cat_to_onehot": 1,
                                  "max_depth": 4}, 30, xgb_cfg,
          dmatrix_kw={"feature_types": ["c", "q", "q", "q"], "enable_categorical": True})
    # unseen, negative, fractional and huge categories
    tests["categorical"][:4, 0] = [-1.0, 3.5, 100.0, 1e30]

    # extreme but valid: a 100,000-level deep tree, and a category id of 2**24 - 1
    tiny = json.loads(train("tiny", Xk[:, 1:], Xk[:, 1], {"max_depth": 2}, 2,
                            xgb_cfg).save_raw("json").decode())
    t = tiny["learner"]["gradient_booster"]["model"]["trees"][0]
    k = 100000
    n = 2 * k + 1
    left, right, parents = [-1] * n, [-1] * n, [2147483647] * n
    for i in range(k):  # internal node 2i: left to a leaf, right to the next internal node
        # (right == left + 1, as in every tree XGBoost writes: its predictor relies on it)
        left[2 * i], right[2 * i] = 2 * i + 1, 2 * i + 2
        parents[2 * i + 1] = parents[2 * i + 2] = 2 * i
    t.update(left_children=left, right_children=right, parents=parents,
             split_indices=[i % 3 for i in range(n)], default_left=[i % 2 for i in range(n)],
             split_type=[0] * n, split_conditions=[float((i % 7) - 3) * 0.25 for i in range(n)],
             base_weights=[0.0] * n, loss_changes=[0.0] * n, sum_hessian=[0.0] * n)
    t["tree_param"]["num_nodes"] = str(n)
    deep = json.dumps(tiny)
    write_model(repo, "deep_tree", xgb_cfg, {1: deep})
    cat = json.loads(boosters["categorical"].save_raw("json").decode())
    for t in cat["learner"]["gradient_booster"]["model"]["trees"]:
        if t["categories"]:
            t["categories"][-1] = 16777215  # 2**24 - 1: the largest XGBoost matches
    huge_cat = json.dumps(cat)
    write_model(repo, "huge_category", xgb_cfg, {1: huge_cat})
    for name, text in (("deep_tree", deep), ("huge_category", huge_cat)):
        path = os.path.join(str(repo), name, "1", "model.json")
        boosters[name] = xgb.Booster(model_file=path)
    tests["deep_tree"] = with_nans(rng.normal(size=(100, 3)), 0.1, 5)
    tests["huge_category"] = tests["categorical"].copy()
    tests["huge_category"][4:9, 0] = [16777215.0, 16777216.0, 2e9, 16777215.5, 4.0]

    # train.py's reference models, as is and through FIL's output views
    for name in ("cancer", "iris", "diabetes"):
        copy_reference(reference_models, repo, name)
        tests[name] = rows_json(reference_models, name)[0]
        boosters[name] = xgb.Booster(model_file=os.path.join(str(reference_models), name, "1",
                                                             "model.json"))
    model = open(os.path.join(str(reference_models), "cancer", "1", "model.json")).read()
    write_model(repo, "cancer_class", _fil_config("cancer_class", 30, 1, "true"), {1: model})
    write_model(repo, "cancer_proba", _fil_config("cancer_proba", 30, 2, "true", "true"),
                {1: model})
    cfg = _fil_config("cancer_fil_default", 30, 1)
    del cfg["default_model_filename"]
    write_model(repo, "cancer_fil_default", cfg, {1: model}, filename="xgboost.json")
    write_model(repo, "cancer_nocfg", None, {1: model})

    # loom's linear format
    rng = np.random.default_rng(7)
    lin = {}
    for name, obj, k in (("lin_reg", "reg:squarederror", 1), ("lin_logistic", "binary:logistic", 1),
                         ("lin_softprob", "multi:softprob", 4),
                         ("lin_softmax", "multi:softmax", 4)):
        w = rng.normal(size=(k, 6)).astype(np.float32)
        b = rng.normal(size=k).astype(np.float32)
        doc = linear_model(w[0] if k == 1 else w, float(b[0]) if k == 1 else b, obj)
        write_model(repo, name, {"backend": "linear", "max_batch_size": 1024}, {1: doc})
        lin[name] = (obj, w, b)

    srv = module_servers(repo, "--pool-threads=4")
    return {"srv": srv, "c": srv.client(), "boosters": boosters, "tests": tests, "lin": lin,
            "ref": reference_models}


def predict(c, model, X, binary=True, name="input__0", out="output__0"):
    res = c.infer(model, [InferInput.from_numpy(name, np.asarray(X, dtype=np.float32),
                                                binary=binary)],
                  outputs=[InferRequestedOutput(out, binary=binary)])
    return res


# ---- XGBoost models ----


def test_breast_cancer_matches_train_py_expectations(env):
    X, expected = rows_json(env["ref"], "cancer")
    assert np.isnan(X).any(), "the reference rows should hold NaN"
    res = predict(env["c"], "cancer", X)
    assert res.output("output__0")["shape"] == [len(X), 1]
    compare("cancer (train.py rows)", res.as_numpy("output__0"), expected)
    # JSON output parses to the same float32 values
    res_json = predict(env["c"], "cancer", X, binary=False)
    compare("cancer JSON in/out", res_json.as_numpy("output__0"), expected)


@pytest.mark.parametrize("model,shape", [
    ("cancer", 1), ("diabetes", 1), ("softprob", 3), ("softmax", 1), ("reglogistic", 1),
    ("logitraw", 1), ("dart_reg", 1), ("dart_binary", 1), ("categorical", 1),
    ("deep_tree", 1), ("huge_category", 1)])
def test_predictions_match_xgboost(env, model, shape):
    bst, X = env["boosters"][model], env["tests"][model]
    res = predict(env["c"], model, X)
    out = res.output("output__0")
    assert out["datatype"] == "FP32" and out["shape"] == [len(X), shape], out
    got = res.as_numpy("output__0")
    want = bst.inplace_predict(X).reshape(len(X), -1)
    compare(f"{model} vs inplace_predict", got, want)
    if model == "softmax":
        assert set(np.unique(got).tolist()) <= {0.0, 1.0, 2.0}
    if not model.startswith("dart"):  # dart's DMatrix path rounds differently (1 ulp)
        dm = bst.predict(xgb_dmatrix(X)).reshape(len(X), -1)
        assert np.max(np.abs(dm - want)) <= TOL


def xgb_dmatrix(X):
    import xgboost
    return xgboost.DMatrix(X, missing=np.nan)


def test_multiclass_through_fil_proba(env):
    """iris from train.py: FIL output_class + predict_proba -> per-class probabilities."""
    X, expected = rows_json(env["ref"], "iris")
    res = predict(env["c"], "iris", X)
    assert res.output("output__0")["shape"] == [len(X), 3]
    compare("iris FIL predict_proba", res.as_numpy("output__0"), expected)
    assert np.allclose(res.as_numpy("output__0").sum(axis=1), 1.0, atol=1e-5)


def test_fil_output_class_and_predict_proba_views(env):
    X = env["tests"]["cancer"]
    p = env["boosters"]["cancer"].inplace_predict(X).astype(np.float32)
    cls = predict(env["c"], "cancer_class", X)
    assert cls.output("output__0")["shape"] == [len(X), 1]
    compare("cancer FIL output_class", cls.as_numpy("output__0")[:, 0],
            (p > 0.5).astype(np.float32))
    proba = predict(env["c"], "cancer_proba", X)
    assert proba.output("output__0")["shape"] == [len(X), 2]
    compare("cancer FIL predict_proba", proba.as_numpy("output__0"),
            np.stack([f32(1) - p, p], axis=1))


def test_default_file_names_and_no_config(env):
    X = env["tests"]["cancer"]
    want = env["boosters"]["cancer"].inplace_predict(X).reshape(-1, 1)
    for model in ("cancer_fil_default", "cancer_nocfg"):
        compare(f"{model}", predict(env["c"], model, X).as_numpy("output__0"), want)


def test_single_rows_and_a_1000_row_batch_agree(env):
    c = env["c"]
    X = env["tests"]["cancer"]
    want = env["boosters"]["cancer"].inplace_predict(X).astype(np.float32)
    singles = np.array([predict(c, "cancer", X[i:i + 1]).as_numpy("output__0")[0, 0]
                        for i in range(len(X))], dtype=np.float32)
    compare("cancer single-row requests", singles, want)
    before = c.statistics("cancer")["model_stats"][0]
    big = np.tile(X, (1000 // len(X) + 1, 1))[:1000]
    res = predict(c, "cancer", big)
    assert res.output("output__0")["shape"] == [1000, 1]
    got = res.as_numpy("output__0")[:, 0]
    compare("cancer 1000-row batch", got, np.resize(want, 1000))
    assert np.array_equal(got.view(np.uint32), np.resize(singles, 1000).view(np.uint32)), \
        "a 1000-row batch answers differently from single rows"
    after = c.statistics("cancer")["model_stats"][0]
    assert after["inference_count"] - before["inference_count"] == 1000
    assert after["execution_count"] - before["execution_count"] == 1
    assert 1000 in [b["batch_size"] for b in after["batch_stats"]]
    # multiclass too, with the pool
    Xi = env["tests"]["softprob"]
    bigi = np.tile(Xi, (1000 // len(Xi) + 1, 1))[:1000]
    wanti = env["boosters"]["softprob"].inplace_predict(bigi)
    compare("softprob 1000-row batch", predict(c, "softprob", bigi).as_numpy("output__0"),
            wanti)


# ---- the linear backend ----


def linear_reference(obj, w, b, X):
    out = []
    for x in X.astype(np.float32):
        m = []
        for k in range(w.shape[0]):
            acc = f32(b[k])
            for j in range(w.shape[1]):
                if not np.isnan(x[j]):
                    acc = f32(acc + f32(w[k, j] * x[j]))
            m.append(acc)
        if obj == "reg:squarederror":
            out.append([m[0]])
        elif obj == "binary:logistic":
            out.append([sigmoid(m[0])])
        elif obj == "multi:softprob":
            out.append(softmax(m))
        else:
            out.append([f32(int(np.argmax(m)))])
    return np.array(out, dtype=np.float32)


@pytest.mark.parametrize("model", ["lin_reg", "lin_logistic", "lin_softprob", "lin_softmax"])
def test_linear_backend_matches_numpy(env, model):
    obj, w, b = env["lin"][model]
    rng = np.random.default_rng(3)
    X = (rng.normal(size=(200, 6)) * 3).astype(np.float32)
    res = predict(env["c"], model, X)
    want = linear_reference(obj, w, b, X)
    assert res.output("output__0")["shape"] == list(want.shape)
    compare(f"{model} vs numpy", res.as_numpy("output__0"), want)
    md = env["c"].model_metadata(model)
    assert md["platform"] == "linear"
    assert md["inputs"][0]["shape"] == [-1, 6]
    assert md["outputs"][0]["shape"] == [-1, want.shape[1]]


# ---- metadata and configuration ----


@pytest.mark.parametrize("model,platform,nfeat,nout", [
    ("cancer", "fil", 30, 1), ("iris", "fil", 4, 3), ("diabetes", "fil", 10, 1),
    ("softprob", "xgboost", 4, 3), ("softmax", "xgboost", 4, 1),
    ("cancer_proba", "fil", 30, 2), ("cancer_class", "fil", 30, 1),
    ("categorical", "xgboost", 4, 1)])
def test_model_metadata(env, model, platform, nfeat, nout):
    md = env["c"].model_metadata(model)
    assert md["name"] == model and md["versions"] == ["1"]
    assert md["platform"] == platform
    assert md["inputs"] == [{"name": "input__0", "datatype": "FP32", "shape": [-1, nfeat]}]
    assert md["outputs"] == [{"name": "output__0", "datatype": "FP32", "shape": [-1, nout]}]


def test_model_without_config_gets_defaults(env):
    c = env["c"]
    md = c.model_metadata("cancer_nocfg")
    assert md["platform"] == "xgboost"
    # max_batch_size 0: no implicit batch dim; the completed dims are [-1, features]
    assert md["inputs"][0]["shape"] == [-1, 30]
    assert md["outputs"][0]["shape"] == [-1, 1]
    cfg = c.model_config("cancer_nocfg")
    assert cfg["name"] == "cancer_nocfg" and cfg["backend"] == "xgboost"
    assert cfg["max_batch_size"] == 0
    assert cfg["input"][0]["dims"] == [-1, 30] and cfg["output"][0]["dims"] == [-1, 1]
    assert cfg["version_policy"] == {"latest": {"num_versions": 1}}
    assert "dynamic_batching" not in cfg


def test_config_endpoint_completes_and_echoes(env):
    c = env["c"]
    cfg = c.model_config("softprob")  # input/output omitted in config.json
    assert cfg["backend"] == "xgboost" and cfg["max_batch_size"] == 4096
    assert cfg["input"] == [{"name": "input__0", "data_type": "TYPE_FP32", "dims": [4]}]
    assert cfg["output"] == [{"name": "output__0", "data_type": "TYPE_FP32", "dims": [3]}]
    cfg = c.model_config("cancer")  # train.py's FIL configuration
    assert cfg["backend"] == "fil" and cfg["platform"] == "fil"
    assert cfg["default_model_filename"] == "model.json"
    assert cfg["parameters"]["model_type"] == {"string_value": "xgboost_json"}
    assert cfg["dynamic_batching"]["max_queue_delay_microseconds"] == 100
    assert json.loads(json.dumps(cfg)) == cfg
