"""`flask jobs run`: summary table, exit codes, a second runner."""

import sqlalchemy as sa

from dacc.db import db
from dacc.jobs import RUNNER_LOCK
from tests.test_purge import DAY, insert_raw, raw_count


def _table(output):
    """step, measure and status of each summary row."""
    lines = output.splitlines()
    start = next(i for i, l in enumerate(lines) if l.startswith("step "))
    rows = []
    for line in lines[start + 1 :]:
        if " step(s) in " in line:
            break
        fields = line.split()
        if fields[0] == "refresh":
            fields = ["publish", *fields[2:]]
        rows.append(tuple(fields[:3]))
    return rows


def test_run_prints_a_summary_and_exits_0(runner, make_definition):
    make_definition("m")
    insert_raw("m", age_seconds=100 * DAY, n=2)

    result = runner.invoke(args=["jobs", "run"])

    assert result.exit_code == 0, result.output
    assert _table(result.output) == [
        ("aggregate", "m", "ok"),
        ("publish", "-", "ok"),
        ("purge", "m", "ok"),
    ]
    assert "3 step(s) in " in result.output and "0 failed, 0 skipped, 0 refused" in result.output
    assert "aggregate m: ok (" in result.output  # progress, one line per step
    assert raw_count("m") == 0


def test_run_with_a_failed_step_exits_1_after_running_the_others(runner, make_definition):
    make_definition("bad", wildcard_groups=[["group9"]])
    make_definition("good")
    insert_raw("good", age_seconds=100 * DAY)

    result = runner.invoke(args=["jobs", "run"])

    assert result.exit_code == 1
    assert _table(result.output) == [
        ("aggregate", "bad", "failed"),
        ("aggregate", "good", "ok"),
        ("publish", "-", "ok"),
        ("purge", "bad", "ok"),
        ("purge", "good", "ok"),
    ]
    assert "Error: failed: aggregate bad" in result.output
    assert raw_count("good") == 0


def test_run_while_another_runner_holds_the_lock_does_nothing_and_exits_0(runner, make_definition):
    make_definition("m")
    insert_raw("m", age_seconds=100 * DAY)

    with db.engine.connect() as other:
        other.execute(sa.text(f"SELECT pg_advisory_lock({RUNNER_LOCK})"))
        result = runner.invoke(args=["jobs", "run"])
        other.execute(sa.text(f"SELECT pg_advisory_unlock({RUNNER_LOCK})"))

    assert result.exit_code == 0, result.output
    assert "another jobs run is in progress: skipped" in result.output
    assert db.session.scalar(sa.text("SELECT count(*) FROM aggregate")) == 0
    assert raw_count("m") == 1
