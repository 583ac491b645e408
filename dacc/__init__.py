"""DACC: a privacy-preserving aggregation server."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click
from flask import Flask

from dacc.config import Config, ConfigError, load_config, redact_url

log = logging.getLogger(__name__)

__version__ = (Path(__file__).resolve().parent / "VERSION").read_text(encoding="utf-8").strip()
"""DACC's version: dacc/VERSION is its one source (setup.cfg reads it too)."""

MIGRATIONS_DIR = str(Path(__file__).resolve().parent.parent / "migrations")
POOL_TIMEOUT_SECONDS = 2
MAX_BODY_BYTES = 16 * 1024 * 1024
"""Largest body any endpoint accepts (bulk); /measure has its own, smaller limit."""


def create_app(config: Config | None = None) -> Flask:
    """Build the app: config, logging, database, extensions, blueprints, errors, CLI."""
    try:
        config = config or load_config()
        _configure_logging(config)
    except ConfigError as exc:
        _stop_on_config_error(exc)
    app = _Flask(__name__)
    app.config["DACC"] = config
    app.config["TESTING"] = config.testing
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.json.sort_keys = False
    _configure_database(app, config)
    _configure_contributor_key(app, config)
    _register_blueprints(app, config)
    _register_errors(app)
    _register_request_log(app)
    _register_request_metrics(app, config)
    _register_deadlines(app)
    _register_rate_limit(app, config)
    _register_commands(app)
    if config.embedded:
        _migrate_embedded(app, config)
    return app


