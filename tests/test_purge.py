"""Purge of raw measures: cut-off, guards, aggregate stamping, retention, re-runs.

The SQL helpers here are shared with the jobs and CLI tests.
"""

from __future__ import annotations

import json
from datetime import datetime

import pytest
import sqlalchemy as sa

from dacc.db import db
from dacc.errors import BadRequest, NotFound
from dacc.purge import purge_all_measures, purge_raw_measures

DAY = 86_400
MINUTE = 60
START = datetime(2024, 1, 10, 8, 30)


def insert_raw(name, *, age_seconds, n=1, start_date=START, group1=None, created_by="app", value=1):
    """Insert `n` raw measures ingested `age_seconds` ago; commits."""
    db.session.execute(
        sa.text(
            "INSERT INTO raw_measure (measure_name, value, start_date, created_by, group1,"
            " last_updated)"
            " SELECT :name, :value, :start_date, :created_by, CAST(:group1 AS jsonb),"
            "        now() - make_interval(secs => :age)"
            " FROM generate_series(1, :n)"
        ),
        {
            "name": name,
            "value": value,
            "start_date": start_date,
            "created_by": created_by,
            "group1": json.dumps(group1 if group1 is not None else {"g1": "a"}),
            "age": age_seconds,
            "n": n,
        },
    )
    db.session.commit()


def mark_aggregated(name):
    """Record the current snapshot as `name`'s last run: every committed row is seen."""
    db.session.execute(
        sa.text(
            "INSERT INTO aggregation_state"
            " (measure_name, last_run_at, snapshot_xmin, snapshot_xmax, snapshot_xip)"
            " SELECT :name, now(), pg_snapshot_xmin(s)::text::bigint,"
            "        pg_snapshot_xmax(s)::text::bigint,"
            "        ARRAY(SELECT x::text::bigint FROM pg_snapshot_xip(s) x)"
            " FROM pg_current_snapshot() s"
            " ON CONFLICT (measure_name) DO UPDATE SET last_run_at = excluded.last_run_at,"
            "   snapshot_xmin = excluded.snapshot_xmin, snapshot_xmax = excluded.snapshot_xmax,"
            "   snapshot_xip = excluded.snapshot_xip"
        ),
        {"name": name},
    )
    db.session.commit()


def insert_cell(name, *, start_date, group1, created_by="app", count=1):
    """An aggregate row (its statistics do not matter to the purge); returns its id."""
    cell_id = db.session.scalar(
        sa.text(
            "INSERT INTO aggregate (measure_name, start_date, created_by, group1, count,"
            " count_not_zero, sum, sum_squares, min, max, avg, std, contributors, largest_value)"
            " VALUES (:name, :start_date, :created_by, CAST(:group1 AS jsonb), :count, :count,"
            "         :count, :count, 1, 1, 1, 0, :count, 1)"
            " RETURNING id"
        ),
        {
            "name": name,
            "start_date": start_date,
            "created_by": created_by,
            "group1": json.dumps(group1),
            "count": count,
        },
    )
    db.session.commit()
    return cell_id


def raw_count(name) -> int:
    return db.session.scalar(
        sa.text("SELECT count(*) FROM raw_measure WHERE measure_name = :name"), {"name": name}
    )


def stamped_cells(name) -> set[int]:
    return set(
        db.session.scalars(
            sa.text(
                "SELECT id FROM aggregate"
                " WHERE measure_name = :name AND last_raw_measures_purged IS NOT NULL"
            ),
            {"name": name},
        )
    )


# --- cut-off -------------------------------------------------------------------------


@pytest.mark.parametrize("days", [None, 90, 30])
def test_rows_ingested_just_before_the_cutoff_go_and_just_after_stay(make_definition, days):
    make_definition("m")
    limit = (days or 90) * DAY
    insert_raw("m", age_seconds=limit + MINUTE, n=3)
    insert_raw("m", age_seconds=limit - MINUTE, n=2)
    mark_aggregated("m")

    result = purge_raw_measures("m", days=days)

    assert (result.deleted, result.days) == (3, days or 90)
    assert result.ok and result.status == "purged"
    assert raw_count("m") == 2


