"""Quartiles of touched cells: merged into each plain cell's sorted values, exact to the bit."""

import json
import random
from datetime import datetime, timedelta
from decimal import Decimal

import sqlalchemy as sa

from dacc.aggregation import sql
from dacc.aggregation.compute import compute_aggregation
from dacc.db import db
from tests.aggregation.helpers import aggregate_cells, assert_cells_equal, expected_cells, insert_raw

DAY = datetime(2024, 5, 1)


def _rows(rnd: random.Random, n: int, days: int = 3):
    """n rows over a few days, two apps and groups, NULL groups included."""
    rows = []
    for _ in range(n):
        rows.append(
            (
                Decimal(rnd.randint(-2000, 9000)) / 100,
                DAY + timedelta(days=rnd.randrange(days), hours=rnd.choice([0, 7])),
                rnd.choice(["app1", "app2"]),
                rnd.choice([{"g1": "a"}, {"g1": "b"}, {"g1": 3}]),
                rnd.choice([{"g2": "s"}, {"g2": "l"}, None]),
                None,
            )
        )
    return rows


def _levels(definition):
    keys = {"group1": definition.group1_key, "group2": definition.group2_key, "group3": definition.group3_key}
    yield frozenset(), {}
    for level in definition.wildcard_groups or []:
        yield frozenset(level), {g: keys[g] for g in level}


def _assert_exact(definition):
    for starred, starred_keys in _levels(definition):
        actual = aggregate_cells(definition.name, starred_keys)
        assert actual, f"no cell for level {sorted(starred)}"
        assert_cells_equal(actual, expected_cells(definition, starred))


def test_runs_into_existing_quartile_cells_stay_exact_on_every_level(app, make_definition):
    definition = make_definition(
        "m", group2_key="g2", with_quartiles=True, wildcard_groups=[["group1"], ["group1", "group2"]]
    )
    rnd = random.Random(15)
    insert_raw("m", _rows(rnd, 200))
    compute_aggregation("m", force=True)
    for _ in range(3):
        # Every cell gets new rows, most of them a few: the increments recompute them all.
        insert_raw("m", _rows(rnd, 60))
        result = compute_aggregation("m", force=True)
        assert result.updated > 0
        _assert_exact(definition)


def test_a_cell_with_one_group_null_is_not_mixed_with_its_neighbours(app, make_definition):
    """A NULL group matches NULL only: the cells (a, NULL) and (a, "s") keep their own quartiles."""
    make_definition("m", group2_key="g2", with_quartiles=True)
    insert_raw(
        "m",
        [
            (Decimal("1"), DAY, "app", {"g1": "a"}, None, None),
            (Decimal("100"), DAY, "app", {"g1": "a"}, {"g2": "s"}, None),
        ],
    )
    compute_aggregation("m", force=True)
    insert_raw(
        "m",
        [
            (Decimal("3"), DAY, "app", {"g1": "a"}, None, None),
            (Decimal("300"), DAY, "app", {"g1": "a"}, {"g2": "s"}, None),
        ],
    )
    compute_aggregation("m", force=True)
    medians = {key[3]: cell["median"] for key, cell in aggregate_cells("m").items()}
    assert medians == {None: 2.0, json.dumps({"g2": "s"}): 200.0}


# --- quartile state (aggregate.quartile_values, migration 0012) ----------------------


def _states(name: str) -> dict:
    rows = db.session.execute(
        sa.text(
            "SELECT start_date, created_by, group1, group2, group3, quartile_values"
            " FROM aggregate WHERE measure_name = :name"
        ),
        {"name": name},
    ).all()
    return {
        tuple(json.dumps(v, sort_keys=True) if isinstance(v, dict) else v for v in r[:5]): r[5] for r in rows
    }


def _expected_states(name: str) -> dict:
    """Each plain cell's values as percentile_cont sees them: float8, in order."""
    rows = db.session.execute(
        sa.text(
            "SELECT date_trunc('day', start_date), created_by, group1, group2, group3,"
            "       array_agg(CAST(value AS float8) ORDER BY CAST(value AS float8))"
            " FROM raw_measure WHERE measure_name = :name GROUP BY 1, 2, 3, 4, 5"
        ),
        {"name": name},
    ).all()
    return {
        tuple(json.dumps(v, sort_keys=True) if isinstance(v, dict) else v for v in r[:5]): r[5] for r in rows
    }


def test_plain_cells_keep_their_sorted_values_wildcard_cells_none(app, make_definition):
    make_definition("m", group2_key="g2", with_quartiles=True, wildcard_groups=[["group1"]])
    rnd = random.Random(3)
    insert_raw("m", _rows(rnd, 80))
    compute_aggregation("m", force=True)
    insert_raw("m", _rows(rnd, 30))
    compute_aggregation("m", force=True)
    states = _states("m")
    plain = {k: v for k, v in states.items() if '"*"' not in (k[2] or "")}
    wildcard = {k: v for k, v in states.items() if '"*"' in (k[2] or "")}
    assert plain == _expected_states("m")
    assert wildcard and set(wildcard.values()) == {None}


