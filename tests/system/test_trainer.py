# SPDX-License-Identifier: Apache-2.0
"""Black-box tests of the trainer (`loom serve trainer registry` in one process), on SQLite and
on a real PostgreSQL 15 (registry_fixtures.Postgres): datasets (upload, describe, errors), jobs
through the CLI on the fraud demo data (a fair dataset passes its gates and becomes a `ready`
registry version with its report; a biased one is rejected by the fairness gate with per-group
figures), progress while running, cancellation, a restart mid-job (the job is failed with the
reason, never lost), bad specs (400 naming the field), Idempotency-Key, the linear backend
against scikit-learn, and determinism (the same spec twice gives the same model bytes).

The CLI commands (`loom demo`, `loom datasets`, `loom train`) are part of the binary; the
data comes from `loom demo data fraud`.

Every answer the tests receive from the trainer's API (and from its registry) is validated
against api/openapi.yaml (openapi_contract.py): its status must be documented, its body must
match the schema, and a spec the trainer accepted must match the job spec schema.
"""

import json
import math
import os
import signal
import subprocess
import threading
import time

import numpy as np
import pytest
import requests

from conftest import (STOP_TIMEOUT, Loom, free_port, loom_cmd, read_response, request_bytes,
                      run_loom)
from openapi_contract import load as load_contract
from registry_fixtures import Postgres, SANITIZED, SLOW, postgres  # noqa: F401 (fixture)

READY_TIMEOUT = 15.0 * SLOW
JOB_TIMEOUT = 120.0 * SLOW
STOPPED_RUNNING = "the trainer stopped while this job was running"
STOPPED_QUEUED = "the trainer stopped before this job started"
CONTRACT = load_contract()


def _cli_wired():
    r = run_loom("train", "--help")
    return r.returncode == 0 and "job spec" in r.stdout


pytestmark = pytest.mark.skipif(not _cli_wired(),
                                reason="loom train/datasets/demo are not wired into cmd/main.c")


# ---- the server ----


class TrainerLoom(Loom):
    """`loom serve trainer registry`: the trainer pushes to the registry of the same process."""

    def __init__(self, args, data_dir, store=None, registry_store=None, env=None):
        super().__init__(args, data_dir, env=env)
        self.args = list(args)  # Loom puts "echo" in front; these are the trainer's
        self.store = store
        self.registry_store = registry_store
        self.reg_port = None
        self.sessions = []

    def start(self):
        self.reg_port = self.reg_port or free_port()
        extra = [f"--data-dir={self.data_dir}", "--trainer.listen=127.0.0.1:0",
                 f"--registry.listen=127.0.0.1:{self.reg_port}",
                 f"--trainer.registry=http://127.0.0.1:{self.reg_port}"]
        if self.store:
            extra.append(f"--trainer.store={self.store}")
        if self.registry_store:
            extra.append(f"--registry.store={self.registry_store}")
        cmd = loom_cmd("serve", "trainer", "registry", *self.args, *extra)
        self.t_exec = time.monotonic()
        self.lines.clear()
        self.stopped = False
        self.proc = subprocess.Popen(cmd, env=self.env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        threading.Thread(target=self._pump, args=(self.proc.stderr, self.lines),
                         daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stdout, self.stdout),
                         daemon=True).start()
        line = self.wait_log(lambda o: o.get("msg") == "listening" and o.get("svc") == "trainer",
                             timeout=READY_TIMEOUT)
        if line is None:
            self._fail_start("no \"listening\" log line from the trainer")
        self.port = int(line["port"])
        self.host = "127.0.0.1"
        self.base = f"http://127.0.0.1:{self.port}"
        self.registry = f"http://127.0.0.1:{self.reg_port}"
        deadline = self.t_exec + READY_TIMEOUT
        while not self._readyz_ok():
            if self.proc.poll() is not None:
                self._fail_start(f"exited with {self.proc.returncode}")
            if time.monotonic() > deadline:
                self._fail_start("/readyz did not answer 200")
            time.sleep(0.01)
        return self

    def session(self):
        s = CONTRACT.attach(requests.Session(), known=True)
        self.sessions.append(s)
        return s

    def close_sessions(self):
        for s in self.sessions:
            s.close()
        self.sessions.clear()

    def quiesce(self, timeout=2.0):
        self.close_sessions()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if (self.metric("loom_trainer_http_connections") or 0) <= 1:
                    time.sleep(0.01)
                    return True
            except (OSError, AssertionError, EOFError):
                return False
            time.sleep(0.02)
        return False

    def stop(self, timeout=STOP_TIMEOUT, quiesce=True):
        self.close_sessions()
        return super().stop(timeout=timeout, quiesce=quiesce)

    def kill9(self):
        self.close_sessions()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.stopped = True
        self.returncode = self.proc.returncode

    # ---- API helpers ----

    def get(self, path, **kw):
        kw.setdefault("timeout", 30 * SLOW)
        return CONTRACT.check_response(requests.get(self.base + path, **kw), known=True)

    def post(self, path, **kw):
        kw.setdefault("timeout", 60 * SLOW)
        return CONTRACT.check_response(requests.post(self.base + path, **kw), known=True)

    def reg_get(self, path, **kw):
        """GET from the registry the trainer publishes to (its answer checked too)."""
        kw.setdefault("timeout", 10)
        return CONTRACT.check_response(requests.get(self.registry + path, **kw), known=True)

    def upload(self, data):
        r = self.post("/api/v1/datasets", data=data)
        assert r.status_code in (200, 201), r.text
        return r.json()

    def submit(self, spec, **kw):
        r = self.post("/api/v1/training-jobs", json=spec, **kw)
        assert r.status_code == 201, r.text
        return r.json()

    def job(self, jid, history=True):
        r = self.get(f"/api/v1/training-jobs/{jid}" + ("" if history else "?history=false"))
        assert r.status_code == 200, r.text
        return r.json()

    def wait_job(self, jid, pred=None, timeout=JOB_TIMEOUT):
        pred = pred or (lambda j: j["status"] in ("succeeded", "rejected", "failed", "cancelled"))
        deadline = time.monotonic() + timeout
        while True:
            j = self.job(jid, history=False)
            if pred(j):
                return j
            assert time.monotonic() < deadline, f"job {jid} still {j['status']}: {j}"
            time.sleep(0.05)

    def cli(self, *args, timeout=JOB_TIMEOUT, cwd=None):
        return run_loom(*args, env={"LOOM_TRAINER": self.base}, timeout=timeout, cwd=cwd)


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request):
    return request.param


