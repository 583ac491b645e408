"""Request bodies at their limits: sizes, chunked encoding, nesting, bulk structure.
Every refusal is a 4xx JSON error saying what is wrong; nothing is written."""

import json

import pytest
import sqlalchemy as sa

from dacc.db import db
from dacc.models import RawMeasure

BODY = {"measureName": "m", "value": 1, "startDate": "2024-01-01", "createdBy": "app", "group1": {"g1": "a"}}


@pytest.fixture
def writer(make_definition, auth_header):
    make_definition("m")
    return auth_header("org")


def _rows():
    return db.session.scalar(sa.select(sa.func.count()).select_from(RawMeasure))


def test_a_value_nested_980_levels_deep_is_400_not_500(client, writer):
    deep = "[" * 980 + "]" * 980
    raw = json.dumps(BODY).replace('"value": 1', f'"value": {deep}')
    response = client.post("/measure", data=raw, headers=writer, content_type="application/json")
    assert response.status_code == 400
    # Which refuses it depends on the stack left to the JSON parser in this process.
    assert response.get_json()["error"] in (
        "value: expected a finite number, got a value nested too deeply",
        "body: not valid JSON (nested too deeply)",
    )
    assert _rows() == 0


def test_an_error_message_quoting_a_value_too_deep_to_dump_says_so():
    from dacc.validation import shown

    value = []
    for _ in range(5000):
        value = [value]
    assert shown(value) == "a value nested too deeply"
    assert shown([1, 2]) == "[1, 2]"


def test_a_body_nested_past_the_parser_limit_is_400(client, writer):
    raw = "[" * 100_000 + "]" * 100_000
    response = client.post("/measures", data=raw, headers=writer, content_type="application/json")
    assert response.status_code == 400
    assert response.get_json()["error"].startswith("body: ")


def test_413_says_the_limit(client, writer):
    body = {**BODY, "padding": "x" * 64 * 1024}
    response = client.post("/measure", json=body, headers=writer)
    assert response.status_code == 413
    assert response.get_json() == {"error": "body: larger than the limit of 65536 bytes (64 KiB)"}
    response = client.get("/aggregate", data="x" * (64 * 1024 + 1), headers=writer)
    assert response.status_code == 413
    assert response.get_json() == {"error": "body: larger than the limit of 65536 bytes (64 KiB)"}


def test_the_10001st_bulk_item_is_refused(client, writer):
    response = client.post(
        "/measures",
        data="[" + ",".join(["{}"] * 10_001) + "]",
        headers=writer,
        content_type="application/json",
    )
    assert response.status_code == 400
    assert response.get_json() == {"error": "body: at most 10000 measures per request, got 10001"}


def test_a_bulk_body_with_far_more_structure_than_10000_measures_is_refused_unparsed(client, writer):
    # One item holding a million objects: parsed, it would cost hundreds of MiB.
    raw = '[{"measureName": "m", "x": [' + ",".join(["{}"] * 1_000_000) + "]}]"
    response = client.post("/measures", data=raw, headers=writer, content_type="application/json")
    assert response.status_code == 400
    assert response.get_json()["error"] == (
        "body: more structure than 10000 measures can hold; at most 10000 per request"
    )
    assert _rows() == 0


@pytest.mark.parametrize(
    "raw, fault",
    [
        ("[" + json.dumps(BODY) + "", "body: not valid JSON"),
        ("[" + json.dumps(BODY) + "] x", "body: not valid JSON (extra data"),
        ("[" + json.dumps(BODY) + ";]", "body: not valid JSON (expected ',' or ']'"),
        (b"[\xff]", "body: not valid JSON (not UTF-8)"),
        ("  " + json.dumps(BODY), "body: expected a JSON array of measures"),
    ],
)
def test_malformed_bulk_bodies_are_400(client, writer, raw, fault):
    response = client.post("/measures", data=raw, headers=writer, content_type="application/json")
    assert response.status_code == 400
    assert response.get_json()["error"].startswith(fault)
    assert _rows() == 0


def test_a_well_formed_bulk_body_parsed_item_by_item_is_stored(client, writer):
    raw = " [ " + " , ".join([json.dumps(BODY)] * 3) + " ] \n"
    response = client.post("/measures", data=raw, headers=writer, content_type="application/json")
    assert response.status_code == 201
    assert response.get_json()["inserted"] == 3
    assert (
        client.post("/measures", data="[]", headers=writer, content_type="application/json").status_code
        == 201
    )
    assert _rows() == 3


@pytest.mark.parametrize("end", ["9999-12-31T12:00", "9999-12-31T23:59:59.999999", "9999-12-31"])
def test_aggregate_up_to_the_last_representable_day_is_not_500(client, make_definition, auth_header, end):
    make_definition("m", access_public=True)
    response = client.get(
        f"/aggregate?measureName=m&startDate=2024-01-01&endDate={end}", headers=auth_header()
    )
    assert response.status_code == 200
    assert response.get_json() == []