def test_other_measures_are_untouched(make_definition):
    make_definition("m")
    make_definition("other")
    for name in ("m", "other"):
        insert_raw(name, age_seconds=100 * DAY)
        mark_aggregated(name)

    assert purge_raw_measures("m").deleted == 1
    assert (raw_count("m"), raw_count("other")) == (0, 1)


def test_nothing_past_the_cutoff_is_a_success_with_zero_rows(make_definition):
    make_definition("m")
    insert_raw("m", age_seconds=DAY)

    result = purge_raw_measures("m")

    assert (result.deleted, result.stamped, result.ok) == (0, 0, True)
    assert result.status == "nothing to purge"
    assert raw_count("m") == 1


def test_measure_id_tombstones_survive_the_purge(make_definition):
    make_definition("m")
    insert_raw("m", age_seconds=100 * DAY)
    db.session.execute(
        sa.text(
            "INSERT INTO measure_key (measure_name, measure_id, created_at)"
            " VALUES ('m', 'client-42', now() - interval '100 days')"
        )
    )
    db.session.commit()
    mark_aggregated("m")

    assert purge_raw_measures("m").deleted == 1
    assert db.session.scalars(sa.text("SELECT measure_id FROM measure_key")).all() == ["client-42"]


# --- not-yet-aggregated guard --------------------------------------------------------


def test_measure_never_aggregated_is_refused_and_nothing_deleted(make_definition):
    make_definition("m")
    insert_raw("m", age_seconds=100 * DAY, n=2)

    result = purge_raw_measures("m")

    assert (result.refused, result.not_aggregated, result.deleted) == (True, 2, 0)
    assert "2 raw measure(s) not aggregated yet" in result.status
    assert raw_count("m") == 2


def test_one_unaggregated_row_past_the_cutoff_blocks_the_whole_measure(make_definition):
    make_definition("m")
    insert_raw("m", age_seconds=100 * DAY, n=3)
    mark_aggregated("m")
    # Committed after the last run's snapshot, with an old ingestion time (a
    # transaction that stayed open): not aggregated yet.
    insert_raw("m", age_seconds=95 * DAY)

    result = purge_raw_measures("m")

    assert (result.refused, result.not_aggregated, result.deleted) == (True, 1, 0)
    assert raw_count("m") == 4


def test_unaggregated_rows_inside_the_retention_do_not_block(make_definition):
    make_definition("m")
    insert_raw("m", age_seconds=100 * DAY, n=2)
    mark_aggregated("m")
    insert_raw("m", age_seconds=DAY)

    result = purge_raw_measures("m")

    assert (result.ok, result.deleted) == (True, 2)
    assert raw_count("m") == 1


def test_rows_a_rebuild_must_reread_count_as_not_aggregated(make_definition):
    make_definition("m")
    insert_raw("m", age_seconds=100 * DAY, start_date=datetime(2024, 1, 1))
    insert_raw("m", age_seconds=100 * DAY, start_date=datetime(2024, 3, 1))
    mark_aggregated("m")
    db.session.execute(sa.text("UPDATE aggregation_state SET rebuild_from = '2024-02-01'"))
    db.session.commit()

    result = purge_raw_measures("m")

    assert (result.refused, result.not_aggregated) == (True, 1)
    assert raw_count("m") == 2


# --- quartile guard ------------------------------------------------------------------


@pytest.mark.parametrize(
    "with_quartiles, max_days, days, effective, kept",
    [
        (True, 100, 90, 100, 2),  # the 95-day-old row still feeds quartiles: kept
        (True, 100, 120, 120, 3),  # a longer cut-off wins
        (True, 10, 90, 90, 1),
        (False, 100, 90, 90, 1),  # no quartiles: the guard does not apply
    ],
)
def test_quartile_definitions_keep_rows_younger_than_max_days_to_update_quartile(
    make_definition, with_quartiles, max_days, days, effective, kept
):
    make_definition("m", with_quartiles=with_quartiles, max_days_to_update_quartile=max_days)
    insert_raw("m", age_seconds=95 * DAY)
    insert_raw("m", age_seconds=101 * DAY)
    insert_raw("m", age_seconds=DAY)
    mark_aggregated("m")

    result = purge_raw_measures("m", days=days)

    assert result.days == effective
    assert raw_count("m") == kept


