"""The magnitude rules the publisher applies to a row that passes the threshold, and
k counted in distinct contributors; each attack with a control."""

from __future__ import annotations

from datetime import datetime

from dacc.aggregation.compute import compute_aggregation
from tests.publication.test_attacks import Reader, Truth, define, key_of

DAY = datetime(2024, 3, 1)
EXTREMES = {"min", "max", "std", "median", "firstQuartile", "thirdQuartile"}


def _rows(client, auth_header):
    reader = Reader(client, auth_header("org", scopes=["aggregate:read"]))
    return {key_of(r): r for r in reader.read()}


def _send(values, key=("x",)):
    truth = Truth(groups=len(key))
    for value in values:
        truth.send(key, value)
    return truth


def test_few_non_zero_values_show_counts_only(app, client, auth_header):
    define(groups=1, extremes="show")
    _send([0, 0, 0, 0, 250.5])
    _send([1, 2, 3, 4, 5], key=("y",))  # control
    compute_aggregation("m", force=True)
    rows = _rows(client, auth_header)
    # The sum would be one person's value, and tell that the four others sent 0.
    assert rows[("x",)] == {
        "measureName": "m",
        "startDate": "2024-03-01T00:00:00",
        "createdBy": "app",
        "group1": {"a": "x"},
        "count": 5,
        "countNotZero": 1,
    }
    assert rows[("y",)]["sum"] == 15 and rows[("y",)]["max"] == 5


def test_extremes_need_2k_contributors_by_default(app, client, auth_header):
    define(groups=1, withQuartiles=True)
    _send([1, 2, 3, 4, 5])  # k = 5: min, quartiles and max would be the five values
    _send(range(1, 11), key=("y",))  # 2k: control
    compute_aggregation("m", force=True)
    rows = _rows(client, auth_header)
    assert not EXTREMES & set(rows[("x",)]) and rows[("x",)]["sum"] == 15
    assert EXTREMES <= set(rows[("y",)]) and rows[("y",)]["median"] == 5.5


def test_extremes_hide_and_show(app, client, auth_header):
    define("m", groups=1, extremes="hide")
    _send(range(1, 11))
    compute_aggregation("m", force=True)
    assert not EXTREMES & set(_rows(client, auth_header)[("x",)])
    define("m", groups=1, extremes="show")
    _send(range(1, 6), key=("y",))
    compute_aggregation("m", force=True)
    assert {"min", "max", "std"} <= set(_rows(client, auth_header)[("y",)])


def test_a_dominated_cell_shows_its_count_only_and_hides_its_sum_in_totals(app, client, auth_header):
    define(groups=1, pPercent=10, extremes="show", wildcardGroups=[["group1"]])
    _send([1, 1, 1, 1, 1000])  # the others learn the large value within a few units
    _send([50] * 10, key=("y",))
    _send([40] * 10, key=("z",))
    compute_aggregation("m", force=True)
    rows = _rows(client, auth_header)
    assert set(rows[("x",)]) == {"measureName", "startDate", "createdBy", "group1", "count"}
    assert rows[("y",)]["sum"] == 500  # control: a cell without a dominant value
    # The total is not dominated, but (*) - (y) - (z) would be x's sum, 1004: withheld.
    assert ("*",) not in rows


def test_k_counts_distinct_contributors(app, client, auth_header):
    define(groups=1, writers=["*"])
    headers = auth_header("org", scopes=["measure:write"])
    for _ in range(8):
        body = {
            "measureName": "m",
            "value": 3,
            "startDate": "2024-03-01",
            "createdBy": "app",
            "group1": {"a": "x"},
            "contributor": "same-person",
        }
        assert client.post("/measure", json=body, headers=headers).status_code == 201
    for i in range(5):  # control: five people
        body = {
            "measureName": "m",
            "value": 3,
            "startDate": "2024-03-01",
            "createdBy": "app",
            "group1": {"a": "y"},
            "contributor": f"person-{i}",
        }
        assert client.post("/measure", json=body, headers=headers).status_code == 201
    compute_aggregation("m", force=True)
    assert {key: r["count"] for key, r in _rows(client, auth_header).items()} == {("y",): 5}


def test_a_cell_dominated_after_its_sum_was_served_is_audited_as_one_contribution(app, client, auth_header):
    # Served with its sum (no dominance rule yet), alone under the total (*), then the
    # rule is declared and the day gains a cell: the old sums are in the sums' audit,
    # where the dominated cell's piece weighs 1.
    define(groups=1, extremes="show", wildcardGroups=[["group1"]])
    _send([1, 1, 1, 1, 1000])
    compute_aggregation("m", force=True)
    before = _rows(client, auth_header)
    assert before[("x",)]["sum"] == 1004 and before[("*",)]["sum"] == 1004
    define(groups=1, pPercent=10, extremes="show", wildcardGroups=[["group1"]])
    _send([50] * 10, key=("y",))
    compute_aggregation("m", force=True)
    rows = _rows(client, auth_header)
    assert rows[("y",)]["sum"] == 500
    # (*) - (y) is x's sum, served before: the new total gives nothing new away.
    assert rows[("*",)]["sum"] == 1504
