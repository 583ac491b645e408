"""Group commit of POST /measure: batches, per-item outcomes, refusals, the off switch."""

import threading
import time
from types import SimpleNamespace

import pytest
import sqlalchemy as sa

from dacc import create_app, ingestion
from dacc.config import Config
from dacc.db import db
from dacc.ingestion import WRITER_EXTENSION
from dacc.measure_writer import MeasureWriter


def body(value, **extra):
    return {
        "measureName": "m",
        "value": value,
        "startDate": "2024-03-01",
        "createdBy": "app",
        "group1": {"g1": "a"},
        **extra,
    }


@pytest.fixture
def headers(auth_header, make_definition):
    make_definition("m")
    return auth_header("writer", scopes=["measure:write"])


@pytest.fixture
def gated(app):
    """Installs a writer whose first write waits on `gate` before any SQL, so that the
    requests arriving meanwhile queue up; `calls` lists the size of each write."""

    def install(*, window_ms=2, batch_max=100, before_batch=None):
        state = SimpleNamespace(gate=threading.Event(), calls=[])

        def store_one(connection, measure):
            state.calls.append(1)
            if len(state.calls) == 1:
                assert state.gate.wait(30)
            return ingestion._store_one(connection, measure)

        def store_batch(connection, measures):
            state.calls.append(len(measures))
            if before_batch:
                before_batch(connection)
            return ingestion._store_batch(connection, measures)

        state.writer = MeasureWriter(
            store_one=store_one, store_batch=store_batch, window_ms=window_ms, batch_max=batch_max
        )
        app.extensions[WRITER_EXTENSION] = state.writer
        states.append(state)
        return state

    states = []
    yield install
    for state in states:
        state.gate.set()
    app.extensions.pop(WRITER_EXTENSION, None)


def post_queued(app, state, headers, bodies):
    """POST bodies[0] (held at the gate), then the others one by one, each queued behind
    it before the next is sent (so the queue is in their order); open the gate; the
    responses, in order."""
    responses = [None] * len(bodies)

    def post(i):
        mine = headers[i] if isinstance(headers, list) else headers
        responses[i] = app.test_client().post("/measure", json=bodies[i], headers=mine)

    threads = [threading.Thread(target=post, args=(i,)) for i in range(len(bodies))]
    threads[0].start()
    _wait_for(lambda: state.calls)
    for queued, thread in enumerate(threads[1:], start=1):
        thread.start()
        _wait_for(lambda queued=queued: state.writer.pending == queued)
    state.gate.set()
    for thread in threads:
        thread.join(30)
    return responses


def _wait_for(condition, timeout=30):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def stored_values():
    rows = db.session.execute(sa.text("SELECT value FROM raw_measure ORDER BY value")).scalars()
    return [int(v) for v in rows]


def transactions():
    return db.session.execute(sa.text("SELECT count(DISTINCT txid) FROM raw_measure")).scalar()


def test_measures_queued_behind_a_commit_share_the_next_one(app, headers, gated):
    state = gated()
    responses = post_queued(app, state, headers, [body(i) for i in range(8)])
    assert [(r.status_code, r.get_json()) for r in responses] == [(201, {"ok": True})] * 8
    assert state.calls == [1, 7]
    assert stored_values() == list(range(8))
    assert transactions() == 2


def test_a_batch_holds_at_most_ingest_batch_max(app, headers, gated):
    state = gated(batch_max=3)
    responses = post_queued(app, state, headers, [body(i) for i in range(8)])
    assert [r.status_code for r in responses] == [201] * 8
    assert state.calls == [1, 3, 3, 1]
    assert stored_values() == list(range(8))


def test_measure_ids_in_one_batch_are_stored_once(app, client, headers, gated):
    assert client.post("/measure", json=body(90, measureId="old"), headers=headers).status_code == 201
    state = gated()
    bodies = [
        body(0),
        body(1, measureId="a"),
        body(2, measureId="a"),
        body(3, measureId="b"),
        body(4, measureId="old"),
        body(5),
    ]
    responses = post_queued(app, state, headers, bodies)
    assert state.calls == [1, 5]
    assert [(r.status_code, r.get_json()) for r in responses] == [
        (201, {"ok": True}),
        (201, {"ok": True}),
        (200, {"ok": True, "duplicate": True}),
        (201, {"ok": True}),
        (200, {"ok": True, "duplicate": True}),
        (201, {"ok": True}),
    ]
    assert stored_values() == [0, 1, 3, 5, 90]
    keys = db.session.execute(sa.text("SELECT measure_id FROM measure_key ORDER BY 1")).scalars().all()
    assert keys == ["a", "b", "old"]


def test_the_same_measure_id_from_two_orgs_in_one_batch_is_two_measures(app, headers, auth_header, gated):
    other = auth_header("other", scopes=["measure:write"])
    state = gated()
    bodies = [body(0), body(1, measureId="k"), body(2, measureId="k"), body(3, measureId="k")]
    responses = post_queued(app, state, [headers, headers, other, other], bodies)
    assert state.calls == [1, 3]
    assert [r.status_code for r in responses] == [201, 201, 201, 200]
    assert stored_values() == [0, 1, 2]


