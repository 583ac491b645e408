"""Quartiles of touched cells: read through the cell index, exact even when its hash collides."""

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


def test_a_hash_collision_takes_the_exact_scan(app, make_definition, monkeypatch):
    """With every cell key hashing alike, the index finds all the rows of a period for
    each cell: more rows than the cell holds, so the merge must read the cell exactly."""
    definition = make_definition("m", group2_key="g2", with_quartiles=True, wildcard_groups=[["group2"]])
    monkeypatch.setattr(sql, "CELL_KEY_HASH", "CAST(0 AS bigint)")
    rnd = random.Random(7)
    insert_raw("m", _rows(rnd, 120, days=2))
    compute_aggregation("m", force=True)
    insert_raw("m", _rows(rnd, 40, days=2))
    compute_aggregation("m", force=True)
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


def test_the_merge_reads_quartile_cells_through_the_migrated_cell_index(app, make_definition):
    """The statement's hash expression is the migrated index's: the planner can use it."""
    make_definition("m", with_quartiles=True)
    insert_raw("m", [(Decimal("1"), DAY, "app", {"g1": "a"}, None, None)])
    statement = sql.merge(frozenset(), rebuild=False, quartiles=True)
    params = {
        "name": "m",
        "period": "day",
        "step": "1 day",
        "xmin": 0,
        "xmax": 0,
        "xip": [],
        "rebuild_from": None,
        "star_group1": None,
        "star_group2": None,
        "star_group3": None,
    }
    db.session.execute(sa.text("SET LOCAL enable_seqscan = off"))
    db.session.execute(sa.text("SET LOCAL enable_bitmapscan = off"))
    plan = "\n".join(db.session.execute(sa.text("EXPLAIN " + statement), params).scalars())
    db.session.rollback()
    assert "ix_raw_measure_cell" in plan
