"""Restitution: /aggregate parameters, the rows read back and their JSON shape."""

import json
from datetime import datetime, timedelta
from decimal import Decimal

import pytest
import sqlalchemy as sa

from dacc.aggregation.compute import compute_aggregation
from dacc.db import db
from dacc.errors import BadRequest, Forbidden
from dacc.restitution import AggregateQuery, parse_aggregate_query, read_aggregates
from dacc.tokens import TokenIdentity
from tests.aggregation.helpers import insert_raw
from tests.restitution_helpers import DAY, define, put_aggregates

READER = TokenIdentity(1, "org", frozenset({"aggregate:read"}))
MARCH = {"measureName": "m", "startDate": "2024-03-01", "endDate": "2024-04-01"}


def _read(**params) -> list:
    return json.loads(read_aggregates({**MARCH, **params}, token=READER))


@pytest.mark.parametrize(
    "start, expected",
    [
        ("2022-01-01", datetime(2022, 1, 1)),
        ("2022-01-01T10:30:00", datetime(2022, 1, 1, 10, 30)),
        ("1970-01-01T00:00:00.000Z", datetime(1970, 1, 1)),
        ("2022-01-01T02:00:00+02:00", datetime(2022, 1, 1)),
        ("2021-12-31T23:00:00-01:00", datetime(2022, 1, 1)),
    ],
)
def test_dates_are_iso_8601_read_as_utc(start, expected):
    query = parse_aggregate_query(
        {"measureName": "m", "startDate": start, "endDate": "2026-11-22T18:55:27.123Z"}
    )
    assert query == AggregateQuery("m", expected, datetime(2026, 11, 22, 18, 55, 27, 123000))


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"measureName": None}, "measureName: required"),
        ({"measureName": 12}, "measureName: expected a string, got 12"),
        ({"measureName": ["m"]}, 'measureName: expected a string, got ["m"]'),
        ({"measureName": ""}, "measureName: must be 1 to 200 characters"),
        ({"measureName": "m" * 201}, "measureName: must be 1 to 200 characters"),
        ({"measureName": "m\x00"}, "measureName: must not hold NUL characters or lone surrogates"),
        ({"measureName": "m\ud800"}, "measureName: must not hold NUL characters or lone surrogates"),
        ({"startDate": None}, "startDate: required"),
        ({"endDate": None}, "endDate: required"),
        ({"startDate": "yesterday"}, 'startDate: expected an ISO 8601 date or date-time, got "yesterday"'),
        ({"startDate": "2024-13-01"}, 'startDate: expected an ISO 8601 date or date-time, got "2024-13-01"'),
        ({"endDate": 20240401}, "endDate: expected an ISO 8601 date or date-time, got 20240401"),
        ({"endDate": True}, "endDate: expected an ISO 8601 date or date-time, got true"),
        ({"startDate": "0001-01-01T00:00:00+01:00"}, "startDate: expected an ISO 8601 date or date-time"),
        ({"endDate": "2024-03-01"}, "endDate: must be after startDate"),
        ({"endDate": "2024-02-29T23:59:59"}, "endDate: must be after startDate"),
        ({"createdBy": 5}, "createdBy: expected a string, got 5"),
        ({"createdBy": ""}, "createdBy: must be 1 to 100 characters"),
    ],
)
def test_bad_parameters_are_refused_naming_the_field(changes, message):
    params = {k: v for k, v in {**MARCH, **changes}.items() if v is not None}
    with pytest.raises(BadRequest) as caught:
        parse_aggregate_query(params)
    assert caught.value.message.startswith(message)


def test_unknown_measure_is_refused_as_dacc_does(app):
    with pytest.raises(BadRequest) as caught:
        read_aggregates({**MARCH, "measureName": "nope"}, token=READER)
    assert caught.value.message == "No measure definition found for: nope"


def test_a_measure_of_another_org_is_forbidden(app, make_definition):
    define(make_definition, org="other")
    with pytest.raises(Forbidden) as caught:
        read_aggregates(MARCH, token=READER)
    assert caught.value.message == "You cannot access results for this measure: m"


