# SPDX-License-Identifier: Apache-2.0
"""Security suite of the API gateway: forged and broken bearer tokens, and the authorization
matrix of every route against every scope.

Tokens are forged here with python3-cryptography. Those that need a valid signature (expired,
not yet valid, wrong audience or issuer, missing claims, a high-s signature...) are signed with
identity's real signing key, read from identity's own SQLite store, so that each one is refused
for the one reason it is built for and not for its signature; a token made the same way with
good claims must pass, which proves the forging is right. Others use keys of the attacker's
(wrong key, alg confusion with the public key as an HMAC secret, alg none, embedded jwk/jku).
Every forged token must get 401 with WWW-Authenticate error="invalid_token"; identity's real
tokens must pass. The JWKS refresh that an unknown kid triggers must be rate-limited, and a key
identity rotates in must be picked up through that refresh.

The matrix sends every route of the gateway's table with a token of each single scope (from
identity, client credentials with scope=...): no route may answer 2xx to a scope it does not
need (those get 403 insufficient_scope), and the scope it needs must never get 401 or 403.
"""

import base64
import hashlib
import hmac
import json
import os
import sqlite3
import time
import uuid

import pytest
import requests
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from test_gateway import (ADMIN_SECRET, ISSUER, MODEL, SCOPES, SLOW, Backends, EchoUpstream,
                          Gateway, infer_body)

N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551  # P-256 order
AUDIENCE = "loom"


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def enc(obj):
    return b64(obj if isinstance(obj, bytes) else json.dumps(obj, separators=(",", ":")).encode())


def es256_raw(key, data, high_s=False):
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    if s > N // 2:
        s = N - s
    if high_s:
        s = N - s
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def jws(header, payload, signer):
    h, p = enc(header), enc(payload)
    return f"{h}.{p}.{b64(signer((h + '.' + p).encode()))}"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sec")
    b = Backends(tmp).start()
    echo = EchoUpstream()
    g = Gateway(tmp, b, "--gateway.client-rate-limits=admin=100000/s:100000",
                "--gateway.leeway=30s",
                "--gateway.anonymous-rate-limit=100000/s:100000",
                "--gateway.jwks-refresh=1h", "--gateway.jwks-min-refresh=5s",
                ingest=echo.addr).start()
    db = sqlite3.connect(f"file:{b.identity_db()}?mode=ro", uri=True)
    kid, pem = db.execute("SELECT kid, private_pem FROM identity_keys ORDER BY created_ms DESC "
                          "LIMIT 1").fetchone()
    db.close()
    key = serialization.load_pem_private_key(pem.encode(), None)
    yield {"gw": g, "backends": b, "kid": kid, "key": key, "echo": echo}
    g.stop()
    b.proc.stop()
    echo.close()


def claims(**over):
    now = int(time.time())
    c = {"iss": ISSUER, "sub": "admin", "aud": AUDIENCE, "exp": now + 300, "nbf": now - 5,
         "iat": now - 5, "jti": str(uuid.uuid4()), "client_id": "admin",
         "scope": " ".join(SCOPES)}
    c.update(over)
    return {k: v for k, v in c.items() if v is not None}


def header(kid, **over):
    h = {"alg": "ES256", "typ": "at+jwt", "kid": kid}
    h.update(over)
    return {k: v for k, v in h.items() if v is not None}


