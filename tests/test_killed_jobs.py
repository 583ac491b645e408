"""`flask compute-aggregation` and `flask purge measure` killed (SIGKILL) at seeded random
points, then run again: the result equals the same history run without the kill.

Each seed prepares two identical measures: "m", whose run is a CLI subprocess stopped
(SIGSTOP) at a seeded point, then killed a seeded few milliseconds later, and "ctl", the
control, whose run is whole, in this process. The point is a seeded fraction of the
time the control's aggregation took, or of the rows its purge deleted. After the kill, the dead job's backends must be gone (its locks with
them) within seconds, the rerun must not be skipped, and "m" must equal "ctl": the
aggregates (exact counts, sums, min/max, quartiles; and a GROUP BY recomputation over
the raw rows) and the published ledger (published_cell: numbers, body, version).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta
from decimal import Decimal

import psycopg2
import pytest
import sqlalchemy as sa

from dacc.aggregation.compute import compute_aggregation
from dacc.db import db
from dacc.purge import purge_raw_measures
from tests.aggregation.helpers import (
    aggregate_cells,
    assert_cells_equal,
    database_url,
    expected_cells,
    insert_raw,
)

SEEDS = (11, 12, 13)
LOCK_RELEASE_SECONDS = 5.0
"""A killed job's backends end, and its locks go, within this (issue 13)."""
PURGE_ROWS = 4000
PURGE_BATCH = 50


def _rows(seed: int, n: int):
    rnd = random.Random(seed)
    base = datetime(2024, 5, 1)
    return [
        (
            Decimal(rnd.randint(-5000, 15000)) / 100,
            base + timedelta(days=rnd.randrange(15)),
            rnd.choice(["app", "app2"]),
            {"g1": rnd.choice("abcd")},
            {"g2": rnd.choice("xyz")},
            None,
        )
        for _ in range(n)
    ]


def _define(make_definition, name: str, **overrides):
    return make_definition(
        name,
        group2_key="g2",
        wildcard_groups=[["group2"]],
        aggregation_threshold=3,
        **overrides,
    )


