"""8 writers through the README's server while 2 processes run the jobs again and again:
no 5xx, and after a final run every cell counts exactly the measures that got a 2xx.

tests/aggregation/test_concurrency.py covers one aggregation loop against single
measures; here two runner processes alternate `jobs run` (runner lock, aggregation,
publication, purge) and `compute-all-aggregations --force` (the measure's own lock),
so that runs of both kinds overlap each other and the writers, who send single and
bulk measures, some of them invalid, over keep-alive connections, until the runners
have done enough runs that read measures (at least WRITE_SECONDS; on a loaded machine
the runners start late and run slowly, so a fixed time would not be enough).
"""

from __future__ import annotations

import http.client
import json
import random
import subprocess
import sys
import threading
import time
from collections import Counter

import psycopg2
import pytest

from dacc.serving import GUNICORN_OPTIONS
from tests.conftest import Served

WRITERS = 8
WRITE_SECONDS = 10.0
MAX_WRITE_SECONDS = 150.0
OVERLAPPING_RUNS = 4
"""Runs that read new measures, needed (with a run of each kind) before the writers stop."""
DAYS = ("2024-07-01", "2024-07-02", "2024-07-03")

RUNNER = """
import pathlib, sys, time
import sqlalchemy as sa
from dacc import create_app, jobs
from dacc.aggregation import compute, sql
from dacc.config import Config
from dacc.db import db
from dacc.errors import Conflict

url, stop, turn = sys.argv[1], pathlib.Path(sys.argv[2]), int(sys.argv[3])
app = create_app(Config(database_url=url, logging_enable=False, source="runner"))


def make_due():
    # As if a day had passed since the last run, moved only while no run holds the
    # measure (runs take its session lock before their transaction).
    with db.engine.connect() as conn:
        if conn.execute(sa.text(sql.TRY_SESSION_LOCK), {"name": "m"}).scalar():
            conn.execute(sa.text(
                "UPDATE aggregation_state SET last_run_at = last_run_at - interval '1 day'"
                " WHERE measure_name = 'm'"))
            conn.commit()
            conn.execute(sa.text(sql.RELEASE_SESSION_LOCK), {"name": "m"})
            conn.commit()


with app.app_context():
    while True:
        if turn % 2 == 0:
            make_due()
            try:
                steps = jobs.run_jobs()
            except Conflict:
                print("jobs conflict", flush=True)
            else:
                read = sum(int(s.detail.split()[0]) for s in steps if s.step == "aggregate" and s.status == "ok")
                print("jobs", read, sum(s.failed for s in steps), flush=True)
        else:
            run = compute.compute_all_aggregations(force=True)
            print("all", sum(r.raw_read for r in run.results), sum(not r.ok for r in run.results), flush=True)
        if stop.exists():
            break
        turn += 1
        time.sleep(0.2)
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    served = Served(tmp_path_factory.mktemp("under_load"), GUNICORN_OPTIONS)
    yield served
    served.close()


def _measure(rnd: random.Random) -> tuple[dict, tuple | None]:
    """A measure and its cell; one in 20 is invalid (its cell None)."""
    day, g1 = rnd.choice(DAYS), rnd.choice("abcd")
    body = {
        "measureName": "m",
        "value": rnd.randint(-1000, 100000) / 100,
        "startDate": day,
        "createdBy": "app",
        "group1": {"g1": g1},
    }
    if rnd.random() < 0.05:
        body["group1"] = {"wrong": g1}
        return body, None
    return body, (day, g1)


def _write(port, secret, seed, done, tally, lock):
    rnd = random.Random(seed)
    counted, statuses = Counter(), Counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Authorization": f"Bearer {secret}", "Content-Type": "application/json"}
    while not done():
        if rnd.random() < 0.1:
            items = [_measure(rnd) for _ in range(rnd.randint(2, 50))]
            path, body = "/measures", [b for b, _ in items]
            cells = [c for _, c in items]
            if None in cells:  # all or nothing: one invalid item refuses the batch
                cells = [None]
        else:
            measure, cell = _measure(rnd)
            path, body, cells = "/measure", measure, [cell]
        connection.request("POST", path, body=json.dumps(body), headers=headers)
        response = connection.getresponse()
        answer = response.read()
        statuses[response.status] += 1
        if 200 <= response.status < 300:
            assert None not in cells, answer
            counted.update(cells)
        else:
            assert 400 <= response.status < 500 and "error" in json.loads(answer), (response.status, answer)
        if response.getheader("Connection", "").lower() == "close":
            connection.close()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.close()
    with lock:
        tally["counted"].update(counted)
        tally["statuses"].update(statuses)


def _runner(stack, stop, turn):
    return subprocess.Popen(
        [sys.executable, "-c", RUNNER, stack.database_url, str(stop), str(turn)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


class _Output:
    """A process's stdout and stderr, read as it runs (its runs are counted meanwhile)."""

    def __init__(self, process):
        self.process = process
        self.out: list[str] = []
        self.err: list[str] = []
        self.threads = [
            threading.Thread(target=self._read, args=(stream, lines), daemon=True)
            for stream, lines in ((process.stdout, self.out), (process.stderr, self.err))
        ]
        for thread in self.threads:
            thread.start()

    @staticmethod
    def _read(stream, lines):
        for line in stream:
            lines.append(line)

    def runs(self) -> list[list[str]]:
        return [line.split() for line in list(self.out)]

    def wait(self, timeout):
        self.process.wait(timeout)
        for thread in self.threads:
            thread.join(timeout)
        return "".join(self.out), "".join(self.err)


