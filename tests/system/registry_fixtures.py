# SPDX-License-Identifier: Apache-2.0
"""Fixtures and helpers for the registry system tests (`loom serve registry`).

`RegistryLoom` is conftest's `Loom` for the registry: it starts `loom serve registry
--registry.listen=127.0.0.1:0 --data-dir=DIR [--registry.store=URL] ...`, learns the port from
the {"msg":"listening","svc":"registry"} log line and waits for /readyz; on teardown it sends
SIGTERM and requires exit code 0 and JSON-only stderr (unless the test killed it).

`Contract` (from openapi_contract.py, shared with the other suites) validates a response against
api/openapi.yaml: the operation is found from the method and the path, the response object from
the status code (an undocumented status fails), the media type from Content-Type, and the JSON
body is validated against the schema (Draft 2020-12, `$ref`s resolved in the document). `Api` is
a requests session whose every response goes through the contract, so every test checks the
contract as a side effect.

`Postgres` runs a real PostgreSQL 15 from Debian's package for the session: initdb and pg_ctl
as the postgres user (runuser), in a temporary directory, on a free loopback port with trust
authentication; each registry server gets a fresh database. It is stopped at the end of the
session, failures included.

Fixtures (import with `from registry_fixtures import *`):
  backend           "sqlite" or "postgres": parametrizes every test that uses it
  registry          factory: registry(*flags, store=None) -> RegistryLoom on a new store of the
                    test's backend (store="same:<srv>" reuses a server's store and data dir)
  contract          the Contract (session)
  models            session: small model files (XGBoost JSON, linear) made for uploads
"""

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

import pytest
import requests

from conftest import STOP_TIMEOUT, Loom, free_port, loom_cmd
from openapi_contract import Contract, load as load_contract

__all__ = ["RegistryLoom", "Contract", "Api", "Postgres", "backend", "registry", "contract",
           "postgres", "models", "linear_model", "assert_problem", "SANITIZED", "SLOW",
           "sha256_hex", "SYSTEM_PYTHON"]

SANITIZED = os.environ.get("LOOM_SANITIZED") == "1"
SLOW = 4.0 if SANITIZED else 1.0
READY_TIMEOUT = 15.0 * SLOW
PG_BIN = "/usr/lib/postgresql/15/bin"
SYSTEM_PYTHON = "/usr/bin/python3"


def sha256_hex(data):
    return hashlib.sha256(data).hexdigest()


# ---- the contract ----

# Contract (openapi_contract.py) checks a response against api/openapi.yaml; the document is
# read once per process (load()).

class Api:
    """A requests session bound to a server whose responses are checked against the contract."""

    def __init__(self, base, contract):
        self.base = base
        self.contract = contract
        self.s = requests.Session()

    def request(self, method, path, **kw):
        kw.setdefault("timeout", 30 * SLOW)
        r = self.s.request(method, self.base + path, **kw)
        return self.contract.check_response(r)

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, **kw):
        return self.request("POST", path, **kw)

    def put(self, path, **kw):
        return self.request("PUT", path, **kw)

    def patch(self, path, **kw):
        return self.request("PATCH", path, **kw)

    def delete(self, path, **kw):
        return self.request("DELETE", path, **kw)

    def close(self):
        self.s.close()


def assert_problem(r, status, *words):
    """r is an RFC 9457 problem with this status whose detail mentions every word."""
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers
    p = r.json()
    assert p["status"] == status and p["type"] and p["title"] and p["detail"], p
    assert "instance" not in p or p["instance"].startswith("/"), p
    for w in words:
        assert w.lower() in p["detail"].lower(), (w, p["detail"])
    return p


# ---- servers ----


class RegistryLoom(Loom):
    """One running `loom serve registry` process."""

    def __init__(self, args, data_dir, contract, store=None, env=None):
        super().__init__(args, data_dir, env=env)
        self.args = list(args)  # Loom puts "echo" in front; this is the registry
        self.store = store
        self.contract = contract
        self.apis = []

    def start(self):
        extra = [f"--data-dir={self.data_dir}", "--registry.listen=127.0.0.1:0"]
        if self.store:
            extra.append(f"--registry.store={self.store}")
        cmd = loom_cmd("serve", "registry", *self.args, *extra)
        self.t_exec = time.monotonic()
        self.lines.clear()
        self.proc = subprocess.Popen(cmd, env=self.env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.stopped = False
        threading.Thread(target=self._pump, args=(self.proc.stderr, self.lines),
                         daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stdout, self.stdout),
                         daemon=True).start()
        line = self.wait_log(lambda o: o.get("msg") == "listening" and
                             o.get("svc") == "registry", timeout=READY_TIMEOUT)
        if line is None:
            self._fail_start("no \"listening\" log line from the registry")
        self.port = int(line["port"])
        self.host = "127.0.0.1"
        self.base = f"http://127.0.0.1:{self.port}"
        deadline = self.t_exec + READY_TIMEOUT
        while not self._readyz_ok():
            if self.proc.poll() is not None:
                self._fail_start(f"exited with {self.proc.returncode}")
            if time.monotonic() > deadline:
                self._fail_start("/readyz did not answer 200")
            time.sleep(0.01)
        return self

    def api(self):
        a = Api(self.base, self.contract)
        self.apis.append(a)
        return a

    def close_apis(self):
        for a in self.apis:
            a.close()
        self.apis.clear()

    def quiesce(self, timeout=2.0):
        self.close_apis()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if (self.metric("loom_registry_http_connections") or 0) <= 1:
                    time.sleep(0.01)
                    return True
            except (OSError, AssertionError, EOFError):
                return False
            time.sleep(0.02)
        return False

    def stop(self, timeout=STOP_TIMEOUT, quiesce=True):
        self.close_apis()
        return super().stop(timeout=timeout, quiesce=quiesce)

    def kill9(self):
        self.close_apis()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.stopped = True
        self.returncode = self.proc.returncode

    def restart(self, *args):
        """Stop (if running) and start again on the same data dir and store."""
        if not self.stopped:
            self.stop()
        if args:
            self.args = list(args)
        return self.start()

    def artifact_file(self, digest):
        hexd = digest.split(":", 1)[1]
        return os.path.join(self.data_dir, "artifacts", "sha256", hexd[:2], hexd)


