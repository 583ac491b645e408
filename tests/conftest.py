"""Fixtures: one real PostgreSQL per test session, migrated once, truncated between tests."""

from __future__ import annotations

import contextvars
import os
import signal
import uuid

import psycopg2
import pytest
import sqlalchemy as sa
from psycopg2 import sql

from dacc import create_app
from dacc.config import Config, normalise_database_url
from dacc.db import db
from dacc.embedded import create_database
from dacc.migrations_runner import upgrade_to_head

KEEP_TABLES = {"alembic_version"}
CONTRIBUTOR_SECRET = "test-contributor-secret-0123456789abcdef"


@pytest.fixture(scope="session", autouse=True)
def secret_watch():
    """Every log record of the run, and the served processes' output, searched for every
    token secret and contributor pseudonym the tests make (tests/secret_watch.py)."""
    from tests.secret_watch import watching

    with pytest.MonkeyPatch.context() as patch, watching(patch) as watch:
        watch.add_secret(CONTRIBUTOR_SECRET)
        yield watch
        leaks = watch.take_found()
    assert not leaks, "secrets in logs after the last test:\n" + "\n".join(leaks)


@pytest.fixture(autouse=True)
def no_secret_in_logs(secret_watch):
    """Fails the test (at its teardown, after every other fixture's) when a secret was
    logged during it."""
    yield
    leaks = secret_watch.take_found()
    secret_watch.forget_pseudonyms()
    if leaks:
        pytest.fail("secrets in logs:\n" + "\n".join(leaks), pytrace=False)


@pytest.fixture(scope="session")
def database_url(tmp_path_factory):
    """A fresh database: on DATABASE_URL's server when set, else on an embedded one."""
    external = os.environ.get("DATABASE_URL")
    if external:
        admin = normalise_database_url(external).replace("+psycopg2", "", 1)
        name = f"dacc_test_{uuid.uuid4().hex[:8]}"
        create_database(admin, name)
        yield _with_database(normalise_database_url(external), name)
        _drop_database(admin, name)
        return
    import pgserver

    server = pgserver.get_server(tmp_path_factory.mktemp("pgdata"), cleanup_mode="stop")
    create_database(server.get_uri("postgres"), "dacc_test")
    yield normalise_database_url(server.get_uri("dacc_test"))
    server.cleanup()


@pytest.fixture(scope="session")
def session_app(database_url):
    app = create_app(
        Config(database_url=database_url, testing=True, source="tests", contributor_secret=CONTRIBUTOR_SECRET)
    )
    with app.app_context():
        upgrade_to_head()
    app.wsgi_app = _OwnAppContext(app.wsgi_app)
    return app


class _OwnAppContext:
    """Runs each request of the tests in an app context of its own, as a server does.

    Tests hold the `app` fixture's context open, and Flask reuses a pushed context of the
    same app for a request: the request would share the test's session, and a connection
    it checked out (with its deadline, see dacc.deadlines) would stay checked out into
    later requests, which then fail with 503 once that deadline passed (under load, a
    test making many requests takes longer than REQUEST_SECONDS). In a fresh
    contextvars.Context no context is pushed: the request gets its own app context and
    session, removed at its end, and every connection goes back to the pool.
    """

    def __init__(self, wsgi_app):
        self.wsgi_app = wsgi_app

    def __call__(self, environ, start_response):
        return contextvars.Context().run(self.wsgi_app, environ, start_response)


@pytest.fixture
def app(session_app):
    with session_app.app_context():
        yield session_app
        db.session.remove()
        _truncate_all()
        session_app.extensions.pop("dacc_token_cache", None)
        session_app.extensions.pop("dacc_definition_cache", None)
        session_app.extensions.pop("dacc_aggregate_cache", None)


@pytest.fixture
def unmigrated_app(tmp_path):
    """An app on an empty database of its own (a server in tmp_path), for migration
    tests that must not touch the shared test database; stopped afterwards."""
    import pgserver

    server = pgserver.get_server(tmp_path / "pg", cleanup_mode="stop")
    try:
        create_database(server.get_uri("postgres"), "m")
        url = normalise_database_url(server.get_uri("m"))
        app = create_app(Config(database_url=url, testing=True))
        with app.app_context():
            yield app
            db.session.remove()
            db.engine.dispose()
    finally:
        server.cleanup()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


@pytest.fixture
def make_token(app):
    """make_token(org="org", scopes=...) -> (ApiToken, secret)."""
    from dacc.tokens import SCOPES, create_token

    def make(org="org", *, scopes=SCOPES, **kwargs):
        return create_token(org, scopes=scopes, **kwargs)

    return make


@pytest.fixture
def auth_header(make_token):
    """auth_header(org="org", scopes=...) -> {"Authorization": "Bearer ..."}."""

    def make(org="org", **kwargs):
        _, secret = make_token(org, **kwargs)
        return {"Authorization": f"Bearer {secret}"}

    return make


