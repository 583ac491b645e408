"""Benchmark: ingestion, aggregation, restitution and purge, each against its ceiling.

    python scripts/bench.py [--quick] [--json FILE] [--only SECTION ...]

Starts its own PostgreSQL (embedded pgserver in a temporary folder, or a throw-away
database on DATABASE_URL's server), migrates it, loads definitions and tokens, serves
the app with gunicorn on a free loopback port, and measures every figure next to a
ceiling taken in the same run. Prints a markdown table; `--json FILE` writes the same
figures. See docs/PERFORMANCE.md for the figures and what limits each one.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import http.client
import importlib
import io
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402

from scripts import loadgen  # noqa: E402

SECTIONS = ("single", "bulk", "aggregation", "restitution", "publication", "purge", "mqtt")
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
BULK_ITEMS = 10_000
BENCH_SECRET = "bench-contributor-secret-0123456789abcdef"
CAPPED = "bench.contributors"
"""A measure with maxContributionsPerCell: each measure carries a contributor and counts
against its quota (the cap is never reached)."""
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


class Unavailable(Exception):
    """The feature a section measures has not landed yet."""


@dataclasses.dataclass
class Figure:
    section: str
    name: str
    value: float | None
    unit: str = ""
    ceiling: float | None = None
    target: str = ""
    """`ratio>=0.6`, `ratio<=1.5`, `value<=20` or `value>=200000`, several joined by
    commas (all must hold); empty for context."""
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.value is None or not self.ceiling:
            return None
        return self.value / self.ceiling

    @property
    def status(self) -> str:
        if not self.target or self.value is None:
            return ""
        oks = []
        for target in self.target.split(","):
            subject, op, limit = _parse_target(target)
            measured = self.ratio if subject == "ratio" else self.value
            if measured is None:
                return ""
            oks.append(measured >= limit if op == ">=" else measured <= limit)
        return "pass" if all(oks) else "MISS"

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "ratio": self.ratio, "status": self.status}


def _parse_target(target: str) -> tuple[str, str, float]:
    for op in (">=", "<="):
        if op in target:
            subject, limit = target.split(op)
            return subject, op, float(limit)
    raise ValueError(target)


# ---------------------------------------------------------------- environment


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
        _say(f"database ready in {time.monotonic() - began:.1f} s")
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
        server = stack.enter_context(_gunicorn(self, args))
        self.app = _make_app(self.url)
        stack.enter_context(self.app.app_context())
        from dacc.migrations_runner import upgrade_to_head

        upgrade_to_head()
        self.tokens = _create_tokens()
        _say(f"migrated in {time.monotonic() - began:.1f} s")
        self.port = server.ready()

    def has_route(self, path: str, method: str) -> bool:
        return any(r.rule == path and method in r.methods for r in self.app.url_map.iter_rules())

    def execute(self, statement: str, params: dict | None = None, *, commit=True):
        from dacc.db import db

        result = db.session.execute(sa.text(statement), params or {})
        if commit:
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
            _say(
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
def _gunicorn(env: Environment, args, *, config_file: Path | None = None, log_name: str = "gunicorn.log"):
    """Start serving the app on a free loopback port; stop gunicorn after."""
    listener = socket.create_server((loadgen.HOST, 0))
    listener.set_inheritable(True)
    log_path = env.tmp / log_name
    log = open(log_path, "wb")
    command = [
        sys.executable, "-m", "gunicorn",
        "--bind", f"fd://{listener.fileno()}",
        "--worker-class", args.worker_class,
        "--workers", str(args.workers),
        "--threads", str(args.threads),
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


def _settings(env: Environment) -> dict[str, str]:
    rows = env.execute(
        "SELECT name, setting, unit FROM pg_settings WHERE name = ANY(:names)",
        {"names": list(SHOWN_SETTINGS)},
    )
    return {name: f"{setting}{' × ' + unit if unit else ''}" for name, setting, unit in rows}


def _fdatasync_rate(folder: Path, seconds: float = 1.0) -> float:
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


def _machine() -> dict:
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


# ---------------------------------------------------------------- data


def measure_body(name: str, i: int, *, start: dt.date = dt.date(2023, 1, 1)) -> dict:
    return {
        "measureName": name,
        "value": (i * 37) % 101 + (i % 4) / 4,
        "startDate": (start + dt.timedelta(days=i % 30)).isoformat() + "T00:00:00",
        "createdBy": "bench",
        "group1": {"g1": "abcd"[i % 4]},
    }


def _ensure_single_definition(env: Environment) -> None:
    """The measures that POST /measure(s) write to, shared by the sections."""
    if not env.execute("SELECT 1 FROM measure_definition WHERE name = 'bench.single'").first():
        env.add_definition("bench.single")
        env.add_definition(CAPPED, max_contributions_per_cell=10**9)


def contributor_body(i: int) -> dict:
    return {**measure_body(CAPPED, i), "contributor": f"household-{i % 5000}"}


def generate_raw(
    env: Environment, name: str, rows: int, *, start: dt.date, days: int, groups: int = 4, group2: int = 0
):
    """Insert `rows` raw measures in one set-based statement: every (day, group) cell gets
    the same number of rows, values cycle over 0..100; ingested (last_updated) during
    their start date, one millisecond apart as real traffic would be, so that a purge
    sees them as old. Rows are written in ingestion order, as a live table holds them:
    the table's physical order follows last_updated, which a purge walks."""
    cells = groups * max(group2, 1)
    group2_sql = "jsonb_build_object('g2', 'w' || ((i / :groups) % :group2))" if group2 else "NULL"
    env.execute(
        "INSERT INTO raw_measure (measure_name, value, start_date, created_by, group1, group2, last_updated)"
        " SELECT :name, (i * 37) % 101, day, 'bench', jsonb_build_object('g1', 'v' || (i % :groups)),"
        f" {group2_sql}, day + (i % 86400000) * interval '1 millisecond' AS ingested"
        " FROM generate_series(0, :rows - 1) AS i,"
        " LATERAL (SELECT CAST(:start AS timestamp) + ((i / :cells) % :days) * interval '1 day' AS day) AS d"
        " ORDER BY ingested",
        {
            "name": name,
            "start": start,
            "cells": cells,
            "days": days,
            "groups": groups,
            "group2": group2 or 1,
            "rows": rows,
        },
    )