# --- aggregate stamping --------------------------------------------------------------


def test_cells_that_lost_raw_rows_are_stamped_plain_and_wildcard(make_definition):
    make_definition("m", group1_key="g1", aggregation_period="week")
    week = datetime(2024, 1, 8)  # the Monday of START's week
    plain_a = insert_cell("m", start_date=week, group1={"g1": "a"})
    plain_b = insert_cell("m", start_date=week, group1={"g1": "b"})
    wildcard = insert_cell("m", start_date=week, group1={"g1": "*"})
    other_week = insert_cell("m", start_date=datetime(2024, 1, 15), group1={"g1": "a"})
    other_app = insert_cell("m", start_date=week, group1={"g1": "a"}, created_by="other")
    insert_raw("m", age_seconds=100 * DAY, group1={"g1": "a"})  # in plain_a, wildcard
    insert_raw("m", age_seconds=DAY, group1={"g1": "b"})  # in plain_b, not purged
    insert_raw("m", age_seconds=100 * DAY, group1={"g1": "a"}, start_date=datetime(2024, 1, 15))
    mark_aggregated("m")

    result = purge_raw_measures("m")

    assert (result.deleted, result.stamped) == (2, 3)
    assert stamped_cells("m") == {plain_a, wildcard, other_week}
    assert {plain_b, other_app}.isdisjoint(stamped_cells("m"))
    stamps = (
        db.session.execute(
            sa.text(
                "SELECT DISTINCT last_raw_measures_purged <= now() FROM aggregate"
                " WHERE last_raw_measures_purged IS NOT NULL"
            )
        )
        .scalars()
        .all()
    )
    assert stamps == [True]


def test_each_cell_is_counted_once_across_batches(make_definition):
    make_definition("m")
    plain = insert_cell("m", start_date=datetime(2024, 1, 10), group1={"g1": "a"})
    wildcard = insert_cell("m", start_date=datetime(2024, 1, 10), group1={"g1": "*"})
    insert_raw("m", age_seconds=100 * DAY, n=4)
    mark_aggregated("m")

    result = purge_raw_measures("m", batch_size=1)

    assert (result.deleted, result.stamped) == (4, 2)
    assert stamped_cells("m") == {plain, wildcard}


def test_cells_of_a_definition_with_two_groups_match_each_wildcard_level(make_definition):
    make_definition("m", group1_key="g1", group2_key="g2")
    day = datetime(2024, 1, 10)
    cells = {}
    for g1 in ("a", "*"):
        for g2 in ("x", "*", "y"):
            cells[g1, g2] = _cell2("m", day, {"g1": g1}, {"g2": g2})
    db.session.execute(
        sa.text(
            "INSERT INTO raw_measure (measure_name, value, start_date, created_by, group1,"
            " group2, last_updated) VALUES ('m', 1, :day, 'app', '{\"g1\": \"a\"}',"
            " '{\"g2\": \"x\"}', now() - interval '100 days')"
        ),
        {"day": day},
    )
    db.session.commit()
    mark_aggregated("m")

    assert purge_raw_measures("m").stamped == 4
    assert stamped_cells("m") == {cells[k] for k in cells if k[1] != "y"}


def _cell2(name, day, group1, group2):
    cell_id = db.session.scalar(
        sa.text(
            "INSERT INTO aggregate (measure_name, start_date, created_by, group1, group2, count,"
            " count_not_zero, sum, sum_squares, min, max, avg, std, contributors, largest_value)"
            " VALUES (:name, :day, 'app', CAST(:g1 AS jsonb), CAST(:g2 AS jsonb),"
            "         1, 1, 1, 1, 1, 1, 1, 0, 1, 1) RETURNING id"
        ),
        {"name": name, "day": day, "g1": json.dumps(group1), "g2": json.dumps(group2)},
    )
    db.session.commit()
    return cell_id


# --- retention per definition --------------------------------------------------------


