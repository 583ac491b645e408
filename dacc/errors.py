"""Typed errors, and the one place where exceptions become JSON responses."""

import logging

import psycopg2
from flask import jsonify
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)


class DaccError(Exception):
    """Base of the errors a client or admin can cause; `status` is the HTTP status."""

    status = 400

    def __init__(self, message: str, *, details: list | None = None):
        super().__init__(message)
        self.message = message
        self.details = details


class BadRequest(DaccError):
    """The request is malformed or a field is invalid; nothing was written."""

    status = 400


class Unauthorized(DaccError):
    """No usable bearer token: missing, malformed, unknown, expired or revoked."""

    status = 401


class Forbidden(DaccError):
    """The token is valid but may not do this."""

    status = 403


class NotFound(DaccError):
    """A named thing (definition, token, ...) does not exist."""

    status = 404


class Conflict(DaccError):
    """The request clashes with the current state (e.g. a job already running)."""

    status = 409


class PayloadTooLarge(DaccError):
    """The body is over the endpoint's size limit (the message says the limit)."""

    status = 413


class UnsupportedMediaType(DaccError):
    """The body is not declared as JSON."""

    status = 415


def error_message(exc: Exception) -> str:
    """One line for a log, a summary or the CLI: a DaccError's message, else the first
    line of the database's message (no SQL, no parameters), else the exception's type."""
    if isinstance(exc, DaccError):
        return exc.message
    orig = getattr(exc, "orig", None)
    lines = str(orig).strip().splitlines() if orig is not None else []
    return lines[0] if lines else type(exc).__name__


def is_schema_behind(exc: Exception) -> bool:
    """The database lacks a table or column the code uses: it was not migrated."""
    import psycopg2.errors

    orig = getattr(exc, "orig", None)
    return isinstance(orig, (psycopg2.errors.UndefinedTable, psycopg2.errors.UndefinedColumn))


SCHEMA_HINT = "the database schema is behind the code: run `flask db upgrade`"


def register_error_handlers(app):
    """Turn every error into `{"error": ...}` JSON; never HTML, never a traceback."""

    @app.errorhandler(DaccError)
    def handle_dacc_error(exc: DaccError):
        body = {"error": exc.message}
        if exc.details:
            body["errors"] = exc.details
        response = jsonify(body)
        response.status_code = exc.status
        if exc.status == 401:
            response.headers["WWW-Authenticate"] = "Bearer"
        return response

    @app.errorhandler(HTTPException)
    def handle_http_exception(exc: HTTPException):
        response = exc.get_response()
        message = exc.description or exc.name
        if exc.code == 413:
            from flask import request

            limit = request.max_content_length
            message = f"body: larger than the limit of {limit} bytes" if limit else "body: too large"
        response.data = app.json.dumps({"error": message})
        response.content_type = "application/json"
        return response

    @app.errorhandler(OperationalError)
    @app.errorhandler(PoolTimeout)
    # The driver's own, from the few calls that use its connection directly (COPY).
    @app.errorhandler(psycopg2.OperationalError)
    @app.errorhandler(psycopg2.InterfaceError)
    def handle_database_unavailable(exc: Exception):
        """The database is away, the connection broke, or every pooled connection stayed
        busy past the checkout timeout: the client may retry later."""
        log.warning("database unavailable on %s: %s", _request_line(), error_message(exc))
        _rollback_quietly()
        notice_database_error()
        response = jsonify({"error": "database unavailable, retry later"})
        response.status_code = 503
        response.headers["Retry-After"] = "5"
        return response

    @app.errorhandler(Exception)
    def handle_unexpected(exc: Exception):
        if is_schema_behind(exc):
            # An operator's fault, not the client's: say so once per request, briefly.
            log.error("%s on %s: %s", SCHEMA_HINT, _request_line(), error_message(exc))
            _rollback_quietly()
            response = jsonify({"error": "service not ready: database schema out of date"})
            response.status_code = 503
            response.headers["Retry-After"] = "30"
            return response
        log.exception("unhandled error on %s", _request_line())
        _rollback_quietly()
        response = jsonify({"error": "internal server error"})
        response.status_code = 500
        return response


def notice_database_error() -> None:
    """A request found the database away: in embedded mode, restart it if it is gone."""
    from flask import current_app

    from dacc.embedded import revive_if_gone

    config = current_app.config["DACC"]
    if config.embedded:
        revive_if_gone(config.data_dir)


def _rollback_quietly() -> None:
    from dacc.db import db

    try:
        db.session.rollback()
    except Exception:  # the session may be unusable; the error response matters more
        log.debug("rollback after a failed request failed", exc_info=True)


def _request_line() -> str:
    from flask import request

    return f"{request.method} {request.path}"
