"""Hostile text through every input: each payload, sent through each path, is either
refused (4xx JSON, or a one-line CLI error) with no row changed anywhere, or stored
exactly as sent with nothing else changed.

Payloads: SQL and jsonpath metacharacters, the "*" wildcard marker, LIKE wildcards,
COPY escapes, unicode look-alikes and normalisation pairs, NUL, lone surrogates,
control characters, strings past each limit. One test per payload walks every path.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest
import sqlalchemy as sa

from dacc.db import db
from dacc.models import ApiToken, MeasureDefinition, RawMeasure
from dacc.models.messages import PAYLOAD_LIMIT
from tests.conftest import CONTRIBUTOR_SECRET
from tests.restitution_helpers import put_aggregates

PAYLOADS = {
    "sql quote": "'; DROP TABLE raw_measure; --",
    "sql or": "' OR '1'='1",
    "sql double quote": '" OR 1=1 --',
    "dollar quote": "$$; SELECT pg_sleep(5); $$",
    "backslash": "\\",
    "copy null": "\\N",
    "copy tab escape": "a\\tb",
    "percent": "%",
    "underscore": "_",
    "like pattern": "a%b_c",
    "jsonpath": '$.* ? (@ == "*")',
    "jsonpath break-out": '" || @ == "*" || "',
    "jsonpath exists": "@? '$'",
    "star": "*",
    "double star": "**",
    "fullwidth star": "\uff0a",
    "asterisk operator": "\u2217",
    "star and zero-width space": "*\u200b",
    "e + combining acute": "e\u0301",
    "e acute": "\u00e9",
    "angstrom sign": "\u212b",
    "ligature fi": "\ufb01",
    "json text": '{"a": "*"}',
    "NUL": "\x00",
    "NUL inside": "a\x00b",
    "lone surrogate": "\ud800",
    "newline": "a\nb",
    "terminal escape": "\x1b[31mred",
    "line separator": "a\u2028b",
    "100 characters": "x" * 100,
    "101 characters": "x" * 101,
    "10,000 characters": "x" * 10_000,
}
each_payload = pytest.mark.parametrize("payload", list(PAYLOADS.values()), ids=list(PAYLOADS))
MEASURE = {
    "measureName": "m",
    "value": 1,
    "startDate": "2024-03-01",
    "createdBy": "app",
    "group1": {"a": "x"},
}
MEASURE_FIELDS = {
    "createdBy": lambda p: {**MEASURE, "createdBy": p},
    "group value": lambda p: {**MEASURE, "group1": {"a": p}},
    "group key": lambda p: {**MEASURE, "group1": {p: "x"}},
    "measureName": lambda p: {**MEASURE, "measureName": p},
    "measureId": lambda p: {**MEASURE, "measureId": p},
    "value": lambda p: {**MEASURE, "value": p},
    "startDate": lambda p: {**MEASURE, "startDate": p},
    "JSON key": lambda p: {**MEASURE, p: "ignored"},
    "contributor": lambda p: {**MEASURE, "contributor": p},
}
WRITES = {"raw_measure", "measure_key"}
"""What an accepted measure may change."""


@pytest.fixture
def world(make_definition, make_token):
    """Measure m (group key a, any writer) with a published cell, a bystander measure
    with a raw row, tokens of three orgs; returns {path: headers} of two writer orgs (a
    measureId is unique per org: each path writes as its own)."""
    make_definition("m", group1_key="a", writers=["*"])
    make_definition("bystander", org="else", group1_key="a", writers=["else"])
    db.session.add(RawMeasure(measure_name="bystander", value=3, start_date=datetime(2024, 3, 1),
                              created_by="app", group1={"a": "y"}))  # fmt: skip
    db.session.commit()
    put_aggregates("m", {("x",): 5})
    make_token("else")
    headers = {}
    for path, org in (("/measure", "org"), ("/measures", "org2")):
        _, secret = make_token(org)
        headers[path] = {"Authorization": f"Bearer {secret}"}
    return headers


def snapshot() -> dict[str, str]:
    """A digest of every row of every table, in one statement (names from the models);
    a token's last_used_at is left out (every request moves it)."""
    row = "(to_jsonb(x) - 'last_used_at')::text"
    parts = [
        f"SELECT '{t.name}' AS name, md5(coalesce(string_agg({row}, '|' ORDER BY {row}), '')) AS digest"
        f' FROM "{t.name}" x'
        for t in db.metadata.sorted_tables
    ]
    rows = db.session.execute(sa.text(" UNION ALL ".join(parts))).all()
    db.session.commit()
    return dict(rows)


