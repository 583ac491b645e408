"""The `flask ingest mqtt` worker: one thread gathers and validates batches, another
commits them and then acknowledges their messages to the broker."""

from __future__ import annotations

import dataclasses
import functools
import logging
import queue
import threading
import time
from datetime import UTC, datetime

import paho.mqtt.client as paho
import psycopg2
import sqlalchemy as sa
from flask import current_app
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from dacc.config import MqttConfig
from dacc.db import db
from dacc.errors import Conflict, error_message
from dacc.ingestion import store_measures
from dacc.models.messages import RejectedMessage
from dacc.mqtt.messages import (
    Message,
    log_reject,
    prepare_message,
    reject_event,
    reject_row,
    validate_messages,
)

log = logging.getLogger("dacc.mqtt")

PROGRESS_SECONDS = 10.0
KEEPALIVE_SECONDS = 30
RETRY_MAX_SECONDS = 30
SESSION_NEVER_EXPIRES = 0xFFFFFFFF
"""MQTT 5 session expiry: the broker keeps our session, and what we have not
acknowledged, however long the worker is away."""
OUTAGE = (sa.exc.OperationalError, sa.exc.InterfaceError, psycopg2.OperationalError, psycopg2.InterfaceError)
"""The database is away or the connection broke. (COPY runs on the driver's cursor, so
its errors arrive as psycopg2's own.)"""
RECEIVE_MAXIMUM = 65535
"""Unacknowledged messages the broker may send (MQTT 5's largest): acks wait for the
commit of their batch, so the window must hold more than a batch."""


@dataclasses.dataclass
class Counters:
    received: int = 0
    """Messages received from the broker."""
    stored: int = 0
    """Measures committed."""
    duplicates: int = 0
    """Measures skipped: their measureId was already stored."""
    rejected: int = 0
    """Messages set aside in rejected_message."""
    batches: int = 0


def run_worker(config: MqttConfig, *, stop: threading.Event) -> Counters:
    """Consume the configured subscriptions until `stop` is set, then flush and
    acknowledge what was received, and disconnect.

    Each message is acknowledged only after the transaction holding its measures (or
    its rejected_message row) committed, so a worker killed at any point loses nothing:
    the broker redelivers what it did not acknowledge. Needs an app context.
    """
    return Worker(config, stop=stop).run()


