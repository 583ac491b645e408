"""The embedded PostgreSQL (pgserver) used when no database is configured.

It outlives the processes that use it (the CLI and the next start join it). A server
process that finds it gone restarts it (`revive_if_gone`), unless an admin stopped it
on purpose with `flask embedded stop`: that leaves a marker file in the data folder,
and then nothing starts it again, neither the server nor any other `flask` command,
until `flask embedded start`.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from pathlib import Path

import psycopg2
import psycopg2.errors
import sqlalchemy as sa
from psycopg2 import sql

log = logging.getLogger(__name__)

DATABASE = "dacc"
STOPPED_MARKER = "dacc-stopped-on-purpose"
"""File in the data folder while an admin wants the database stopped; holds its URL."""
REVIVE_INTERVAL_SECONDS = 5.0
"""A process tries a restart at most this often."""

_revive_lock = threading.Lock()
_last_revive = 0.0


class EmbeddedStopped(Exception):
    """The embedded database was stopped on purpose (`flask embedded stop`)."""


def _pgserver():
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (servers, containers): harmless.
        warnings.simplefilter("ignore")
        import pgserver  # heavy import, only when embedded
    return pgserver


def is_running(path: Path) -> bool:
    _pgserver()
    from pgserver.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(path.resolve())
    return info is not None and info.is_running()


def stopped_on_purpose(data_dir: str | Path) -> bool:
    return (Path(data_dir) / STOPPED_MARKER).is_file()


def start_embedded(data_dir: str | Path, *, database: str = DATABASE, stop_at_exit=False) -> str:
    """Start (or join) the PostgreSQL of `data_dir`, create `database`, return its URL.

    The server outlives this process unless `stop_at_exit`: the CLI and the next start
    join the same server instead of paying for a new one. Raises EmbeddedStopped when
    an admin stopped it on purpose.
    """
    path = Path(data_dir)
    if stopped_on_purpose(path):
        raise EmbeddedStopped(f"the embedded PostgreSQL in {path} was stopped on purpose")
    path.mkdir(parents=True, exist_ok=True)
    server = _pgserver().get_server(path, cleanup_mode="stop" if stop_at_exit else None)
    create_database(server.get_uri("postgres"), database)
    return _driver_url(server.get_uri(database))


def _driver_url(uri: str) -> str:
    return uri.replace("postgresql://", "postgresql+psycopg2://", 1)


def placeholder_url(data_dir: str | Path, *, database: str = DATABASE) -> str:
    """The URL an engine is made with before its embedded server is started: the
    socket folder pgserver usually picks, so that nothing else could answer it."""
    return sa.engine.URL.create(
        "postgresql+psycopg2", username="postgres", database=database, query={"host": str(Path(data_dir))}
    ).render_as_string(hide_password=False)


def start_on_first_connect(engine: sa.engine.Engine, data_dir: str | Path, *, on_start) -> None:
    """Make `engine` start (or join) the embedded PostgreSQL of `data_dir` when it first
    connects, then call `on_start()` (which may connect: migrate) before any
    connection is handed out.

    For CLI processes: `flask --help` and the commands that never touch the database
    then cost no server start. The server's socket folder is only known once it runs,
    so each new connection takes its parameters from the started server's URL.
    """
    started: dict = {}
    lock = threading.RLock()  # on_start's own connections re-enter from this thread

    def _connect(dialect, connection_record, cargs, cparams):
        with lock:
            if "params" not in started:
                try:
                    url = start_embedded(data_dir)
                except EmbeddedStopped as exc:
                    # A connection error, like the stopped server's own: one CLI line.
                    raise psycopg2.OperationalError(str(exc)) from None
                _, params = dialect.create_connect_args(sa.engine.make_url(url))
                started["params"] = params
                log.debug("database: embedded PostgreSQL in %s", data_dir)
                try:
                    on_start()
                except BaseException:
                    del started["params"]  # the next connection tries again
                    raise
        for key in ("host", "port", "dbname", "database", "user", "password"):
            cparams.pop(key, None)
        cparams.update(started["params"])

    sa.event.listen(engine, "do_connect", _connect)


def stopped_url(data_dir: str | Path) -> str:
    """The URL the embedded database had when it was stopped on purpose."""
    return (Path(data_dir) / STOPPED_MARKER).read_text(encoding="utf-8").strip()


def stop_embedded(data_dir: str | Path) -> bool:
    """Stop the embedded PostgreSQL on purpose and leave the marker; True if it ran.

    The marker holds the URL the server had (what engines use while it is stopped);
    it is written before the stop, so that no process restarts the server meanwhile."""
    path = Path(data_dir)
    marker = path / STOPPED_MARKER
    marker.write_text(placeholder_url(path) + "\n", encoding="utf-8")
    if not is_running(path):
        return False
    server = _pgserver().get_server(path, cleanup_mode=None)  # joins the running one
    marker.write_text(_driver_url(server.get_uri(DATABASE)) + "\n", encoding="utf-8")
    from pgserver._commands import pg_ctl

    pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user)
    log.warning("embedded PostgreSQL in %s stopped on purpose", path)
    return True


def clear_stopped(data_dir: str | Path) -> None:
    (Path(data_dir) / STOPPED_MARKER).unlink(missing_ok=True)


def revive_if_gone(data_dir: str | Path) -> None:
    """After a database error: restart the embedded PostgreSQL if it is not running.

    At most one try per REVIVE_INTERVAL_SECONDS per process, in a thread of its own so
    that the failing request still answers at once; never when stopped on purpose.
    """
    global _last_revive
    with _revive_lock:
        if time.monotonic() - _last_revive < REVIVE_INTERVAL_SECONDS:
            return
        _last_revive = time.monotonic()
    threading.Thread(target=_revive, args=(Path(data_dir),), name="dacc-revive", daemon=True).start()


def _revive(path: Path) -> None:
    try:
        if stopped_on_purpose(path):
            return
        if is_running(path):
            return
        log.warning("embedded PostgreSQL in %s is not running: restarting it", path)
        server = _pgserver().get_server(path, cleanup_mode=None)
        # The inter-process lock: several workers noticing at once start it once.
        with server._lock:
            if not stopped_on_purpose(path):
                server.ensure_postgres_running()
        log.warning("embedded PostgreSQL in %s restarted", path)
    except Exception:  # the next failing request tries again
        log.exception("restarting the embedded PostgreSQL in %s failed", path)


def create_database(admin_uri: str, database: str) -> bool:
    """Create `database` unless it exists; True when created."""
    conn = psycopg2.connect(admin_uri)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
            if cur.fetchone():
                return False
            try:
                cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
            except (psycopg2.errors.DuplicateDatabase, psycopg2.errors.UniqueViolation):
                # Another process (a second gunicorn worker) created it first.
                return False
            return True
    finally:
        conn.close()