def test_quartiles_of_sorted_values_are_percentile_cont_bit_for_bit(app):
    """sql.quartiles_of redoes percentile_cont's float8 arithmetic: over thousands of
    random sorted arrays (1 to 60 values, cents up to 10**13, ties), the same bits."""
    first, median, third = sql.quartiles_of("s.v")
    mismatches = db.session.execute(sa.text(f"""
            WITH raw AS (
                SELECT g.i, round(CAST((random() - 0.3) * power(10, 1 + (g.i % 13)) AS numeric), 2) AS value
                FROM generate_series(1, 4000) AS g(i), generate_series(1, 1 + g.i % 60) AS n
            ), s AS (
                SELECT i, array_agg(CAST(value AS float8) ORDER BY CAST(value AS float8)) AS v,
                       percentile_cont(ARRAY[0.25, 0.5, 0.75]) WITHIN GROUP (ORDER BY value) AS p
                FROM raw GROUP BY i
            )
            SELECT count(*) AS arrays,
                   count(*) FILTER (WHERE ({first}, {median}, {third}) IS DISTINCT FROM (p[1], p[2], p[3]))
                       AS different,
                   count(*) FILTER (WHERE p[2] <> round(CAST(p[2] AS numeric), 2)) AS interpolated
            FROM s
            """)).one()
    db.session.rollback()
    assert mismatches.arrays == 4000
    assert mismatches.different == 0
    assert mismatches.interpolated > 100, "the test must exercise interpolation rounding"


def test_randomised_increments_stay_bit_exact(app, make_definition):
    """Random cells and values merged run after run (new cells, stored cells, cells
    whose state was dropped meanwhile): the quartiles are percentile_cont's over all raw
    rows, to the bit, and each plain cell's state is its sorted values."""
    definition = make_definition("m", group2_key="g2", with_quartiles=True, wildcard_groups=[["group2"]])
    rnd = random.Random(1515)
    for run in range(6):
        rows = []
        for _ in range(rnd.randint(1, 90)):
            cents = rnd.randint(-(10 ** rnd.randint(1, 15)), 10 ** rnd.randint(1, 15))
            rows.append(
                (
                    Decimal(cents) / 100,
                    DAY + timedelta(days=rnd.randrange(5)),
                    rnd.choice(["app1", "app2"]),
                    {"g1": rnd.choice("abcd")},
                    rnd.choice([{"g2": "s"}, None]),
                    None,
                )
            )
        insert_raw("m", rows)
        if run == 3:
            db.session.execute(
                sa.text("UPDATE aggregate SET quartile_values = NULL WHERE measure_name = 'm' AND id % 2 = 0")
            )
            db.session.commit()
            dropped = {k for k, v in _states("m").items() if v is None and '"*"' not in (k[3] or "")}
        compute_aggregation("m", force=True)
        _assert_exact(definition)
        plain = {k: v for k, v in _states("m").items() if '"*"' not in (k[3] or "")}
        expected = _expected_states("m")
        assert plain.keys() == expected.keys()
        # A cell whose state was dropped gets it back when a run merges into it.
        assert {k: v for k, v in plain.items() if v is not None}.items() <= expected.items()
        if run < 3:
            assert None not in plain.values()
    restored = {k for k in dropped if plain[k] is not None}
    assert restored, "some cells must have been merged into without state"


def test_a_cell_without_state_reads_its_raw_rows_then_keeps_state(app, make_definition):
    """A cell made before migration 0012 (or whose state the purge aged out)."""
    definition = make_definition("m", with_quartiles=True)
    insert_raw("m", [(Decimal(v), DAY, "app", {"g1": "a"}, None, None) for v in (5, 1, 9, 3)])
    compute_aggregation("m", force=True)
    db.session.execute(sa.text("UPDATE aggregate SET quartile_values = NULL"))
    db.session.commit()
    insert_raw("m", [(Decimal("4.5"), DAY, "app", {"g1": "a"}, None, None)])
    compute_aggregation("m", force=True)
    _assert_exact(definition)
    assert list(_states("m").values()) == [[1.0, 3.0, 4.5, 5.0, 9.0]]


def test_state_that_misses_a_value_is_not_trusted(app, make_definition):
    """The state is used only while it holds one value per raw row of the cell (e.g. not
    after runs of the measure with its quartiles switched off)."""
    definition = make_definition("m", with_quartiles=True)
    insert_raw("m", [(Decimal(v), DAY, "app", {"g1": "a"}, None, None) for v in (5, 1, 9, 3)])
    compute_aggregation("m", force=True)
    db.session.execute(sa.text("UPDATE aggregate SET quartile_values = quartile_values[2:]"))
    db.session.commit()
    insert_raw("m", [(Decimal("2"), DAY, "app", {"g1": "a"}, None, None)])
    compute_aggregation("m", force=True)
    _assert_exact(definition)
    assert list(_states("m").values()) == [[1.0, 2.0, 3.0, 5.0, 9.0]]


def test_runs_without_quartiles_drop_the_state(app, make_definition):
    definition = make_definition("m", with_quartiles=True)
    insert_raw("m", [(Decimal(v), DAY, "app", {"g1": "a"}, None, None) for v in (5, 1)])
    compute_aggregation("m", force=True)
    definition.with_quartiles = False
    definition.updated_at = sa.func.now()
    db.session.commit()
    insert_raw("m", [(Decimal("2"), DAY, "app", {"g1": "a"}, None, None)])
    compute_aggregation("m", force=True)
    assert list(_states("m").values()) == [None]