class Worker:
    def __init__(self, config: MqttConfig, *, stop: threading.Event):
        self.config = config
        self.stop = stop
        self.counters = Counters()
        self._inbox: queue.SimpleQueue[Message] = queue.SimpleQueue()
        self._connection = 0
        self._redelivered_below = 0
        """Messages of connections below this one come again (the session was resumed)."""
        self._states: dict[str, str] = {}
        self._disconnected = threading.Event()
        self._batches: queue.Queue[_Batch | None] = queue.Queue(maxsize=1)
        self._writer_error: BaseException | None = None
        self._org = functools.lru_cache(maxsize=4096)(self._match_org)
        self.client = self._make_client()

    # --- the broker side (paho's network thread) -------------------------------------

    def _make_client(self) -> paho.Client:
        config = self.config
        client = paho.Client(
            paho.CallbackAPIVersion.VERSION2,
            client_id=config.client_id,
            protocol=paho.MQTTv5,
            manual_ack=True,
        )
        if config.username:
            client.username_pw_set(config.username, config.password)
        if config.tls:
            client.tls_set(ca_certs=config.tls_ca_certs, certfile=config.tls_certfile,
                           keyfile=config.tls_keyfile)  # fmt: skip
        client.reconnect_delay_set(min_delay=1, max_delay=RETRY_MAX_SECONDS)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        return client

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            self._state("broker", f"the broker refused the connection: {reason_code}")
            return
        self._connection += 1
        if flags.session_present:
            self._redelivered_below = self._connection
        session = "session resumed" if flags.session_present else "new session"
        self._state("broker", f"connected to {self.config.host}:{self.config.port} ({session})")
        client.subscribe([(s.topic, self.config.qos) for s in self.config.subscriptions])

    def _on_connect_fail(self, client, userdata):
        self._state("broker", f"broker unreachable at {self.config.host}:{self.config.port}; retrying")

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        self._disconnected.set()
        if not self.stop.is_set():
            self._state("broker", f"connection to the broker lost ({reason_code}); reconnecting")

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        failed = [str(code) for code in reason_codes if code.is_failure]
        if failed:
            log.error("mqtt: subscription refused: %s", ", ".join(failed))
        else:
            topics = ", ".join(s.topic for s in self.config.subscriptions)
            log.info("mqtt: subscribed to %s", topics)

    def _on_message(self, client, userdata, message):
        self.counters.received += 1
        self._inbox.put(Message(message.topic, message.payload, message.mid, message.qos,
                                self._org(message.topic), datetime.now(UTC),
                                self._connection))  # fmt: skip

    def _match_org(self, topic: str) -> str | None:
        """The org of the first subscription matching `topic` (they should not overlap)."""
        for subscription in self.config.subscriptions:
            if paho.topic_matches_sub(subscription.topic, topic):
                return subscription.org
        return None

    def _state(self, what: str, state: str) -> None:
        """Log a state of the broker or the database once, when it changes."""
        if self._states.get(what) != state:
            self._states[what] = state
            level = logging.INFO if state.startswith(("connected", "database available")) else logging.WARNING
            log.log(level, "mqtt: %s", state)

    # --- the batching side (the caller's thread) -------------------------------------

    def run(self) -> Counters:
        config = self.config
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = SESSION_NEVER_EXPIRES
        properties.ReceiveMaximum = RECEIVE_MAXIMUM
        # A persistent session: the broker keeps our subscriptions and queues, and
        # redelivers what we did not acknowledge, across restarts of the worker.
        self.client.connect_async(config.host, config.port, keepalive=KEEPALIVE_SECONDS,
                                  clean_start=False, properties=properties)  # fmt: skip
        self.client.loop_start()  # connects, and reconnects with backoff
        writer = threading.Thread(target=self._write_batches, args=(current_app._get_current_object(),),
                                  name="dacc-mqtt-writer", daemon=True)  # fmt: skip
        writer.start()
        try:
            self._consume(writer)
        finally:
            self._hand_over_to(writer, None)  # the writer ends after the last batch
            writer.join()
            self.client.disconnect()
            self._disconnected.wait(5)  # the acks go out before the DISCONNECT
            self.client.loop_stop()
        if self._writer_error is not None:
            raise self._writer_error
        return self.counters

    def _consume(self, writer: threading.Thread) -> None:
        """Gather batches and validate them; the writer thread stores them meanwhile."""
        interval = self.config.save_interval_ms / 1000
        batch: list[Message] = []
        size, deadline = 0, 0.0
        progress = _Progress(self.counters)
        while not self.stop.is_set():
            wait = min(max(deadline - time.monotonic(), 0.0), 0.25) if batch else 0.25
            try:
                message = self._inbox.get(timeout=wait)
            except queue.Empty:
                pass
            else:
                if not batch:
                    deadline = time.monotonic() + interval
                batch.append(message)
                size += prepare_message(message)
            if batch and (size >= self.config.batch_max_size or time.monotonic() >= deadline):
                self._hand_over(batch, writer)
                batch, size = [], 0
            progress.tick()
        # Stopping: what has been received is stored and acknowledged; what arrives
        # after this is not acknowledged, so the broker sends it again next time.
        while True:
            try:
                message = self._inbox.get_nowait()
            except queue.Empty:
                break
            batch.append(message)
            prepare_message(message)
        if batch:
            self._hand_over(batch, writer)
        progress.tick(force=True)

    def _hand_over(self, messages: list[Message], writer: threading.Thread) -> None:
        self._hand_over_to(writer, _Batch(messages, self._prevalidate(messages)))

    def _hand_over_to(self, writer: threading.Thread, batch: _Batch | None) -> None:
        # At most one batch waits for the writer: while the database is away, the
        # worker stops taking messages, which stay unacknowledged at the broker.
        while True:
            try:
                self._batches.put(batch, timeout=0.5)
                return
            except queue.Full:
                if not writer.is_alive():
                    return  # run() raises the writer's error

    def _prevalidate(self, messages: list[Message]) -> list | None:
        """The measures of the batch, validated in this thread while the writer is busy;
        None when a definition could not be read (the writer validates again)."""
        try:
            return validate_messages(self._live(messages))
        except (sa.exc.DBAPIError, psycopg2.Error):
            return None
        finally:
            try:
                db.session.rollback()  # no transaction left open by definition lookups
            except Exception:
                _reset_session()

    def _live(self, messages: list[Message]) -> list[Message]:
        """Without the messages of a resumed session's earlier connections: the broker
        sends those again, and storing them too would count them twice."""
        return [m for m in messages if m.connection >= self._redelivered_below]

    # --- the writer thread -----------------------------------------------------------

    def _write_batches(self, app) -> None:
        try:
            with app.app_context():
                while True:
                    batch = self._batches.get()
                    if batch is None:
                        return
                    self._flush(batch)
        except BaseException as exc:  # raised again by run(), in the caller's thread
            self._writer_error = exc
            self.stop.set()

    def _flush(self, batch: _Batch) -> None:
        """Commit the batch, retrying while the database is away, then acknowledge it."""
        delay = 1.0
        while True:
            messages = self._live(batch.messages)
            if len(messages) != len(batch.messages):
                batch = _Batch(messages, None)
            try:
                rejected = self._store(batch.messages, batch.measures)
                break
            except OUTAGE as exc:
                self._state("database", f"database unavailable ({_db_error(exc)}); consumption paused")
                if self.stop.wait(delay):
                    log.warning("mqtt: stopped while the database is unavailable: %d message(s) left"
                                " unacknowledged, the broker will send them again", len(messages))  # fmt: skip
                    return
                delay = min(delay * 2, RETRY_MAX_SECONDS)
        if "database" in self._states:
            self._state("database", "database available again; consumption resumed")
        for message in rejected:
            log_reject(message)
            if self.config.rejected_topic:
                self.client.publish(self.config.rejected_topic, reject_event(message), qos=1)
        for message in batch.messages:
            # Only on the connection it came on; one from an earlier connection whose
            # session was not resumed is stored but cannot be acknowledged any more.
            if message.connection == self._connection:
                self.client.ack(message.mid, message.qos)

    def _store(self, messages: list[Message], measures: list | None) -> list[Message]:
        """Write the messages in one transaction; the ones set aside."""
        try:
            return self._write(messages, measures)
        except Conflict as exc:
            # A contributor over its maxContributionsPerCell: nothing was stored; find
            # the message at fault one by one, as for a refused statement.
            db.session.rollback()
            error = exc.message
        except (sa.exc.DBAPIError, psycopg2.Error) as exc:
            _reset_session()
            if isinstance(exc, OUTAGE) or getattr(exc, "connection_invalidated", False):
                raise
            error = f"database refused it: {_db_error(exc)}"
        # A statement failed on some content that validation let through: find the
        # message at fault by writing them one by one, so that the others are stored.
        if len(messages) == 1:
            messages[0].error = error
            return self._write(messages, [])
        log.warning("mqtt: a batch of %d messages failed (%s); writing them one by one", len(messages), error)
        return [rejected for message in messages for rejected in self._store([message], None)]

    def _write(self, messages: list[Message], measures: list | None) -> list[Message]:
        if measures is None:
            measures = validate_messages(messages)
        rejected = [m for m in messages if m.error is not None]
        if rejected:
            db.session.execute(sa.insert(RejectedMessage), [reject_row(m) for m in rejected])
        result = store_measures(measures)  # commits, when it has measures to write
        db.session.commit()
        counters = self.counters
        counters.stored += result.inserted
        counters.duplicates += result.duplicates
        counters.rejected += len(rejected)
        counters.batches += 1
        return rejected


