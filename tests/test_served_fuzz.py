"""Fuzzing the README's served process over HTTP (tests/api/test_fuzz.py and the
schemathesis test of tests/api/test_openapi.py do it through WSGI): the server's own
reading of requests (dacc.serving.Worker) is in the path. Every answer is 2xx, or 4xx
with a JSON `error`; never 5xx; a refused measure writes no row."""

from __future__ import annotations

import http.client
import json

import psycopg2
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.specs.openapi.checks import positive_data_acceptance

from dacc.api.docs import openapi_document
from tests.api.test_fuzz import bodies, content_types, json_values

SETTINGS = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
schema = schemathesis.openapi.from_dict(openapi_document())


@pytest.fixture(scope="module")
def rows(served):
    """rows() -> raw measures in the served database."""
    conn = psycopg2.connect(served.database_url.replace("+psycopg2", "", 1))
    conn.autocommit = True

    def count() -> int:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM raw_measure")
            return cur.fetchone()[0]

    yield count
    conn.close()


def _send(served, method: str, path: str, body, headers: dict, *, chunked=False) -> tuple[int, bytes, str]:
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=15)
    try:
        conn.request(method, path, body=body, headers=headers, encode_chunked=chunked)
        response = conn.getresponse()
        return response.status, response.read(), response.getheader("Content-Type", "")
    finally:
        conn.close()


def _check(status: int, data: bytes, content_type: str) -> None:
    assert status < 500, (status, data[:300])
    if status >= 400:
        assert content_type.startswith("application/json"), (status, content_type, data[:300])
        body = json.loads(data)
        assert isinstance(body, dict) and isinstance(body.get("error"), str), (status, data[:300])


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_generated_requests_to_the_served_app_get_documented_answers(case, served, rows):
    before = rows()
    response = case.call_and_validate(
        base_url=f"http://127.0.0.1:{served.port}",
        headers={"Authorization": f"Bearer {served.secret}"},
        # A measure's validity depends on the stored definitions (see test_openapi.py).
        excluded_checks=[positive_data_acceptance],
        timeout=15,
    )
    _check(response.status_code, response.content, response.headers.get("content-type", [""])[0])
    if response.status_code >= 400:
        assert rows() == before


@SETTINGS
@given(
    path=st.sampled_from(["/measure", "/measures", "/aggregate"]),
    body=bodies,
    content_type=content_types,
    chunked=st.booleans(),
)
def test_arbitrary_bodies_to_the_served_app_never_get_5xx(served, rows, path, body, content_type, chunked):
    headers = {"Authorization": f"Bearer {served.secret}"}
    if content_type is not None:
        headers["Content-Type"] = content_type
    if chunked:
        # Sent in chunks of 37 bytes: the worker reads them whole before the app runs.
        headers["Transfer-Encoding"] = "chunked"
        payload = iter([body[i : i + 37] for i in range(0, len(body), 37)] or [b""])
    else:
        payload = body
    before = rows()
    status, data, answered_type = _send(served, "POST", path, payload, headers, chunked=chunked)
    _check(status, data, answered_type)
    if status >= 400:
        assert rows() == before


@SETTINGS
@given(
    query=st.dictionaries(
        st.sampled_from(["measureName", "startDate", "endDate", "createdBy", "x"]),
        st.text(max_size=30) | json_values.map(str),
        max_size=5,
    ),
    token=st.sampled_from(["good", "none", "garbage"]),
)
def test_arbitrary_aggregate_queries_to_the_served_app_never_get_5xx(served, query, token):
    from urllib.parse import urlencode

    headers = {
        "good": {"Authorization": f"Bearer {served.secret}"},
        "none": {},
        "garbage": {"Authorization": "Bearer x" * 3},
    }[token]
    status, data, content_type = _send(served, "GET", "/aggregate?" + urlencode(query), None, headers)
    _check(status, data, content_type)
    if token != "good":
        assert status == 401