@pytest.fixture
def trainer(tmp_path, backend, request):
    """Factory: trainer(*flags, same=None) starts a trainer + registry on a fresh store of the
    test's backend; same=srv restarts on srv's data dir and stores."""
    started = []

    def start(*args, same=None):
        if same is not None:
            srv = TrainerLoom(args or same.args, same.data_dir, store=same.store,
                              registry_store=same.registry_store)
            srv.reg_port = same.reg_port
        else:
            store = reg_store = None
            if backend == "postgres":
                pg = request.getfixturevalue("postgres")
                store, reg_store = pg.new_database(), pg.new_database()
            srv = TrainerLoom(args, str(tmp_path / f"data{len(started)}"), store=store,
                              registry_store=reg_store)
        started.append(srv)
        return srv.start()

    yield start
    failures = []
    for srv in started:
        if srv.proc is None:
            continue
        if not srv.stopped and srv.proc.poll() is None:
            srv.stop()
        elif not srv.stopped:
            srv.wait_exit()
            failures.append(f"loom exited on its own with {srv.returncode}:\n{srv.stderr_text()}")
        srv.check_logs()
    if failures:
        pytest.fail("\n".join(failures), pytrace=False)


# ---- data ----


@pytest.fixture(scope="module")
def fraud_csv(tmp_path_factory):
    """The demo data: {bias: path} for bias 0 and 0.8 (20000 rows, seed 1)."""
    d = tmp_path_factory.mktemp("fraud")
    out = {}
    for bias in ("0", "0.8"):
        path = str(d / f"fraud-{bias}.csv")
        r = run_loom("demo", "data", "fraud", "--rows", "20000", "--seed", "1", "--bias", bias,
                     "--out", path)
        assert r.returncode == 0, r.stderr
        out[bias] = path
    return out


def read(path):
    with open(path, "rb") as f:
        return f.read()


def assert_problem(r, status, field=None, *words):
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers
    p = r.json()
    assert p["status"] == status and p["title"] and p["detail"], p
    if field is not None:
        assert p.get("field") == field, p
    for w in words:
        assert w.lower() in p["detail"].lower(), (w, p["detail"])
    return p


def fraud_spec(digest, **over):
    spec = {"model": "fraud", "dataset": digest, "label": "is_fraud", "sensitive": "region",
            "backend": "xgboost", "objective": "binary:logistic",
            "params": {"max_depth": 4, "eta": 0.1}, "rounds": 60,
            "split": {"validation": 0.2, "seed": 42},
            "gates": {"min_auc": 0.95, "max_equal_opportunity_diff": 0.4},
            "code_version": "test-1"}
    spec.update(over)
    return spec


def slow_spec(digest, rounds=6000):
    """A job that runs for seconds: deep trees, a tiny learning rate."""
    return {"model": "slow", "dataset": digest, "label": "is_fraud", "rounds": rounds,
            "params": {"max_depth": 10, "eta": 0.001, "min_child_weight": 0}}


# ---- the demo data ----


