#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""Train loom's reference models with Python XGBoost and write them as a model repository.

Usage: /usr/bin/python3 tests/models/train.py OUTDIR

For each model NAME this writes
  OUTDIR/NAME/config.json     Triton's model configuration in its JSON form (FIL conventions)
  OUTDIR/NAME/1/model.json    the booster, exactly as bst.save_model("model.json") writes it
  OUTDIR/NAME.rows.json       {"inputs": [[...]], "expected": [[...]]}: held-out rows and what
                              libxgboost's inplace_predict (= XGBoosterPredictFromDense) returns
Models: cancer (breast cancer, binary:logistic, 100 trees, depth 6, ~5% NaN in the test rows),
iris (multi:softprob, 3 classes) and diabetes (reg:squarederror). Values are float32 written as
Python floats (exact), missing values as the bare token NaN (json.dumps' default). Training is
deterministic (fixed seeds, one thread) and takes a few seconds. Needs Debian's python3-xgboost,
python3-sklearn and python3-numpy: run it with /usr/bin/python3.
"""
import json
import os
import sys

import numpy as np
import xgboost as xgb
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris
from sklearn.model_selection import train_test_split


def config(name, nfeat, nout, output_class, predict_proba):
    """Triton's config.pbtxt mapped to JSON (proto3 JSON names), FIL backend conventions."""
    return {
        "name": name,
        "backend": "fil",
        "max_batch_size": 32768,
        "input": [{"name": "input__0", "data_type": "TYPE_FP32", "dims": [nfeat]}],
        "output": [{"name": "output__0", "data_type": "TYPE_FP32", "dims": [nout]}],
        "instance_group": [{"kind": "KIND_CPU"}],
        "default_model_filename": "model.json",
        "parameters": {
            "model_type": {"string_value": "xgboost_json"},
            "output_class": {"string_value": "true" if output_class else "false"},
            "predict_proba": {"string_value": "true" if predict_proba else "false"},
        },
        "dynamic_batching": {"max_queue_delay_microseconds": 100},
    }


def rows(values):
    """float32 rows as lists of Python floats (NaN stays NaN)."""
    return [[float(v) for v in row] for row in np.asarray(values, dtype=np.float32)]


def train(out, name, X, y, params, rounds, nan_fraction, cfg):
    Xtr, Xte, ytr, _ = train_test_split(X, y, test_size=0.2, random_state=0)
    Xte = np.array(Xte, dtype=np.float32)
    if nan_fraction:
        rng = np.random.default_rng(0)
        Xte[rng.random(Xte.shape) < nan_fraction] = np.nan
    params = dict(params, seed=0, nthread=1)
    bst = xgb.train(params, xgb.DMatrix(Xtr, label=ytr), rounds)
    os.makedirs(os.path.join(out, name, "1"), exist_ok=True)
    bst.save_model(os.path.join(out, name, "1", "model.json"))
    with open(os.path.join(out, name, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    pred = bst.inplace_predict(Xte)
    pred = pred.reshape(len(Xte), -1)
    with open(os.path.join(out, name + ".rows.json"), "w") as f:
        json.dump({"inputs": rows(Xte), "expected": rows(pred)}, f)
        f.write("\n")
    print(f"{name}: {len(Xte)} test rows, {X.shape[1]} features, "
          f"{bst.num_boosted_rounds()} rounds", file=sys.stderr)


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)

    X, y = load_breast_cancer(return_X_y=True)
    train(out, "cancer", X, y, {"objective": "binary:logistic", "max_depth": 6}, 100, 0.05,
          config("cancer", X.shape[1], 1, False, False))

    X, y = load_iris(return_X_y=True)
    train(out, "iris", X, y, {"objective": "multi:softprob", "num_class": 3, "max_depth": 4},
          50, 0.05, config("iris", X.shape[1], 3, True, True))

    X, y = load_diabetes(return_X_y=True)
    train(out, "diabetes", X, y, {"objective": "reg:squarederror", "max_depth": 5}, 100, 0.05,
          config("diabetes", X.shape[1], 1, False, False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
