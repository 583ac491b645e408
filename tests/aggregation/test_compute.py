"""compute_aggregation: exactly once, frequency, advisory lock, rebuild, quartiles after purge."""

import threading
from datetime import date, datetime, timedelta
from decimal import Decimal

import psycopg2
import pytest
import sqlalchemy as sa

from dacc.aggregation.compute import (
    compute_aggregation,
    compute_all_aggregations,
    delete_aggregations_from_date,
)
from dacc.db import db
from dacc.errors import BadRequest, Conflict, NotFound
from tests.aggregation.helpers import (
    aggregate_cells,
    assert_cells_equal,
    blocked_pid,
    database_url,
    expected_cells,
    insert_raw,
)

DAY = datetime(2024, 3, 4)  # a Monday


def _rows(n, value="1.00", day=DAY, group="x"):
    return [(Decimal(value), day, "app", {"g1": group}, None, None)] * n


def _scalar(query, **params):
    return db.session.execute(sa.text(query), params).scalar()


def test_measures_committed_out_of_order_are_counted_exactly_once(app, make_definition):
    """An older transaction that commits after a run is picked up by the next run."""
    make_definition("m")
    slow = psycopg2.connect(database_url())
    with slow.cursor() as cur:  # older transaction id, still open during the run
        cur.execute(
            "INSERT INTO raw_measure (measure_name, value, start_date, created_by, group1)"
            " VALUES ('m', 10, %s, 'app', '{\"g1\": \"x\"}')",
            (DAY,),
        )
    insert_raw("m", _rows(2))  # younger, committed first
    assert compute_aggregation("m", force=True).raw_read == 2
    slow.commit()
    slow.close()
    insert_raw("m", _rows(1))
    assert compute_aggregation("m", force=True).raw_read == 2
    assert compute_aggregation("m", force=True).raw_read == 0
    cell = aggregate_cells("m")
    assert [c["count"] for c in cell.values()] == [4]
    assert [c["sum"] for c in cell.values()] == [Decimal("13.00")]


def test_second_run_is_skipped_until_the_frequency_elapses(app, make_definition):
    make_definition("m", execution_frequency="week")
    insert_raw("m", _rows(1))
    assert compute_aggregation("m").skipped is None
    insert_raw("m", _rows(1))
    skipped = compute_aggregation("m")
    assert "execution frequency 'week' not elapsed" in skipped.skipped
    assert skipped.raw_read == 0
    # Six days and 23 hours later the weekly run is due (an hour of slack for cron jitter).
    db.session.execute(
        sa.text("UPDATE aggregation_state SET last_run_at = now() - interval '6 days 23 hours'")
    )
    db.session.commit()
    assert compute_aggregation("m").raw_read == 1


def test_force_runs_before_the_frequency_elapses(app, make_definition):
    make_definition("m", execution_frequency="month")
    insert_raw("m", _rows(1))
    compute_aggregation("m")
    insert_raw("m", _rows(2))
    result = compute_aggregation("m", force=True)
    assert (result.skipped, result.raw_read) == (None, 2)


def test_a_concurrent_run_of_the_same_measure_is_skipped(app, make_definition):
    make_definition("m")
    insert_raw("m", _rows(1))
    compute_aggregation("m", force=True)
    insert_raw("m", _rows(3))
    blocker = psycopg2.connect(database_url())
    with blocker.cursor() as cur:  # the first run will wait on this row at its very end
        cur.execute("SELECT 1 FROM aggregation_state WHERE measure_name = 'm' FOR UPDATE")
    first = {}
    thread = threading.Thread(
        target=lambda: first.update(result=_in_app(app, compute_aggregation, "m", force=True))
    )
    thread.start()
    try:
        blocked_pid(blocker)
        second = compute_aggregation("m", force=True)
        assert second.skipped == "another run holds measure m"
        with pytest.raises(Conflict, match="another run holds measure m"):
            delete_aggregations_from_date("m", date(2024, 1, 1))
    finally:
        blocker.rollback()
        blocker.close()
        thread.join(30)
    assert first["result"].raw_read == 3
    assert [c["count"] for c in aggregate_cells("m").values()] == [4]