def test_demo_data_is_deterministic(tmp_path):
    a, b, c = (str(tmp_path / n) for n in ("a.csv", "b.csv", "c.csv"))
    assert run_loom("demo", "data", "fraud", "--rows", "3000", "--seed", "5", "--out", a).returncode == 0
    assert run_loom("demo", "data", "fraud", "--rows=3000", "--seed=5", "--out", b).returncode == 0
    assert run_loom("demo", "data", "fraud", "--rows", "3000", "--seed", "6", "--out", c).returncode == 0
    assert read(a) == read(b) and read(a) != read(c)
    lines = read(a).decode().splitlines()
    assert lines[0] == ("amount,merchant_category,hour,distance_from_home_km,card_age_days,"
                        "txn_count_1h,txn_count_24h,avg_amount_7d,region,is_fraud")
    assert len(lines) == 3001
    rows = [l.split(",") for l in lines[1:]]
    assert {r[8] for r in rows} == {"north", "south", "east", "west"}
    fraud = sum(int(r[9]) for r in rows) / len(rows)
    assert 0.004 < fraud < 0.02, fraud
    # stdout by default; usage errors exit 2
    r = run_loom("demo", "data", "fraud", "--rows", "2")
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 3
    assert run_loom("demo", "data", "fraud", "--bias", "2").returncode == 2
    assert run_loom("demo", "data", "nope").returncode == 2
    assert run_loom("demo", "--help").returncode == 0


# ---- datasets ----


def test_datasets(trainer, fraud_csv, tmp_path):
    srv = trainer()
    data = read(fraud_csv["0"])
    r = srv.post("/api/v1/datasets", data=data)
    assert r.status_code == 201, r.text
    d = r.json()
    import hashlib
    assert d["digest"] == "sha256:" + hashlib.sha256(data).hexdigest()
    assert d["rows"] == 20000 and d["size"] == len(data)
    cols = {c["name"]: c for c in d["columns"]}
    assert list(cols) == ["amount", "merchant_category", "hour", "distance_from_home_km",
                          "card_age_days", "txn_count_1h", "txn_count_24h", "avg_amount_7d",
                          "region", "is_fraud"]
    assert cols["region"]["type"] == "string" and cols["amount"]["type"] == "number"
    assert cols["is_fraud"]["min"] == 0 and cols["is_fraud"]["max"] == 1
    assert all(c["missing"] == 0 for c in cols.values())
    # the same bytes again: the same digest, 200
    r = srv.post("/api/v1/datasets", data=data)
    assert r.status_code == 200 and r.json()["digest"] == d["digest"]
    # a small one with quotes, CRLF, missing values and a string column
    small = (b'id,name,score\r\n1,"Smith, J.",0.5\r\n2,"say ""hi""",\r\n3,,2\r\n')
    s = srv.upload(small)
    sc = {c["name"]: c for c in s["columns"]}
    assert s["rows"] == 3 and sc["name"]["type"] == "string" and sc["name"]["missing"] == 1
    assert sc["score"] == {"name": "score", "type": "number", "missing": 1, "min": 0.5, "max": 2}
    g = srv.get(f"/api/v1/datasets/{s['digest']}")
    assert g.status_code == 200 and g.json()["digest"] == s["digest"]
    assert g.json()["columns"] == s["columns"]
    # list, newest first, paginated
    r = srv.get("/api/v1/datasets?limit=1")
    page = r.json()
    assert r.status_code == 200 and len(page["items"]) == 1 and page["next_cursor"]
    assert page["items"][0]["digest"] == s["digest"]
    page2 = srv.get(f"/api/v1/datasets?limit=1&cursor={page['next_cursor']}").json()
    assert [i["digest"] for i in page2["items"]] == [d["digest"]] and page2["next_cursor"] is None
    # errors
    p = assert_problem(srv.post("/api/v1/datasets", data=b'a,b\n1,"open\n2,3\n'), 400, None,
                       "unterminated quoted field")
    assert (p["line"], p["column"]) == (2, 3)
    p = assert_problem(srv.post("/api/v1/datasets", data=b"a,b\n1,2\n3,4,5\n"), 400, None,
                       "3 fields", "header row has 2")
    assert (p["line"], p["column"]) == (3, 5)
    p = assert_problem(srv.post("/api/v1/datasets", data=b"a,a\n1,2\n"), 400, None, "twice")
    assert (p["line"], p["column"]) == (1, 3)
    assert_problem(srv.post("/api/v1/datasets", data=b"a,b\n"), 400, None, "no data rows")
    assert_problem(srv.post("/api/v1/datasets", data=b""), 400, None, "empty")
    assert_problem(srv.post("/api/v1/datasets", data=b'a\nx"y\n'), 400, None, "quote")
    assert_problem(srv.get("/api/v1/datasets/sha256:abc"), 400, "digest")
    assert_problem(srv.get("/api/v1/datasets/sha256:" + "0" * 64), 404, "digest")
    assert_problem(srv.get("/api/v1/datasets?limit=0"), 400, "limit")
    # the CLI: push prints the digest, list shows it; a malformed file says where
    f = tmp_path / "small.csv"
    f.write_bytes(small)
    r = srv.cli("datasets", "push", str(f))
    assert r.returncode == 0 and s["digest"] in r.stdout, r.stderr
    r = srv.cli("datasets", "list")
    assert r.returncode == 0 and s["digest"] in r.stdout and d["digest"] in r.stdout
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"a,b\n1,2,3\n")
    r = srv.cli("datasets", "push", str(bad))
    assert r.returncode == 1 and "line 2, column 5" in r.stderr, r.stderr
    assert srv.cli("datasets").returncode == 2
    assert srv.cli("datasets", "--help").returncode == 0


