"""The attacks of a reader who remembers every answer, run end to end: raw measures,
aggregation runs, /aggregate reads; each with a control where the data is safe."""

from __future__ import annotations

import itertools
import json
import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import numpy as np
import pytest
import sqlalchemy as sa

from dacc.aggregation.compute import compute_aggregation, delete_aggregations_from_date
from dacc.db import db
from dacc.definitions import upsert_definitions, validate_definitions
from tests.aggregation.helpers import insert_raw

DAY = datetime(2024, 3, 1)
K = 5


class Reader:
    """An attacker with a read token: keeps every row ever served, by key and count."""

    def __init__(self, client, headers, name="m"):
        self.client, self.headers, self.name = client, headers, name
        self.seen: list[dict] = []

    def read(self, start="2024-01-01", end="2025-01-01") -> list[dict]:
        query = {"measureName": self.name, "startDate": start, "endDate": end}
        answer = self.client.post("/aggregate", json=query, headers=self.headers)
        assert answer.status_code == 200, answer.get_data(as_text=True)
        rows = answer.get_json()
        self.seen += rows
        return rows

    def raw(self, start="2024-01-01", end="2025-01-01") -> bytes:
        query = {"measureName": self.name, "startDate": start, "endDate": end}
        return self.client.post("/aggregate", json=query, headers=self.headers).get_data()


def key_of(row: dict) -> tuple:
    return tuple(next(iter(row[g].values())) for g in ("group1", "group2", "group3") if g in row)


class Truth:
    """The raw measures as the test wrote them, in arrival order, for the generic attacker."""

    def __init__(self, name="m", groups=2):
        self.name, self.groups = name, groups
        self.measures: list[tuple] = []  # (key, value)

    def send(self, key: tuple, value, *, day=DAY):
        self.measures.append((key, Decimal(str(value))))
        groups = [{"abc"[i]: v} for i, v in enumerate(key)] + [None] * (3 - len(key))
        insert_raw(self.name, [(Decimal(str(value)), day, "app", *groups)])

    def under(self, row_key: tuple) -> list[int]:
        return [
            i for i, (key, _) in enumerate(self.measures) if all(r in ("*", v) for r, v in zip(row_key, key))
        ]

    def vector(self, row: dict) -> np.ndarray:
        """The measures a served row holds: the first `count` of those under its key."""
        chosen = self.under(key_of(row))[: row["count"]]
        vector = np.zeros(len(self.measures))
        vector[chosen] = 1
        return vector

    def recoverable(self, seen: list[dict], targets) -> list:
        """Targets (sets of measure indexes) whose indicator the seen rows span."""
        rows = np.array([self.vector(r) for r in seen]).reshape(-1, len(self.measures))
        rank = np.linalg.matrix_rank(rows) if len(rows) else 0
        found = []
        for target in targets:
            indicator = np.zeros((1, len(self.measures)))
            indicator[0, list(target)] = 1
            if np.linalg.matrix_rank(np.vstack([rows, indicator])) == rank:
                found.append(target)
        return found

    def small_sets(self, batches: list[range]) -> list[frozenset]:
        """Every set of 1..K-1 measures of one plain cell, per batch and over batches."""
        sets = set()
        cells = {key for key, _ in self.measures}
        for key in cells:
            ids = [i for i in self.under(key)]
            for batch in batches:
                piece = frozenset(i for i in ids if i in batch)
                if 0 < len(piece) < K:
                    sets.add(piece)
            if 0 < len(ids) < K:
                sets.add(frozenset(ids))
            for n in range(1, K):
                if n < len(ids):
                    sets.add(frozenset(ids[-n:]))  # the newest n: a late measure
        return sorted(sets, key=sorted)


def define(name="m", *, groups=2, k=K, wildcards=(), **fields):
    keys = {f"group{i + 1}Key": "abc"[i] for i in range(groups)}
    rows = validate_definitions(
        [
            {
                "name": name,
                "org": "org",
                "aggregationThreshold": k,
                "wildcardGroups": list(wildcards),
                **keys,
                **fields,
            }
        ]
    )
    upsert_definitions(rows)


@pytest.fixture
def reader(client, auth_header):
    return Reader(client, auth_header("org", scopes=["aggregate:read"]))


def run(name="m"):
    return compute_aggregation(name, force=True)


# --- update differencing


