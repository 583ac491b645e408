"""Validation and storage of raw measures (dacc/ingestion.py), without HTTP."""

import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import sqlalchemy as sa

from dacc.db import db
from dacc.errors import BadRequest
from dacc.ingestion import (
    Measure,
    parse_measure,
    period_start,
    record_measure,
    record_measures,
    store_measures,
    validate_batch,
    validate_measures,
)
from dacc.models import MeasureKey, RawMeasure


def body(**overrides):
    values = {
        "measureName": "m",
        "value": 1,
        "startDate": "2022-01-05",
        "createdBy": "app",
        "group1": {"g1": "a"},
    }
    values.update(overrides)
    return {k: v for k, v in values.items() if v is not _ABSENT}


_ABSENT = object()


def raw_rows():
    return db.session.execute(
        sa.select(RawMeasure.value, RawMeasure.start_date, RawMeasure.created_by, RawMeasure.group1).order_by(
            RawMeasure.id
        )
    ).all()


def count(model):
    return db.session.scalar(sa.select(sa.func.count()).select_from(model))


@pytest.fixture
def definition(make_definition):
    return make_definition("m", group1_key="g1")


# --- value -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, stored",
    [
        (1, Decimal("1.00")),
        (12.5, Decimal("12.50")),
        ("12.5", Decimal("12.50")),
        ("-3", Decimal("-3.00")),
        (0.125, Decimal("0.13")),  # half away from zero, as numeric(16,2)
        (-0.125, Decimal("-0.13")),
        (2.675, Decimal("2.68")),  # the float's shortest decimal, not its binary expansion
        ("1e3", Decimal("1000.00")),
        ("-99999999999999.99", Decimal("-99999999999999.99")),
    ],
)
def test_value_is_kept_with_two_decimals(definition, value, stored):
    assert parse_measure(body(value=value)).value == stored


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        False,
        float("nan"),
        float("inf"),
        float("-inf"),
        "abc",
        "NaN",
        "Infinity",
        "1_000",
        " 1",
        "",
        [1],
        {"v": 1},
        "0x10",
    ],
)
def test_value_that_is_not_a_finite_number_is_refused(definition, value):
    with pytest.raises(BadRequest, match="^value: expected a finite number"):
        parse_measure(body(value=value))


def test_missing_value_is_refused(definition):
    with pytest.raises(BadRequest, match="^value: "):
        parse_measure(body(value=_ABSENT))


@pytest.mark.parametrize("value", [10**14, -(10**14), "1e14", "99999999999999.995", 1e300, "1e9999"])
def test_value_too_large_for_the_column_is_refused(definition, value):
    with pytest.raises(BadRequest, match=r"^value: magnitude must stay below 10\^14"):
        parse_measure(body(value=value))


# --- startDate --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "given, stored",
    [
        ("2022-01-05", datetime(2022, 1, 5)),
        ("2022-01-05T23:59:59", datetime(2022, 1, 5)),
        ("2022-01-05T23:30:00Z", datetime(2022, 1, 5)),
        ("2022-01-05T23:30:00.123z", datetime(2022, 1, 5)),
        ("2022-01-06T00:30:00+01:00", datetime(2022, 1, 5)),  # converted to UTC first
        ("2022-01-05T20:00:00-05:00", datetime(2022, 1, 6)),
        ("2022-01-05 10:00", datetime(2022, 1, 5)),
    ],
)
def test_start_date_is_converted_to_utc_and_truncated_to_the_day(definition, given, stored):
    assert parse_measure(body(startDate=given)).start_date == stored


@pytest.mark.parametrize(
    "period, given, stored",
    [
        ("week", "2022-01-05T10:00:00Z", datetime(2022, 1, 3)),  # a Wednesday → Monday
        ("week", "2022-01-03", datetime(2022, 1, 3)),
        ("week", "2022-01-02", datetime(2021, 12, 27)),  # Sunday belongs to the week before
        ("month", "2022-03-31T23:00:00Z", datetime(2022, 3, 1)),
        ("month", "2022-04-01T00:30:00+02:00", datetime(2022, 3, 1)),
    ],
)
def test_start_date_is_truncated_to_the_period_start(make_definition, period, given, stored):
    make_definition("m", aggregation_period=period)
    assert parse_measure(body(startDate=given)).start_date == stored


@pytest.mark.parametrize(
    "given",
    [
        None,
        20220105,
        "",
        "2022-1-5",
        "05/01/2022",
        "2022-01-05T",
        "2022-02-30",
        "2022-01-05T25:00",
        "2022-01-05x10:00",
        "2022-W01-3",
        "yesterday",
        "2022-01-05T10:00:00+25:00",
    ],
)
def test_start_date_that_is_not_iso_8601_is_refused(definition, given):
    with pytest.raises(BadRequest, match="^startDate: "):
        parse_measure(body(startDate=given))