def test_dataset_size_limit(trainer):
    srv = trainer("--trainer.max-dataset-bytes=2KiB")
    # refused from its Content-Length, before a byte of the body
    with srv.connect() as s:
        s.sendall(request_bytes("POST", "/api/v1/datasets", {"Content-Length": "5000"}))
        r = read_response(s)
    CONTRACT.check_raw("POST", "/api/v1/datasets", r)
    assert r.status == 413 and "max-dataset-bytes" in r.json()["detail"]
    # refused while it streams (chunked: no length known in advance)
    body = b"a,b\n" + b"1,2\n" * 800
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 500]), body[i:i + 500])
                       for i in range(0, len(body), 500)) + b"0\r\n\r\n"
    with srv.connect() as s:
        s.sendall(request_bytes("POST", "/api/v1/datasets", {"Transfer-Encoding": "chunked"})
                  + chunked)
        r = read_response(s)
    CONTRACT.check_raw("POST", "/api/v1/datasets", r)
    assert r.status == 413, r
    # under the limit, chunked: fine
    small = b"a,b\n1,2\n"
    with srv.connect() as s:
        s.sendall(request_bytes("POST", "/api/v1/datasets", {"Transfer-Encoding": "chunked"})
                  + b"%x\r\n%s\r\n0\r\n\r\n" % (len(small), small))
        r = read_response(s)
    CONTRACT.check_raw("POST", "/api/v1/datasets", r)
    assert r.status == 201 and r.json()["rows"] == 1


# ---- jobs through the CLI ----


def job_yaml(path, dataset, gates, model="fraud"):
    path.write_text(f"""# the fraud demo model
model: {model}
dataset: {dataset}
label: is_fraud
sensitive: region
backend: xgboost
objective: binary:logistic
params:
  max_depth: 4
  eta: 0.1
rounds: 60
split: {{validation: 0.2, seed: 42}}
gates: {gates}
code_version: "git-abc123"
description: fraud scoring, demo
""")
    return str(path)


def test_cli_fair_data_passes_and_is_ready(trainer, fraud_csv, tmp_path):
    srv = trainer()
    # the spec names the local CSV: the CLI uploads it first
    spec = job_yaml(tmp_path / "job.yaml", fraud_csv["0"],
                    "{min_auc: 0.95, min_accuracy: 0.98, max_equal_opportunity_diff: 0.4, "
                    "max_demographic_parity_diff: 0.05}")
    r = srv.cli("train", "-f", spec, "--wait")
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    for gate in ("min_auc", "min_accuracy", "max_equal_opportunity_diff",
                 "max_demographic_parity_diff"):
        assert any(l.strip().startswith("PASS") and gate in l for l in out.splitlines()), out
    assert "FAIL" not in out
    assert "registry: fraud version 1 (ready)" in out, out
    for word in ("auc", "fairness by region", "north", "south", "east", "west", "latency"):
        assert word in out, out
    jid = r.stderr.split("loom train: job ")[1].split()[0]
    job = srv.job(jid)
    assert job["status"] == "succeeded" and job["error"] is None
    assert job["registry"] == {"model": "fraud", "version": 1, "status": "ready"}
    assert job["progress"] == {"round": 60, "rounds": 60}
    hist = job["metric"]["history"]
    assert job["metric"]["name"] == "validation-logloss" and len(hist) == 60
    assert [h["round"] for h in hist] == list(range(1, 61)) and hist[-1]["value"] < hist[0]["value"]
    rep = job["report"]
    assert rep["passed"] is True and rep["metrics"]["auc"] > 0.95
    assert rep["encodings"]["merchant_category"] == sorted(rep["encodings"]["merchant_category"])
    assert rep["split"] == {"validation": 0.2, "seed": 42, "train_rows": 16000,
                            "validation_rows": 4000}
    assert {g["group"] for g in rep["fairness"]["groups"]} == {"north", "south", "east", "west"}
    assert rep["latency"]["calls"] >= 1000 and rep["latency"]["p99_us"] > 0
    assert rep["confusion_matrix"]["tp"] + rep["confusion_matrix"]["fn"] > 0
    # the registry has it, ready, with the report and the lineage
    v = srv.reg_get("/api/v1/models/fraud/versions/1").json()
    assert v["status"] == "ready" and v["artifact_digest"] == job["model_digest"]
    meta = v["metadata"]
    assert meta["lineage"] == {"dataset_digest": job["dataset"], "training_job": jid,
                               "code_version": "git-abc123"}
    assert meta["report"]["gates"] == rep["gates"] and meta["metrics"]["auc"] == rep["metrics"]["auc"]
    assert meta["description"] == "fraud scoring, demo"
    art = srv.reg_get("/api/v1/models/fraud/versions/1/artifact")
    import hashlib
    assert "sha256:" + hashlib.sha256(art.content).hexdigest() == job["model_digest"]
    # status and list through the CLI
    r = srv.cli("train", "status", jid)
    assert r.returncode == 0 and "succeeded" in r.stdout
    r = srv.cli("train", "list")
    assert r.returncode == 0 and jid in r.stdout


