# SPDX-License-Identifier: Apache-2.0
"""Black-box tests of the API gateway (`loom serve gateway`), the platform's public edge.

The platform runs as real processes on loopback: one `loom serve identity registry inference`
(every listener on port 0, learnt from the "listening" log lines; identity bootstraps an admin
client with a known secret; inference serves a two-version linear model), and one or more
`loom serve gateway` processes pointed at them. A small Python HTTP/1.1 server stands in for
the ingest upstream (/api/v1/streams): it echoes what it received (headers, body digest) and
can sleep, fail with a status, or answer a large body on request, which is how forwarding,
deadlines and retries are observed from the upstream's side. Tokens come from identity through
the gateway (client credentials, one token per scope). Redis, for limits shared by two gateway
replicas, is Debian's redis-server started here on a free port.

This module also holds the helpers the other gateway suites import (test_gateway_security.py,
test_gateway_failover.py): `Proc`, `Backends`, `Gateway`, `EchoUpstream`, `start_redis`.
"""

import hashlib
import http.server
import json
import os
import re
import shutil
import signal
import socket
import socketserver
import stat
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from conftest import LOOM_BIN, REPO, clean_env, free_port
from registry_fixtures import postgres  # noqa: F401 (a real PostgreSQL for the shared store)

SANITIZED = os.environ.get("LOOM_SANITIZED") == "1"
SLOW = 4.0 if SANITIZED else 1.0
READY = 20.0 * SLOW
ISSUER = "http://issuer.loom.test"
ADMIN_SECRET = "gateway-tests-admin-secret-0123456789"
SCOPES = ["models:read", "models:write", "infer", "train", "ingest", "admin"]
MODEL = "lin"


# ---- processes ----


class Proc:
    """One `loom serve ...` process: its log lines, the ports of its services."""

    def __init__(self, args, data_dir, services, env=None):
        self.args = list(args)
        self.data_dir = str(data_dir)
        self.services = list(services)
        self.env = clean_env()
        if env:
            self.env.update(env)
        self.lines = []
        self.cond = threading.Condition()
        self.ports = {}
        self.proc = None
        self.stopped = False

    def start(self):
        self.lines.clear()
        self.ports = {}
        cmd = [LOOM_BIN, "serve", *self.services, f"--data-dir={self.data_dir}", *self.args]
        self.proc = subprocess.Popen(cmd, env=self.env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.stopped = False
        threading.Thread(target=self._pump, daemon=True).start()
        deadline = time.monotonic() + READY
        for svc in self.services:
            o = self.wait_log(lambda o, s=svc: o.get("msg") == "listening" and o.get("svc") == s,
                              timeout=max(0.1, deadline - time.monotonic()))
            if o is None:
                self.fail(f"no listening line from {svc}")
            self.ports[svc] = int(o["port"])
        for svc in self.services:
            while not self.ready(svc):
                if self.proc.poll() is not None:
                    self.fail(f"exited with {self.proc.returncode}")
                if time.monotonic() > deadline:
                    self.fail(f"{svc} /readyz did not answer 200")
                time.sleep(0.02)
        return self

    def fail(self, why):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)
        time.sleep(0.05)
        pytest.fail(f"{self.services} did not start ({why}):\n" + self.text(), pytrace=False)

    def _pump(self):
        for raw in iter(self.proc.stderr.readline, b""):
            with self.cond:
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self.cond.notify_all()

    def text(self):
        with self.cond:
            return "\n".join(self.lines)

    def logs(self):
        with self.cond:
            lines = list(self.lines)
        out = []
        for l in lines:
            try:
                out.append(json.loads(l))
            except ValueError:
                pass
        return out

    def wait_log(self, pred, timeout=5.0, start=0):
        deadline = time.monotonic() + timeout
        seen = start
        with self.cond:
            while True:
                while seen < len(self.lines):
                    try:
                        o = json.loads(self.lines[seen])
                    except ValueError:
                        o = None
                    seen += 1
                    if isinstance(o, dict) and pred(o):
                        return o
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(min(left, 0.05))

    def url(self, svc, path=""):
        return f"http://127.0.0.1:{self.ports[svc]}{path}"

    def ready(self, svc):
        try:
            return requests.get(self.url(svc, "/readyz"), timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def metrics(self, svc):
        return requests.get(self.url(svc, "/metrics"), timeout=5).text

    def metric(self, svc, name_and_labels):
        for line in self.metrics(svc).splitlines():
            if line.startswith(name_and_labels + " "):
                return float(line.rsplit(" ", 1)[1])
        return None

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.stopped = True

    def stop(self):
        if self.stopped or self.proc is None:
            return
        self.stopped = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            pytest.fail(f"{self.services} did not exit after SIGTERM:\n" + self.text(),
                        pytrace=False)
        time.sleep(0.05)
        assert rc == 0, f"{self.services} exited with {rc}:\n{self.text()}"
        for l in self.lines:
            assert isinstance(json.loads(l), dict), l


def linear(weights, bias=0.0):
    return {"loom_model": "linear", "version": 1, "objective": "reg:squarederror",
            "num_features": len(weights), "weights": list(weights), "bias": bias}


def write_repo(root):
    """A model repository with MODEL at versions 1 (answers x0) and 2 (answers x1)."""
    mdir = os.path.join(str(root), MODEL)
    for v, w in ((1, [1.0, 0.0]), (2, [0.0, 1.0])):
        os.makedirs(os.path.join(mdir, str(v)), exist_ok=True)
        with open(os.path.join(mdir, str(v), "model.json"), "w") as f:
            json.dump(linear(w), f)
    with open(os.path.join(mdir, "config.json"), "w") as f:
        json.dump({"name": MODEL, "backend": "linear", "version_policy": {"all": {}}}, f)
    return str(root)


def infer_body(x0=1.0, x1=2.0):
    return {"inputs": [{"name": "input__0", "shape": [1, 2], "datatype": "FP32",
                        "data": [x0, x1]}]}


class Backends:
    """identity + registry + inference in one process."""

    def __init__(self, tmp, services=("identity", "registry", "inference"), extra=()):
        self.repo = write_repo(os.path.join(str(tmp), "repo"))
        args = [f"--identity.issuer={ISSUER}", f"--identity.bootstrap-secret={ADMIN_SECRET}",
                f"--inference.model-repository={self.repo}", *extra]
        args += [f"--{s}.listen=127.0.0.1:0" for s in services]
        self.proc = Proc(args, os.path.join(str(tmp), "backends"), services)

    def start(self):
        self.proc.start()
        return self

    def addr(self, svc):
        """The service's address, or a closed port if this process does not run it."""
        return f"127.0.0.1:{self.proc.ports.get(svc) or closed_port()}"

    def identity_db(self):
        return os.path.join(self.proc.data_dir, "identity.db")


class Gateway(Proc):
    def __init__(self, tmp, backends, *args, ingest=None, trainer=None, name="gw", env=None,
                 inference=None):
        self.backends = backends
        flags = [f"--gateway.issuer={ISSUER}", "--gateway.listen=127.0.0.1:0",
                 f"--gateway.identity={backends.addr('identity')}",
                 f"--gateway.registry={backends.addr('registry')}",
                 f"--gateway.inference={inference or backends.addr('inference')}",
                 f"--gateway.ingest={ingest or '127.0.0.1:' + str(closed_port())}",
                 f"--gateway.trainer={trainer or '127.0.0.1:' + str(closed_port())}",
                 *args]
        super().__init__(flags, os.path.join(str(tmp), name), ["gateway"], env=env)
        self.tokens = {}

    @property
    def base(self):
        return self.url("gateway")

    def token(self, scope=None, client=("admin", ADMIN_SECRET)):
        key = (scope, client[0])
        if key not in self.tokens:
            data = {"grant_type": "client_credentials"}
            if scope:
                data["scope"] = scope
            r = requests.post(self.base + "/oauth/token", data=data, auth=client, timeout=30)
            assert r.status_code == 200, r.text
            self.tokens[key] = r.json()["access_token"]
        return self.tokens[key]

    def auth(self, scope=None, **kw):
        return {"Authorization": "Bearer " + self.token(scope, **kw)}

    def req(self, method, path, scope="admin", headers=None, **kw):
        h = dict(self.auth(scope) if scope else {})
        h.update(headers or {})
        kw.setdefault("timeout", 30 * SLOW)
        return requests.request(method, self.base + path, headers=h, **kw)


def closed_port():
    """A loopback port nothing listens on."""
    return free_port()


# ---- the echo upstream ----


class EchoHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def _serve(self):
        srv = self.server
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        path, _, query = self.path.partition("?")
        q = dict(p.split("=", 1) for p in query.split("&") if "=" in p)
        with srv.lock:
            srv.requests.append({"method": self.command, "path": self.path,
                                 "headers": [(k, v) for k, v in self.headers.items()],
                                 "body_len": len(body)})
            rid = self.headers.get("X-Request-Id", "")
            srv.counts[rid] = srv.counts.get(rid, 0) + 1
            attempt = srv.counts[rid]
        if "sleep_ms" in q:
            time.sleep(int(q["sleep_ms"]) / 1000)
        status = 200
        if "fail" in q and attempt <= int(q.get("fail_times", "1")):
            status = int(q["fail"])
        if "big" in q:
            out = os.urandom(16) * (int(q["big"]) // 16)
            ctype = "application/octet-stream"
        else:
            out = json.dumps({"method": self.command, "path": self.path,
                              "headers": [[k, v] for k, v in self.headers.items()],
                              "body_sha256": hashlib.sha256(body).hexdigest(),
                              "body_len": len(body), "attempt": attempt}).encode()
            ctype = "application/json"
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(out)))
        self.send_header("X-Upstream", "echo")
        self.send_header("Connection", "X-Up-Hop")
        self.send_header("X-Up-Hop", "secret-hop")
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve


