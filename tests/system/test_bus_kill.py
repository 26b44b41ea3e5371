# SPDX-License-Identifier: Apache-2.0
"""Exactly-once effects through crashes, on both bus backends.

For the embedded SQLite bus and for NATS JetStream (a real nats-server on a free loopback port),
100,000 events flow from a producer through its transactional outbox to a consumer group of two
members that apply each event's effect in their own store (tests/system/bus_tools/bus_tool.c).
While the events flow, the producer, each consumer and (for NATS) nats-server are killed with
SIGKILL at moments drawn from a seeded RNG, several times each, and started again. At the end
every event the producer committed (its `produced` table: what it was told is done) must have
been applied exactly once (the consumers' `effects` table has no unique key, so a second
application would show as a second row). The test prints "lost 0, duplicated 0" with the counts
and fails otherwise.

Why it holds: the producer writes each event in the same transaction as its state change and
relays it after the commit (nothing committed is lost, nothing uncommitted is sent); the bus
delivers at least once and keeps unacknowledged deliveries (ack_wait 2 s here); each consumer
records the event id in the same transaction as the effect (a redelivery changes nothing); a
restarted NATS server is detected by its new server id and the producer republishes what it
kept (its dedup window drops what the server still has).
"""

import os
import random
import signal
import sqlite3
import subprocess
import time

import pytest

from conftest import LOOM_BIN, SANITIZED, free_port

BUS_TOOL = os.environ.get("LOOM_BUS_TOOL") or os.path.join(os.path.dirname(LOOM_BIN), "tests",
                                                           "bus_tool")
NATS_SERVER = next((p for p in ("/usr/bin/nats-server", "/usr/sbin/nats-server",
                                "/usr/local/bin/nats-server") if os.access(p, os.X_OK)), None)

COUNT = 100_000
RATE = 2_500 if SANITIZED else 6_000  # events/s the producer commits (about 17 s of production)
SEED = 20261124


class Proc:
    """A child process that can be killed and restarted; its output goes to a log file."""

    def __init__(self, name, argv, log_path):
        self.name, self.argv, self.log_path = name, argv, log_path
        self.proc = None
        self.kills = 0
        self.starts = 0

    def start(self):
        log = open(self.log_path, "ab")
        log.write(f"--- start {self.starts}\n".encode())
        log.flush()
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.starts += 1

    def kill9(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
            self.kills += 1

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                pytest.fail(f"{self.name} did not exit on SIGTERM; log:\n{self.log()}")

    def log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")[-4000:]


def query(path, sql):
    if not os.path.exists(path):
        return []
    for _ in range(50):
        try:
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
            try:
                return db.execute(sql).fetchall()
            finally:
                db.close()
        except sqlite3.OperationalError as e:
            if "no such table" in str(e):
                return []
            time.sleep(0.1)
    raise AssertionError(f"cannot read {path}")


def wait_port(port, timeout=10):
    import socket
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.02)
    raise AssertionError(f"nothing listens on {port}")


