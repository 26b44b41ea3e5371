# SPDX-License-Identifier: Apache-2.0
"""Shared fixtures for the black-box system suite.

The suite drives the real `loom` binary (path in $LOOM_BIN, else ./build/loom) as a child
process. `loom_server(...)` starts `loom serve ...` on a free loopback port with a temporary
--data-dir, learns the port from the JSON "listening" log line on stderr, waits for /readyz and
hands back a `Loom` object (base URL, process, captured log lines, /proc probes). On teardown
every server still running gets SIGTERM and must exit with 0 within 15 s, and every line it
wrote to stderr must be a JSON object.

This module also holds small raw-socket HTTP helpers (`RawResponse`, `read_response`) that the
tests use where `requests` would hide the wire behaviour.
"""

import json
import os
import signal
import socket
import subprocess
import threading
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
LOOM_BIN = os.environ.get("LOOM_BIN") or os.path.join(REPO, "build", "loom")

READY_TIMEOUT = 5.0
STOP_TIMEOUT = 15.0
LOG_KEYS = ("ts", "level", "svc", "msg", "trace_id", "span_id")

# Set by CMake for the ASan/UBSan build: memory figures are then ASan's (its quarantine keeps
# freed memory, its shadow takes more), so tests skip their RSS limits; LeakSanitizer checks
# leaks at exit instead.
SANITIZED = os.environ.get("LOOM_SANITIZED") == "1"


def loom_cmd(*args):
    return [LOOM_BIN, *args]


def run_loom(*args, env=None, timeout=10, cwd=None):
    """Run a short-lived loom command; returns CompletedProcess with text stdout/stderr."""
    full_env = clean_env()
    if env:
        full_env.update(env)
    return subprocess.run(loom_cmd(*args), env=full_env, cwd=cwd, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          timeout=timeout)