def test_other_measures_can_run_while_one_is_held(app, make_definition):
    make_definition("a")
    make_definition("b")
    insert_raw("b", _rows(2))
    holder = psycopg2.connect(database_url())
    with holder.cursor() as cur:
        cur.execute("SELECT pg_advisory_lock(hashtextextended('dacc.aggregate:a', 0))")
    try:
        results = {r.measure_name: r for r in compute_all_aggregations(force=True).results}
    finally:
        holder.close()
    assert results["a"].skipped == "another run holds measure a"
    assert results["b"].raw_read == 2


def test_delete_aggregations_from_date_then_run_rebuilds_exactly(app, make_definition):
    definition = make_definition("m", aggregation_period="week", wildcard_groups=[["group1"]])
    weeks = [DAY + timedelta(weeks=i, days=i % 3) for i in range(4)]
    insert_raw("m", [r for i, d in enumerate(weeks) for r in _rows(i + 1, "2.50", d, "xy"[i % 2])])
    compute_aggregation("m", force=True)
    insert_raw("m", _rows(5, "-1.25", weeks[3]))  # new, not aggregated yet
    # A Wednesday: rounded down to its week's Monday, so that week is deleted too.
    aligned, deleted = delete_aggregations_from_date("m", (weeks[2] + timedelta(days=2)).date())
    assert aligned == DAY + timedelta(weeks=2)
    assert deleted == 4  # two plain cells, two wildcard cells
    assert all(k[0] < aligned for k in aggregate_cells("m"))
    assert _scalar("SELECT rebuild_from FROM aggregation_state") == aligned
    result = compute_aggregation("m")  # due at once despite the daily frequency
    assert result.raw_read == 3 + 4 + 5
    assert_cells_equal(aggregate_cells("m", {}), expected_cells(definition))
    assert_cells_equal(
        aggregate_cells("m", {"group1": "g1"}), expected_cells(definition, frozenset({"group1"}))
    )
    assert _scalar("SELECT rebuild_from FROM aggregation_state") is None


@pytest.mark.parametrize("from_week", [0, 2])
def test_rebuild_with_quartiles_is_exact_whether_or_not_cells_remain(app, make_definition, from_week):
    """From the first week no cell is left, and the rebuild takes the quartiles from its
    GROUP BY; from a later week the kept cell that gets new rows re-reads all of them."""
    definition = make_definition(
        "m", aggregation_period="week", with_quartiles=True, wildcard_groups=[["group1"]]
    )
    weeks = [DAY + timedelta(weeks=i, days=i % 3) for i in range(4)]

    def spread(day, group, values):
        return [(Decimal(v), day, "app", {"g1": group}, None, None) for v in values]

    insert_raw(
        "m", [r for i, d in enumerate(weeks) for r in spread(d, "xy"[i % 2], ["1.5", "4", f"{i}.25", "-2"])]
    )
    compute_aggregation("m", force=True)
    insert_raw("m", spread(weeks[0], "x", ["-7.5", "30"]) + spread(weeks[3], "y", ["9.75"]))
    delete_aggregations_from_date("m", weeks[from_week].date())
    compute_aggregation("m")

    assert_cells_equal(aggregate_cells("m", {}), expected_cells(definition))
    assert_cells_equal(
        aggregate_cells("m", {"group1": "g1"}), expected_cells(definition, frozenset({"group1"}))
    )
    medians = {k[0]: c["median"] for k, c in aggregate_cells("m", {}).items()}
    assert medians[DAY] == pytest.approx(0.875)  # -7.5, -2, 0.25 | 1.5, 4, 30


def _stamp_as_purged(name="m"):
    """What a purge does to the cells: stamp them (the raw rows are left, which only
    makes a wrong rebuild easier to see)."""
    db.session.execute(
        sa.text("UPDATE aggregate SET last_raw_measures_purged = now() WHERE measure_name = :n"),
        {"n": name},
    )
    db.session.commit()


