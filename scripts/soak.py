"""Soak run: the README's server under mixed traffic for N minutes, watched over time.

`python scripts/soak.py [--minutes 10]` serves the app (gunicorn with dacc.serving.Worker,
the README's options) on a free loopback port, on a throw-away database (DATABASE_URL's
server, else an embedded PostgreSQL), and for the whole run keeps up:

- single `POST /measure` at a steady rate (--rate), from a few keep-alive clients;
- bulk `POST /measures` (--bulk-items per body) every 2 s;
- `GET /aggregate` reads, several a second;
- hostile clients: idle connections that never send a byte, and clients that send a
  request head one byte every 0.5 s (both reopened whenever the server cuts them);
- every --jobs-every seconds, `flask jobs run` then `flask compute-all-aggregations
  --force` (jobs run aggregates a measure once a day; the second makes each period's
  measures aggregate under load).

Every --sample-seconds it prints one line: requests, p99 latencies (single, bulk, read),
5xx and failed requests of the normal clients, RSS of the workers, database connections,
load average. At the end it stops the load, aggregates once more and checks exactly
once (the aggregates count every accepted measure, per cell). Exit 1 on any 5xx or
failed normal request, a failed job, an exactly-once mismatch, worker RSS growing by
more than --rss-growth (10 %) between the end of the warm-up (the first third) and the
end, or database connections growing past the pool bounds.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import math
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

HOST = "127.0.0.1"
MEASURE = "soak"
POOL_CONNECTIONS = 20
"""pool_size + max_overflow of each server process (dacc._configure_database)."""
DAYS = [f"2024-03-{d:02d}" for d in range(1, 15)]


# --- set-up -----------------------------------------------------------------------------


@contextlib.contextmanager
def database(tmp: Path):
    """URL of a throw-away database: on DATABASE_URL's server, else an embedded one."""
    import psycopg2
    from psycopg2 import sql

    from dacc.config import normalise_database_url
    from dacc.embedded import create_database

    external = os.environ.get("DATABASE_URL")
    if external:
        import sqlalchemy as sa

        url = sa.engine.make_url(normalise_database_url(external))
        admin = url.set(drivername="postgresql").render_as_string(hide_password=False)
        name = f"dacc_soak_{uuid.uuid4().hex[:8]}"
        create_database(admin, name)
        try:
            yield url.set(database=name).render_as_string(hide_password=False)
        finally:
            conn = psycopg2.connect(admin)
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            conn.close()
        return
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver

    server = pgserver.get_server(tmp / "pgdata", cleanup_mode="stop")
    try:
        create_database(server.get_uri("postgres"), "soak")
        yield normalise_database_url(server.get_uri("soak"))
    finally:
        server.cleanup()


def prepare(url: str) -> dict[str, str]:
    """Migrate, add the soak measure and two tokens; {"write": header, "read": header}."""
    from dacc import create_app
    from dacc.config import Config
    from dacc.db import db
    from dacc.migrations_runner import upgrade_to_head
    from dacc.models import MeasureDefinition
    from dacc.tokens import create_token

    app = create_app(Config(database_url=url, source="soak", logging_enable=False))
    with app.app_context():
        upgrade_to_head()
        db.session.add(
            MeasureDefinition(
                name=MEASURE,
                org="soak",
                group1_key="g1",
                group2_key="g2",
                wildcard_groups=[["group2"]],
                aggregation_period="day",
                execution_frequency="day",
                aggregation_threshold=3,
                access_public=True,
            )
        )
        db.session.commit()
        _, write = create_token("soak", label="soak writer", scopes=["measure:write"])
        _, read = create_token("soak", label="soak reader", scopes=["aggregate:read"])
        db.engine.dispose()
    return {"write": f"Bearer {write}", "read": f"Bearer {read}"}


@contextlib.contextmanager
def serve(url: str, tmp: Path, env: dict):
    """gunicorn with the README's options; (port, master pid)."""
    from dacc.serving import GUNICORN_OPTIONS

    listener = socket.create_server((HOST, 0))
    port = listener.getsockname()[1]
    listener.close()
    log_path = tmp / "gunicorn.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "--bind",
                f"{HOST}:{port}",
                *GUNICORN_OPTIONS,
                "dacc:create_app()",
            ],
            env=env,
            cwd=tmp,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while _status(port) != 200:
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"gunicorn did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        yield port, process.pid
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _status(port: int) -> int | None:
    try:
        conn = http.client.HTTPConnection(HOST, port, timeout=5)
        conn.request("GET", "/status")
        return conn.getresponse().status
    except OSError:
        return None


# --- traffic ----------------------------------------------------------------------------


