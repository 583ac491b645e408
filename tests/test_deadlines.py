"""A frozen PostgreSQL (processes stopped, as a partition or a stuck disk looks) against
a real served process: every request answers 503 JSON in time, and it recovers. And a
request's deadline ends with it, also in the tests' own app context."""

import threading
import time

import pytest

MEASURE = {
    "measureName": "m",
    "value": 1,
    "startDate": "2024-01-01",
    "createdBy": "app",
    "group1": {"g1": "a"},
}
AGGREGATE = "/aggregate?measureName=m&startDate=2024-01-01&endDate=2024-02-01"


@pytest.fixture
def frozen(served):
    """Stop every PostgreSQL process of the served app; start them again after."""
    assert served.request("POST", "/measure", MEASURE)[0] == 201  # pooled connections exist
    processes = served.freeze()
    try:
        yield served
    finally:
        served.thaw(processes)


def _timed(served, method, path, body=None, headers=None):
    started = time.monotonic()
    status, headers, data = served.request(method, path, body, headers=headers, timeout=15)
    return time.monotonic() - started, status, headers, data


def test_requests_answer_503_json_in_time_while_the_database_is_frozen(frozen):
    results = {}

    def run(name, method, path, body=None, headers=None):
        results[name] = _timed(frozen, method, path, body, headers=headers)

    calls = [
        ("status", "GET", "/status"),
        ("measure", "POST", "/measure", MEASURE),
        ("bulk", "POST", "/measures", [MEASURE] * 3),
        ("aggregate", "GET", AGGREGATE),
        # A token this process has not cached yet: it must be looked up.
        ("whoami", "GET", "/whoami", None, {"Authorization": "Bearer dacc_" + "A" * 43}),
    ]
    threads = [threading.Thread(target=run, args=call) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)

    seconds, status, _, body = results["status"]
    assert status == 503 and seconds < 3, (status, seconds)
    assert body["global_status"] == "ko"
    for name in ("measure", "bulk", "aggregate", "whoami"):
        seconds, status, headers, body = results[name]
        assert (name, status) == (name, 503) and seconds < 5, (name, status, seconds)
        assert body == {"error": "database unavailable, retry later"}
        assert headers["Retry-After"] == "5"

    # Still frozen: a second round answers in time too (new connections time out).
    seconds, status, _, _ = _timed(frozen, "GET", "/status")
    assert status == 503 and seconds < 3, (status, seconds)
    seconds, status, _, _ = _timed(frozen, "POST", "/measure", MEASURE)
    assert status == 503 and seconds < 5, (status, seconds)


def test_the_served_app_recovers_without_restart_once_the_database_thaws(served):
    pid = served.process.pid
    processes = served.freeze()
    try:
        assert _timed(served, "GET", "/status")[1] == 503
    finally:
        served.thaw(processes)
    deadline = time.monotonic() + 10
    answers = []
    while time.monotonic() < deadline:
        answers = [served.request("GET", "/status")[0], served.request("POST", "/measure", MEASURE)[0]]
        if answers == [200, 201]:
            break
        time.sleep(0.2)
    assert answers == [200, 201]
    assert served.process.pid == pid and served.process.poll() is None


class _ShiftedClock:
    """time.monotonic() moved forward by `offset`, for dacc.deadlines only."""

    def __init__(self):
        self.offset = 0.0

    def monotonic(self):
        return time.monotonic() + self.offset


def test_a_request_in_the_tests_leaves_no_connection_under_its_deadline(
    client, auth_header, make_definition, monkeypatch
):
    """A POST /measure reads its definition through the session and leaves its read
    transaction to the request's end. Tests keep an app context open; were the request
    run in it (Flask reuses it), its connection would stay checked out, watched until
    the request's deadline, and a later request would get 503 once that passed (the
    schemathesis test under load). tests/conftest.py gives each request its own."""
    from dacc import deadlines

    make_definition("m", group1_key=None)
    headers = auth_header(scopes=["measure:write"])
    measure = {"measureName": "m", "value": 1, "startDate": "2024-01-01", "createdBy": "app"}
    clock = _ShiftedClock()
    monkeypatch.setattr(deadlines, "time", clock)
    assert client.post("/measure", json=measure, headers=headers).status_code == 201
    clock.offset = deadlines.REQUEST_SECONDS + 1  # past that request's deadline
    watchdog = deadlines._watchdog()
    watchdog.wake.set()
    waited_until = time.monotonic() + 10
    while watchdog.watched and time.monotonic() < waited_until:
        time.sleep(0.01)
    response = client.post("/measure", json={**measure, "measureName": "n"}, headers=headers)
    assert response.status_code == 400, response.get_json()
    assert response.get_json() == {"error": "measureName: no measure definition named 'n'"}