def test_start_date_more_than_a_day_ahead_is_refused(definition):
    soon = datetime.now(UTC) + timedelta(hours=23)
    assert parse_measure(body(startDate=soon.isoformat()))
    later = datetime.now(UTC) + timedelta(hours=25)
    with pytest.raises(BadRequest, match="^startDate: more than 24 hours in the future"):
        parse_measure(body(startDate=later.isoformat()))


def test_period_start_of_the_first_representable_week():
    assert period_start(datetime(1, 1, 3, 12), "week") == datetime(1, 1, 1)


# --- measureName, createdBy, groups, measureId ------------------------------------------


@pytest.mark.parametrize("name", ["nope", None, 3, "", "m\x00"])
def test_measure_name_without_definition_is_refused(definition, name):
    with pytest.raises(BadRequest, match="^measureName: "):
        parse_measure(body(measureName=name))


@pytest.mark.parametrize("created_by", [None, "", 3, "x" * 101, "a\nb"])
def test_bad_created_by_is_refused(definition, created_by):
    with pytest.raises(BadRequest, match="^createdBy: expected a string"):
        parse_measure(body(createdBy=created_by))


def test_created_by_must_match_the_definition(make_definition):
    make_definition("m", created_by="ecolyo")
    assert parse_measure(body(createdBy="ecolyo")).created_by == "ecolyo"
    with pytest.raises(BadRequest, match="^createdBy: measure 'm' only accepts 'ecolyo'"):
        parse_measure(body(createdBy="other"))


@pytest.mark.parametrize(
    "groups, message",
    [
        ({"group1": _ABSENT}, r"^group1: expected an object with the one key 'g1'"),
        ({"group1": {"other": "a"}}, r"^group1: expected an object with the one key 'g1'"),
        ({"group1": {"g1": "a", "x": "b"}}, r"^group1: expected an object with the one key 'g1'"),
        ({"group1": "a"}, r"^group1: expected an object"),
        ({"group1": {"g1": {"deep": 1}}}, r"^group1: the value of 'g1' must be"),
        ({"group1": {"g1": [1]}}, r"^group1: the value of 'g1' must be"),
        ({"group1": {"g1": None}}, r"^group1: the value of 'g1' must be"),
        ({"group1": {"g1": "x" * 101}}, r"^group1: the value of 'g1' must be"),
        ({"group1": {"g1": float("nan")}}, r"^group1: the value of 'g1' must be"),
        ({"group2": {"g2": "b"}}, r"^group2: measure 'm' has no group2"),
        ({"group1": {"g1": "*"}}, r"^group1: '\*' is reserved for wildcard aggregates"),
    ],
)
def test_groups_must_match_the_definition_keys(definition, groups, message):
    with pytest.raises(BadRequest, match=message):
        parse_measure(body(**groups))


@pytest.mark.parametrize("value", ["enedis", 3, 2.5, True, "x" * 100])
def test_group_values_may_be_strings_numbers_or_booleans(definition, value):
    assert parse_measure(body(group1={"g1": value})).group1 == {"g1": value}


def test_three_groups_in_order(make_definition):
    make_definition("m", group1_key="a", group2_key="b", group3_key="c")
    measure = parse_measure(body(group1={"a": 1}, group2={"b": 2}, group3={"c": 3}))
    assert (measure.group1, measure.group2, measure.group3) == ({"a": 1}, {"b": 2}, {"c": 3})
    with pytest.raises(BadRequest, match="^group3: expected an object with the one key 'c'"):
        parse_measure(body(group1={"a": 1}, group2={"b": 2}))


def test_unknown_top_level_fields_are_ignored(definition):
    assert parse_measure(body(extra="x", group2=None)).measure_name == "m"


@pytest.mark.parametrize("measure_id", ["", "x" * 65, "a b", "é", 12, "a\n", True])
def test_bad_measure_id_is_refused(definition, measure_id):
    with pytest.raises(BadRequest, match="^measureId: expected 1 to 64 characters"):
        parse_measure(body(measureId=measure_id))


@pytest.mark.parametrize("body_value", [[], "x", None, 3])
def test_body_must_be_an_object(definition, body_value):
    with pytest.raises(BadRequest, match="^body: expected a JSON object"):
        parse_measure(body_value)


# --- storage ----------------------------------------------------------------------------


def test_record_measure_stores_one_row(definition):
    result = record_measure(body(value="12.345", startDate="2022-01-05T10:00:00Z"))
    assert (result.inserted, result.duplicates) == (1, 0)
    assert raw_rows() == [(Decimal("12.35"), datetime(2022, 1, 5), "app", {"g1": "a"})]


def test_record_measure_sets_txid_and_ingestion_time(definition):
    record_measure(body())
    txid, last_updated = db.session.execute(sa.select(RawMeasure.txid, RawMeasure.last_updated)).one()
    assert txid > 0 and last_updated is not None


