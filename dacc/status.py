"""Health checks behind /status."""

import logging

import sqlalchemy as sa

from dacc.db import db

log = logging.getLogger(__name__)

def check_database() -> dict:
    """{"status": "ok"} or {"status": "ko", "error": short reason}; answers within seconds."""
    try:
        db.session.execute(sa.text("SET LOCAL statement_timeout = '2s'"))
        db.session.execute(sa.text("SELECT 1"))
        db.session.rollback()
        return {"status": "ok"}
    except Exception as exc:  # any failure means "ko"; the reason is for operators
        db.session.rollback()
        reason = _short_reason(exc)
        log.warning("database check failed: %s", reason)
        return {"status": "ko", "error": reason}


def _short_reason(exc: Exception) -> str:
    original = getattr(exc, "orig", None) or exc
    text = str(original).strip().splitlines()
    return (text[0] if text else type(original).__name__)[:200]