def _flask(*args: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DACC_")}
    env.update(DATABASE_URL=database_url(), FLASK_APP="dacc")
    return subprocess.Popen(
        [sys.executable, "-m", "flask", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _client_backends(probe) -> set[int]:
    with probe.cursor() as cur:
        cur.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            " AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
        )
        return {row[0] for row in cur.fetchall()}


def _kill_during(
    args: tuple[str, ...], when, pause: float, *, may_end: bool = False
) -> tuple[set[int], float, str]:
    """Start `flask ARGS`, stop it once `when(probe, seconds since its first database
    connection)` is true, SIGKILL it `pause` s later; (its backends, time of the kill,
    its output)."""
    probe = psycopg2.connect(database_url())
    probe.autocommit = True
    try:
        before = _client_backends(probe)
        job = _flask(*args)
        try:
            deadline = time.monotonic() + 60
            while not (mine := _client_backends(probe) - before):
                assert job.poll() is None, job.communicate()[0][-3000:]
                assert time.monotonic() < deadline, "the job never connected"
                time.sleep(0.01)
            connected = time.monotonic()
            while not when(probe, time.monotonic() - connected):
                if job.poll() is not None:
                    # Ended before its point (a slow control run set it late): a kill
                    # after the end, which must leave the whole run committed.
                    assert may_end and job.returncode == 0, job.communicate()[0][-3000:]
                    return mine, time.monotonic(), job.communicate()[0]
                mine |= _client_backends(probe) - before
                time.sleep(0.01)
            # Frozen at once (its backend may still be inside a statement, which then
            # ends with no client to commit it), killed a seeded moment later.
            job.send_signal(signal.SIGSTOP)
            time.sleep(pause)
            job.send_signal(signal.SIGKILL)
            killed_at = time.monotonic()
            assert job.wait(10) == -signal.SIGKILL
            return mine, killed_at, job.stdout.read()
        finally:
            if job.poll() is None:
                job.kill()
                job.wait()
    finally:
        probe.close()


def _wait_gone(backends: set[int], killed_at: float) -> float:
    """Seconds from the kill until none of `backends` is left (asserted bounded)."""
    probe = psycopg2.connect(database_url())
    probe.autocommit = True
    try:
        while backends & _client_backends(probe):
            assert time.monotonic() - killed_at < LOCK_RELEASE_SECONDS, "the killed job's backend lives on"
            time.sleep(0.02)
        return time.monotonic() - killed_at
    finally:
        probe.close()


def _counts(cells: dict) -> dict:
    return {key: stats["count"] for key, stats in cells.items()}


def _published(name: str) -> dict:
    rows = db.session.execute(
        sa.text(
            "SELECT start_date, created_by, group1, group2, group3, version, contributions, count,"
            " count_not_zero, sum, min, max, avg, std, median, first_quartile, third_quartile, body"
            " FROM published_cell WHERE measure_name = :name"
        ),
        {"name": name},
    ).all()
    db.session.commit()
    cells = {}
    for row in rows:
        start, created_by, *groups = row[:5]
        key = (start, created_by, *(json.dumps(g, sort_keys=True) if g is not None else None for g in groups))
        served = json.loads(row[-1])
        served.pop("measureName")
        cells[key] = (*row[5:-1], served)
    return cells


def _purge_state(name: str) -> dict:
    """Per aggregate cell: whether a purge stamped it; and the raw rows left."""
    stamped = db.session.execute(
        sa.text(
            "SELECT start_date, created_by, group1, group2, group3, last_raw_measures_purged IS NOT NULL"
            " FROM aggregate WHERE measure_name = :name"
        ),
        {"name": name},
    ).all()
    raw = db.session.execute(
        sa.text(
            "SELECT value, start_date, created_by, group1, group2, last_updated FROM raw_measure"
            " WHERE measure_name = :name ORDER BY value, start_date, created_by, group1::text, group2::text, last_updated"
        ),
        {"name": name},
    ).all()
    db.session.commit()
    return {"stamped": {tuple(map(str, r[:5])): r[5] for r in stamped}, "raw": [tuple(r) for r in raw]}


def _insert_both(rows, *, age_days=None):
    for name in ("ctl", "m"):
        insert_raw(name, rows)
    if age_days is not None:
        # Ingested over the last `age_days` days, identically for both measures.
        db.session.execute(
            sa.text(
                "UPDATE raw_measure SET last_updated = now() - make_interval(secs =>"
                " (hashtext(value::text || start_date::text || group1::text) & 65535)"
                " / 65535.0 * :days * 86400)"
            ),
            {"days": age_days},
        )
        db.session.commit()


@pytest.mark.parametrize("seed", SEEDS)
def test_compute_aggregation_killed_at_a_random_point_then_rerun_equals_the_clean_history(
    app, make_definition, seed
):
    rnd = random.Random(seed)
    definition = _define(make_definition, "m", with_quartiles=True)
    _define(make_definition, "ctl", with_quartiles=True)
    _insert_both(_rows(seed, 1000))
    for name in ("ctl", "m"):
        compute_aggregation(name, force=True)
    _insert_both(_rows(seed + 1000, 4000))

    started = time.monotonic()
    assert compute_aggregation("ctl", force=True).raw_read == 4000
    clean_seconds = time.monotonic() - started
    before = aggregate_cells("m")
    delay = rnd.uniform(0.05, 0.6) * clean_seconds
    backends, killed_at, output = _kill_during(
        ("compute-aggregation", "m", "--force"),
        lambda _, seconds: seconds >= delay,
        rnd.uniform(0, 0.05),
        may_end=True,
    )
    _wait_gone(backends, killed_at)
    # One transaction: the kill left the previous run's cells, or (past the commit) the new ones.
    after_kill = _counts(aggregate_cells("m"))
    assert after_kill in (_counts(before), _counts(aggregate_cells("ctl"))), output

    result = compute_aggregation("m", force=True)
    assert not result.skipped
    assert result.raw_read == (4000 if after_kill == _counts(before) else 0)
    assert_cells_equal(aggregate_cells("m"), aggregate_cells("ctl"))
    assert_cells_equal(aggregate_cells("m", {}), expected_cells(definition))
    assert_cells_equal(
        aggregate_cells("m", {"group2": "g2"}), expected_cells(definition, frozenset({"group2"}))
    )
    published = _published("m")
    assert published and published == _published("ctl")


@pytest.mark.parametrize("seed", SEEDS)
def test_purge_killed_at_a_random_point_then_rerun_equals_the_clean_purge(app, make_definition, seed):
    rnd = random.Random(seed)
    definition = _define(make_definition, "m")
    _define(make_definition, "ctl")
    _insert_both(_rows(seed, PURGE_ROWS), age_days=60)
    for name in ("ctl", "m"):
        compute_aggregation(name, force=True)
    recomputed = expected_cells(definition)
    published = _published("m")

    control = purge_raw_measures("ctl", days=30, batch_size=PURGE_BATCH)
    assert control.deleted > 10 * PURGE_BATCH
    # Stopped once it has deleted a seeded share of the rows (some batches committed,
    # the next one maybe under way), killed a few milliseconds later.
    target = rnd.uniform(0.1, 0.8) * control.deleted

    def when(probe, _):
        with probe.cursor() as cur:
            cur.execute("SELECT count(*) FROM raw_measure WHERE measure_name = 'm'")
            return PURGE_ROWS - cur.fetchone()[0] >= target

    backends, killed_at, output = _kill_during(
        ("purge", "measure", "m", "-d", "30", "--batch-size", str(PURGE_BATCH)), when, rnd.uniform(0, 0.05)
    )
    _wait_gone(backends, killed_at)
    left = db.session.scalar(sa.text("SELECT count(*) FROM raw_measure WHERE measure_name = 'm'"))
    db.session.commit()
    assert PURGE_ROWS - control.deleted < left < PURGE_ROWS, output  # killed mid-purge

    rerun = purge_raw_measures("m", days=30, batch_size=PURGE_BATCH)
    assert rerun.ok, rerun.status
    m_state, ctl_state = _purge_state("m"), _purge_state("ctl")
    assert len(m_state["raw"]) == len(ctl_state["raw"]), output
    assert m_state["raw"] == ctl_state["raw"]
    assert m_state == ctl_state
    # The purge stamps cells but changes no number, served or not.
    assert_cells_equal(aggregate_cells("m", {}), recomputed)
    assert_cells_equal(aggregate_cells("m"), aggregate_cells("ctl"))
    assert _published("m") == published == _published("ctl")
    # What is left aggregates on: new rows merge exactly into the purged cells.
    _insert_both(_rows(seed + 1000, 500))
    for name in ("ctl", "m"):
        assert compute_aggregation(name, force=True).raw_read == 500
    assert_cells_equal(aggregate_cells("m"), aggregate_cells("ctl"))
    assert _published("m") == _published("ctl")