def test_a_contributor_over_its_cap_is_refused_alone_in_its_batch(app, headers, make_definition, gated):
    make_definition("capped", max_contributions_per_cell=1)
    state = gated()

    def capped(value, contributor, **extra):
        return {**body(value, **extra), "measureName": "capped", "contributor": contributor}

    bodies = [body(0), capped(1, "alice"), capped(2, "alice", measureId="a2"), capped(3, "bob"), body(4)]
    responses = post_queued(app, state, headers, bodies)
    assert [r.status_code for r in responses] == [201, 201, 409, 201, 201]
    assert "maxContributionsPerCell" in responses[2].get_json()["error"]
    # The batch met the cap, was rolled back whole, and each measure was retried alone.
    assert state.calls == [1, 4, 1, 1, 1, 1]
    assert stored_values() == [0, 1, 3, 4]
    keys = db.session.execute(sa.text("SELECT measure_id FROM measure_key")).scalars().all()
    assert keys == []  # the refused measure's id stays free


@pytest.fixture
def refuse_666(app):
    """A database-level rule that validation does not know: value 666 is refused."""
    with db.engine.begin() as conn:
        conn.execute(
            sa.text(
                "CREATE FUNCTION refuse_666() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
                " IF NEW.value = 666 THEN RAISE EXCEPTION 'no 666' USING ERRCODE = 'check_violation'; END IF;"
                " RETURN NEW; END $$"
            )
        )
        conn.execute(
            sa.text(
                "CREATE TRIGGER refuse_666 BEFORE INSERT ON raw_measure FOR EACH ROW EXECUTE FUNCTION refuse_666()"
            )
        )
    yield
    db.session.rollback()  # the test's reads hold a lock that DROP TRIGGER waits for
    with db.engine.begin() as conn:
        conn.execute(sa.text("DROP TRIGGER refuse_666 ON raw_measure"))
        conn.execute(sa.text("DROP FUNCTION refuse_666()"))


def test_a_measure_the_database_refuses_fails_alone(app, headers, gated, refuse_666):
    state = gated()
    bodies = [body(0), body(1), body(666, measureId="x"), body(3, measureId="y"), body(4)]
    responses = post_queued(app, state, headers, bodies)
    # The batch fails as a whole, then each of its measures is retried in its own transaction.
    assert state.calls == [1, 4, 1, 1, 1, 1]
    assert [r.status_code for r in responses] == [201, 201, 500, 201, 201]
    assert responses[2].get_json() == {"error": "internal server error"}
    assert stored_values() == [0, 1, 3, 4]
    keys = db.session.execute(sa.text("SELECT measure_id FROM measure_key ORDER BY 1")).scalars().all()
    assert keys == ["y"]  # the refused measure's id stays free for a retry


def test_a_batch_that_loses_its_connection_answers_503_to_each_request(app, client, headers, gated):
    def lose_connection(connection):
        connection.execute(sa.text("SELECT pg_terminate_backend(pg_backend_pid())"))

    state = gated(before_batch=lose_connection)
    responses = post_queued(app, state, headers, [body(i) for i in range(5)])
    assert [r.status_code for r in responses] == [201, 503, 503, 503, 503]
    for response in responses[1:]:
        assert response.get_json() == {"error": "database unavailable, retry later"}
        assert response.headers["Retry-After"] == "5"
    assert stored_values() == [0]
    # The next request finds a working connection again.
    assert client.post("/measure", json=body(9), headers=headers).status_code == 201


def test_a_lone_request_does_not_wait_for_the_window(app, client, headers, gated):
    gated(window_ms=1000).gate.set()
    client.post("/measure", json=body(0), headers=headers)  # warm the caches
    began = time.monotonic()
    response = client.post("/measure", json=body(1), headers=headers)
    assert response.status_code == 201
    assert time.monotonic() - began < 0.5
    assert stored_values() == [0, 1]


def test_invalid_measure_is_400_before_batching(app, client, headers, gated):
    state = gated()
    state.gate.set()
    response = client.post("/measure", json=body("twelve"), headers=headers)
    assert response.status_code == 400
    assert response.get_json()["error"].startswith("value:")
    assert state.calls == [] and state.writer.pending == 0
    assert stored_values() == []


def test_ingest_batch_ms_0_writes_each_request_alone(session_app, database_url, headers):
    app = create_app(Config(database_url=database_url, testing=True, source="tests", ingest_batch_ms=0))
    response = app.test_client().post("/measure", json=body(1), headers=headers)
    assert response.status_code == 201
    assert WRITER_EXTENSION not in app.extensions
    assert stored_values() == [1]


def test_group_commit_is_on_by_default(client, app, headers):
    app.extensions.pop(WRITER_EXTENSION, None)
    assert client.post("/measure", json=body(1), headers=headers).status_code == 201
    assert isinstance(app.extensions[WRITER_EXTENSION], MeasureWriter)
