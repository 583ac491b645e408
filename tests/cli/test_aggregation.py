"""compute-aggregation, compute-all-aggregations, compute-wildcard-aggregate, delete-aggregations-from-date."""

import re
from datetime import datetime
from decimal import Decimal

import pytest
import sqlalchemy as sa

from dacc.db import db
from tests.aggregation.helpers import aggregate_cells, insert_raw

DAY = datetime(2024, 4, 1)


def _rows(n, value="2.00", group="x", day=DAY):
    return [(Decimal(value), day, "app", {"g1": group}, None, None)] * n


def _counts(name):
    return sorted(c["count"] for c in aggregate_cells(name).values())


def test_compute_aggregation_reports_the_run_and_a_summary(runner, make_definition):
    make_definition("m")
    insert_raw("m", _rows(3) + _rows(1, group="y"))
    result = runner.invoke(args=["compute-aggregation", "m"])
    assert result.exit_code == 0, result.output
    assert re.search(
        r"^m: 4 raw measures read, 2 aggregates inserted, 0 updated, 0 refused, [\d.]+ s$",
        result.output,
        re.M,
    )
    assert re.search(
        r"^1 measure\(s\) aggregated, 0 skipped, 0 failed: 4 raw measures read", result.output, re.M
    )
    assert _counts("m") == [1, 3]


def test_compute_aggregation_skips_until_due_and_force_runs(runner, make_definition):
    make_definition("m")
    insert_raw("m", _rows(1))
    runner.invoke(args=["compute-aggregation", "m"])
    insert_raw("m", _rows(2))
    skipped = runner.invoke(args=["compute-aggregation", "m"])
    assert skipped.exit_code == 0
    assert "m: skipped: execution frequency 'day' not elapsed" in skipped.output
    assert _counts("m") == [1]
    forced = runner.invoke(args=["compute-aggregation", "m", "--force"])
    assert "m: 2 raw measures read, 0 aggregates inserted, 1 updated" in forced.output
    assert _counts("m") == [3]


def test_compute_aggregation_of_unknown_measure_fails(runner, app):
    result = runner.invoke(args=["compute-aggregation", "nope"])
    assert result.exit_code == 1
    assert "measure 'nope': no such definition" in result.output


def test_compute_aggregation_reports_refused_measures(runner, make_definition):
    make_definition("m", with_quartiles=True)
    insert_raw("m", _rows(2))
    runner.invoke(args=["compute-aggregation", "m"])
    db.session.execute(sa.text("UPDATE aggregate SET last_raw_measures_purged = now()"))
    db.session.commit()
    insert_raw("m", _rows(1))
    result = runner.invoke(args=["compute-aggregation", "m", "--force"])
    assert result.exit_code == 0
    assert "0 raw measures read, 0 aggregates inserted, 0 updated, 1 refused" in result.output
    assert "1 raw measure(s) moved to refused_raw_measure (quartiles after purge" in result.output


def test_compute_all_aggregations_runs_every_measure_and_fails_on_a_broken_one(runner, make_definition):
    make_definition("a")
    make_definition("b", wildcard_groups=[["group3"]])
    make_definition("c")
    insert_raw("a", _rows(2))
    insert_raw("b", _rows(2))
    insert_raw("c", _rows(5))
    result = runner.invoke(args=["compute-all-aggregations"])
    assert result.exit_code == 1
    assert "a: 2 raw measures read" in result.output and "c: 5 raw measures read" in result.output
    assert "b: failed: wildcard_groups[0] of b: b has no group3" in result.output
    assert "2 measure(s) aggregated, 0 skipped, 1 failed: 7 raw measures read" in result.output
    assert "aggregation failed for: b" in result.output
    assert (_counts("a"), _counts("b"), _counts("c")) == ([2], [], [5])


def test_compute_all_aggregations_with_nothing_new(runner, make_definition):
    make_definition("a")
    result = runner.invoke(args=["compute-all-aggregations", "--force"])
    assert result.exit_code == 0
    assert "a: 0 raw measures read, 0 aggregates inserted, 0 updated, 0 refused" in result.output


def test_compute_wildcard_aggregate_prints_a_line_per_start_date_and_a_count(runner, make_definition):
    make_definition("m", group2_key="g2")
    insert_raw("m", [(Decimal(1), DAY, "app", {"g1": g}, {"g2": "k"}, None) for g in "xyz"])
    insert_raw("m", [(Decimal(1), datetime(2024, 4, 2), "app", {"g1": "x"}, {"g2": k}, None) for k in "kl"])
    result = runner.invoke(args=["compute-wildcard-aggregate", "m", "group1,group2"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[:2] == ["2024-04-01: 1 wildcard aggregate(s)", "2024-04-02: 1 wildcard aggregate(s)"]
    assert re.match(r"2 wildcard aggregate\(s\) computed for m \(group1,group2\) in [\d.]+ s", lines[2])
    cells = aggregate_cells("m", {"group1": "g1", "group2": "g2"})
    assert sorted(c["count"] for c in cells.values()) == [2, 3]


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["m", "group9"], 1, 'unknown group "group9"'),
        (["m", "group1,group3"], 1, "m has no group3"),
        (["nope", "group1"], 1, "measure 'nope': no such definition"),
        (["m", "group1", "--from-date", "2024-13-01"], 2, "--from-date"),
        (
            ["m", "group1", "--from-date", "2024-02-01", "--to-date", "2024-01-01"],
            1,
            "from-date: must not be after to-date",
        ),
    ],
)
def test_compute_wildcard_aggregate_errors(runner, make_definition, args, code, message):
    make_definition("m", group2_key="g2")
    insert_raw("m", _rows(1))
    result = runner.invoke(args=["compute-wildcard-aggregate", *args])
    assert result.exit_code == code
    assert message in result.output
    assert aggregate_cells("m") == {}