@pytest.fixture
def make_definition(app):
    """make_definition(name="m", **columns) -> MeasureDefinition, committed.

    Columns use the model's (snake_case) names; defaults: org "org", created_by None,
    group1_key "g1", daily period and frequency, threshold 1, extremes shown.
    """
    from dacc.models import MeasureDefinition

    def make(name="m", **overrides):
        values = dict(
            org="org",
            group1_key="g1",
            aggregation_period="day",
            execution_frequency="day",
            aggregation_threshold=1,
            # DACC's behaviour; the k2 default is tested in tests/publication.
            extremes="show",
        )
        values.update(overrides)
        definition = MeasureDefinition(name=name, **values)
        db.session.add(definition)
        db.session.commit()
        return definition

    return make


def _truncate_all() -> None:
    tables = [t.name for t in db.metadata.sorted_tables if t.name not in KEEP_TABLES]
    with db.engine.begin() as conn:
        conn.execute(sa.text("TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " RESTART IDENTITY CASCADE"))


def _with_database(url: str, name: str) -> str:
    return str(sa.engine.make_url(url).set(database=name).render_as_string(hide_password=False))


def _drop_database(admin_uri: str, name: str) -> None:
    conn = psycopg2.connect(admin_uri)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    conn.close()


# --- a real served process on its own PostgreSQL ------------------------------------


class Served:
    """gunicorn serving the app on a free loopback port, on a PostgreSQL of its own
    (so that a test may freeze or stop it), with a definition "m" and a token."""

    def __init__(self, folder, gunicorn_options):
        import pgserver

        self.folder = folder
        self.pg = pgserver.get_server(folder / "pg", cleanup_mode="stop")
        create_database(self.pg.get_uri("postgres"), "served")
        self.database_url = normalise_database_url(self.pg.get_uri("served"))
        app = create_app(Config(database_url=self.database_url, testing=True, source="tests"))
        with app.app_context():
            upgrade_to_head()
            from dacc.models import MeasureDefinition
            from dacc.tokens import create_token

            db.session.add(
                MeasureDefinition(
                    name="m",
                    org="org",
                    group1_key="g1",
                    aggregation_period="day",
                    execution_frequency="day",
                    aggregation_threshold=1,
                )
            )
            db.session.commit()
            self.secret = create_token("org")[1]
            db.engine.dispose()
        self.log_path = folder / "gunicorn.log"
        self.options = list(gunicorn_options)
        self.process = None
        self.start()

    def start(self):
        import socket
        import subprocess
        import sys

        listener = socket.create_server(("127.0.0.1", 0))
        self.port = listener.getsockname()[1]
        listener.close()
        env = {k: v for k, v in os.environ.items() if not k.startswith("DACC_")}
        env["DATABASE_URL"] = self.database_url
        command = [
            sys.executable,
            "-m",
            "gunicorn",
            "--bind",
            f"127.0.0.1:{self.port}",
            *self.options,
            "dacc:create_app()",
        ]
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            command, env=env, cwd=self.folder, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        self.wait_ready()

    def wait_ready(self, timeout=30.0):
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log_path.read_text()[-3000:]
            try:
                if self.request("GET", "/status", timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError("the served app did not answer /status in time")

    def request(self, method, path, body=None, *, headers=None, token=True, timeout=10):
        """(status, headers, parsed JSON or raw bytes) of one request on a new connection."""
        import http.client
        import json

        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            sent = dict(headers or {})
            if token:
                sent.setdefault("Authorization", f"Bearer {self.secret}")
            if body is not None and not isinstance(body, bytes):
                body = json.dumps(body).encode()
                sent.setdefault("Content-Type", "application/json")
            conn.request(method, path, body=body, headers=sent)
            response = conn.getresponse()
            data = response.read()
            try:
                data = json.loads(data)
            except ValueError:
                pass
            return response.status, dict(response.getheaders()), data
        finally:
            conn.close()

    def raw(self, data: bytes, *, timeout=10) -> bytes:
        """Send raw bytes on a new connection; everything answered until it closes."""
        import socket

        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
            sock.sendall(data)
            chunks = []
            try:
                while chunk := sock.recv(65536):
                    chunks.append(chunk)
            except (ConnectionResetError, TimeoutError):
                pass
        return b"".join(chunks)

    def freeze(self):
        """SIGSTOP every PostgreSQL process; returns them, for thaw()."""
        import psutil

        postmaster = psutil.Process(self.pg.get_pid())
        processes = [postmaster, *postmaster.children(recursive=True)]
        self._signal(processes, signal.SIGSTOP)
        return processes

    def thaw(self, processes):
        self._signal(processes, signal.SIGCONT)

    @staticmethod
    def _signal(processes, signum):
        import psutil

        for process in processes:
            try:
                process.send_signal(signum)
            except psutil.NoSuchProcess:  # a backend that ended meanwhile
                pass

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=15)
            except Exception:
                self.process.kill()
                self.process.wait()

    def close(self):
        self.stop()
        self.pg.cleanup()


@pytest.fixture(scope="session")
def served(tmp_path_factory, secret_watch):
    """A Served app with the README's serving options (tests leave it as they found it)."""
    from dacc.serving import GUNICORN_OPTIONS

    stack = Served(tmp_path_factory.mktemp("served"), GUNICORN_OPTIONS)
    secret_watch.watch_output(stack.log_path)
    yield stack
    stack.close()
