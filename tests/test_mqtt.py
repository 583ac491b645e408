"""`flask ingest mqtt`: batching, acknowledgement after commit, bad messages, outages.

Each test starts a mosquitto of its own on a free loopback port (never the broker of
this machine); `.ci/run` installs the binary where it is missing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest
import sqlalchemy as sa

from dacc import mqtt
from dacc.config import MqttConfig, Subscription
from dacc.db import db
from dacc.models import MeasureKey, RawMeasure, RejectedMessage

ROOT = Path(__file__).resolve().parent.parent
TOPIC = "dacc/measures"


@dataclasses.dataclass
class Broker:
    port: int
    process: subprocess.Popen

    def config(self, **overrides) -> MqttConfig:
        values = dict(
            subscriptions=(Subscription(f"{TOPIC}/#", "org"),),
            host="127.0.0.1",
            port=self.port,
            client_id="dacc-test",
            save_interval_ms=100,
        )
        values.update(overrides)
        return MqttConfig(**values)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def broker(tmp_path):
    """A mosquitto of this test's own, on a free loopback port, sessions in memory."""
    binary = shutil.which("mosquitto", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin"]))
    if binary is None:
        pytest.fail("the mosquitto binary is missing (apt-get install mosquitto; .ci/run does it)")
    port = _free_port()
    conf = tmp_path / "mosquitto.conf"
    # No queue limit: the default (1000) drops messages while a worker is away.
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        "max_queued_messages 0\nmax_inflight_messages 0\n"
    )
    log = open(tmp_path / "mosquitto.log", "wb")
    process = subprocess.Popen([binary, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_for(lambda: _connectable(port), what="mosquitto to listen")
        yield Broker(port, process)
    finally:
        process.terminate()
        process.wait(10)
        log.close()


def _connectable(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def _wait_for(predicate, *, timeout: float = 15.0, what: str = "the condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@contextlib.contextmanager
def publisher(port: int, client_id: str = "test-publisher"):
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
    client.max_inflight_messages_set(1000)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        yield client
    finally:
        client.disconnect()
        client.loop_stop()


def publish(client, payloads, topic: str = f"{TOPIC}/device") -> None:
    """Publish at QoS 1 and wait until the broker has every message."""
    infos = [client.publish(topic, p if isinstance(p, bytes) else json.dumps(p), qos=1) for p in payloads]
    for info in infos:
        info.wait_for_publish(10)


def measure(i: int = 0, **fields) -> dict:
    body = {"measureName": "m", "value": i, "startDate": "2024-01-01", "createdBy": "app",
            "group1": {"g1": "a"}}  # fmt: skip
    body.update(fields)
    return body


def subscribe(client, topic: str) -> None:
    """Subscribe at QoS 1 and wait for the broker's acknowledgement (from then on it
    keeps every message of `topic` for `client`)."""
    acknowledged = threading.Event()
    client.on_subscribe = lambda *args: acknowledged.set()
    client.subscribe(topic, qos=1)
    assert acknowledged.wait(10), f"the broker did not acknowledge the subscription to {topic}"


def noticing_subscription(worker) -> threading.Event:
    """An event set once the broker acknowledged the worker's subscriptions."""
    subscribed = threading.Event()
    on_subscribe = worker.client.on_subscribe

    def noticed(*args):
        on_subscribe(*args)
        subscribed.set()

    worker.client.on_subscribe = noticed
    return subscribed


@contextlib.contextmanager
def running_worker(app, config: MqttConfig):
    """The worker in a thread of this process, subscribed before this yields."""
    stop = threading.Event()
    worker = mqtt.Worker(config, stop=stop)
    subscribed = noticing_subscription(worker)
    errors = []

    def target():
        try:
            with app.app_context():
                worker.run()
        except BaseException as exc:  # shown by the test, not lost in the thread
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    try:
        assert subscribed.wait(10), "the worker did not subscribe"
        yield worker
    finally:
        stop.set()
        thread.join(15)
    assert not thread.is_alive()
    assert not errors, errors


def count(model=RawMeasure) -> int:
    value = db.session.scalar(sa.select(sa.func.count()).select_from(model))
    db.session.rollback()  # no snapshot left open across the test's waits
    return value


def test_batch_is_flushed_when_full(app, make_definition, broker):
    make_definition("m")
    config = broker.config(batch_max_size=5, save_interval_ms=600_000)
    with running_worker(app, config) as worker, publisher(broker.port) as client:
        publish(client, [measure(i) for i in range(12)])
        _wait_for(lambda: count() == 10, what="two full batches")
        time.sleep(0.5)
        assert count() == 10  # the last 2 wait for a full batch or the interval
        assert worker.counters.batches == 2
    # Stopping flushes them.
    assert count() == 12
    assert worker.counters.stored == 12


def test_batch_is_flushed_after_the_interval(app, make_definition, broker):
    make_definition("m")
    config = broker.config(batch_max_size=1000, save_interval_ms=200)
    with running_worker(app, config) as worker, publisher(broker.port) as client:
        publish(client, [[measure(1), measure(2)], measure(3)])
        _wait_for(lambda: count() == 3, timeout=5, what="the interval's flush")
        assert worker.counters.batches >= 1
        values = db.session.scalars(sa.select(RawMeasure.value).order_by(RawMeasure.value)).all()
        assert [int(v) for v in values] == [1, 2, 3]


def test_bad_messages_are_set_aside_and_the_worker_keeps_going(app, make_definition, broker, caplog):
    make_definition("m")
    rejects_seen = []
    config = broker.config(rejected_topic="dacc/rejected")
    big = b"PAYLOADMARK" + b"x" * 10_000
    bad = [
        b"not json PAYLOADMARK",
        b"\xff\xfe\xfa",
        b"5",
        measure(measureName="nope"),
        measure(value="abc"),
        [measure(1), measure(2, group1={"other": "a"})],
        big,
    ]
    caplog.set_level("INFO", logger="dacc")
    with publisher(broker.port, "rejects-reader") as reader:
        reader.on_message = lambda client, userdata, message: rejects_seen.append(json.loads(message.payload))
        subscribe(reader, "dacc/rejected")
        with running_worker(app, config) as worker, publisher(broker.port) as client:
            publish(client, bad)
            publish(client, [measure(7)])
            _wait_for(lambda: count() == 1 and count(RejectedMessage) == len(bad), what="the valid measure")
            _wait_for(lambda: len(rejects_seen) == len(bad), timeout=5, what="the rejects on rejected_topic")
    assert worker.counters.rejected == len(bad)
    assert db.session.scalar(sa.select(RawMeasure.value)) == 7  # nothing of the half-bad array
    rows = db.session.scalars(sa.select(RejectedMessage).order_by(RejectedMessage.id)).all()
    errors = [r.error for r in rows]
    assert errors[0].startswith("payload: not valid JSON")
    assert errors[1] == "payload: not UTF-8 text"
    assert errors[2] == "body: expected a JSON object"
    assert errors[3] == "measureName: no measure definition named 'nope'"
    assert errors[4] == 'value: expected a finite number, got "abc"'
    assert errors[5].startswith("item 1: group1: expected an object with the one key 'g1'")
    assert all(r.topic == f"{TOPIC}/device" and r.org == "org" for r in rows)
    assert rows[6].payload == big[:4096] and rows[6].payload_size == len(big)
    assert rows[0].payload == b"not json PAYLOADMARK"
    assert [e["error"] for e in rejects_seen] == errors
    assert rejects_seen[0]["payload"] == "not json PAYLOADMARK"
    assert "PAYLOADMARK" not in caplog.text  # the log says why, never what
    assert "rejected: topic=dacc/measures/device org=org error=payload: not valid JSON" in caplog.text
    assert 'got "abc"' not in caplog.text  # nor the value a fault quotes


def test_measure_ids_make_redelivered_messages_count_once(app, make_definition, broker):
    """Published twice (as a redelivery would be), a measure with a measureId is stored once."""
    make_definition("m")
    with running_worker(app, broker.config()) as worker, publisher(broker.port) as client:
        publish(client, [measure(i, measureId=f"id-{i}") for i in range(5)] * 2)
        _wait_for(lambda: worker.counters.stored + worker.counters.duplicates == 10, what="both copies")
    assert count() == 5 and count(MeasureKey) == 5
    assert worker.counters.duplicates == 5


def test_a_subscription_writes_as_its_org(app, make_definition, broker):
    """The subscription's org plays the token's part: write grants, measureId scope."""
    make_definition("m", writers=["org"])
    make_definition("theirs", writers=["other"])
    config = broker.config(
        subscriptions=(Subscription("dacc/mine/#", "org"), Subscription(f"{TOPIC}/#", "other"))
    )
    with running_worker(app, config) as worker, publisher(broker.port) as client:
        publish(client, [measure(1, measureId="same"), measure(2, measureName="theirs")], topic="dacc/mine/a")
        publish(client, [measure(3, measureId="same")], topic=f"{TOPIC}/elsewhere")
        _wait_for(lambda: worker.counters.stored + worker.counters.rejected == 3, what="three outcomes")
    rows = db.session.execute(
        sa.select(RejectedMessage.org, RejectedMessage.error).order_by(RejectedMessage.id)
    ).all()
    assert [org for org, _ in rows] == ["org", "other"]
    assert rows[0].error == "measureName: this token may not send measures of 'theirs'"
    assert rows[1].error == "measureName: this token may not send measures of 'm'"
    assert [int(v) for v in db.session.scalars(sa.select(RawMeasure.value))] == [1]


def test_progress_lines_give_counts_and_rate(app, make_definition, broker, caplog, monkeypatch):
    from dacc.mqtt import worker as worker_module

    monkeypatch.setattr(worker_module, "PROGRESS_SECONDS", 0.2)
    make_definition("m")
    caplog.set_level("INFO", logger="dacc")
    with running_worker(app, broker.config()), publisher(broker.port) as client:
        publish(client, [measure(1), measure(2), b"bad"])
        _wait_for(lambda: "3 message(s) received, 2 measure(s) stored (0 duplicates), 1 message(s) rejected"
                  in caplog.text, what="a progress line")  # fmt: skip
    assert " measures/s" in caplog.text


def test_an_unexpected_error_stops_the_worker_without_acknowledging(
    app, make_definition, broker, monkeypatch
):
    from dacc.mqtt import worker as worker_module

    make_definition("m")

    def broken(measures):
        raise RuntimeError("a bug")

    monkeypatch.setattr(worker_module, "store_measures", broken)
    stop = threading.Event()
    worker = mqtt.Worker(broker.config(), stop=stop)
    subscribed = noticing_subscription(worker)
    outcome = []

    def target():
        with app.app_context():
            try:
                worker.run()
            except RuntimeError as exc:
                outcome.append(str(exc))

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    assert subscribed.wait(15), "the worker did not subscribe"
    with publisher(broker.port) as client:
        publish(client, [measure(1)])
    thread.join(15)
    assert not thread.is_alive() and outcome == ["a bug"]
    monkeypatch.undo()
    # Not acknowledged: the next worker of the same session stores it.
    with running_worker(app, broker.config()):
        _wait_for(lambda: count() == 1, what="the redelivered message")


def test_broker_down_at_start_then_up_logs_once_and_connects(app, make_definition, tmp_path, caplog):
    """Reconnection with backoff: one line for the outage, one when connected."""
    make_definition("m")
    port = _free_port()
    config = MqttConfig(subscriptions=(Subscription(f"{TOPIC}/#", "org"),), host="127.0.0.1", port=port,
                        client_id="dacc-test", save_interval_ms=50)  # fmt: skip
    caplog.set_level("INFO", logger="dacc")
    stop = threading.Event()
    worker = mqtt.Worker(config, stop=stop)

    def target():
        with app.app_context():
            worker.run()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    try:
        _wait_for(lambda: "broker unreachable" in caplog.text, what="the first attempt")
        time.sleep(2.5)  # a few more attempts, 1 s apart at first
        assert caplog.text.count("broker unreachable") == 1
        conf = tmp_path / "late.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        late = subprocess.Popen(
            ["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            _wait_for(lambda: "subscribed to" in caplog.text, timeout=40, what="the reconnection")
            with publisher(port) as client:
                publish(client, [measure(5)])
                _wait_for(lambda: count() == 1, what="the measure")
        finally:
            stop.set()
            thread.join(15)
            late.terminate()
            late.wait(10)
    finally:
        stop.set()
    assert caplog.text.count("broker unreachable") == 1
    assert "connected to 127.0.0.1" in caplog.text


# --- the worker as `flask ingest mqtt`, in a process of its own --------------------


class WorkerProcess:
    """`flask ingest mqtt` in a subprocess; its stderr lines are collected."""

    def __init__(self, tmp_path: Path, database_url: str, broker: Broker, **mqtt_settings):
        settings = {
            "host": "127.0.0.1",
            "port": broker.port,
            "client_id": "dacc-worker",
            "subscriptions": [{"topic": f"{TOPIC}/#", "org": "org"}],
            **mqtt_settings,
        }
        config = tmp_path / "worker.yml"
        config.write_text(json.dumps({"mqtt": settings, "logging": {"logger_criticity": "INFO"}}))
        env = {**os.environ, "DATABASE_URL": database_url, "DACC_CONFIG": str(config), "FLASK_APP": "dacc",
               "PYTHONPATH": str(ROOT)}  # fmt: skip
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "flask", "ingest", "mqtt"],
            cwd=tmp_path, env=env, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        _wait_for(lambda: self.saw("subscribed to") or self.process.poll() is not None, timeout=30,
                  what="the worker to subscribe")  # fmt: skip
        assert self.process.poll() is None, self.text()

    def _read(self):
        for line in self.process.stderr:
            self.lines.append(line)

    def saw(self, text: str) -> bool:
        return any(text in line for line in self.lines)

    def text(self) -> str:
        return "".join(self.lines)

    def stop(self, sig=signal.SIGTERM) -> int:
        self.process.send_signal(sig)
        code = self.process.wait(20)
        self._reader.join(5)
        return code


def test_worker_killed_mid_batch_then_restarted_stores_every_message_once(
    app, make_definition, broker, database_url, tmp_path
):
    make_definition("m")
    total = 600
    worker = WorkerProcess(tmp_path, database_url, broker, batch_max_size=50, save_interval_ms=50)
    with publisher(broker.port) as client:
        sender = threading.Thread(
            target=publish, args=(client, [measure(i, measureId=f"k{i}") for i in range(total)])
        )
        sender.start()
        _wait_for(lambda: count() >= 100, what="some batches")
        worker.stop(signal.SIGKILL)  # mid-way: some messages stored, not yet acknowledged
        killed_at = count()
        sender.join()
    assert killed_at < total
    again = WorkerProcess(tmp_path, database_url, broker, batch_max_size=50, save_interval_ms=50)
    _wait_for(lambda: count() == total, what="every message after the restart")
    time.sleep(0.3)
    assert again.stop() == 0, again.text()
    assert count() == total and count(MeasureKey) == total
    assert "stopped: " in again.process.stdout.read()


def test_sigterm_flushes_and_acknowledges_the_pending_batch(
    app, make_definition, broker, database_url, tmp_path
):
    make_definition("m")
    worker = WorkerProcess(tmp_path, database_url, broker, save_interval_ms=600_000)
    with publisher(broker.port) as client:
        publish(client, [measure(i) for i in range(3)])
    time.sleep(0.5)  # received, waiting for a full batch or the interval
    assert count() == 0
    assert worker.stop() == 0, worker.text()
    assert count() == 3
    # Acknowledged: a worker with the same client id gets nothing again (no measureId,
    # so a redelivery would store them twice).
    again = WorkerProcess(tmp_path, database_url, broker, save_interval_ms=50)
    time.sleep(1.0)
    assert again.stop() == 0
    assert count() == 3


def test_database_stopped_and_restarted_under_the_worker_loses_nothing(broker, tmp_path):
    import pgserver
    from pgserver._commands import pg_ctl

    from dacc import create_app
    from dacc.config import Config, normalise_database_url
    from dacc.embedded import create_database
    from dacc.migrations_runner import upgrade_to_head
    from dacc.models import MeasureDefinition

    server = pgserver.get_server(tmp_path / "pg", cleanup_mode="stop")
    try:
        create_database(server.get_uri("postgres"), "outage")
        url = normalise_database_url(server.get_uri("outage"))
        app = create_app(Config(database_url=url, testing=True))
        with app.app_context():
            upgrade_to_head()
            db.session.add(MeasureDefinition(name="m", org="org", group1_key="g1", aggregation_period="day",
                                             execution_frequency="day", aggregation_threshold=1))  # fmt: skip
            db.session.commit()
            worker = WorkerProcess(tmp_path, url, broker, batch_max_size=20, save_interval_ms=50)
            with publisher(broker.port) as client:
                publish(client, [measure(i) for i in range(50)])
                _wait_for(lambda: count() == 50, what="the first measures")
                db.session.remove()
                db.engine.dispose()
                pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user)
                publish(client, [measure(i) for i in range(50, 150)])
                _wait_for(lambda: worker.saw("database unavailable"), what="the worker to notice")
                time.sleep(1.0)
                server.ensure_postgres_running()
                _wait_for(lambda: count() == 150, timeout=40, what="the measures sent during the outage")
            assert worker.saw("consumption resumed")
            assert worker.stop() == 0, worker.text()
            assert count() == 150
            values = db.session.scalars(sa.select(RawMeasure.value)).all()
            assert sorted(int(v) for v in values) == list(range(150))
            db.session.remove()
            db.engine.dispose()
    finally:
        server.cleanup()
