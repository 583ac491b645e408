"""Suppression (invariant 3): what filtered_aggregation publishes, and access to results."""

import itertools
import random
from datetime import timedelta

import numpy as np
import pytest
import sqlalchemy as sa

from dacc.db import db
from dacc.privacy import may_read_results
from dacc.tokens import TokenIdentity
from tests.restitution_helpers import DAY, define, put_aggregates, served, values


def test_a_cell_under_the_threshold_is_absent_and_at_the_threshold_present(make_definition):
    define(make_definition, groups=1, k=5)
    put_aggregates("m", {("x",): 4, ("y",): 5})
    assert served() == {("y",): 5}


def test_a_wildcard_total_whose_one_suppressed_part_is_under_k_is_absent(make_definition):
    define(make_definition, groups=1, k=5)
    put_aggregates("m", {("x",): 10, ("y",): 10, ("z",): 3, ("*",): 23})
    # Published, the total minus x and y would give z: 3 contributions.
    assert served() == {("x",): 10, ("y",): 10}


def test_a_wildcard_total_whose_suppressed_parts_reach_k_together_is_present(make_definition):
    define(make_definition, groups=1, k=5)
    put_aggregates("m", {("x",): 10, ("y",): 3, ("z",): 3, ("*",): 16})
    assert served() == {("x",): 10, ("*",): 16}


def test_a_wildcard_row_with_all_parts_published_is_present(make_definition):
    define(make_definition, groups=2, k=5)
    put_aggregates("m", {("x", "p"): 5, ("x", "q"): 6, ("x", "*"): 11})
    assert served() == {("x", "p"): 5, ("x", "q"): 6, ("x", "*"): 11}


def test_a_wildcard_row_is_absent_when_its_published_parts_leave_fewer_than_k_unexplained(
    make_definition,
):
    # Parts and total computed over different raw rows (compute-wildcard-aggregate over
    # an ingestion window): the difference is still an aggregate of 3 contributions.
    define(make_definition, groups=1, k=5)
    put_aggregates("m", {("x",): 10, ("y",): 10, ("*",): 23})
    assert served() == {("x",): 10, ("y",): 10}


def test_a_two_star_total_is_absent_when_a_suppressed_one_star_part_is_under_k(make_definition):
    # Levels: plain cells, (a, *) and (*, *). x's cells are too small, so (x, *) is
    # suppressed; (y, *) hides 6 ≥ k and is published. (*, *) - (y, *) would give (x, *).
    define(make_definition, groups=2, k=5)
    put_aggregates(
        "m",
        {
            ("x", "p"): 2,
            ("x", "q"): 1,
            ("y", "p"): 3,
            ("y", "q"): 3,
            ("y", "r"): 10,
            ("x", "*"): 3,
            ("y", "*"): 16,
            ("*", "*"): 19,
        },
    )
    assert served() == {("y", "r"): 10, ("y", "*"): 16}


def test_a_two_star_total_is_absent_when_only_its_plain_cells_give_it_away(make_definition):
    # Every one-star row that is suppressed holds ≥ k, but (*, *) minus the published
    # plain cells would still give (y, q): 3 contributions.
    define(make_definition, groups=2, k=5)
    put_aggregates(
        "m",
        {
            ("x", "p"): 10,
            ("x", "q"): 10,
            ("y", "p"): 10,
            ("y", "q"): 3,
            ("x", "*"): 20,
            ("y", "*"): 13,
            ("*", "p"): 20,
            ("*", "q"): 13,
            ("*", "*"): 43,
        },
    )
    published = served()
    assert ("*", "*") not in published
    assert published == {
        ("x", "p"): 10,
        ("x", "q"): 10,
        ("y", "p"): 10,
        ("x", "*"): 20,
        ("*", "p"): 20,
    }


def test_a_plain_total_without_intermediate_levels_is_checked_against_the_plain_cells(
    make_definition,
):
    define(make_definition, groups=2, k=5)
    put_aggregates("m", {("x", "p"): 10, ("y", "q"): 10, ("y", "p"): 4, ("*", "*"): 24})
    assert served() == {("x", "p"): 10, ("y", "q"): 10}


def test_suppression_is_decided_per_created_by_and_filtering_on_it_changes_nothing(
    make_definition,
):
    define(make_definition, groups=1, k=5)
    put_aggregates("m", {("x",): 10, ("y",): 3, ("*",): 13}, created_by="app1")
    put_aggregates("m", {("x",): 10, ("y",): 10, ("*",): 20}, created_by="app2")
    assert served(created_by="app1") == {("x",): 10}
    assert served(created_by="app2") == {("x",): 10, ("y",): 10, ("*",): 20}


def test_each_start_date_is_decided_on_its_own(make_definition):
    define(make_definition, groups=1, k=5)
    put_aggregates("m", {("x",): 10, ("y",): 3, ("*",): 13}, day=DAY)
    put_aggregates("m", {("x",): 10, ("y",): 5, ("*",): 15}, day=DAY + timedelta(days=1))
    rows = db.session.execute(
        sa.text("SELECT start_date, group1 FROM filtered_aggregation ORDER BY 1, 2")
    ).all()
    assert [(d.day, values([g])) for d, g in rows] == [
        (1, ("x",)),
        (2, ("*",)),
        (2, ("x",)),
        (2, ("y",)),
    ]


