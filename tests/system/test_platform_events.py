# SPDX-License-Identifier: Apache-2.0
"""The platform wired through the event bus, on both backends (the embedded SQLite bus, and NATS
JetStream from a real `nats-server -js` on a loopback port), with every service in a process of
its own sharing one `--bus`:

- the registry publishes its log through the transactional outbox: every change is a CloudEvent
  1.0 (specversion, id, source /loom/registry, type loom.model.*, time, subject = the model,
  datacontenttype, traceparent of the request that made it, data), read here with
  `loom events tail` as a consumer group of our own;
- inference follows `fraud@production` with polling set to an hour, so an alias move can only
  reach it as an event: it must serve the new version within seconds;
- the trainer consumes loom.training.requested: the job's id derives from the event's id, a
  replay of the log (`loom events reset`) makes no second job, and a spec that can never run
  is parked in the group's dead letter with the reason (`loom events parked`), not retried
  forever.
"""

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid

import pytest
import requests

from conftest import LOOM_BIN, SANITIZED, free_port

SLOW = 4.0 if SANITIZED else 1.0
NATS_SERVER = shutil.which("nats-server") or next(
    (p for p in ("/usr/sbin/nats-server", "/usr/bin/nats-server") if os.access(p, os.X_OK)), None)
TYPES = {"loom.model.created", "loom.model.updated", "loom.model.deleted",
         "loom.model.version.created", "loom.model.version.updated", "loom.model.alias.changed",
         "loom.model.alias.deleted"}
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")
TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")


class Proc:
    """A `loom serve ...` (or nats-server) child with its output in a file."""

    def __init__(self, tmp, name, argv):
        self.name, self.argv = name, argv
        self.log_path = os.path.join(tmp, f"{name}.log")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT)

    def text(self):
        with open(self.log_path) as f:
            return f.read()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=30 * SLOW)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self.log.close()
        return rc


def wait_until(pred, timeout, what):
    deadline = time.monotonic() + timeout * SLOW
    while True:
        v = pred()
        if v:
            return v
        assert time.monotonic() < deadline, f"{what}: not within {timeout * SLOW} s"
        time.sleep(0.05)


def ready(url):
    try:
        return requests.get(url + "/readyz", timeout=1).status_code == 200
    except requests.RequestException:
        return False


class Platform:
    def __init__(self, tmp, bus):
        self.tmp, self.bus, self.procs = tmp, bus, []
        self.env = dict(os.environ, LOOM_BUS=bus)

    def serve(self, name, services, *flags):
        ports = {svc: free_port() for svc in services}
        argv = [LOOM_BIN, "serve", *services, f"--data-dir={self.tmp}/{name}",
                f"--bus={self.bus}", *[f"--{s}.listen=127.0.0.1:{p}" for s, p in ports.items()],
                *flags]
        p = Proc(self.tmp, name, argv)
        self.procs.append(p)
        urls = {svc: f"http://127.0.0.1:{port}" for svc, port in ports.items()}
        for u in urls.values():
            wait_until(lambda: ready(u) or p.proc.poll() is not None, 20, f"{name} ready")
            assert p.proc.poll() is None, p.text()[-3000:]
        return p, urls

    def cli(self, *args, check=True, env=None, timeout=60):
        r = subprocess.run([LOOM_BIN, *args], env=dict(self.env, **(env or {})),
                           capture_output=True, text=True, timeout=timeout * SLOW)
        if check:
            assert r.returncode == 0, f"loom {' '.join(args)}: {r.returncode}\n{r.stdout}\n{r.stderr}"
        return r

    def tail(self, group, count, filter=None, timeout=20):
        args = ["events", "tail", group, "--count", str(count), "--timeout", str(timeout)]
        if filter:
            args += ["--filter", filter]
        r = self.cli(*args, check=False, timeout=timeout + 30)
        events = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
        assert r.returncode == 0, f"tail {group}: {len(events)} of {count}: {r.stderr}"
        return events