def _overlapped(runs) -> bool:
    """Enough runs read new measures, and both kinds ran: what the test asserts."""
    reading = sum(1 for r in runs if len(r) == 3 and int(r[1]) > 0)
    return reading >= OVERLAPPING_RUNS and {r[0] for r in runs} >= {"jobs", "all"}


def test_eight_writers_and_two_job_runners_count_each_accepted_measure_once(stack, tmp_path):
    stop = tmp_path / "stop"
    runners = [_runner(stack, stop, turn) for turn in (0, 1)]
    readers = [_Output(runner) for runner in runners]
    tally, lock = {"counted": Counter(), "statuses": Counter()}, threading.Lock()
    started = time.monotonic()

    def done():
        elapsed = time.monotonic() - started
        if elapsed >= MAX_WRITE_SECONDS or any(runner.poll() is not None for runner in runners):
            return True  # the assertions below say what went wrong
        return elapsed >= WRITE_SECONDS and _overlapped([r for reader in readers for r in reader.runs()])

    writers = [
        threading.Thread(target=_write, args=(stack.port, stack.secret, seed, done, tally, lock))
        for seed in range(WRITERS)
    ]
    try:
        for writer in writers:
            writer.start()
        for writer in writers:
            writer.join(MAX_WRITE_SECONDS + 30)
    finally:
        stop.touch()
        outputs = [reader.wait(timeout=60) for reader in readers]
    for runner, (_, err) in zip(runners, outputs):
        assert runner.returncode == 0, err[-3000:]
    runs = [line.split() for out, _ in outputs for line in out.splitlines()]
    statuses = tally["statuses"]
    assert not any(s >= 500 for s in statuses), statuses
    assert statuses[201] > 100 and sum(v for s, v in statuses.items() if 400 <= s < 500) > 5, statuses
    # Each runner failed nothing; the runs really overlapped the writes and each other.
    assert not any(r[0] != "jobs" or r[1] != "conflict" for r in runs if len(r) == 2), runs
    assert all(int(r[2]) == 0 for r in runs if len(r) == 3), runs
    assert sum(1 for r in runs if len(r) == 3 and int(r[1]) > 0) >= OVERLAPPING_RUNS, runs
    assert {r[0] for r in runs} >= {"jobs", "all"}, runs

    final = _runner(stack, stop, 1)  # one compute-all-aggregations, then out
    out, err = final.communicate(timeout=60)
    assert final.returncode == 0 and out.split()[0] == "all" and out.split()[2] == "0", err[-3000:]

    conn = psycopg2.connect(stack.database_url.replace("+psycopg2", ""))
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT to_char(start_date, 'YYYY-MM-DD'), group1 ->> 'g1', count FROM aggregate"
                " WHERE measure_name = 'm' AND group1 ->> 'g1' <> '*'"
            )
            cells = {(day, g1): count for day, g1, count in cur.fetchall()}
            cur.execute("SELECT count(*) FROM raw_measure WHERE measure_name = 'm'")
            raw = cur.fetchone()[0]
    finally:
        conn.close()
    assert sum(cells.values()) == sum(tally["counted"].values()) == raw
    assert cells == dict(tally["counted"])
