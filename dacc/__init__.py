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
MAX_BODY_BYTES = 16 * 1024 * 1024
"""Largest body any endpoint accepts (bulk); /measure has its own, smaller limit."""


def create_app(config: Config | None = None) -> Flask:
    """Build the app: config, logging, database, extensions, blueprints, errors, CLI."""
    try:
        config = config or load_config()
        _configure_logging(config)
    except ConfigError as exc:
        _stop_on_config_error(exc)
    app = Flask(__name__)
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
    _register_commands(app)
    if config.embedded:
        _migrate_embedded(app)
    return app


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
    from dacc.embedded import start_embedded

    url = config.database_url or start_embedded(config.data_dir, stop_at_exit=config.testing)
    where = f"embedded PostgreSQL in {config.data_dir}" if config.embedded else redact_url(url)
    # Said at each server start; every CLI command (even --help) would repeat it: debug.
    in_cli = click.get_current_context(silent=True) is not None
    log.log(logging.DEBUG if in_cli else logging.INFO, "database: %s (config: %s)", where, config.source)
    app.config["SQLALCHEMY_DATABASE_URI"] = url
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = {
        # No pre-ping: it costs a round trip on every request. A connection found dead
        # invalidates the whole pool (one 503 per process after a database restart),
        # and connect_timeout keeps failures fast while the database is away.
        "pool_pre_ping": False,
        "pool_size": 10,
        "max_overflow": 10,
        "connect_args": {
            "connect_timeout": 3,
            "options": f"-c statement_timeout={config.statement_timeout_ms}",
            "application_name": "dacc",
        },
    }
    db.init_app(app)
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


def _register_commands(app: Flask) -> None:
    from dacc.cli import register_commands

    register_commands(app)


def _migrate_embedded(app: Flask) -> None:
    """Bring the embedded database to the newest schema, once per start."""
    from dacc.migrations_runner import upgrade_to_head

    with app.app_context():
        upgrade_to_head()
