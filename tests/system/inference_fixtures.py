# SPDX-License-Identifier: Apache-2.0
"""Fixtures and helpers for the inference system tests (`loom serve inference`).

`InferenceLoom` is conftest's `Loom` for the inference service: it starts
`loom serve inference --inference.listen=127.0.0.1:0 --inference.model-repository=DIR ...`,
learns the port from the {"msg":"listening","svc":"inference"} log line, waits for /readyz (which
answers 200 once the repository has loaded) and, like the echo fixture, on teardown sends
SIGTERM and requires exit code 0 within 15 s and JSON-only stderr.

Fixtures (import them into a test module with `from inference_fixtures import *`):
  inference_server   function-scoped factory: inference_server(repo, *flags) -> InferenceLoom
  module_servers     the same factory, module-scoped (one server shared by a module's tests)
  reference_models   session-scoped: tests/models/train.py's repository (cancer, iris,
                     diabetes) and their rows.json, trained once per session
  xgb                the xgboost module (skips when Debian's python3-xgboost is missing)

Repository helpers write models atomically (into a temporary name, then rename), so that a
polling server never sees half a file.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import pytest

from conftest import REPO, STOP_TIMEOUT, Loom, loom_cmd
from kserve_client import InferenceServerClient

SANITIZED = os.environ.get("LOOM_SANITIZED") == "1"
SLOW = 4.0 if SANITIZED else 1.0  # timing bounds are multiplied by this
READY_TIMEOUT = 20.0 * SLOW  # the repository loads before /readyz answers 200
SYSTEM_PYTHON = "/usr/bin/python3"
TRAIN_PY = os.path.join(REPO, "tests", "models", "train.py")

__all__ = ["inference_server", "module_servers", "reference_models", "xgb", "InferenceLoom",
           "write_model", "write_config", "linear_model", "copy_reference", "wait_until",
           "SLOW", "SANITIZED", "promtool_check", "infer_json", "rows_json"]


class InferenceLoom(Loom):
    """One running `loom serve inference` process."""

    def __init__(self, repo, args, data_dir, env=None):
        super().__init__(args, data_dir, env=env)
        self.args = list(args)  # Loom puts "echo" in front; this is the inference service
        self.repo = str(repo) if repo is not None else None
        self.clients = []

    def start(self, wait_ready=True):
        extra = [f"--data-dir={self.data_dir}", "--inference.listen=127.0.0.1:0"]
        if self.repo is not None:
            extra.append(f"--inference.model-repository={self.repo}")
        cmd = loom_cmd("serve", "inference", *self.args, *extra)
        self.t_exec = time.monotonic()
        self.proc = subprocess.Popen(cmd, env=self.env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        threading.Thread(target=self._pump, args=(self.proc.stderr, self.lines),
                         daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stdout, self.stdout),
                         daemon=True).start()
        line = self.wait_log(lambda o: o.get("msg") == "listening" and
                             o.get("svc") == "inference", timeout=READY_TIMEOUT)
        if line is None:
            self._fail_start("no \"listening\" log line from the inference service")
        self.port = int(line["port"])
        self.host = "127.0.0.1"
        self.base = f"http://127.0.0.1:{self.port}"
        if wait_ready:
            deadline = self.t_exec + READY_TIMEOUT
            while True:
                if self.proc.poll() is not None:
                    self._fail_start(f"exited with {self.proc.returncode}")
                if self._readyz_ok():
                    self.t_ready = time.monotonic()
                    break
                if time.monotonic() > deadline:
                    self._fail_start("/readyz did not answer 200")
                time.sleep(0.01)
        return self

    def client(self, timeout=30.0):
        c = InferenceServerClient(self.base, timeout=timeout)
        self.clients.append(c)
        return c

    def close_clients(self):
        for c in self.clients:
            c.close()
        self.clients.clear()

    def quiesce(self, timeout=2.0):
        self.close_clients()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if (self.metric("loom_inference_http_connections") or 0) <= 1:
                    time.sleep(0.01)
                    return True
            except (OSError, AssertionError, EOFError):
                return False
            time.sleep(0.02)
        return False

    def stop(self, timeout=STOP_TIMEOUT, quiesce=True):
        self.close_clients()
        return super().stop(timeout=timeout, quiesce=quiesce)

    def logs_matching(self, **kv):
        return [o for o in self.json_logs() if all(o.get(k) == v for k, v in kv.items())]


class _Factory:
    def __init__(self, base):
        self.base = str(base)
        self.started = []

    def __call__(self, repo, *args, env=None, wait_ready=True):
        d = os.path.join(self.base, f"data{len(self.started)}")
        srv = InferenceLoom(repo, args, d, env=env)
        self.started.append(srv)
        return srv.start(wait_ready=wait_ready)

    def teardown(self):
        failures = []
        for srv in self.started:
            if srv.proc is None:
                continue
            srv.close_clients()
            if not srv.stopped and srv.proc.poll() is None:
                srv.stop()
            elif not srv.stopped:
                srv.wait_exit()
                srv.check_logs()
                failures.append(f"loom exited on its own with {srv.returncode}; stderr:\n"
                                + srv.stderr_text())
            else:
                srv.check_logs()
        if failures:
            pytest.fail("\n".join(failures), pytrace=False)


@pytest.fixture
def inference_server(tmp_path):
    """Factory: inference_server(repo, *flags, env=None, wait_ready=True) -> InferenceLoom."""
    f = _Factory(tmp_path)
    yield f
    f.teardown()


@pytest.fixture(scope="module")
def module_servers(tmp_path_factory):
    f = _Factory(tmp_path_factory.mktemp("inference"))
    yield f
    f.teardown()


@pytest.fixture(scope="session")
def xgb():
    try:
        import xgboost
    except ImportError:
        pytest.skip("python3-xgboost is not installed (run the suite with /usr/bin/python3)")
    return xgboost


@pytest.fixture(scope="session")
def reference_models(tmp_path_factory):
    """tests/models/train.py's output directory: cancer, iris, diabetes and NAME.rows.json."""
    out = tmp_path_factory.mktemp("reference")
    py = sys.executable
    try:
        import xgboost  # noqa: F401
    except ImportError:  # train with Debian's python3
        py = SYSTEM_PYTHON
    r = subprocess.run([py, TRAIN_PY, str(out)], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=300)
    if r.returncode != 0:
        pytest.skip(f"train.py failed ({r.returncode}): {r.stderr[-2000:]}")
    return out


