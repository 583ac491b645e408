"""GET|POST /aggregate over HTTP: access rules, parameters, bad input."""

import json
from datetime import datetime, timedelta

import pytest

from dacc.tokens import revoke_token
from tests.restitution_helpers import define, put_aggregates

QUERY = {"measureName": "m", "startDate": "2024-03-01", "endDate": "2024-04-01"}
ROW = {
    "measureName": "m",
    "startDate": "2024-03-01T00:00:00",
    "createdBy": "app",
    "group1": {"a": "x"},
    "count": 5,
    "countNotZero": 5,
    "sum": 10,
    "min": 2,
    "max": 2,
    "avg": 2,
    "std": 0,
}


@pytest.fixture
def measure(make_definition):
    """Measure m of org "owner", threshold 5, one published cell on DAY."""

    def make(**access):
        define(make_definition, groups=1, k=5, org="owner", **access)
        put_aggregates("m", {("x",): 5, ("y",): 4})

    return make


def _bearer(make_token, org, scopes):
    token, secret = make_token(org, scopes=scopes)
    return token, {"Authorization": f"Bearer {secret}"}


@pytest.mark.parametrize(
    "org, scopes, access, status",
    [
        ("owner", ["aggregate:read"], {}, 200),
        ("other", ["aggregate:read"], {}, 403),
        ("other", ["aggregate:read"], {"access_public": True}, 200),
        ("other", ["aggregate:read", "measure:write"], {"access_app": True}, 200),
        ("other", ["aggregate:read"], {"access_app": True}, 403),
        ("owner", ["measure:write"], {"access_public": True}, 403),
    ],
    ids=["owner", "other-org", "public", "app-with-write", "app-without-write", "no-read-scope"],
)
def test_access_matrix(client, make_token, measure, org, scopes, access, status):
    measure(**access)
    _, headers = _bearer(make_token, org, scopes)
    response = client.post("/aggregate", json=QUERY, headers=headers)
    assert response.status_code == status
    if status == 200:
        assert response.get_json() == [ROW]
    elif "aggregate:read" in scopes:
        assert response.get_json() == {"error": "You cannot access results for this measure: m"}
    else:
        assert response.get_json() == {"error": "this token lacks the 'aggregate:read' scope"}


def test_a_revoked_token_is_401(client, make_token, measure):
    measure()
    token, headers = _bearer(make_token, "owner", ["aggregate:read"])
    assert client.post("/aggregate", json=QUERY, headers=headers).status_code == 200
    revoke_token(token.id)
    response = client.post("/aggregate", json=QUERY, headers=headers)
    assert (response.status_code, response.get_json()) == (401, {"error": "this token was revoked"})


def test_no_token_is_401(client, measure):
    measure()
    response = client.post("/aggregate", json=QUERY)
    assert response.status_code == 401
    assert "missing Authorization" in response.get_json()["error"]


@pytest.fixture
def owner(make_token, measure):
    measure()
    return _bearer(make_token, "owner", ["aggregate:read"])[1]


def test_get_reads_the_query_string(client, owner):
    response = client.get("/aggregate", query_string=QUERY, headers=owner)
    assert (response.status_code, response.get_json()) == (200, [ROW])
    assert response.mimetype == "application/json"


def test_get_reads_a_json_body_as_dacc_clients_send_it(client, owner):
    response = client.get("/aggregate", json=QUERY, headers=owner)
    assert (response.status_code, response.get_json()) == (200, [ROW])


def test_get_body_fields_win_over_the_query_string(client, owner):
    response = client.get(
        "/aggregate", query_string={**QUERY, "measureName": "other"}, json=QUERY, headers=owner
    )
    assert (response.status_code, response.get_json()) == (200, [ROW])


def test_a_body_without_json_content_type_is_still_read(client, owner):
    response = client.post("/aggregate", data=json.dumps(QUERY), headers=owner)
    assert (response.status_code, response.get_json()) == (200, [ROW])