def test_delete_aggregations_from_date_asks_then_deletes_and_the_next_run_rebuilds(runner, make_definition):
    make_definition("m")
    insert_raw("m", _rows(2) + _rows(3, day=datetime(2024, 4, 5)))
    runner.invoke(args=["compute-aggregation", "m"])
    declined = runner.invoke(args=["delete-aggregations-from-date", "m", "2024-04-03"], input="n\n")
    assert declined.exit_code == 1
    assert _counts("m") == [2, 3]
    result = runner.invoke(args=["delete-aggregations-from-date", "m", "2024-04-03", "--yes"])
    assert result.exit_code == 0, result.output
    assert "1 aggregate(s) of m deleted from 2024-04-03 on" in result.output
    assert _counts("m") == [2]
    rebuilt = runner.invoke(args=["compute-aggregation", "m"])
    assert "m: 3 raw measures read, 1 aggregates inserted, 0 updated" in rebuilt.output
    assert _counts("m") == [2, 3]


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["m", "04/03/2024", "--yes"], 2, "Invalid value for 'DATE'"),
        (["nope", "2024-04-03", "--yes"], 1, "measure 'nope': no such definition"),
    ],
)
def test_delete_aggregations_from_date_errors(runner, make_definition, args, code, message):
    make_definition("m")
    result = runner.invoke(args=["delete-aggregations-from-date", *args])
    assert result.exit_code == code
    assert message in result.output


def _aggregate_then_stamp_as_purged(runner, make_definition):
    make_definition("m")
    insert_raw("m", [(Decimal(v), DAY, "app", {"g1": "x"}, None, None) for v in range(1, 6)])
    runner.invoke(args=["compute-aggregation", "m"])
    db.session.execute(sa.text("UPDATE aggregate SET last_raw_measures_purged = now()"))
    db.session.execute(sa.text("DELETE FROM raw_measure"))
    db.session.commit()
    insert_raw("m", _rows(1, "10.00"))


def _totals():
    rows = db.session.execute(
        sa.text("SELECT count, sum, last_raw_measures_purged IS NOT NULL FROM aggregate")
    ).all()
    db.session.commit()
    return rows


def test_delete_aggregations_from_date_over_purged_cells_exits_1_and_keeps_them(runner, make_definition):
    _aggregate_then_stamp_as_purged(runner, make_definition)
    result = runner.invoke(args=["delete-aggregations-from-date", "m", "2024-04-01", "--yes"])
    assert result.exit_code == 1
    assert "1 aggregate(s) of m from 2024-04-01 on hold raw measures that were purged" in result.output
    assert "--allow-purged-loss" in result.output
    assert _totals() == [(5, Decimal("15.00"), True)]


def test_delete_aggregations_from_date_allowing_purged_loss_warns_then_deletes(runner, make_definition):
    _aggregate_then_stamp_as_purged(runner, make_definition)
    result = runner.invoke(
        args=["delete-aggregations-from-date", "m", "2024-04-01", "--allow-purged-loss"], input="y\n"
    )
    assert result.exit_code == 0, result.output
    assert "warning: 1 aggregate(s) of m from 2024-04-01 on hold purged raw measures" in result.output
    assert "1 aggregate(s) of m deleted from 2024-04-01 on" in result.output
    runner.invoke(args=["compute-aggregation", "m"])
    assert _totals() == [(1, Decimal("10.00"), False)]


def test_compute_aggregation_publishes_in_its_own_transaction(runner, make_definition, monkeypatch):
    """A publication that fails rolls the merge back: nothing half-done, a rerun works."""
    from dacc.publication import publisher

    make_definition("m")
    insert_raw("m", _rows(3))

    def broken(*args, **kwargs):
        raise RuntimeError("publication broke")

    monkeypatch.setattr(publisher, "decide", broken)
    with pytest.raises(RuntimeError):
        runner.invoke(args=["compute-aggregation", "m"], catch_exceptions=False)
    assert _counts("m") == []
    monkeypatch.undo()
    result = runner.invoke(args=["compute-aggregation", "m"])
    assert result.exit_code == 0, result.output
    assert "m: 3 raw measures read, 1 aggregates inserted" in result.output
    assert "1 row(s) published, 0 withheld" in result.output
    assert _counts("m") == [3]