def test_a_row_is_served_with_dacc_fields_two_decimals_and_no_nulls(app, make_definition):
    make_definition("m", group1_key="heating", aggregation_threshold=3, with_quartiles=True)
    insert_raw("m", [(Decimal(v), DAY, "app", {"heating": "gas"}, None, None) for v in ("1", "2", "2")])
    insert_raw("m", [(Decimal("0"), DAY, "app", {"heating": "wood"}, None, None)])
    compute_aggregation("m", force=True)
    assert _read() == [
        {
            "measureName": "m",
            "startDate": "2024-03-01T00:00:00",
            "createdBy": "app",
            "group1": {"heating": "gas"},
            "count": 3,
            "countNotZero": 3,
            "sum": 5,
            "min": 1,
            "max": 2,
            "avg": 1.67,
            "std": 0.58,
            "median": 2,
            "firstQuartile": 1.5,
            "thirdQuartile": 2,
        }
    ]


def test_numbers_are_json_numbers_and_quartiles_absent_without_them(app, make_definition):
    define(make_definition, groups=1, k=1)
    put_aggregates("m", {("x",): 3})
    text = read_aggregates(MARCH, token=READER)
    assert '"sum":6.00' in text and '"count":3,' in text
    assert _read() == [
        {
            "measureName": "m",
            "startDate": "2024-03-01T00:00:00",
            "createdBy": "app",
            "group1": {"a": "x"},
            "count": 3,
            "countNotZero": 3,
            "sum": 6,
            "min": 2,
            "max": 2,
            "avg": 2,
            "std": 0,
        }
    ]


def test_rows_come_ordered_by_start_date_then_groups(app, make_definition):
    define(make_definition, groups=2, k=1)
    put_aggregates("m", {("y", "p"): 1, ("x", "q"): 1, ("x", "p"): 1}, day=DAY + timedelta(days=1))
    put_aggregates("m", {("y", "p"): 1, ("x", "p"): 1}, day=DAY)
    order = [(r["startDate"][8:10], r["group1"]["a"], r["group2"]["b"]) for r in _read()]
    assert order == [("01", "x", "p"), ("01", "y", "p"), ("02", "x", "p"), ("02", "x", "q"), ("02", "y", "p")]


def test_the_range_includes_its_start_and_excludes_its_end(app, make_definition):
    define(make_definition, groups=1, k=1)
    for offset in (-1, 0, 1, 2):
        put_aggregates("m", {("x",): 1}, day=DAY + timedelta(days=offset))
    rows = _read(startDate="2024-03-01", endDate="2024-03-03T00:00:00Z")
    assert [r["startDate"] for r in rows] == ["2024-03-01T00:00:00", "2024-03-02T00:00:00"]


def test_created_by_selects_rows_of_that_app(app, make_definition):
    define(make_definition, groups=1, k=1)
    put_aggregates("m", {("x",): 1}, created_by="app1")
    put_aggregates("m", {("x",): 2}, created_by="app2")
    assert [(r["createdBy"], r["count"]) for r in _read(createdBy="app2")] == [("app2", 2)]
    assert len(_read()) == 2
    assert _read(createdBy="app3") == []


def test_declared_wildcard_levels_are_served_after_suppression(app, make_definition):
    define(make_definition, groups=2, k=3, wildcard_groups=[["group2"], ["group1", "group2"]])
    cells = {("x", "p"): 3, ("x", "q"): 3, ("y", "p"): 3, ("y", "q"): 2}
    insert_raw(
        "m",
        [(Decimal(1), DAY, "app", {"a": a}, {"b": b}, None) for (a, b), n in cells.items() for _ in range(n)],
    )
    compute_aggregation("m", force=True)
    served = {(r["group1"]["a"], r["group2"]["b"]): r["count"] for r in _read()}
    # (y, q) is under k: (y, *) minus (y, p) would give it, and (*, *) minus the
    # published plain cells too; both are withheld.
    assert served == {("x", "p"): 3, ("x", "q"): 3, ("y", "p"): 3, ("x", "*"): 6}


def test_a_read_is_one_statement(app, make_definition):
    define(make_definition, groups=1, k=1)
    put_aggregates("m", {("x",): 1})
    statements = []

    def count(conn, cursor, statement, *args):
        statements.append(statement)

    sa.event.listen(db.engine, "before_cursor_execute", count)
    try:
        read_aggregates(MARCH, token=READER)
    finally:
        sa.event.remove(db.engine, "before_cursor_execute", count)
    assert len(statements) == 1


def _count_statements(func) -> int:
    statements = []

    def count(conn, cursor, statement, *args):
        statements.append(statement)

    sa.event.listen(db.engine, "before_cursor_execute", count)
    try:
        func()
    finally:
        sa.event.remove(db.engine, "before_cursor_execute", count)
    return len(statements)


def test_a_repeated_read_is_answered_from_the_cache(app, make_definition):
    define(make_definition, groups=1, k=1)
    put_aggregates("m", {("x",): 1})
    first = _read()
    assert _count_statements(lambda: _read()) == 0
    assert _read() == first


