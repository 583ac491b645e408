"""POST /measure and POST /measures over HTTP."""

import json
from datetime import datetime
from decimal import Decimal

import pytest
import sqlalchemy as sa

from dacc.db import db
from dacc.models import MeasureDefinition, RawMeasure

DACC_BODY = {
    "measureName": "konnector-event-daily",
    "value": 1,
    "startDate": "2022-01-01",
    "createdBy": "ecolyo",
    "group1": {"slug": "enedis"},
    "group2": {"event_type": "connection"},
    "group3": {"status": "success"},
}


@pytest.fixture
def konnector(make_definition):
    return make_definition(
        "konnector-event-daily", group1_key="slug", group2_key="event_type", group3_key="status"
    )


@pytest.fixture
def headers(auth_header):
    return auth_header("writer", scopes=["measure:write"])


def stored():
    return db.session.execute(
        sa.select(
            RawMeasure.measure_name,
            RawMeasure.value,
            RawMeasure.start_date,
            RawMeasure.created_by,
            RawMeasure.group1,
            RawMeasure.group2,
            RawMeasure.group3,
        ).order_by(RawMeasure.id)
    ).all()


def test_dacc_body_is_stored_and_answered_201(client, konnector, headers):
    response = client.post("/measure", json=DACC_BODY, headers=headers)
    assert response.status_code == 201
    assert response.get_json() == {"ok": True}
    assert stored() == [
        (
            "konnector-event-daily",
            Decimal("1.00"),
            datetime(2022, 1, 1),
            "ecolyo",
            {"slug": "enedis"},
            {"event_type": "connection"},
            {"status": "success"},
        )
    ]


def test_token_of_another_org_may_write_any_measure(client, konnector, auth_header):
    response = client.post("/measure", json=DACC_BODY, headers=auth_header("someone-else"))
    assert response.status_code == 201


@pytest.mark.parametrize("path", ["/measure", "/measures"])
def test_without_token_is_401(client, konnector, path):
    response = client.post(path, json=DACC_BODY)
    assert response.status_code == 401
    assert "Authorization" in response.get_json()["error"]
    assert stored() == []


@pytest.mark.parametrize("path", ["/measure", "/measures"])
def test_token_without_measure_write_is_403(client, konnector, auth_header, path):
    response = client.post(path, json=DACC_BODY, headers=auth_header(scopes=["aggregate:read"]))
    assert response.status_code == 403
    assert response.get_json() == {"error": "this token lacks the 'measure:write' scope"}


@pytest.mark.parametrize(
    "change, message",
    [
        ({"measureName": "unknown"}, "measureName: no measure definition named 'unknown'"),
        ({"value": None}, "value: expected a finite number, got null"),
        ({"value": True}, "value: expected a finite number, got true"),
        ({"value": "abc"}, 'value: expected a finite number, got "abc"'),
        ({"value": 1e15}, "value: magnitude must stay below 10^14"),
        ({"startDate": "2022-13-01"}, 'startDate: not a valid date or time: "2022-13-01"'),
        ({"startDate": "2999-01-01"}, "startDate: more than 24 hours in the future"),
        ({"createdBy": "x" * 101}, "createdBy: expected a string of 1 to 100 printable characters"),
        ({"group1": {"slug": {"a": 1}}}, "group1: the value of 'slug' must be"),
        ({"group2": {"type": "connection"}}, "group2: expected an object with the one key 'event_type'"),
        ({"group3": None}, "group3: expected an object with the one key 'status', got null"),
        ({"measureId": "has space"}, "measureId: expected 1 to 64 characters"),
    ],
)
def test_invalid_field_is_400_naming_it_and_stores_nothing(client, konnector, headers, change, message):
    response = client.post("/measure", json={**DACC_BODY, **change}, headers=headers)
    assert response.status_code == 400
    assert response.get_json()["error"].startswith(message)
    assert stored() == []


def test_nan_in_the_json_text_is_400(client, konnector, headers):
    data = json.dumps(DACC_BODY).replace('"value": 1', '"value": NaN')
    response = client.post("/measure", data=data, headers=headers, content_type="application/json")
    assert response.status_code == 400
    assert response.get_json() == {"error": "value: expected a finite number, got NaN"}


def test_created_by_must_match_the_definition(client, make_definition, headers):
    make_definition(
        "konnector-event-daily",
        created_by="ecolyo",
        group1_key="slug",
        group2_key="event_type",
        group3_key="status",
    )
    response = client.post("/measure", json={**DACC_BODY, "createdBy": "other"}, headers=headers)
    assert response.status_code == 400
    assert response.get_json() == {
        "error": "createdBy: measure 'konnector-event-daily' only accepts 'ecolyo'"
    }


def test_start_date_is_stored_at_the_start_of_the_week(client, make_definition, headers):
    make_definition("weekly", group1_key=None, aggregation_period="week")
    body = {"measureName": "weekly", "value": 2, "startDate": "2022-01-06T10:00:00+02:00", "createdBy": "a"}
    assert client.post("/measure", json=body, headers=headers).status_code == 201
    assert stored()[0].start_date == datetime(2022, 1, 3)


def test_non_json_body_is_400(client, konnector, headers):
    response = client.post("/measure", data="{not json", headers=headers, content_type="application/json")
    assert response.status_code == 400
    assert response.get_json()["error"].startswith("body: not valid JSON")


def test_json_that_is_not_an_object_is_400(client, konnector, headers):
    response = client.post("/measure", json=[DACC_BODY], headers=headers)
    assert response.status_code == 400
    assert response.get_json() == {"error": "body: expected a JSON object"}


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_body_not_declared_json_is_415(client, konnector, headers, content_type):
    kwargs = {"content_type": content_type} if content_type else {}
    response = client.post("/measure", data=json.dumps(DACC_BODY), headers=headers, **kwargs)
    assert response.status_code == 415
    assert response.get_json() == {"error": "Content-Type: expected application/json"}
    assert stored() == []