def test_a_late_measure_does_not_change_a_served_cell(app, reader):
    define(groups=1)
    truth = Truth(groups=1)
    for value in range(1, 11):
        truth.send(("x",), value)
    run()
    assert [(r["count"], r["sum"]) for r in reader.read()] == [(10, 55)]
    truth.send(("x",), 42.5)
    run()
    # Served as (11, 97.5), the difference would be the late value.
    assert [(r["count"], r["sum"]) for r in reader.read()] == [(10, 55)]
    assert truth.recoverable(reader.seen, [frozenset([10])]) == []
    # Control: k more contributions make a new version.
    for _ in range(4):
        truth.send(("x",), 1)
    run()
    assert [(r["count"], r["sum"]) for r in reader.read()] == [(15, 101.5)]


def test_a_late_measure_in_a_withheld_part_does_not_move_the_total(app, reader):
    define(groups=1, wildcards=[["group1"]])
    truth = Truth(groups=1)
    for key, n in (("x", 10), ("y", 6), ("z", 3), ("w", 3)):
        for _ in range(n):
            truth.send((key,), 2)
    run()
    assert {key_of(r): r["count"] for r in reader.read()} == {("x",): 10, ("y",): 6, ("*",): 22}
    truth.send(("z",), 9)
    run()
    assert {key_of(r): r["count"] for r in reader.read()} == {("x",): 10, ("y",): 6, ("*",): 22}
    assert truth.recoverable(reader.seen, truth.small_sets([range(0, 22), range(22, 23)])) == []


# --- margins


def test_a_two_by_two_table_with_its_margins_hides_a_single_measure(app, reader):
    define(groups=2, wildcards=[["group1"], ["group2"], ["group1", "group2"]])
    truth = Truth()
    truth.send(("a", "x"), 77.7)
    for key in (("a", "y"), ("b", "x"), ("b", "y")):
        for _ in range(6):
            truth.send(key, 5)
    run()
    rows = reader.read()
    served = {key_of(r) for r in rows}
    assert {("a", "y"), ("b", "x"), ("b", "y")} <= served  # the control: safe cells are served
    sums = {key_of(r): Decimal(str(r["sum"])) for r in rows}
    if {("a", "*"), ("*", "x"), ("*", "*")} <= served:  # the attack of the issue
        assert sums[("a", "*")] + sums[("*", "x")] + sums[("b", "y")] - sums[("*", "*")] != Decimal("77.7")
    assert truth.recoverable(reader.seen, [frozenset([0])]) == []
    assert any("*" in key for key in served)  # margins that are safe are still served


@pytest.mark.parametrize("groups, seed", [(2, 3), (2, 5), (3, 7), (3, 11)])
def test_random_tables_over_several_runs_leak_nothing(app, reader, runner, groups, seed):
    names = ("group1", "group2", "group3")[:groups]
    define(
        groups=groups,
        wildcards=[list(c) for n in range(1, groups + 1) for c in itertools.combinations(names, n)],
    )
    rng = random.Random(seed)
    truth = Truth(groups=groups)
    domains = (("p", "q", "o"), ("r", "s"), ("t", "u"))[:groups]
    batches = []
    for run_number in range(4):
        first = len(truth.measures)
        for _ in range(rng.randint(30, 60) if run_number == 0 else rng.randint(1, 12)):
            truth.send(tuple(rng.choice(d) for d in domains), rng.randint(0, 9))
        batches.append(range(first, len(truth.measures)))
        run()
        reader.read()
    assert truth.recoverable(reader.seen, truth.small_sets(batches)) == []
    assert any("*" in key_of(r) for r in reader.seen)
    check = runner.invoke(args=["privacy", "check", "m"])
    assert (check.exit_code, check.output.strip()) == (0, "no recoverable aggregate of 1..k-1 contributions")


# --- rule changes and rebuilds


def test_declaring_a_wildcard_level_later_serves_no_difference(app, reader):
    define(groups=1)
    truth = Truth(groups=1)
    for key, n in (("x", 10), ("y", 10), ("z", 2)):
        for _ in range(n):
            truth.send((key,), 3)
    run()
    assert {key_of(r) for r in reader.read()} == {("x",), ("y",)}
    define(groups=1, wildcards=[["group1"]])  # the rebuild comes with the next run
    run()
    rows = reader.read()
    # (*) - x - y would be z: two measures.
    assert {key_of(r) for r in rows} == {("x",), ("y",)}
    assert truth.recoverable(reader.seen, truth.small_sets([range(0, 22)])) == []