@pytest.fixture(params=["sqlite", "nats"])
def platform(request, tmp_path):
    tmp = str(tmp_path)
    nats = None
    if request.param == "nats":
        if not NATS_SERVER:
            pytest.skip("nats-server is not installed (scripts/deps.sh test)")
        port = free_port()
        os.makedirs(f"{tmp}/nats")
        nats = Proc(tmp, "nats-server", [NATS_SERVER, "-js", "-a", "127.0.0.1", "-p", str(port),
                                         "-sd", f"{tmp}/nats"])

        def listening():
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return True
            except OSError:
                return False
        wait_until(listening, 10, "nats-server")
        bus = f"nats://127.0.0.1:{port}"
    else:
        bus = f"sqlite:{tmp}/bus.db"
    p = Platform(tmp, bus)
    yield p
    bad = [(x.name, rc, x.text()[-2000:]) for x in reversed(p.procs) if (rc := x.stop()) != 0]
    if nats:
        nats.stop()
    assert not bad, bad


def linear_model(path, bias):
    m = {"loom_model": "linear", "version": 1, "objective": "binary:logistic",
         "num_features": 3, "weights": [0.5, -0.25, 1.0], "bias": bias,
         "feature_names": ["f0", "f1", "f2"]}
    with open(path, "w") as f:
        json.dump(m, f)
    return path


def infer(url, row):
    meta = requests.get(f"{url}/v2/models/fraud", timeout=5)
    if meta.status_code != 200:
        return None
    inp = meta.json()["inputs"][0]
    body = {"inputs": [{"name": inp["name"], "shape": [1, len(row)], "datatype": "FP32",
                        "data": row}]}
    r = requests.post(f"{url}/v2/models/fraud/infer", json=body, timeout=5)
    return r.json()["outputs"][0]["data"][0] if r.status_code == 200 else None


def sigmoid_out(bias, row):
    import math
    z = bias + 0.5 * row[0] - 0.25 * row[1] + 1.0 * row[2]
    return 1 / (1 + math.exp(-z))


def test_alias_moves_reach_inference_as_events(platform):
    reg, r_urls = platform.serve("registry", ["registry"])
    inf, i_urls = platform.serve("inference", ["inference"],
                                 f"--inference.registry={r_urls['registry']}",
                                 "--inference.models=fraud@production",
                                 "--inference.registry-poll=1h")
    env = {"LOOM_REGISTRY": r_urls["registry"]}
    # Our own group, created before anything happens: it must see every change, in order.
    platform.cli("events", "tail", "audit", "--filter", "loom.model.>", "--new", "--timeout", "1",
                 check=False)
    tmp = platform.tmp
    for v, bias in ((1, -1.0), (2, 1.5)):
        platform.cli("models", "push", linear_model(f"{tmp}/m{v}.json", bias), "--name", "fraud",
                     env=env)
    # An alias set with a traceparent: the event carries the same trace.
    trace = uuid.uuid4().hex
    r = requests.put(f"{r_urls['registry']}/api/v1/models/fraud/aliases/production",
                     json={"version": 1}, timeout=5,
                     headers={"traceparent": f"00-{trace}-{'ab' * 8}-01"})
    assert r.status_code in (200, 201), r.text
    row = [0.3, 1.2, -0.4]
    url = i_urls["inference"]
    got = wait_until(lambda: infer(url, row), 10, "fraud@production (v1) served")
    assert abs(got - sigmoid_out(-1.0, row)) < 1e-6

    t0 = time.monotonic()
    platform.cli("models", "alias", "set", "fraud@production", "2", env=env)
    wait_until(lambda: abs((infer(url, row) or 0) - sigmoid_out(1.5, row)) < 1e-6, 5,
               "the alias move reached inference (polling is 1 h: only the event can bring it)")
    moved = time.monotonic() - t0
    print(f"alias move -> inference serving v2: {moved * 1000:.0f} ms ({platform.bus})")
    group = wait_until(lambda: re.search(r"^inference-\S+.*$", platform.cli(
        "events", "groups").stdout, re.M), 5, "inference's group listed")
    assert group

    # The audit trail as events: created, 2 versions, alias set, alias moved.
    evs = platform.tail("audit", 5, filter="loom.model.>")
    assert [e["type"] for e in evs] == [
        "loom.model.created", "loom.model.version.created", "loom.model.version.created",
        "loom.model.alias.changed", "loom.model.alias.changed"], evs
    assert len({e["id"] for e in evs}) == 5
    for e in evs:
        assert e["specversion"] == "1.0" and e["source"] == "/loom/registry", e
        assert e["type"] in TYPES and e["subject"] == "fraud", e
        assert RFC3339.match(e["time"]) and e["datacontenttype"] == "application/json", e
        assert e["data"]["model"] == "fraud", e
        assert "traceparent" not in e or TRACEPARENT.match(e["traceparent"]), e
    assert [e["data"]["version"] for e in evs[1:3]] == [1, 2], evs
    assert evs[3]["data"]["alias"] == "production" and evs[3]["data"]["version"] == 1, evs[3]
    assert evs[4]["data"]["version"] == 2, evs[4]
    assert TRACEPARENT.match(evs[3]["traceparent"]).group(1) == trace, evs[3]
    # The registry's own events endpoint holds the same ids: the outbox copies the log.
    log = requests.get(f"{r_urls['registry']}/api/v1/models/fraud/events", timeout=5).json()
    items = log.get("items", log.get("events", []))
    assert {e["id"] for e in evs} <= {x["id"] for x in items}, (evs, items)

    m = requests.get(f"{r_urls['registry']}/metrics", timeout=5).text
    pub = re.search(r"^loom_registry_outbox_published_total(?:\{[^}]*\})? (\d+)", m, re.M)
    assert pub and int(pub.group(1)) >= 5, m[-2000:]
    # Deleting the alias is an event too, and inference stops serving nothing it had: it keeps
    # the last version it loaded until the ref resolves again (documented in docs/inference.md).