class _Flask(Flask):
    """Flask, with `ensure_sync` remembered per function, and OPTIONS answered 204.

    Flask asks it of every hook and view on every request (an `inspect` check each,
    seven per POST /measure); DACC has no async view, and a function's answer never
    changes."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._synced: dict = {}

    def ensure_sync(self, func):
        made = self._synced.get(func)
        if made is None:
            made = self._synced[func] = super().ensure_sync(func)
        return made

    def make_default_options_response(self):
        """OPTIONS on a route: 204 with its `Allow` header, no body and no content type.

        Flask's own answer is an empty 200 declared text/html: an API that answers only
        JSON must not announce an HTML page. No token needed: it tells only the methods
        the document (/openapi.json) publishes anyway."""
        response = super().make_default_options_response()
        response.status_code = 204
        del response.headers["Content-Type"]
        return response


def _stop_on_config_error(exc: ConfigError):
    """The CLI prints a ConfigError as one line (it is a ClickException); so does gunicorn
    an AppImportError, and it stops (exit 4) instead of printing a traceback and
    respawning the worker forever."""
    if "gunicorn.arbiter" in sys.modules:
        from gunicorn.errors import AppImportError

        raise AppImportError(f"Error: {exc.message}") from None
    raise exc


def _configure_logging(config: Config) -> None:
    from dacc.logs import configure_logging

    configure_logging(config)


def _register_request_log(app: Flask) -> None:
    from dacc.logs import register_request_log

    register_request_log(app)


def _register_request_metrics(app: Flask, config: Config) -> None:
    if config.metrics != "off":
        from dacc.metrics import register_request_metrics

        register_request_metrics(app)


def _configure_database(app: Flask, config: Config) -> None:
    from dacc.db import db, migrate
    from dacc.deadlines import watch_engine
    from dacc.embedded import (
        placeholder_url,
        start_embedded,
        start_on_first_connect,
        stopped_on_purpose,
        stopped_url,
    )

    in_cli = click.get_current_context(silent=True) is not None
    lazy = False
    if config.embedded and stopped_on_purpose(config.data_dir):
        # `flask embedded stop`: neither the server nor any command starts it again
        # behind the admin's back; requests answer 503 until `flask embedded start`.
        url = stopped_url(config.data_dir)
        log.warning(
            "embedded PostgreSQL in %s stopped on purpose: not started" " (`flask embedded start` starts it)",
            config.data_dir,
        )
    elif config.embedded and _in_command():
        # Started at the first connection, not here: `flask --help` and the commands
        # that only read config must not pay for a server start.
        url, lazy = placeholder_url(config.data_dir), True
    else:
        url = config.database_url or start_embedded(config.data_dir, stop_at_exit=config.testing)
    if not lazy:
        where = f"embedded PostgreSQL in {config.data_dir}" if config.embedded else redact_url(url)
        # Said at each server start; every CLI command would repeat it: debug.
        log.log(logging.DEBUG if in_cli else logging.INFO, "database: %s (config: %s)", where, config.source)
    app.config["SQLALCHEMY_DATABASE_URI"] = url
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = {
        # No pre-ping: it costs a round trip on every request. A connection found dead
        # invalidates the whole pool (one 503 per process after a database restart),
        # and connect_timeout keeps failures fast while the database is away.
        "pool_pre_ping": False,
        "pool_size": 10,
        "max_overflow": 10,
        # A request waits at most this long for a free connection (503 after).
        "pool_timeout": POOL_TIMEOUT_SECONDS,
        "connect_args": {
            # libpq's whole connection set-up, TCP or unix socket (2 is its minimum).
            "connect_timeout": 2,
            # TCP only (libpq ignores them on unix sockets): a partitioned server is
            # noticed by an idle connection within ~9 s, by a busy one within 5 s.
            "keepalives": 1,
            "keepalives_idle": 5,
            "keepalives_interval": 2,
            "keepalives_count": 2,
            "tcp_user_timeout": 5000,
            # client_connection_check_interval: a backend whose client died (a job
            # killed with -9) notices within a second, even mid-statement, and ends,
            # releasing its locks (advisory ones included).
            "options": f"-c statement_timeout={config.statement_timeout_ms}"
            " -c client_connection_check_interval=1000",
            "application_name": "dacc",
        },
    }
    db.init_app(app)
    with app.app_context():
        watch_engine(db.engine)
        if lazy:
            start_on_first_connect(db.engine, config.data_dir, on_start=lambda: _on_embedded_start(app))
    migrate.init_app(app, db, directory=MIGRATIONS_DIR, compare_type=True)
    import dacc.models  # noqa: F401  (register the tables with the metadata)


def _configure_contributor_key(app: Flask, config: Config) -> None:
    from dacc.contributors import init_contributor_key

    init_contributor_key(app, config)


def _register_blueprints(app: Flask, config: Config) -> None:
    from dacc.api import register_blueprints

    register_blueprints(app, bench=config.bench_endpoints, metrics=config.metrics)


def _register_errors(app: Flask) -> None:
    from dacc.errors import register_error_handlers

    register_error_handlers(app)


def _register_rate_limit(app: Flask, config: Config) -> None:
    from dacc.ratelimit import init_rate_limit

    init_rate_limit(app, rate_limit=config.rate_limit, storage=config.rate_limit_storage)


def _register_deadlines(app: Flask) -> None:
    from dacc.deadlines import start_request_deadline

    # Every request bounds its waits for PostgreSQL (see dacc.deadlines).
    app.before_request(start_request_deadline)


def _register_commands(app: Flask) -> None:
    from dacc.cli import register_commands

    register_commands(app)


def _migrate_embedded(app: Flask, config: Config) -> None:
    """Bring the embedded database to the newest schema, once per start (for a CLI
    process, once it has started the server: `_on_embedded_start`)."""
    from dacc.embedded import stopped_on_purpose
    from dacc.migrations_runner import upgrade_to_head

    if stopped_on_purpose(config.data_dir) or _in_command():
        return
    with app.app_context():
        upgrade_to_head()


def _in_command() -> bool:
    """True while a `flask` command other than `run` (which serves) builds the app."""
    context = click.get_current_context(silent=True)
    return context is not None and context.info_name != "run"


def _on_embedded_start(app: Flask) -> None:
    """A CLI process's first connection started (or joined) the embedded server."""
    from dacc.migrations_runner import upgrade_to_head

    with app.app_context():
        upgrade_to_head()