def test_purge_all_uses_each_definitions_retention_else_90_days(make_definition):
    make_definition("short", raw_retention_days=10)
    make_definition("long", raw_retention_days=200)
    make_definition("unset")
    for name in ("short", "long", "unset"):
        insert_raw(name, age_seconds=30 * DAY)
        insert_raw(name, age_seconds=100 * DAY)
        mark_aggregated(name)

    results = {r.measure_name: r for r in purge_all_measures()}

    assert {n: (r.days, r.deleted) for n, r in results.items()} == {
        "long": (200, 0),
        "short": (10, 2),
        "unset": (90, 1),
    }
    assert (raw_count("short"), raw_count("long"), raw_count("unset")) == (0, 2, 1)


def test_purge_all_with_days_applies_them_to_every_measure(make_definition):
    make_definition("short", raw_retention_days=10)
    make_definition("unset")
    for name in ("short", "unset"):
        insert_raw(name, age_seconds=30 * DAY)
        mark_aggregated(name)

    results = purge_all_measures(days=20)

    assert [(r.measure_name, r.days, r.deleted) for r in results] == [
        ("short", 20, 1),
        ("unset", 20, 1),
    ]


def test_purge_all_goes_on_after_a_refused_measure(make_definition):
    make_definition("a_refused")
    make_definition("b_fine")
    insert_raw("a_refused", age_seconds=100 * DAY)
    insert_raw("b_fine", age_seconds=100 * DAY)
    mark_aggregated("b_fine")

    results = purge_all_measures()

    assert [(r.measure_name, r.refused, r.deleted) for r in results] == [
        ("a_refused", True, 0),
        ("b_fine", False, 1),
    ]


def test_purge_all_records_a_failed_measure_and_goes_on(make_definition):
    for name in ("a", "b", "c"):
        make_definition(name)
        insert_raw(name, age_seconds=100 * DAY)
        mark_aggregated(name)

    def remove_b(progress):
        # While "a" is purged, another admin removes the definition of "b".
        if progress.measure_name == "a":
            with db.engine.begin() as conn:
                conn.execute(sa.text("DELETE FROM measure_definition WHERE name = 'b'"))

    results = purge_all_measures(on_batch=remove_b)

    assert [(r.measure_name, r.deleted, r.error) for r in results] == [
        ("a", 1, None),
        ("b", 0, "measure 'b': no such definition"),
        ("c", 1, None),
    ]
    assert results[1].status == "failed: measure 'b': no such definition"


# --- interrupted, then run again -----------------------------------------------------


class Killed(Exception):
    pass


def test_purge_stopped_between_batches_is_consistent_and_a_rerun_finishes(make_definition):
    make_definition("m")
    days = [datetime(2024, 1, d) for d in (1, 2, 3, 4, 5)]
    cells = {d: insert_cell("m", start_date=d, group1={"g1": "a"}) for d in days}
    for age, day in enumerate(days):  # oldest first: purged in this order
        insert_raw("m", age_seconds=(200 - age) * DAY, start_date=day, n=2)
    mark_aggregated("m")

    def kill_after_three_batches(progress):
        if progress.deleted == 3:
            raise Killed

    with pytest.raises(Killed):
        purge_raw_measures("m", batch_size=1, on_batch=kill_after_three_batches)

    # Each batch committed whole: 3 rows gone, exactly their cells stamped.
    assert raw_count("m") == 7
    assert stamped_cells("m") == {cells[days[0]], cells[days[1]]}

    result = purge_raw_measures("m", batch_size=4)

    # The first day's cell lost all its rows before the kill: nothing left to stamp.
    assert (result.deleted, result.stamped, result.ok) == (7, 4, True)
    assert raw_count("m") == 0
    assert stamped_cells("m") == set(cells.values())


# --- bad input -----------------------------------------------------------------------


@pytest.mark.parametrize("days", [0, -3, 1.5, "90", True])
def test_bad_days_is_refused_before_anything_is_deleted(make_definition, days):
    make_definition("m")
    insert_raw("m", age_seconds=100 * DAY)
    mark_aggregated("m")

    with pytest.raises(BadRequest, match="days: must be an integer >= 1"):
        purge_raw_measures("m", days=days)
    with pytest.raises(BadRequest, match="days"):
        purge_all_measures(days=days)
    assert raw_count("m") == 1


def test_unknown_measure_is_not_found(app):
    with pytest.raises(NotFound, match="measure 'nope': no such definition"):
        purge_raw_measures("nope")