class EchoUpstream(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), EchoHandler)
        self.lock = threading.Lock()
        self.requests = []
        self.counts = {}
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def addr(self):
        return f"127.0.0.1:{self.server_address[1]}"

    def close(self):
        self.shutdown()
        self.server_close()


def start_redis(tmp):
    exe = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not os.path.exists(exe):
        pytest.skip("redis-server is not installed (scripts/deps.sh test)")
    port = free_port()
    p = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                          "--appendonly", "no", "--dir", str(tmp)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return p, port
        except OSError:
            time.sleep(0.02)
    p.kill()
    pytest.fail("redis-server did not start")


# ---- fixtures ----


@pytest.fixture(scope="module")
def backends(tmp_path_factory):
    b = Backends(tmp_path_factory.mktemp("backends")).start()
    yield b
    b.proc.stop()


@pytest.fixture(scope="module")
def echo():
    e = EchoUpstream()
    yield e
    e.close()


@pytest.fixture(scope="module")
def gw(tmp_path_factory, backends, echo):
    # the admin's limit (it has no quota: the gateway's default, 100/s:200) would throttle the
    # bursts here
    g = Gateway(tmp_path_factory.mktemp("gw"), backends,
                "--gateway.client-rate-limits=admin=100000/s:100000",
                ingest=echo.addr).start()
    yield g
    g.stop()


@pytest.fixture
def gateways(tmp_path, backends, echo):
    """Factory for gateways with their own flags (stopped at the end of the test)."""
    started = []

    def make(*args, **kw):
        kw.setdefault("ingest", echo.addr)
        g = Gateway(tmp_path, backends, *args, name=f"gw{len(started)}", **kw).start()
        started.append(g)
        return g

    yield make
    for g in started:
        g.stop()


def hdr(r, name):
    return r.headers.get(name)


def upstream_headers(r):
    return {k.lower(): v for k, v in r.json()["headers"]}


# ---- routing ----


def test_routes_reach_each_upstream(gw, backends):
    # identity: public token endpoint and JWKS, admin client list
    r = requests.get(gw.base + "/.well-known/jwks.json", timeout=10)
    assert r.status_code == 200 and r.json()["keys"], r.text
    assert gw.req("GET", "/api/v1/clients").status_code == 200
    # registry
    r = gw.req("GET", "/api/v1/models", scope="models:read")
    assert r.status_code == 200 and "items" in r.json(), r.text
    r = gw.req("POST", "/api/v1/models", scope="models:write", json={"name": "gwmodel"})
    assert r.status_code in (201, 409), r.text
    r = gw.req("GET", "/api/v1/models/gwmodel", scope="models:read")
    assert r.status_code == 200 and r.json()["name"] == "gwmodel"
    # inference
    r = gw.req("POST", f"/v2/models/{MODEL}/infer", scope="infer", json=infer_body(3, 4))
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["data"][0] in (3.0, 4.0)
    r = gw.req("GET", f"/v2/models/{MODEL}", scope="infer")
    assert r.status_code == 200 and r.json()["name"] == MODEL
    assert gw.req("GET", "/v2/health/ready", scope="infer").status_code == 200
    # ingest (the echo upstream)
    r = gw.req("GET", "/api/v1/streams/clicks?x=1", scope="ingest")
    assert r.status_code == 200 and r.json()["path"] == "/api/v1/streams/clicks?x=1"
    # trainer: not running -> 502 problem
    r = gw.req("GET", "/api/v1/training-jobs", scope="train")
    assert r.status_code == 502, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["status"] == 502 and r.json()["instance"] == "/api/v1/training-jobs"
    assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"])
    # the gateway's own
    for path in ("/livez", "/readyz", "/openapi.json"):
        assert requests.get(gw.base + path, timeout=10).status_code == 200, path
    assert "loom_gateway_http_requests_total" in gw.metrics("gateway")
    # unknown paths are not routed anywhere
    r = gw.req("GET", "/api/v1/nothing-here")
    assert r.status_code == 404
    r = gw.req("GET", "/internal/admin")
    assert r.status_code == 404
    r = gw.req("DELETE", "/api/v1/models")  # the path exists for other methods
    assert r.status_code == 405 and "GET" in r.headers["Allow"] and "POST" in r.headers["Allow"]


