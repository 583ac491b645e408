"""Bench section `mqtt`: `flask ingest mqtt` draining a broker of the benchmark's own,
against a bare subscriber and against POST /measures."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import sqlalchemy as sa

from scripts import loadgen
from scripts.bench.data import BULK_ITEMS, ensure_single_definition, measure_body
from scripts.bench.env import ROOT, Environment
from scripts.bench.figures import Figure
from scripts.bench.load import load

MQTT_ARRAY_ITEMS = 100
MQTT_TOPIC = "dacc/measures/bench"


def section_mqtt(env: Environment) -> list[Figure]:
    binary = shutil.which("mosquitto", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin"]))
    if binary is None:
        raise RuntimeError("the mosquitto binary is missing (apt-get install mosquitto)")
    ensure_single_definition(env)
    if not env.execute("SELECT 1 FROM measure_definition WHERE name = 'bench.mqtt'").first():
        env.add_definition("bench.mqtt")
    sizes = env.sizes
    bulk_rate = _bulk_reference_rate(env, sizes["mqtt_bulk_bodies"])
    singles = [json.dumps(measure_body("bench.mqtt", i)) for i in range(sizes["mqtt_messages"])]
    arrays = [
        json.dumps([measure_body("bench.mqtt", m * MQTT_ARRAY_ITEMS + i) for i in range(MQTT_ARRAY_ITEMS)])
        for m in range(sizes["mqtt_arrays"])
    ]
    with _mosquitto(env, binary) as port:
        drain_rate = _mqtt_drain_rate(env, port, singles)
        with _mqtt_worker(env, port):
            single_rate = _mqtt_rate(env, port, singles, len(singles))
            array_rate = _mqtt_rate(env, port, arrays, len(arrays) * MQTT_ARRAY_ITEMS)
            paced = single_rate / 2
            count = max(100, int(paced * sizes["mqtt_latency_seconds"]))
            latencies = _mqtt_latencies(env, port, (singles * (count // len(singles) + 1))[:count], paced)
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] * 1000

    return [
        Figure("mqtt", "1 measure per message, QoS 1, 1 publisher, 1 worker", single_rate, "measures/s", drain_rate,
               "value>=10000", "ceiling: the same messages drained by a bare subscriber that acks at once"),
        Figure("mqtt", f"{MQTT_ARRAY_ITEMS}-measure array messages", array_rate, "measures/s", bulk_rate,
               "ratio>=0.5", f"ceiling: POST /measures, {BULK_ITEMS:,}-item bodies, 1 conn"),
        Figure("mqtt", f"publish → committed p50 at {paced:,.0f} messages/s", pct(50), "ms",
               note=f"default batching: {1000} measures or 500 ms; seen by a reader polling every 5 ms"),
        Figure("mqtt", f"publish → committed p99 at {paced:,.0f} messages/s", pct(99), "ms"),
    ]  # fmt: skip


def _bulk_reference_rate(env: Environment, bodies: int) -> float:
    """POST /measures' rate in this run, as section_bulk measures it."""
    headers = {"Authorization": env.tokens["write"]}
    requests = [
        loadgen.build_request("POST", "/measures", headers=headers, body=json.dumps(
            [measure_body("bench.single", b * BULK_ITEMS + i) for i in range(BULK_ITEMS)]).encode())
        for b in range(bodies)
    ]  # fmt: skip
    load(env, requests[:1], total=2, connections=2)  # warm both workers
    result = load(env, requests, total=len(requests), connections=1)
    return len(requests) * BULK_ITEMS / result.elapsed