def test_cli_biased_data_is_rejected_by_fairness(trainer, fraud_csv, tmp_path):
    srv = trainer()
    digest = srv.upload(read(fraud_csv["0.8"]))["digest"]
    spec = job_yaml(tmp_path / "job.yaml", digest,
                    "{min_auc: 0.5, max_equal_opportunity_diff: 0.4}")
    r = srv.cli("train", "-f", spec, "--wait")
    assert r.returncode == 1, r.stdout + r.stderr
    out = r.stdout
    assert any(l.strip().startswith("FAIL") and "max_equal_opportunity_diff" in l
               for l in out.splitlines()), out
    assert any(l.strip().startswith("PASS") and "min_auc" in l for l in out.splitlines()), out
    assert "registry: fraud version 1 (rejected)" in out, out
    jid = r.stderr.split("loom train: job ")[1].split()[0]
    job = srv.job(jid)
    assert job["status"] == "rejected"
    assert "max_equal_opportunity_diff" in job["error"]
    fair = job["report"]["fairness"]
    assert fair["equal_opportunity_diff"] > 0.4
    groups = {g["group"]: g for g in fair["groups"]}
    # the south's over-reported labels: its true-positive rate is the low one
    assert groups["south"]["tpr"] < min(g["tpr"] for n, g in groups.items()
                                        if n in ("north", "west"))
    for g in groups.values():
        assert set(g) >= {"count", "positives", "positive_rate", "tpr", "fpr"}
    v = srv.reg_get("/api/v1/models/fraud/versions/1").json()
    assert v["status"] == "rejected"
    assert v["metadata"]["report"]["fairness"]["groups"] == fair["groups"]
    gates = {g["name"]: g for g in v["metadata"]["report"]["gates"]}
    assert gates["max_equal_opportunity_diff"]["passed"] is False


# ---- progress, cancellation, restarts ----


def test_progress_and_cancel(trainer, fraud_csv):
    srv = trainer()
    digest = srv.upload(read(fraud_csv["0"]))["digest"]
    slow = srv.submit(slow_spec(digest))
    queued = srv.submit(fraud_spec(digest))  # one job at a time: this one waits
    assert slow["status"] == "queued"
    j = srv.wait_job(slow["id"], lambda j: j["status"] == "running" and j["progress"]["round"] > 0)
    r1 = j["progress"]["round"]
    assert j["progress"]["rounds"] == 6000 and j["metric"]["name"] == "validation-logloss"
    assert "last" in j["metric"] and "eta_ms" in j["progress"] and j["started_at"]
    j = srv.wait_job(slow["id"], lambda j: j["progress"]["round"] > r1 + 5)
    full = srv.job(slow["id"])
    assert len(full["metric"]["history"]) >= r1
    assert srv.job(queued["id"])["status"] == "queued"
    # the list shows both, newest first
    items = srv.get("/api/v1/training-jobs").json()["items"]
    assert [i["id"] for i in items[:2]] == [queued["id"], slow["id"]]
    assert srv.get("/api/v1/training-jobs?status=running").json()["items"][0]["id"] == slow["id"]
    # cancel the queued one: at once
    r = srv.post(f"/api/v1/training-jobs/{queued['id']}/cancel")
    assert r.status_code == 202 and r.json()["status"] == "cancelled"
    # cancel the running one through the CLI: it stops after its round
    r = srv.cli("train", "cancel", slow["id"])
    assert r.returncode == 0, r.stderr
    j = srv.wait_job(slow["id"], timeout=30 * SLOW)
    assert j["status"] == "cancelled" and j["error"] == "cancelled by request"
    assert 0 < j["progress"]["round"] < 6000
    # cancelling again is harmless; a finished job cannot be cancelled; unknown ids are 404
    r = srv.post(f"/api/v1/training-jobs/{queued['id']}/cancel")
    assert r.status_code == 202 and r.json()["status"] == "cancelled"
    done = srv.submit(fraud_spec(digest, rounds=5, gates={}))
    srv.wait_job(done["id"])
    assert_problem(srv.post(f"/api/v1/training-jobs/{done['id']}/cancel"), 409, None, "already")
    assert_problem(srv.get("/api/v1/training-jobs/0190c2a1-6b2e-7cde-9f01-23456789abcd"), 404)
    assert_problem(srv.get("/api/v1/training-jobs/nope"), 400, "id")
    r = srv.cli("train", "status", slow["id"])
    assert r.returncode == 1 and "cancelled" in r.stdout