def test_head_carries_the_upstream_content_length(gw, backends):
    # RFC 9110 9.3.2: a HEAD answer has the Content-Length its GET would have, no body
    for path, scope, svc in (("/api/v1/models", "models:read", "registry"),
                             (f"/v2/models/{MODEL}", "infer", "inference")):
        get = gw.req("GET", path, scope=scope)
        direct = requests.head(backends.proc.url(svc, path), timeout=10,
                               headers={"Loom-Client-Id": "admin"})
        head = gw.req("HEAD", path, scope=scope)
        assert get.status_code == head.status_code == 200, (path, head.headers)
        assert head.content == b""
        assert int(head.headers["Content-Length"]) == len(get.content) > 0, (path, head.headers)
        assert head.headers["Content-Length"] == direct.headers["Content-Length"], path
        assert head.headers["Content-Type"] == get.headers["Content-Type"]
        assert "RateLimit" in head.headers and "X-Request-Id" in head.headers
    # the connection stays usable after a HEAD answer (no body is waited for)
    with requests.Session() as s:
        h = gw.auth("models:read")
        assert s.head(gw.base + "/api/v1/models", headers=h, timeout=10).status_code == 200
        assert s.get(gw.base + "/api/v1/models", headers=h, timeout=10).status_code == 200


def test_allow_agrees_and_refusals_keep_the_connection(gw):
    # OPTIONS and the 405 name the same methods: the routing table's
    for path in ("/api/v1/models", "/api/v1/flags/f1", "/api/v1/traffic/lin", "/oauth/token",
                 "/livez"):
        opt = requests.options(gw.base + path, timeout=10)
        bad = gw.req("PATCH" if path != "/api/v1/models" else "DELETE", path)
        assert opt.status_code == 204 and bad.status_code == 405, (path, opt, bad.text)
        assert opt.headers["Allow"] == bad.headers["Allow"], path
    assert requests.options(gw.base + "/api/v1/models", timeout=10).headers["Allow"] == \
        "GET, HEAD, POST, OPTIONS"
    assert requests.options(gw.base + "/nowhere", timeout=10).status_code == 404
    # a 404 or 405 to a request with a small body (or none) keeps the keep-alive connection
    import http.client
    host, port = gw.base[len("http://"):].split(":")
    c = http.client.HTTPConnection(host, int(port), timeout=10)
    h = {"Authorization": gw.auth("admin")["Authorization"], "Content-Type": "application/json"}
    for method, path, body in (("PATCH", "/api/v1/flags/f1", b'{"enabled":true}'),
                               ("PATCH", "/api/v1/flags/f1", None),
                               ("POST", "/api/v1/nowhere", b'{"x":1}'),
                               ("DELETE", "/api/v1/models", None)):
        c.request(method, path, body=body, headers=h)
        r = r0 = c.getresponse()
        r.read()
        assert r.status in (404, 405), (method, path, r.status)
        assert r.getheader("Connection") != "close", (method, path)
        sock = c.sock
        c.request("GET", "/livez")
        r = c.getresponse()
        r.read()
        assert r.status == 200 and c.sock is sock, (method, path, r0.status)
    c.close()