@contextlib.contextmanager
def _mosquitto(env: Environment, binary: str):
    """A broker of the benchmark's own on a free loopback port; its port."""
    with socket.socket() as probe:
        probe.bind((loadgen.HOST, 0))
        port = probe.getsockname()[1]
    conf = env.tmp / "mosquitto.conf"
    # No queue limit (the default drops beyond 1000 while the worker lags behind), no
    # in-flight limit for the publisher.
    conf.write_text(f"listener {port} {loadgen.HOST}\nallow_anonymous true\npersistence false\n"
                    "max_queued_messages 0\nmax_inflight_messages 0\n")  # fmt: skip
    with open(env.tmp / "mosquitto.log", "wb") as log:
        process = subprocess.Popen([binary, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection((loadgen.HOST, port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline or process.poll() is not None:
                        raise RuntimeError("mosquitto did not start") from None
                    time.sleep(0.05)
            yield port
        finally:
            process.terminate()
            process.wait(10)


@contextlib.contextmanager
def _mqtt_worker(env: Environment, port: int):
    """`flask ingest mqtt` with the default batching, subscribed when this yields."""
    config = env.tmp / "mqtt-worker.yml"
    config.write_text(
        "logging: {logger_criticity: INFO}\n"
        f"mqtt: {{host: '{loadgen.HOST}', port: {port}, client_id: bench-worker,"
        " subscriptions: [{topic: 'dacc/measures/#', org: bench}]}\n"
    )
    log_path = env.tmp / "mqtt-worker.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "flask", "ingest", "mqtt"], cwd=env.tmp,
                                   env={**env.env, "DACC_CONFIG": str(config)}, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while "subscribed to" not in log_path.read_text():
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError(f"the worker did not subscribe:\n{log_path.read_text()[-2000:]}")
                time.sleep(0.05)
            yield
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _mqttload(*args: str) -> subprocess.Popen:
    """scripts/mqttload.py in a process of its own: the one publisher (or the drain)."""
    return subprocess.Popen([sys.executable, str(ROOT / "scripts" / "mqttload.py"), *args], stdout=subprocess.PIPE,
                            text=True)  # fmt: skip


def _write_payloads(env: Environment, payloads: list[str]) -> str:
    path = env.tmp / "mqtt-payloads.jsonl"
    path.write_text("\n".join(payloads) + "\n")
    return str(path)


def _mqtt_drain_rate(env: Environment, port: int, payloads: list[str]) -> float:
    source = _write_payloads(env, payloads)
    drain = _mqttload("drain", str(port), MQTT_TOPIC, str(len(payloads)))
    json.loads(drain.stdout.readline())  # subscribed
    publisher = _mqttload("publish", str(port), MQTT_TOPIC, source)
    start = json.loads(publisher.stdout.readline())["start"]
    end = json.loads(drain.stdout.readline())["end"]
    publisher.wait(60)
    drain.wait(60)
    return len(payloads) / (end - start)


def _committed() -> int:
    from dacc.db import db

    # Ids follow the COPY order of the one worker: the largest visible id counts what
    # it has committed (an index lookup, cheap enough to poll).
    value = db.session.execute(sa.text("SELECT coalesce(max(id), 0) FROM raw_measure")).scalar()
    db.session.commit()
    return value


def _mqtt_rate(env: Environment, port: int, payloads: list[str], measures: int) -> float:
    """Measures per second, from the first publish to the commit of the last measure."""
    base = _committed()
    publisher = _mqttload("publish", str(port), MQTT_TOPIC, _write_payloads(env, payloads))
    deadline = time.monotonic() + 600
    while _committed() - base < measures:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {_committed() - base} of {measures} measures committed")
        time.sleep(0.005)
    end = time.time()
    start = json.loads(publisher.stdout.readline())["start"]
    publisher.wait(60)
    return measures / (end - start)


def _mqtt_latencies(env: Environment, port: int, payloads: list[str], rate: float) -> list[float]:
    """Seconds from each message's publish to the first poll that sees it committed."""
    base = _committed()
    times_path = env.tmp / "mqtt-times.json"
    publisher = _mqttload("publish", str(port), MQTT_TOPIC, _write_payloads(env, payloads), "--rate", str(rate),
                          "--times", str(times_path))  # fmt: skip
    polls = []
    deadline = time.monotonic() + 600
    while not polls or polls[-1][1] < len(payloads):
        if time.monotonic() > deadline:
            raise RuntimeError("the paced messages were not all committed")
        polls.append((time.time(), _committed() - base))
        time.sleep(0.005)
    publisher.stdout.readline()
    publisher.wait(60)
    sent = json.loads(times_path.read_text())
    latencies, poll = [], 0
    for i, at in enumerate(sent):
        while polls[poll][1] <= i:
            poll += 1
        latencies.append(polls[poll][0] - at)
    return latencies
