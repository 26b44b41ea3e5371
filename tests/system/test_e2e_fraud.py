# SPDX-License-Identifier: Apache-2.0
"""The fraud product end to end, through the CLI, in one `loom serve registry trainer inference`
process: synthetic card transactions (`loom demo data fraud`) are trained on with fairness and
accuracy gates (`loom train`), the passing model lands in the registry, `production` is pointed
at it (`loom models alias set`), and inference, following `fraud@production`, serves it: its
answers equal XGBoost's own predictions on the registry's artifact. A dataset biased across
regions is rejected by the fairness gate, cannot be made `production`, and production keeps
serving the fair model."""

import json
import os
import socket
import subprocess
import tempfile
import time

import numpy as np
import pytest
import requests

LOOM = os.environ.get("LOOM_BIN", os.path.join(os.path.dirname(__file__), "../../build/loom"))

xgb = pytest.importorskip("xgboost")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url, deadline=20.0):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{url} not ready within {deadline} s")


@pytest.fixture(scope="module")
def platform():
    tmp = tempfile.mkdtemp(prefix="loom-e2e-")
    ports = {svc: free_port() for svc in ("registry", "trainer", "inference")}
    base = {svc: f"http://127.0.0.1:{p}" for svc, p in ports.items()}
    args = [LOOM, "serve", "registry", "trainer", "inference", f"--data-dir={tmp}/data",
            f"--trainer.registry={base['registry']}", f"--inference.registry={base['registry']}",
            "--inference.models=fraud@production"]  # alias moves arrive as bus events
    args += [f"--{svc}.listen=127.0.0.1:{p}" for svc, p in ports.items()]
    log = open(f"{tmp}/loom.log", "w")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    try:
        for svc in ports:
            wait_ready(base[svc] + "/readyz")
        env = dict(os.environ, LOOM_REGISTRY=base["registry"], LOOM_TRAINER=base["trainer"],
                   LOOM_INFERENCE=base["inference"])
        yield {"base": base, "env": env, "tmp": tmp, "log": f"{tmp}/loom.log"}
    finally:
        proc.terminate()
        rc = proc.wait(timeout=30)
        log.close()
        assert rc == 0, open(f"{tmp}/loom.log").read()[-3000:]


def cli(platform, *args, check=True):
    r = subprocess.run([LOOM, *args], env=platform["env"], capture_output=True, text=True,
                       timeout=300)
    if check:
        assert r.returncode == 0, f"loom {' '.join(args)}: {r.stdout}\n{r.stderr}"
    return r


def job_spec(path, dataset, gates):
    with open(path, "w") as f:
        f.write(f"""model: fraud
dataset: {dataset}
label: is_fraud
sensitive: region
backend: xgboost
objective: binary:logistic
params: {{max_depth: 4, eta: 0.1}}
rounds: 60
split: {{validation: 0.2, seed: 42}}
gates: {gates}
code_version: e2e
""")
    return path


def encoded_rows(csv_path, report, n):
    """The first n rows of a fraud CSV as the model's numeric features, encoded as the trainer
    reported it encoded string columns."""
    lines = open(csv_path).read().splitlines()
    header = lines[0].split(",")
    feats = report["features"]
    enc = report["encodings"]
    rows = []
    for line in lines[1:n + 1]:
        vals = dict(zip(header, line.split(",")))
        row = []
        for f in feats:
            v = vals[f]
            row.append(float(enc[f].index(v)) if f in enc else (float(v) if v else float("nan")))
        rows.append(row)
    return np.array(rows, dtype=np.float32)


def test_fraud_product_end_to_end(platform):
    tmp, base = platform["tmp"], platform["base"]
    fair = f"{tmp}/fair.csv"
    cli(platform, "demo", "data", "fraud", "--rows", "20000", "--seed", "1", "--out", fair)
    pushed = cli(platform, "datasets", "push", fair)
    digest = next(w for w in pushed.stdout.split() if w.startswith("sha256:"))

    # Fair data: every gate passes and the model is a ready version in the registry.
    spec = job_spec(f"{tmp}/fair.yaml", digest,
                    "{min_auc: 0.95, min_accuracy: 0.98, max_equal_opportunity_diff: 0.4, "
                    "max_demographic_parity_diff: 0.05, max_p99_latency_us: 1000}")
    r = cli(platform, "train", "-f", spec, "--wait")
    assert "FAIL" not in r.stdout and "registry: fraud version 1 (ready)" in r.stdout, r.stdout

    # Not served until production points at it.
    assert requests.get(f"{base['inference']}/v2/models/fraud/ready", timeout=5).status_code != 200
    cli(platform, "models", "alias", "set", "fraud@production", "1")
    wait_ready(f"{base['inference']}/v2/models/fraud/ready", deadline=5)  # poll: 1 min
    meta = requests.get(f"{base['inference']}/v2/models/fraud", timeout=5).json()
    assert meta["versions"] == ["1"]

    # What inference answers is what XGBoost computes on the registry's artifact.
    version = requests.get(f"{base['registry']}/api/v1/models/fraud/versions/1", timeout=5).json()
    report = version["metadata"]["report"]
    rows = encoded_rows(fair, report, 200)
    art = requests.get(f"{base['registry']}/api/v1/models/fraud/versions/1/artifact", timeout=10)
    model_path = f"{tmp}/fraud-1.json"
    open(model_path, "wb").write(art.content)
    booster = xgb.Booster(model_file=model_path)
    want = booster.inplace_predict(rows)
    body = {"inputs": [{"name": meta["inputs"][0]["name"], "shape": list(rows.shape),
                        "datatype": "FP32", "data": rows.tolist()}]}
    got = requests.post(f"{base['inference']}/v2/models/fraud/infer", data=json.dumps(body),
                        timeout=10).json()["outputs"][0]
    assert got["shape"] == [200, 1]
    assert np.max(np.abs(np.array(got["data"], dtype=np.float32) - want)) <= 1e-6

    # `loom predict` on one row agrees.
    out = cli(platform, "predict", "fraud", "--input", json.dumps(rows[0].tolist())).stdout
    assert abs(float(out.split()[0]) - float(want[0])) <= 1e-6

    # Biased data: the fairness gate rejects it, with figures per region, and production cannot
    # be moved to it: inference keeps serving version 1.
    biased = f"{tmp}/biased.csv"
    cli(platform, "demo", "data", "fraud", "--rows", "20000", "--seed", "1", "--bias", "0.8",
        "--out", biased)
    spec = job_spec(f"{tmp}/biased.yaml", biased,
                    "{min_auc: 0.5, max_equal_opportunity_diff: 0.4}")
    r = cli(platform, "train", "-f", spec, "--wait", check=False)
    assert r.returncode == 1, r.stdout + r.stderr
    assert any(l.strip().startswith("FAIL") and "max_equal_opportunity_diff" in l
               for l in r.stdout.splitlines()), r.stdout
    for region in ("north", "south", "east", "west"):
        assert region in r.stdout
    assert "registry: fraud version 2 (rejected)" in r.stdout, r.stdout
    refused = cli(platform, "models", "alias", "set", "fraud@production", "2", check=False)
    assert refused.returncode == 1 and "ready" in (refused.stdout + refused.stderr)
    time.sleep(0.6)  # a few registry polls
    meta = requests.get(f"{base['inference']}/v2/models/fraud", timeout=5).json()
    assert meta["versions"] == ["1"]