def forged_tokens(env):
    """(name, token) pairs, each of which must be refused."""
    kid, key = env["kid"], env["key"]
    real = lambda d: es256_raw(key, d)
    attacker = ec.generate_private_key(ec.SECP256R1())
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pub_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    nums = key.public_key().public_numbers()
    xy = nums.x.to_bytes(32, "big") + nums.y.to_bytes(32, "big")
    now = int(time.time())
    good = jws(header(kid), claims(), real)
    gh, gp, gs = good.split(".")
    t = []

    def add(name, tok):
        t.append((name, tok))

    # algorithm attacks
    add("alg none", f"{enc(header(kid, alg='none'))}.{enc(claims())}.")
    add("alg none, no kid", f"{enc({'alg': 'none', 'typ': 'at+jwt'})}.{enc(claims())}.")
    add("alg None", f"{enc(header(kid, alg='None'))}.{enc(claims())}.")
    add("alg NONE with a signature", f"{enc(header(kid, alg='NONE'))}.{enc(claims())}.{gs}")
    for name, secret in (("public key PEM", pub_pem), ("public x||y", xy),
                         ("kid as secret", kid.encode())):
        add(f"HS256 keyed with the {name}",
            jws(header(kid, alg="HS256"), claims(),
                lambda d, s=secret: hmac.new(s, d, hashlib.sha256).digest()))
    add("HS512 keyed with the public key PEM",
        jws(header(kid, alg="HS512"), claims(),
            lambda d: hmac.new(pub_pem, d, hashlib.sha512).digest()))
    add("RS256 on the ES256 kid", jws(header(kid, alg="RS256"), claims(),
                                      lambda d: rsa_key.sign(d, padding.PKCS1v15(),
                                                             hashes.SHA256())))
    add("PS256 on the ES256 kid", jws(header(kid, alg="PS256"), claims(),
                                      lambda d: rsa_key.sign(d, padding.PSS(
                                          padding.MGF1(hashes.SHA256()), 32), hashes.SHA256())))
    add("ES384 header", jws(header(kid, alg="ES384"), claims(), real))
    add("ES256K header", jws(header(kid, alg="ES256K"), claims(), real))
    add("alg missing", jws(header(kid, alg=None), claims(), real))
    # keys
    add("signed by another key, real kid", jws(header(kid), claims(),
                                               lambda d: es256_raw(attacker, d)))
    add("signed by another key, unknown kid", jws(header("attacker-1"), claims(),
                                                  lambda d: es256_raw(attacker, d)))
    add("real key, unknown kid", jws(header("not-a-kid"), claims(), real))
    add("no kid", jws(header(None), claims(), real))
    add("kid of 200 bytes", jws(header("k" * 200), claims(), real))
    jwk = {"kty": "EC", "crv": "P-256",
           "x": b64(attacker.public_key().public_numbers().x.to_bytes(32, "big")),
           "y": b64(attacker.public_key().public_numbers().y.to_bytes(32, "big"))}
    add("embedded jwk of the attacker", jws(header("attacker-2", jwk=jwk), claims(),
                                            lambda d: es256_raw(attacker, d)))
    add("jku to the attacker", jws(header("attacker-3", jku="http://127.0.0.1:1/jwks.json"),
                                   claims(), lambda d: es256_raw(attacker, d)))
    # the signature
    add("high-s signature", jws(header(kid), claims(), lambda d: es256_raw(key, d, True)))
    add("signature truncated", f"{gh}.{gp}.{gs[:-2]}")
    add("signature of 65 bytes", f"{gh}.{gp}.{b64(base64.urlsafe_b64decode(gs + '==') + b'x')}")
    add("signature zeroed", f"{gh}.{gp}.{b64(bytes(64))}")
    add("signature r=n, s=1", f"{gh}.{gp}.{b64(N.to_bytes(32, 'big') + (1).to_bytes(32, 'big'))}")
    add("DER signature", f"{gh}.{gp}.{b64(key.sign((gh + '.' + gp).encode(), ec.ECDSA(hashes.SHA256())))}")
    add("payload swapped (scope raised)", f"{gh}.{enc(claims(scope='admin'))}.{gs}")
    add("header swapped (kid changed)", f"{enc(header('other'))}.{gp}.{gs}")
    # time
    add("expired", jws(header(kid), claims(exp=now - 3600), real))
    add("expired beyond the leeway", jws(header(kid), claims(exp=now - 45), real))
    add("not yet valid (nbf)", jws(header(kid), claims(nbf=now + 600), real))
    add("issued in the future (iat)", jws(header(kid), claims(iat=now + 600), real))
    add("exp missing", jws(header(kid), claims(exp=None), real))
    add("exp a string", jws(header(kid), claims(exp=str(now + 300)), real))
    add("exp a float", jws(header(kid), claims(exp=now + 300.5), real))
    # audience and issuer
    add("wrong audience", jws(header(kid), claims(aud="someone-else"), real))
    add("audience array without ours", jws(header(kid), claims(aud=["a", "b"]), real))
    add("audience missing", jws(header(kid), claims(aud=None), real))
    add("wrong issuer", jws(header(kid), claims(iss="http://evil.example"), real))
    add("issuer with a trailing slash", jws(header(kid), claims(iss=ISSUER + "/"), real))
    add("issuer missing", jws(header(kid), claims(iss=None), real))
    # profile
    add("client_id missing", jws(header(kid), claims(client_id=None), real))
    add("sub missing", jws(header(kid), claims(sub=None), real))
    add("typ JWT (an ID token, not an access token)", jws(header(kid, typ="JWT"), claims(), real))
    add("crit header", jws(header(kid, crit=["exp"]), claims(), real))
    add("scope not a string", jws(header(kid), claims(scope=["admin"]), real))
    # encoding
    add("padded base64", f"{gh}==.{gp}.{gs}")
    add("standard base64 alphabet", f"{gh}.{gp}.{gs.replace('-', '+').replace('_', '/')}+/")
    add("trailing garbage part", good + ".extra")
    add("trailing dot", good + ".")
    add("two parts", f"{gh}.{gp}")
    add("five parts (JWE shape)", f"{gh}.{gp}.{gs}.aaaa.bbbb")
    add("whitespace inside", f"{gh}. {gp}.{gs}")
    add("header not JSON", jws(b"not json", claims(), real))
    add("payload not JSON", jws(header(kid), b"{not json", real))
    add("payload an array", jws(header(kid), b"[1,2,3]", real))
    add("duplicate kid in the header",
        jws(('{"alg":"ES256","typ":"at+jwt","kid":"%s","kid":"x"}' % kid).encode(), claims(),
            real))
    add("duplicate scope claim", jws(header(kid), (json.dumps(claims())[:-1] +
                                                   ',"scope":"admin"}').encode(), real))
    add("huge token (9 KiB)", good + "A" * 9000)
    add("huge but well-signed (9 KiB of claims)", jws(header(kid), claims(pad="x" * 9000), real))
    add("empty token", "")
    add("not a JWT at all", "hello")
    return t, good


