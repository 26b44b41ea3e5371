# SPDX-License-Identifier: Apache-2.0
"""Black-box tests of the identity service (`loom serve identity`).

Each server runs with --log-level=debug, and every secret and token a test sees is recorded:
when the server stops, none of them may appear in any line it logged (nor may anything that
looks like a client secret or a JWT). Tokens are verified here with an implementation that is
not loom's: PyJWT (Debian's python3-jwt) and python3-cryptography, against the service's own
/.well-known/jwks.json. The core suites run twice, on SQLite and on a real PostgreSQL 15 from
Debian's package, started for the session by the `postgres` fixture (initdb and pg_ctl as the
postgres user, a temporary directory, a free loopback port, trust authentication).

Every answer the tests receive from the service (token endpoint, JWK set, metadata, clients
API) is validated against api/openapi.yaml (openapi_contract.py, a hook on the server's
requests session): its status must be documented, its headers and body must match, and a body
the service accepted must match the request schema.
"""

import base64
import hashlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time
import urllib.parse

import pytest
import requests

from conftest import STOP_TIMEOUT, Loom, clean_env, free_port, loom_cmd, run_loom
from openapi_contract import load as load_contract

SANITIZED = os.environ.get("LOOM_SANITIZED") == "1"
SLOW = 4.0 if SANITIZED else 1.0
READY_TIMEOUT = 20.0 * SLOW
PG_BIN = "/usr/lib/postgresql/15/bin"
ISSUER = "https://id.loom.test"
ALL_SCOPES = "models:read models:write infer train ingest admin"
SECRET_RE = re.compile(r"lsk_[A-Za-z0-9_-]{20,}")
JWT_RE = re.compile(r"eyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}")
CONTRACT = load_contract()


# ---- PostgreSQL ----


class Postgres:
    """A throwaway PostgreSQL 15 cluster on loopback, one database per server."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="loom-idn-pg-")
        shutil.chown(self.dir, "postgres", "postgres")
        os.chmod(self.dir, 0o700)
        self.data = os.path.join(self.dir, "data")
        self.port = free_port()
        self.n = 0
        self.running = False

    def _pg(self, *cmd, check=True):
        r = subprocess.run(["runuser", "-u", "postgres", "--", *cmd], cwd=self.dir,
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=120)
        if check and r.returncode:
            raise RuntimeError(f"{' '.join(cmd)}: exit {r.returncode}\n{r.stdout}")

    def start(self):
        self._pg(f"{PG_BIN}/initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "-E",
                 "UTF8", "--locale=C", "--no-sync")
        opts = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
                f"-c synchronous_commit=off -c max_connections=100")
        self._pg(f"{PG_BIN}/pg_ctl", "-D", self.data, "-o", opts, "-l",
                 os.path.join(self.dir, "log"), "-w", "-t", "60", "start")
        self.running = True

    def new_database(self):
        self.n += 1
        name = f"identity_{self.n}"
        self._pg(f"{PG_BIN}/psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                 "-q", "-c", f"CREATE DATABASE {name}")
        return f"postgres://postgres@127.0.0.1:{self.port}/{name}"

    def sql(self, url, script):
        """Run SQL statements in the database of a new_database() URL."""
        self._pg(f"{PG_BIN}/psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                 "-d", url.rsplit("/", 1)[1], "-q", "-v", "ON_ERROR_STOP=1", "-c", script)

    def stop(self):
        if self.running:
            self._pg(f"{PG_BIN}/pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop",
                     check=False)
            self.running = False
        shutil.rmtree(self.dir, ignore_errors=True)


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


# ---- servers ----


class IdentityLoom(Loom):
    """One `loom serve identity` process at --log-level=debug that remembers every secret and
    token a test saw, so that teardown can check none of them reached the logs."""

    def __init__(self, args, data_dir, store=None, env=None):
        super().__init__(args, data_dir, env=env)
        self.args = list(args)
        self.store = store
        self.secrets = []
        self.session = CONTRACT.attach(requests.Session(), known=True)

    def start(self):
        extra = [f"--data-dir={self.data_dir}", "--identity.listen=127.0.0.1:0",
                 "--log-level=debug"]
        if not any(a.startswith("--identity.issuer") for a in self.args):
            extra.append(f"--identity.issuer={ISSUER}")
        if self.store:
            extra.append(f"--identity.store={self.store}")
        cmd = loom_cmd("serve", "identity", *self.args, *extra)
        self.t_exec = time.monotonic()
        self.lines.clear()
        self.stopped = False
        self.proc = subprocess.Popen(cmd, env=self.env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        threading.Thread(target=self._pump, args=(self.proc.stderr, self.lines),
                         daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stdout, self.stdout),
                         daemon=True).start()
        line = self.wait_log(lambda o: o.get("msg") == "listening" and
                             o.get("svc") == "identity", timeout=READY_TIMEOUT)
        if line is None:
            self._fail_start("no \"listening\" log line from identity")
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

    def quiesce(self, timeout=2.0):
        self.session.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if (self.metric("loom_identity_http_connections") or 0) <= 1:
                    time.sleep(0.01)
                    return True
            except (OSError, AssertionError, EOFError):
                return False
            time.sleep(0.02)
        return False

    def stop(self, timeout=STOP_TIMEOUT, quiesce=True):
        self.session.close()
        took = super().stop(timeout=timeout, quiesce=quiesce)
        self.check_no_secrets()
        return took

    def restart(self, *args):
        if not self.stopped:
            self.stop()
        if args:
            self.args = list(args)
        return self.start()

    def check_no_secrets(self):
        text = self.stderr_text()
        for s in self.secrets:
            assert s not in text, f"a secret or token reached the log: {s[:12]}..."
        m = SECRET_RE.search(text) or JWT_RE.search(text)
        assert m is None, f"something like a secret or a token is in the log: {m.group(0)[:16]}"
        assert "$argon2" not in text, "a secret hash reached the log"

    # ---- HTTP helpers ----

    def url(self, path):
        return self.base + path

    def remember(self, *values):
        self.secrets.extend(v for v in values if v)

    def token_request(self, data=None, auth=None, headers=None, raw=None):
        h = {"Content-Type": "application/x-www-form-urlencoded"}
        h.update(headers or {})
        body = raw if raw is not None else urllib.parse.urlencode(data or {})
        r = self.session.post(self.url("/oauth/token"), data=body, auth=auth, headers=h,
                              timeout=30 * SLOW)
        if r.status_code == 200:
            self.remember(r.json()["access_token"])
        return r

    def token(self, client_id, secret, scope=None, basic=True):
        data = {"grant_type": "client_credentials"}
        if scope is not None:
            data["scope"] = scope
        if basic:
            r = self.token_request(data, auth=(client_id, secret))
        else:
            data.update(client_id=client_id, client_secret=secret)
            r = self.token_request(data)
        assert r.status_code == 200, r.text
        return r.json()

    def bootstrap_secret(self):
        with open(os.path.join(self.data_dir, "identity-bootstrap-secret")) as f:
            s = f.read().strip()
        self.remember(s)
        return s

    def admin_token(self, secret=None):
        return self.token("admin", secret or self.bootstrap_secret())["access_token"]

    def api(self, method, path, token=None, **kw):
        h = kw.pop("headers", {})
        if token:
            h["Authorization"] = f"Bearer {token}"
        kw.setdefault("timeout", 30 * SLOW)
        r = self.session.request(method, self.url(path), headers=h, **kw)
        if r.headers.get("content-type", "").startswith("application/json"):
            body = r.json()
            if isinstance(body, dict) and "secret" in body:
                self.remember(body["secret"])
        return r

    def create_client(self, token, name, scopes, quota=None):
        body = {"name": name, "scopes": scopes}
        if quota:
            body["quota"] = quota
        r = self.api("POST", "/api/v1/clients", token, json=body)
        assert r.status_code == 201, r.text
        return r.json()

    def jwks(self):
        r = self.session.get(self.url("/.well-known/jwks.json"), timeout=10)
        assert r.status_code == 200, r.text
        return r.json()


class Factory:
    def __init__(self, base, backend, request):
        self.base = str(base)
        self.backend = backend
        self.request = request
        self.started = []

    def new_store(self):
        if self.backend == "postgres":
            return self.request.getfixturevalue("postgres").new_database()
        return None

    def __call__(self, *args, store="new", env=None, data_dir=None):
        d = data_dir or os.path.join(self.base, f"data{len(self.started)}")
        if store == "new":
            store = self.new_store()
        srv = IdentityLoom(args, d, store=store, env=env)
        self.started.append(srv)
        return srv.start()

    def teardown(self):
        failures = []
        for srv in self.started:
            if srv.proc is None:
                continue
            if not srv.stopped and srv.proc.poll() is None:
                srv.stop()
            elif not srv.stopped:
                srv.wait_exit()
                failures.append(f"loom exited on its own with {srv.returncode}:\n"
                                + srv.stderr_text())
            srv.check_logs()
            srv.check_no_secrets()
        if failures:
            pytest.fail("\n".join(failures), pytrace=False)


@pytest.fixture
def identity(tmp_path, backend, request):
    """Factory on the test's backend: identity(*flags, store="new"|URL|None)."""
    f = Factory(tmp_path, backend, request)
    yield f
    f.teardown()


