"""20,000 measures POSTed while the aggregation runs again and again: each counted once."""

import http.client
import json
import os
import random
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from decimal import Decimal

import pytest
import sqlalchemy as sa

from dacc.aggregation.compute import compute_aggregation
from dacc.db import db
from tests.aggregation.helpers import aggregate_cells, database_url

MEASURES = 20_000
CLIENTS = 8
DAYS = ("2024-07-01", "2024-07-02", "2024-07-03")

LOOP = """
import pathlib, sys, time
from dacc import create_app
from dacc.aggregation.compute import compute_aggregation
from dacc.db import db
from dacc.config import Config

app = create_app(Config(database_url=sys.argv[1], logging_enable=False, source="loop"))
stop = pathlib.Path(sys.argv[2])
with app.app_context():
    while not stop.exists():
        result = compute_aggregation("load", force=True)
        print(result.raw_read, flush=True)
        time.sleep(0.5)  # pace: leave CPU to the server on this small machine
"""


@pytest.fixture
def async_commit(app):
    """Commits that do not wait for the WAL flush, on this throw-away database, for this test.

    Each accepted measure is one commit, and this machine's flush rate alone makes
    20,000 of them take over a minute. Visibility and snapshots, which exactly-once
    depends on, are unchanged; only durability across a server crash is not.
    """
    name = db.engine.url.database
    with db.engine.begin() as conn:
        conn.execute(sa.text(f'ALTER DATABASE "{name}" SET synchronous_commit = off'))
    yield
    with db.engine.begin() as conn:
        conn.execute(sa.text(f'ALTER DATABASE "{name}" RESET synchronous_commit'))


@pytest.fixture
def server(app, async_commit, tmp_path, secret_watch):
    """gunicorn serving the app on the test database, on a free loopback port."""
    env = dict(os.environ, DATABASE_URL=database_url(), PYTHONUNBUFFERED="1")
    env.pop("DACC_CONFIG", None)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "--bind",
            "127.0.0.1:0",
            "--workers",
            "2",
            "--worker-class",
            "gthread",
            "--threads",
            "4",
            "--keep-alive",
            "30",
            "dacc:create_app()",
        ],
        cwd=tmp_path,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    log = []
    port = None
    deadline = time.monotonic() + 30
    while port is None and time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            break
        log.append(line)
        found = re.search(r"Listening at: http://127\.0\.0\.1:(\d+)", line)
        port = int(found.group(1)) if found else None
    drain = threading.Thread(target=lambda: log.extend(process.stderr), daemon=True)
    drain.start()
    try:
        assert port, "gunicorn did not start:\n" + "".join(log)
        yield port
    finally:
        process.terminate()
        process.wait(20)
        drain.join(5)
        secret_watch.check_text("".join(log), "gunicorn's stderr")


def _post_all(port, secret, measures, tally, lock):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Authorization": f"Bearer {secret}", "Content-Type": "application/json"}
    mine, sums, failures = Counter(), Counter(), Counter()
    for body, cell in measures:
        connection.request("POST", "/measure", body=json.dumps(body), headers=headers)
        response = connection.getresponse()
        response.read()
        if 200 <= response.status < 300:
            mine[cell] += 1
            sums[cell] += Decimal(body["value"])
        else:
            failures[response.status] += 1
    connection.close()
    with lock:
        tally["count"].update(mine)
        tally["sum"].update(sums)
        tally["failed"].update(failures)


def test_measures_posted_during_repeated_runs_are_each_counted_once(
    app, make_definition, make_token, server, tmp_path
):
    make_definition("load", group2_key="g2", wildcard_groups=[["group2"]], aggregation_threshold=1)
    _, secret = make_token("org", scopes=["measure:write"])
    rnd = random.Random(5)
    measures = []
    for _ in range(MEASURES):
        day, g1, g2 = rnd.choice(DAYS), rnd.choice("abcd"), rnd.choice("xy")
        value = f"{rnd.randint(-1000, 100000) / 100:.2f}"
        body = {
            "measureName": "load",
            "value": value,
            "startDate": day,
            "createdBy": "app",
            "group1": {"g1": g1},
            "group2": {"g2": g2},
        }
        measures.append((body, (day, g1, g2)))

    stop = tmp_path / "stop"
    loop = subprocess.Popen(
        [sys.executable, "-c", LOOP, database_url("postgresql+psycopg2"), str(stop)],
        stdout=subprocess.PIPE,
        text=True,
    )
    tally, lock = {"count": Counter(), "sum": Counter(), "failed": Counter()}, threading.Lock()
    clients = [
        threading.Thread(target=_post_all, args=(server, secret, measures[i::CLIENTS], tally, lock))
        for i in range(CLIENTS)
    ]
    try:
        for client in clients:
            client.start()
        for client in clients:
            client.join(120)
    finally:
        stop.touch()
        runs = [int(line) for line in loop.communicate(timeout=60)[0].split()]
    assert loop.returncode == 0
    assert tally["failed"] == Counter()
    assert sum(tally["count"].values()) == MEASURES
    # The runs really overlapped the load: several of them found new measures.
    assert sum(1 for n in runs if n > 0) >= 3, runs

    # Group commit (on by default) really shared commits between requests.
    transactions = db.session.execute(
        sa.text("SELECT count(DISTINCT txid) FROM raw_measure WHERE measure_name = 'load'")
    ).scalar()
    assert transactions < MEASURES

    compute_aggregation("load", force=True)
    plain = {
        (k[0].strftime("%Y-%m-%d"), json.loads(k[2])["g1"], json.loads(k[3])["g2"]): v
        for k, v in aggregate_cells("load", {}).items()
    }
    assert {cell: v["count"] for cell, v in plain.items()} == dict(tally["count"])
    assert {cell: v["sum"] for cell, v in plain.items()} == dict(tally["sum"])
    wildcard = Counter()
    for (day, g1, _), n in tally["count"].items():
        wildcard[(day, g1)] += n
    starred = {
        (k[0].strftime("%Y-%m-%d"), json.loads(k[2])["g1"]): v["count"]
        for k, v in aggregate_cells("load", {"group2": "g2"}).items()
    }
    assert starred == dict(wildcard)
