"""Optional per-token rate limit (Flask-Limiter): `dacc.rate_limit`, 429 JSON + Retry-After.

Counted per token (its id, once the request's bearer token checks out), else per client
address: respelling the header or guessing tokens never gives a fresh allowance.
/status is never limited. In memory (per process) by default, shared through Redis
when `dacc.rate_limit_storage` names one. While Redis cannot be reached, each process
counts in its own memory instead (a warning is logged; the shared count resumes once
Redis answers again): the limit is a protection, not worth refusing service for.
"""

from __future__ import annotations

import logging

from flask import Flask, request
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from sqlalchemy.exc import SQLAlchemyError

from dacc.auth import current_token
from dacc.errors import DaccError

log = logging.getLogger(__name__)

EXEMPT_PATHS = ("/status",)
EXTENSION_KEY = "dacc_limiter"
REDIS_TIMEOUT_SECONDS = 0.5
"""Connect and read timeouts towards Redis: a request never waits long on its limiter."""


def _key() -> str:
    if request.headers.get("Authorization"):
        try:
            return f"token:{current_token().id}"
        except (DaccError, SQLAlchemyError):
            # No usable token, or no database to tell: the view raises the same error
            # (remembered by current_token) and answers 401 or 503.
            pass
    return "address:" + get_remote_address()


def _exempt() -> bool:
    return request.path in EXEMPT_PATHS


def init_rate_limit(app: Flask, *, rate_limit: str | None, storage: str) -> None:
    """Give `app` a limiter of its own (Flask-Limiter keeps its settings and counters on
    the Limiter object: one shared by several apps would take the last one's)."""
    if rate_limit is None:
        return
    options = {}
    if storage.startswith(("redis://", "rediss://")):
        options = {"socket_connect_timeout": REDIS_TIMEOUT_SECONDS, "socket_timeout": REDIS_TIMEOUT_SECONDS}
    limiter = Limiter(
        key_func=_key,
        default_limits=[rate_limit],
        storage_uri=storage,
        storage_options=options,
        headers_enabled=True,
        in_memory_fallback_enabled=True,
    )
    # Its warnings (Redis unreachable, recovered) go where DACC's records go.
    limiter.logger = log
    limiter.request_filter(_exempt)
    limiter.init_app(app)
    app.extensions[EXTENSION_KEY] = limiter