# ---------------------------------------------------------------- sections


def section_single(env: Environment) -> list[Figure]:
    if not env.has_route("/measure", "POST"):
        raise Unavailable("POST /measure")
    _ensure_single_definition(env)
    count = env.sizes["single"]
    bodies = [json.dumps(measure_body("bench.single", i)).encode() for i in range(1000)]
    headers = {"Authorization": env.tokens["write"]}
    real = [loadgen.build_request("POST", "/measure", body=b, headers=headers) for b in bodies]
    trivial = [loadgen.build_request("POST", "/_bench/insert", body=b, headers=headers) for b in bodies]
    window = env.args.ingest_batch_ms
    figures = []
    # A second server with group commit off serves today's one commit per request, so
    # that the batched endpoint is compared with it in the same run.
    with _unbatched_server(env) as alone_port:
        runs = [(trivial, env.port), (real, env.port), (real, alone_port)]
        for requests, port in runs:  # warm every worker: token cache, pools, imports
            _load(env, requests, port=port, total=200, connections=8)
        for connections in (1, 8):
            (ceiling, result, alone), per_commit = _alternated(
                env, runs, total=count, connections=connections
            )
            label = f"{connections} conn"
            figures += [
                Figure("single", f"POST /measure rate, {label}", result.rate, "measures/s", ceiling.rate,
                       "ratio>=2" if connections == 8 else "ratio>=0.6",
                       f"ceiling: POST /_bench/insert (one INSERT); generator {result.cpu_share:.2f} cores"),
                Figure("single", f"POST /measure rate, {label}, group commit off", alone.rate, "measures/s",
                       ceiling.rate, note="today's one commit per request; ceiling: the one-INSERT endpoint"),
                Figure("single", f"POST /measure rate, {label}, against group commit off", result.rate, "measures/s",
                       alone.rate, "ratio>=0.9" if connections == 1 else ""),
                Figure("single", f"POST /measure p50, {label}", result.percentile(50), "ms", ceiling.percentile(50)),
                Figure("single", f"POST /measure p99, {label}", result.percentile(99), "ms", ceiling.percentile(99),
                       f"value<={20 + window}" if connections == 8 else "",
                       f"target 20 ms + the {window} ms window" if connections == 8 else ""),
                Figure("single", f"POST /measure p99, {label}, group commit off", alone.percentile(99), "ms",
                       ceiling.percentile(99)),
                Figure("single", f"measures per commit, {label}", per_commit, "", note=f"ingest_batch_ms {window}"),
            ]  # fmt: skip
    # With a contributor on a capped measure: its HMAC and its quota upsert, same ceiling.
    named = [
        loadgen.build_request(
            "POST", "/measure", body=json.dumps(contributor_body(i)).encode(), headers=headers
        )
        for i in range(1000)
    ]
    _load(env, named, total=200, connections=8)
    ceiling, result = _paired(env, trivial, named, total=count, connections=8)
    figures += [
        Figure("single", "POST /measure + contributor (capped), 8 conn", result.rate, "measures/s", ceiling.rate,
               "ratio>=0.6", "ceiling: POST /_bench/insert; one statement: quota upsert + INSERT"),
        Figure("single", "POST /measure + contributor p99, 8 conn", result.percentile(99), "ms",
               ceiling.percentile(99), "value<=20"),
    ]  # fmt: skip
    alone = loadgen.generator_ceiling(real, total=count, connections=8, timeout=env.cap)
    figures.append(
        Figure("single", "load generator alone, 8 conn", alone.rate, "requests/s", ceiling.rate,
               note="canned-reply server; ceiling column: the trivial endpoint's rate")
    )  # fmt: skip
    return figures


