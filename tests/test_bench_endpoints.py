"""The benchmark's ceiling endpoints: absent by default, minimal when enabled."""

import pytest
import sqlalchemy as sa

from dacc import create_app
from dacc.config import Config
from dacc.db import db

MEASURE = {
    "measureName": "m",
    "value": 12.5,
    "startDate": "2024-01-02T00:00:00",
    "createdBy": "app",
    "group1": {"g1": "a"},
}


@pytest.fixture
def bench_client(app, database_url):
    """A client of an app with the bench endpoints on, on the tests' database.

    Depends on `app` so that the tables are truncated after the test.
    """
    bench_app = create_app(
        Config(database_url=database_url, testing=True, bench_endpoints=True, source="tests")
    )
    yield bench_app.test_client()
    with bench_app.app_context():
        db.engine.dispose()


@pytest.mark.parametrize(
    "method, path", [("POST", "/_bench/insert"), ("GET", "/_bench/aggregate"), ("POST", "/_bench/aggregate")]
)
def test_bench_endpoints_are_404_unless_enabled(client, method, path):
    response = client.open(path, method=method, json=MEASURE)
    assert response.status_code == 404
    assert set(response.get_json()) == {"error"}


def test_bench_insert_stores_one_raw_measure(bench_client, app):
    response = bench_client.post("/_bench/insert", json=MEASURE)
    assert response.status_code == 201
    assert response.get_json() == {"ok": True}
    rows = db.session.execute(
        sa.text("SELECT measure_name, value, start_date::text, created_by, group1, group2 FROM raw_measure")
    ).all()
    assert [tuple(r) for r in rows] == [("m", 12.5, "2024-01-02 00:00:00", "app", {"g1": "a"}, None)]


@pytest.mark.parametrize(
    "body, fault",
    [
        ([1, 2], "body: expected a JSON object"),
        ({k: v for k, v in MEASURE.items() if k != "value"}, "value: required"),
        ({**MEASURE, "startDate": "not a date"}, "body: a field has a value PostgreSQL cannot store"),
        ({**MEASURE, "value": 1e20}, "body: a field has a value PostgreSQL cannot store"),
    ],
)
def test_bench_insert_refuses_bad_bodies_and_writes_nothing(bench_client, app, body, fault):
    response = bench_client.post("/_bench/insert", json=body)
    assert response.status_code == 400
    assert response.get_json() == {"error": fault}
    assert db.session.scalar(sa.text("SELECT count(*) FROM raw_measure")) == 0


@pytest.mark.parametrize("with_token", [True, False])
def test_bench_aggregate_answers_what_the_real_aggregate_answers(
    bench_client, app, auth_header, make_definition, with_token
):
    from dacc.aggregation.compute import compute_aggregation

    make_definition("m")
    for value in (1, 2):
        assert bench_client.post("/_bench/insert", json={**MEASURE, "value": value}).status_code == 201
    compute_aggregation("m", force=True)
    headers = auth_header(scopes=["aggregate:read"]) if with_token else {}
    body = {"measureName": "m", "startDate": "2024-01-01", "endDate": "2024-02-01"}
    real = bench_client.post("/aggregate", json=body, headers=headers)
    for _ in range(2):  # the first answer is fetched, the second comes from memory
        ceiling = bench_client.post("/_bench/aggregate", json=body, headers=headers)
        assert (ceiling.status_code, ceiling.get_data()) == (real.status_code, real.get_data())
