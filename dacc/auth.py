"""Bearer-token authentication for routes."""

import functools

from flask import request

from dacc.errors import Forbidden, Unauthorized
from dacc.tokens import TokenIdentity, authenticate

ENVIRON_KEY = "dacc.token"
FAILURE_KEY = "dacc.token_failure"


def current_token() -> TokenIdentity:
    """The authenticated token of this request; raises Unauthorized without one."""
    # Kept on the request, not on `g`: an app context (and its `g`) may outlive a request.
    # Both outcomes are kept: the rate limiter asks before the view, which must get the
    # same answer without a second lookup.
    identity = request.environ.get(ENVIRON_KEY)
    if identity is None:
        failure = request.environ.get(FAILURE_KEY)
        if failure is not None:
            raise failure
        try:
            identity = _authenticate_request()
        except Exception as exc:
            request.environ[FAILURE_KEY] = exc
            raise
        request.environ[ENVIRON_KEY] = identity
    return identity


def _authenticate_request() -> TokenIdentity:
    """`Bearer <token>`: the scheme in any case, then one or more spaces (RFC 7235's
    `1*SP`); two Authorization headers (joined by the server with a comma) are refused."""
    header = request.headers.get("Authorization", "")
    scheme, _, secret = header.partition(" ")
    if not header:
        raise Unauthorized("missing Authorization header (expected 'Bearer <token>')")
    if scheme.lower() != "bearer" or not secret.strip(" "):
        raise Unauthorized("malformed Authorization header (expected 'Bearer <token>')")
    return authenticate(secret.strip(" "))


def require_scope(scope: str):
    """Route decorator: 401 without a live token, 403 when it lacks `scope`."""

    def decorator(view):
        @functools.wraps(view)
        def wrapper(*args, **kwargs):
            if scope not in current_token().scopes:
                raise Forbidden(f"this token lacks the '{scope}' scope")
            return view(*args, **kwargs)

        wrapper.required_scope = scope  # read by the tests that walk the url_map
        return wrapper

    return decorator