@dataclasses.dataclass
class _Batch:
    messages: list[Message]
    measures: list | None
    """Validated already, or None: the writer validates."""


def _reset_session() -> None:
    """Forget the transaction and the connection, which may be dead: a driver-level
    error leaves SQLAlchemy unaware of it, and the next attempt must start clean."""
    try:
        db.session.rollback()
    except Exception:  # the connection is gone; the pool is dropped below
        log.debug("rollback after a failed batch failed", exc_info=True)
    db.session.remove()
    db.engine.dispose()


def _db_error(exc: Exception) -> str:
    if isinstance(exc, psycopg2.Error):
        lines = str(exc).strip().splitlines()
        return lines[0] if lines else type(exc).__name__
    return error_message(exc)


class _Progress:
    """An info line every PROGRESS_SECONDS: counters and the rate since the last one."""

    def __init__(self, counters: Counters):
        self.counters = counters
        self.last = time.monotonic()
        self.stored = 0

    def tick(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < PROGRESS_SECONDS:
            return
        c = self.counters
        rate = (c.stored - self.stored) / max(now - self.last, 1e-9)
        log.info("mqtt: %d message(s) received, %d measure(s) stored (%d duplicates),"
                 " %d message(s) rejected; %.0f measures/s",
                 c.received, c.stored, c.duplicates, c.rejected, rate)  # fmt: skip
        self.last, self.stored = now, c.stored
