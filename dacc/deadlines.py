"""Client-side deadlines on PostgreSQL waits during HTTP requests.

`statement_timeout` runs inside PostgreSQL: a frozen server (stopped processes, a
network partition, a stuck disk) never fires it, and libpq then waits forever. A web
request instead gets a deadline when it starts; every connection it checks out of the
pool is watched by one thread per process, which shuts the connection's socket down
when the deadline passes. The blocked driver call then fails at once with an
OperationalError on a closed connection: SQLAlchemy sees a disconnect, drops the pool,
and the error handler answers 503. Works for unix sockets and TCP, and for COPY (a
psycopg2 wait callback would not: COPY refuses to run under one).

CLI commands and jobs get no deadline (they may run long statements on purpose): TCP
keepalives and `client_connection_check_interval` cover them (see dacc.__init__).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

import sqlalchemy as sa
from flask import has_request_context, request

log = logging.getLogger(__name__)

REQUEST_SECONDS = 4.0
"""Longest a web request may wait for PostgreSQL in all: its 503 comes within 5 s."""
STATUS_SECONDS = 2.0
"""/status answers within 3 s: its deadline is shorter."""
ENVIRON_KEY = "dacc.db_deadline"
_TICK = 0.1


def start_request_deadline(seconds: float = REQUEST_SECONDS) -> None:
    """Give the current request a deadline `seconds` from now (a shorter one wins)."""
    deadline = time.monotonic() + seconds
    current = request.environ.get(ENVIRON_KEY)
    if current is None or deadline < current:
        request.environ[ENVIRON_KEY] = deadline


def request_deadline() -> float | None:
    """The current request's deadline (time.monotonic()), None outside a request."""
    if not has_request_context():
        return None
    return request.environ.get(ENVIRON_KEY)


def watch_engine(engine: sa.engine.Engine) -> None:
    """Watch the connections that requests check out of `engine`'s pool."""
    sa.event.listen(engine, "checkout", _on_checkout)
    sa.event.listen(engine, "checkin", _on_checkin)
    sa.event.listen(engine, "close", _on_checkin)
    sa.event.listen(engine, "invalidate", _on_invalidate)


def _on_checkout(dbapi_connection, connection_record, connection_proxy) -> None:
    deadline = request_deadline()
    if deadline is not None:
        _watchdog().watch(dbapi_connection, deadline)


def _on_checkin(dbapi_connection, connection_record) -> None:
    if dbapi_connection is not None:
        _watchdog().forget(dbapi_connection)


def _on_invalidate(dbapi_connection, connection_record, exception) -> None:
    _on_checkin(dbapi_connection, connection_record)


class _Watchdog:
    """One thread per process: shuts down the sockets of connections past their deadline.

    Each watched connection's socket is held through a duplicate descriptor of our own,
    so that a descriptor number reused after the driver closed its connection can never
    be shut down by mistake.
    """

    def __init__(self):
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.watched: dict[int, tuple[float, socket.socket]] = {}
        self.wake = threading.Event()
        thread = threading.Thread(target=self._run, name="dacc-db-deadlines", daemon=True)
        thread.start()

    def watch(self, dbapi_connection, deadline: float) -> None:
        try:
            sock = socket.socket(fileno=os.dup(dbapi_connection.fileno()))
        except (OSError, ValueError, AttributeError):
            return  # closed already: nothing can block on it
        with self.lock:
            old = self.watched.pop(id(dbapi_connection), None)
            self.watched[id(dbapi_connection)] = (deadline, sock)
        if old is not None:
            old[1].close()
        if deadline - time.monotonic() < _TICK:
            # Only a deadline sooner than the next tick needs the thread now: waking it
            # on every checkout would hand it the GIL once per request.
            self.wake.set()

    def forget(self, dbapi_connection) -> None:
        with self.lock:
            entry = self.watched.pop(id(dbapi_connection), None)
        if entry is not None:
            entry[1].close()

    def _run(self) -> None:
        while True:
            self.wake.wait(_TICK)
            self.wake.clear()
            now = time.monotonic()
            with self.lock:
                due = [key for key, (deadline, _) in self.watched.items() if deadline <= now]
                expired = [self.watched.pop(key)[1] for key in due]
            for sock in expired:
                log.warning("database did not answer within the request's deadline: connection dropped")
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()


_instance: _Watchdog | None = None
_instance_lock = threading.Lock()


def _watchdog() -> _Watchdog:
    """The process's watchdog, started on first use (and again in a forked child)."""
    global _instance
    if _instance is None or _instance.pid != os.getpid():
        with _instance_lock:
            if _instance is None or _instance.pid != os.getpid():
                _instance = _Watchdog()
    return _instance