def get_models(g, token, scheme="Bearer"):
    return requests.get(g.base + "/api/v1/models",
                        headers={"Authorization": f"{scheme} {token}".rstrip()}, timeout=10)


def test_forged_tokens_are_refused(env):
    g = env["gw"]
    tokens, good = forged_tokens(env)
    # the forging is right: the same construction with good claims passes
    r = get_models(g, good)
    assert r.status_code == 200, r.text
    assert len(tokens) >= 40, len(tokens)
    accepted = []
    for name, tok in tokens:
        for r in (get_models(g, tok),
                  requests.post(g.base + f"/v2/models/{MODEL}/infer", json=infer_body(),
                                headers={"Authorization": "Bearer " + tok}, timeout=10)):
            if r.status_code != 401:
                accepted.append((name, r.status_code, r.text[:200]))
                continue
            www = r.headers.get("WWW-Authenticate", "")
            assert www.startswith('Bearer realm="loom"'), (name, www)
            if tok:
                assert 'error="invalid_token"' in www, (name, www)
            assert r.headers["content-type"].startswith("application/problem+json")
            assert tok[:40] not in r.text or not tok  # the token is never echoed
    assert not accepted, accepted
    print(f"\n{len(tokens)} forged or broken tokens, all refused with 401 on two routes")


def test_quota_claim(env):
    # the rate of a client is the loom_quota its (verified) token carries; a token without it,
    # or with one out of bounds, gets --gateway.rate-limit (100/s:200 here)
    g, kid, key = env["gw"], env["kid"], env["key"]
    real = lambda d: es256_raw(key, d)
    for quota, q in (({"rps": 2, "burst": 3}, 3), (None, 200), ({"rps": 0, "burst": 3}, 200),
                     ({"rps": 2}, 200), ("3/s", 200), ({"rps": 5, "burst": 0.5}, 200)):
        cid = "quota-" + uuid.uuid4().hex[:8]
        tok = jws(header(kid), claims(client_id=cid, sub=cid, loom_quota=quota), real)
        r = get_models(g, tok)
        assert r.status_code == 200, r.text
        assert r.headers["RateLimit-Policy"].startswith(f'"client";q={q};'), (quota, r.headers)