@pytest.fixture
def identity_sqlite(tmp_path, request):
    """The same on SQLite only, for tests that do not touch the store's behaviour."""
    f = Factory(tmp_path, "sqlite", request)
    yield f
    f.teardown()


# ---- token helpers ----


def b64url_decode(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def parts(token):
    h, p, s = token.split(".")
    return json.loads(b64url_decode(h)), json.loads(b64url_decode(p)), b64url_decode(s)


def verify_with_pyjwt(token, jwks, audience="loom", issuer=ISSUER):
    """Verify a token as an independent implementation would; returns the claims."""
    jwt = pytest.importorskip("jwt")
    header = jwt.get_unverified_header(token)
    keys = {k["kid"]: k for k in jwks["keys"]}
    assert header["kid"] in keys, (header, list(keys))
    key = jwt.PyJWK(keys[header["kid"]])
    return jwt.decode(token, key.key, algorithms=["ES256"], audience=audience, issuer=issuer,
                      options={"require": ["exp", "iat", "nbf", "iss", "aud", "sub", "jti"]})


def thumbprint(jwk):
    """RFC 7638 thumbprint of an EC public JWK."""
    canon = json.dumps({"crv": jwk["crv"], "kty": jwk["kty"], "x": jwk["x"], "y": jwk["y"]},
                       separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(hashlib.sha256(canon.encode()).digest()).rstrip(b"=").decode()


def assert_oauth_error(r, status, error):
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json"), r.headers
    assert r.headers.get("cache-control") == "no-store", r.headers
    assert r.headers.get("pragma") == "no-cache", r.headers
    body = r.json()
    assert body["error"] == error, body
    assert isinstance(body.get("error_description"), str) and body["error_description"], body
    if status == 401:
        assert r.headers.get("www-authenticate", "").startswith("Basic "), r.headers
    return body


def assert_problem(r, status):
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers
    p = r.json()
    assert p["status"] == status and p["title"] and p["detail"], p
    return p


# ---- bootstrap ----


def test_bootstrap_admin_random_secret(identity):
    srv = identity()
    path = os.path.join(srv.data_dir, "identity-bootstrap-secret")
    st = os.stat(path)
    assert stat.S_IMODE(st.st_mode) == 0o600
    secret = srv.bootstrap_secret()
    assert SECRET_RE.fullmatch(secret), "the bootstrap secret has the client-secret form"
    line = srv.wait_log(lambda o: o.get("msg", "").startswith("bootstrap admin created"))
    assert line and line["secret_file"] == path and line["client_id"] == "admin", line
    tok = srv.token("admin", secret)
    assert tok["scope"] == ALL_SCOPES
    # the admin can use the API
    r = srv.api("GET", "/api/v1/clients", tok["access_token"])
    assert r.status_code == 200 and [c["id"] for c in r.json()["items"]] == ["admin"], r.text
    # it has no quota: its tokens carry none and the gateway's default limit applies
    assert r.json()["items"][0]["quota"] is None, r.text
    assert "loom_quota" not in parts(tok["access_token"])[1]
    # a restart creates nothing new and keeps the file as it was
    before = open(path).read()
    srv.restart()
    assert open(path).read() == before
    assert not srv.wait_log(lambda o: o.get("msg", "").startswith("bootstrap admin"),
                            timeout=0.2)
    srv.token("admin", secret)


def test_database_files_are_private(identity_sqlite):
    # identity.db holds the private signing keys and the secret hashes: 0600 from the start,
    # and SQLite gives its -wal and -shm files the same mode
    srv = identity_sqlite()
    srv.token("admin", srv.bootstrap_secret())
    base = os.path.join(srv.data_dir, "identity.db")
    for path in (base, base + "-wal", base + "-shm"):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path


def test_bootstrap_admin_given_secret(identity):
    secret = "correct-horse-battery-staple-42"
    srv = identity(f"--identity.bootstrap-secret={secret}")
    srv.remember(secret)
    assert not os.path.exists(os.path.join(srv.data_dir, "identity-bootstrap-secret"))
    assert srv.token("admin", secret)["scope"] == ALL_SCOPES
    r = srv.token_request({"grant_type": "client_credentials"}, auth=("admin", secret + "x"))
    assert_oauth_error(r, 401, "invalid_client")


def test_bootstrap_secret_too_short_fails_start(tmp_path):
    r = run_loom("serve", "identity", f"--data-dir={tmp_path}", "--identity.listen=127.0.0.1:0",
                 "--identity.bootstrap-secret=short", timeout=30 * SLOW)
    assert r.returncode == 1, r.stderr
    assert "at least 16" in r.stderr
    assert "short" not in r.stderr.replace("at least", "")


def test_settings(tmp_path):
    r = run_loom("serve", "identity", "--print-config",
                 "--identity.bootstrap-secret=hunter2hunter2hunter2",
                 "--identity.store=postgres://u:pw-secret@h:5432/db")
    assert r.returncode == 0, r.stderr
    assert "hunter2" not in r.stdout and "pw-secret" not in r.stdout
    for key in ("token-ttl", "key-rotation", "clock-skew", "issuer", "audience",
                "max-failed-auth"):
        assert key in r.stdout
    r = run_loom("serve", "identity", f"--data-dir={tmp_path}", "--identity.token-ttl=2h")
    assert r.returncode == 2 and "token-ttl" in r.stderr, r.stderr
    r = run_loom("serve", "identity", f"--data-dir={tmp_path}", "--identity.listen=127.0.0.1:0",
                 "--identity.issuer=http://x/", timeout=30 * SLOW)
    assert r.returncode == 1 and "issuer" in r.stderr, r.stderr


# ---- tokens ----


def test_tokens_basic_and_body_credentials(identity):
    srv = identity("--identity.token-ttl=5m")
    admin = srv.admin_token()
    c = srv.create_client(admin, "fraud-scorer", ["infer", "models:read"],
                          quota={"requests_per_second": 20, "burst": 40})
    for basic in (True, False):
        t0 = int(time.time())
        r = srv.token_request({"grant_type": "client_credentials"}, auth=(c["id"], c["secret"])) \
            if basic else srv.token_request({"grant_type": "client_credentials",
                                             "client_id": c["id"], "client_secret": c["secret"]})
        assert r.status_code == 200, r.text
        assert r.headers["cache-control"] == "no-store" and r.headers["pragma"] == "no-cache"
        body = r.json()
        assert set(body) == {"access_token", "token_type", "expires_in", "scope"}, body
        assert body["token_type"] == "Bearer" and body["expires_in"] == 300
        assert body["scope"] == "models:read infer"
        header, claims, sig = parts(body["access_token"])
        assert header == {"alg": "ES256", "typ": "at+jwt", "kid": header["kid"]}, header
        assert len(sig) == 64
        assert claims["iss"] == ISSUER and claims["aud"] == "loom"
        assert claims["sub"] == c["id"] and claims["client_id"] == c["id"]
        assert claims["scope"] == "models:read infer"
        assert claims["loom_quota"] == {"rps": 20, "burst": 40}, claims
        assert claims["exp"] - claims["iat"] == 300 and claims["nbf"] == claims["iat"]
        assert abs(claims["iat"] - t0) <= 2
        assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}",
                            claims["jti"]), claims["jti"]
    # jti differs per token
    a = parts(srv.token(c["id"], c["secret"])["access_token"])[1]["jti"]
    b = parts(srv.token(c["id"], c["secret"])["access_token"])[1]["jti"]
    assert a != b
    # url-encoded Basic credentials (RFC 6749 2.3.1): encode them and they still work
    enc = base64.b64encode(f"{urllib.parse.quote(c['id'])}:{urllib.parse.quote(c['secret'])}"
                           .encode()).decode()
    r = srv.token_request({"grant_type": "client_credentials"},
                          headers={"Authorization": f"Basic {enc}"})
    assert r.status_code == 200, r.text
    # a client without a quota gets tokens without the claim
    d = srv.create_client(admin, "no-quota", ["infer"])
    assert d["quota"] is None
    assert "loom_quota" not in parts(srv.token(d["id"], d["secret"])["access_token"])[1]