def test_body_over_64_kib_is_413(client, konnector, headers):
    body = {**DACC_BODY, "padding": "x" * 64 * 1024}
    response = client.post("/measure", json=body, headers=headers)
    assert response.status_code == 413
    assert "error" in response.get_json()
    assert stored() == []


def test_invalid_utf8_is_400(client, konnector, headers):
    response = client.post(
        "/measure", data=b'{"value": "\xff"}', headers=headers, content_type="application/json"
    )
    assert response.status_code == 400


def test_lone_surrogate_in_a_group_is_400(client, konnector, headers):
    data = json.dumps(DACC_BODY).replace('"enedis"', '"\\ud800"')
    response = client.post("/measure", data=data, headers=headers, content_type="application/json")
    assert response.status_code == 400
    assert response.get_json()["error"].startswith("group1: ")


def test_unknown_top_level_fields_are_ignored(client, konnector, headers):
    response = client.post("/measure", json={**DACC_BODY, "source": "app v2"}, headers=headers)
    assert response.status_code == 201


def test_second_post_with_the_same_measure_id_is_200_duplicate(client, konnector, headers):
    body = {**DACC_BODY, "measureId": "2022-01-01:enedis:42"}
    first = client.post("/measure", json=body, headers=headers)
    second = client.post("/measure", json={**body, "value": 5}, headers=headers)
    assert (first.status_code, first.get_json()) == (201, {"ok": True})
    assert (second.status_code, second.get_json()) == (200, {"ok": True, "duplicate": True})
    assert [row.value for row in stored()] == [Decimal("1.00")]


def test_just_inserted_definition_is_usable_at_once(client, konnector, headers):
    assert (
        client.post("/measure", json={**DACC_BODY, "measureName": "new"}, headers=headers).status_code == 400
    )
    db.session.add(
        MeasureDefinition(
            name="new", org="o", group1_key="slug", group2_key="event_type", group3_key="status"
        )
    )
    db.session.commit()
    assert (
        client.post("/measure", json={**DACC_BODY, "measureName": "new"}, headers=headers).status_code == 201
    )


def test_measure_takes_one_insert_statement(app, client, konnector, headers):
    """The hot path: cached token and definition, then a single INSERT."""
    client.post("/measure", json=DACC_BODY, headers=headers)  # warms both caches
    statements = []

    def record(conn, cursor, statement, *args):
        statements.append(statement.split()[0].upper())

    sa.event.listen(db.engine, "before_cursor_execute", record)
    try:
        for extra in ({}, {"measureId": "k1"}):
            response = client.post("/measure", json={**DACC_BODY, **extra}, headers=headers)
            assert response.status_code == 201
    finally:
        sa.event.remove(db.engine, "before_cursor_execute", record)
    assert statements == ["INSERT", "WITH"]


# --- bulk --------------------------------------------------------------------------------


def test_bulk_stores_every_item_and_answers_counts(client, konnector, headers):
    items = [{**DACC_BODY, "value": i} for i in range(5)]
    response = client.post("/measures", json=items, headers=headers)
    assert response.status_code == 201
    assert response.get_json() == {"ok": True, "inserted": 5, "duplicates": 0}
    assert sorted(row.value for row in stored()) == [Decimal(i) for i in range(5)]


def test_bulk_skips_measure_ids_repeated_or_already_stored(client, konnector, headers):
    client.post("/measure", json={**DACC_BODY, "measureId": "a"}, headers=headers)
    items = [{**DACC_BODY, "measureId": key} for key in ("a", "b", "b", "c")] + [DACC_BODY]
    response = client.post("/measures", json=items, headers=headers)
    assert response.get_json() == {"ok": True, "inserted": 3, "duplicates": 2}
    assert len(stored()) == 4
    again = client.post("/measures", json=items, headers=headers)
    assert again.get_json() == {"ok": True, "inserted": 1, "duplicates": 4}


def test_bulk_with_one_bad_item_at_index_9999_stores_nothing(client, konnector, headers):
    items = [{**DACC_BODY, "value": i} for i in range(9_999)] + [{**DACC_BODY, "group1": {"x": 1}}]
    response = client.post("/measures", json=items, headers=headers)
    assert response.status_code == 400
    body = response.get_json()
    assert body["errors"] == [
        {"index": 9_999, "error": "group1: expected an object with the one key 'slug', got {\"x\": 1}"}
    ]
    assert body["error"].startswith("1 invalid measure(s), nothing stored; first at index 9999: group1:")
    assert stored() == []


def test_bulk_lists_at_most_100_errors(client, konnector, headers):
    items = [{**DACC_BODY, "value": None}] * 120 + [DACC_BODY]
    response = client.post("/measures", json=items, headers=headers)
    assert response.status_code == 400
    body = response.get_json()
    assert len(body["errors"]) == 100 and body["errors"][-1]["index"] == 99
    assert body["error"].startswith("120 invalid measure(s)")


@pytest.mark.parametrize(
    "payload, message",
    [
        (DACC_BODY, "body: expected a JSON array of measures"),
        ([DACC_BODY] * 10_001, "body: at most 10000 measures per request, got 10001"),
    ],
)
def test_bulk_body_must_be_an_array_of_at_most_10000(client, konnector, headers, payload, message):
    response = client.post("/measures", json=payload, headers=headers)
    assert response.status_code == 400
    assert response.get_json() == {"error": message}


def test_bulk_body_not_declared_json_is_415(client, konnector, headers):
    response = client.post("/measures", data="[]", headers=headers, content_type="text/plain")
    assert response.status_code == 415
