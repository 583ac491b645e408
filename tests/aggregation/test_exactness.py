"""Incremental runs give the same cells as one GROUP BY over every raw measure (invariant 2)."""

import random
from datetime import datetime, timedelta
from decimal import Decimal

import pytest

from dacc.aggregation.compute import compute_aggregation
from tests.aggregation.helpers import aggregate_cells, assert_cells_equal, expected_cells, insert_raw


def _value(rnd: random.Random) -> Decimal:
    kind = rnd.random()
    if kind < 0.15:
        return Decimal("0.00")
    if kind < 0.2:
        return Decimal(rnd.randint(-(10**13), 10**13)) / 100  # large, both signs
    return Decimal(rnd.randint(-5000, 20000)) / 100


def _rows(rnd: random.Random, definition, n: int):
    """n raw rows over a few days, apps and groups (some groups null), 1..many per cell."""
    base = datetime(2024, 1, 29)
    rows = []
    for _ in range(n):
        day = base + timedelta(days=rnd.choice([0, 0, 1, 3, 9, 40]), hours=rnd.choice([0, 0, 5]))
        groups = []
        for key, choices in zip(
            (definition.group1_key, definition.group2_key, definition.group3_key),
            (["a", "b", "c"], ["s", "m", "l", None], ["n", "e"]),
        ):
            value = rnd.choice(choices) if key else None
            groups.append({key: value} if value is not None else None)
        rows.append((_value(rnd), day, rnd.choice(["app1", "app2"]), *groups))
    # A few cells with a single value, far from the others.
    for i in range(5):
        rows.append((_value(rnd), base + timedelta(days=100 + i), "solo", *groups))
    return rows


@pytest.fixture
def definitions(make_definition):
    return [
        make_definition(
            "energy",
            group1_key="heating",
            group2_key="size",
            group3_key="region",
            with_quartiles=True,
            wildcard_groups=[["group2"], ["group1", "group3"]],
        ),
        make_definition("water", group1_key="kind", aggregation_period="week", wildcard_groups=[["group1"]]),
        make_definition("steps", group1_key=None, aggregation_period="month", with_quartiles=True),
    ]


@pytest.mark.parametrize("runs", [1, 2, 7])
def test_incremental_runs_equal_one_group_by_over_all_raw_rows(app, definitions, runs):
    rnd = random.Random(runs)
    batches = {d.name: _rows(rnd, d, 300) for d in definitions}
    for part in range(runs):
        for d in definitions:
            rows = batches[d.name]
            insert_raw(d.name, rows[part * len(rows) // runs : (part + 1) * len(rows) // runs])
        for d in definitions:
            compute_aggregation(d.name, force=True)

    for d in definitions:
        assert_cells_equal(aggregate_cells(d.name, {}), expected_cells(d))
        keys = {"group1": d.group1_key, "group2": d.group2_key, "group3": d.group3_key}
        for level in d.wildcard_groups:
            starred = frozenset(level)
            actual = aggregate_cells(d.name, {g: keys[g] for g in level})
            assert actual, f"no cell for level {level}"
            assert_cells_equal(actual, expected_cells(d, starred))


def test_a_run_counts_raw_read_inserted_and_updated(app, make_definition):
    d = make_definition("m", wildcard_groups=[["group1"]])
    day = datetime(2024, 3, 1)
    insert_raw("m", [(Decimal("1.5"), day, "app", {"g1": "x"}, None, None)] * 3)
    first = compute_aggregation("m", force=True)
    assert (first.raw_read, first.inserted, first.updated, first.refused) == (3, 2, 0, 0)
    insert_raw(
        "m",
        [
            (Decimal("2"), day, "app", {"g1": "x"}, None, None),
            (Decimal("2"), day, "app", {"g1": "y"}, None, None),
        ],
    )
    second = compute_aggregation("m", force=True)
    # x merged, y inserted; the wildcard cell {"g1": "*"} merged.
    assert (second.raw_read, second.inserted, second.updated) == (2, 1, 2)
    third = compute_aggregation("m", force=True)
    assert (third.raw_read, third.inserted, third.updated) == (0, 0, 0)
    assert_cells_equal(aggregate_cells("m", {}), expected_cells(d))