def test_scope_subsets(identity):
    srv = identity()
    admin = srv.admin_token()
    c = srv.create_client(admin, "svc", ["infer", "models:read", "train"])
    cid, sec = c["id"], c["secret"]
    assert srv.token(cid, sec, scope="infer")["scope"] == "infer"
    assert srv.token(cid, sec, scope="train infer")["scope"] == "infer train"
    assert srv.token(cid, sec)["scope"] == "models:read infer train"
    tok = srv.token(cid, sec, scope="models:read")
    assert parts(tok["access_token"])[1]["scope"] == "models:read"
    for bad in ("admin", "infer admin", "nope", "", "infer  train", " infer", "infer ",
                "models:write"):
        r = srv.token_request({"grant_type": "client_credentials", "scope": bad},
                              auth=(cid, sec))
        assert_oauth_error(r, 400, "invalid_scope")


def test_grant_types_and_form_errors(identity_sqlite):
    srv = identity_sqlite()
    secret = srv.bootstrap_secret()
    auth = ("admin", secret)
    cases = [
        ({"grant_type": "password", "username": "u", "password": "p"}, None,
         400, "unsupported_grant_type"),
        ({"grant_type": "authorization_code", "code": "x"}, None, 400, "unsupported_grant_type"),
        ({"grant_type": "CLIENT_CREDENTIALS"}, None, 400, "unsupported_grant_type"),
        ({"scope": "infer"}, None, 400, "invalid_request"),
        ({"grant_type": ""}, None, 400, "invalid_request"),
    ]
    for data, raw, status, error in cases:
        r = srv.token_request(data, auth=auth, raw=raw)
        assert_oauth_error(r, status, error)
    raws = [
        "grant_type=client_credentials&grant_type=client_credentials",  # repeated
        "grant_type=client_credentials&&scope=infer",  # empty pair
        "grant_type=client_credentials&scope",  # no '='
        "grant_type=client_credentials&scope=%zz",  # bad escape
        "grant_type=client_credentials&scope=%0a",  # control character
        "grant_type=client_credentials&",  # trailing '&'
    ]
    for raw in raws:
        assert_oauth_error(srv.token_request(auth=auth, raw=raw), 400, "invalid_request")
    # not a form
    r = srv.token_request(auth=auth, raw=json.dumps({"grant_type": "client_credentials"}),
                          headers={"Content-Type": "application/json"})
    assert_oauth_error(r, 400, "invalid_request")
    r = srv.token_request(auth=auth, raw="", headers={"Content-Type":
                                                      "application/x-www-form-urlencoded"})
    assert_oauth_error(r, 400, "invalid_request")
    # a charset parameter is fine
    r = srv.token_request({"grant_type": "client_credentials"}, auth=auth,
                          headers={"Content-Type":
                                   "application/x-www-form-urlencoded; charset=UTF-8"})
    assert r.status_code == 200, r.text
    # unknown parameters are ignored (RFC 6749 3.2)
    r = srv.token_request({"grant_type": "client_credentials", "resource": "x"}, auth=auth)
    assert r.status_code == 200, r.text
    # two authentication methods at once
    r = srv.token_request({"grant_type": "client_credentials", "client_id": "admin",
                           "client_secret": secret}, auth=auth)
    assert_oauth_error(r, 400, "invalid_request")
    # body client_id that is not the Basic user
    r = srv.token_request({"grant_type": "client_credentials", "client_id": "other"}, auth=auth)
    assert_oauth_error(r, 400, "invalid_request")
    # another scheme
    r = srv.token_request({"grant_type": "client_credentials"},
                          headers={"Authorization": "Bearer abc"})
    assert_oauth_error(r, 400, "invalid_request")
    # no credentials at all, or half of them
    assert_oauth_error(srv.token_request({"grant_type": "client_credentials"}), 401,
                       "invalid_client")
    assert_oauth_error(srv.token_request({"grant_type": "client_credentials",
                                          "client_id": "admin"}), 401, "invalid_client")
    # a body over 4 KiB gets 413 with an RFC 6749 5.2 error like every other refusal here,
    # whatever its size or framing; a small one is read, so the connection is kept
    r = srv.token_request(auth=auth, raw="grant_type=client_credentials&x=" + "a" * 5000)
    assert_oauth_error(r, 413, "invalid_request")
    assert r.headers.get("connection") != "close"
    r = srv.token_request(auth=auth, raw="grant_type=client_credentials&x=" + "a" * 200000)
    assert_oauth_error(r, 413, "invalid_request")
    chunks = (c.encode() for c in ["grant_type=client_credentials&x="] + ["a" * 1000] * 5)
    r = requests.post(srv.url("/oauth/token"), data=chunks, auth=auth, timeout=30 * SLOW,
                      headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert_oauth_error(r, 413, "invalid_request")
    # exactly 4096 bytes is still a request
    body = "grant_type=client_credentials&x="
    r = srv.token_request(auth=auth, raw=body + "a" * (4096 - len(body)))
    assert r.status_code == 200, r.text


def test_bad_credentials(identity):
    srv = identity()
    secret = srv.bootstrap_secret()
    descs = set()
    for auth in [("admin", secret + "x"), ("admin", ""), ("nobody", secret),
                 ("cl_0000000000000000000000000", "lsk_x"), ("ADMIN", secret),
                 ("ad min", secret), ("admin\u00e9", secret)]:
        r = srv.token_request({"grant_type": "client_credentials"}, auth=auth)
        descs.add(assert_oauth_error(r, 401, "invalid_client")["error_description"])
    # an unknown client and a wrong secret read the same
    assert len(descs) == 1, descs
    for header in ("Basic !!!", "Basic YWRtaW4=", "Basic YWRtaW46", "Basic", "Basic YWRtaW46eA",
                   "basic " + base64.b64encode(f"admin:{secret}x".encode()).decode()):
        r = srv.token_request({"grant_type": "client_credentials"},
                              headers={"Authorization": header})
        assert_oauth_error(r, 401, "invalid_client")
    # the body form of a wrong secret
    r = srv.token_request({"grant_type": "client_credentials", "client_id": "admin",
                           "client_secret": "nope"})
    assert_oauth_error(r, 401, "invalid_client")
    # after all this, the right secret still works (fewer than 10 failures per id)
    srv.token("admin", secret)


def test_disabled_client(identity):
    srv = identity()
    admin = srv.admin_token()
    c = srv.create_client(admin, "temp", ["infer"])
    srv.token(c["id"], c["secret"])
    r = srv.api("PATCH", f"/api/v1/clients/{c['id']}", admin, json={"disabled": True})
    assert r.status_code == 200 and r.json()["disabled"] is True, r.text
    r = srv.token_request({"grant_type": "client_credentials"}, auth=(c["id"], c["secret"]))
    assert_oauth_error(r, 400, "unauthorized_client")
    # a wrong secret for a disabled client says nothing about the client
    r = srv.token_request({"grant_type": "client_credentials"}, auth=(c["id"], "x"))
    assert_oauth_error(r, 401, "invalid_client")
    r = srv.api("PATCH", f"/api/v1/clients/{c['id']}", admin, json={"disabled": False})
    assert r.status_code == 200 and r.json()["disabled"] is False
    srv.token(c["id"], c["secret"])


def test_failed_attempts_are_throttled(identity_sqlite):
    srv = identity_sqlite("--identity.max-failed-auth=3")
    admin = srv.admin_token()
    c = srv.create_client(admin, "victim", ["infer"])
    other = srv.create_client(admin, "bystander", ["infer"])
    for _ in range(3):
        r = srv.token_request({"grant_type": "client_credentials"}, auth=(c["id"], "guess"))
        assert_oauth_error(r, 401, "invalid_client")
    r = srv.token_request({"grant_type": "client_credentials"}, auth=(c["id"], "guess"))
    assert r.status_code == 429, r.text
    assert 1 <= int(r.headers["retry-after"]) <= 60
    assert r.headers["cache-control"] == "no-store"
    assert r.json()["error"] == "invalid_client"
    # the right secret waits too: that is what slows guessing down
    r = srv.token_request({"grant_type": "client_credentials"}, auth=(c["id"], c["secret"]))
    assert r.status_code == 429, r.text
    # unknown ids are throttled as well, and other clients are not affected
    for _ in range(4):
        r = srv.token_request({"grant_type": "client_credentials"}, auth=("ghost", "x"))
    assert r.status_code == 429
    srv.token(other["id"], other["secret"])
    m = srv.metrics()
    assert 'loom_identity_token_failures_total{reason="rate_limited"}' in m
    assert 'loom_identity_token_failures_total{reason="bad_secret"} 3' in m


# ---- JWT and JWKS, verified by another implementation ----


def test_jwt_verifies_with_pyjwt_and_jwks(identity):
    srv = identity()
    admin = srv.admin_token()
    c = srv.create_client(admin, "checker", ["models:read"])
    tok = srv.token(c["id"], c["secret"])["access_token"]
    r = srv.session.get(srv.url("/.well-known/jwks.json"))
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/jwk-set+json")
    max_age = int(re.search(r"max-age=(\d+)", r.headers["cache-control"]).group(1))
    assert 1 <= max_age <= 300
    jwks = r.json()
    assert len(jwks["keys"]) == 1
    k = jwks["keys"][0]
    assert set(k) == {"kty", "crv", "x", "y", "kid", "alg", "use"}, k
    assert (k["kty"], k["crv"], k["alg"], k["use"]) == ("EC", "P-256", "ES256", "sig")
    assert k["kid"] == thumbprint(k), "the kid is the key's RFC 7638 thumbprint"
    claims = verify_with_pyjwt(tok, jwks)
    assert claims["client_id"] == c["id"] and claims["scope"] == "models:read"
    # python-cryptography directly: r||s, low s, over header.payload
    ec = pytest.importorskip("cryptography.hazmat.primitives.asymmetric.ec")
    utils = pytest.importorskip("cryptography.hazmat.primitives.asymmetric.utils")
    hashes = pytest.importorskip("cryptography.hazmat.primitives.hashes")
    x = int.from_bytes(b64url_decode(k["x"]), "big")
    y = int.from_bytes(b64url_decode(k["y"]), "big")
    pub = ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()
    h64, p64, s64 = tok.split(".")
    sig = b64url_decode(s64)
    rr, ss = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
    n = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
    assert ss <= n // 2, "signatures are low-s"
    pub.verify(utils.encode_dss_signature(rr, ss), f"{h64}.{p64}".encode(),
               ec.ECDSA(hashes.SHA256()))
    # tampering is detected by the independent verifier too
    jwt = pytest.importorskip("jwt")
    forged = h64 + "." + base64.urlsafe_b64encode(json.dumps(
        {**parts(tok)[1], "scope": "admin"}).encode()).rstrip(b"=").decode() + "." + s64
    with pytest.raises(jwt.InvalidSignatureError):
        verify_with_pyjwt(forged, jwks)
    # discovery metadata points at the same places
    md = srv.session.get(srv.url("/.well-known/oauth-authorization-server")).json()
    assert md["issuer"] == ISSUER
    assert md["token_endpoint"] == ISSUER + "/oauth/token"
    assert md["jwks_uri"] == ISSUER + "/.well-known/jwks.json"
    assert md["grant_types_supported"] == ["client_credentials"]
    assert md["scopes_supported"] == ALL_SCOPES.split()


def test_key_rotation(identity):
    ttl = 3
    srv = identity("--identity.key-rotation=2s", f"--identity.token-ttl={ttl}s",
                   "--identity.clock-skew=0s")
    secret = srv.bootstrap_secret()
    first = srv.token("admin", secret)["access_token"]
    kid1 = parts(first)[0]["kid"]
    exp1 = parts(first)[1]["exp"]
    jwks = srv.jwks()
    assert kid1 in [k["kid"] for k in jwks["keys"]]
    max_age = int(re.search(r"max-age=(\d+)", srv.session.get(
        srv.url("/.well-known/jwks.json")).headers["cache-control"]).group(1))
    # the next key is published min(key-rotation/2, key-prepublish) = 1 s before it signs, and
    # a cached JWKS expires no later than that (max-age is at least 1 s)
    assert max_age == 1, max_age
    # a new key takes over; it was in the JWKS (at least ~1 s) before its first token
    published = {}
    deadline = time.monotonic() + 15 * SLOW
    while True:
        now = time.monotonic()
        for k in srv.jwks()["keys"]:
            published.setdefault(k["kid"], now)
        tok = srv.token("admin", secret)["access_token"]
        kid2 = parts(tok)[0]["kid"]
        if kid2 != kid1:
            break
        assert time.monotonic() < deadline, "the signing key did not rotate"
        time.sleep(0.05)
    assert kid2 in published, "a key signed before it was published"
    assert time.monotonic() - published[kid2] >= 0.7, "the next key was published too late"
    assert srv.wait_log(lambda o: o.get("msg") == "signing key created" and o["kid"] == kid2
                        and o["signs_in_s"] >= 1.0)
    kids = [k["kid"] for k in srv.jwks()["keys"]]
    assert kid1 in kids and kid2 in kids, kids
    if time.time() < exp1:
        verify_with_pyjwt(first, srv.jwks())
    verify_with_pyjwt(tok, srv.jwks())
    # the old key leaves the JWKS, and only once its last token has expired
    deadline = time.monotonic() + 20 * SLOW
    while kid1 in [k["kid"] for k in srv.jwks()["keys"]]:
        assert time.monotonic() < deadline, "the retired key stayed in the JWKS"
        time.sleep(0.2)
    assert time.time() >= exp1, "a key left the JWKS while one of its tokens was valid"
    assert srv.wait_log(lambda o: o.get("msg") == "signing key retired" and o["kid"] == kid1)
    assert srv.wait_log(lambda o: o.get("msg") == "expired signing keys deleted")
    # keys survive a restart: the newest one still signs if it is not due
    m = srv.metric("loom_identity_key_rotations_total")
    assert m and m >= 2


def test_keys_persist_across_restart(identity):
    srv = identity()
    t1 = srv.admin_token()
    kid = parts(t1)[0]["kid"]
    srv.restart()
    assert parts(srv.admin_token())[0]["kid"] == kid
    # a token from before the restart still opens the API
    assert srv.api("GET", "/api/v1/clients", t1).status_code == 200


# ---- the clients API ----


def test_clients_api_authorization(identity):
    srv = identity()
    admin = srv.admin_token()
    c = srv.create_client(admin, "reader", ["models:read", "infer"])
    user = srv.token(c["id"], c["secret"])["access_token"]
    r = srv.api("GET", "/api/v1/clients")
    assert_problem(r, 401)
    assert r.headers["www-authenticate"] == 'Bearer realm="loom"'
    for bad in ("garbage", admin + "x", admin[:-2], "a.b.c", admin.replace(".", ". ")):
        r = srv.api("GET", "/api/v1/clients", bad)
        assert_problem(r, 401)
        assert 'error="invalid_token"' in r.headers["www-authenticate"], r.headers
    r = srv.api("GET", "/api/v1/clients", headers={"Authorization": f"Basic {admin}"})
    assert_problem(r, 401)
    r = srv.api("GET", "/api/v1/clients", user)
    assert_problem(r, 403)
    assert 'error="insufficient_scope"' in r.headers["www-authenticate"]
    assert 'scope="admin"' in r.headers["www-authenticate"]
    # an admin client asking for less than admin gets less
    narrow = srv.token("admin", srv.bootstrap_secret(), scope="infer")["access_token"]
    assert_problem(srv.api("POST", "/api/v1/clients", narrow, json={"name": "x",
                                                                     "scopes": []}), 403)
    # forged admin tokens: alg none, HS256 keyed with the public JWK, a foreign key under our
    # kid, a token from another issuer
    h, p, s = admin.split(".")
    header = parts(admin)[0]

    def enc(obj):
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    none = enc({**header, "alg": "none"}) + "." + p + "."
    r = srv.api("GET", "/api/v1/clients", none)
    assert_problem(r, 401)
    import hmac
    jwk = json.dumps(srv.jwks()["keys"][0]).encode()
    hs_input = (enc({**header, "alg": "HS256"}) + "." + p).encode()
    hs = hs_input.decode() + "." + base64.urlsafe_b64encode(
        hmac.new(jwk, hs_input, hashlib.sha256).digest()).rstrip(b"=").decode()
    assert_problem(srv.api("GET", "/api/v1/clients", hs), 401)
    ec = pytest.importorskip("cryptography.hazmat.primitives.asymmetric.ec")
    hashes = pytest.importorskip("cryptography.hazmat.primitives.hashes")
    utils = pytest.importorskip("cryptography.hazmat.primitives.asymmetric.utils")
    foreign = ec.generate_private_key(ec.SECP256R1())
    der = foreign.sign(f"{h}.{p}".encode(), ec.ECDSA(hashes.SHA256()))
    rr, ss = utils.decode_dss_signature(der)
    fsig = base64.urlsafe_b64encode(rr.to_bytes(32, "big") + ss.to_bytes(32, "big")).rstrip(
        b"=").decode()
    r = srv.api("GET", "/api/v1/clients", f"{h}.{p}.{fsig}")
    assert_problem(r, 401)
    assert "bad_signature" in r.headers["www-authenticate"]
    other = identity("--identity.issuer=https://other.test")
    otok = other.admin_token()
    r = srv.api("GET", "/api/v1/clients", otok)
    assert_problem(r, 401)
    assert "unknown_kid" in r.headers["www-authenticate"]
    # an expired token (2 s: exp is iat + ttl in whole seconds, so a token lives between ttl - 1
    # and ttl seconds; with 1 s the first call could already come after exp on a busy machine)
    short = identity("--identity.token-ttl=2s", "--identity.clock-skew=0s")
    stok = short.admin_token()
    assert short.api("GET", "/api/v1/clients", stok).status_code == 200
    time.sleep(3.1)
    r = short.api("GET", "/api/v1/clients", stok)
    assert_problem(r, 401)
    assert "expired" in r.headers["www-authenticate"]


def test_clients_crud(identity):
    srv = identity()
    admin = srv.admin_token()
    c = srv.create_client(admin, "fraud-api", ["infer", "models:read"],
                          quota={"requests_per_second": 12.5, "burst": 30})
    assert re.fullmatch(r"cl_[0-9a-z]{26}", c["id"]), c["id"]
    assert SECRET_RE.fullmatch(c["secret"])
    assert c["name"] == "fraud-api" and c["scopes"] == ["models:read", "infer"]
    assert c["quota"] == {"requests_per_second": 12.5, "burst": 30}
    assert c["disabled"] is False and c["created_at"].endswith("Z")
    # Location, and the secret is never shown again
    r = srv.api("GET", f"/api/v1/clients/{c['id']}", admin)
    assert r.status_code == 200
    got = r.json()
    assert "secret" not in got and not any("hash" in k for k in got), got
    assert "$argon2" not in r.text
    assert {k: got[k] for k in ("id", "name", "scopes", "quota")} == \
        {k: c[k] for k in ("id", "name", "scopes", "quota")}
    # defaults: no quota (the gateway's default limit applies)
    d = srv.create_client(admin, "defaults", [])
    assert d["quota"] is None and d["scopes"] == []
    r = srv.api("POST", "/api/v1/clients", admin,
                json={"name": "null-quota", "scopes": [], "quota": None})
    assert r.status_code == 201 and r.json()["quota"] is None, r.text
    r = srv.token_request({"grant_type": "client_credentials"}, auth=(d["id"], d["secret"]))
    assert_oauth_error(r, 400, "invalid_scope")
    # validation
    bad_bodies = [
        {"name": "x"}, {"scopes": ["infer"]}, {"name": "", "scopes": []},
        {"name": "-x", "scopes": []}, {"name": "a b", "scopes": []},
        {"name": "x" * 65, "scopes": []}, {"name": "x", "scopes": ["root"]},
        {"name": "x", "scopes": "infer"}, {"name": "x", "scopes": [1]},
        {"name": "x", "scopes": [], "quota": {"requests_per_second": 0}},
        {"name": "x", "scopes": [], "quota": {"burst": 0}},
        {"name": "x", "scopes": [], "quota": {"burst": 1.5}},
        {"name": "x", "scopes": [], "quota": {"rps": 1}},
        {"name": "x", "scopes": [], "quota": {}},
        {"name": "x", "scopes": [], "quota": {"requests_per_second": 5}},
        {"name": "x", "scopes": [], "quota": {"burst": 5}},
        {"name": "x", "scopes": [], "quota": 5},
        {"name": "x", "scopes": [], "secret": "mine"},
        {"name": "x", "scopes": [], "id": "cl_mine"},
        ["name"],
    ]
    for body in bad_bodies:
        assert_problem(srv.api("POST", "/api/v1/clients", admin, json=body), 400)
    r = srv.api("POST", "/api/v1/clients", admin, data='{"name":"a","name":"b","scopes":[]}',
                headers={"Content-Type": "application/json"})
    assert_problem(r, 400)
    r = srv.api("POST", "/api/v1/clients", admin, data="name=x",
                headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert_problem(r, 415)
    r = srv.api("POST", "/api/v1/clients", admin, json={"name": "fraud-api", "scopes": []})
    assert_problem(r, 409)
    # the refusal names the client that has the name, and no other id
    ids = set(re.findall(r"cl_[a-z0-9]+", r.json()["detail"]))
    assert ids == {c["id"]}, (r.json()["detail"], c["id"])
    # patch
    r = srv.api("PATCH", f"/api/v1/clients/{c['id']}", admin,
                json={"scopes": ["train"], "quota": {"burst": 5}})
    assert r.status_code == 200, r.text
    p = r.json()
    assert p["scopes"] == ["train"] and p["quota"] == {"requests_per_second": 12.5, "burst": 5}
    assert p["updated_at"] >= p["created_at"]
    for body in ({}, {"name": "new"}, {"secret": "x"}, {"disabled": "yes"},
                 {"scopes": ["bogus"]}, {"quota": {}}, {"quota": "none"}):
        assert_problem(srv.api("PATCH", f"/api/v1/clients/{c['id']}", admin, json=body), 400)
    # a quota cleared, then one field of it refused (the client has none), then set whole
    r = srv.api("PATCH", f"/api/v1/clients/{c['id']}", admin, json={"quota": None})
    assert r.status_code == 200 and r.json()["quota"] is None, r.text
    assert "loom_quota" not in parts(srv.token(c["id"], c["secret"])["access_token"])[1]
    r = srv.api("PATCH", f"/api/v1/clients/{c['id']}", admin, json={"quota": {"burst": 7}})
    assert "has no quota" in assert_problem(r, 409)["detail"]
    assert srv.api("GET", f"/api/v1/clients/{c['id']}", admin).json()["quota"] is None
    r = srv.api("PATCH", f"/api/v1/clients/{c['id']}", admin,
                json={"quota": {"requests_per_second": 3, "burst": 7}})
    assert r.status_code == 200 and r.json()["quota"] == {"requests_per_second": 3, "burst": 7}
    assert parts(srv.token(c["id"], c["secret"])["access_token"])[1]["loom_quota"] == \
        {"rps": 3, "burst": 7}
    r = srv.api("GET", "/api/v1/clients", admin)
    quotas = {x["id"]: x["quota"] for x in r.json()["items"]}
    assert quotas[c["id"]] == {"requests_per_second": 3, "burst": 7} and quotas["admin"] is None
    assert srv.token(c["id"], c["secret"])["scope"] == "train"
    # rotate: the new secret works, the old one does not
    r = srv.api("POST", f"/api/v1/clients/{c['id']}/rotate-secret", admin)
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store", r.text
    new = r.json()["secret"]
    assert new != c["secret"] and SECRET_RE.fullmatch(new)
    srv.token(c["id"], new)
    r = srv.token_request({"grant_type": "client_credentials"}, auth=(c["id"], c["secret"]))
    assert_oauth_error(r, 401, "invalid_client")
    # not found
    for method in ("GET", "PATCH", "DELETE"):
        kw = {"json": {"disabled": True}} if method == "PATCH" else {}
        assert_problem(srv.api(method, "/api/v1/clients/cl_nope", admin, **kw), 404)
        assert_problem(srv.api(method, "/api/v1/clients/NOT-AN-ID", admin, **kw), 404)
    assert_problem(srv.api("POST", "/api/v1/clients/cl_nope/rotate-secret", admin), 404)
    # delete
    assert srv.api("DELETE", f"/api/v1/clients/{c['id']}", admin).status_code == 204
    assert_problem(srv.api("GET", f"/api/v1/clients/{c['id']}", admin), 404)
    r = srv.token_request({"grant_type": "client_credentials"}, auth=(c["id"], new))
    assert_oauth_error(r, 401, "invalid_client")


def test_last_admin_is_protected(identity):
    srv = identity()
    admin = srv.admin_token()
    for method, path, body in (("DELETE", "/api/v1/clients/admin", None),
                               ("PATCH", "/api/v1/clients/admin", {"disabled": True}),
                               ("PATCH", "/api/v1/clients/admin", {"scopes": ["infer"]})):
        r = srv.api(method, path, admin, json=body) if body else srv.api(method, path, admin)
        assert_problem(r, 409)
    second = srv.create_client(admin, "ops", ["admin"])
    r = srv.api("PATCH", "/api/v1/clients/admin", admin, json={"disabled": True})
    assert r.status_code == 200, r.text
    ops = srv.token(second["id"], second["secret"])["access_token"]
    assert_problem(srv.api("DELETE", f"/api/v1/clients/{second['id']}", ops), 409)


def test_list_pagination(identity):
    srv = identity()
    admin = srv.admin_token()
    made = {srv.create_client(admin, f"c{i}", ["infer"])["id"] for i in range(5)}
    seen, cursor, pages = [], None, 0
    while True:
        q = "?limit=2" + (f"&cursor={cursor}" if cursor else "")
        r = srv.api("GET", "/api/v1/clients" + q, admin)
        assert r.status_code == 200, r.text
        body = r.json()
        assert len(body["items"]) <= 2
        seen += [c["id"] for c in body["items"]]
        assert all("secret" not in c for c in body["items"])
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(seen) and len(seen) == len(set(seen)) == 6
    assert made | {"admin"} == set(seen) and pages == 3
    for q in ("?limit=0", "?limit=501", "?limit=x", "?cursor=BAD%20ID"):
        assert_problem(srv.api("GET", "/api/v1/clients" + q, admin), 400)


# The identity_clients table as migration identity/1 made it: every client had a quota, 50/s:100
# when none was given.
CLIENTS_V1 = """
CREATE TABLE clients_v1 (id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, scopes TEXT NOT NULL,
  admin BIGINT NOT NULL, rps DOUBLE PRECISION NOT NULL, burst BIGINT NOT NULL,
  disabled BIGINT NOT NULL, created_ms BIGINT NOT NULL, updated_ms BIGINT NOT NULL,
  secret_rotated_ms BIGINT NOT NULL, secret_hash TEXT NOT NULL);
INSERT INTO clients_v1 SELECT id, name, scopes, admin, COALESCE(rps, 50), COALESCE(burst, 100),
  disabled, created_ms, updated_ms, secret_rotated_ms, secret_hash FROM identity_clients;
DROP TABLE identity_clients;
ALTER TABLE clients_v1 RENAME TO identity_clients;
DELETE FROM loom_schema_migrations WHERE component = 'identity' AND version = 2;
"""


def test_migration_makes_the_quota_optional(identity, backend, request):
    # a store of the version that gave every client a quota: the rows with the old default
    # (50/s:100) lose it, the others keep theirs, and the columns take NULL
    srv = identity()
    admin = srv.admin_token()
    own = srv.create_client(admin, "own", ["infer"], quota={"requests_per_second": 12.5,
                                                             "burst": 30})
    plain = srv.create_client(admin, "plain", ["infer"])
    srv.stop()
    if backend == "postgres":
        request.getfixturevalue("postgres").sql(srv.store, CLIENTS_V1)
    else:
        import sqlite3
        db = sqlite3.connect(os.path.join(srv.data_dir, "identity.db"))
        db.executescript(CLIENTS_V1)
        db.close()
    srv.start()
    admin = srv.admin_token()
    quotas = {c["id"]: c["quota"] for c in srv.api("GET", "/api/v1/clients", admin).json()["items"]}
    assert quotas == {"admin": None, own["id"]: {"requests_per_second": 12.5, "burst": 30},
                      plain["id"]: None}, quotas
    assert "loom_quota" not in parts(admin)[1]
    assert parts(srv.token(own["id"], own["secret"])["access_token"])[1]["loom_quota"] == \
        {"rps": 12.5, "burst": 30}
    r = srv.api("PATCH", f"/api/v1/clients/{own['id']}", admin, json={"quota": None})
    assert r.status_code == 200 and r.json()["quota"] is None, r.text
    srv.restart()  # the migration is recorded: a restart does not apply it again
    r = srv.api("GET", f"/api/v1/clients/{own['id']}", srv.admin_token())
    assert r.status_code == 200 and r.json()["quota"] is None, r.text


def test_replicas_share_a_postgres_store(identity, backend):
    if backend != "postgres":
        pytest.skip("replicas share a store on PostgreSQL")
    a = identity()
    b = identity(store=a.store)
    secret = a.bootstrap_secret()
    b.remember(secret)
    assert not os.path.exists(os.path.join(b.data_dir, "identity-bootstrap-secret"))
    ta = a.token("admin", secret)["access_token"]
    tb = b.token("admin", secret)["access_token"]
    assert parts(ta)[0]["kid"] == parts(tb)[0]["kid"], "one signing key for both replicas"
    assert b.api("GET", "/api/v1/clients", ta).status_code == 200
    c = a.create_client(ta, "shared", ["infer"])
    b.remember(c["secret"])
    assert b.token(c["id"], c["secret"])["scope"] == "infer"
    assert a.jwks() == b.jwks()


# ---- logs ----


def test_no_secret_in_logs(identity):
    srv = identity()
    admin = srv.admin_token()
    c = srv.create_client(admin, "logged", ["infer"])
    srv.token(c["id"], c["secret"], basic=False)
    srv.token(c["id"], c["secret"])
    srv.api("POST", f"/api/v1/clients/{c['id']}/rotate-secret", admin)
    srv.token_request({"grant_type": "client_credentials"}, auth=(c["id"], c["secret"]))
    srv.token_request({"grant_type": "client_credentials", "client_id": c["id"],
                       "client_secret": c["secret"] + "typo"})
    srv.api("GET", "/api/v1/clients", admin + "x")
    srv.stop()
    text = srv.stderr_text()
    assert len(srv.secrets) >= 6
    for s in srv.secrets:
        assert s not in text
    # the debug level did log the requests, with their paths but not their bodies
    assert '"msg":"request"' in text and "/oauth/token" in text
    assert '"msg":"token issued"' in text and '"msg":"token refused"' in text


# ---- the CLI ----


def cli(srv, *args, env=None):
    e = {"LOOM_IDENTITY": srv.base}
    e.update(env or {})
    r = run_loom("clients", *args, f"--data-dir={srv.data_dir}", env=e, timeout=60 * SLOW)
    for m in SECRET_RE.findall(r.stdout):
        srv.remember(m)
    return r


def test_cli(identity_sqlite):
    if "Usage: loom clients" not in run_loom("clients", "--help").stdout:
        pytest.skip("loom clients is not wired into cmd/main.c yet")
    srv = identity_sqlite()
    r = cli(srv, "create", "cli-made", "--scopes", "infer,models:read", "--rps", "7",
            "--burst", "9")
    assert r.returncode == 0, r.stderr
    assert "cannot be shown again" in r.stderr
    fields = dict(line.split(None, 1) for line in r.stdout.strip().splitlines())
    cid, secret = fields["id"], fields["secret"]
    assert fields["scopes"] == "models:read infer" and fields["requests/second"] == "7"
    assert fields["burst"] == "9"
    # without --rps and --burst: no quota; one without the other is a usage error
    r = cli(srv, "create", "cli-plain", "--scopes", "infer")
    assert r.returncode == 0, r.stderr
    plain = dict(line.split(None, 1) for line in r.stdout.strip().splitlines())
    assert plain["quota"].startswith("none") and "requests/second" not in plain, r.stdout
    assert cli(srv, "create", "cli-half", "--scopes", "infer", "--rps", "3").returncode == 2
    assert srv.token(cid, secret)["scope"] == "models:read infer"
    r = cli(srv, "list")
    assert r.returncode == 0 and cid in r.stdout and "admin" in r.stdout, r.stderr
    assert secret not in r.stdout
    r = cli(srv, "list", "--json")
    assert r.returncode == 0 and {c["id"] for c in json.loads(r.stdout)["items"]} == \
        {"admin", cid, plain["id"]}
    r = cli(srv, "show", cid)
    assert r.returncode == 0 and "cli-made" in r.stdout
    assert not SECRET_RE.search(r.stdout) and "\nsecret " not in r.stdout
    assert cli(srv, "disable", cid).returncode == 0
    rr = srv.token_request({"grant_type": "client_credentials"}, auth=(cid, secret))
    assert_oauth_error(rr, 400, "unauthorized_client")
    assert cli(srv, "enable", cid).returncode == 0
    r = cli(srv, "rotate", cid)
    assert r.returncode == 0 and "cannot be shown again" in r.stderr
    new = dict(line.split(None, 1) for line in r.stdout.strip().splitlines())["secret"]
    srv.token(cid, new)
    assert cli(srv, "delete", cid).returncode == 0
    r = cli(srv, "show", cid)
    assert r.returncode == 1 and "404" in r.stderr
    # explicit credentials through the environment; wrong ones fail with a message
    r = cli(srv, "list", env={"LOOM_CLIENT_ID": "admin",
                              "LOOM_CLIENT_SECRET": srv.bootstrap_secret()})
    assert r.returncode == 0
    r = cli(srv, "list", env={"LOOM_CLIENT_ID": "admin", "LOOM_CLIENT_SECRET": "wrong"})
    assert r.returncode == 1 and "401" in r.stderr and "wrong" not in r.stderr
    # usage errors
    assert cli(srv, "create", "x").returncode == 2
    assert cli(srv, "frobnicate").returncode == 2
    r = run_loom("clients", "list", "--data-dir=/nonexistent",
                 env={"LOOM_IDENTITY": srv.base})
    assert r.returncode == 2 and "credentials" in r.stderr
    r = run_loom("clients", "list", "--identity=http://127.0.0.1:1", "--client-id=a",
                 "--client-secret=b")
    assert r.returncode == 1 and "cannot reach" in r.stderr
    assert run_loom("clients", "--help").returncode == 0