def changed(before: dict, after: dict) -> set[str]:
    return {name for name in before if before[name] != after[name]}


def assert_refused_json(response, where):
    assert 400 <= response.status_code < 500, (where, response.get_data(as_text=True)[:300])
    assert response.is_json and isinstance(response.get_json()["error"], str), where


def raw_rows():
    rows = db.session.execute(
        sa.select(RawMeasure.created_by, RawMeasure.group1, RawMeasure.contributor)
        .where(RawMeasure.measure_name == "m")
        .order_by(RawMeasure.id)
    ).all()
    db.session.commit()
    return rows


def measure_ids(org):
    ids = db.session.scalars(
        sa.text("SELECT measure_id FROM measure_key WHERE org = :org"), {"org": org}
    ).all()
    db.session.commit()
    return ids


def assert_stored_as_sent(field, payload, org, new_row, where):
    """The new raw row holds the payload exactly where it was sent."""
    created_by, group1, contributor = new_row
    if field == "createdBy":
        assert created_by == payload, where
    elif field == "group value":
        assert group1 == {"a": payload}, where
    elif field == "contributor":
        message = f"{org}\0{payload}".encode()
        assert contributor == hmac.digest(CONTRIBUTOR_SECRET.encode(), message, hashlib.sha256), where
    elif field == "measureId":
        assert payload in measure_ids(org), where


# --- HTTP ingestion: one measure, and bulk (loaded with COPY) --------------------------------


@each_payload
def test_each_payload_in_each_measure_field_is_refused_or_stored_exactly(client, world, payload):
    # Fields outer: the contributor comes last, once no later refusal can log the same
    # text as a measure name (the suite's log watch would take it for a leak).
    for field, make in MEASURE_FIELDS.items():
        for path, org in (("/measure", "org"), ("/measures", "org2")):
            where = f"{path} {field}"
            body = make(payload)
            before, rows_before = snapshot(), raw_rows()
            response = client.post(
                path, json=body if path == "/measure" else [MEASURE, body], headers=world[path]
            )
            after, rows_after = snapshot(), raw_rows()
            if response.status_code >= 400:
                assert_refused_json(response, where)
                assert changed(before, after) == set(), where
                continue
            assert response.status_code == 201, (where, response.get_json())
            assert changed(before, after) <= WRITES, where
            added = 1 if path == "/measure" else 2
            assert len(rows_after) == len(rows_before) + added, where
            assert_stored_as_sent(field, payload, org, rows_after[-1], where)


def test_the_wildcard_marker_is_refused_in_a_group_and_its_look_alikes_are_plain_values(client, world):
    for path in ("/measure", "/measures"):
        body = {**MEASURE, "group1": {"a": "*"}}
        response = client.post(path, json=body if path == "/measure" else [body], headers=world[path])
        assert response.status_code == 400 and "reserved for wildcard" in response.get_data(as_text=True)
    looks = ["\uff0a", "\u2217", " *", "**"]
    response = client.post(
        "/measures", json=[{**MEASURE, "group1": {"a": v}} for v in looks], headers=world["/measures"]
    )
    assert response.status_code == 201
    assert [g["a"] for _, g, _ in raw_rows()] == looks
    from dacc.publication.sql import STAR_TEST

    # None of them is taken for a wildcard group by the publication's jsonpath test.
    starred = db.session.scalar(sa.text("SELECT count(*) FROM raw_measure WHERE group1 " + STAR_TEST))
    assert starred == 0


# --- HTTP reads: /aggregate parameters, in the query string and in the body --------------