# ---- repository helpers ----


def _atomic_write(path, data):
    if isinstance(data, (dict, list)):
        data = json.dumps(data)
    if isinstance(data, str):
        data = data.encode()
    d = os.path.dirname(path)
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.rename(tmp, path)


def write_config(repo, name, config):
    """DIR/name/config.json (atomically); config None removes it."""
    path = os.path.join(str(repo), name, "config.json")
    if config is None:
        if os.path.exists(path):
            os.unlink(path)
        return
    _atomic_write(path, config)


def write_model(repo, name, config=None, versions=None, filename="model.json"):
    """Write DIR/name/config.json (if config is given) and DIR/name/<v>/<filename> for each
    {v: content} in versions (dict/list -> JSON, str/bytes as is). A new version directory
    appears atomically (built under a hidden name, then renamed)."""
    repo = str(repo)
    mdir = os.path.join(repo, name)
    os.makedirs(mdir, exist_ok=True)
    if config is not None:
        write_config(repo, name, config)
    for v, content in (versions or {}).items():
        vdir = os.path.join(mdir, str(v))
        if os.path.isdir(vdir):
            _atomic_write(os.path.join(vdir, filename), content)
            continue
        tmp = tempfile.mkdtemp(dir=mdir, prefix=".v")
        _atomic_write(os.path.join(tmp, filename), content)
        os.rename(tmp, vdir)
    return mdir


def linear_model(weights, bias, objective="reg:squarederror"):
    """A model in loom's linear format (docs/models.md, lib/model_linear.c)."""
    w = np.asarray(weights, dtype=np.float64)
    nfeat = w.shape[-1]
    return {"loom_model": "linear", "version": 1, "objective": objective,
            "num_features": int(nfeat), "weights": w.tolist(),
            "bias": bias.tolist() if isinstance(bias, np.ndarray) else bias}


def copy_reference(reference, repo, name, as_name=None, config=None, version=1):
    """Copy a train.py model into repo (optionally renamed and with another config)."""
    src = os.path.join(str(reference), name)
    dst_name = as_name or name
    with open(os.path.join(src, "1", "model.json"), "rb") as f:
        model = f.read()
    if config is None:
        with open(os.path.join(src, "config.json")) as f:
            config = json.load(f)
        config["name"] = dst_name
    write_model(repo, dst_name, config, {version: model})
    return model


def rows_json(reference, name):
    with open(os.path.join(str(reference), name + ".rows.json")) as f:
        d = json.load(f)
    return (np.array(d["inputs"], dtype=np.float32), np.array(d["expected"], dtype=np.float32))


def infer_json(name, x, datatype="FP32", **extra):
    """A minimal JSON inference request body (dict) for input__0."""
    x = np.asarray(x)
    req = {"inputs": [{"name": "input__0", "shape": list(x.shape), "datatype": datatype,
                       "data": x.reshape(-1).tolist()}]}
    req.update(extra)
    return req


def wait_until(pred, timeout, interval=0.02, what="condition"):
    """Poll pred() until it returns a truthy value (returned) or fail after timeout*SLOW s."""
    deadline = time.monotonic() + timeout * SLOW
    last = None
    while True:
        try:
            last = pred()
        except Exception as e:  # noqa: BLE001 - keep polling through transient errors
            last = e
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout * SLOW:.1f} s waiting for {what} "
                        f"(last: {last!r})", pytrace=False)
        time.sleep(interval)


def promtool_check(text):
    """(ok, output) of `promtool check metrics`, or None when promtool is not installed."""
    exe = shutil.which("promtool")
    if not exe:
        return None
    r = subprocess.run([exe, "check", "metrics"], input=text, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=30)
    return r.returncode == 0, r.stdout
