# SPDX-License-Identifier: Apache-2.0
"""Black-box tests of the ingest service (`loom serve ingest`) and `loom ingest`.

Each test starts the real binary on loopback with a temporary data directory (the embedded
SQLite bus at <data-dir>/bus.db, which the tests read directly to see what was published), and
covers: declaring, replacing, reading and listing stream contracts (and refusing bad ones with
a message that names the field); batches as JSON arrays, NDJSON and gzip; the CloudEvents on
the bus (type, source, subject, derived ids, traceparent, data); idempotent retries; per-record
rejections with position and reasons (207 and 422); unknown streams (404); malformed framing
(400, with what was accepted before); oversized bodies, batches and records (413); zip bombs;
unsupported media types (415); backpressure and an unavailable bus (503 with Retry-After);
metrics; and the CLI. Every answer of the ingest API (but /metrics, and the CLI's) is validated
against api/openapi.yaml (openapi_contract.py), and so is every request body the service
accepted; the contracts the service refuses are checked against the declaration's schema.
"""

import gzip
import http.server
import json
import os
import sqlite3
import threading
import time

import subprocess

import pytest
import requests

from conftest import LOOM_BIN, free_port, run_loom
from openapi_contract import load as load_contract

API = load_contract()

CONTRACT = {
    "kind": "data",
    "id_field": "txn_id",
    "description": "card transactions",
    "fields": {
        "txn_id": {"type": "string", "max_length": 32},
        "amount": {"type": "number", "required": True, "min": 0, "max": 10000},
        "country": {"type": "string", "enum": ["FR", "DE", "US"]},
        "items": {"type": "integer", "min": 1},
        "online": {"type": "boolean"},
    },
}


class Ingest:
    def __init__(self, srv):
        self.srv = srv
        line = srv.wait_log(lambda o: o.get("msg") == "listening" and o.get("svc") == "ingest")
        assert line, srv.stderr_text()
        self.base = f"http://127.0.0.1:{line['port']}"
        self.bus_db = os.path.join(srv.data_dir, "bus.db")

    def url(self, path):
        return self.base + path

    def request(self, method, path, **kw):
        """An API request whose answer (and accepted body) must match api/openapi.yaml."""
        kw.setdefault("timeout", 10)
        return API.check_response(requests.request(method, self.url(path), **kw), known=True)

    def get(self, path):
        return self.request("GET", path)

    def put(self, stream, contract):
        return self.request("PUT", f"/api/v1/streams/{stream}", json=contract)

    def post(self, stream, body, ctype="application/json", headers=None, timeout=30):
        h = {"Content-Type": ctype}
        h.update(headers or {})
        if isinstance(body, (list, dict)):
            body = json.dumps(body).encode()
        return self.request("POST", f"/api/v1/streams/{stream}/events", data=body, headers=h,
                            timeout=timeout)

    def events(self, subject_prefix="loom."):
        if not os.path.exists(self.bus_db):
            return []
        db = sqlite3.connect(f"file:{self.bus_db}?mode=ro", uri=True)
        try:
            rows = db.execute("SELECT subject, data FROM bus_log ORDER BY seq").fetchall()
        finally:
            db.close()
        return [(s, json.loads(d)) for s, d in rows if s.startswith(subject_prefix)]


@pytest.fixture
def ingest(loom_server):
    def start(*args):
        srv = loom_server("ingest", "--ingest.listen=127.0.0.1:0", *args)
        return Ingest(srv)
    return start


def records(n, start=0, **extra):
    return [dict({"txn_id": f"t-{i}", "amount": i % 1000, "country": "FR"}, **extra)
            for i in range(start, start + n)]


def assert_problem(r, status):
    assert r.status_code == status, r.text
    assert r.headers["Content-Type"].startswith("application/problem+json"), r.headers
    body = r.json()
    assert body["status"] == status and body["title"] and body["detail"], body
    return body


# ---- contracts ----

