"""The periodic run: steps in order, failures isolated, one runner at a time."""

from __future__ import annotations

import threading
import time

import pytest
import sqlalchemy as sa

from dacc.db import db
from dacc.errors import Conflict
from dacc.jobs import RUNNER_LOCK, run_jobs
from tests.test_purge import DAY, insert_raw, raw_count, stamped_cells


def _summary(results):
    return [(r.step, r.measure_name, r.status) for r in results]


def _cell_counts(name):
    return db.session.execute(
        sa.text("SELECT group1 ->> 'g1', count FROM aggregate WHERE measure_name = :name" " ORDER BY 1"),
        {"name": name},
    ).all()


def _served(name):
    return db.session.scalar(
        sa.text("SELECT count(*) FROM filtered_aggregation WHERE measure_name = :name"),
        {"name": name},
    )


def test_run_aggregates_then_refreshes_the_view_then_purges_by_retention(make_definition):
    make_definition("m", raw_retention_days=30)
    insert_raw("m", age_seconds=40 * DAY, n=3)
    insert_raw("m", age_seconds=DAY, n=2)

    results = run_jobs()

    assert _summary(results) == [
        ("aggregate", "m", "ok"),
        ("publish", None, "ok"),
        ("purge", "m", "ok"),
    ]
    assert results[0].detail.startswith("5 raw read, 1 inserted")
    assert results[2].detail == "3 deleted, 1 aggregates stamped (30 days)"
    # The purged rows were counted before they went; the cell says they are gone.
    assert _cell_counts("m") == [("a", 5)]
    assert _served("m") == 1
    assert raw_count("m") == 2
    assert len(stamped_cells("m")) == 1


def test_declared_wildcard_levels_are_kept_by_the_run(make_definition):
    make_definition("m", wildcard_groups=[["group1"]])
    insert_raw("m", age_seconds=DAY, group1={"g1": "a"})
    insert_raw("m", age_seconds=DAY, group1={"g1": "b"}, n=2)

    assert [r.status for r in run_jobs()] == ["ok", "ok", "ok"]
    assert _cell_counts("m") == [("*", 3), ("a", 1), ("b", 2)]
    assert _served("m") == 3


def test_a_second_run_skips_measures_whose_frequency_has_not_elapsed(make_definition):
    make_definition("m", execution_frequency="day")
    insert_raw("m", age_seconds=DAY)
    run_jobs()
    insert_raw("m", age_seconds=0)

    results = run_jobs()

    assert _summary(results)[0] == ("aggregate", "m", "skipped")
    assert "not elapsed" in results[0].detail
    assert _cell_counts("m") == [("a", 1)]


def test_a_failed_step_is_reported_and_the_others_still_run(make_definition):
    make_definition("bad", wildcard_groups=[["group9"]])
    make_definition("good", raw_retention_days=10)
    insert_raw("bad", age_seconds=100 * DAY)
    insert_raw("good", age_seconds=100 * DAY)

    results = run_jobs()

    assert _summary(results) == [
        ("aggregate", "bad", "failed"),
        ("aggregate", "good", "ok"),
        ("publish", None, "ok"),
        ("purge", "bad", "refused"),
        ("purge", "good", "ok"),
    ]
    assert "unknown group" in results[0].detail
    assert results[3].detail == "refused: 1 raw measure(s) not aggregated yet"
    assert (raw_count("bad"), raw_count("good")) == (1, 0)
    assert _cell_counts("good") == [("a", 1)]


def test_a_failed_publication_fails_its_step_only(make_definition, monkeypatch):
    from dacc import publication

    def broken(**kwargs):
        raise RuntimeError("publication broke")

    make_definition("m")
    insert_raw("m", age_seconds=100 * DAY)
    monkeypatch.setattr(publication, "publish_pending", broken)
    results = run_jobs()
    assert _summary(results) == [
        ("aggregate", "m", "ok"),
        ("publish", None, "failed"),
        ("purge", "m", "ok"),
    ]
    assert results[1].detail == "RuntimeError"
    assert raw_count("m") == 0


def test_two_runners_at_once_the_second_does_nothing(app, make_definition):
    make_definition("m")
    insert_raw("m", age_seconds=100 * DAY)
    first: dict = {}

    def first_runner():
        with app.app_context():
            try:
                first["results"] = run_jobs()
            except Exception as exc:  # reported by the main thread
                first["error"] = exc

    # Hold the aggregates so that the first runner stops in its first step, lock in hand.
    with db.engine.connect() as blocker:
        blocker.execute(sa.text("LOCK TABLE aggregate IN ACCESS EXCLUSIVE MODE"))
        thread = threading.Thread(target=first_runner)
        thread.start()
        _wait_for(lambda: _waiting_on("aggregate"))

        with pytest.raises(Conflict, match="another jobs run is in progress"):
            run_jobs()
        blocker.rollback()
    thread.join(timeout=30)

    assert "error" not in first, first.get("error")
    assert [r.status for r in first["results"]] == ["ok", "ok", "ok"]
    assert _cell_counts("m") == [("a", 1)]
    assert raw_count("m") == 0


def test_the_runner_lock_is_released_even_when_a_run_is_interrupted(make_definition):
    make_definition("m")

    def interrupt(step):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_jobs(on_step=interrupt)

    assert _lock_holders() == 0
    # The lock is free again: the next run goes through (nothing due to aggregate yet).
    assert [r.status for r in run_jobs()] == ["skipped", "ok", "ok"]


def _lock_holders() -> int:
    return db.session.scalar(
        sa.text(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
            f" AND ((classid::bigint << 32) | objid::bigint) = {RUNNER_LOCK}"
        )
    )


def _waiting_on(relation: str) -> bool:
    with db.engine.connect() as conn:
        return (
            conn.execute(
                sa.text(
                    "SELECT count(*) FROM pg_locks WHERE NOT granted" " AND relation = CAST(:rel AS regclass)"
                ),
                {"rel": relation},
            ).scalar()
            > 0
        )


def _wait_for(condition, timeout=20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)