def test_raising_the_threshold_keeps_what_was_served_and_serves_no_small_difference(app, reader):
    define(groups=1, k=5)
    truth = Truth(groups=1)
    for key, n in (("x", 6), ("y", 12)):
        for _ in range(n):
            truth.send((key,), 1)
    run()
    assert {key_of(r): r["count"] for r in reader.read()} == {("x",): 6, ("y",): 12}
    define(groups=1, k=7)
    for _ in range(6):  # x: 6 -> 12, a change of 6 < 7
        truth.send(("x",), 4)
    run()
    assert {key_of(r): r["count"] for r in reader.read()} == {("x",): 6, ("y",): 12}


def test_a_rebuild_that_lost_purged_measures_is_not_served_anew(app, reader):
    define(groups=1)
    truth = Truth(groups=1)
    for _ in range(12):
        truth.send(("x",), 2)
    run()
    assert [r["count"] for r in reader.read()] == [12]
    # A purge took 3 of them; the rebuild would serve 9, and 12 - 9 = 3 measures.
    db.session.execute(
        sa.text("DELETE FROM raw_measure WHERE ctid IN (SELECT ctid FROM raw_measure LIMIT 3)")
    )
    db.session.commit()
    delete_aggregations_from_date("m", DAY.date(), allow_purged_loss=True)
    run()
    assert [r["count"] for r in reader.read()] == [12]
    for _ in range(20):
        truth.send(("x",), 1)
    run()
    assert [r["count"] for r in reader.read()] == [12]  # frozen for good


# --- open period


def test_an_open_period_is_not_served_and_a_closed_one_is(app, reader):
    today = datetime.now(UTC).replace(tzinfo=None)
    yesterday = today - timedelta(days=1)
    define(groups=1)
    truth = Truth(groups=1)
    for _ in range(6):
        truth.send(("x",), 1, day=today)
        truth.send(("x",), 1, day=yesterday)
    run()
    start, end = (today - timedelta(days=3)).date().isoformat(), (
        today + timedelta(days=1)
    ).date().isoformat()
    assert [r["startDate"][:10] for r in reader.read(start, end)] == [yesterday.date().isoformat()]


def test_a_publish_delay_holds_a_closed_period_back_until_it_passes(app, reader, runner):
    yesterday = datetime.now(UTC).replace(tzinfo=None) - timedelta(days=1)
    define(groups=1, publishDelayHours=72)
    truth = Truth(groups=1)
    for _ in range(6):
        truth.send(("x",), 1, day=yesterday)
    run()
    window = (
        (yesterday - timedelta(days=2)).date().isoformat(),
        (yesterday + timedelta(days=2)).date().isoformat(),
    )
    assert reader.read(*window) == []
    define(groups=1, publishDelayHours=0)  # a rule change republishes the measure
    assert [r["count"] for r in reader.read(*window)] == [6]


# --- uniform answers


def test_a_withheld_cell_and_a_missing_one_answer_the_same_bytes(app, reader):
    define(groups=1)
    truth = Truth(groups=1)
    for _ in range(3):
        truth.send(("x",), 1, day=DAY)
    run()
    assert reader.raw("2024-03-01", "2024-03-02") == reader.raw("2024-04-01", "2024-04-02") == b"[]"


def test_a_refused_read_reads_no_row(app, make_token):
    """The access check comes first: with a refused token the ledger is not touched."""
    from dacc.restitution import _READ

    define(groups=1, k=1)
    truth = Truth(groups=1)
    for i in range(50):
        truth.send((f"v{i}",), 1)
    run()
    params = {
        "org": "other",
        "can_write": False,
        "name": "m",
        "start": datetime(2024, 1, 1),
        "end": datetime(2025, 1, 1),
        "created_by": None,
    }
    plan = db.session.execute(sa.text("EXPLAIN (ANALYZE, FORMAT JSON) " + _READ.text), params).scalar()
    db.session.commit()
    text = json.dumps(plan)
    assert '"Relation Name": "published_cell"' in text
    assert all(
        node.get("Actual Loops", 1) == 0
        for node in _nodes(plan[0]["Plan"])
        if node.get("Relation Name") == "published_cell"
    )


def _nodes(node):
    yield node
    for child in node.get("Plans", []):
        yield from _nodes(child)
