"""Group commit for POST /measure: concurrent requests of one process share one commit."""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy.engine import Connection
from sqlalchemy.exc import OperationalError

from dacc.db import db

log = logging.getLogger(__name__)

_UNSET = object()


class _Pending:
    """One request's measure, and its outcome once the writer has settled it."""

    __slots__ = ("item", "done", "result", "error", "wake")

    def __init__(self, item, lock):
        self.item = item
        self.done = False
        self.result: Any = _UNSET
        self.error: BaseException | None = None
        self.wake = threading.Condition(lock)
        """Notified (on the writer's lock) when done, or when it is to lead."""


class MeasureWriter:
    """Gathers the validated measures of concurrent requests into shared transactions.

    There is no writer thread: the first request that finds no batch being written
    becomes the leader, takes what is queued (at most `batch_max`) and writes it on its
    own connection in one transaction; requests arriving meanwhile queue behind it, and
    the first of them leads the next batch. So a lone request is written at once, a busy
    process commits once per batch, and nothing is left pending when a worker stops
    serving: each queued measure belongs to a request still waiting for its answer,
    which writes it itself if nobody else does. A finished batch wakes its own requests
    and the next leader, not every request still queued.

    The leader waits up to `window_ms` for more measures only while other requests are
    being validated (they are about to queue). Only `threading` primitives are used, so
    it works in threaded workers and under gevent's monkey-patching alike.

    `store_one(connection, item)` and `store_batch(connection, items)` execute the SQL
    (no commit) on the batch's Core connection, checked out of the engine's pool for
    the batch (no ORM session: it costs more than the INSERT), and return each item's
    result; the writer commits. A refusal of a batch (a database error, or
    an exception such as a contributor's cap) is retried item by item, so that only the
    faulty item fails; an unreachable database (OperationalError) fails the whole
    batch, as it would each request alone.
    """

    def __init__(
        self,
        *,
        store_one: Callable[[Connection, Any], Any],
        store_batch: Callable[[Connection, Sequence[Any]], Sequence[Any]],
        window_ms: int,
        batch_max: int,
    ):
        self._store_one = store_one
        self._store_batch = store_batch
        self._window = window_ms / 1000
        self._max = batch_max
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._queue: list[_Pending] = []
        self._writing = False
        self._validating = 0

    @property
    def pending(self) -> int:
        """Measures queued for the next batch (not the one being written)."""
        return len(self._queue)

    def write(self, validate: Callable[..., Any], *args, **kwargs) -> Any:
        """Validate with `validate(*args, **kwargs)`, then store the item; its result once
        committed.

        Raises what `validate` raises (nothing stored), or the database error that
        refused this item (nothing of it stored).
        """
        with self._lock:
            self._validating += 1
        try:
            item = validate(*args, **kwargs)
        except BaseException:
            with self._lock:
                self._validating -= 1
                self._arrived.notify()
            raise
        pending = _Pending(item, self._lock)
        with self._lock:
            self._validating -= 1
            self._queue.append(pending)
            self._arrived.notify()
            while not pending.done:
                if self._writing:
                    pending.wake.wait()
                else:
                    self._lead()
        if pending.error is not None:
            raise pending.error
        return pending.result

    def _lead(self) -> None:
        """Write one batch; called and returns with the lock held, releases it meanwhile."""
        self._writing = True
        batch: list[_Pending] = []
        try:
            if self._validating and len(self._queue) < self._max:
                deadline = time.monotonic() + self._window
                while self._validating and len(self._queue) < self._max:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._arrived.wait(left)
            batch = self._queue[: self._max]
            del self._queue[: self._max]
            self._lock.release()
            try:
                self._flush(batch)
            finally:
                self._lock.acquire()
        finally:
            for pending in batch:
                if pending.result is _UNSET and pending.error is None:
                    # Only if _flush itself was interrupted (e.g. a worker timeout): the
                    # commit may or may not have happened, so no request gets a 201; a
                    # client retry with its measureId is safe either way.
                    pending.error = RuntimeError("the measure's batch was interrupted")
                pending.done = True
                pending.wake.notify()
            self._writing = False
            if self._queue:
                # The head of what is left leads the next batch (unless a new arrival
                # finds the writer idle first; the head is woken again after that batch).
                self._queue[0].wake.notify()

    def _flush(self, batch: list[_Pending]) -> None:
        """Store and commit the batch; set each pending's result or error. Never raises
        an Exception (a BaseException such as a worker timeout does propagate)."""
        try:
            connection = db.engine.connect()
        except Exception as exc:  # the pool timed out, or no new connection could be made
            _fail_all(batch, exc)
            return
        try:
            self._flush_on(connection, batch)
        finally:
            try:
                connection.close()
            except Exception:  # a broken connection: the pool has dropped it already
                log.debug("closing a batch's connection failed", exc_info=True)

    def _flush_on(self, connection: Connection, batch: list[_Pending]) -> None:
        items = [pending.item for pending in batch]
        try:
            if len(items) == 1:
                results = [self._store_one(connection, items[0])]
            else:
                results = self._store_batch(connection, items)
            connection.commit()
        except OperationalError as exc:
            # The database is away or the connection broke: each request answers 503.
            _rollback(connection)
            _fail_all(batch, exc)
        except Exception as exc:
            # A refusal (a database constraint, a contributor's cap, ...): nothing of the
            # batch is stored; each measure is tried again alone, so only its own fails.
            _rollback(connection)
            if len(batch) == 1:
                batch[0].error = exc
            else:
                log.info(
                    "a batch of %d measures was refused (%s), retrying each alone",
                    len(batch),
                    type(exc).__name__,
                )
                self._store_each(connection, batch)
        else:
            for pending, result in zip(batch, results, strict=True):
                pending.result = result
            if len(batch) > 1:
                log.debug("stored %d measures in one commit", len(batch))

    def _store_each(self, connection: Connection, batch: list[_Pending]) -> None:
        """One transaction per item, so that the refused ones fail alone."""
        for pending in batch:
            try:
                result = self._store_one(connection, pending.item)
                connection.commit()
            except Exception as exc:
                _rollback(connection)
                pending.error = exc
            else:
                pending.result = result


def _fail_all(batch: list[_Pending], exc: Exception) -> None:
    # Each request raises its own copy: one exception object raised in several
    # threads would have its traceback rewritten under the others' feet.
    for index, pending in enumerate(batch):
        pending.error = exc if index == 0 else _copied(exc)


def _copied(exc: Exception) -> Exception:
    try:
        return copy.copy(exc)
    except Exception:  # an exception type that cannot be copied: share it
        return exc


def _rollback(connection: Connection) -> None:
    try:
        connection.rollback()
    except Exception:  # the connection may be gone; the error is reported anyway
        log.debug("rollback after a failed batch failed", exc_info=True)