def clean_env():
    """The caller's environment without LOOM_* settings (which would change loom's config)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("LOOM_")}


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_proc_status(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


class Loom:
    """One running `loom serve` process."""

    def __init__(self, args, data_dir, env=None, listen=True):
        # Name the service: a bare `loom serve` runs every service, and only echo is ours.
        self.args = list(args)
        if "echo" not in self.args:
            self.args.insert(0, "echo")
        self.data_dir = data_dir
        self.env = clean_env()
        if env:
            self.env.update(env)
        self.listen = listen
        self.lines = []  # raw stderr lines (str, without newline)
        self.stdout = []
        self._cond = threading.Condition()
        self.proc = None
        self.port = None
        self.returncode = None
        self.stopped = False
        self.t_exec = None
        self.t_ready = None

    # ---- lifecycle ----

    def start(self):
        # Port 0: the kernel picks a free port and we read it from the "listening" log line.
        port = 0
        extra = [f"--data-dir={self.data_dir}"]
        if self.listen:
            extra.append(f"--echo.listen=127.0.0.1:{port}")
        cmd = loom_cmd("serve", *self.args, *extra)
        self.t_exec = time.monotonic()
        self.proc = subprocess.Popen(cmd, env=self.env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        threading.Thread(target=self._pump, args=(self.proc.stderr, self.lines),
                         daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stdout, self.stdout),
                         daemon=True).start()
        deadline = self.t_exec + READY_TIMEOUT
        line = self.wait_log(lambda o: o.get("msg") == "listening" and o.get("svc") == "echo",
                             timeout=READY_TIMEOUT)
        if line is None:
            self._fail_start("no \"listening\" log line")
        self.port = int(line["port"])
        if self.listen and port:
            assert self.port == port, f"asked for port {port}, log says {self.port}"
        self.host = "127.0.0.1"
        self.base = f"http://127.0.0.1:{self.port}"
        while True:
            if self.proc.poll() is not None:
                self._fail_start(f"exited with {self.proc.returncode}")
            if self._readyz_ok():
                self.t_ready = time.monotonic()
                break
            if time.monotonic() > deadline:
                self._fail_start("/readyz did not answer 200")
            time.sleep(0.005)
        return self

    def _readyz_ok(self):
        try:
            with socket.create_connection((self.host, self.port), timeout=1) as s:
                s.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                return read_response(s).status == 200
        except OSError:
            return False

    def _fail_start(self, why):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)
        time.sleep(0.05)  # let the reader threads finish
        pytest.fail(f"loom did not come up within {READY_TIMEOUT} s ({why}); args {self.args}; "
                    f"stderr:\n" + "\n".join(self.lines), pytrace=False)

    def _pump(self, stream, sink):
        for raw in iter(stream.readline, b""):
            with self._cond:
                sink.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self._cond.notify_all()
        stream.close()
        with self._cond:
            self._cond.notify_all()

    def signal(self, sig=signal.SIGTERM):
        self.proc.send_signal(sig)

    def wait_exit(self, timeout=STOP_TIMEOUT):
        """Wait for the process to exit; returns (returncode, seconds waited)."""
        t0 = time.monotonic()
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            self.stopped = True
            pytest.fail(f"loom did not exit within {timeout} s of SIGTERM; stderr:\n"
                        + self.stderr_text(), pytrace=False)
        self.returncode = rc
        self.stopped = True
        return rc, time.monotonic() - t0

    def quiesce(self, timeout=2.0):
        """Wait until the server has no connection open but the probe's own (the client side
        of finished tests may still be closing). Works around the drain hang with idle
        keep-alive connections (see test_runtime.test_drain_with_idle_keepalive_connection)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if (self.metric("loom_echo_http_connections") or 0) <= 1:
                    time.sleep(0.01)
                    return True
            except (OSError, AssertionError, EOFError):
                return False
            time.sleep(0.02)
        return False

    def stop(self, timeout=STOP_TIMEOUT, quiesce=True):
        """SIGTERM, wait, check exit code 0 and the logs; returns seconds to exit."""
        if self.proc.poll() is None:
            if quiesce:
                self.quiesce()
            self.signal(signal.SIGTERM)
        rc, took = self.wait_exit(timeout)
        assert rc == 0, f"loom exited with {rc} after SIGTERM; stderr:\n{self.stderr_text()}"
        self.check_logs()
        return took

    # ---- logs ----

    def stderr_text(self):
        with self._cond:
            return "\n".join(self.lines)

    def json_logs(self):
        with self._cond:
            lines = list(self.lines)
        return [json.loads(l) for l in lines if l.strip()]

    def check_logs(self):
        time.sleep(0.02)
        with self._cond:
            lines = list(self.lines)
        for l in lines:
            try:
                obj = json.loads(l)
            except ValueError as e:
                pytest.fail(f"log line is not JSON ({e}): {l!r}", pytrace=False)
            assert isinstance(obj, dict), f"log line is not an object: {l!r}"

    def wait_log(self, pred, timeout=5.0, start=0):
        """First parsed log line (index >= start) satisfying pred, or None after timeout."""
        deadline = time.monotonic() + timeout
        seen = start
        with self._cond:
            while True:
                while seen < len(self.lines):
                    try:
                        obj = json.loads(self.lines[seen])
                    except ValueError:
                        obj = None
                    seen += 1
                    if isinstance(obj, dict) and pred(obj):
                        return obj
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and seen >= len(self.lines)
                                 and self.proc.stderr.closed):
                    return None
                self._cond.wait(min(left, 0.05))

    # ---- /proc probes ----

    def rss_kb(self):
        return read_proc_status(self.proc.pid, "VmRSS")

    def fd_count(self):
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def threads(self):
        return read_proc_status(self.proc.pid, "Threads")

    # ---- helpers ----

    def url(self, path):
        return self.base + path

    def connect(self, timeout=5.0):
        s = socket.create_connection((self.host, self.port), timeout=timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s

    def metrics(self):
        with self.connect() as s:
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            r = read_response(s)
        assert r.status == 200
        return r.body.decode()

    def metric(self, name_and_labels):
        """Value of one sample line (exact name{labels} text), or None."""
        for line in self.metrics().splitlines():
            if line.startswith(name_and_labels + " "):
                return float(line.rsplit(" ", 1)[1])
        return None


@pytest.fixture
def loom_server(tmp_path):
    """Factory: loom_server(*args, env=None) starts `loom serve *args` and waits until ready."""
    started = []

    def start(*args, env=None, listen=True):
        d = tmp_path / f"data{len(started)}"
        srv = Loom(args, str(d), env=env, listen=listen)
        started.append(srv)
        return srv.start()

    yield start

    for srv in started:
        if srv.proc is None:
            continue
        if not srv.stopped and srv.proc.poll() is None:
            srv.stop()
        elif not srv.stopped:
            srv.wait_exit()
            srv.check_logs()
            pytest.fail(f"loom exited on its own with {srv.returncode}; stderr:\n"
                        + srv.stderr_text(), pytrace=False)
        else:
            srv.check_logs()


@pytest.fixture
def echo(loom_server):
    """A default echo server."""
    return loom_server()


# ---- raw HTTP ----


class RawResponse:
    def __init__(self, status, reason, headers, body, raw_head):
        self.status = status
        self.reason = reason
        self.headers = headers  # list of (lower-case name, value)
        self.body = body
        self.raw_head = raw_head

    def header(self, name, default=None):
        name = name.lower()
        for k, v in self.headers:
            if k == name:
                return v
        return default

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return f"<RawResponse {self.status} {self.headers} {self.body[:200]!r}>"


class Reader:
    """Buffered reader over a socket, so several responses can be read from one stream."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = bytearray()
        self.eof = False

    def _fill(self):
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        return True

    def read_until(self, sep):
        start = 0
        while True:
            i = self.buf.find(sep, start)
            if i >= 0:
                out = bytes(self.buf[:i + len(sep)])
                del self.buf[:i + len(sep)]
                return out
            start = max(0, len(self.buf) - len(sep) + 1)
            if not self._fill():
                raise EOFError(f"connection closed; {len(self.buf)} bytes unparsed")

    def read_exact(self, n):
        while len(self.buf) < n:
            if not self._fill():
                raise EOFError(f"connection closed after {len(self.buf)} of {n} bytes")
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read_response(self, head_request=False):
        head = self.read_until(b"\r\n\r\n")
        lines = head[:-4].decode("latin-1").split("\r\n")
        version, status, *reason = lines[0].split(" ", 2)
        assert version.startswith("HTTP/1."), lines[0]
        headers = []
        for l in lines[1:]:
            k, _, v = l.partition(":")
            headers.append((k.strip().lower(), v.strip()))
        r = RawResponse(int(status), reason[0] if reason else "", headers, b"", head)
        if head_request or r.status in (100, 204, 304) or 100 <= r.status < 200:
            return r
        te = r.header("transfer-encoding")
        if te and "chunked" in te.lower():
            body = bytearray()
            while True:
                size = int(self.read_until(b"\r\n")[:-2].split(b";")[0], 16)
                if size == 0:
                    self.read_until(b"\r\n")  # no trailers expected
                    break
                body += self.read_exact(size)
                self.read_exact(2)
            r.body = bytes(body)
        elif r.header("content-length") is not None:
            r.body = self.read_exact(int(r.header("content-length")))
        else:
            while self._fill():
                pass
            r.body = bytes(self.buf)
            self.buf.clear()
        return r

    def at_eof(self, timeout=2.0):
        """True if the peer closes (EOF or reset) within timeout with no more bytes."""
        if self.buf:
            return False
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False


def read_response(sock):
    return Reader(sock).read_response()


def request_bytes(method, path, headers=None, body=b"", version="HTTP/1.1"):
    h = {"Host": "loom.test"}
    if body:
        h["Content-Length"] = str(len(body))
    h.update(headers or {})
    head = f"{method} {path} {version}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items())
    return head.encode() + b"\r\n" + body
