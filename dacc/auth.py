"""Bearer-token authentication for routes."""

import functools

from flask import request

from dacc.errors import Forbidden, Unauthorized
from dacc.tokens import TokenIdentity, authenticate

ENVIRON_KEY = "dacc.token"


def current_token() -> TokenIdentity:
    """The authenticated token of this request; raises Unauthorized without one."""
    # Kept on the request, not on `g`: an app context (and its `g`) may outlive a request.
    identity = request.environ.get(ENVIRON_KEY)
    if identity is None:
        header = request.headers.get("Authorization", "")
        scheme, _, secret = header.partition(" ")
        if not header:
            raise Unauthorized("missing Authorization header (expected 'Bearer <token>')")
        if scheme.lower() != "bearer" or not secret.strip():
            raise Unauthorized("malformed Authorization header (expected 'Bearer <token>')")
        identity = request.environ[ENVIRON_KEY] = authenticate(secret.strip())
    return identity


def require_scope(scope: str):
    """Route decorator: 401 without a live token, 403 when it lacks `scope`."""

    def decorator(view):
        @functools.wraps(view)
        def wrapper(*args, **kwargs):
            if scope not in current_token().scopes:
                raise Forbidden(f"this token lacks the '{scope}' scope")
            return view(*args, **kwargs)

        return wrapper

    return decorator
