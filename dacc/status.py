"""Health checks behind /status."""

import logging
import time

import psycopg2.errors
import sqlalchemy as sa

from dacc.db import db
from dacc.errors import notice_database_error
from dacc.migrations_runner import schema_head, schema_is_behind

log = logging.getLogger(__name__)

STALE_FAILURE_SECONDS = 0.5

SCHEMA_BEHIND = "database schema is behind the code: run `flask db upgrade`"

# The liveness check also tells whether the database was ever migrated: to_regclass
# gives NULL for a missing table where a SELECT from it would fail.
_MIGRATED = sa.text("SELECT to_regclass('alembic_version') IS NOT NULL")
_REVISION = sa.text("SELECT max(version_num) FROM alembic_version")


def check_database() -> dict:
    """{"status": "ok"} or {"status": "ko", "error": short reason}; answers within seconds.

    "ko" also when the schema is not the newest this code ships: every other endpoint
    would fail on a missing table or column.

    /status needs no token, so the reason is a fixed phrase: the driver's message
    (host, address, user) goes to the log only.
    """
    started = time.monotonic()
    for attempt in (1, 2):
        try:
            db.session.execute(sa.text("SET LOCAL statement_timeout = '2s'"))
            migrated = db.session.execute(_MIGRATED).scalar()
            revision = db.session.execute(_REVISION).scalar() if migrated else None
            db.session.rollback()
            if schema_is_behind(revision):
                log.warning("database schema at %s, this code needs %s", revision, schema_head())
                return {"status": "ko", "error": SCHEMA_BEHIND}
            return {"status": "ok"}
        except Exception as exc:  # any failure means "ko"
            db.session.rollback()
            # The pool does not ping connections before use (a round trip per request):
            # after a database restart the first use of a stale connection fails and
            # invalidates the pool, and a second try gets a fresh connection.
            # Only a stale connection fails that fast: a second try after a deadline
            # ran out would push /status past its own.
            stale = time.monotonic() - started < STALE_FAILURE_SECONDS
            if attempt == 1 and stale and getattr(exc, "connection_invalidated", False):
                continue
            log.warning("database check failed: %s", _driver_message(exc))
            notice_database_error()
            return {"status": "ko", "error": _public_reason(exc)}


def _public_reason(exc: Exception) -> str:
    original = getattr(exc, "orig", None) or exc
    if isinstance(original, psycopg2.errors.QueryCanceled):
        return "database did not answer in time"
    if isinstance(exc, sa.exc.OperationalError) or isinstance(original, psycopg2.OperationalError):
        return "database unreachable"
    return "database error"


def _driver_message(exc: Exception) -> str:
    original = getattr(exc, "orig", None) or exc
    text = str(original).strip().splitlines()
    return (text[0] if text else type(original).__name__)[:200]
