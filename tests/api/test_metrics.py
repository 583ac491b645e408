"""GET /metrics: protection modes, request/measure/cache counters, job runs from the database."""

import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from dacc import create_app
from dacc.config import Config
from dacc.db import db
from dacc.metrics import REGISTRY, UNKNOWN_MEASURE
from dacc.runs import record_run, recorded_run

MEASURE = {"measureName": "m", "value": 1, "startDate": "2022-01-01", "createdBy": "app"}


def _sample(name, **labels):
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def metrics_header(auth_header):
    return auth_header("ops", scopes=["metrics:read"])


def test_metrics_need_a_token_with_metrics_read_by_default(client, auth_header, metrics_header):
    assert client.get("/metrics").status_code == 401
    response = client.get("/metrics", headers=auth_header(scopes=["measure:write", "aggregate:read"]))
    assert response.status_code == 403
    assert response.get_json() == {"error": "this token lacks the 'metrics:read' scope"}
    response = client.get("/metrics", headers=metrics_header)
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain; version=")
    assert "# TYPE dacc_http_requests_total counter" in response.get_data(as_text=True)


@pytest.mark.parametrize("mode, status", [("open", 200), ("off", 404)])
def test_metrics_open_or_off(database_url, mode, status):
    app = create_app(Config(database_url=database_url, testing=True, source="tests", metrics=mode))
    try:
        response = app.test_client().get("/metrics")
        assert response.status_code == status
        if mode == "off":
            assert response.get_json() == {"error": response.get_json()["error"]}
    finally:
        with app.app_context():
            db.engine.dispose()


def test_requests_are_counted_by_route_and_status_and_timed(client, metrics_header):
    labels = {"endpoint": "/status", "method": "GET", "status": "200"}
    before = _sample("dacc_http_requests_total", **labels)
    timed = _sample("dacc_http_request_duration_seconds_count", endpoint="/status")
    for _ in range(3):
        client.get("/status")
    client.get("/no/such/page")
    assert _sample("dacc_http_requests_total", **labels) == before + 3
    assert _sample("dacc_http_request_duration_seconds_count", endpoint="/status") == timed + 3
    unmatched = {"endpoint": "(unmatched)", "method": "GET", "status": "404"}
    assert _sample("dacc_http_requests_total", **unmatched) >= 1
    text = client.get("/metrics", headers=metrics_header).get_data(as_text=True)
    assert 'dacc_http_requests_total{endpoint="/status",method="GET",status="200"}' in text


def test_measures_accepted_and_refused_by_measure(client, make_definition, auth_header):
    make_definition("m", group1_key=None)
    headers = auth_header()
    accepted = _sample("dacc_measures_accepted_total", measure="m")
    refused = _sample("dacc_measures_refused_total", measure="m")
    unknown = _sample("dacc_measures_refused_total", measure=UNKNOWN_MEASURE)
    assert client.post("/measure", json=MEASURE, headers=headers).status_code == 201
    assert client.post("/measures", json=[MEASURE, MEASURE], headers=headers).status_code == 201
    assert client.post("/measure", json={**MEASURE, "value": "x"}, headers=headers).status_code == 400
    name = "made-up-" + "x" * 50
    assert client.post("/measure", json={**MEASURE, "measureName": name}, headers=headers).status_code == 400
    assert _sample("dacc_measures_accepted_total", measure="m") == accepted + 3
    assert _sample("dacc_measures_refused_total", measure="m") == refused + 1
    # A name that is no definition's is not a label: clients could make series at will.
    assert _sample("dacc_measures_refused_total", measure=UNKNOWN_MEASURE) == unknown + 1
    assert _sample("dacc_measures_refused_total", measure=name) == 0


@pytest.mark.parametrize("name", ["m\x00", "\ud800", "x" * 201])
def test_a_name_no_definition_can_have_is_no_label(
    client, make_definition, auth_header, metrics_header, name
):
    """A fault found before the name is read (a /measures body that is no array) does
    not vouch for the name: counted as unknown, and /metrics still renders (a lone
    surrogate in a label broke every later rendering)."""
    make_definition("m", group1_key=None)
    unknown = _sample("dacc_measures_refused_total", measure=UNKNOWN_MEASURE)
    response = client.post("/measures", json={**MEASURE, "measureName": name}, headers=auth_header())
    assert response.status_code == 400
    assert response.get_json() == {"error": "body: expected a JSON array of measures"}
    assert _sample("dacc_measures_refused_total", measure=UNKNOWN_MEASURE) == unknown + 1
    assert client.get("/metrics", headers=metrics_header).status_code == 200