def test_other_schemes_and_missing_credentials(env):
    g = env["gw"]
    tok = g.token("models:read")
    # RFC 6750 3.1: a request without bearer credentials (no Authorization, another scheme,
    # the scheme alone) gets a challenge without an error code; invalid_token is for a token
    # that was presented and refused
    for r in (get_models(g, tok, "Basic"), get_models(g, tok, "Token"), get_models(g, "", "Bearer"),
              get_models(g, "   ", "Bearer"), requests.get(g.base + "/api/v1/models", timeout=10),
              requests.get(g.base + "/api/v1/models", timeout=10,
                           auth=("admin", ADMIN_SECRET))):  # client credentials are no bearer
        assert r.status_code == 401, r.text
        assert r.headers["WWW-Authenticate"] == 'Bearer realm="loom"', r.headers
    r = get_models(g, "not-a-token")
    assert r.status_code == 401 and 'error="invalid_token"' in r.headers["WWW-Authenticate"]
    # the scheme is case-insensitive (RFC 9110 11.1); surrounding spaces are fine
    assert get_models(g, tok, "bearer").status_code == 200
    assert get_models(g, tok + "  ", "BEARER").status_code == 200


def test_token_guessing_is_rate_limited(env, tmp_path):
    """Refused credentials count against the client's address (the anonymous limit)."""
    g = Gateway(tmp_path, env["backends"], "--gateway.anonymous-rate-limit=1/m:5",
                name="gwguess").start()
    try:
        codes = [get_models(g, f"guess.{i}.x").status_code for i in range(8)]
        assert codes[:5] == [401] * 5 and codes[5:] == [429] * 3, codes
        r = get_models(g, "guess.9.x")
        assert r.headers["RateLimit-Policy"].startswith('"address";q=5')
        assert int(r.headers["Retry-After"]) > 1
        # a valid token is not affected: it counts against its client
        assert get_models(g, env["gw"].token("models:read")).status_code == 200
    finally:
        g.stop()


def test_valid_tokens_are_accepted(env):
    g = env["gw"]
    for scope in SCOPES + [None]:
        tok = g.token(scope)
        r = requests.get(g.base + "/api/v1/flags/x/evaluate", timeout=10,
                         headers={"Authorization": "Bearer " + tok})
        assert r.status_code == 404, (scope, r.status_code, r.text)  # authenticated: no such flag
    # many times: the verified-token cache answers, and still exactly right
    tok = g.token("models:read")
    before = g.metric("gateway", "loom_gateway_token_cache_hits_total") or 0
    for _ in range(50):
        assert get_models(g, tok).status_code == 200
    assert (g.metric("gateway", "loom_gateway_token_cache_hits_total") or 0) >= before + 50
    # a cached token with one byte changed is verified again (and refused)
    bad = tok[:-3] + ("A" if tok[-3] != "A" else "B") + tok[-2:]
    assert get_models(g, bad).status_code == 401