@pytest.mark.parametrize("how", ["kill", "term"])
def test_restart_mid_job_fails_it_with_the_reason(trainer, fraud_csv, how):
    srv = trainer()
    digest = srv.upload(read(fraud_csv["0"]))["digest"]
    slow = srv.submit(slow_spec(digest))
    queued = srv.submit(fraud_spec(digest))
    srv.wait_job(slow["id"], lambda j: j["status"] == "running" and j["progress"]["round"] > 0)
    if how == "kill":
        srv.kill9()
    else:
        took = srv.stop()
        assert took < 10
        # a graceful stop records it at once
        line = srv.wait_log(lambda o: o.get("msg") == "training job finished", timeout=1)
        assert line and line["status"] == "failed" and line["error"] == STOPPED_RUNNING
    srv2 = trainer(same=srv)
    j = srv2.job(slow["id"])
    assert j["status"] == "failed" and j["error"] == STOPPED_RUNNING, j
    assert j["finished_at"] and j["progress"]["round"] >= 0
    q = srv2.job(queued["id"])
    assert q["status"] == "failed" and q["error"] == STOPPED_QUEUED, q
    # the trainer works on: a new job runs
    again = srv2.submit(fraud_spec(digest, rounds=5, gates={}))
    assert srv2.wait_job(again["id"])["status"] == "succeeded"
    r = srv2.cli("train", "status", slow["id"])
    assert r.returncode == 1 and STOPPED_RUNNING in r.stdout


# ---- validation ----


BAD_SPECS = [
    ({}, "model", "required"),
    ({"model": "Fraud"}, "model", "a-z"),
    ({"dataset": "sha256:abc"}, "dataset", "digest"),
    ({"dataset": "sha256:" + "0" * 64}, "dataset", "no dataset"),
    ({"label": "nope"}, "label", "no column"),
    ({"label": "merchant_category"}, "label", "string"),
    ({"features": ["amount", "zzz"]}, "features[1]", "no column"),
    ({"features": ["amount", "amount"]}, "features[1]", "twice"),
    ({"features": ["is_fraud"]}, "features[0]", "label"),
    ({"sensitive": "zzz"}, "sensitive", "no column"),
    ({"backend": "torch"}, "backend", "xgboost"),
    ({"objective": "multi:softmax"}, "objective", "not one"),
    ({"backend": "linear", "objective": "count:poisson"}, "objective", "linear"),
    ({"params": {"max_depth": -3}}, "params.max_depth", "max_depth"),
    ({"params": {"eta": "fast"}}, "params.eta", "fast"),
    ({"params": {"foo": 1}}, "params.foo", "not an xgboost"),
    ({"params": {"nthread": 4}}, "params.nthread", "trainer"),
    ({"params": {"objective": "reg:squarederror"}}, "params.objective", "objective"),
    ({"backend": "linear", "params": {"max_depth": 3}}, "params.max_depth", "linear"),
    ({"backend": "linear", "params": {"lambda": -1}}, "params.lambda", ">= 0"),
    ({"rounds": 0}, "rounds", "1 to"),
    ({"rounds": 1.5}, "rounds", "integer"),
    ({"split": {"validation": 1.5}}, "split.validation", "at most"),
    ({"split": {"seed": -1}}, "split.seed", "integer"),
    ({"split": {"test": 0.1}}, "split.test", "not a split"),
    ({"gates": {"min_f1": 0.5}}, "gates.min_f1", "not a gate"),
    ({"gates": {"min_auc": "high"}}, "gates.min_auc", "number"),
    ({"sensitive": None, "gates": {"max_demographic_parity_diff": 0.1}},
     "gates.max_demographic_parity_diff", "sensitive"),
    ({"objective": "reg:squarederror", "gates": {"min_auc": 0.9}}, "gates.min_auc", "binary"),
    ({"surprise": 1}, "surprise", "unknown field"),
]


def test_bad_specs_name_the_field(trainer, fraud_csv):
    srv = trainer()
    digest = srv.upload(read(fraud_csv["0"]))["digest"]
    base = fraud_spec(digest)
    for over, field, word in BAD_SPECS:
        spec = {} if not over else dict(base, **over)
        r = srv.post("/api/v1/training-jobs", json=spec)
        assert_problem(r, 400, field, word)
    assert_problem(srv.post("/api/v1/training-jobs", data=b"{not json"), 400, None, "not json")
    assert_problem(srv.post("/api/v1/training-jobs", data=b"[]"), 400, None, "object")
    # nothing was created
    assert srv.get("/api/v1/training-jobs").json() == {"items": [], "next_cursor": None}
    # the CLI says which field, and exits 1; a YAML error names its line
    r = srv.cli("train", "-f", "/dev/null")
    assert r.returncode == 1
    assert srv.cli("train").returncode == 2 and srv.cli("train", "--bogus").returncode == 2


