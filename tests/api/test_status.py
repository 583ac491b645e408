"""GET /status, with the database up, down and back."""

import time

import pgserver
import sqlalchemy as sa

from dacc import create_app
from dacc.config import Config
from dacc.db import db
from dacc.embedded import create_database


def test_status_ok(client):
    response = client.get("/status")
    assert response.status_code == 200
    assert response.get_json() == {"db": {"status": "ok"}, "global_status": "ok"}


def test_status_ko_within_5s_when_the_database_stops_and_ok_when_back(tmp_path):
    """A database of its own, stopped and started under the app."""
    folder = tmp_path / "pg"
    server = pgserver.get_server(folder, cleanup_mode="stop")
    create_database(server.get_uri("postgres"), "s")
    url = server.get_uri("s").replace("postgresql://", "postgresql+psycopg2://")
    app = create_app(Config(database_url=url, testing=True))
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