@contextlib.contextmanager
def _unbatched_server(env: Environment):
    """A second gunicorn, same settings, `ingest_batch_ms: 0`; yields its port."""
    config = env.tmp / "config-unbatched.yml"
    config.write_text(
        env.config_file.read_text().replace(
            f"ingest_batch_ms: {env.args.ingest_batch_ms}", "ingest_batch_ms: 0"
        )
    )
    with _gunicorn(env, env.args, config_file=config, log_name="gunicorn-unbatched.log") as server:
        yield server.ready()


def _alternated(env: Environment, runs, *, total: int, connections: int, rounds: int = 4):
    """One combined result per (requests, port) of `runs`, measured in alternating
    rounds; and the measures per commit of the second run (the batched endpoint)."""
    results: list[list[loadgen.LoadResult]] = [[] for _ in runs]
    rows = commits = 0
    share = max(1, total // rounds)
    for _ in range(rounds):
        for index, (requests, port) in enumerate(runs):
            since = env.execute("SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint").scalar()
            results[index].append(_load(env, requests, port=port, total=share, connections=connections))
            if index == 1:
                # Rows of one commit share its transaction id.
                counted = env.execute(
                    "SELECT count(*), count(DISTINCT txid) FROM raw_measure"
                    " WHERE measure_name = 'bench.single' AND txid >= :since",
                    {"since": since},
                ).one()
                rows, commits = rows + counted[0], commits + counted[1]
    return [loadgen.LoadResult.combine(r) for r in results], rows / commits if commits else None


def section_bulk(env: Environment) -> list[Figure]:
    if not env.has_route("/measures", "POST"):
        raise Unavailable("POST /measures")
    _ensure_single_definition(env)
    bodies = [
        [measure_body("bench.single", b * BULK_ITEMS + i) for i in range(BULK_ITEMS)]
        for b in range(env.sizes["bulk_bodies"])
    ]
    headers = {"Authorization": env.tokens["write"]}
    requests = [
        loadgen.build_request("POST", "/measures", body=json.dumps(b).encode(), headers=headers)
        for b in bodies
    ]
    _load(env, requests[:1], total=2, connections=2)  # warm both workers
    result = _load(env, requests, total=len(requests), connections=1)
    measures = len(requests) * BULK_ITEMS
    copy_seconds = _copy_rows(env, bodies)
    named_bodies = [
        [contributor_body(b * BULK_ITEMS + i) for i in range(BULK_ITEMS)]
        for b in range(env.sizes["bulk_bodies"])
    ]
    named = [
        loadgen.build_request("POST", "/measures", body=json.dumps(b).encode(), headers=headers)
        for b in named_bodies
    ]
    named_result = _load(env, named, total=len(named), connections=1)
    # Contributors on a measure without a cap: the same COPY straight into raw_measure.
    uncapped = [
        loadgen.build_request(
            "POST",
            "/measures",
            body=json.dumps([{**m, "measureName": "bench.single"} for m in b]).encode(),
            headers=headers,
        )
        for b in named_bodies
    ]
    uncapped_result = _load(env, uncapped, total=len(uncapped), connections=1)
    return [
        Figure("bulk", f"POST /measures + contributors (no cap), {BULK_ITEMS:,}-item bodies",
               measures / uncapped_result.elapsed, "measures/s", measures / copy_seconds, "ratio>=0.3",
               "ceiling: COPY of plain rows; the same COPY, with the contributor hash"),
        Figure("bulk", f"POST /measures + contributors (capped), {BULK_ITEMS:,}-item bodies", measures / named_result.elapsed,
               "measures/s", measures / copy_seconds, "ratio>=0.3",
               "ceiling: COPY of plain rows; staged COPY + quota upsert per (cell, contributor)"),
        Figure("bulk", f"POST /measures, {BULK_ITEMS:,}-item bodies, 1 conn", measures / result.elapsed, "measures/s",
               measures / copy_seconds, "ratio>=0.3", "ceiling: COPY of the same rows, one transaction per body"),
        Figure("bulk", "POST /measures p50 per body", result.percentile(50), "ms", copy_seconds / len(bodies) * 1000),
    ]  # fmt: skip


def _copy_rows(env: Environment, bodies: list[list[dict]]) -> float:
    """Seconds to COPY the bodies' rows into raw_measure, one transaction per body."""
    from dacc.db import db

    buffers = []
    for body in bodies:
        lines = (
            f"{m['measureName']}\t{m['value']}\t{m['startDate']}\t{m['createdBy']}\t{json.dumps(m['group1'])}\n"
            for m in body
        )
        buffers.append("".join(lines))
    raw = db.engine.raw_connection()
    try:
        cursor = raw.cursor()
        start = time.perf_counter()
        for text in buffers:
            cursor.copy_expert(
                "COPY raw_measure (measure_name, value, start_date, created_by, group1) FROM STDIN",
                io.StringIO(text),
            )
            raw.commit()
        return time.perf_counter() - start
    finally:
        raw.close()


def _paired(env: Environment, ceiling_requests, requests, *, total: int, connections: int, rounds: int = 4):
    """(ceiling, real) results, measured in alternating rounds so that a change in the
    machine's load during the run weighs on both alike."""
    ceilings, reals = [], []
    share = max(1, total // rounds)
    for _ in range(rounds):
        ceilings.append(_load(env, ceiling_requests, total=share, connections=connections))
        reals.append(_load(env, requests, total=share, connections=connections))
    return loadgen.LoadResult.combine(ceilings), loadgen.LoadResult.combine(reals)


def _load(env: Environment, requests, *, port: int | None = None, **kwargs) -> loadgen.LoadResult:
    result = loadgen.run_load(port or env.port, requests, timeout=env.cap, **kwargs)
    if result.failures:
        raise RuntimeError(f"{result.failures} failed requests: {dict(result.statuses)}")
    return result


def _compute():
    try:
        module = importlib.import_module("dacc.aggregation.compute")
    except ImportError:
        raise Unavailable("dacc.aggregation.compute") from None
    if not hasattr(module, "compute_aggregation"):
        raise Unavailable("compute_aggregation()")
    return module.compute_aggregation


CEILING_SQL = """
INSERT INTO bench_ceiling
SELECT measure_name, date_trunc('day', start_date), created_by, group1, group2, group3,
       count(*), count(*) FILTER (WHERE value <> 0), sum(value), sum(value * value),
       min(value), max(value), avg(value), coalesce(stddev_samp(value), 0) {quartiles}
FROM raw_measure WHERE measure_name = :name
GROUP BY 1, 2, 3, 4, 5, 6
"""
QUARTILES_SQL = ", percentile_cont(ARRAY[0.25, 0.5, 0.75]) WITHIN GROUP (ORDER BY value)"


def _ceiling_seconds(env: Environment, name: str, *, quartiles: bool) -> float:
    """Time the bare GROUP BY with the same statistics, into a throw-away table."""
    env.execute("DROP TABLE IF EXISTS bench_ceiling")
    env.execute(
        "CREATE UNLOGGED TABLE bench_ceiling (measure_name text, start_date timestamp, created_by text,"
        " group1 jsonb, group2 jsonb, group3 jsonb, count bigint, count_not_zero bigint, sum numeric,"
        " sum_squares numeric, min numeric, max numeric, avg numeric, std numeric, quartiles float8[])"
    )
    start = time.perf_counter()
    env.execute(CEILING_SQL.format(quartiles=QUARTILES_SQL if quartiles else ", NULL"), {"name": name})
    return time.perf_counter() - start


def _timed_compute(env: Environment, definition, *, expect: int | None = None) -> float:
    """Seconds of one in-process run (as `compute-aggregation NAME --force` does it),
    with its publication switched off: these lines compare the merge with a bare
    GROUP BY; the `publication` section measures what publishing adds."""
    from unittest import mock

    compute = _compute()
    module = importlib.import_module("dacc.aggregation.compute")
    off = (
        mock.patch.object(module, "publish_measure", _no_publication)
        if hasattr(module, "publish_measure")
        else contextlib.nullcontext()
    )
    with off:
        start = time.perf_counter()
        result = compute(definition, force=True)
        seconds = time.perf_counter() - start
    raw_read = getattr(result, "raw_read", None)
    if expect is not None and raw_read is not None and raw_read != expect:
        raise RuntimeError(
            f"aggregation of {definition.name} read {raw_read} raw measures, expected {expect}"
        )
    return seconds


def _no_publication(conn, name):
    from dacc.publication import PublicationResult

    return PublicationResult(name)


def _fresh_compute(env: Environment, definition, rows: int) -> float:
    """A full run: forget the measure's aggregates and state first (--force only skips
    the schedule; it does not re-read what was aggregated)."""
    _reset_aggregates(env, definition.name)
    return _timed_compute(env, definition, expect=rows)


def _reset_aggregates(env: Environment, name: str) -> None:
    env.execute("DELETE FROM aggregate WHERE measure_name = :name", {"name": name})
    env.execute("DELETE FROM aggregation_state WHERE measure_name = :name", {"name": name})


def _aggregated_count(env: Environment, name: str) -> int:
    return env.execute(
        "SELECT coalesce(sum(count), 0) FROM aggregate WHERE measure_name = :name", {"name": name}
    ).scalar()


def section_aggregation(env: Environment) -> list[Figure]:
    _compute()
    sizes = env.sizes
    start = dt.date(2023, 1, 1)
    big = env.add_definition("bench.agg")
    quart = env.add_definition("bench.agg_q", with_quartiles=True)
    small = env.add_definition("bench.agg_small")
    generate_raw(env, big.name, sizes["agg_rows"], start=start, days=30)
    generate_raw(env, quart.name, sizes["agg_quartile_rows"], start=start, days=30)
    generate_raw(env, small.name, sizes["agg_small_rows"], start=start, days=30)
    env.vacuum()

    figures = []
    fulls = {}
    for definition, rows, quartiles in (
        (big, sizes["agg_rows"], False),
        (quart, sizes["agg_quartile_rows"], True),
    ):
        # Alternated, best of 3 each: a 0.2 s run swings by half on this kind of machine.
        ceiling_runs, full_runs = [], []
        for _ in range(3):
            ceiling_runs.append(_ceiling_seconds(env, definition.name, quartiles=quartiles))
            full_runs.append(_fresh_compute(env, definition, rows))
        ceiling, full = min(ceiling_runs), min(full_runs)
        label = "quartiles on" if quartiles else "quartiles off"
        figures.append(
            Figure("aggregation", f"compute-aggregation --force, {rows:,} rows, {label}", full, "s", ceiling,
                   "ratio<=1.5", "ceiling: bare INSERT … SELECT … GROUP BY; best of 3")
        )  # fmt: skip
        fulls[quartiles] = full
    last_day = start + dt.timedelta(days=29)
    generate_raw(env, big.name, sizes["agg_incremental"], start=last_day, days=1)
    incremental = _timed_compute(env, big, expect=sizes["agg_incremental"])
    # Into existing cells: their quartiles are re-read from all their raw rows.
    few = sizes["agg_incremental"] // 10
    generate_raw(env, quart.name, few, start=last_day, days=1)
    incremental_quartiles = _timed_compute(env, quart, expect=few)
    figures += [
        Figure("aggregation", f"incremental {sizes['agg_incremental']:,} on {sizes['agg_rows']:,}", incremental, "s",
               fulls[False], "ratio<=0.05", "ceiling column: the full run above"),
        Figure("aggregation", f"incremental {few:,} on {sizes['agg_quartile_rows']:,}, quartiles on, existing cells",
               incremental_quartiles, "s", fulls[True], note="ceiling column: the full run with quartiles"),
        *_quartiles_every_cell(env, start),
    ]  # fmt: skip
    started = time.perf_counter()
    _refresh_view(env)
    refresh = time.perf_counter() - started
    cells = env.execute("SELECT count(*) FROM aggregate").scalar()
    figures.append(
        Figure(
            "aggregation",
            f"publication of what is pending ({cells:,} aggregates, every measure)",
            refresh,
            "s",
        )
    )
    rss_small, _ = _aggregation_rss(env, small.name, sizes["agg_small_rows"])
    rss_big, seconds = _aggregation_rss(env, big.name, sizes["agg_rows"] + sizes["agg_incremental"])
    figures += [
        Figure("memory", f"compute-aggregation peak RSS, {sizes['agg_rows']:,} rows", rss_big, "MiB", rss_small,
               "ratio<=1.2", f"ceiling column: peak RSS at {sizes['agg_small_rows']:,} rows"),
        Figure("memory", "compute-aggregation command wall time (process start included)", seconds, "s"),
    ]  # fmt: skip
    return figures


def _quartiles_every_cell(env: Environment, start: dt.date) -> list[Figure]:
    """New rows in every cell of a quartile measure: 600 cells (30 days × 4 × 5 groups),
    `agg_incremental` new rows on `agg_quartile_rows`, against the full run of the same
    measure. Alternated, best of 3: each round forgets the cells, runs the full run on
    the old rows, adds the new rows, runs the increment, then deletes the new rows."""
    sizes = env.sizes
    rows, new = sizes["agg_quartile_rows"], sizes["agg_incremental"]
    definition = env.add_definition("bench.agg_q600", with_quartiles=True, group2_key="g2")
    generate_raw(env, definition.name, rows, start=start, days=30, groups=4, group2=5)
    top = env.execute("SELECT max(id) FROM raw_measure").scalar()
    full_runs, incremental_runs = [], []
    for _ in range(3):
        env.vacuum()
        full_runs.append(_fresh_compute(env, definition, rows))
        generate_raw(env, definition.name, new, start=start, days=30, groups=4, group2=5)
        incremental_runs.append(_timed_compute(env, definition, expect=new))
        # The cells the increment merged into carry its transaction's now().
        touched = env.execute(
            "SELECT count(*) FROM aggregate WHERE measure_name = :name AND last_updated ="
            " (SELECT max(last_updated) FROM aggregate WHERE measure_name = :name)",
            {"name": definition.name},
        ).scalar()
        if touched != 600:
            raise RuntimeError(f"the increment touched {touched} of 600 cells")
        env.execute(
            "DELETE FROM raw_measure WHERE measure_name = :name AND id > :top",
            {"name": definition.name, "top": top},
        )
    full, incremental = min(full_runs), min(incremental_runs)
    return [
        Figure("aggregation", f"compute-aggregation --force, {rows:,} rows in 600 cells, quartiles on", full, "s",
               note="best of 3, alternated with the increment below"),
        Figure("aggregation", f"incremental {new:,} on {rows:,}, quartiles on, all 600 cells touched", incremental, "s",
               full, "ratio<=0.3,value<=1", "ceiling column: the full run of the same measure; best of 3"),
    ]  # fmt: skip


def _aggregation_rss(env: Environment, name: str, rows: int) -> tuple[float, float]:
    """(peak RSS in MiB, seconds) of a full `flask compute-aggregation NAME --force`."""
    _reset_aggregates(env, name)
    rss, seconds = _command_rss(env, "compute-aggregation", name, "--force")
    if _aggregated_count(env, name) != rows:
        raise RuntimeError(f"compute-aggregation {name} did not aggregate its {rows} raw measures")
    return rss, seconds


# Runs a `flask` command and, at exit, prints the process's own peak RSS (VmHWM). Not
# ru_maxrss: Linux carries the forking parent's high-water mark over exec into it, so a
# child of this (large) process would report this process's peak.
_PEAK_RSS_WRAPPER = """
import atexit, sys
def _peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            sys.stderr.write("BENCH_PEAK_RSS_KB " + line.split()[1] + "\\n")
atexit.register(_peak)
from flask.cli import main
sys.argv = ["flask", *sys.argv[1:]]
main()
"""


def _command_rss(env: Environment, *command: str) -> tuple[float, float]:
    """(peak RSS in MiB, seconds) of one `flask` command run as a child process."""
    start = time.perf_counter()
    process = subprocess.run(
        [sys.executable, "-c", _PEAK_RSS_WRAPPER, "--app", "dacc", *command],
        env=env.env,
        cwd=env.tmp,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - start
    if process.returncode != 0:
        raise RuntimeError(f"flask {' '.join(command)} exited {process.returncode}: {process.stderr[-2000:]}")
    peaks = [line.split()[1] for line in process.stderr.splitlines() if line.startswith("BENCH_PEAK_RSS_KB ")]
    if not peaks:
        raise RuntimeError(f"flask {' '.join(command)} did not report its peak RSS")
    return int(peaks[-1]) / 1024, seconds


def section_restitution(env: Environment) -> list[Figure]:
    if not env.has_route("/aggregate", "POST"):
        raise Unavailable("POST /aggregate")
    _compute()
    today = dt.date.today()
    days = 3 * 365
    definition = env.add_definition("bench.rest", group2_key="g2", aggregation_threshold=5)
    generate_raw(
        env,
        definition.name,
        days * 20 * 5,
        start=today - dt.timedelta(days=days),
        days=days,
        groups=5,
        group2=4,
    )
    env.vacuum()
    _fresh_compute(env, definition, days * 20 * 5)
    _refresh_view(env)

    headers = {"Authorization": env.tokens["read"]}

    def request(path, since):
        body = {"measureName": definition.name, "startDate": since.isoformat(), "endDate": today.isoformat()}
        return [loadgen.build_request("POST", path, body=json.dumps(body).encode(), headers=headers)]

    month = request("/aggregate", today - dt.timedelta(days=30))
    trivial = request("/_bench/aggregate", today - dt.timedelta(days=30))
    rows = _rows_returned(env, month[0])
    for requests in (trivial, month):
        _load(env, requests, total=64, connections=8)
    count = env.sizes["rest_requests"]
    figures = []
    for connections in (1, 8):
        ceiling, result = _paired(env, trivial, month, total=count, connections=connections)
        label = f"30 days ({rows} rows), {connections} conn"
        figures += [
            Figure("restitution", f"/aggregate rate, {label}", result.rate, "requests/s", ceiling.rate, "ratio>=0.5",
                   "ceiling: /_bench/aggregate, same rows from memory"),
            Figure("restitution", f"/aggregate p50, {label}", result.percentile(50), "ms", ceiling.percentile(50)),
            Figure("restitution", f"/aggregate p99, {label}", result.percentile(99), "ms", ceiling.percentile(99),
                   "value<=30" if connections == 8 else ""),
        ]  # fmt: skip
        if connections == 1:
            month_p50 = result.percentile(50)
    forever = request("/aggregate", dt.date(1970, 1, 1))
    long_rows = _rows_returned(env, forever[0])
    result = _load(env, forever, total=env.sizes["rest_long_requests"], connections=1)
    figures += [
        Figure("restitution", f"/aggregate 1970 → now ({long_rows} rows) p50, 1 conn", result.percentile(50), "ms",
               month_p50, "ratio<=2", "ceiling column: the 30-day p50"),
        Figure("restitution", "/aggregate 1970 → now, per row returned", result.percentile(50) / max(long_rows, 1),
               "ms/row", month_p50 / max(rows, 1), "ratio<=2", "ceiling column: the 30-day query per row"),
    ]  # fmt: skip
    return figures


def _refresh_view(env: Environment) -> None:
    from dacc.publication import publish_pending

    publish_pending()


def _rows_returned(env: Environment, raw_request: bytes) -> int:
    head, _, body = raw_request.partition(b"\r\n\r\n")
    conn = http.client.HTTPConnection(loadgen.HOST, env.port, timeout=60)
    headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n")[1:])
    conn.request("POST", "/aggregate", body=body, headers=headers)
    response = conn.getresponse()
    payload = json.loads(response.read())
    if response.status != 200:
        raise RuntimeError(f"/aggregate answered {response.status}: {payload}")
    return len(payload)


def section_purge(env: Environment) -> list[Figure]:
    try:
        from dacc.purge import purge_raw_measures
    except ImportError:
        raise Unavailable("dacc.purge.purge_raw_measures()") from None
    _compute()
    rows = env.sizes["purge_rows"]
    definition = env.add_definition("bench.purge")
    generate_raw(env, definition.name, rows, start=dt.date(2023, 1, 1), days=30)
    generate_raw(env, "bench.purge_ceiling", rows, start=dt.date(2023, 1, 1), days=30)
    env.vacuum()
    _fresh_compute(env, definition, rows)
    # Rows a purge deletes were written long before it, with checkpoints since: the first
    # change to each page after one is logged whole (full-page writes). Both deletes
    # start after a checkpoint, as in production.
    env.checkpoint()
    ceiling = _bare_delete_rate(env, "bench.purge_ceiling", rows)
    # The ceiling's dead rows would otherwise bring autovacuum onto the table during
    # the purge, at a moment of the run's choosing.
    env.vacuum()
    env.checkpoint()

    def purge() -> float:
        t0 = time.perf_counter()
        result = purge_raw_measures(definition.name, days=1)
        if result.deleted != rows:
            raise RuntimeError(f"purge deleted {result.deleted} of {rows} raw measures ({result.status})")
        return time.perf_counter() - t0

    if not env.has_route("/measure", "POST"):
        seconds = purge()
        return [
            _purge_figure(rows, seconds, ceiling, "no ingestion meanwhile"),
            Figure(
                "purge",
                "not available yet (POST /measure has not landed): ingestion p99 during the purge",
                None,
            ),
        ]
    _ensure_single_definition(env)
    bodies = [json.dumps(measure_body("bench.single", i)).encode() for i in range(1000)]
    headers = {"Authorization": env.tokens["write"]}
    requests = [loadgen.build_request("POST", "/measure", body=b, headers=headers) for b in bodies]
    quiet = _load(env, requests, total=env.sizes["single"] // 2, connections=8)
    seconds, load = _while_loaded(env, requests, purge)
    return [
        _purge_figure(rows, seconds, ceiling, "POST /measure at 8 conn meanwhile"),
        Figure("purge", "POST /measure p99 during the purge, 8 conn", load.percentile(99), "ms", quiet.percentile(99),
               "value<=50", f"{load.requests} requests; ceiling column: p99 just before the purge"),
        Figure("purge", "POST /measure rate during the purge, 8 conn", load.rate, "measures/s", quiet.rate,
               note="ceiling column: the rate just before the purge"),
    ]  # fmt: skip


def _purge_figure(rows: int, seconds: float, ceiling: float, note: str) -> Figure:
    return Figure("purge", f"purge measure, {rows:,} rows", rows / seconds, "rows/s", ceiling, "value>=200000",
                  f"{seconds:.2f} s, {note}; ceiling: one bare DELETE of as many rows")  # fmt: skip


def _bare_delete_rate(env: Environment, name: str, rows: int) -> float:
    """Rows/s of one plain DELETE of a measure's raw rows: what the table allows."""
    start = time.perf_counter()
    deleted = env.execute("DELETE FROM raw_measure WHERE measure_name = :name", {"name": name}).rowcount
    seconds = time.perf_counter() - start
    if deleted != rows:
        raise RuntimeError(f"the bare DELETE removed {deleted} rows, expected {rows}")
    return rows / seconds


def _while_loaded(env: Environment, requests, work) -> tuple[float, loadgen.LoadResult]:
    """Run `work()` in this thread while the requests are sent at 8 connections, from
    just before it starts until it returns; (its result, the load's result)."""
    stop, started = loadgen.new_event(), loadgen.new_event()
    during: list = []
    thread = threading.Thread(
        target=lambda: during.append(
            loadgen.run_load(env.port, requests, connections=8, stop=stop, started=started, timeout=600)
        )
    )
    thread.start()
    try:
        if not started.wait(60):
            raise RuntimeError("the load generator did not start")
        outcome = work()
    finally:
        stop.set()
        thread.join()
    if not during:
        raise RuntimeError("the load generator failed during the purge")
    if during[0].failures:
        raise RuntimeError(f"failed requests during the purge: {dict(during[0].statuses)}")
    return outcome, during[0]


MQTT_ARRAY_ITEMS = 100
MQTT_TOPIC = "dacc/measures/bench"


def section_mqtt(env: Environment) -> list[Figure]:
    try:
        importlib.import_module("dacc.mqtt")
    except ImportError:
        raise Unavailable("dacc.mqtt") from None
    binary = shutil.which("mosquitto", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin"]))
    if binary is None:
        raise RuntimeError("the mosquitto binary is missing (apt-get install mosquitto)")
    _ensure_single_definition(env)
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
    if not env.has_route("/measures", "POST"):
        raise Unavailable("POST /measures")
    headers = {"Authorization": env.tokens["write"]}
    requests = [
        loadgen.build_request("POST", "/measures", headers=headers, body=json.dumps(
            [measure_body("bench.single", b * BULK_ITEMS + i) for i in range(BULK_ITEMS)]).encode())
        for b in range(bodies)
    ]  # fmt: skip
    _load(env, requests[:1], total=2, connections=2)  # warm both workers
    result = _load(env, requests, total=len(requests), connections=1)
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


def section_publication(env: Environment, figure) -> list[Figure]:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_publication import section_publication as measure

    return measure(env, figure)


SECTION_FUNCTIONS = {
    "single": section_single,
    "bulk": section_bulk,
    "aggregation": section_aggregation,
    "restitution": section_restitution,
    "publication": lambda env: section_publication(env, Figure),
    "purge": section_purge,
    "mqtt": section_mqtt,
}


# ---------------------------------------------------------------- output


def _number(value: float | None, unit: str = "") -> str:
    if value is None:
        return "—"
    if abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.3g}"
    return f"{text} {unit}".strip()


def _target_text(target: str) -> str:
    if not target:
        return ""
    texts = []
    for one in target.split(","):
        subject, op, limit = _parse_target(one)
        sign = "≥" if op == ">=" else "≤"
        texts.append(f"ratio {sign} {limit:g}" if subject == "ratio" else f"{sign} {limit:,g}")
    return ", ".join(texts)


def markdown(figures: list[Figure]) -> str:
    lines = [
        "| section | figure | value | ceiling | ratio | target | result |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for f in figures:
        ratio = "" if f.ratio is None else f"{f.ratio:.2f}"
        name = f.name + (f" ({f.note})" if f.note else "")
        lines.append(
            f"| {f.section} | {name} | {_number(f.value, f.unit)} | {_number(f.ceiling, f.unit)} | {ratio}"
            f" | {_target_text(f.target)} | {f.status} |"
        )
    return "\n".join(lines)


def run(args) -> dict:
    figures: list[Figure] = []
    with contextlib.ExitStack() as stack:
        began = time.monotonic()
        env = Environment(args, stack)
        meta = {
            "mode": "quick" if args.quick else "full",
            "machine": {**_machine(), "fdatasync_per_s": round(_fdatasync_rate(env.tmp))},
            "postgresql": {"tuned_by_bench": env.tuned, **_settings(env)},
            "gunicorn": f"{args.worker_class}, {args.workers} workers × {args.threads} threads",
            "generator": "scripts/loadgen.py: asyncio raw HTTP/1.1, keep-alive, 1 forked process",
            "sizes": env.sizes,
        }
        _say(f"PostgreSQL: {meta['postgresql']}")
        _say(f"gunicorn: {meta['gunicorn']} on 127.0.0.1:{env.port}; set-up {time.monotonic() - began:.1f} s")
        for name in args.only or SECTIONS:
            t0 = time.monotonic()
            _say(f"{name} ...")
            try:
                figures += SECTION_FUNCTIONS[name](env)
            except Unavailable as exc:
                figures.append(Figure(name, f"not available yet ({exc} has not landed)", None))
            except Exception as exc:  # one broken section must not hide the others
                traceback.print_exc()
                first = (str(exc).strip().splitlines() or [""])[0][:200]
                figures.append(Figure(name, f"FAILED: {type(exc).__name__}: {first}", None))
                env.rollback()
            _say(f"{name} done in {time.monotonic() - t0:.1f} s")
        meta["seconds"] = round(time.monotonic() - began, 1)
    return {"meta": meta, "figures": figures}


_T0 = time.monotonic()


def _say(message: str) -> None:
    print(f"[bench {time.monotonic() - _T0:6.1f}s] {message}", file=sys.stderr, flush=True)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10× smaller, under a minute (smoke test)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, help="run only these sections")
    parser.add_argument(
        "--count", type=int, help="POST /measure requests per run (default 20,000; quick 2,000)"
    )
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (default 2)")
    parser.add_argument(
        "--threads", type=int, default=8, help="threads per gunicorn worker (default 8, as served)"
    )
    parser.add_argument(
        "--worker-class",
        default="dacc.serving.Worker",
        help="gunicorn worker class (default dacc.serving.Worker, as served)",
    )
    parser.add_argument(
        "--ingest-batch-ms",
        type=int,
        default=2,
        help="the server's dacc.ingest_batch_ms (default 2; 0: group commit off)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, data)")
    return parser.parse_args(argv)


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv=None) -> int:
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so that gunicorn and PostgreSQL are stopped; SIGINT
    # too when a shell started this in the background (it would be ignored).
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    began = time.monotonic()
    try:
        result = run(args)
    except KeyboardInterrupt:
        _say("interrupted: gunicorn and PostgreSQL stopped, temporary folder removed")
        return 130
    _say(f"finished in {time.monotonic() - began:.1f} s, clean-up included")
    meta = result["meta"]
    print(f"# DACC benchmark ({meta['mode']}), {meta['machine']['date']}\n")
    m = meta["machine"]
    print(f"{m['cores']} cores ({m['cpu']}), {m['memory_gib']} GiB, load average {m['load_average']}, "
          f"disk {m['fdatasync_per_s']} fdatasync/s; gunicorn {meta['gunicorn']}; run took {meta['seconds']} s\n")  # fmt: skip
    print(markdown(result["figures"]))
    if args.json:
        payload = {"meta": meta, "figures": [f.as_dict() for f in result["figures"]]}
        Path(args.json).write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
