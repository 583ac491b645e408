"""The filtered_aggregation view: threshold filter, concurrent refresh, swap on recreate."""

import threading
import time
from datetime import datetime
from decimal import Decimal

import psycopg2
import pytest
import sqlalchemy as sa

from dacc import filtered_view
from dacc.aggregation.compute import compute_aggregation
from dacc.db import db
from dacc.errors import Conflict, NotFound
from tests.aggregation.helpers import database_url, insert_raw

DAY = datetime(2024, 2, 1)


@pytest.fixture
def view_back(app):
    """Whatever a test does to the view, the next test finds it in place."""
    yield
    filtered_view.recreate_filtered_view()


def _served(name="m"):
    rows = db.session.execute(
        sa.text("SELECT group1->>'g1', count FROM filtered_aggregation WHERE measure_name = :n"),
        {"n": name},
    ).all()
    db.session.commit()  # end the read: an open transaction would hold the view
    return sorted(rows)


def _seed(make_definition):
    make_definition("m", aggregation_threshold=3)
    insert_raw("m", [(Decimal(1), DAY, "app", {"g1": g}, None, None) for g in "xxxyy"])
    compute_aggregation("m", force=True)


def test_a_run_refreshes_the_view_with_only_cells_reaching_the_threshold(app, make_definition):
    _seed(make_definition)
    assert _served() == [("x", 3)]
    insert_raw("m", [(Decimal(1), DAY, "app", {"g1": "y"}, None, None)])
    compute_aggregation("m", force=True)
    assert _served() == [("x", 3), ("y", 3)]


def test_refresh_does_not_wait_for_readers(app, make_definition):
    _seed(make_definition)
    reader = psycopg2.connect(database_url())
    with reader.cursor() as cur:  # an open transaction that has read the view
        cur.execute("SELECT count(*) FROM filtered_aggregation")
    insert_raw("m", [(Decimal(1), DAY, "app", {"g1": "y"}, None, None)])
    done = threading.Event()

    def run():
        with app.app_context():
            compute_aggregation("m", force=True)
            db.session.remove()
        done.set()

    thread = threading.Thread(target=run)
    thread.start()
    try:
        # A plain REFRESH would wait for the reader's lock; CONCURRENTLY does not.
        assert done.wait(20), "the refresh waited for a reader"
    finally:
        reader.rollback()
        reader.close()
        thread.join(30)
    assert _served() == [("x", 3), ("y", 3)]


def test_recreate_while_another_connection_reads_in_a_loop(app, make_definition, view_back):
    _seed(make_definition)
    stop = threading.Event()
    seen, errors = [], []
    url = database_url()

    def read():
        conn = psycopg2.connect(url)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                while not stop.is_set():
                    try:
                        cur.execute("SELECT count(*) FROM filtered_aggregation WHERE measure_name = 'm'")
                        seen.append(cur.fetchone()[0])
                    except psycopg2.Error as exc:
                        errors.append(str(exc))
        finally:
            conn.close()

    readers = [threading.Thread(target=read) for _ in range(2)]
    for thread in readers:
        thread.start()
    while len(seen) < 2 and all(t.is_alive() for t in readers):
        time.sleep(0.01)  # both readers connected and reading
    try:
        for _ in range(8):
            filtered_view.recreate_filtered_view()
    finally:
        stop.set()
        for thread in readers:
            thread.join(30)
    assert errors == []
    assert len(seen) > 8 and set(seen) == {1}
    # The swapped-in view has its indexes under the usual names: refresh still works concurrently.
    indexes = db.session.execute(
        sa.text("SELECT indexname FROM pg_indexes WHERE tablename = 'filtered_aggregation' ORDER BY 1")
    ).scalars().all()
    db.session.commit()
    assert indexes == ["ix_filtered_aggregation_name_start_date", "uq_filtered_aggregation_id"]
    filtered_view.refresh_filtered_view(concurrently=True)


def test_recreate_builds_from_the_view_query(app, make_definition, view_back, monkeypatch):
    _seed(make_definition)
    monkeypatch.setattr(
        filtered_view, "FILTERED_VIEW_QUERY", f"SELECT * FROM ({filtered_view.FILTERED_VIEW_QUERY}) v WHERE false"
    )
    filtered_view.recreate_filtered_view()
    assert _served() == []


def test_create_when_it_exists_is_a_conflict(app):
    with pytest.raises(Conflict, match="already exists"):
        filtered_view.create_filtered_view()


def test_delete_then_refresh_is_not_found_and_create_brings_it_back(app, make_definition, view_back):
    _seed(make_definition)
    filtered_view.delete_filtered_view()
    with pytest.raises(NotFound, match="does not exist"):
        filtered_view.refresh_filtered_view()
    with pytest.raises(NotFound):
        filtered_view.delete_filtered_view()
    # A run still commits its aggregates when the view is missing (and says so in the log).
    insert_raw("m", [(Decimal(1), DAY, "app", {"g1": "y"}, None, None)])
    assert compute_aggregation("m", force=True).raw_read == 1
    filtered_view.create_filtered_view()
    assert _served() == [("x", 3), ("y", 3)]


def test_recreate_when_missing_creates_it(app, make_definition, view_back):
    _seed(make_definition)
    filtered_view.delete_filtered_view()
    filtered_view.recreate_filtered_view()
    assert _served() == [("x", 3)]


def test_recreate_gives_up_on_a_reader_that_never_ends_and_keeps_the_old_view(app, make_definition, monkeypatch):
    _seed(make_definition)
    monkeypatch.setattr(filtered_view, "SWAP_LOCK_TIMEOUT", "100ms")
    monkeypatch.setattr(filtered_view, "SWAP_ATTEMPTS", 2)
    reader = psycopg2.connect(database_url())
    try:
        with reader.cursor() as cur:
            cur.execute("SELECT count(*) FROM filtered_aggregation")
        with pytest.raises(Conflict, match="busy with readers"):
            filtered_view.recreate_filtered_view()
    finally:
        reader.rollback()
        reader.close()
    assert _served() == [("x", 3)]
    filtered_view.recreate_filtered_view()  # the leftover build is replaced
    assert _served() == [("x", 3)]