def _cell_totals(name="m"):
    return db.session.execute(
        sa.text(
            "SELECT count, sum, last_raw_measures_purged IS NOT NULL FROM aggregate"
            " WHERE measure_name = :n ORDER BY start_date"
        ),
        {"n": name},
    ).all()


def test_delete_aggregations_from_date_refuses_to_lose_purged_cells(app, make_definition):
    make_definition("m")
    insert_raw("m", [(Decimal(v), DAY, "app", {"g1": "x"}, None, None) for v in range(1, 6)])
    compute_aggregation("m", force=True)
    _stamp_as_purged()
    db.session.execute(sa.text("DELETE FROM raw_measure"))  # the purge itself
    db.session.commit()
    insert_raw("m", _rows(1, "10.00"))
    with pytest.raises(
        Conflict, match=r"1 aggregate\(s\) of m from 2024-03-04 on hold raw measures that were purged"
    ):
        delete_aggregations_from_date("m", DAY.date())
    assert _cell_totals() == [(5, Decimal("15.00"), True)]
    assert _scalar("SELECT rebuild_from FROM aggregation_state") is None


def test_delete_aggregations_from_date_with_allowed_loss_rebuilds_from_what_is_left(app, make_definition):
    make_definition("m")
    insert_raw("m", [(Decimal(v), DAY, "app", {"g1": "x"}, None, None) for v in range(1, 6)])
    compute_aggregation("m", force=True)
    _stamp_as_purged()
    db.session.execute(sa.text("DELETE FROM raw_measure"))
    db.session.commit()
    insert_raw("m", _rows(1, "10.00"))
    assert delete_aggregations_from_date("m", DAY.date(), allow_purged_loss=True) == (DAY, 1)
    compute_aggregation("m")
    assert _cell_totals() == [(1, Decimal("10.00"), False)]


def _purge_cell(day, group):
    """What a purge does: delete raw rows of the cell and stamp its aggregates."""
    db.session.execute(
        sa.text("DELETE FROM raw_measure WHERE start_date = :d AND group1 = CAST(:g AS jsonb) AND value = 1"),
        {"d": day, "g": f'{{"g1": "{group}"}}'},
    )
    db.session.execute(
        sa.text(
            "UPDATE aggregate SET last_raw_measures_purged = now()"
            ' WHERE start_date = :d AND (group1 = CAST(:g AS jsonb) OR group1 = \'{"g1": "*"}\')'
        ),
        {"d": day, "g": f'{{"g1": "{group}"}}'},
    )
    db.session.commit()


def test_quartile_cell_after_purge_refuses_its_new_measures(app, make_definition):
    make_definition("m", with_quartiles=True)
    other_day = DAY + timedelta(days=1)
    insert_raw("m", _rows(3, "1.00") + _rows(3, "1.00", other_day))
    compute_aggregation("m", force=True)
    _purge_cell(DAY, "x")
    before = aggregate_cells("m")
    insert_raw("m", _rows(2, "7.00") + _rows(1, "4.00", other_day))
    result = compute_aggregation("m", force=True)
    assert (result.refused, result.raw_read) == (2, 1)
    after = aggregate_cells("m")
    purged_key = next(k for k in after if k[0] == DAY)
    assert after[purged_key] == before[purged_key]
    other_key = next(k for k in after if k[0] == other_day)
    assert (after[other_key]["count"], after[other_key]["median"]) == (4, 1.0)
    refused = db.session.execute(sa.text("SELECT value, start_date, reason FROM refused_raw_measure")).all()
    assert [(r.value, r.start_date) for r in refused] == [(Decimal("7.00"), DAY)] * 2
    assert "purged" in refused[0].reason
    assert _scalar("SELECT count(*) FROM raw_measure WHERE value = 7") == 0
    assert compute_aggregation("m", force=True).refused == 0


