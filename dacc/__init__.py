"""DACC: a privacy-preserving aggregation server."""

from __future__ import annotations

import logging
from pathlib import Path

from flask import Flask

from dacc.config import Config, load_config, redact_url

log = logging.getLogger(__name__)

MIGRATIONS_DIR = str(Path(__file__).resolve().parent.parent / "migrations")
MAX_BODY_BYTES = 16 * 1024 * 1024
"""Largest body any endpoint accepts (bulk); /measure has its own, smaller limit."""


def create_app(config: Config | None = None) -> Flask:
    """Build the app: config, logging, database, extensions, blueprints, errors, CLI."""
    config = config or load_config()
    app = Flask(__name__)
    _configure_logging(config)
    app.config["DACC"] = config
    app.config["TESTING"] = config.testing
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.json.sort_keys = False
    _configure_database(app, config)
    _register_blueprints(app, config)
    _register_errors(app)
    _register_commands(app)
    if config.embedded:
        _migrate_embedded(app)
    return app


def _configure_logging(config: Config) -> None:
    level = getattr(logging, config.log_level) if config.logging_enable else logging.CRITICAL + 1
    logging.getLogger("dacc").setLevel(level)
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _configure_database(app: Flask, config: Config) -> None:
    from dacc.db import db, migrate
    from dacc.embedded import start_embedded

    url = config.database_url or start_embedded(config.data_dir, stop_at_exit=config.testing)
    where = f"embedded PostgreSQL in {config.data_dir}" if config.embedded else redact_url(url)
    log.info("database: %s (config: %s)", where, config.source)
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


def _register_blueprints(app: Flask, config: Config) -> None:
    from dacc.api import register_blueprints

    register_blueprints(app, bench=config.bench_endpoints)


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