def test_the_cache_is_forgotten_when_the_view_is_refreshed(app, make_definition):
    define(make_definition, groups=1, k=1)
    put_aggregates("m", {("x",): 1})
    assert [r["group1"]["a"] for r in _read()] == ["x"]
    put_aggregates("m", {("y",): 1})  # refreshes the view
    assert [r["group1"]["a"] for r in _read()] == ["x", "y"]


def test_access_is_checked_even_on_a_cached_answer(app, make_definition):
    define(make_definition, groups=1, k=1)
    put_aggregates("m", {("x",): 1})
    _read()
    stranger = TokenIdentity(2, "other", frozenset({"aggregate:read"}))
    with pytest.raises(Forbidden):
        read_aggregates(MARCH, token=stranger)


def test_an_unknown_measure_is_not_cached(app, make_definition):
    with pytest.raises(BadRequest, match="No measure definition found for: m"):
        _read()
    define(make_definition, groups=1, k=1)
    assert _read() == []


def test_the_cache_can_be_turned_off(app, make_definition):
    import dataclasses

    define(make_definition, groups=1, k=1)
    put_aggregates("m", {("x",): 1})
    config = app.config["DACC"]
    app.config["DACC"] = dataclasses.replace(config, aggregate_cache_seconds=0)
    try:
        _read()
        assert _count_statements(lambda: _read()) == 1
    finally:
        app.config["DACC"] = config


def test_reads_up_to_the_current_instant_share_one_cached_answer(app, make_definition):
    """Cozy's client asks 1970 → now: a different end at every call."""
    define(make_definition, groups=1, k=1)
    put_aggregates("m", {("x",): 1})
    now = datetime(2024, 3, 5, 12, 0, 0)  # any instant: the call as Cozy's client makes it
    first = json.loads(
        read_aggregates(
            {"measureName": "m", "startDate": "1970-01-01T00:00:00.000Z", "endDate": now.isoformat() + "Z"},
            token=READER,
        )
    )
    later = {"measureName": "m", "startDate": "1970-01-01T00:00:00.000Z"}
    later["endDate"] = (now + timedelta(seconds=3)).isoformat() + "Z"
    assert _count_statements(lambda: read_aggregates(later, token=READER)) == 0
    assert json.loads(read_aggregates(later, token=READER)) == first
    assert [r["group1"]["a"] for r in first] == ["x"]


def test_ends_within_the_data_are_distinct_cache_keys(app, make_definition):
    define(make_definition, groups=1, k=1)
    put_aggregates("m", {("x",): 1}, day=datetime(2024, 3, 1))
    put_aggregates("m", {("y",): 1}, day=datetime(2024, 3, 2))
    assert [r["group1"]["a"] for r in _read(endDate="2024-03-02")] == ["x"]
    assert [r["group1"]["a"] for r in _read(endDate="2024-03-03")] == ["x", "y"]


def test_the_cache_stays_within_its_byte_budget(app, make_definition, monkeypatch):
    import dacc.restitution as restitution

    define(make_definition, groups=1, k=1)
    put_aggregates("m", {("x",): 1})
    one = len(read_aggregates(MARCH, token=READER))
    monkeypatch.setattr(restitution, "CACHE_BUDGET_BYTES", 2 * one)
    for day in range(2, 6):
        _read(startDate=f"2024-03-0{day}")
    cache = app.extensions[restitution.CACHE]
    assert cache.size <= 2 * one
    assert cache.size == sum(len(found.rows) for _, found in cache.entries.values())


def test_bounds_within_one_day_share_a_cache_key(app, make_definition):
    define(make_definition, groups=1, k=1)
    put_aggregates("m", {("x",): 1}, day=datetime(2024, 3, 1))
    put_aggregates("m", {("y",): 1}, day=datetime(2024, 3, 2))
    assert [
        r["group1"]["a"] for r in _read(startDate="2024-03-01T00:00:00", endDate="2024-03-01T10:00:00")
    ] == ["x"]
    # (2024-03-01 00:00, 2024-03-02 00:00]: the same rows, so the same cached answer.
    assert [
        r["group1"]["a"] for r in _read(startDate="2024-03-01T00:00:00", endDate="2024-03-02T00:00:00")
    ] == ["x"]
    # A start after midnight excludes that day's cell.
    assert [r["group1"]["a"] for r in _read(startDate="2024-03-01T00:00:01", endDate="2024-03-03")] == ["y"]