@each_payload
def test_each_payload_in_each_aggregate_parameter_is_refused_or_matches_exactly(client, world, payload):
    before = snapshot()
    for where in ("query", "body"):
        if where == "query" and "\ud800" in payload:
            continue  # a lone surrogate cannot be put in a URL
        for field in ("measureName", "createdBy", "startDate", "endDate", "JSON key"):
            params = {"measureName": "m", "startDate": "2024-01-01", "endDate": "2025-01-01"}
            params[payload if field == "JSON key" else field] = payload if field != "JSON key" else "x"
            if where == "query":
                response = client.get("/aggregate", query_string=params, headers=world["/measure"])
            else:
                response = client.post("/aggregate", json=params, headers=world["/measure"])
            if response.status_code >= 400:
                assert_refused_json(response, (where, field))
                continue
            assert response.status_code == 200, (where, field)
            rows = response.get_json()
            if field == "createdBy":
                assert rows == [], (where, field)  # exact: "%" or "_" match no other name
            else:
                assert field == "JSON key" and [r["group1"] for r in rows] == [{"a": "x"}], (where, field)
    assert changed(before, snapshot()) == set()


# --- MQTT: the worker's own validation and write --------------------------------------------


def _mqtt_write(topic: str, payload: bytes, org: str = "org"):
    from dacc.mqtt.messages import Message, prepare_message
    from dacc.mqtt.worker import Counters, Worker

    message = Message(topic=topic, payload=payload, mid=1, qos=1, org=org,
                      received_at=datetime.now(UTC), connection=1)  # fmt: skip
    prepare_message(message)
    # The worker's write (rejects set aside, measures stored), without a broker.
    Worker._write(SimpleNamespace(counters=Counters()), [message], None)
    return message


@each_payload
def test_each_payload_through_mqtt_is_set_aside_or_stored_exactly(app, world, payload):
    for field in ("createdBy", "group value", "group key", "measureId", "JSON key", "contributor"):
        body = json.dumps(MEASURE_FIELDS[field](payload)).encode()
        before, rows_before = snapshot(), raw_rows()
        message = _mqtt_write("dacc/org/measures", body)
        after, rows_after = snapshot(), raw_rows()
        if message.error is not None:
            assert changed(before, after) == {"rejected_message"}, field
            stored = db.session.execute(
                sa.text("SELECT topic, error, payload FROM rejected_message ORDER BY id DESC LIMIT 1")
            ).one()
            db.session.commit()
            kept = body[:PAYLOAD_LIMIT]
            assert (stored.topic, stored.error, bytes(stored.payload)) == (
                "dacc/org/measures",
                message.error,
                kept,
            )
            continue
        assert changed(before, after) <= WRITES, field
        assert len(rows_after) == len(rows_before) + 1, field
        assert_stored_as_sent(field, payload, "org", rows_after[-1], field)


@pytest.mark.parametrize("payload", ["%", "_", "a%b_c", "\\", "'; --", "\uff0a", "x" * 300], ids=repr)
def test_a_rejected_topic_round_trips_and_its_listing_matches_exactly(app, world, payload):
    from dacc.mqtt.messages import list_rejected_messages

    for topic in ("dacc/other/x", f"dacc/{payload}/x", "dacc/abc/x", "dacc/a/x"):
        _mqtt_write(topic, b"not json")
    assert [m.topic for m in list_rejected_messages(topic=f"dacc/{payload}/x")] == [f"dacc/{payload}/x"]
    assert [m.topic for m in list_rejected_messages(topic=f"dacc/{payload}/#")] == [f"dacc/{payload}/x"]


# --- CLI: token commands and definition files ----------------------------------------------


def assert_one_line_error(result, where):
    """Exit 1 (2 for a usage error), an `Error: ` line, no traceback. (A newline in the
    payload may be echoed in the message: the CLI's escaping is tested elsewhere.)"""
    assert result.exit_code in (1, 2), (where, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), (where, repr(result.exception))
    assert result.output.startswith("Error: ") and "Traceback" not in result.output, (where, result.output)


def tokens():
    rows = db.session.execute(
        sa.select(ApiToken.org, ApiToken.label, ApiToken.app).order_by(ApiToken.id)
    ).all()
    db.session.commit()
    return rows


@each_payload
def test_token_create_stores_each_payload_exactly_or_refuses_it(runner, world, payload):
    for option in ("ORG", "--label", "--app"):
        args = (
            ["token", "create", payload] if option == "ORG" else ["token", "create", "acme", option, payload]
        )
        before, tokens_before = snapshot(), tokens()
        result = runner.invoke(args=args)
        after = snapshot()
        if result.exit_code != 0:
            assert_one_line_error(result, option)
            assert changed(before, after) == set(), option
            continue
        assert changed(before, after) == {"api_token"}, option
        expected = {
            "ORG": (payload, None, None),
            "--label": ("acme", payload, None),
            "--app": ("acme", None, payload),
        }
        assert tokens()[len(tokens_before) :] == [expected[option]], option