def test_bad_spec_from_cli(trainer, fraud_csv, tmp_path):
    srv = trainer()
    digest = srv.upload(read(fraud_csv["0"]))["digest"]
    f = tmp_path / "j.yaml"
    f.write_text(f"model: fraud\ndataset: {digest}\nlabel: is_fraud\nparams: {{max_depth: -1}}\n")
    r = srv.cli("train", "-f", str(f))
    assert r.returncode == 1 and "params.max_depth" in r.stderr, r.stderr
    f.write_text("model: [unclosed\n")
    r = srv.cli("train", "-f", str(f))
    assert r.returncode == 1 and "line" in r.stderr, r.stderr


def test_idempotency_key(trainer, fraud_csv):
    srv = trainer()
    digest = srv.upload(read(fraud_csv["0"]))["digest"]
    body = json.dumps(fraud_spec(digest, rounds=5, gates={})).encode()
    h = {"Idempotency-Key": "job-1", "Content-Type": "application/json"}
    a = srv.post("/api/v1/training-jobs", data=body, headers=h)
    b = srv.post("/api/v1/training-jobs", data=body, headers=h)
    assert a.status_code == b.status_code == 201
    assert a.json()["id"] == b.json()["id"]
    assert a.headers["location"] == f"/api/v1/training-jobs/{a.json()['id']}"
    other = json.dumps(fraud_spec(digest, rounds=6, gates={})).encode()
    assert_problem(srv.post("/api/v1/training-jobs", data=other, headers=h), 422,
                   "Idempotency-Key")
    # a refused request does not use up its key
    h2 = {"Idempotency-Key": "job-2"}
    assert_problem(srv.post("/api/v1/training-jobs", json=fraud_spec(digest, rounds=0),
                            headers=h2), 400, "rounds")
    assert srv.post("/api/v1/training-jobs", json=fraud_spec(digest, rounds=5, gates={}),
                    headers=h2).status_code == 201
    items = srv.get("/api/v1/training-jobs").json()["items"]
    assert len(items) == 2
    srv.wait_job(a.json()["id"])
    for i in items:
        srv.wait_job(i["id"])


