"""API tokens: creation, rotation, revocation and the check behind every request."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import logging
import re
import secrets
import time
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from flask import current_app

from dacc.db import db
from dacc.errors import BadRequest, NotFound, Unauthorized
from dacc.models import ApiToken

log = logging.getLogger(__name__)

SCOPES = ("measure:write", "aggregate:read", "metrics:read")
DEFAULT_SCOPES = ("measure:write", "aggregate:read")
"""What `flask token create` gives without --scope; metrics:read is asked for by name."""
SECRET_PREFIX = "dacc_"
SECRET_SHAPE = re.compile(r"^dacc_[A-Za-z0-9_-]{43}$")
DISPLAY_PREFIX_LENGTH = 12
LABEL_LENGTH = 200
"""The api_token.label column's length."""


@dataclasses.dataclass(frozen=True)
class TokenIdentity:
    """What a request's token allows; no secret in it."""

    id: int
    org: str
    scopes: frozenset[str]
    app: str | None = None
    """The one createdBy this token's measures may carry; None: any."""


def create_token(
    org: str, *, label=None, scopes=DEFAULT_SCOPES, expires_in_days=None, app: str | None = None
) -> tuple[ApiToken, str]:
    """Store a new token for `org`; return it with its secret, which is never shown again.

    `app`: bind the token to one app, whose slug its measures must carry as createdBy.
    """
    _check_org(org)
    _check_label(label)
    _check_app(app)
    scopes = _check_scopes(scopes)
    secret = _new_secret()
    token = ApiToken(
        org=org,
        label=label,
        app=app,
        scopes=list(scopes),
        secret_hash=hash_secret(secret),
        prefix=secret[:DISPLAY_PREFIX_LENGTH],
        expires_at=_expiry(expires_in_days),
    )
    db.session.add(token)
    db.session.commit()
    log.info("token %s created for org %s", token.id, org)
    return token, secret


def list_tokens(org: str) -> list[ApiToken]:
    return list(db.session.scalars(sa.select(ApiToken).where(ApiToken.org == org).order_by(ApiToken.id)))


def rotate_token(org: str, *, token_id: int | None = None) -> tuple[ApiToken, str]:
    """Give the org's active token a new secret; the old secret stops working now.

    With several active tokens, `token_id` says which. Raises NotFound or BadRequest.
    """
    active = [t for t in list_tokens(org) if _is_active(t)]
    if token_id is not None:
        active = [t for t in active if t.id == token_id]
    if not active:
        raise NotFound(f"no active token for org '{org}'" + (f" with id {token_id}" if token_id else ""))
    if len(active) > 1:
        ids = ", ".join(str(t.id) for t in active)
        raise BadRequest(f"org '{org}' has several active tokens ({ids}): choose one with --id")
    token = active[0]
    secret = _new_secret()
    token.secret_hash = hash_secret(secret)
    token.prefix = secret[:DISPLAY_PREFIX_LENGTH]
    db.session.commit()
    _forget_cached()
    log.info("token %s of org %s rotated", token.id, org)
    return token, secret


def revoke_token(token_id: int) -> ApiToken:
    token = db.session.get(ApiToken, token_id)
    if token is None:
        raise NotFound(f"no token with id {token_id}")
    if token.revoked_at is None:
        token.revoked_at = sa.func.now()
        db.session.commit()
    _forget_cached()
    log.info("token %s revoked", token_id)
    return token


def delete_org_tokens(org: str) -> int:
    """Delete every token of `org`; return how many went."""
    result = db.session.execute(sa.delete(ApiToken).where(ApiToken.org == org))
    db.session.commit()
    _forget_cached()
    return result.rowcount


def authenticate(secret: str) -> TokenIdentity:
    """Check a bearer secret; raise Unauthorized unless it is a live token.

    A process trusts a checked token for `token_cache_seconds` (≤ 60), so a revocation
    reaches every server process within that time.
    """
    if not SECRET_SHAPE.match(secret):
        raise Unauthorized("malformed bearer token")
    digest = hash_secret(secret)
    cache = _cache()
    now = time.monotonic()
    hit = cache.get(digest)
    if hit is not None and hit[0] > now:
        return hit[1]
    token = db.session.scalar(sa.select(ApiToken).where(ApiToken.secret_hash == digest))
    # The lookup is by hash; comparing again in constant time keeps the check honest
    # whatever the index does.
    if token is None or not hmac.compare_digest(token.secret_hash, digest):
        raise Unauthorized("unknown bearer token")
    if token.revoked_at is not None:
        raise Unauthorized("this token was revoked")
    if token.expires_at is not None and token.expires_at <= datetime.now(UTC):
        raise Unauthorized("this token has expired")
    identity = TokenIdentity(token.id, token.org, frozenset(token.scopes), token.app)
    expires_at = token.expires_at  # read before the commit expires it (a reload is a round trip)
    db.session.execute(sa.update(ApiToken).where(ApiToken.id == token.id).values(last_used_at=sa.func.now()))
    db.session.commit()
    ttl = current_app.config["DACC"].token_cache_seconds
    if expires_at is not None:
        ttl = min(ttl, (expires_at - datetime.now(UTC)).total_seconds())
    if ttl > 0:
        cache[digest] = (now + ttl, identity)
    return identity


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def _is_active(token: ApiToken) -> bool:
    if token.revoked_at is not None:
        return False
    return token.expires_at is None or token.expires_at > datetime.now(UTC)


def _expiry(days) -> datetime | None:
    if days is None:
        return None
    if days <= 0:
        raise BadRequest("expires-in: must be a positive number of days")
    return datetime.now(UTC) + timedelta(days=days)


def _check_org(org: str) -> None:
    # Printable: an org is shown by the CLI and in logs, where a control character or
    # a terminal escape sequence would act instead of showing.
    if not org or len(org) > 100 or not org.isprintable():
        raise BadRequest("org: must be 1 to 100 printable characters (no control characters)")


def _check_app(app) -> None:
    if app is not None and (not app or len(app) > 100 or not app.isprintable()):
        raise BadRequest("app: must be 1 to 100 printable characters (the app's createdBy slug)")


def _check_label(label) -> None:
    if label is not None and (not isinstance(label, str) or len(label) > LABEL_LENGTH):
        raise BadRequest(f"label: must be text of at most {LABEL_LENGTH} characters")
    if label is not None and not label.isprintable():
        raise BadRequest("label: must not hold control characters")


def _check_scopes(scopes) -> tuple[str, ...]:
    scopes = tuple(dict.fromkeys(scopes))
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown:
        raise BadRequest(f"scope: unknown scope '{unknown[0]}' (known: {', '.join(SCOPES)})")
    if not scopes:
        raise BadRequest("scope: at least one scope is needed")
    return scopes


def _cache() -> dict:
    return current_app.extensions.setdefault("dacc_token_cache", {})


def _forget_cached() -> None:
    _cache().clear()
