"""GET /status, with the database up, down and back."""

import time
import uuid

import pgserver
import psycopg2
import pytest
import sqlalchemy as sa
from alembic import command
from psycopg2 import sql

from dacc import __version__, create_app
from dacc.config import Config
from dacc.db import db
from dacc.embedded import create_database
from dacc.migrations_runner import upgrade_to_head
from dacc.status import SCHEMA_BEHIND


def test_status_ok(client):
    response = client.get("/status")
    assert response.status_code == 200
    assert response.get_json() == {"db": {"status": "ok"}, "global_status": "ok", "version": __version__}


def test_status_ko_within_5s_when_the_database_stops_and_ok_when_back(tmp_path):
    """A database of its own, stopped and started under the app."""
    folder = tmp_path / "pg"
    server = pgserver.get_server(folder, cleanup_mode="stop")
    create_database(server.get_uri("postgres"), "s")
    url = server.get_uri("s").replace("postgresql://", "postgresql+psycopg2://")
    app = create_app(Config(database_url=url, testing=True))
    with app.app_context():
        upgrade_to_head()
    client = app.test_client()
    try:
        assert client.get("/status").status_code == 200
        server.cleanup()  # stops the server: this process holds its only handle

        started = time.monotonic()
        response = client.get("/status")
        assert time.monotonic() - started < 5
        assert response.status_code == 503
        body = response.get_json()
        assert body["global_status"] == "ko"
        assert body["db"] == {"status": "ko", "error": "database unreachable"}
        # Any other endpoint needing the database: a JSON 503, not a 500.
        response = client.get("/whoami", headers={"Authorization": "Bearer dacc_" + "A" * 43})
        assert response.status_code == 503
        assert response.get_json() == {"error": "database unavailable, retry later"}

        server = pgserver.get_server(folder, cleanup_mode="stop")
        assert server.get_uri("s").replace("postgresql://", "postgresql+psycopg2://") == url
        response = client.get("/status")
        assert response.status_code == 200
        assert response.get_json()["global_status"] == "ok"
    finally:
        with app.app_context():
            db.engine.dispose()
        server.cleanup()


@pytest.fixture
def blank_database(database_url):
    """An empty database on the tests' server, dropped afterwards."""
    name = f"blank_{uuid.uuid4().hex[:8]}"
    admin = sa.engine.make_url(database_url).set(drivername="postgresql", database="postgres")
    admin_uri = admin.render_as_string(hide_password=False)
    create_database(admin_uri, name)
    url = sa.engine.make_url(database_url).set(database=name).render_as_string(hide_password=False)
    yield url
    conn = psycopg2.connect(admin_uri)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    conn.close()


def _app_on(url):
    return create_app(Config(database_url=url, testing=True, source="tests"))


def test_status_is_ko_503_on_a_database_never_migrated(blank_database):
    app = _app_on(blank_database)
    try:
        response = app.test_client().get("/status")
        assert response.status_code == 503
        assert response.get_json()["db"] == {"status": "ko", "error": SCHEMA_BEHIND}
        assert response.get_json()["global_status"] == "ko"
        # Other endpoints: a JSON 503 that says why, not a 500 naming a missing relation.
        response = app.test_client().get("/whoami", headers={"Authorization": "Bearer dacc_" + "A" * 43})
        assert response.status_code == 503
        assert response.get_json() == {"error": "service not ready: database schema out of date"}
    finally:
        with app.app_context():
            db.engine.dispose()


def test_status_is_ko_when_the_schema_is_behind_and_ok_once_upgraded(blank_database):
    app = _app_on(blank_database)
    try:
        with app.app_context():
            migrate_ext = app.extensions["migrate"]
            command.upgrade(migrate_ext.migrate.get_config(migrate_ext.directory), "0001")
        client = app.test_client()
        assert client.get("/status").status_code == 503
        with app.app_context():
            upgrade_to_head()
        response = client.get("/status")
        assert response.status_code == 200
        assert response.get_json()["db"] == {"status": "ok"}
    finally:
        with app.app_context():
            db.engine.dispose()


def test_status_stays_ok_when_the_schema_is_newer_than_the_code(app):
    """A later release migrated first (rolling upgrade): this one keeps serving."""
    from dacc.migrations_runner import schema_is_behind

    assert schema_is_behind(None)
    assert schema_is_behind("0001")
    assert not schema_is_behind("9999_from_a_later_release")


def test_cli_on_a_database_never_migrated_says_run_flask_db_upgrade(blank_database):
    app = _app_on(blank_database)
    try:
        result = app.test_cli_runner().invoke(args=["token", "get", "org"])
        assert result.exit_code == 1
        assert "run `flask db upgrade`" in result.output
        assert "Traceback" not in result.output
    finally:
        with app.app_context():
            db.engine.dispose()