def test_unknown_kid_refresh_is_rate_limited(env):
    g = env["gw"]
    attacker = ec.generate_private_key(ec.SECP256R1())
    time.sleep(5.2)  # past the minimum interval since the fetches the other tests caused
    before = (g.metric("gateway", "loom_gateway_jwks_fetches_total") or 0) + \
        (g.metric("gateway", "loom_gateway_jwks_fetch_failures_total") or 0)
    t0 = time.monotonic()
    for i in range(40):
        tok = jws(header(f"unknown-{i}"), claims(), lambda d: es256_raw(attacker, d))
        assert get_models(g, tok).status_code == 401
    took = time.monotonic() - t0
    after = (g.metric("gateway", "loom_gateway_jwks_fetches_total") or 0) + \
        (g.metric("gateway", "loom_gateway_jwks_fetch_failures_total") or 0)
    allowed = 1 + int(took // 5)
    assert after - before <= allowed, (after - before, took)
    assert after - before >= 1  # but an unknown kid does refresh


def test_rotated_key_is_picked_up(tmp_path):
    """identity rotates its key every 2 s; the gateway (periodic refresh 1 h, but identity's
    JWKS max-age of 1 s is shorter) has the new kid by the time a token names it."""
    b = Backends(tmp_path, services=("identity",), extra=("--identity.key-rotation=2s",)).start()
    g = Gateway(tmp_path, b, "--gateway.jwks-refresh=1h", "--gateway.jwks-min-refresh=500ms",
                name="gwrot")
    g.start()
    try:
        def kid_of(tok):
            return json.loads(base64.urlsafe_b64decode(tok.split(".")[0] + "=="))["kid"]

        first = g.token("admin")
        assert g.req("GET", "/api/v1/flags", scope="admin").status_code == 200
        deadline = time.monotonic() + 15 * SLOW
        while True:
            g.tokens.clear()
            tok = g.token("admin")
            if kid_of(tok) != kid_of(first):
                break
            assert time.monotonic() < deadline, "identity did not rotate its key"
            time.sleep(0.5)
        r = requests.get(g.base + "/api/v1/flags", headers={"Authorization": "Bearer " + tok},
                         timeout=10)
        assert r.status_code == 200, r.text
    finally:
        g.stop()
        b.proc.stop()


def test_rotation_without_refused_tokens(tmp_path):
    """identity rotates its key every 3 s; a gateway that may refetch the JWKS for an unknown
    kid only every 5 s, with no leeway, takes a fresh token every few tens of milliseconds for
    10 s: none is refused, because each key was published before its first token (identity
    pre-publishes it for 1.5 s, its JWKS max-age is 1 s and the gateway follows it)."""
    b = Backends(tmp_path, services=("identity",), extra=("--identity.key-rotation=3s",)).start()
    g = Gateway(tmp_path, b, "--gateway.jwks-min-refresh=5s", "--gateway.leeway=0s",
                "--gateway.client-rate-limits=admin=100000/s:100000", name="gwprepub")
    g.start()
    try:
        kids, codes = set(), {}
        t_end = time.monotonic() + 10
        while time.monotonic() < t_end:
            g.tokens.clear()
            tok = g.token("admin")
            kids.add(json.loads(base64.urlsafe_b64decode(tok.split(".")[0] + "=="))["kid"])
            r = requests.get(g.base + "/api/v1/flags", timeout=10,
                             headers={"Authorization": "Bearer " + tok})
            codes[r.status_code] = codes.get(r.status_code, 0) + 1
            assert r.status_code == 200, (r.status_code, r.text, len(kids))
        assert len(kids) >= 3, kids  # it did rotate, more than once
        assert (g.metric("gateway", 'loom_gateway_auth_failures_total{reason="unknown_kid"}')
                or 0) == 0
    finally:
        g.stop()
        b.proc.stop()


# ---- the authorization matrix ----

PUBLIC = "public"
ANY = "any"
ROUTES = [
    ("GET", "/.well-known/jwks.json", PUBLIC, None),
    ("GET", "/openapi.json", PUBLIC, None),
    ("GET", "/livez", PUBLIC, None),
    ("GET", "/api/v1/clients", "admin", None),
    ("POST", "/api/v1/clients", "admin", {"bad": 1}),
    ("GET", "/api/v1/clients/cl_nope", "admin", None),
    ("PATCH", "/api/v1/clients/cl_nope", "admin", {"disabled": True}),
    ("DELETE", "/api/v1/clients/cl_nope", "admin", None),
    ("POST", "/api/v1/clients/cl_nope/rotate-secret", "admin", None),
    ("GET", "/api/v1/models", "models:read", None),
    ("POST", "/api/v1/models", "models:write", {"name": "matrix-model"}),
    ("GET", "/api/v1/models/nope", "models:read", None),
    ("PATCH", "/api/v1/models/nope", "models:write", {"description": "x"}),
    ("DELETE", "/api/v1/models/nope", "models:write", None),
    ("GET", "/api/v1/models/nope/versions", "models:read", None),
    ("POST", "/api/v1/models/nope/versions", "models:write", {}),
    ("GET", "/api/v1/models/nope/versions/1", "models:read", None),
    ("PUT", "/api/v1/models/nope/aliases/prod", "models:write", {"version": 1}),
    ("DELETE", "/api/v1/models/nope/aliases/prod", "models:write", None),
    ("GET", "/api/v1/models/nope/events", "models:read", None),
    ("POST", "/api/v1/artifacts", "models:write", b""),
    ("GET", "/api/v1/artifacts/sha256:" + "0" * 64, "models:read", None),
    ("GET", "/api/v1/resolve/nope@prod", "models:read", None),
    ("GET", "/api/v1/datasets", "train", None),
    ("POST", "/api/v1/datasets", "train", b"a,b\n1,2\n"),
    ("GET", "/api/v1/datasets/sha256:" + "0" * 64, "train", None),
    ("GET", "/api/v1/training-jobs", "train", None),
    ("POST", "/api/v1/training-jobs", "train", {}),
    ("GET", "/api/v1/training-jobs/job_nope", "train", None),
    ("POST", "/api/v1/training-jobs/job_nope/cancel", "train", None),
    ("GET", "/api/v1/streams", "ingest", None),
    ("POST", "/api/v1/streams/clicks/events", "ingest", {"e": 1}),
    ("GET", "/v2", "infer", None),
    ("GET", "/v2/health/live", "infer", None),
    ("GET", "/v2/health/ready", "infer", None),
    ("GET", f"/v2/models/{MODEL}", "infer", None),
    ("GET", f"/v2/models/{MODEL}/ready", "infer", None),
    ("GET", f"/v2/models/{MODEL}/versions/1", "infer", None),
    ("POST", f"/v2/models/{MODEL}/infer", "infer", infer_body()),
    ("POST", f"/v2/models/{MODEL}/versions/2/infer", "infer", infer_body()),
    ("POST", "/v2/repository/index", "admin", None),
    ("POST", f"/v2/repository/models/{MODEL}/load", "admin", None),
    ("GET", "/api/v1/flags", "admin", None),
    ("POST", "/api/v1/flags", "admin", {"name": "bad name"}),
    ("GET", "/api/v1/flags/nope", "admin", None),
    ("PUT", "/api/v1/flags/nope", "admin", b"not json"),
    ("DELETE", "/api/v1/flags/nope", "admin", None),
    ("GET", "/api/v1/flags/nope/evaluate", ANY, None),
    ("GET", "/api/v1/traffic", "admin", None),
    ("GET", "/api/v1/traffic/nope", "admin", None),
    ("PUT", "/api/v1/traffic/nope", "admin", {"splits": []}),
    ("DELETE", "/api/v1/traffic/nope", "admin", None),
]


def send(g, method, path, body, token):
    h = {"Authorization": "Bearer " + token} if token else {}
    kw = {"json": body} if isinstance(body, dict) else {"data": body} if body is not None else {}
    return requests.request(method, g.base + path, headers=h, timeout=30, **kw)


def test_authorization_matrix(env):
    g = env["gw"]
    tokens = {s: g.token(s) for s in SCOPES}
    bad, checked = [], 0
    for method, path, need, body in ROUTES:
        r = send(g, method, path, body, None)
        checked += 1
        if need == PUBLIC:
            if r.status_code in (401, 403):
                bad.append((method, path, "no token", r.status_code))
        elif r.status_code != 401:
            bad.append((method, path, "no token", r.status_code))
        for scope, tok in tokens.items():
            r = send(g, method, path, body, tok)
            checked += 1
            allowed = need in (PUBLIC, ANY) or need == scope
            if allowed and r.status_code in (401, 403):
                bad.append((method, path, scope, r.status_code, r.text[:160]))
            if not allowed:
                if 200 <= r.status_code < 300 or r.status_code != 403:
                    bad.append((method, path, scope, r.status_code, r.text[:160]))
                elif 'error="insufficient_scope"' not in r.headers.get("WWW-Authenticate", "") \
                        or f'scope="{need}"' not in r.headers["WWW-Authenticate"]:
                    bad.append((method, path, scope, "WWW-Authenticate",
                                r.headers.get("WWW-Authenticate")))
    assert not bad, bad
    print(f"\nauthorization matrix: {len(ROUTES)} routes x {len(SCOPES)} scopes + no token: "
          f"{checked} requests, no unauthorized 2xx")