def test_a_stored_measure_id_makes_the_second_record_a_duplicate(definition):
    assert record_measure(body(measureId="k-1")).inserted == 1
    again = record_measure(body(measureId="k-1", value=99))
    assert (again.inserted, again.duplicates) == (0, 1)
    assert [row.value for row in raw_rows()] == [Decimal("1.00")]


def test_measure_id_protects_after_the_raw_row_is_purged(definition):
    record_measure(body(measureId="k-1"))
    db.session.execute(sa.delete(RawMeasure))
    db.session.commit()
    assert record_measure(body(measureId="k-1")).duplicates == 1
    assert count(RawMeasure) == 0


def test_the_same_measure_id_on_two_measures_is_independent(make_definition):
    make_definition("m")
    make_definition("n")
    record_measure(body(measureId="k"))
    assert record_measure(body(measureName="n", measureId="k")).inserted == 1


def test_concurrent_records_with_the_same_measure_id_store_one_row(app, definition):
    """Both transactions insert before either commits: the key's primary key decides."""
    barrier = threading.Barrier(2)
    results = []

    def send():
        with app.app_context():
            measure = parse_measure(body(measureId="same"))
            barrier.wait()
            results.append(store_measures([measure]))
            db.session.remove()

    threads = [threading.Thread(target=send) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted((r.inserted, r.duplicates) for r in results) == [(0, 1), (1, 0)]
    assert count(RawMeasure) == 1 and count(MeasureKey) == 1


def test_bulk_stores_all_and_counts_duplicates(definition):
    record_measure(body(measureId="old"))
    items = [body(value=i, measureId=f"id-{i % 3}") for i in range(6)] + [
        body(measureId="old"),
        body(value=7),
        body(value=8),
    ]
    result = record_measures(items)
    assert (result.inserted, result.duplicates) == (5, 4)
    assert sorted(row.value for row in raw_rows()) == [Decimal(v) for v in (0, 1, 1, 2, 7, 8)]
    assert count(MeasureKey) == 4


def test_bulk_escapes_text_for_copy(make_definition):
    make_definition("m", group1_key="g1")
    tricky = 'back\\slash "quote" é ☃'
    record_measures(
        [body(group1={"g1": tricky}, createdBy="a\\b"), body(group1={"g1": tricky}, measureId="x")]
    )
    assert [row.group1 for row in raw_rows()] == [{"g1": tricky}] * 2
    assert [row.created_by for row in raw_rows()] == ["a\\b", "app"]


def test_bulk_keeps_group_value_types_apart(definition):
    record_measures([body(group1={"g1": v}) for v in (1, 1.5, True, "1")])
    assert [row.group1["g1"] for row in raw_rows()] == [1, 1.5, True, "1"]


def test_bulk_with_a_bad_item_at_the_end_stores_nothing(definition):
    items = [body(value=i) for i in range(9_999)] + [body(value="abc")]
    with pytest.raises(BadRequest) as caught:
        record_measures(items)
    assert caught.value.details == [{"index": 9_999, "error": 'value: expected a finite number, got "abc"'}]
    assert count(RawMeasure) == 0


def test_bulk_lists_at_most_100_errors_and_counts_them_all(definition):
    with pytest.raises(BadRequest, match="^150 invalid measure") as caught:
        validate_measures([body(value=None)] * 150)
    assert len(caught.value.details) == 100
    assert caught.value.details[0]["index"] == 0


def test_bulk_refuses_more_than_10000_items(definition):
    with pytest.raises(BadRequest, match="^body: at most 10000 measures"):
        validate_measures([body()] * 10_001)


def test_bulk_of_nothing_stores_nothing(definition):
    assert record_measures([]) == record_measures([]) and count(RawMeasure) == 0


def test_store_measures_takes_parsed_measures(definition):
    measure = Measure("m", Decimal("1.00"), datetime(2022, 1, 1), "app", {"g1": "a"}, None, None, None)
    assert store_measures([measure, measure]).inserted == 2
    assert count(RawMeasure) == 2


def test_validate_batch_returns_the_valid_measures_and_each_reject(definition):
    items = [body(value=1), body(value="x"), "not an object", body(value=4)]
    measures, rejects = validate_batch(items, org="org")
    assert [m.value for m in measures] == [Decimal(1), Decimal(4)]
    assert [(r.index, r.error) for r in rejects] == [
        (1, 'value: expected a finite number, got "x"'),
        (2, "body: expected a JSON object"),
    ]
    assert count(RawMeasure) == 0


def test_bulk_reports_the_batch_validator_rejects(definition):
    with pytest.raises(BadRequest) as caught:
        validate_measures([body(), body(createdBy="")])
    assert caught.value.details == [{"index": 1, "error": caught.value.details[0]["error"]}]
    assert caught.value.details[0]["error"].startswith("createdBy: expected a string")