def derived_job_id(event_id):
    d = bytearray(hashlib.sha256(b"loom.training.requested\0" + event_id.encode()).digest())
    d[6] = 0x80 | (d[6] & 0x0F)
    d[8] = 0x80 | (d[8] & 0x3F)
    return str(uuid.UUID(bytes=bytes(d[:16])))


def test_trainer_consumes_training_requests(platform):
    tmp = platform.tmp
    # One process with both: the trainer pushes to the registry of the same process.
    ports = {"registry": free_port(), "trainer": free_port()}
    argv = [LOOM_BIN, "serve", "registry", "trainer", f"--data-dir={tmp}/platform",
            f"--bus={platform.bus}", f"--trainer.registry=http://127.0.0.1:{ports['registry']}",
            *[f"--{s}.listen=127.0.0.1:{p}" for s, p in ports.items()]]
    p = Proc(tmp, "platform", argv)
    platform.procs.append(p)
    base = f"http://127.0.0.1:{ports['trainer']}"
    wait_until(lambda: ready(base) or p.proc.poll() is not None, 20, "trainer ready")
    assert p.proc.poll() is None, p.text()

    platform.cli("demo", "data", "fraud", "--rows", "3000", "--seed", "3", "--out",
                 f"{tmp}/fraud.csv")
    with open(f"{tmp}/fraud.csv", "rb") as f:
        r = requests.post(f"{base}/api/v1/datasets", data=f.read(), timeout=30)
    assert r.status_code in (200, 201), r.text
    digest = r.json()["digest"]
    spec = {"model": "fraud-ev", "dataset": digest, "label": "is_fraud", "backend": "xgboost",
            "objective": "binary:logistic", "params": {"max_depth": 3}, "rounds": 5,
            "split": {"validation": 0.2, "seed": 1}, "gates": {}}
    with open(f"{tmp}/spec.json", "w") as f:
        json.dump(spec, f)

    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    out = platform.cli("events", "publish", "loom.training.requested", f"@{tmp}/spec.json",
                       "--id", "req-1",
                       env={"TRACEPARENT": f"00-{trace}-00f067aa0ba902b7-01"}).stdout.strip()
    assert out == "req-1"
    # The CLI's event continues the caller's trace (a new span of it).
    ev = platform.tail("cli-trace", 1, filter="loom.training.requested")[0]
    m = TRACEPARENT.match(ev["traceparent"])
    assert ev["id"] == "req-1" and m.group(1) == trace and "00f067aa0ba902b7" not in ev["traceparent"]
    jid = derived_job_id("req-1")

    def job():
        r = requests.get(f"{base}/api/v1/training-jobs/{jid}?history=false", timeout=5)
        return r.json() if r.status_code == 200 else None
    j = wait_until(job, 20, f"job {jid} made from the event")
    j = wait_until(lambda: (x := job()) and x["status"] in ("succeeded", "rejected", "failed")
                   and x, 120, "the job finished")
    assert j["status"] == "succeeded", j
    assert j["spec"]["model"] == "fraud-ev", j

    # The same request published again (the bus drops the duplicate id), and the whole log
    # replayed to the group (the trainer sees req-1 again): still one job.
    platform.cli("events", "publish", "loom.training.requested", f"@{tmp}/spec.json", "--id",
                 "req-1")
    platform.cli("events", "reset", "trainer", "--seq", "1")

    def settled():
        for line in platform.cli("events", "groups").stdout.splitlines():
            f = line.split()
            if f and f[0] == "trainer":
                return int(f[4]) == 0 and f
        return None
    wait_until(settled, 20, "the trainer group caught up after the replay")
    jobs = requests.get(f"{base}/api/v1/training-jobs?limit=100", timeout=5).json()["items"]
    assert [x["id"] for x in jobs] == [jid], jobs

    # Requests that can never run: parked with the reason, after one attempt, not retried.
    bad = [("req-bad-1", {"model": "x", "label": "is_fraud"}, "dataset"),
           ("req-bad-2", dict(spec, dataset="sha256:" + "0" * 64), "dataset"),
           ("req-bad-3", dict(spec, params={"max_depth": -3}), "max_depth")]
    for eid, s, _ in bad:
        platform.cli("events", "publish", "loom.training.requested", json.dumps(s), "--id", eid)
    platform.cli("events", "publish", "loom.training.requested", "[1, 2]", "--id", "req-bad-4")
    r = platform.cli("events", "publish", "loom.training.requested", "{nope", check=False)
    assert r.returncode == 2 and "not JSON" in r.stderr, r.stderr
    r = platform.cli("events", "parked", "no-such-group", check=False)
    assert r.returncode == 1 and "no-such-group" in r.stderr, r.stderr

    def parked():
        lines = platform.cli("events", "parked", "trainer").stdout.splitlines()[1:]
        return len(lines) == 4 and lines
    lines = wait_until(parked, 20, "4 bad requests parked")
    for (eid, _, word), line in zip(bad, lines):
        assert eid in line and word in line, (eid, word, line)
    assert "req-bad-4" in lines[3], lines
    # Parked, not made into jobs, and the group is not stuck: a good request still runs.
    platform.cli("events", "publish", "loom.training.requested", f"@{tmp}/spec.json",
                 "--id", "req-2")
    jid2 = derived_job_id("req-2")
    wait_until(lambda: requests.get(f"{base}/api/v1/training-jobs/{jid2}",
                                    timeout=5).status_code == 200, 20, "req-2 became a job")
    jobs = requests.get(f"{base}/api/v1/training-jobs?limit=100", timeout=5).json()["items"]
    assert sorted(x["id"] for x in jobs) == sorted([jid, jid2]), jobs
    # Replaying the dead letter: the same verdict, parked again with the reason.
    r = platform.cli("events", "replay", "trainer")
    assert r.stdout.startswith("4 parked events delivered again"), r.stdout
    wait_until(parked, 20, "the replayed requests parked again")
    m = requests.get(f"{base}/metrics", timeout=5).text
    assert re.search(r'^loom_trainer_bus_settled_total\{[^}]*verdict="park"[^}]*\} ([4-9]|\d\d)',
                     m, re.M), [x for x in m.splitlines() if "bus_" in x]