def test_job_list_pagination(trainer, fraud_csv):
    srv = trainer()
    digest = srv.upload(read(fraud_csv["0"]))["digest"]
    ids = [srv.submit(fraud_spec(digest, rounds=2, gates={}))["id"] for _ in range(5)]
    seen, cursor = [], None
    while True:
        q = "/api/v1/training-jobs?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = srv.get(q).json()
        seen += [i["id"] for i in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == ids[::-1]
    for jid in ids:
        assert srv.wait_job(jid)["status"] == "succeeded"
    # the registry got five versions in order
    vs = srv.reg_get("/api/v1/models/fraud/versions").json()["items"]
    assert sorted(v["version"] for v in vs) == [1, 2, 3, 4, 5]


def test_same_spec_gives_the_same_model(trainer, fraud_csv):
    srv = trainer()
    digest = srv.upload(read(fraud_csv["0"]))["digest"]
    spec = fraud_spec(digest, rounds=30, gates={},
                      params={"max_depth": 5, "eta": 0.2, "subsample": 0.8,
                              "colsample_bytree": 0.7})
    a, b = srv.submit(spec), srv.submit(spec)
    ja, jb = srv.wait_job(a["id"]), srv.wait_job(b["id"])
    assert ja["status"] == jb["status"] == "succeeded"
    assert ja["model_digest"] == jb["model_digest"]
    # another seed, another model
    c = srv.wait_job(srv.submit(dict(spec, split={"validation": 0.2, "seed": 43}))["id"])
    assert c["model_digest"] != ja["model_digest"]


# ---- the linear backend against scikit-learn ----


M64 = (1 << 64) - 1


def loom_split(n, v, seed):
    """The trainer's split (docs/trainer.md): validation row indices."""
    def splitmix(x):
        x = (x + 0x9e3779b97f4a7c15) & M64
        z = x
        z = ((z ^ (z >> 30)) * 0xbf58476d1ce4e5b9) & M64
        z = ((z ^ (z >> 27)) * 0x94d049bb133111eb) & M64
        return x, z ^ (z >> 31)
    s, x = [], seed
    for _ in range(4):
        x, z = splitmix(x)
        s.append(z)

    def rotl(a, k):
        return ((a << k) | (a >> (64 - k))) & M64

    def nxt():
        out = (rotl((s[1] * 5) & M64, 7) * 9) & M64
        t = (s[1] << 17) & M64
        s[2] ^= s[0]
        s[3] ^= s[1]
        s[1] ^= s[2]
        s[0] ^= s[3]
        s[2] ^= t
        s[3] = rotl(s[3], 45)
        return out
    perm = list(range(n))
    for i in range(n - 1, 0, -1):
        j = nxt() % (i + 1)
        perm[i], perm[j] = perm[j], perm[i]
    nva = min(max(int(math.floor(n * v + 0.5)), 1), n - 1)
    return np.array(sorted(perm[:nva]))


def linear_job(srv, X, y, objective, lam, names=("a", "b", "c", "d")):
    lines = [",".join(names) + ",y"]
    for row, t in zip(X, y):
        lines.append(",".join(repr(float(v)) for v in row) + f",{t!r}")
    digest = srv.upload(("\n".join(lines) + "\n").encode())["digest"]
    spec = {"model": "lin", "dataset": digest, "label": "y", "backend": "linear",
            "objective": objective, "params": {"lambda": lam, "tol": 1e-12}, "rounds": 100,
            "split": {"validation": 0.25, "seed": 7}}
    job = srv.wait_job(srv.submit(spec)["id"])
    assert job["status"] == "succeeded", job
    v = job["registry"]["version"]
    model = srv.reg_get(f"/api/v1/models/lin/versions/{v}/artifact").json()
    assert model["loom_model"] == "linear" and model["objective"] == objective
    assert model["feature_names"] == list(names)
    val = loom_split(len(y), 0.25, 7)
    train = np.setdiff1d(np.arange(len(y)), val)
    return job, np.array(model["weights"]), model["bias"], train, val


def test_linear_backend_matches_sklearn(trainer):
    from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge
    srv = trainer()
    rng = np.random.default_rng(3)
    n = 1200
    X = rng.normal(size=(n, 4)) * np.array([1.0, 10.0, 0.1, 3.0]) + np.array([0, 5, 1, -2])
    w = np.array([0.8, -0.15, 6.0, 0.3])
    margin = (X - X.mean(0)) @ w - 0.5
    y = (rng.random(n) < 1 / (1 + np.exp(-margin))).astype(int)
    X = X.astype(np.float32).astype(np.float64)  # the trainer reads float32: same data

    # logistic regression, unpenalised: the same maximum-likelihood fit
    job, wl, bl, train, val = linear_job(srv, X, y, "binary:logistic", 0)
    sk = LogisticRegression(penalty=None, solver="newton-cholesky", tol=1e-12,
                            max_iter=1000).fit(X[train], y[train])
    np.testing.assert_allclose(wl, sk.coef_[0], rtol=1e-5, atol=1e-7)
    assert abs(bl - sk.intercept_[0]) < 1e-6
    p = 1 / (1 + np.exp(-(X[val] @ wl + bl)))
    np.testing.assert_allclose(p, sk.predict_proba(X[val])[:, 1], atol=1e-7)
    rep = job["report"]
    assert rep["metrics"]["rows"] == len(val)
    from sklearn.metrics import roc_auc_score
    assert abs(rep["metrics"]["auc"] - roc_auc_score(y[val], p)) < 1e-3

    # with an L2 penalty on standardised features: C = 1 / (lambda n_train)
    lam = 0.01
    job, wl, bl, train, val = linear_job(srv, X, y, "binary:logistic", lam)
    mu, sd = X[train].mean(0), X[train].std(0)
    Z = (X[train] - mu) / sd
    sk = LogisticRegression(C=1 / (lam * len(train)), solver="newton-cholesky", tol=1e-12,
                            max_iter=1000).fit(Z, y[train])
    p_sk = sk.predict_proba((X[val] - mu) / sd)[:, 1]
    p = 1 / (1 + np.exp(-(X[val] @ wl + bl)))
    np.testing.assert_allclose(p, p_sk, atol=1e-7)

    # linear regression (closed form), and ridge
    yr = X @ np.array([2.0, -0.5, 30.0, 1.5]) + 4 + rng.normal(size=n)
    yr = yr.astype(np.float32).astype(np.float64)
    job, wl, bl, train, val = linear_job(srv, X, yr, "reg:squarederror", 0)
    sk = LinearRegression().fit(X[train], yr[train])
    np.testing.assert_allclose(wl, sk.coef_, rtol=1e-6, atol=1e-8)
    assert abs(bl - sk.intercept_) < 1e-6
    assert abs(job["report"]["metrics"]["rmse"] -
               np.sqrt(np.mean((X[val] @ sk.coef_ + sk.intercept_ - yr[val]) ** 2))) < 1e-4
    lam = 0.1
    job, wl, bl, train, val = linear_job(srv, X, yr, "reg:squarederror", lam)
    mu, sd = X[train].mean(0), X[train].std(0)
    sk = Ridge(alpha=lam * len(train), tol=1e-12).fit((X[train] - mu) / sd, yr[train])
    np.testing.assert_allclose(X[val] @ wl + bl, sk.predict((X[val] - mu) / sd), rtol=1e-6,
                               atol=1e-5)