def test_the_cozy_client_default_call_reads_everything_up_to_now(client, make_definition, auth_header):
    # cozy-client's defaults: from the epoch to the current instant, in a POST body.
    define(make_definition, groups=1, k=1)
    days = [datetime(2021, 1, 1) + timedelta(days=d) for d in (0, 400, 800, 1200)]
    for day in days:
        put_aggregates("m", {("x",): 1}, day=day)
    body = {
        "measureName": "m",
        "startDate": "1970-01-01T00:00:00.000Z",
        "endDate": "2026-11-22T18:55:27.123Z",
    }
    response = client.post("/aggregate", json=body, headers=auth_header("org", scopes=["aggregate:read"]))
    assert response.status_code == 200
    assert [r["startDate"] for r in response.get_json()] == [d.isoformat() for d in days]


def test_an_empty_range_is_an_empty_list(client, owner):
    response = client.post(
        "/aggregate", json={**QUERY, "startDate": "2020-01-01", "endDate": "2020-02-01"}, headers=owner
    )
    assert (response.status_code, response.get_json()) == (200, [])


@pytest.mark.parametrize(
    "data, error",
    [
        ('{"measureName": "m", ', "body: not valid JSON"),
        ("[1, 2]", "body: expected a JSON object"),
        ('"m"', "body: expected a JSON object"),
        ('{"startDate": "2024-03-01", "endDate": "2024-04-01"}', "measureName: required"),
        (
            '{"measureName": 7, "startDate": "2024-03-01", "endDate": "2024-04-01"}',
            "measureName: expected a string",
        ),
        (
            '{"measureName": {"a": 1}, "startDate": "2024-03-01", "endDate": "2024-04-01"}',
            "measureName: expected a string",
        ),
        ('{"measureName": "m", "endDate": "2024-04-01"}', "startDate: required"),
        ('{"measureName": "m", "startDate": "2024-03-01"}', "endDate: required"),
        (
            '{"measureName": "m", "startDate": "03/01/2024", "endDate": "2024-04-01"}',
            "startDate: expected an ISO 8601",
        ),
        ('{"measureName": "m", "startDate": "2024-03-01", "endDate": null}', "endDate: required"),
        (
            '{"measureName": "m", "startDate": "2024-03-01", "endDate": 1709251200}',
            "endDate: expected an ISO 8601",
        ),
        (
            '{"measureName": "m", "startDate": "2024-04-01", "endDate": "2024-04-01"}',
            "endDate: must be after startDate",
        ),
        (
            '{"measureName": "m", "startDate": "2024-04-02", "endDate": "2024-04-01"}',
            "endDate: must be after startDate",
        ),
        (
            '{"measureName": "m", "startDate": "2024-03-01", "endDate": "2024-04-01", "createdBy": 1}',
            "createdBy: expected a string",
        ),
        (
            '{"measureName": "nope", "startDate": "2024-03-01", "endDate": "2024-04-01"}',
            "No measure definition found for: nope",
        ),
        (
            '{"measureName": "m\\u0000", "startDate": "2024-03-01", "endDate": "2024-04-01"}',
            "measureName: must not hold NUL",
        ),
    ],
)
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_bad_input_is_400_json_naming_the_fault(client, owner, method, data, error):
    response = client.open(
        "/aggregate", method=method, data=data, headers={**owner, "Content-Type": "application/json"}
    )
    assert response.status_code == 400
    body = response.get_json()
    assert set(body) == {"error"} and body["error"].startswith(error)


@pytest.mark.parametrize(
    "query_string, error",
    [
        ({"startDate": "2024-03-01", "endDate": "2024-04-01"}, "measureName: required"),
        ({**QUERY, "startDate": "soon"}, 'startDate: expected an ISO 8601 date or date-time, got "soon"'),
        ({**QUERY, "endDate": "2024-02-01"}, "endDate: must be after startDate"),
    ],
)
def test_bad_query_string_is_400(client, owner, query_string, error):
    response = client.get("/aggregate", query_string=query_string, headers=owner)
    assert response.status_code == 400
    assert response.get_json()["error"].startswith(error)


def test_other_methods_are_405_json(client, owner):
    response = client.put("/aggregate", json=QUERY, headers=owner)
    assert response.status_code == 405
    assert set(response.get_json()) == {"error"}
