"""`flask ingest mqtt`: drain a broker into raw measures, in batches, losing nothing."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import queue
import threading
import time
from datetime import datetime, timezone

import paho.mqtt.client as paho
import psycopg2
import sqlalchemy as sa
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from dacc.config import MqttConfig
from dacc.db import db
from dacc.errors import Conflict, error_message
from dacc.ingestion import MAX_BATCH, store_measures, validate_batch
from dacc.logs import printable
from dacc.models.messages import PAYLOAD_LIMIT, RejectedMessage

log = logging.getLogger(__name__)

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


@dataclasses.dataclass(slots=True)
class Message:
    """A message received and not yet acknowledged."""

    topic: str
    payload: bytes
    mid: int
    qos: int
    org: str | None
    received_at: datetime
    connection: int
    """The connection it came on: its packet id means nothing on another one."""
    items: list | None = None
    array: bool = False
    """The payload was an array (else one measure object)."""
    error: str | None = None


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
                                self._org(message.topic), datetime.now(timezone.utc),
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
        try:
            self._consume()
        finally:
            self.client.disconnect()
            self._disconnected.wait(5)  # the acks go out before the DISCONNECT
            self.client.loop_stop()
        return self.counters

    def _consume(self) -> None:
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
                size += _prepare(message)
            if batch and (size >= self.config.batch_max_size or time.monotonic() >= deadline):
                self._flush(batch)
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
            _prepare(message)
        if batch:
            self._flush(batch)
        progress.tick(force=True)

    def _flush(self, batch: list[Message]) -> None:
        """Commit the batch, retrying while the database is away, then acknowledge it."""
        delay = 1.0
        while True:
            # The broker redelivers the messages of a resumed session's earlier
            # connections: storing them too would count them twice.
            batch = [m for m in batch if m.connection >= self._redelivered_below]
            try:
                rejected = self._store(batch)
                break
            except OUTAGE as exc:
                self._state("database", f"database unavailable ({_db_error(exc)}); consumption paused")
                if self.stop.wait(delay):
                    log.warning("mqtt: stopped while the database is unavailable: %d message(s) left"
                                " unacknowledged, the broker will send them again", len(batch))  # fmt: skip
                    return
                delay = min(delay * 2, RETRY_MAX_SECONDS)
        if "database" in self._states:
            self._state("database", "database available again; consumption resumed")
        for message in rejected:
            _log_reject(message)
            if self.config.rejected_topic:
                self.client.publish(self.config.rejected_topic, _reject_event(message), qos=1)
        for message in batch:
            # Only on the connection it came on; one from an earlier connection whose
            # session was not resumed is stored but cannot be acknowledged any more.
            if message.connection == self._connection:
                self.client.ack(message.mid, message.qos)

    def _store(self, batch: list[Message]) -> list[Message]:
        """Write the batch in one transaction; the messages set aside."""
        try:
            return self._write(batch)
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
        if len(batch) == 1:
            batch[0].error = error
            return self._write(batch)
        log.warning("mqtt: a batch of %d messages failed (%s); writing them one by one", len(batch), error)
        return [rejected for message in batch for rejected in self._store([message])]

    def _write(self, batch: list[Message]) -> list[Message]:
        measures = []
        by_org: dict[str, list[Message]] = {}
        for message in batch:
            if message.error is None:
                by_org.setdefault(message.org, []).append(message)
        for org, messages in by_org.items():
            measures += _validate(messages, org)
        rejected = [m for m in batch if m.error is not None]
        if rejected:
            db.session.execute(sa.insert(RejectedMessage), [_reject_row(m) for m in rejected])
        result = store_measures(measures)  # commits, when it has measures to write
        db.session.commit()
        counters = self.counters
        counters.stored += result.inserted
        counters.duplicates += result.duplicates
        counters.rejected += len(rejected)
        counters.batches += 1
        return rejected


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


def _prepare(message: Message) -> int:
    """Parse the payload (sets items, or error); the number of measures it holds."""
    if message.org is None:
        message.error = "topic: matches no configured subscription"
        return 1
    try:
        body = json.loads(message.payload)
    except UnicodeDecodeError:
        message.error = "payload: not UTF-8 text"
        return 1
    except (ValueError, RecursionError) as exc:
        message.error = f"payload: not valid JSON ({exc})"
        return 1
    if type(body) is not list:
        message.items = [body]
        return 1
    if len(body) > MAX_BATCH:
        message.error = f"payload: at most {MAX_BATCH} measures per message, got {len(body)}"
        return 1
    message.items, message.array = body, True
    return max(1, len(body))


def _validate(messages: list[Message], org: str) -> list:
    """The measures of the messages whose every item is valid; marks the others.

    A message is all or nothing, as a POST /measures body: resent after a fix, it is
    stored once."""
    items = [item for m in messages for item in m.items]
    measures, rejects = validate_batch(items, org=org)
    if not rejects:
        return measures
    owner_of = [owner for owner, m in enumerate(messages) for _ in m.items]
    starts: dict[int, int] = {}
    for index, owner in enumerate(owner_of):
        starts.setdefault(owner, index)
    faults: dict[int, list] = {}
    for reject in rejects:
        faults.setdefault(owner_of[reject.index], []).append(reject)
    for owner, found in faults.items():
        message, first = messages[owner], found[0]
        if not message.array:
            message.error = first.error
        else:
            more = f" (and {len(found) - 1} more invalid item(s))" if len(found) > 1 else ""
            message.error = f"item {first.index - starts[owner]}: {first.error}{more}"
    # The valid items, in order, are the measures; keep those of whole messages.
    rejected_indexes = {r.index for r in rejects}
    valid = (i for i in range(len(items)) if i not in rejected_indexes)
    return [measure for i, measure in zip(valid, measures) if owner_of[i] not in faults]


def _log_reject(message: Message) -> None:
    """One line per rejected message: topic, org and fault; never the payload."""
    error = message.error
    if "value: " in error:
        error = error.split(", got ", 1)[0]  # the fault about `value` quotes it
    log.warning("mqtt: message rejected: topic=%s org=%s error=%s", printable(message.topic),
                printable(message.org or "-"), printable(error))  # fmt: skip


def _reject_row(message: Message) -> dict:
    return {
        "topic": message.topic,
        "org": message.org or "",
        "received_at": message.received_at,
        "error": message.error,
        "payload": bytes(message.payload[:PAYLOAD_LIMIT]),
        "payload_size": len(message.payload),
    }


def _reject_event(message: Message) -> str:
    return json.dumps({
        "topic": message.topic,
        "receivedAt": message.received_at.isoformat(),
        "error": message.error,
        "payload": bytes(message.payload[:PAYLOAD_LIMIT]).decode("utf-8", "replace"),
    })  # fmt: skip


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


def list_rejected_messages(*, topic: str | None = None, since: datetime | None = None,
                           limit: int = 100) -> list[RejectedMessage]:  # fmt: skip
    """The newest rejected messages first; `topic` is a topic name, or a prefix ending
    in '/#'."""
    query = sa.select(RejectedMessage).order_by(RejectedMessage.received_at.desc(), RejectedMessage.id.desc())
    if topic is not None:
        if topic.endswith("/#"):
            prefix = topic[:-2]
            escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            query = query.where(sa.or_(RejectedMessage.topic == prefix,
                                       RejectedMessage.topic.like(escaped + "/%", escape="\\")))  # fmt: skip
        else:
            query = query.where(RejectedMessage.topic == topic)
    if since is not None:
        query = query.where(RejectedMessage.received_at >= since)
    rows = db.session.scalars(query.limit(limit)).all()
    db.session.commit()
    return list(rows)
