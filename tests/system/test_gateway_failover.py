# SPDX-License-Identifier: Apache-2.0
"""Failover through the API gateway: kill -9 one of two inference replicas under load.

Two `loom serve inference` processes serve the same repository; a gateway with two loop threads
balances /v2/models/{m}/infer over them (P2C). Eight client threads keep predicting through the
gateway while one replica is killed with SIGKILL and, a few seconds later, started again on the
same port. Inference POSTs are idempotent for the gateway, so every attempt that fails on the
dead replica (a reset connection, a refused connect) is retried on the other one: no client
request may fail. The gateway must eject the dead replica within a second of the kill (its
"upstream address ejected" log line, and loom_gateway_upstream_ejections_total), and readmit it
once it is back (the "upstream address readmitted" line, and predictions reaching the new
process). The figures are printed. Then clients that leave with pipelined requests in flight.
"""

import datetime
import json
import os
import random
import socket
import threading
import time

import requests

from test_gateway import (MODEL, SLOW, Backends, Gateway, Proc, infer_body, write_repo)


def log_time(o):
    return datetime.datetime.strptime(o["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=datetime.timezone.utc).timestamp()


def inference(tmp, repo, name, port=0):
    return Proc([f"--inference.listen=127.0.0.1:{port}", f"--inference.model-repository={repo}"],
                os.path.join(str(tmp), name), ["inference"]).start()


def test_kill_one_replica_under_load(tmp_path):
    repo = write_repo(tmp_path / "repo")
    b = Backends(tmp_path, services=("identity",)).start()
    a = inference(tmp_path, repo, "inf-a")
    c = inference(tmp_path, repo, "inf-b")
    addr_a = f"127.0.0.1:{a.ports['inference']}"
    addr_c = f"127.0.0.1:{c.ports['inference']}"
    g = Gateway(tmp_path, b, "--gateway.threads=2",
                "--gateway.client-rate-limits=admin=1000000/s:1000000",
                "--gateway.max-ejection-time=2s", inference=f"{addr_a},{addr_c}").start()
    procs = [b.proc, c, g]
    try:
        token = g.token("infer")
        stop = threading.Event()
        lock = threading.Lock()
        results = []  # (time, status or exception text)

        def client():
            s = requests.Session()
            h = {"Authorization": "Bearer " + token}
            while not stop.is_set():
                t = time.time()
                try:
                    r = s.post(g.base + f"/v2/models/{MODEL}/infer", json=infer_body(), headers=h,
                               timeout=10)
                    out = r.status_code if r.status_code == 200 else f"{r.status_code} {r.text}"
                except requests.RequestException as e:
                    out = repr(e)
                with lock:
                    results.append((t, out))

        threads = [threading.Thread(target=client) for _ in range(8)]
        for t in threads:
            t.start()
        time.sleep(2.0)
        t_kill = time.time()
        a.kill9()
        time.sleep(2.5)
        t_back = time.time()
        a2 = inference(tmp_path, repo, "inf-a2", port=int(addr_a.split(":")[1]))
        procs.append(a2)
        # wait for the readmission (ejections last at most 2 s here), then a little load more
        line = g.wait_log(lambda o: o.get("msg") == "upstream address readmitted" and
                          o.get("address") == addr_a and log_time(o) >= t_back - 0.1,
                          timeout=15 * SLOW)
        time.sleep(1.5)
        stop.set()
        for t in threads:
            t.join()

        failures = [r for r in results if r[1] != 200]
        during = [r for r in results if t_kill <= r[0] <= t_back]
        assert len(results) > 500 and len(during) > 100, (len(results), len(during))
        assert not failures, failures[:10]

        ejected = [o for o in g.logs() if o.get("msg") == "upstream address ejected" and
                   o.get("address") == addr_a and log_time(o) >= t_kill - 0.05]
        assert ejected, g.text()
        eject_s = log_time(ejected[0]) - t_kill
        assert eject_s <= 1.0, eject_s
        m = g.metric("gateway", f'loom_gateway_upstream_ejections_total{{upstream="inference",'
                                f'address="{addr_a}"}}')
        assert m and m >= 1, m
        assert line is not None, "the restarted replica was not readmitted:\n" + g.text()
        readmit_s = log_time(line) - t_back
        served = a2.metric("inference", 'loom_inference_http_requests_total{route="/v2/models/'
                                        '{name}/versions/{version}/infer",method="POST",code="200"}') \
            or a2.metric("inference", 'loom_inference_http_requests_total{route="/v2/models/'
                                      '{name}/infer",method="POST",code="200"}')
        assert served and served > 0, a2.metrics("inference")
        retries = sum(float(l.rsplit(" ", 1)[1]) for l in g.metrics("gateway").splitlines()
                      if l.startswith('loom_gateway_upstream_retries_total{upstream="inference"'))
        print(f"\nfailover: {len(results)} predictions ({len(during)} while a replica was dead), "
              f"{len(failures)} failed; ejected {eject_s * 1000:.0f} ms after kill -9; "
              f"readmitted {readmit_s:.2f} s after the restart, then served {served:.0f}; "
              f"{retries:.0f} attempts retried")
    finally:
        for p in reversed(procs):
            p.stop()


def test_clients_that_leave_mid_pipeline(tmp_path):
    """Clients that vanish with requests in flight (cut off mid-request, after a few pipelined
    requests, without reading, with a reset) while others predict: the gateway cancels their
    calls on the pipelined inference connections without disturbing anyone else's answers, no
    process dies, and nothing stays in flight."""
    repo = write_repo(tmp_path / "repo")
    b = Backends(tmp_path, services=("identity",)).start()
    a = inference(tmp_path, repo, "inf-a")
    c = inference(tmp_path, repo, "inf-b")
    g = Gateway(tmp_path, b, "--gateway.client-rate-limits=admin=1000000/s:1000000",
                inference=f"127.0.0.1:{a.ports['inference']},127.0.0.1:{c.ports['inference']}"
                ).start()
    procs = [b.proc, a, c, g]
    try:
        token = g.token("infer")
        body = infer_body()
        raw_body = json.dumps(body).encode()
        raw = (f"POST /v2/models/{MODEL}/infer HTTP/1.1\r\nHost: x\r\n"
               f"Content-Type: application/json\r\nAuthorization: Bearer {token}\r\n"
               f"Content-Length: {len(raw_body)}\r\n\r\n").encode() + raw_body
        port = int(g.base.rsplit(":", 1)[1])
        stop = threading.Event()
        lock = threading.Lock()
        results = []

        def leaver(seed):
            r = random.Random(seed)
            while not stop.is_set():
                s = socket.create_connection(("127.0.0.1", port))
                data = raw * r.randint(1, 8)
                cut = r.choice([len(data), len(data), r.randint(1, len(data))])
                s.sendall(data[:cut])
                if r.random() < 0.5:
                    s.settimeout(0.02)
                    try:
                        s.recv(r.randint(1, 4000))
                    except OSError:
                        pass
                if r.random() < 0.3:  # close with a reset
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
                s.close()

        def client():
            s = requests.Session()
            h = {"Authorization": "Bearer " + token}
            while not stop.is_set():
                try:
                    resp = s.post(g.base + f"/v2/models/{MODEL}/infer", json=body, headers=h,
                                  timeout=10)
                    out = resp.status_code if resp.status_code == 200 else \
                        f"{resp.status_code} {resp.text}"
                except requests.RequestException as e:
                    out = repr(e)
                with lock:
                    results.append(out)

        threads = [threading.Thread(target=leaver, args=(i,)) for i in range(4)] + \
                  [threading.Thread(target=client) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(3.0 * SLOW)
        stop.set()
        for t in threads:
            t.join()
        failures = [r for r in results if r != 200]
        assert len(results) > 200, len(results)
        assert not failures, failures[:10]
        for p in (a, c, g):
            assert p.proc.poll() is None, p.text()
        deadline = time.time() + 5
        while g.metric("gateway", "loom_gateway_in_flight") and time.time() < deadline:
            time.sleep(0.05)
        assert g.metric("gateway", "loom_gateway_in_flight") == 0, g.metrics("gateway")
        r = requests.post(g.base + f"/v2/models/{MODEL}/infer", json=body,
                          headers={"Authorization": "Bearer " + token}, timeout=10)
        assert r.status_code == 200, r.text
        print(f"\nclients leaving mid-pipeline: {len(results)} predictions by the others, "
              f"{len(failures)} failed")
    finally:
        for p in reversed(procs):
            p.stop()