def test_aggregate_cache_hits_and_misses(client, make_definition, auth_header):
    make_definition("m", group1_key=None)
    headers = auth_header()
    query = {"measureName": "m", "startDate": "2022-01-01", "endDate": "2022-02-01"}
    hits, misses = _sample("dacc_aggregate_cache_lookups_total", result="hit"), _sample(
        "dacc_aggregate_cache_lookups_total", result="miss"
    )
    assert client.post("/aggregate", json=query, headers=headers).status_code == 200
    assert client.post("/aggregate", json=query, headers=headers).status_code == 200
    assert _sample("dacc_aggregate_cache_lookups_total", result="miss") == misses + 1
    assert _sample("dacc_aggregate_cache_lookups_total", result="hit") == hits + 1


def test_job_runs_come_from_the_database(client, runner, make_definition, auth_header, metrics_header):
    make_definition("m", group1_key=None)
    client.post("/measure", json=MEASURE, headers=auth_header())
    for _ in range(2):
        result = runner.invoke(args=["compute-aggregation", "m", "--force"])
        assert result.exit_code == 0, result.output
    assert runner.invoke(args=["compute-aggregation", "nope"]).exit_code == 1
    result = runner.invoke(args=["view", "update-filtered-aggregation"])
    assert result.exit_code == 0, result.output
    text = client.get("/metrics", headers=metrics_header).get_data(as_text=True)
    assert 'dacc_job_runs_total{job="aggregation",measure="m",result="ok"} 2.0' in text
    assert 'dacc_job_runs_total{job="aggregation",measure="m",result="failed"} 0.0' in text
    assert 'dacc_job_run_duration_seconds_count{job="aggregation",measure="m"} 2.0' in text
    # Publishing what is pending without new data (flask view, jobs run) is a run of its own.
    assert 'dacc_job_runs_total{job="publication",measure="m",result="ok"} 1.0' in text
    assert 'measure="nope"' not in text  # an unknown name ran nothing
    stamp = [
        line
        for line in text.splitlines()
        if line.startswith('dacc_job_last_success_timestamp_seconds{job="aggregation",measure="m"}')
    ]
    assert len(stamp) == 1
    assert abs(float(stamp[0].split()[-1]) - time.time()) < 120


def test_a_failed_run_is_counted_and_raised(client, app, metrics_header):
    @recorded_run("purge")
    def failing(name):
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        failing("m2")
    record_run("purge", "m2", ok=True, seconds=1.5)
    text = client.get("/metrics", headers=metrics_header).get_data(as_text=True)
    assert 'dacc_job_runs_total{job="purge",measure="m2",result="failed"} 1.0' in text
    assert 'dacc_job_runs_total{job="purge",measure="m2",result="ok"} 1.0' in text
    assert 'dacc_job_last_run_duration_seconds{job="purge",measure="m2"} 1.5' in text


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_gunicorn_workers_add_their_metrics_up_in_multiprocess_mode(session_app, database_url, tmp_path):
    # session_app: the database is migrated (else /status answers 503), also when this
    # test runs alone.
    (tmp_path / "config.yml").write_text("dacc: {metrics: open}\nlogging: {logger_criticity: warning}\n")
    folder = tmp_path / "prom"
    folder.mkdir()
    env = {**os.environ, "DATABASE_URL": database_url, "PROMETHEUS_MULTIPROC_DIR": str(folder)}
    env.pop("DACC_CONFIG", None)
    port = _free_port()
    gunicorn = os.path.join(os.path.dirname(sys.executable), "gunicorn")
    process = subprocess.Popen(
        [gunicorn, "--no-control-socket", "-w", "2", "-b", f"127.0.0.1:{port}", "dacc:create_app()"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        # Ready once it answers; probed on a path of its own, so that a probe the client
        # gave up on but a worker still answers is never one of the /status requests
        # counted below.
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(base + "/openapi.json", timeout=5).read()
                break
            except OSError:
                assert process.poll() is None, "gunicorn stopped"
                assert time.monotonic() < deadline, "gunicorn did not start"
                time.sleep(0.2)
        for _ in range(20):
            # Each must be answered (a timeout fails the test rather than leave a request
            # counted after the read): generous under load.
            assert urllib.request.urlopen(base + "/status", timeout=30).status == 200
        text = urllib.request.urlopen(base + "/metrics", timeout=30).read().decode()
        line = 'dacc_http_requests_total{endpoint="/status",method="GET",status="200"}'
        totals = [float(l.split()[-1]) for l in text.splitlines() if l.startswith(line)]
        assert totals == [20.0]
        assert len(list(folder.glob("counter_*.db"))) >= 1
    finally:
        process.terminate()
        process.wait(timeout=30)