def test_each_measure_uses_its_own_threshold(make_definition):
    define(make_definition, "low", groups=1, k=2)
    define(make_definition, "high", groups=1, k=20)
    put_aggregates("low", {("x",): 3})
    put_aggregates("high", {("x",): 19})
    assert (served("low"), served("high")) == ({("x",): 3}, {})


# --- random data: the view publishes exactly what the rule says, and no published
# wildcard row minus its published parts gives a group of fewer than k contributions.

DOMAINS = (("x", "y"), ("p", "q", "r"), ("u", "v"))
K = 5


def _random_cells(rng: random.Random) -> dict:
    """Plain cells with random counts, and the exact sums of a random set of levels."""
    plain = {combo: rng.randint(1, 12) for combo in itertools.product(*DOMAINS) if rng.random() < 0.8}
    cells = dict(plain)
    for mask in range(1, 8):
        if rng.random() < 0.6:
            for combo, count in plain.items():
                key = tuple("*" if mask >> i & 1 else v for i, v in enumerate(combo))
                cells[key] = cells.get(key, 0) + count
    return cells


def _stars(key) -> frozenset:
    return frozenset(i for i, v in enumerate(key) if v == "*")


def recoverable(cells: dict, served_keys, k: int) -> list:
    """A generic attacker with numpy: the sets of one or two plain cells holding 1..k-1
    contributions whose indicator lies in the span of the served rows (so that their
    total count, or sum, is a linear combination of what was served)."""
    plain = [c for c in cells if "*" not in c]

    def vector(key):
        return [1.0 if all(key[i] in ("*", p[i]) for i in range(len(key))) else 0.0 for p in plain]

    served_rows = np.array([vector(key) for key in served_keys]).reshape(-1, len(plain))
    rank = np.linalg.matrix_rank(served_rows) if len(served_rows) else 0
    small = [p for p in plain if cells[p] < k]
    targets = [(p,) for p in small] + [
        pair for pair in itertools.combinations(small, 2) if sum(cells[c] for c in pair) < k
    ]
    found = []
    for target in targets:
        indicator = np.array([[1.0 if p in target else 0.0 for p in plain]])
        if np.linalg.matrix_rank(np.vstack([served_rows, indicator])) == rank:
            found.append(target)
    return found


def _leaks(rows: list[dict], k: int) -> list:
    """Published wildcard rows minus their published parts at one level, when 1..k-1."""
    index = {}
    for row in rows:
        key = tuple(row[f"group{i}"][kk] for i, kk in zip((1, 2, 3), "abc"))
        index[(row["createdBy"], row["startDate"], key)] = row["count"]
    found = []
    for (by, day, key), count in index.items():
        stars = _stars(key)
        assert count >= k
        for size in range(len(stars)):
            for kept in itertools.combinations(sorted(stars), size):
                shown = sum(
                    c
                    for (b, d, p), c in index.items()
                    if (b, d) == (by, day)
                    and _stars(p) == frozenset(kept)
                    and all(p[i] == key[i] for i in range(3) if i not in stars)
                )
                if 0 < count - shown < k:
                    found.append((by, key, kept, count - shown))
    return found


def test_random_data_no_combination_of_served_rows_isolates_under_k(make_definition, client, auth_header):
    define(make_definition, groups=3, k=K)
    headers = auth_header("org", scopes=["aggregate:read"])
    query = {"measureName": "m", "startDate": "2024-01-01", "endDate": "2025-01-01"}
    secondary = with_wildcards = 0
    for seed in range(25):
        rng = random.Random(seed)
        day = DAY + timedelta(days=seed)
        by_app = {app: _random_cells(rng) for app in ("app1", "app2")}
        for app, cells in by_app.items():
            put_aggregates("m", cells, created_by=app, day=day)
        for app, cells in by_app.items():
            shown = served(created_by=app, day=day)
            assert all(cells[key] == n >= K for key, n in shown.items())
            assert recoverable(cells, shown, K) == [], f"seed {seed}, {app}"
            secondary += sum(1 for key, n in cells.items() if n >= K and key not in shown)
            with_wildcards += any("*" in key for key in shown)
        rows = [
            r
            for r in client.post("/aggregate", json=query, headers=headers).get_json()
            if r["startDate"].startswith(day.strftime("%Y-%m-%d"))
        ]
        assert _leaks(rows, K) == [], f"seed {seed}"
    # The data exercised the secondary rule, and wildcard rows are still served.
    assert secondary > 25
    assert with_wildcards >= 40


def test_the_view_holds_no_row_under_its_threshold_whatever_the_data(make_definition):
    define(make_definition, groups=3, k=K)
    put_aggregates("m", _random_cells(random.Random(99)))
    assert (
        db.session.scalar(sa.text("SELECT count(*) FROM filtered_aggregation WHERE count < :k"), {"k": K})
        == 0
    )


# --- access to results


@pytest.mark.parametrize(
    "org, scopes, access_public, access_app, allowed",
    [
        ("owner", {"aggregate:read"}, False, False, True),
        ("other", {"aggregate:read"}, False, False, False),
        ("other", {"aggregate:read"}, True, False, True),
        ("other", {"aggregate:read", "measure:write"}, False, True, True),
        ("other", {"aggregate:read"}, False, True, False),
        ("other", {"aggregate:read", "measure:write"}, False, False, False),
    ],
)
def test_who_may_read_results(org, scopes, access_public, access_app, allowed):
    token = TokenIdentity(1, org, frozenset(scopes))
    assert (
        may_read_results(owner_org="owner", access_public=access_public, access_app=access_app, token=token)
        is allowed
    )