def test_purged_wildcard_cell_refuses_the_new_measures_of_all_its_levels(app, make_definition):
    make_definition("m", with_quartiles=True, wildcard_groups=[["group1"]])
    insert_raw("m", _rows(2, "1.00", group="x") + _rows(2, "3.00", group="y"))
    compute_aggregation("m", force=True)
    db.session.execute(
        sa.text('UPDATE aggregate SET last_raw_measures_purged = now() WHERE group1 = \'{"g1": "*"}\'')
    )
    db.session.commit()
    before = aggregate_cells("m")
    insert_raw("m", _rows(1, "5.00", group="y"))
    result = compute_aggregation("m", force=True)
    # Merged into "y" but not into "*", the measure would be counted once in one
    # grouping and not in the other: it is refused as a whole.
    assert (result.refused, result.raw_read) == (1, 0)
    assert aggregate_cells("m") == before


def test_without_quartiles_a_purged_cell_still_merges_exactly(app, make_definition):
    make_definition("m")
    insert_raw("m", _rows(3))
    compute_aggregation("m", force=True)
    _purge_cell(DAY, "x")
    insert_raw("m", _rows(2, "4.00"))
    result = compute_aggregation("m", force=True)
    assert (result.refused, result.raw_read) == (0, 2)
    cell = next(iter(aggregate_cells("m").values()))
    assert (cell["count"], cell["sum"], cell["max"]) == (5, Decimal("11.00"), Decimal("4.00"))


def test_single_value_cell_has_zero_std_and_its_value_as_quartiles(app, make_definition):
    make_definition("m", with_quartiles=True)
    insert_raw("m", _rows(1, "-3.50"))
    compute_aggregation("m", force=True)
    cell = next(iter(aggregate_cells("m").values()))
    assert (cell["count"], cell["count_not_zero"], cell["std"]) == (1, 1, 0)
    assert (cell["avg"], cell["median"], cell["first_quartile"], cell["third_quartile"]) == (-3.5,) * 4


@pytest.mark.parametrize(
    "levels, message",
    [
        ([["group4"]], 'unknown group "group4"'),
        ([["group2"]], "m has no group2"),
        ([[]], "expected a non-empty list"),
        ("group1", "must be a list"),
    ],
)
def test_malformed_wildcard_levels_are_refused_before_anything_runs(app, make_definition, levels, message):
    make_definition("m", wildcard_groups=levels)
    insert_raw("m", _rows(1))
    with pytest.raises(BadRequest, match=message):
        compute_aggregation("m", force=True)
    assert aggregate_cells("m") == {}


def test_unknown_measure_is_not_found(app):
    with pytest.raises(NotFound, match="nope"):
        compute_aggregation("nope")


def _in_app(app, func, *args, **kwargs):
    with app.app_context():
        try:
            return func(*args, **kwargs)
        finally:
            db.session.remove()


def test_a_cell_stamped_by_a_purge_during_the_run_is_retried_and_refused(app, make_definition, caplog):
    """The run's snapshot predates the stamp: it must not merge over it, but start again."""
    make_definition("m", with_quartiles=True)
    insert_raw("m", _rows(2))
    compute_aggregation("m", force=True)
    insert_raw("m", _rows(3, "5.00"))
    purge = psycopg2.connect(database_url())
    with purge.cursor() as cur:
        cur.execute("UPDATE aggregate SET last_raw_measures_purged = now() WHERE measure_name = 'm'")
    outcome = {}
    thread = threading.Thread(
        target=lambda: outcome.update(result=_in_app(app, compute_aggregation, "m", force=True))
    )
    thread.start()
    try:
        blocked_pid(purge)  # the run waits on the stamped row, with its snapshot taken
    finally:
        purge.commit()
        purge.close()
        thread.join(30)
    result = outcome["result"]
    assert "concurrent update, retrying" in caplog.text
    assert (result.refused, result.raw_read) == (3, 0)
    assert [c["count"] for c in aggregate_cells("m").values()] == [2]