class Stats:
    """What the normal clients saw, per sampling interval and in total (thread-safe)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.latencies: dict[str, list[float]] = {"single": [], "bulk": [], "read": []}
        self.statuses: Counter = Counter()
        self.total: Counter = Counter()
        self.failures: list[str] = []
        self.accepted: Counter = Counter()
        """Measures answered 2xx, per (day, g1, g2) cell."""

    def record(self, kind: str, seconds: float, status: int | None, cells=(), error: str | None = None):
        with self.lock:
            self.latencies[kind].append(seconds)
            self.statuses[status or "error"] += 1
            self.total[status or "error"] += 1
            if error:
                self.failures.append(f"{kind}: {error}")
            if status is not None and 200 <= status < 300:
                self.accepted.update(cells)

    def take(self) -> tuple[dict, Counter]:
        with self.lock:
            latencies, statuses = self.latencies, self.statuses
            self.latencies = {k: [] for k in latencies}
            self.statuses = Counter()
        return latencies, statuses


def _measure(rnd: random.Random) -> tuple[dict, tuple]:
    day, g1, g2 = rnd.choice(DAYS), rnd.choice("abcdef"), rnd.choice("xyz")
    body = {
        "measureName": MEASURE,
        "value": rnd.randint(0, 100_000) / 100,
        "startDate": day,
        "createdBy": "soak",
        "group1": {"g1": g1},
        "group2": {"g2": g2},
    }
    return body, (day, g1, g2)


class Client:
    """One keep-alive connection, opened again after the server closes it. No retries:
    a request that fails is a failure (a retried POST could be counted twice)."""

    def __init__(self, port: int):
        self.port = port
        self.conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: bytes | None, headers: dict) -> tuple[int, bytes]:
        if self.conn is None:
            self.conn = http.client.HTTPConnection(HOST, self.port, timeout=30)
        try:
            self.conn.request(method, path, body=body, headers=headers)
            response = self.conn.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException):
            self.conn.close()
            self.conn = None
            raise
        if response.getheader("Connection", "").lower() == "close":
            self.conn.close()
            self.conn = None
        return response.status, data


def paced(stop: threading.Event, every: float, work) -> None:
    """Call work() every `every` seconds, on a fixed schedule (no drift under delays)."""
    due = time.monotonic()
    while not stop.is_set():
        work()
        due += every
        stop.wait(max(0.0, due - time.monotonic()))


def _timed(stats: Stats, kind: str, client: Client, method, path, body, headers, cells=()):
    started = time.perf_counter()
    try:
        status, data = client.request(method, path, body, headers)
    except (OSError, http.client.HTTPException) as exc:
        stats.record(kind, time.perf_counter() - started, None, error=repr(exc))
        return
    error = None
    if not 200 <= status < 300:
        error = f"{status} {data[:200]!r}"
    stats.record(kind, time.perf_counter() - started, status, cells, error)


def single_writer(port, headers, stats, stop, rate, seed):
    rnd, client = random.Random(seed), Client(port)
    sent = {**headers, "Content-Type": "application/json"}

    def work():
        body, cell = _measure(rnd)
        _timed(stats, "single", client, "POST", "/measure", json.dumps(body).encode(), sent, [cell])

    paced(stop, 1 / rate, work)


def bulk_writer(port, headers, stats, stop, items, seed):
    rnd, client = random.Random(seed), Client(port)
    sent = {**headers, "Content-Type": "application/json"}

    def work():
        batch = [_measure(rnd) for _ in range(items)]
        body = json.dumps([b for b, _ in batch]).encode()
        _timed(stats, "bulk", client, "POST", "/measures", body, sent, [c for _, c in batch])

    paced(stop, 2.0, work)


def reader(port, headers, stats, stop, seed):
    rnd, client = random.Random(seed), Client(port)
    sent = {**headers, "Content-Type": "application/json"}

    def work():
        start = rnd.randrange(len(DAYS) - 3)
        body = {"measureName": MEASURE, "startDate": DAYS[start], "endDate": DAYS[start + 3]}
        _timed(stats, "read", client, "POST", "/aggregate", json.dumps(body).encode(), sent)

    paced(stop, 0.2, work)


def idle_client(port, stop):
    """Opens a connection and sends nothing; again whenever the server closes it."""
    while not stop.is_set():
        try:
            with socket.create_connection((HOST, port), timeout=2) as sock:
                sock.settimeout(1)
                while not stop.is_set():
                    try:
                        if sock.recv(1024) == b"":
                            break
                    except TimeoutError:
                        continue
        except OSError:
            pass
        stop.wait(0.5)


def slow_client(port, stop):
    """Sends a request head one byte every 0.5 s, until the server cuts it off."""
    head = b"GET /status HTTP/1.1\r\nHost: soak\r\nX-Padding: " + b"x" * 200 + b"\r\n\r\n"
    while not stop.is_set():
        try:
            with socket.create_connection((HOST, port), timeout=2) as sock:
                for byte in head:
                    if stop.wait(0.5):
                        break
                    sock.sendall(bytes([byte]))
        except OSError:
            pass
        stop.wait(0.5)


# --- jobs and sampling ------------------------------------------------------------------


class Jobs:
    def __init__(self, env: dict, tmp: Path):
        self.env, self.tmp = env, tmp
        self.runs: list[tuple[str, int, float]] = []
        self.lock = threading.Lock()

    def run(self, *args: str) -> None:
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "flask", *args], env=self.env, cwd=self.tmp, capture_output=True, text=True
        )
        with self.lock:
            self.runs.append((" ".join(args), done.returncode, time.monotonic() - started))
        if done.returncode:
            print(f"job {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-2000:]}", flush=True)

    def periodic(self) -> None:
        self.run("jobs", "run")
        self.run("compute-all-aggregations", "--force")


def worker_pids(master: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == master:
                pids.append(int(entry.name))
    return sorted(pids)


def rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return math.nan


def p99(values: list[float]) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(1, math.ceil(0.99 * len(ordered))) - 1] * 1000


def db_connections(url: str) -> int:
    import psycopg2

    conn = psycopg2.connect(url.replace("+psycopg2", "", 1))
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
            )
            return cur.fetchone()[0]
    finally:
        conn.close()


HEADER = (
    f"{'t s':>6} {'req':>6} {'2xx':>6} {'4xx':>4} {'5xx':>4} {'fail':>4} "
    f"{'single p99':>10} {'bulk p99':>9} {'read p99':>9} {'RSS MiB':>15} {'db conn':>7} {'load':>5}"
)


def sample(elapsed, stats, master, url, *, label: str = "") -> dict:
    latencies, statuses = stats.take()
    rss = [rss_mib(pid) for pid in worker_pids(master)]
    row = {
        "t": elapsed,
        "requests": sum(statuses.values()),
        "2xx": sum(n for s, n in statuses.items() if s != "error" and 200 <= s < 300),
        "4xx": sum(n for s, n in statuses.items() if s != "error" and 400 <= s < 500),
        "5xx": sum(n for s, n in statuses.items() if s != "error" and s >= 500),
        "fail": statuses["error"],
        "p99": {k: p99(v) for k, v in latencies.items()},
        "rss": rss,
        "db": db_connections(url),
        "load": os.getloadavg()[0],
    }
    print(
        f"{label or f'{elapsed:.0f}':>6} {row['requests']:6d} {row['2xx']:6d} {row['4xx']:4d} {row['5xx']:4d} {row['fail']:4d} "
        f"{_ms(row['p99']['single']):>10} {_ms(row['p99']['bulk']):>9} {_ms(row['p99']['read']):>9} "
        f"{' '.join(f'{r:.0f}' for r in rss):>15} {row['db']:7d} {row['load']:5.1f}",
        flush=True,
    )
    return row


def _ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.1f}ms"


def aggregated_cells(url: str) -> Counter:
    import psycopg2

    conn = psycopg2.connect(url.replace("+psycopg2", "", 1))
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT to_char(start_date, 'YYYY-MM-DD'), group1 ->> 'g1', group2 ->> 'g2', count"
                " FROM aggregate WHERE measure_name = %s AND group2 ->> 'g2' <> '*'",
                (MEASURE,),
            )
            return Counter({(d, g1, g2): n for d, g1, g2, n in cur.fetchall()})
    finally:
        conn.close()


# --- the run ----------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="Length of the run (default 10).")
    parser.add_argument("--rate", type=float, default=100.0, help="Single POST /measure per second (100).")
    parser.add_argument("--writers", type=int, default=4, help="Clients sharing that rate (4).")
    parser.add_argument("--bulk-items", type=int, default=500, help="Items per POST /measures, one per 2 s.")
    parser.add_argument("--readers", type=int, default=2, help="Clients reading /aggregate, 5/s each (2).")
    parser.add_argument("--idle", type=int, default=40, help="Idle hostile connections (40).")
    parser.add_argument("--slow", type=int, default=10, help="Slow hostile clients, 2 bytes/s (10).")
    parser.add_argument("--jobs-every", type=float, default=30.0, help="Seconds between job runs (30).")
    parser.add_argument("--sample-seconds", type=float, default=30.0, help="Seconds per table line (30).")
    parser.add_argument(
        "--rss-growth", type=float, default=0.10, help="Largest worker RSS growth after warm-up (0.10)."
    )
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="dacc-soak-"))
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, tmp, ignore_errors=True)
        url = stack.enter_context(database(tmp))
        headers = prepare(url)
        (tmp / "config.yml").write_text("logging: {enable: true, logger_criticity: WARNING}\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith("DACC_")}
        env.update(
            DATABASE_URL=url,
            DACC_CONFIG=str(tmp / "config.yml"),
            FLASK_APP="dacc",
            PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        )
        port, master = stack.enter_context(serve(url, tmp, env))
        return soak(args, url, env, tmp, port, master, headers)


def soak(args, url, env, tmp, port, master, headers) -> int:
    stats, stop, jobs = Stats(), threading.Event(), Jobs(env, tmp)
    write, read = {"Authorization": headers["write"]}, {"Authorization": headers["read"]}
    threads = [
        *(
            threading.Thread(
                target=single_writer, args=(port, write, stats, stop, args.rate / args.writers, i)
            )
            for i in range(args.writers)
        ),
        threading.Thread(target=bulk_writer, args=(port, write, stats, stop, args.bulk_items, 100)),
        *(
            threading.Thread(target=reader, args=(port, read, stats, stop, 200 + i))
            for i in range(args.readers)
        ),
        *(threading.Thread(target=idle_client, args=(port, stop)) for _ in range(args.idle)),
        *(threading.Thread(target=slow_client, args=(port, stop)) for _ in range(args.slow)),
        threading.Thread(target=paced, args=(stop, args.jobs_every, jobs.periodic)),
    ]
    seconds = args.minutes * 60
    print(
        f"soak: {seconds:.0f} s on port {port}; {args.rate:g} single/s from {args.writers} clients,"
        f" {args.bulk_items} items/2 s bulk, {args.readers * 5} reads/s, {args.idle} idle and"
        f" {args.slow} slow clients, jobs every {args.jobs_every:g} s; load {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    print(HEADER, flush=True)
    started = time.monotonic()
    for thread in threads:
        thread.daemon = True
        thread.start()
    rows = []
    try:
        while (elapsed := time.monotonic() - started) < seconds:
            time.sleep(min(args.sample_seconds, seconds - elapsed))
            rows.append(sample(time.monotonic() - started, stats, master, url))
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    rows.append(sample(time.monotonic() - started, stats, master, url, label="end"))
    jobs.run("compute-all-aggregations", "--force")
    return verdict(args, stats, jobs, rows, aggregated_cells(url))


def verdict(args, stats, jobs, rows, cells) -> int:
    problems = []
    total = stats.total
    accepted = sum(stats.accepted.values())
    print(
        f"\nrequests: {sum(total.values())} ({', '.join(f'{s}: {n}' for s, n in sorted(total.items(), key=str))});"
        f" measures accepted: {accepted}"
    )
    if any(s != "error" and s >= 500 for s in total):
        problems.append("5xx answers")
    if stats.failures:
        problems.append(f"{len(stats.failures)} failed requests, first: {stats.failures[0]}")
    failed_jobs = [r for r in jobs.runs if r[1]]
    job_seconds = [r[2] for r in jobs.runs]
    print(
        f"jobs: {len(jobs.runs)} runs, {len(failed_jobs)} failed,"
        f" longest {max(job_seconds, default=0):.1f} s"
    )
    if failed_jobs:
        problems.append(f"{len(failed_jobs)} failed job runs")
    exact = cells == stats.accepted
    print(f"exactly once: aggregates count {sum(cells.values())} measures in {len(cells)} cells: {exact}")
    if not exact:
        problems.append("aggregates differ from the accepted measures")
    warm = rows[len(rows) // 3] if len(rows) >= 3 else rows[0]
    last = rows[-1]
    for i, (before, after) in enumerate(zip(warm["rss"], last["rss"])):
        growth = after / before - 1
        print(f"worker {i}: RSS {before:.0f} -> {after:.0f} MiB after warm-up ({growth:+.1%})")
        if growth > args.rss_growth:
            problems.append(f"worker {i} RSS grew {growth:.1%}")
    if len(warm["rss"]) != len(last["rss"]):
        problems.append("workers were restarted")
    # Each worker's pool holds at most POOL_CONNECTIONS; the jobs add a few.
    bound = POOL_CONNECTIONS * len(last["rss"]) + 5
    if max(r["db"] for r in rows) > bound:
        problems.append(f"database connections reached {max(r['db'] for r in rows)} (bound {bound})")
    all_p99 = {
        kind: max((r["p99"][kind] for r in rows if not math.isnan(r["p99"][kind])), default=math.nan)
        for kind in ("single", "bulk", "read")
    }
    print("worst interval p99: " + ", ".join(f"{k} {v:.1f} ms" for k, v in all_p99.items()))
    if problems:
        print("FAILED: " + "; ".join(problems))
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