class Postgres:
    """A throwaway PostgreSQL 15 cluster on loopback."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="loom-pg-")
        shutil.chown(self.dir, "postgres", "postgres")
        os.chmod(self.dir, 0o700)
        self.data = os.path.join(self.dir, "data")
        self.port = free_port()
        self.n = 0
        self.started = False

    def _as_pg(self, *cmd, check=True, timeout=60):
        r = subprocess.run(["runuser", "-u", "postgres", "--", *cmd], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL, cwd=self.dir)
        if check and r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout}")
        return r

    def start(self):
        self._as_pg(f"{PG_BIN}/initdb", "-D", self.data, "-A", "trust", "-U", "postgres",
                    "-E", "UTF8", "--locale=C", "--no-sync")
        opts = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
                f"-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        self._as_pg(f"{PG_BIN}/pg_ctl", "-D", self.data, "-o", opts, "-l",
                    os.path.join(self.dir, "log"), "-w", "-t", "60", "start")
        self.started = True
        return self

    def new_database(self):
        self.n += 1
        name = f"registry_{self.n}"
        self._as_pg(f"{PG_BIN}/psql", "-h", "127.0.0.1", "-p", str(self.port), "-U",
                    "postgres", "-q", "-c", f"CREATE DATABASE {name}")
        return f"postgres://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self):
        if self.started:
            self._as_pg(f"{PG_BIN}/pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop",
                        check=False)
            self.started = False
        shutil.rmtree(self.dir, ignore_errors=True)


# ---- fixtures ----


@pytest.fixture(scope="session")
def contract():
    return load_contract()


@pytest.fixture(scope="session")
def postgres():
    if not os.path.exists(f"{PG_BIN}/initdb"):
        pytest.fail("PostgreSQL 15 is not installed (scripts/deps.sh test installs it)")
    pg = Postgres()
    try:
        pg.start()
        yield pg
    finally:
        pg.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request):
    return request.param


class _Factory:
    def __init__(self, base, contract, backend, request):
        self.base = str(base)
        self.contract = contract
        self.backend = backend
        self.request = request
        self.started = []

    def new_store(self):
        if self.backend == "postgres":
            return self.request.getfixturevalue("postgres").new_database()
        return None  # the default: sqlite:<data-dir>/registry.db

    def __call__(self, *args, store="new", env=None):
        d = os.path.join(self.base, f"data{len(self.started)}")
        if store == "new":
            store = self.new_store()
        srv = RegistryLoom(args, d, self.contract, store=store, env=env)
        self.started.append(srv)
        return srv.start()

    def teardown(self):
        failures = []
        for srv in self.started:
            if srv.proc is None:
                continue
            srv.close_apis()
            if not srv.stopped and srv.proc.poll() is None:
                srv.stop()
            elif not srv.stopped:
                srv.wait_exit()
                failures.append(f"loom exited on its own with {srv.returncode}; stderr:\n"
                                + srv.stderr_text())
            srv.check_logs()
        if failures:
            pytest.fail("\n".join(failures), pytrace=False)


@pytest.fixture
def registry(tmp_path, contract, backend, request):
    f = _Factory(tmp_path, contract, backend, request)
    yield f
    f.teardown()


def linear_model(bias=0.1, features=3, names=True):
    """A loom linear model (binary:logistic) as bytes; different biases give different bytes."""
    m = {"loom_model": "linear", "version": 1, "objective": "binary:logistic",
         "num_features": features, "weights": [0.5] * features, "bias": bias}
    if names:
        m["feature_names"] = [f"f{i}" for i in range(features)]
    return json.dumps(m).encode()


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    """{"xgb": bytes of an XGBoost JSON model (4 features, binary:logistic, 5 trees),
        "xgb_path": its file, "big": a ~0.7 MB XGBoost model, "linear": bytes}."""
    out = tmp_path_factory.mktemp("models")
    script = f"""
import numpy as np, xgboost as xgb
rng = np.random.default_rng(7)
X = rng.normal(size=(300, 4)).astype(np.float32)
y = (X[:, 0] + X[:, 1] > 0).astype(np.float32)
d = xgb.DMatrix(X, label=y, feature_names=["amount", "age", "hour", "score"])
b = xgb.train({{"objective": "binary:logistic", "max_depth": 3, "nthread": 1, "seed": 1}}, d, 5)
b.save_model("{out}/small.json")
Xb = rng.normal(size=(3000, 20)).astype(np.float32)
yb = rng.integers(0, 2, size=3000).astype(np.float32)  # noise: deep trees, a large file
b2 = xgb.train({{"objective": "binary:logistic", "max_depth": 8, "nthread": 1, "seed": 1}},
               xgb.DMatrix(Xb, label=yb), 120)
b2.save_model("{out}/big.json")
"""
    r = subprocess.run([SYSTEM_PYTHON, "-c", script], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=300)
    if r.returncode != 0:
        pytest.fail(f"training the test models failed (python3-xgboost?):\n{r.stdout}")
    with open(out / "small.json", "rb") as f:
        small = f.read()
    with open(out / "big.json", "rb") as f:
        big = f.read()
    return {"xgb": small, "xgb_path": str(out / "small.json"), "big": big,
            "big_path": str(out / "big.json"), "linear": linear_model()}