@pytest.mark.parametrize("backend", ["sqlite", "nats"])
def test_kill9_exactly_once(backend, tmp_path, capsys):
    if not os.access(BUS_TOOL, os.X_OK):
        pytest.skip(f"{BUS_TOOL} is not built")
    if backend == "nats" and not NATS_SERVER:
        pytest.skip("nats-server is not installed (scripts/deps.sh test)")
    rng = random.Random(SEED + (backend == "nats"))
    procs = {}
    if backend == "nats":
        port = free_port()
        store_dir = tmp_path / "nats"
        store_dir.mkdir()
        procs["nats"] = Proc("nats-server", [NATS_SERVER, "-js", "-a", "127.0.0.1", "-p",
                                             str(port), "-sd", str(store_dir)],
                             tmp_path / "nats.log")
        bus = f"nats://127.0.0.1:{port}"
    else:
        bus = f"sqlite:{tmp_path}/bus.db"
    prod_db, cons_db = tmp_path / "producer.db", tmp_path / "consumer.db"
    procs["producer"] = Proc("producer", [BUS_TOOL, "produce", "--bus", bus, "--store",
                                          f"sqlite:{prod_db}", "--count", str(COUNT), "--batch",
                                          "100", "--rate", str(RATE)],
                             tmp_path / "producer.log")
    for m in ("consumer-a", "consumer-b"):
        procs[m] = Proc(m, [BUS_TOOL, "consume", "--bus", bus, "--store", f"sqlite:{cons_db}",
                            "--group", "kill-test", "--ack-wait", "2000"], tmp_path / f"{m}.log")
    try:
        if "nats" in procs:
            procs["nats"].start()
            wait_port(port)
        for name in ("consumer-a", "consumer-b", "producer"):
            procs[name].start()

        # Kill something every 0.6 to 1.4 s while the producer commits, each target in turn (the
        # order within a round drawn from the seeded RNG), until the last event is committed.
        targets = [n for n in procs]
        rounds = []
        t0 = time.monotonic()
        next_kill = t0 + 1.5
        production_deadline = t0 + COUNT / RATE * 3 + 60
        kills = []
        while True:
            produced = query(prod_db, "SELECT count(*) FROM produced")
            done = produced and produced[0][0] >= COUNT
            if done and len(kills) >= 2 * len(targets):
                break
            assert time.monotonic() < production_deadline, \
                f"production did not finish; producer log:\n{procs['producer'].log()}"
            for p in procs.values():
                if p.proc.poll() is not None:  # only our kill -9s may end them
                    pytest.fail(f"{p.name} exited with {p.proc.returncode}:\n{p.log()}")
            if time.monotonic() >= next_kill:
                if not rounds:
                    rounds = targets[:]
                    rng.shuffle(rounds)
                name = rounds.pop()
                victim = procs[name]
                victim.kill9()
                kills.append(name)
                time.sleep(rng.uniform(0.1, 0.6))
                victim.start()
                if name == "nats":
                    wait_port(port)
                next_kill = time.monotonic() + rng.uniform(0.6, 1.4)
            time.sleep(0.05)
        t_produced = time.monotonic() - t0

        # Every committed event must reach the consumers (redeliveries come after ack_wait).
        deadline = time.monotonic() + (180 if SANITIZED else 90)
        applied = 0
        while time.monotonic() < deadline:
            applied = query(cons_db, "SELECT count(DISTINCT id) FROM effects")[0][0]
            if applied >= COUNT:
                break
            time.sleep(0.2)
        time.sleep(2.5)  # anything redelivered late must still be absorbed
    finally:
        for name in ("producer", "consumer-a", "consumer-b", "nats"):
            if name in procs:
                procs[name].stop()

    produced = {row[0] for row in query(prod_db, "SELECT id FROM produced")}
    effects = dict(query(cons_db, "SELECT id, count(*) FROM effects GROUP BY id"))
    lost = len(produced - effects.keys())
    duplicated = sum(c - 1 for c in effects.values())
    phantom = len(effects.keys() - produced)
    counts = {n: p.kills for n, p in procs.items()}
    line = (f"bus kill test [{backend}]: {len(produced)} events committed in {t_produced:.1f} s, "
            f"{sum(effects.values())} effects applied; {len(kills)} kill -9s "
            f"({', '.join(f'{n} x{k}' for n, k in counts.items())}): "
            f"lost {lost}, duplicated {duplicated}")
    with capsys.disabled():
        print("\n" + line)
    assert len(produced) == COUNT, line
    for name in targets:
        assert counts[name] >= 2, f"{name} was killed only {counts[name]} times; {line}"
    assert phantom == 0, f"{phantom} effects of events never committed; {line}"
    assert lost == 0 and duplicated == 0, (
        line + "\nproducer log:\n" + procs["producer"].log() + "\nconsumer-a log:\n"
        + procs["consumer-a"].log())
