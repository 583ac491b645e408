"""The benchmark's environment: a throw-away PostgreSQL, the app in this process (for
set-up), gunicorn serving it (for load), and the facts of the machine."""

from __future__ import annotations

import contextlib
import datetime as dt
import http.client
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import sqlalchemy as sa

from scripts import loadgen

ROOT = Path(__file__).resolve().parent.parent.parent
FULL = dict(
    single=20_000,  # requests per endpoint and concurrency
    bulk_bodies=20,  # POST /measures bodies of 10,000 items
    agg_rows=1_000_000,
    agg_quartile_rows=100_000,
    agg_small_rows=100_000,  # peak RSS at this size, compared with agg_rows
    agg_incremental=10_000,
    rest_requests=2_000,
    rest_long_requests=100,
    purge_rows=1_000_000,
    pub_cells=1_000_000,  # aggregate cells of one measure (years of history)
    pub_incremental=10_000,
    mqtt_messages=100_000,  # one measure per message
    mqtt_arrays=2_000,  # messages of MQTT_ARRAY_ITEMS measures
    mqtt_latency_seconds=10,
    mqtt_bulk_bodies=5,  # POST /measures bodies of 10,000 items: the arrays' reference
)
QUICK = {k: max(1, v // 10) for k, v in FULL.items()}
QUICK_CAP_SECONDS = 0.5
"""Longest load run in --quick (runs come in rounds of 4 pairs)."""
BENCH_SECRET = "bench-contributor-secret-0123456789abcdef"
PG_SETTINGS = {
    # 2 cores, 24 GB shared with other work: modest memory, no fsync shortcuts.
    "shared_buffers": "1GB",
    "effective_cache_size": "4GB",
    "work_mem": "64MB",
    "maintenance_work_mem": "256MB",
    "max_wal_size": "4GB",
    # Checkpoints keep up to 1 GB of used WAL segments for reuse, as a server that has
    # been running does: creating a segment stalls every commit while it is zero-filled.
    "min_wal_size": "1GB",
    "checkpoint_timeout": "15min",
    "jit": "off",
}
SHOWN_SETTINGS = (*PG_SETTINGS, "synchronous_commit", "fsync", "max_connections", "server_version")


class Environment:
    """The database, the app (in this process, for set-up) and gunicorn (for load)."""

    def __init__(self, args, stack: contextlib.ExitStack):
        began = time.monotonic()
        self.args = args
        self.sizes = dict(QUICK if args.quick else FULL)
        if args.count:
            self.sizes["single"] = args.count
        self.cap = QUICK_CAP_SECONDS if args.quick else 600.0
        """Longest load run: keeps --quick under a minute on a slow disk."""
        self.tmp = Path(tempfile.mkdtemp(prefix="dacc-bench-"))
        if not args.keep:
            stack.callback(shutil.rmtree, self.tmp, ignore_errors=True)
        self.url, self.tuned = stack.enter_context(_database(self.tmp, restart=not args.quick))
        self.pgdata = self.tmp / "pgdata" if self.tuned else None
        """The embedded PostgreSQL's data folder; None on DATABASE_URL's server."""
        say(f"database ready in {time.monotonic() - began:.1f} s")
        self.config_file = self.tmp / "config.yml"
        self.config_file.write_text(
            "logging: {enable: true, logger_criticity: WARNING}\n"
            "dacc: {bench_endpoints: true, token_cache_seconds: 60,"
            f" contributor_secret: {BENCH_SECRET}, ingest_batch_ms: {args.ingest_batch_ms}}}\n"
        )
        # PYTHONPATH: gunicorn and flask serve the tree this script lives in, not whatever
        # `dacc` the interpreter would find first.
        self.env = {
            **os.environ,
            "DATABASE_URL": self.url,
            "DACC_CONFIG": str(self.config_file),
            "FLASK_APP": "dacc",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        }
        # gunicorn's workers import the app while this process migrates: they touch no
        # table before the first request, which waits for /status below.
        server = stack.enter_context(gunicorn(self))
        self.app = _make_app(self.url)
        stack.enter_context(self.app.app_context())
        from dacc.migrations_runner import upgrade_to_head

        upgrade_to_head()
        self.tokens = _create_tokens()
        say(f"migrated in {time.monotonic() - began:.1f} s")
        self.port = server.ready()
        self.server = server

    def execute(self, statement: str, params: dict | None = None):
        """Run one statement in the app's session and commit it."""
        from dacc.db import db

        result = db.session.execute(sa.text(statement), params or {})
        db.session.commit()
        return result

    def rollback(self) -> None:
        from dacc.db import db

        db.session.rollback()

    def vacuum(self, table: str = "raw_measure") -> None:
        """VACUUM ANALYZE so that scans after a bulk load compare fairly (hint bits set)."""
        from dacc.db import db

        assert table in ("raw_measure", "aggregate")  # identifier from a fixed list
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text(f"VACUUM (ANALYZE) {table}"))

    def checkpoint(self) -> None:
        """CHECKPOINT, when this role may (superuser or pg_checkpoint); else say so."""
        try:
            self.execute("CHECKPOINT")
        except sa.exc.DBAPIError as exc:
            self.rollback()
            say(
                f"CHECKPOINT refused ({type(exc.orig).__name__}): full-page writes are not in the purge figures"
            )

    def add_definition(self, name: str, **columns):
        from dacc.db import db
        from dacc.models import MeasureDefinition

        values = dict(
            org="bench",
            created_by="bench",
            group1_key="g1",
            aggregation_period="day",
            execution_frequency="day",
            aggregation_threshold=1,
        )
        values.update(columns)
        definition = MeasureDefinition(name=name, **values)
        db.session.add(definition)
        db.session.commit()
        return definition


def _make_app(url: str):
    from dacc import create_app
    from dacc.config import Config

    # No statement timeout: the set-up loads millions of rows in one statement.
    return create_app(
        Config(
            database_url=url,
            source="bench",
            log_level="WARNING",
            statement_timeout_ms=0,
            contributor_secret=BENCH_SECRET,
        )
    )


def _create_tokens() -> dict[str, str]:
    from dacc.tokens import create_token

    _, write = create_token("bench", label="bench writer", scopes=["measure:write"])
    _, read = create_token("bench", label="bench reader", scopes=["aggregate:read"])
    return {"write": f"Bearer {write}", "read": f"Bearer {read}"}


@contextlib.contextmanager
def _database(tmp: Path, *, restart: bool):
    """(url, tuned) of a throw-away database: DATABASE_URL's server, or an embedded one.

    The embedded one is tuned; without `restart` (--quick) only the settings that a
    reload applies take effect (not shared_buffers), which saves a restart."""
    from dacc.config import normalise_database_url
    from dacc.embedded import create_database

    external = os.environ.get("DATABASE_URL")
    if external:
        url = sa.engine.make_url(normalise_database_url(external))
        name = f"dacc_bench_{uuid.uuid4().hex[:8]}"
        admin = url.set(drivername="postgresql").render_as_string(hide_password=False)
        create_database(admin, name)
        try:
            yield url.set(database=name).render_as_string(hide_password=False), False
        finally:
            _drop_database(admin, name)
        return
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver

    pgdata = tmp / "pgdata"
    server = pgserver.get_server(pgdata, cleanup_mode="stop")
    _tune(server.get_uri("postgres"))
    if restart:  # shared_buffers needs one
        server.cleanup()
        server = pgserver.get_server(pgdata, cleanup_mode="stop")
    try:
        create_database(server.get_uri("postgres"), "dacc")
        yield normalise_database_url(server.get_uri("dacc")), True
    finally:
        _stop_immediately(server)
        server.cleanup()


def _stop_immediately(server) -> None:
    """Stop without the shutdown checkpoint (seconds on a slow disk): the data goes."""
    from pgserver._commands import pg_ctl

    try:
        pg_ctl(["-w", "-m", "immediate", "stop"], pgdata=server.pgdata, user=server.system_user)
    except Exception:  # cleanup() stops it the usual way
        return
    # Stopped: cleanup() must only release the handle (its own stop would find the
    # postmaster's unreaped zombie "running" and wait seconds to kill it).
    server.cleanup_mode = None


def _tune(admin_uri: str) -> None:
    import psycopg2

    conn = psycopg2.connect(admin_uri)
    conn.autocommit = True
    with conn.cursor() as cur:
        for name, value in PG_SETTINGS.items():
            # ALTER SYSTEM takes no bound parameters; names and values are constants above.
            cur.execute(f"ALTER SYSTEM SET {name} = '{value}'")
        cur.execute("SELECT pg_reload_conf()")
    conn.close()


def _drop_database(admin_uri: str, name: str) -> None:
    import psycopg2
    from psycopg2 import sql

    conn = psycopg2.connect(admin_uri)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    conn.close()


class _Server:
    def __init__(self, port: int, process, log_path: Path):
        self.port, self.process, self.log_path = port, process, log_path

    def ready(self) -> int:
        """Wait until /status answers 200; the port."""
        _wait_for_status(self.port, self.process, self.log_path)
        return self.port


@contextlib.contextmanager
def gunicorn(env: Environment, *, config_file: Path | None = None, log_name: str = "gunicorn.log"):
    """Start serving the app on a free loopback port; stop gunicorn after."""
    listener = socket.create_server((loadgen.HOST, 0))
    listener.set_inheritable(True)
    log_path = env.tmp / log_name
    log = open(log_path, "wb")
    command = [
        sys.executable, "-m", "gunicorn",
        "--bind", f"fd://{listener.fileno()}",
        "--worker-class", env.args.worker_class,
        "--workers", str(env.args.workers),
        "--threads", str(env.args.threads),
        "--keep-alive", "75",
        "--log-level", "warning",
        "--no-control-socket",  # else one shared $HOME/.gunicorn/gunicorn.ctl per host
        "dacc:create_app()",
    ]  # fmt: skip
    variables = env.env if config_file is None else {**env.env, "DACC_CONFIG": str(config_file)}
    process = subprocess.Popen(
        command,
        env=variables,
        cwd=env.tmp,
        stdout=log,
        stderr=subprocess.STDOUT,
        pass_fds=(listener.fileno(),),
    )
    try:
        yield _Server(listener.getsockname()[1], process, log_path)
    finally:
        process.send_signal(signal.SIGINT)  # quick shutdown: nothing is in flight any more
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        listener.close()
        log.close()


def _wait_for_status(port: int, process, log_path: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gunicorn exited ({process.returncode}):\n{log_path.read_text()[-3000:]}")
        try:
            conn = http.client.HTTPConnection(loadgen.HOST, port, timeout=5)
            conn.request("GET", "/status")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"gunicorn did not answer /status within {timeout:.0f} s")


def settings(env: Environment) -> dict[str, str]:
    rows = env.execute(
        "SELECT name, setting, unit FROM pg_settings WHERE name = ANY(:names)",
        {"names": list(SHOWN_SETTINGS)},
    )
    return {name: f"{setting}{' × ' + unit if unit else ''}" for name, setting, unit in rows}


def fdatasync_rate(folder: Path, seconds: float = 1.0) -> float:
    """8 kB write + fdatasync per second in `folder`: what bounds a committing client."""
    path = folder / "fsync.probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        block, count, start = b"\0" * 8192, 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            os.pwrite(fd, block, 0)
            os.fdatasync(fd)
            count += 1
        return count / (time.perf_counter() - start)
    finally:
        os.close(fd)
        path.unlink()


def machine() -> dict:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
        platform.processor(),
    )
    mem = next(line.split()[1] for line in open("/proc/meminfo") if line.startswith("MemTotal"))
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(int(mem) / 1024**2, 1),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


_T0 = time.monotonic()


def say(message: str) -> None:
    print(f"[bench {time.monotonic() - _T0:6.1f}s] {message}", file=sys.stderr, flush=True)