@pytest.mark.parametrize("payload", ["%", "_", "org%", "o_g", "*", "'; --", "\x00"], ids=repr)
def test_token_commands_match_an_org_exactly(runner, world, payload):
    before = snapshot()
    for args in (["get", payload], ["delete-org", payload, "--yes"], ["update", payload]):
        result = runner.invoke(args=["token", *args])
        assert_one_line_error(result, args[0])
        faults = ("no token for org", "no active token", "must not hold NUL")
        assert any(fault in result.output for fault in faults), result.output
    assert changed(before, snapshot()) == set()


DEFINITION_FIELDS = {
    "name": "name",
    "org": "org",
    "createdBy": "created_by",
    "group1Key": "group1_key",
    "description": "description",
    "writers": "writers",
}


def definitions():
    rows = db.session.execute(
        sa.text("SELECT name, md5(d::text) FROM measure_definition d ORDER BY name")
    ).all()
    db.session.commit()
    return dict(rows)


@each_payload
def test_a_definition_file_stores_each_payload_exactly_or_refuses_it(runner, world, tmp_path, payload):
    for field, column in DEFINITION_FIELDS.items():
        definition = {"name": f"fresh-{field}", "org": "org", "group1Key": "a"}
        definition[field] = [payload] if field == "writers" else payload
        path = tmp_path / "definitions.json"
        path.write_text(json.dumps({"definitions": [definition]}), encoding="ascii")
        before, known = snapshot(), definitions()
        result = runner.invoke(args=["insert-definitions-json", "-f", str(path)])
        after = snapshot()
        if result.exit_code != 0:
            assert result.exit_code == 1 and isinstance(result.exception, SystemExit), (field, result.output)
            assert "Traceback" not in result.output, field
            assert changed(before, after) == set(), field
            continue
        assert not changed(before, after) & {"raw_measure", "aggregate", "published_cell", "api_token"}, field
        now = definitions()
        assert {n: d for n, d in now.items() if n != definition["name"]} == known, field
        row = db.session.scalar(
            sa.select(MeasureDefinition).where(MeasureDefinition.name == definition["name"])
        )
        assert getattr(row, column) == definition[field], field


NAME_COMMANDS = (
    ("compute-aggregation", "{}", "--force"),
    ("compute-wildcard-aggregate", "{}", "group1"),
    ("delete-aggregations-from-date", "{}", "2024-01-01", "--yes"),
    ("purge", "measure", "{}"),
    ("definitions", "remove", "{}", "--yes"),
    ("privacy", "check", "{}"),
    ("ingest", "rejected", "--topic", "{}"),
    ("ingest", "rejected", "--topic", "{}/#"),
)


@each_payload
def test_every_cli_command_naming_a_measure_or_topic_matches_it_exactly(runner, world, payload):
    """No measure or topic of that name: a one-line error (or an empty listing), and no
    row changed; "%" or "_" never reach another measure."""
    before = snapshot()
    for command in NAME_COMMANDS:
        args = [arg.replace("{}", payload) for arg in command]
        result = runner.invoke(args=args)
        if command[0] == "ingest" and result.exit_code == 0:
            assert "0 rejected message(s)" in result.output, (command, result.output)
        else:
            assert_one_line_error(result, command)
    assert changed(before, snapshot()) == set()


@each_payload
def test_each_payload_in_the_other_get_routes_is_404_or_ignored(client, world, payload):
    """The one path parameter (/api/doc/<filename>) is a name from a fixed list; query
    parameters of the other GET routes are ignored."""
    from urllib.parse import quote

    quoted = quote(payload.encode("utf-8", "surrogatepass"), safe="")
    for name in (quoted, f"..%2F{quoted}", f"{quoted}%00.js"):
        response = client.get(f"/api/doc/{name}")
        assert response.status_code == 404 and response.is_json and "error" in response.get_json(), name
    for path in ("/status", "/openapi.json", "/whoami"):
        response = client.get(f"{path}?{quoted}={quoted}&x={quoted}", headers=world["/measure"])
        assert response.status_code == 200, path