def test_declare_read_replace_list(ingest):
    ing = ingest()
    r = ing.put("transactions", CONTRACT)
    assert r.status_code == 201, r.text
    assert r.headers["Location"] == "/api/v1/streams/transactions"
    s = r.json()
    assert s["name"] == "transactions" and s["version"] == 1 and s["kind"] == "data"
    assert s["id_field"] == "txn_id" and s["additional_fields"] is False
    assert s["fields"]["txn_id"]["required"] is True  # the id field is required
    assert s["fields"]["amount"] == {"type": "number", "required": True, "min": 0, "max": 10000}
    assert s["fields"]["country"]["enum"] == ["FR", "DE", "US"]
    assert s["created_at"].endswith("Z")
    # The same declaration again changes nothing; another one is a new version.
    r = ing.put("transactions", CONTRACT)
    assert r.status_code == 200 and r.json()["version"] == 1
    changed = json.loads(json.dumps(CONTRACT))
    changed["fields"]["amount"]["max"] = 20000
    r = ing.put("transactions", changed)
    assert r.status_code == 200 and r.json()["version"] == 2
    r = ing.get("/api/v1/streams/transactions")
    assert r.status_code == 200 and r.json()["fields"]["amount"]["max"] == 20000
    for name in ("a-stream", "b", "c_2"):
        assert ing.put(name, {"fields": {"x": {"type": "number"}}}).status_code == 201
    names, cursor = [], None
    while True:
        q = "?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = ing.get("/api/v1/streams" + q).json()
        names += [s["name"] for s in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert names == ["a-stream", "b", "c_2", "transactions"]
    assert_problem(ing.get("/api/v1/streams/nope"), 404)
    assert_problem(ing.get("/api/v1/streams/Nope"), 404)
    assert_problem(ing.get("/api/v1/streams?limit=0"), 400)


@pytest.mark.parametrize("contract, says", [
    ({"fields": {"x": {"type": "number", "requried": True}}}, "requried"),
    ({"fields": {"x": {"type": "float"}}}, "fields.x.type"),
    ({"fields": {}}, "fields must be an object"),
    ({"id_field": "y", "fields": {"x": {"type": "number"}}}, "id_field \"y\""),
    ({"id_field": "x", "fields": {"x": {"type": "boolean"}}}, "string or an integer"),
    ({"fields": {"x": {"type": "number", "min": 5, "max": 1}}}, "min is above max"),
    ({"fields": {"x": {"type": "boolean", "enum": [True]}}}, "enum applies"),
    ({"fields": {"x": {"type": "string", "max_length": 0}}}, "max_length"),
    ({"kind": "events", "fields": {"x": {"type": "number"}}}, "kind"),
    ({"fields": {"bad name": {"type": "number"}}}, "field name"),
    ([1, 2], "JSON object"),
])
def test_bad_contracts_say_what_to_fix(ingest, contract, says):
    ing = ingest()
    body = assert_problem(ing.put("s", contract), 400)
    assert says in body["detail"], body
    # The declaration's schema refuses it too, but where two members must agree (the id field
    # is one of the fields, of a string or integer type; min is not above max): a schema
    # cannot compare them.
    if says not in ("id_field \"y\"", "string or an integer", "min is above max"):
        assert API.errors({"$ref": "#/components/schemas/StreamDeclaration"}, contract), \
            f"the StreamDeclaration schema accepts a contract ingest refuses: {contract}"
    assert_problem(ing.request("PUT", "/api/v1/streams/s", data=b"{"), 400)
    body = assert_problem(ing.put("Bad-Name", {"fields": {"x": {"type": "number"}}}), 400)
    assert "cannot be named" in body["detail"] and "[a-z0-9_-]" in body["detail"]
    assert_problem(ing.request("GET", "/api/v1/streams/Bad-Name"), 404)


# ---- batches ----

def test_records_become_cloudevents_on_the_bus(ingest):
    ing = ingest()
    assert ing.put("transactions", CONTRACT).status_code == 201
    trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    r = ing.post("transactions", records(3), headers={"traceparent": trace})
    assert r.status_code == 200, r.text
    assert r.json() == {"stream": "transactions", "records": 3, "accepted": 3, "rejected": [],
                        "rejected_count": 0, "rejected_truncated": False}
    evs = ing.events()
    assert len(evs) == 3
    ids = set()
    for i, (subject, ev) in enumerate(evs):
        assert subject == "loom.data.ingested.transactions"
        assert ev["specversion"] == "1.0" and ev["type"] == "loom.data.ingested"
        assert ev["source"] == "/loom/ingest" and ev["subject"] == "transactions"
        assert ev["datacontenttype"] == "application/json"
        assert ev["time"].endswith("Z")
        assert ev["traceparent"].split("-")[1] == "0af7651916cd43dd8448eb211c80319c"
        assert ev["data"] == {"stream": "transactions", "record": records(3)[i]}
        assert ev["id"][14] == "8"  # derived from (stream, record id)
        ids.add(ev["id"])
    assert len(ids) == 3
    # A retry of the same batch (a client that did not see the answer) adds nothing.
    r = ing.post("transactions", records(3))
    assert r.status_code == 200 and r.json()["accepted"] == 3
    assert [e["id"] for _, e in ing.events()] == [e["id"] for _, e in evs]
    # NDJSON, and a single object, work the same way.
    nd = "\n".join(json.dumps(x) for x in records(2, start=10)) + "\n\n"
    r = ing.post("transactions", nd.encode(), ctype="application/x-ndjson")
    assert r.status_code == 200 and r.json()["accepted"] == 2, r.text
    r = ing.post("transactions", records(1, start=20)[0])
    assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
    assert len(ing.events()) == 6


def test_labels_streams_publish_label_events(ingest):
    ing = ingest()
    contract = {"kind": "labels", "id_field": "txn_id",
                "fields": {"txn_id": {"type": "string"}, "is_fraud": {"type": "boolean"}}}
    assert ing.put("fraud-labels", contract).status_code == 201
    r = ing.post("fraud-labels", [{"txn_id": "t-1", "is_fraud": True}])
    assert r.status_code == 200, r.text
    (subject, ev), = ing.events()
    assert subject == "loom.label.ingested.fraud-labels"
    assert ev["type"] == "loom.label.ingested"
    assert ev["data"] == {"stream": "fraud-labels", "record": {"txn_id": "t-1", "is_fraud": True}}


def test_each_rejected_record_says_where_and_why(ingest):
    ing = ingest()
    assert ing.put("transactions", CONTRACT).status_code == 201
    batch = [
        {"txn_id": "ok-1", "amount": 1},
        {"txn_id": "b-1", "amount": 20000, "country": "XX", "items": 2.5, "extra": 1},
        {"amount": 5},
        "not a record",
        {"txn_id": "b-2", "amount": "12"},
        {"txn_id": "b-3", "amount": None},
        {"txn_id": "b-4", "amount": 1, "online": "yes"},
        {"txn_id": "x" * 40, "amount": 1},
        {"txn_id": "ok-2", "amount": 2, "online": False, "items": 3},
    ]
    r = ing.post("transactions", batch)
    assert r.status_code == 207, r.text
    body = r.json()
    assert body["accepted"] == 2 and body["rejected_count"] == 7 and body["records"] == 9
    rej = {e["index"]: e for e in body["rejected"]}
    assert sorted(rej) == [1, 2, 3, 4, 5, 6, 7]
    assert rej[1]["id"] == "b-1"
    assert rej[1]["errors"] == [
        "amount: 20000 is above the maximum 10000",
        "country: \"XX\" is not one of the allowed values",
        "items: expected an integer, got 2.5",
        "extra: unknown field (the stream's contract does not declare it)",
    ]
    assert rej[2]["errors"] == ["txn_id: required field is missing"]
    assert rej[3]["errors"] == ["the record is a string, not a JSON object"]
    assert rej[4]["errors"] == ["amount: expected a number, got a string"]
    assert rej[5]["errors"] == ["amount: required, got null"]
    assert rej[6]["errors"] == ["online: expected a boolean, got a string"]
    assert rej[7]["errors"] == ["txn_id: 40 characters, over the maximum length 32"]
    raw = json.dumps(batch).encode()
    for e in rej.values():
        assert raw[e["offset"]:e["offset"] + 1] in (b"{", b"\""), e
    assert [e["data"]["record"]["txn_id"] for _, e in ing.events()] == ["ok-1", "ok-2"]
    # Nothing accepted: 422, same body shape.
    r = ing.post("transactions", [{"amount": -1}, {"txn_id": "z"}])
    assert r.status_code == 422 and r.json()["accepted"] == 0 and r.json()["rejected_count"] == 2


def test_ndjson_malformed_lines_are_rejected_alone(ingest):
    ing = ingest()
    assert ing.put("transactions", CONTRACT).status_code == 201
    nd = (b'{"txn_id": "a", "amount": 1}\n'
          b'{"txn_id": "b", "amount": \n'
          b'\n'
          b'{"txn_id": "c", "amount": 3}\r\n'
          b'[1, 2]\n'
          b'{"txn_id": "d", "amount": 4}')  # no final newline
    r = ing.post("transactions", nd, ctype="application/x-ndjson")
    assert r.status_code == 207, r.text
    body = r.json()
    assert body["accepted"] == 3 and body["rejected_count"] == 2
    assert [(e["index"], e["line"]) for e in body["rejected"]] == [(1, 2), (3, 5)]
    assert body["rejected"][0]["errors"][0].startswith("malformed JSON")


def test_a_utf8_byte_order_mark_is_skipped(ingest, tmp_path):
    # RFC 8259 8.1: a parser may ignore a leading BOM, and files saved by Windows tools have one.
    ing = ingest()
    assert ing.put("transactions", CONTRACT).status_code == 201
    bom = b"\xef\xbb\xbf"
    r = ing.post("transactions", bom + json.dumps(records(2)).encode())
    assert r.status_code == 200 and r.json()["accepted"] == 2, r.text
    nd = b"".join(json.dumps(x).encode() + b"\n" for x in records(2, start=10))
    r = ing.post("transactions", bom + nd, ctype="application/x-ndjson")
    assert r.status_code == 200 and r.json()["accepted"] == 2, r.text
    r = ing.post("transactions", bom + bom + b"[]")  # only one, at the very start
    assert r.status_code == 400, r.text
    f = tmp_path / "bom.json"
    f.write_bytes(bom + json.dumps(records(3, start=20), indent=1).encode())
    r = run_loom("ingest", "transactions", str(f), "--url", ing.base, "--quiet")
    assert r.returncode == 0 and "accepted 3 of 3" in r.stdout, r.stdout + r.stderr
    assert len(ing.events()) == 7


def test_broken_array_is_400_and_says_what_was_accepted(ingest):
    ing = ingest()
    assert ing.put("transactions", CONTRACT).status_code == 201
    good = json.dumps(records(3))[:-1]
    for body in (good + ' {"txn_id": "x", "amount": 1}]', good + ",", '{"a": 1} [', "7"):
        r = ing.post("transactions", body.encode())
        p = assert_problem(r, 400)
        assert "malformed JSON at byte" in p["detail"] or "expected '['" in p["detail"], p
    # The three records before the break were published, and the answer says so.
    r = ing.post("transactions", (good + ' {"txn_id": "x", "amount": 1}]').encode())
    p = assert_problem(r, 400)
    assert p["accepted"] == 3 and p["rejected"] == 0, p
    assert len(ing.events()) == 3
    assert_problem(ing.post("transactions", b""), 400)


def test_unknown_stream_is_404(ingest):
    ing = ingest()
    p = assert_problem(ing.post("nope", records(1)), 404)
    assert "PUT /api/v1/streams/nope" in p["detail"]
    assert_problem(ing.post("NOPE!", records(1)), 404)


def test_unsupported_media_is_415(ingest):
    ing = ingest()
    assert ing.put("transactions", CONTRACT).status_code == 201
    assert_problem(ing.post("transactions", b"a,b\n1,2\n", ctype="text/csv"), 415)
    r = ing.post("transactions", records(1), headers={"Content-Encoding": "br"})
    assert_problem(r, 415)
    assert r.headers["Accept-Encoding"] == "gzip"  # what it takes instead (RFC 9110 12.5.3)


def test_gzip_bodies(ingest):
    ing = ingest("--ingest.max-batch-bytes=2MiB")
    assert ing.put("transactions", CONTRACT).status_code == 201
    nd = ("\n".join(json.dumps(x) for x in records(1000)) + "\n").encode()
    r = ing.post("transactions", gzip.compress(nd), ctype="application/x-ndjson",
                 headers={"Content-Encoding": "gzip"})
    assert r.status_code == 200 and r.json()["accepted"] == 1000, r.text
    # Concatenated members are one body, as gzip has it.
    two = gzip.compress(json.dumps(records(2, start=5000))[:-1].encode()) + \
        gzip.compress(b", " + json.dumps(records(1, start=6000))[1:].encode())
    r = ing.post("transactions", two, headers={"Content-Encoding": "gzip"})
    assert r.status_code == 200 and r.json()["accepted"] == 3, r.text
    # Corrupt, truncated.
    z = gzip.compress(nd)
    assert_problem(ing.post("transactions", z[:20] + b"garbage" * 10, ctype="application/x-ndjson",
                            headers={"Content-Encoding": "gzip"}), 400)
    assert_problem(ing.post("transactions", z[:len(z) // 2], ctype="application/x-ndjson",
                            headers={"Content-Encoding": "gzip"}), 400)
    # A zip bomb: 100 MB of blanks in 100 KB, refused once it inflates past the ceiling.
    bomb = gzip.compress(b" " * (100 << 20), compresslevel=9)
    t0 = time.monotonic()
    p = assert_problem(ing.post("transactions", bomb, ctype="application/x-ndjson",
                                headers={"Content-Encoding": "gzip"}), 413)
    assert "inflates to more than 2097152 bytes" in p["detail"], p
    assert time.monotonic() - t0 < 5


def test_oversize_bodies_batches_and_records(ingest):
    ing = ingest("--ingest.max-body-bytes=256KiB", "--ingest.max-batch-records=100",
                 "--ingest.max-record-bytes=1KiB")
    contract = dict(CONTRACT, additional_fields=True)
    assert ing.put("transactions", contract).status_code == 201
    p = assert_problem(ing.post("transactions", records(101)), 413)
    assert "more than 100 records" in p["detail"] and p["accepted"] == 100, p
    big = [{"txn_id": "big", "amount": 1, "note": "x" * 2000}] + records(2)
    r = ing.post("transactions", big)
    assert r.status_code == 207, r.text
    assert r.json()["rejected"][0]["errors"] == ["the record is longer than 1024 bytes"]
    nd = ("\n".join(json.dumps(x) for x in records(6000)) + "\n").encode()
    assert len(nd) > 256 << 10
    p = assert_problem(ing.post("transactions", nd, ctype="application/x-ndjson"), 413)
    assert "larger than" in p["detail"], p


def test_backpressure_and_an_unavailable_bus_answer_503(ingest):
    # Each publish is held 1 s and the window is tiny: a second batch while one is in flight
    # is refused with Retry-After instead of being buffered.
    ing = ingest("--ingest.publish-delay=1s", "--ingest.max-inflight-bytes=2KiB",
                 "--ingest.retry-after=3s")
    assert ing.put("transactions", CONTRACT).status_code == 201
    first = {}
    t = threading.Thread(target=lambda: first.update(r=ing.post("transactions", records(20))))
    t.start()
    time.sleep(0.4)
    r = ing.post("transactions", records(20, start=100))
    p = assert_problem(r, 503)
    assert r.headers["Retry-After"] == "3" and "busy" in p["detail"], p
    t.join()
    assert first["r"].status_code == 200 and first["r"].json()["accepted"] == 20

    # A NATS bus that is not there: the batch is refused, not lost silently.
    port = free_port()
    ing2 = ingest(f"--ingest.bus=nats://127.0.0.1:{port}", "--ingest.retry-after=2s")
    assert ing2.put("transactions", CONTRACT).status_code == 201
    r = ing2.post("transactions", records(5))
    p = assert_problem(r, 503)
    assert r.headers["Retry-After"] == "2" and p["accepted"] == 0, p


def test_metrics_count_accepted_and_rejected_per_stream(ingest):
    ing = ingest()
    assert ing.put("transactions", CONTRACT).status_code == 201
    r = ing.post("transactions", records(4) + [{"txn_id": "bad"}])
    assert r.status_code == 207
    text = requests.get(ing.url("/metrics"), timeout=10).text
    assert 'loom_ingest_records_total{stream="transactions",outcome="accepted"} 4' in text
    assert 'loom_ingest_records_total{stream="transactions",outcome="rejected"} 1' in text
    assert "loom_ingest_publish_seconds_count" in text
    assert "loom_ingest_inflight_bytes 0" in text
    # A consumer group on the bus shows up with its lag (refreshed every 5 s).
    tool = os.path.join(os.path.dirname(LOOM_BIN), "tests", "bus_tool")
    if not os.access(tool, os.X_OK):
        return
    p = subprocess.Popen([tool, "latency", "--bus", f"sqlite:{ing.bus_db}", "--group", "watch"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert p.stdout.readline().strip() == "subscribed"
        assert ing.post("transactions", records(3, start=50)).status_code == 200
        deadline = time.monotonic() + 12
        while time.monotonic() < deadline:
            text = requests.get(ing.url("/metrics"), timeout=10).text
            if 'loom_ingest_bus_lag_events{group="watch"}' in text:
                break
            time.sleep(0.5)
        assert 'loom_ingest_bus_lag_events{group="watch"}' in text, text
        # The service still answers (reading the lag does not hold the bus).
        assert ing.post("transactions", records(1, start=60)).status_code == 200
    finally:
        p.terminate()
        p.wait(10)


def test_cli_streams_a_file(ingest, tmp_path):
    probe = run_loom("ingest", "--help")
    if probe.returncode != 0:
        pytest.skip("`loom ingest` is not wired into cmd/main.c yet (cmd_ingest)")
    assert "Usage:" in probe.stdout
    ing = ingest()
    assert ing.put("transactions", CONTRACT).status_code == 201
    nd = tmp_path / "tx.ndjson"
    nd.write_text("\n".join(json.dumps(x) for x in records(5000)) + "\n")
    r = run_loom("ingest", "transactions", str(nd), "--url", ing.base, "--batch-records", "1000")
    assert r.returncode == 0, r.stderr
    assert "accepted 5000 of 5000 records" in r.stdout
    arr = tmp_path / "tx.json.gz"
    bad = records(3, start=9000) + [{"txn_id": "bad", "amount": -5}]
    arr.write_bytes(gzip.compress(json.dumps(bad, indent=2).encode()))
    r = run_loom("ingest", "transactions", str(arr), "--url", ing.base, "--quiet")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "accepted 3 of 4 records" in r.stdout
    assert "record 3 of the file" in r.stderr and "below the minimum 0" in r.stderr
    # With the progress line on, every message still ends its own line: the next "\r" of the
    # progress line must not overwrite a rejection's reason.
    r = run_loom("ingest", "transactions", str(arr), "--url", ing.base)
    assert r.returncode == 1
    assert "\nrejected: record 3 of the file id bad\n  amount: -5 is below the minimum 0\n" in r.stderr
    r = run_loom("ingest", "nope", str(nd), "--url", ing.base, "--quiet")
    assert r.returncode == 1 and "404" in r.stderr
    assert run_loom("ingest", "transactions").returncode == 2
    assert len(ing.events()) == 5003


def test_cli_sends_a_bearer_token(tmp_path):
    # Through the gateway `loom ingest` needs a token: --token, else $LOOM_TOKEN.
    seen = []

    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            seen.append(self.headers.get("Authorization"))
            self.rfile.read(int(self.headers["Content-Length"]))
            body = b'{"records":1,"accepted":1,"rejected_count":0,"rejected":[]}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        f = tmp_path / "one.ndjson"
        f.write_text('{"txn_id": "t1"}\n')
        url = f"http://127.0.0.1:{srv.server_address[1]}"
        assert run_loom("ingest", "s", str(f), "--url", url, "--token", "abc.def").returncode == 0
        assert run_loom("ingest", "s", str(f), "--url", url, env={"LOOM_TOKEN": "t.u"}).returncode == 0
        assert run_loom("ingest", "s", str(f), "--url", url).returncode == 0
        assert seen == ["Bearer abc.def", "Bearer t.u", None]
        r = run_loom("ingest", "s", str(f), "--url", url, "--token", "a b")
        assert r.returncode == 2 and "--token" in r.stderr
    finally:
        srv.shutdown()
