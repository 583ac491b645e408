"""Property-based fuzzing of POST /measure, POST /measures and /aggregate: every answer
is 2xx, or 4xx with a JSON `error`; never 5xx; a 4xx writes no row."""

import json

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dacc.db import db
from dacc.models import RawMeasure

SETTINGS = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
VALID = {"measureName": "m", "value": 1, "startDate": "2024-01-01", "createdBy": "app", "group1": {"g1": "a"}}

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=80)
    | st.sampled_from(
        ["", "\x00", "\ud800", "*", "2024-01-01", "9999-12-31T23:59", "0001-01-01", "1e999", "NaN"]
    )
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
# A valid body with one field replaced by anything (or removed, or one added).
mutated = st.builds(
    lambda field, value, drop: {k: v for k, v in {**VALID, field: value}.items() if k != drop},
    st.sampled_from([*VALID, "group2", "group3", "measureId", "extra"]),
    json_values,
    st.sampled_from([None, *VALID]),
)
bodies = (
    mutated.map(lambda b: json.dumps(b).encode())
    | json_values.map(lambda v: json.dumps(v).encode())
    | st.binary(max_size=200)
    | st.integers(min_value=900, max_value=3000).map(lambda n: b"[" * n + b"]" * n)
    | st.sampled_from([b"", b"{", b'{"value": 1e400}', b'{"measureName": "m\\u0000"}', b'[{"a": "\\ud800"}]'])
)
content_types = st.sampled_from(
    ["application/json", "application/json; charset=utf-8", "text/plain", "", None]
)


@pytest.fixture
def setup(make_definition, auth_header):
    make_definition("m", access_public=True)
    return auth_header("org")


def _rows():
    return db.session.scalar(sa.select(sa.func.count()).select_from(RawMeasure))


def _check(response, rows_before):
    assert response.status_code < 500, response.get_data()[:300]
    if response.status_code >= 400:
        body = response.get_json(silent=True)
        assert isinstance(body, dict) and isinstance(body.get("error"), str), response.get_data()[:300]
        assert _rows() == rows_before
    db.session.rollback()


@SETTINGS
@given(body=bodies, content_type=content_types)
def test_post_measure_never_answers_5xx(client, setup, body, content_type):
    before = _rows()
    response = client.post("/measure", data=body, headers=setup, content_type=content_type)
    _check(response, before)


@SETTINGS
@given(
    items=st.lists(mutated | json_values, max_size=5),
    raw=bodies,
    use_raw=st.booleans(),
    content_type=content_types,
)
def test_post_measures_never_answers_5xx(client, setup, items, raw, use_raw, content_type):
    before = _rows()
    data = raw if use_raw else json.dumps(items).encode()
    response = client.post("/measures", data=data, headers=setup, content_type=content_type)
    _check(response, before)


@SETTINGS
@given(
    params=st.dictionaries(
        st.sampled_from(["measureName", "startDate", "endDate", "createdBy", "x"]), json_values, max_size=5
    ),
    raw=bodies,
    use_raw=st.booleans(),
    query=st.dictionaries(
        st.sampled_from(["measureName", "startDate", "endDate", "createdBy"]),
        st.text(max_size=30),
        max_size=4,
    ),
    method=st.sampled_from(["GET", "POST"]),
)
def test_aggregate_never_answers_5xx(client, setup, params, raw, use_raw, query, method):
    data = raw if use_raw else json.dumps(params).encode()
    response = client.open("/aggregate", method=method, data=data, query_string=query, headers=setup)
    _check(response, _rows())