def test_inference_over_a_unix_socket(tmp_path, backends, gateways):
    # An inference replica on the same host, reached over a unix socket: the same answers as over
    # TCP; the socket file goes when the replica stops, and the gateway then answers 5xx.
    path = os.path.join(str(tmp_path), "inference.sock")
    proc = subprocess.Popen([LOOM_BIN, "serve", "inference", f"--inference.listen=unix:{path}",
                             f"--inference.model-repository={backends.repo}",
                             f"--data-dir={tmp_path}/unix-inference"],
                            env=clean_env(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        g = gateways(inference=f"unix:{path}")
        want = requests.post(f"http://{backends.addr('inference')}/v2/models/{MODEL}/infer",
                             json=infer_body(3.0, 4.0), timeout=10).json()
        deadline = time.monotonic() + READY
        while True:
            r = g.req("POST", f"/v2/models/{MODEL}/infer", scope="infer", json=infer_body(3.0, 4.0))
            if r.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert r.status_code == 200, r.text
        assert r.json()["outputs"] == want["outputs"]
        assert stat.S_ISSOCK(os.stat(path).st_mode)
    finally:
        proc.terminate()
        assert proc.wait(10 * SLOW) == 0
    assert not os.path.exists(path)
    r = g.req("POST", f"/v2/models/{MODEL}/infer", scope="infer", json=infer_body())
    assert r.status_code in (502, 503), r.text


def test_forwarded_headers(gw, echo):
    tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    h = {"X-Request-Id": "req-abc-123", "traceparent": tp, "X-Forwarded-For": "203.0.113.9",
         "Connection": "keep-alive, X-Hop-Secret", "X-Hop-Secret": "do-not-forward",
         "Keep-Alive": "timeout=5", "TE": "trailers", "Proxy-Authorization": "Basic eA==",
         "Loom-Client-Id": "spoofed", "X-Custom": "kept", "Via": "1.0 client-proxy"}
    r = gw.req("GET", "/api/v1/streams/h", scope="ingest", headers=h)
    assert r.status_code == 200, r.text
    up = upstream_headers(r)
    assert up["x-request-id"] == "req-abc-123"
    assert r.headers["X-Request-Id"] == "req-abc-123"
    assert up["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"
    assert up["x-forwarded-proto"] == "http"
    assert up["x-forwarded-host"].startswith("127.0.0.1:")
    assert up["via"] == "1.0 client-proxy, 1.1 loom-gateway"
    assert up["x-custom"] == "kept"
    assert up["loom-client-id"] == "admin"
    # the token stays at the edge (only identity, which checks its admin tokens, gets it)
    for gone in ("x-hop-secret", "keep-alive", "te", "proxy-authorization", "authorization"):
        assert gone not in up, (gone, up)
    assert up.get("connection", "").lower() in ("", "keep-alive")
    # traceparent: same trace, a new span (the gateway's, a child of the caller's)
    m = re.fullmatch(r"00-([0-9a-f]{32})-([0-9a-f]{16})-01", up["traceparent"])
    assert m and m.group(1) == "0af7651916cd43dd8448eb211c80319c"
    assert m.group(2) != "b7ad6b7169203331"
    # the deadline travels
    assert 0 < int(up["loom-deadline-ms"]) <= 30000
    # response: hop-by-hop from the upstream dropped, its own fields kept, Via added
    assert r.headers["X-Upstream"] == "echo"
    assert "X-Up-Hop" not in r.headers
    assert "loom-gateway" in r.headers["Via"]
    # a request id is made when there is none (and a bad one is replaced)
    r = gw.req("GET", "/api/v1/streams/h", scope="ingest")
    assert re.fullmatch(r"[0-9a-f]{32}", r.headers["X-Request-Id"])
    assert upstream_headers(r)["x-request-id"] == r.headers["X-Request-Id"]
    r = gw.req("GET", "/api/v1/streams/h", scope="ingest", headers={"X-Request-Id": "a b"})
    assert re.fullmatch(r"[0-9a-f]{32}", r.headers["X-Request-Id"])


def test_bodies_forwarded_whole(gw):
    body = os.urandom(900 * 1024)
    r = gw.req("POST", "/api/v1/streams/b/events", scope="ingest", data=body,
               headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 200, r.text
    assert r.json()["body_sha256"] == hashlib.sha256(body).hexdigest()
    # chunked request bodies are forwarded with a Content-Length
    def gen():
        for i in range(0, len(body), 65536):
            yield body[i:i + 65536]
    r = gw.req("POST", "/api/v1/streams/b/events", scope="ingest", data=gen())
    assert r.status_code == 200 and r.json()["body_len"] == len(body)
    # over the platform API's limit (1 MiB): 413 before the upstream sees it (event batches
    # are uploads: their limit is --gateway.max-upload-body)
    r = gw.req("POST", "/api/v1/models", scope="models:write", data=b"x" * (1024 * 1024 + 1))
    assert r.status_code == 413
    r = gw.req("POST", "/api/v1/streams/b/events", scope="ingest", data=b"x" * (3 << 20))
    assert r.status_code == 200 and r.json()["body_len"] == 3 << 20
    # a large answer comes back intact
    r = gw.req("GET", "/api/v1/streams/big?big=6000000", scope="ingest")
    assert r.status_code == 200 and len(r.content) == 6000000


def test_request_limits(gateways):
    g = gateways("--gateway.max-tensor-elements=100", "--gateway.max-header-bytes=4KiB",
                 "--gateway.max-infer-body=64KiB")
    # a tensor over the cap: 413 at the edge (inference never sees it)
    big = {"inputs": [{"name": "input__0", "shape": [500, 2], "datatype": "FP32",
                       "data": [0.5] * 1000}]}
    r = g.req("POST", f"/v2/models/{MODEL}/infer", scope="infer", json=big)
    assert r.status_code == 413 and "1000 elements" in r.json()["detail"], r.text
    # one within it, in a body larger than the cap, passes
    ok = dict(infer_body(), id="x" * 300)
    assert g.req("POST", f"/v2/models/{MODEL}/infer", scope="infer", json=ok).status_code == 200
    # the binary extension: the JSON header's shapes are checked
    hdr_json = json.dumps({"inputs": [{"name": "input__0", "shape": [1000, 2],
                                       "datatype": "FP32",
                                       "parameters": {"binary_data_size": 8000}}]}).encode()
    r = g.req("POST", f"/v2/models/{MODEL}/infer", scope="infer", data=hdr_json + bytes(8000),
              headers={"Inference-Header-Content-Length": str(len(hdr_json)),
                       "Content-Type": "application/octet-stream"})
    assert r.status_code == 413, r.text
    # the infer body limit, and the head limit
    r = g.req("POST", f"/v2/models/{MODEL}/infer", scope="infer", data=b" " * (65 * 1024))
    assert r.status_code == 413
    r = g.req("GET", "/api/v1/models", scope="models:read", headers={"X-Big": "a" * 5000})
    assert r.status_code == 431


def test_deadline_and_timeouts(gw, gateways):
    t0 = time.monotonic()
    r = gw.req("GET", "/api/v1/streams/s?sleep_ms=3000", scope="ingest",
               headers={"Loom-Deadline-Ms": "300"})
    took = time.monotonic() - t0
    assert r.status_code == 504, r.text
    assert 0.25 < took < 2.0 * SLOW, took
    assert r.headers["content-type"].startswith("application/problem+json")
    # the upstream was told how long it had
    r = gw.req("GET", "/api/v1/streams/d", scope="ingest", headers={"Loom-Deadline-Ms": "700"})
    assert 500 <= int(upstream_headers(r)["loom-deadline-ms"]) <= 700
    assert gw.req("GET", "/api/v1/streams/d", scope="ingest",
                  headers={"Loom-Deadline-Ms": "0"}).status_code == 504
    assert gw.req("GET", "/api/v1/streams/d", scope="ingest",
                  headers={"Loom-Deadline-Ms": "soon"}).status_code == 400
    # the route's own timeout
    g = gateways("--gateway.timeout=400ms")
    t0 = time.monotonic()
    r = g.req("GET", "/api/v1/streams/s?sleep_ms=3000", scope="ingest")
    assert r.status_code == 504 and time.monotonic() - t0 < 2.0 * SLOW
    # a longer client deadline does not extend it
    r = g.req("GET", "/api/v1/streams/s?sleep_ms=1500", scope="ingest",
              headers={"Loom-Deadline-Ms": "60000"})
    assert r.status_code == 504


def test_retries(gateways, echo):
    dead = closed_port()
    g = gateways(ingest=f"127.0.0.1:{dead},{echo.addr}")
    # connect failures are retried on the other replica, for every method
    for i in range(20):
        r = g.req("GET", f"/api/v1/streams/r{i}", scope="ingest")
        assert r.status_code == 200, r.text
        r = g.req("POST", f"/api/v1/streams/r{i}/events", scope="ingest", data=b"{}")
        assert r.status_code == 200, r.text
    # a 503 from the upstream: GET is retried, POST is not
    r = g.req("GET", "/api/v1/streams/f?fail=503", scope="ingest",
              headers={"X-Request-Id": "retry-get-1"})
    assert r.status_code == 200 and r.json()["attempt"] == 2, r.text
    r = g.req("POST", "/api/v1/streams/f?fail=503", scope="ingest", data=b"{}",
              headers={"X-Request-Id": "retry-post-1"})
    assert r.status_code == 503
    assert echo.counts["retry-post-1"] == 1
    # retry counters
    m = g.metrics("gateway")
    assert re.search(r'loom_gateway_upstream_retries_total\{upstream="ingest",address="[^"]+"\} '
                     r'[1-9]', m), m


def test_idempotency_key(gw, echo):
    path = "/api/v1/streams/idem/events"
    key = {"Idempotency-Key": "k-" + os.urandom(6).hex()}
    body = json.dumps({"event": 1}).encode()
    r1 = gw.req("POST", path, scope="ingest", data=body, headers=key)
    assert r1.status_code == 200 and "Idempotent-Replayed" not in r1.headers
    n = len(echo.requests)
    r2 = gw.req("POST", path, scope="ingest", data=body, headers=key)
    assert r2.status_code == 200 and r2.headers["Idempotent-Replayed"] == "true"
    assert r2.content == r1.content
    assert r2.headers["Content-Type"] == r1.headers["Content-Type"]
    assert r2.headers["X-Upstream"] == "echo"
    assert len(echo.requests) == n  # not forwarded again
    # same key, another body: 422
    r3 = gw.req("POST", path, scope="ingest", data=b'{"event":2}', headers=key)
    assert r3.status_code == 422, r3.text
    # another client with the same key is not replayed (keys are per client)
    other = gw.req("POST", "/api/v1/clients", json={"name": "idem-other-" + os.urandom(3).hex(),
                                                    "scopes": ["ingest"]})
    assert other.status_code == 201, other.text
    c = other.json()
    tok = gw.token("ingest", client=(c["id"] if "id" in c else c["client_id"], c["secret"]
                                     if "secret" in c else c["client_secret"]))
    r4 = requests.post(gw.base + path, data=body, timeout=10,
                       headers={**key, "Authorization": "Bearer " + tok})
    assert r4.status_code == 200 and "Idempotent-Replayed" not in r4.headers
    # in flight: 409
    slow = {"Idempotency-Key": "slow-" + os.urandom(6).hex()}
    with ThreadPoolExecutor(2) as ex:
        f = ex.submit(gw.req, "POST", path + "?sleep_ms=1500", scope="ingest", data=body,
                      headers=slow)
        time.sleep(0.4)
        r5 = gw.req("POST", path + "?sleep_ms=1500", scope="ingest", data=body, headers=slow)
        assert r5.status_code == 409, r5.text
        assert f.result().status_code == 200
    # a failed upstream answer releases the key
    k = {"Idempotency-Key": "fail-" + os.urandom(6).hex(), "X-Request-Id": "idem-fail-1"}
    assert gw.req("POST", path + "?fail=500", scope="ingest", data=body,
                  headers=k).status_code == 500
    r6 = gw.req("POST", path + "?fail=500", scope="ingest", data=body, headers=k)
    assert "Idempotent-Replayed" not in r6.headers
    assert echo.counts["idem-fail-1"] == 2
    # malformed key
    assert gw.req("POST", path, scope="ingest", data=body,
                  headers={"Idempotency-Key": "x" * 300}).status_code == 400
    # an answer marked no-store (a new client's secret) is not kept: the key is released
    ck = {"Idempotency-Key": "client-" + os.urandom(6).hex()}
    cbody = {"name": "idem-secret-" + os.urandom(3).hex(), "scopes": ["infer"]}
    r7 = gw.req("POST", "/api/v1/clients", json=cbody, headers=ck)
    assert r7.status_code == 201 and r7.headers["Cache-Control"] == "no-store", r7.headers
    r8 = gw.req("POST", "/api/v1/clients", json=cbody, headers=ck)
    assert "Idempotent-Replayed" not in r8.headers and r8.status_code == 409, r8.text


def parse_ratelimit(r):
    pol = r.headers["RateLimit-Policy"]
    rl = r.headers["RateLimit"]
    m1 = re.fullmatch(r'"(\w[\w-]*)";q=(\d+);w=(\d+)', pol)
    m2 = re.fullmatch(r'"(\w[\w-]*)";r=(\d+);t=(\d+)', rl)
    assert m1 and m2, (pol, rl)
    assert m1.group(1) == m2.group(1)
    return m1.group(1), int(m1.group(2)), int(m1.group(3)), int(m2.group(2)), int(m2.group(3))


def test_rate_limits(gateways):
    g = gateways("--gateway.client-rate-limits=admin=1/s:5",
                 "--gateway.route-rate-limits=infer=1/m:2")
    g.token("ingest")
    g.token("infer")
    seen = []
    for i in range(7):
        r = g.req("GET", "/api/v1/streams/x", scope="ingest")
        seen.append(r.status_code)
        name, q, w, rem, t = parse_ratelimit(r)  # on every answer
        assert name == "client" and q == 5 and w == 5
        if r.status_code == 429:
            assert int(r.headers["Retry-After"]) >= 1
            assert r.headers["content-type"].startswith("application/problem+json")
            assert rem == 0
    assert seen[:5] == [200] * 5 and 429 in seen[5:], seen
    # another client is not affected; the route override applies to infer
    g2 = gateways("--gateway.client-rate-limits=admin=1000/s:1000",
                  "--gateway.route-rate-limits=infer=1/m:2")
    codes = [g2.req("POST", f"/v2/models/{MODEL}/infer", scope="infer",
                    json=infer_body()).status_code for _ in range(4)]
    assert codes[:2] == [200, 200] and codes[2:] == [429, 429], codes
    r = g2.req("POST", f"/v2/models/{MODEL}/infer", scope="infer", json=infer_body())
    assert parse_ratelimit(r)[0] == "infer"
    assert int(r.headers["Retry-After"]) > 1
    # other routes of the same client only count against the client-wide limit
    assert g2.req("GET", f"/v2/models/{MODEL}", scope="infer").status_code == 200
    assert (g2.metric("gateway", "loom_gateway_rate_limited_total") or 0) >= 3


def test_client_quota_from_identity(gateways):
    """A client's quota (identity's POST/PATCH /api/v1/clients) is its limit at the gateway: the
    token carries it; --gateway.client-rate-limits overrides it; a client without a quota (the
    bootstrap admin, one created without, one whose quota was cleared) gets
    --gateway.rate-limit."""
    g = gateways("--gateway.rate-limit=200/s:200")
    # no quota: the gateway's default, for the admin and for a client created without one
    r = g.req("GET", "/api/v1/clients/admin")
    assert r.status_code == 200 and r.json()["quota"] is None, r.text
    assert parse_ratelimit(r)[:3] == ("client", 200, 1), r.headers
    plain = "plain-" + os.urandom(3).hex()
    r = g.req("POST", "/api/v1/clients", json={"name": plain, "scopes": ["infer"]})
    assert r.status_code == 201 and r.json()["quota"] is None, r.text
    pid, psecret = r.json()["id"], r.json()["secret"]
    r = g.req("GET", f"/v2/models/{MODEL}", scope=None,
              headers=g.auth("infer", client=(pid, psecret)))
    assert r.status_code == 200 and parse_ratelimit(r)[:3] == ("client", 200, 1), r.headers
    name = "scorer-" + os.urandom(3).hex()
    r = g.req("POST", "/api/v1/clients", json={"name": name, "scopes": ["infer", "models:read"],
                                               "quota": {"requests_per_second": 2, "burst": 3}})
    assert r.status_code == 201, r.text
    cid, secret = r.json()["id"], r.json()["secret"]
    codes = []
    for _ in range(12):
        r = g.req("GET", f"/v2/models/{MODEL}", scope=None,
                  headers=g.auth("infer", client=(cid, secret)))
        codes.append(r.status_code)
        name_, q, w, rem, t = parse_ratelimit(r)
        assert (name_, q, w) == ("client", 3, 2), r.headers  # 3 at 2/s: whole again in 2 s
    assert codes[:3] == [200] * 3 and set(codes[3:]) == {429}, codes
    # a changed quota applies to the tokens issued after the change
    r = g.req("PATCH", f"/api/v1/clients/{cid}", json={"quota": {"requests_per_second": 50,
                                                                  "burst": 40}})
    assert r.status_code == 200, r.text
    g.tokens.pop(("infer", cid))
    r = g.req("GET", f"/v2/models/{MODEL}", scope=None,
              headers=g.auth("infer", client=(cid, secret)))
    assert parse_ratelimit(r)[:3] == ("client", 40, 1), r.headers
    # a quota given later applies too, and a cleared one gives the gateway's default back
    r = g.req("PATCH", f"/api/v1/clients/{pid}",
              json={"quota": {"requests_per_second": 4, "burst": 6}})
    assert r.status_code == 200, r.text
    g.tokens.pop(("infer", pid))
    r = g.req("GET", f"/v2/models/{MODEL}", scope=None,
              headers=g.auth("infer", client=(pid, psecret)))
    assert parse_ratelimit(r)[:3] == ("client", 6, 2), r.headers
    r = g.req("PATCH", f"/api/v1/clients/{pid}", json={"quota": None})
    assert r.status_code == 200 and r.json()["quota"] is None, r.text
    g.tokens.pop(("infer", pid))
    r = g.req("GET", f"/v2/models/{MODEL}", scope=None,
              headers=g.auth("infer", client=(pid, psecret)))
    assert parse_ratelimit(r)[:3] == ("client", 200, 1), r.headers
    # the operator's line for the client wins over its quota
    g2 = gateways(f"--gateway.client-rate-limits={cid}=1000/s:700")
    g2.tokens = g.tokens
    r = g2.req("GET", f"/v2/models/{MODEL}", scope=None,
               headers=g2.auth("infer", client=(cid, secret)))
    assert r.status_code == 200 and parse_ratelimit(r)[:3] == ("client", 700, 1), r.headers


def test_which_answers_carry_ratelimit_headers(gw):
    # docs/gateway.md: the answers after the limit check carry them, refusals before it do not
    after = [gw.req("GET", "/api/v1/models", scope="models:read"),
             gw.req("GET", "/api/v1/models", scope="infer"),  # 403: the scope comes after
             gw.req("GET", "/api/v1/flags/none")]  # the gateway's own 404
    for r in after:
        assert r.status_code in (200, 403, 404) and "RateLimit" in r.headers, (r, r.headers)
    before = [gw.req("GET", "/api/v1/nowhere"), gw.req("DELETE", "/api/v1/models"),
              gw.req("GET", "/api/v1/models", headers={"Loom-Deadline-Ms": "soon"}),
              requests.options(gw.base + "/api/v1/models", timeout=10)]
    for r in before:
        assert r.status_code in (404, 405, 400, 204) and "RateLimit" not in r.headers, r.headers


def test_rate_limits_shared_on_redis(tmp_path, gateways):
    redis, port = start_redis(tmp_path)
    try:
        url = f"--gateway.ratelimit=redis://127.0.0.1:{port}"
        a = gateways(url, "--gateway.client-rate-limits=admin=1/h:10")
        b = gateways(url, "--gateway.client-rate-limits=admin=1/h:10")
        tok = a.token("ingest")
        b.tokens[("ingest", "admin")] = tok
        codes = []
        for i in range(20):
            g = a if i % 2 == 0 else b
            codes.append(g.req("GET", "/api/v1/streams/x", scope="ingest").status_code)
        assert codes.count(200) == 10 and codes.count(429) == 10, codes
        assert codes[:10] == [200] * 10
        # Idempotency-Keys are shared too: a replay through the other replica (the client's
        # bucket, a 10-hour debt under the old policy, is cleared first)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"FLUSHALL\r\n")
            assert s.recv(64).startswith(b"+OK")
        key = {"Idempotency-Key": "shared-" + os.urandom(6).hex()}
        c = gateways(url, "--gateway.client-rate-limits=admin=1000/s:1000")
        d = gateways(url, "--gateway.client-rate-limits=admin=1000/s:1000")
        d.tokens[("ingest", "admin")] = c.token("ingest")
        r1 = c.req("POST", "/api/v1/streams/s/events", scope="ingest", data=b"{}", headers=key)
        r2 = d.req("POST", "/api/v1/streams/s/events", scope="ingest", data=b"{}", headers=key)
        assert r1.status_code == 200 and r2.headers.get("Idempotent-Replayed") == "true"
        assert r2.content == r1.content
        # redis down: limits fall back to each gateway's memory, traffic keeps flowing
        redis.kill()
        redis.wait(5)
        time.sleep(0.3)
        assert c.req("GET", "/api/v1/streams/x", scope="ingest").status_code == 200
        assert (c.metric("gateway", "loom_gateway_ratelimit_fallbacks_total") or 0) >= 1
    finally:
        if redis.poll() is None:
            redis.kill()
            redis.wait(5)


def test_concurrency_shedding(gateways):
    g = gateways("--gateway.max-in-flight=4", "--gateway.client-rate-limits=admin=1000/s:1000")
    g.token("ingest")

    def one(i):
        return g.req("GET", f"/api/v1/streams/c{i}?sleep_ms=1200", scope="ingest")

    with ThreadPoolExecutor(12) as ex:
        rs = list(ex.map(one, range(12)))
    codes = sorted(r.status_code for r in rs)
    assert codes.count(200) == 4 and codes.count(503) == 8, codes
    for r in rs:
        if r.status_code == 503:
            assert r.headers["Retry-After"] == "1"
            assert r.elapsed.total_seconds() < 1.0
    assert g.metric("gateway", "loom_gateway_shed_total") == 8
    # and it recovers
    assert g.req("GET", "/api/v1/streams/ok", scope="ingest").status_code == 200


def test_cors(gateways):
    g = gateways("--gateway.cors-origins=https://ui.loom.test,https://other.loom.test")
    pre = {"Origin": "https://ui.loom.test", "Access-Control-Request-Method": "POST",
           "Access-Control-Request-Headers": "authorization, content-type"}
    r = requests.options(g.base + "/api/v1/models", headers=pre, timeout=10)
    assert r.status_code == 204
    assert r.headers["Access-Control-Allow-Origin"] == "https://ui.loom.test"
    assert "POST" in r.headers["Access-Control-Allow-Methods"]
    assert "authorization" in r.headers["Access-Control-Allow-Headers"].lower()
    assert int(r.headers["Access-Control-Max-Age"]) > 0
    assert "Origin" in r.headers["Vary"]
    bad = dict(pre, Origin="https://evil.example")
    r = requests.options(g.base + "/api/v1/models", headers=bad, timeout=10)
    assert r.status_code == 403 and "Access-Control-Allow-Origin" not in r.headers
    # actual requests: the allowed origin is echoed, with exposed headers; others get nothing
    r = g.req("GET", "/api/v1/models", scope="models:read",
              headers={"Origin": "https://other.loom.test"})
    assert r.status_code == 200
    assert r.headers["Access-Control-Allow-Origin"] == "https://other.loom.test"
    assert "RateLimit" in r.headers["Access-Control-Expose-Headers"]
    r = g.req("GET", "/api/v1/models", scope="models:read",
              headers={"Origin": "https://evil.example"})
    assert r.status_code == 200 and "Access-Control-Allow-Origin" not in r.headers
    # a refusal carries CORS too, so the UI can read it
    r = requests.get(g.base + "/api/v1/models", headers={"Origin": "https://ui.loom.test"},
                     timeout=10)
    assert r.status_code == 401 and r.headers["Access-Control-Allow-Origin"]


GATEWAY_OWN = [("GET", "/openapi.json"), ("GET", "/api/v1/flags"), ("POST", "/api/v1/flags"),
               ("GET", "/api/v1/flags/{name}"), ("PUT", "/api/v1/flags/{name}"),
               ("DELETE", "/api/v1/flags/{name}"), ("GET", "/api/v1/flags/{name}/evaluate"),
               ("GET", "/api/v1/traffic"), ("GET", "/api/v1/traffic/{model}"),
               ("PUT", "/api/v1/traffic/{model}"), ("DELETE", "/api/v1/traffic/{model}")]
V2 = [("GET", "/v2"), ("GET", "/v2/health/live"), ("GET", "/v2/health/ready"),
      ("GET", "/v2/models/{model}"), ("GET", "/v2/models/{model}/ready"),
      ("POST", "/v2/models/{model}/infer"), ("GET", "/v2/models/{model}/versions/{version}"),
      ("POST", "/v2/models/{model}/versions/{version}/infer")]
PROXIED_PREFIXES = ["/api/v1/models", "/api/v1/artifacts", "/api/v1/resolve/", "/api/v1/datasets",
                    "/api/v1/training-jobs", "/api/v1/streams", "/api/v1/clients", "/oauth/token",
                    "/.well-known/jwks.json"]
# Services whose authors have not written their paths into api/openapi.yaml yet: tolerated
# (and listed) until they do; a prefix documented here once is then checked like the others.
PENDING_DOCS = {"/api/v1/datasets": "trainer", "/api/v1/training-jobs": "trainer",
                "/api/v1/streams": "ingest", "/api/v1/clients": "identity",
                "/oauth/token": "identity", "/.well-known/jwks.json": "identity"}


def test_openapi_document(gw):
    r = requests.get(gw.base + "/openapi.json", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    doc = r.json()
    assert doc["openapi"].startswith("3.1")
    assert doc["info"]["title"] and doc["info"]["version"]
    desc = doc["info"]["description"]
    assert "/api/v2" in desc and "/api/v1" in desc and "/v2" in desc  # the versioning rule
    paths = doc["paths"]

    def resolve(obj):
        while isinstance(obj, dict) and "$ref" in obj:
            node = doc
            for part in obj["$ref"][2:].split("/"):
                node = node[part]
            obj = node
        return obj

    # every operation has responses, and every $ref resolves
    for tpl, item in paths.items():
        assert tpl.startswith("/"), tpl
        for m, op in item.items():
            if m in ("get", "put", "post", "patch", "delete"):
                assert op.get("responses"), (tpl, m)
                for code, resp in op["responses"].items():
                    assert resolve(resp).get("description") is not None, (tpl, m, code)

    def walk(o):
        if isinstance(o, dict):
            if "$ref" in o:
                resolve(o)
            for v in o.values():
                walk(v)
        elif isinstance(o, list):
            for v in o:
                walk(v)

    walk(doc)
    # every route the gateway answers itself, and the KServe paths
    for method, tpl in GATEWAY_OWN + V2:
        assert tpl in paths and method.lower() in paths[tpl], (method, tpl)
    missing = [p for p in PROXIED_PREFIXES if not any(t.startswith(p) for t in paths)]
    assert set(missing) <= set(PENDING_DOCS), missing
    if missing:
        print(f"\n/openapi.json: not documented yet by their services: "
              f"{', '.join(f'{p} ({PENDING_DOCS[p]})' for p in missing)}")
    # the public routes say so (security: [])
    assert paths["/openapi.json"]["get"].get("security") == []
    assert "bearerAuth" in doc["components"]["securitySchemes"]


def infer_versions(g, n, headers=None, scope="infer", threads=8):
    def one(i):
        r = g.req("POST", f"/v2/models/{MODEL}/infer", scope=scope, json=infer_body(1, 2),
                  headers=headers)
        return r.status_code, (r.json().get("model_version") if r.status_code == 200 else None)

    with ThreadPoolExecutor(threads) as ex:
        return list(ex.map(one, range(n)))


def test_traffic_splits(gw, gateways, backends):
    gw.token("infer")
    # a PUT that creates the split answers 201 with its Location, one that replaces it 200
    assert gw.req("GET", f"/api/v1/traffic/{MODEL}").status_code == 404
    body = {"splits": [{"version": 1, "weight": 90}, {"version": 2, "weight": 10}]}
    r = gw.req("PUT", f"/api/v1/traffic/{MODEL}", json=body)
    assert r.status_code == 201, r.text
    assert r.headers["Location"] == f"/api/v1/traffic/{MODEL}"
    assert gw.req("GET", r.headers["Location"]).json() == r.json()
    r = gw.req("PUT", f"/api/v1/traffic/{MODEL}", json=body)
    assert r.status_code == 200 and "Location" not in r.headers, r.headers
    assert r.json()["splits"] == [{"version": 1, "weight": 90}, {"version": 2, "weight": 10}]
    out = infer_versions(gw, 2000)
    assert all(s == 200 for s, _ in out), [s for s, _ in out if s != 200][:5]
    v1 = sum(1 for _, v in out if v == "1") / len(out)
    assert 0.87 <= v1 <= 0.93, v1  # 90% within 3 points (4.5 standard deviations)
    # the header override
    out = infer_versions(gw, 50, headers={"Loom-Model-Version": "2"})
    assert {v for _, v in out} == {"2"}
    r = gw.req("POST", f"/v2/models/{MODEL}/infer", scope="infer", json=infer_body(),
               headers={"Loom-Model-Version": "2"})
    assert r.headers["Loom-Model-Version"] == "2"
    assert gw.req("POST", f"/v2/models/{MODEL}/infer", scope="infer", json=infer_body(),
                  headers={"Loom-Model-Version": "two"}).status_code == 400
    # an explicit version in the path is not rewritten
    r = gw.req("POST", f"/v2/models/{MODEL}/versions/1/infer", scope="infer", json=infer_body())
    assert r.json()["model_version"] == "1"
    # the same request id always lands on the same version
    vs = {gw.req("POST", f"/v2/models/{MODEL}/infer", scope="infer", json=infer_body(),
                 headers={"X-Request-Id": "sticky-7"}).json()["model_version"] for _ in range(10)}
    assert len(vs) == 1
    # changes under load drop nothing
    stop = threading.Event()
    results = []

    def load():
        s = requests.Session()
        h = gw.auth("infer")
        while not stop.is_set():
            r = s.post(gw.base + f"/v2/models/{MODEL}/infer", json=infer_body(), headers=h,
                       timeout=30)
            results.append(r.status_code)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    for i in range(20):
        w = [100, 0] if i % 2 else [0, 100]
        r = gw.req("PUT", f"/api/v1/traffic/{MODEL}",
                   json={"splits": [{"version": 1, "weight": w[0]},
                                    {"version": 2, "weight": w[1]}]})
        assert r.status_code == 200
        time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join()
    assert len(results) > 100 and set(results) == {200}, (len(results), set(results))
    # after the last change (100/0 -> v1 only)
    assert {v for _, v in infer_versions(gw, 20)} == {"1"}
    # validation
    for bad in ({}, {"splits": []}, {"splits": [{"version": 0, "weight": 1}]},
                {"splits": [{"version": 1, "weight": 0}]},
                {"splits": [{"version": 1, "weight": 5}, {"version": 1, "weight": 5}]},
                {"splits": [{"version": 1}], "x": 1}):
        assert gw.req("PUT", f"/api/v1/traffic/{MODEL}", json=bad).status_code == 400, bad
    # a second gateway on the same store sees it (polling), and keeps it over a restart
    store = f"--gateway.store=sqlite:{gw.data_dir}/gateway.db"
    g2 = gateways(store)
    r = g2.req("GET", f"/api/v1/traffic/{MODEL}")
    assert r.status_code == 200 and r.json()["splits"][0] == {"version": 1, "weight": 100}
    gw.req("PUT", f"/api/v1/traffic/{MODEL}",
           json={"splits": [{"version": 2, "weight": 1}]})
    deadline = time.monotonic() + 5 * SLOW
    while time.monotonic() < deadline:
        if g2.req("GET", f"/api/v1/traffic/{MODEL}").json()["splits"] == [
                {"version": 2, "weight": 1}]:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the second gateway did not see the change")
    assert {v for _, v in infer_versions(g2, 20)} == {"2"}
    lst = gw.req("GET", "/api/v1/traffic").json()["items"]
    assert [t["model"] for t in lst] == [MODEL]
    assert gw.req("DELETE", f"/api/v1/traffic/{MODEL}").status_code == 204
    assert gw.req("GET", f"/api/v1/traffic/{MODEL}").status_code == 404
    assert gw.req("DELETE", f"/api/v1/traffic/{MODEL}").status_code == 404


def test_splits_and_flags_shared_on_postgres(gateways, request):
    """Two replicas on one PostgreSQL store: a change made through one is routed by the other
    within a poll interval, and survives a restart."""
    pg = request.getfixturevalue("postgres")
    url = pg.new_database()
    a = gateways(f"--gateway.store={url}")
    b = gateways(f"--gateway.store={url}")
    b.tokens = a.tokens
    r = a.req("PUT", f"/api/v1/traffic/{MODEL}", json={"splits": [{"version": 2, "weight": 1}]})
    assert r.status_code == 201, r.text
    r = b.req("POST", "/api/v1/flags", json={"name": "pg-flag", "percentage": 30})
    assert r.status_code == 201, r.text
    deadline = time.monotonic() + 5 * SLOW
    while time.monotonic() < deadline:
        if (b.req("GET", f"/api/v1/traffic/{MODEL}").status_code == 200 and
                a.req("GET", "/api/v1/flags/pg-flag").status_code == 200):
            break
        time.sleep(0.1)
    else:
        pytest.fail("the replicas did not see each other's changes")
    assert {v for _, v in infer_versions(b, 10)} == {"2"}
    a.stop()
    a.start()
    assert a.req("GET", "/api/v1/flags/pg-flag").json()["percentage"] == 30
    assert a.req("DELETE", f"/api/v1/traffic/{MODEL}").status_code == 204


def test_flags(gw):
    name = "new-ui-" + os.urandom(3).hex()
    r = gw.req("POST", "/api/v1/flags", json={"name": name, "description": "the new UI",
                                              "enabled": True, "percentage": 100})
    assert r.status_code == 201, r.text
    assert r.headers["Location"] == f"/api/v1/flags/{name}"
    f = r.json()
    assert f["name"] == name and f["enabled"] is True and f["percentage"] == 100
    assert gw.req("POST", "/api/v1/flags", json={"name": name}).status_code == 409
    assert gw.req("GET", f"/api/v1/flags/{name}").json()["description"] == "the new UI"
    assert name in [x["name"] for x in gw.req("GET", "/api/v1/flags").json()["items"]]
    # evaluation for the calling client, with any valid token
    ev = gw.req("GET", f"/api/v1/flags/{name}/evaluate", scope="infer").json()
    assert ev == {"flag": name, "client_id": "admin", "enabled": True, "reason": "enabled"}
    r = gw.req("PUT", f"/api/v1/flags/{name}", json={"enabled": False})
    assert r.status_code == 200 and r.json()["enabled"] is False
    assert gw.req("GET", f"/api/v1/flags/{name}/evaluate", scope="infer").json()["enabled"] is False
    gw.req("PUT", f"/api/v1/flags/{name}", json={"enabled": True,
                                                  "targets": {"allow": ["admin"]}})
    assert gw.req("GET", f"/api/v1/flags/{name}/evaluate").json()["reason"] == "allowed"
    gw.req("PUT", f"/api/v1/flags/{name}", json={"enabled": True, "percentage": 100,
                                                  "targets": {"deny": ["admin"]}})
    ev = gw.req("GET", f"/api/v1/flags/{name}/evaluate").json()
    assert ev["enabled"] is False and ev["reason"] == "denied"
    # a percentage is stable per client
    gw.req("PUT", f"/api/v1/flags/{name}", json={"percentage": 50})
    first = gw.req("GET", f"/api/v1/flags/{name}/evaluate").json()
    assert first["reason"] == "percentage"
    assert all(gw.req("GET", f"/api/v1/flags/{name}/evaluate").json() == first
               for _ in range(5))
    # only admins change flags
    assert gw.req("PUT", f"/api/v1/flags/{name}", scope="infer",
                  json={"enabled": True}).status_code == 403
    assert gw.req("GET", "/api/v1/flags", scope="models:read").status_code == 403
    # validation
    for bad in ({"name": "a b"}, {"name": name + "x", "percentage": 101},
                {"name": name + "y", "enabled": "yes"}, {"name": name + "z", "color": 1}):
        assert gw.req("POST", "/api/v1/flags", json=bad).status_code == 400, bad
    assert gw.req("DELETE", f"/api/v1/flags/{name}").status_code == 204
    assert gw.req("GET", f"/api/v1/flags/{name}").status_code == 404
    assert gw.req("GET", f"/api/v1/flags/{name}/evaluate").status_code == 404


def test_access_log_and_no_secrets_in_logs(tmp_path, backends, echo):
    g = Gateway(tmp_path, backends, "--log-level=debug", ingest=echo.addr, name="gwdebug").start()
    try:
        tok = g.token("ingest")
        admin = g.token("admin")
        rid = "log-check-" + os.urandom(4).hex()
        r = g.req("GET", "/api/v1/streams/logs", scope="ingest", headers={"X-Request-Id": rid})
        assert r.status_code == 200
        g.req("POST", "/api/v1/streams/logs/events", scope="ingest", data=b'{"secret":"body"}',
              headers={"Idempotency-Key": "log-key"})
        requests.get(g.base + "/api/v1/models", headers={"Authorization": "Bearer " + tok[:-5]},
                     timeout=10)
        requests.get(g.base + "/api/v1/models", headers={"Authorization": "Bearer garbage.x.y"},
                     timeout=10)
        line = g.wait_log(lambda o: o.get("msg") == "access" and o.get("request_id") == rid)
        assert line, g.text()
        assert line["level"] == "info" and line["svc"] == "gateway"
        assert line["client_id"] == "admin" and line["route"] == "/api/v1/streams/{rest...}"
        assert line["status"] == 200 and line["duration_ms"] > 0
        assert line["upstream"] == echo.addr and line["method"] == "GET"
        assert re.fullmatch(r"[0-9a-f]{32}", line["trace_id"])
    finally:
        g.stop()
    everything = g.text() + "\n" + backends.proc.text()
    for secret in (tok, admin, tok.split(".")[2], admin.split(".")[2], tok[:-5], ADMIN_SECRET,
                   '"secret":"body"'):
        assert secret not in everything, "a secret or token reached a log line"
    assert "Bearer" not in g.text()
    assert len([o for o in g.logs() if o.get("level") == "debug"]) > 3  # debug was on
