"""Optional per-token rate limit (Flask-Limiter): `dacc.rate_limit`, 429 JSON + Retry-After.

Counted per bearer token (a hash of it, never the secret), or per client address for
requests without one; /status is never limited. In memory (per process) by default,
shared through Redis when `dacc.rate_limit_storage` names one.
"""

from __future__ import annotations

import hashlib

from flask import Flask, request
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address

EXEMPT_PATHS = ("/status",)


def _key() -> str:
    header = request.headers.get("Authorization", "")
    if header:
        return "token:" + hashlib.sha256(header.encode("utf-8", "replace")).hexdigest()[:32]
    return "address:" + get_remote_address()


limiter = Limiter(key_func=_key)


def init_rate_limit(app: Flask, *, rate_limit: str | None, storage: str) -> None:
    app.config["RATELIMIT_ENABLED"] = rate_limit is not None
    app.config["RATELIMIT_DEFAULT"] = rate_limit or ""
    app.config["RATELIMIT_STORAGE_URI"] = storage
    app.config["RATELIMIT_HEADERS_ENABLED"] = True
    limiter.init_app(app)


@limiter.request_filter
def _exempt() -> bool:
    return request.path in EXEMPT_PATHS
