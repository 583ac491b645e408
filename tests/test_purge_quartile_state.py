"""The purge and quartile state: a copy of raw values never outlives them."""

from __future__ import annotations

from datetime import datetime, timedelta

import sqlalchemy as sa

from dacc.aggregation.compute import compute_aggregation
from dacc.db import db
from dacc.purge import purge_raw_measures
from tests.test_purge import DAY, insert_raw


def _states(name: str) -> dict[str, list[float] | None]:
    rows = db.session.execute(
        sa.text(
            "SELECT group1, start_date, quartile_values FROM aggregate WHERE measure_name = :name"
            ' AND group1 <> CAST(\'{"g1": "*"}\' AS jsonb)'
        ),
        {"name": name},
    ).all()
    return {f"{g['g1']} {d:%m-%d}": v for g, d, v in rows}


def _recent(days_ago: int) -> datetime:
    today = datetime.utcnow().replace(hour=0, minute=0, second=0, microsecond=0)
    return today - timedelta(days=days_ago)


def test_a_cell_the_purge_stamps_loses_its_state_with_its_raw_rows(make_definition):
    make_definition("m", with_quartiles=True, max_days_to_update_quartile=30, wildcard_groups=[["group1"]])
    day = _recent(2)
    insert_raw("m", age_seconds=40 * DAY, n=3, start_date=day, group1={"g1": "old"}, value=4)
    insert_raw("m", age_seconds=40 * DAY, n=1, start_date=day, group1={"g1": "mixed"}, value=1)
    insert_raw("m", age_seconds=DAY, n=2, start_date=day, group1={"g1": "mixed"}, value=2)
    insert_raw("m", age_seconds=DAY, n=2, start_date=day, group1={"g1": "young"}, value=7)
    compute_aggregation("m", force=True)
    assert _states("m") == {
        f"old {day:%m-%d}": [4.0, 4.0, 4.0],
        f"mixed {day:%m-%d}": [1.0, 2.0, 2.0],
        f"young {day:%m-%d}": [7.0, 7.0],
    }

    result = purge_raw_measures("m", days=35)

    assert result.deleted == 4
    assert _states("m") == {
        f"old {day:%m-%d}": None,
        f"mixed {day:%m-%d}": None,
        f"young {day:%m-%d}": [7.0, 7.0],
    }
    leftover = db.session.scalar(
        sa.text(
            "SELECT count(*) FROM aggregate WHERE measure_name = 'm'"
            " AND last_raw_measures_purged IS NOT NULL AND quartile_values IS NOT NULL"
        )
    )
    assert leftover == 0
    # A later measure of a stamped cell is refused; nothing brings its state back.
    insert_raw("m", age_seconds=0, start_date=day, group1={"g1": "mixed"}, value=3)
    assert compute_aggregation("m", force=True).refused == 1
    assert _states("m")[f"mixed {day:%m-%d}"] is None


def test_the_purge_drops_the_state_of_cells_past_max_days_to_update_quartile(make_definition):
    make_definition("m", with_quartiles=True, max_days_to_update_quartile=10)
    old, young = _recent(20), _recent(3)
    insert_raw("m", age_seconds=DAY, n=2, start_date=old, group1={"g1": "a"}, value=1)
    insert_raw("m", age_seconds=DAY, n=2, start_date=young, group1={"g1": "a"}, value=2)
    compute_aggregation("m", force=True)

    result = purge_raw_measures("m")

    assert (result.deleted, result.quartile_states_dropped) == (0, 1)
    assert _states("m") == {f"a {old:%m-%d}": None, f"a {young:%m-%d}": [2.0, 2.0]}
    # The aged cell still merges exactly from its raw rows, and keeps state until the
    # next purge.
    insert_raw("m", age_seconds=0, start_date=old, group1={"g1": "a"}, value=5)
    compute_aggregation("m", force=True)
    median = db.session.scalar(
        sa.text("SELECT median FROM aggregate WHERE measure_name = 'm' AND start_date = :d"), {"d": old}
    )
    assert median == 1.0
    assert purge_raw_measures("m").quartile_states_dropped == 1
    assert _states("m")[f"a {old:%m-%d}"] is None


def test_the_purge_drops_every_state_of_a_measure_without_quartiles(make_definition):
    definition = make_definition("m", with_quartiles=True)
    insert_raw("m", age_seconds=DAY, n=2, start_date=_recent(1), value=1)
    compute_aggregation("m", force=True)
    definition.with_quartiles = False
    db.session.commit()

    assert purge_raw_measures("m").quartile_states_dropped == 1
    assert set(_states("m").values()) == {None}


def test_ageing_reads_only_cells_with_state(make_definition):
    """The ageing statement is a range of the partial index, not a scan of the cells."""
    from dacc.purge import _AGE_QUARTILE_STATE

    make_definition("m", with_quartiles=True)
    # Years of cells without state, a few days with it.
    db.session.execute(
        sa.text(
            "INSERT INTO aggregate (measure_name, start_date, created_by, count, count_not_zero, sum,"
            " sum_squares, min, max, avg, std, contributors, largest_value, quartile_values)"
            " SELECT 'm', timestamp '2020-01-01' + i * interval '1 hour', 'app', 1, 1, 1, 1, 1, 1, 1, 0, 1, 1,"
            "        CASE WHEN i > 4990 THEN ARRAY[1.0] END"
            " FROM generate_series(1, 5000) AS i"
        )
    )
    db.session.execute(sa.text("ANALYZE aggregate"))
    plan = "\n".join(
        db.session.execute(
            sa.text("EXPLAIN " + _AGE_QUARTILE_STATE),
            {"name": "m", "quartiles": True, "quartile_days": 100},
        ).scalars()
    )
    db.session.rollback()
    assert "ix_aggregate_quartile_state" in plan
