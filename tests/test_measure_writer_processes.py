"""Group commit in a served worker: a clean stop answers every pending measure; a
kill -9 in the middle of a batch loses no measure that got a 201."""

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import psycopg2
import pytest
import sqlalchemy as sa

from dacc.db import db
from tests.aggregation.helpers import blocked_pid, database_url, wait_backend_gone

QUEUED = 7


class Served:
    """gunicorn, one gthread worker of 8 threads, on a free loopback port."""

    def __init__(self, tmp_path):
        env = dict(os.environ, DATABASE_URL=database_url(), PYTHONUNBUFFERED="1")
        env.pop("DACC_CONFIG", None)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--bind", "127.0.0.1:0", "--workers", "1",
             "--worker-class", "gthread", "--threads", "8", "--graceful-timeout", "60", "dacc:create_app()"],
            cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.log: list[str] = []
        self.port = None
        deadline = time.monotonic() + 30
        while self.port is None and time.monotonic() < deadline:
            line = self.process.stderr.readline()
            if not line:
                break
            self.log.append(line)
            found = re.search(r"Listening at: http://127\.0\.0\.1:(\d+)", line)
            self.port = int(found.group(1)) if found else None
        threading.Thread(target=lambda: self.log.extend(self.process.stderr), daemon=True).start()
        assert self.port, "gunicorn did not start:\n" + "".join(self.log)

    def workers(self) -> list[int]:
        return [int(pid) for pid in re.findall(r"Booting worker with pid: (\d+)", "".join(self.log))]

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(60)


@pytest.fixture
def served(app, tmp_path, secret_watch):
    server = Served(tmp_path)
    try:
        _wait_for(lambda: _status(server.port) == 200 and server.workers())
        yield server
    finally:
        server.stop()
        secret_watch.check_text("".join(server.log), "gunicorn's stderr")


@pytest.fixture
def secret(make_definition, make_token):
    make_definition("m")
    return make_token("org", scopes=["measure:write"])[1]


def _status(port):
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        connection.request("GET", "/status")
        return connection.getresponse().status
    except OSError:
        return None


def _wait_for(condition, timeout=30):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _post(port, secret, i, outcomes):
    body = {
        "measureName": "m",
        "value": i,
        "startDate": "2024-03-01",
        "createdBy": "app",
        "group1": {"g1": "a"},
        "measureId": f"id-{i}",
    }
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        connection.request(
            "POST",
            "/measure",
            body=json.dumps(body),
            headers={"Authorization": f"Bearer {secret}", "Content-Type": "application/json"},
        )
        outcomes[i] = connection.getresponse().status
    except (OSError, http.client.HTTPException) as exc:
        outcomes[i] = type(exc).__name__


def _start_posts(port, secret, indexes, outcomes):
    threads = [threading.Thread(target=_post, args=(port, secret, i, outcomes)) for i in indexes]
    for thread in threads:
        thread.start()
    return threads


def _stored_ids():
    db.session.rollback()
    rows = db.session.execute(sa.text("SELECT measure_id FROM measure_key ORDER BY measure_id"))
    return rows.scalars().all()


def _raw_count():
    return db.session.execute(sa.text("SELECT count(*) FROM raw_measure")).scalar()


def _hold_table(mode):
    holder = psycopg2.connect(database_url())
    with holder.cursor() as cur:
        cur.execute(f"LOCK TABLE raw_measure IN {mode} MODE")  # mode: a constant of this module
    return holder


def _queue_behind_first(served, secret, outcomes):
    """Measure 0's commit held by a table lock, measures 1..7 queued behind it in the
    worker; returns (holder, threads)."""
    _post(served.port, secret, 100, outcomes)  # warms the worker's token and definition caches
    holder = _hold_table("EXCLUSIVE")
    threads = _start_posts(served.port, secret, [0], outcomes)
    blocked_pid(holder)
    threads += _start_posts(served.port, secret, range(1, 1 + QUEUED), outcomes)
    time.sleep(1.0)  # let them reach the writer's queue (nothing to poll from outside)
    return holder, threads


def test_stopping_a_worker_commits_and_answers_its_pending_measures(app, served, secret):
    outcomes = {}
    holder, threads = _queue_behind_first(served, secret, outcomes)
    served.process.send_signal(signal.SIGTERM)  # graceful stop, while all of them wait
    time.sleep(0.5)
    holder.rollback()
    holder.close()
    for thread in threads:
        thread.join(60)
    assert served.process.wait(60) == 0
    assert outcomes == {i: 201 for i in [100, 0, *range(1, 1 + QUEUED)]}
    assert _stored_ids() == sorted(f"id-{i}" for i in outcomes)
    assert _raw_count() == 1 + 1 + QUEUED


def test_kill_9_in_the_middle_of_a_batch_loses_no_measure_that_got_a_201(app, served, secret):
    outcomes = {}
    holder, threads = _queue_behind_first(served, secret, outcomes)
    # A second lock request queues behind measure 0's INSERT: once measure 0 commits,
    # it holds the table, and the batch of the queued measures waits for it.
    second = psycopg2.connect(database_url())
    with second.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        second_pid = cur.fetchone()[0]
    locking = threading.Thread(
        target=lambda: second.cursor().execute("LOCK TABLE raw_measure IN ACCESS EXCLUSIVE MODE")
    )
    locking.start()
    _wait_for(lambda: _is_blocked(second_pid))
    holder.rollback()
    holder.close()
    threads[0].join(30)
    assert outcomes[0] == 201
    locking.join(30)
    backend = blocked_pid(second)
    assert "unnest" in _query_of(backend)  # a batch of several measures is in flight

    os.kill(served.workers()[0], signal.SIGKILL)
    for thread in threads[1:]:
        thread.join(60)
    second.rollback()
    second.close()
    wait_backend_gone(backend)  # it finds its client gone and rolls back

    answered = {i for i, status in outcomes.items() if status in (200, 201)}
    stored = set(_stored_ids())
    assert {f"id-{i}" for i in answered} <= stored  # nothing answered is lost
    assert all(outcomes[i] != 201 for i in range(1, 1 + QUEUED))  # the batch never committed
    assert stored == {"id-0", "id-100"}
    # The clients retry what got no answer, with the same ids, on the new worker.
    _wait_for(lambda: _status(served.port) == 200)
    retries = {}
    for thread in _start_posts(served.port, secret, range(1, 1 + QUEUED), retries):
        thread.join(60)
    assert retries == {i: 201 for i in range(1, 1 + QUEUED)}
    assert _stored_ids() == sorted(f"id-{i}" for i in [100, *range(0, 1 + QUEUED)])
    assert _raw_count() == 2 + QUEUED


def _is_blocked(pid):
    with db.engine.connect() as conn:
        return conn.execute(sa.text("SELECT cardinality(pg_blocking_pids(:pid)) > 0"), {"pid": pid}).scalar()


def _query_of(pid):
    with db.engine.connect() as conn:
        return conn.execute(
            sa.text("SELECT query FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid}
        ).scalar()
