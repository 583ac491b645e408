"""Token domain rules and bearer authentication on a route."""

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from dacc.db import db
from dacc.errors import BadRequest, NotFound
from dacc.models import ApiToken
from dacc.tokens import create_token, revoke_token, rotate_token


def test_secret_is_long_random_and_stored_only_hashed(app):
    token, secret = create_token("acme")
    assert secret.startswith("dacc_") and len(secret) >= 5 + 43
    rows = db.session.execute(sa.text("SELECT * FROM api_token")).mappings().all()
    assert len(rows) == 1
    for value in rows[0].values():
        assert secret not in str(value)
    assert rows[0]["prefix"] == secret[:12]


def test_two_tokens_never_share_a_secret(app):
    secrets_ = {create_token("acme")[1] for _ in range(20)}
    assert len(secrets_) == 20


def test_whoami_with_a_valid_token(client, make_token):
    token, secret = make_token("acme", scopes=["aggregate:read"])
    response = client.get("/whoami", headers={"Authorization": f"Bearer {secret}"})
    assert response.status_code == 200
    assert response.get_json() == {"org": "acme", "scopes": ["aggregate:read"], "tokenId": token.id}
    # The request ran in a session of its own: read the row, not this session's copy.
    db.session.refresh(token)
    assert token.last_used_at is not None


@pytest.mark.parametrize(
    "header, fault",
    [
        (None, "missing Authorization"),
        ("Basic abc", "malformed Authorization"),
        ("Bearer", "malformed Authorization"),
        ("Bearer not-a-token", "malformed bearer token"),
        ("Bearer dacc_" + "A" * 43, "unknown bearer token"),
    ],
)
def test_bad_bearer_is_401_json(client, header, fault):
    headers = {"Authorization": header} if header else {}
    response = client.get("/whoami", headers=headers)
    assert response.status_code == 401
    assert fault in response.get_json()["error"]
    assert response.headers["WWW-Authenticate"] == "Bearer"


def test_revoked_token_is_401_at_once_in_this_process(client, make_token):
    token, secret = make_token("acme")
    headers = {"Authorization": f"Bearer {secret}"}
    assert client.get("/whoami", headers=headers).status_code == 200
    revoke_token(token.id)
    response = client.get("/whoami", headers=headers)
    assert response.status_code == 401
    assert "revoked" in response.get_json()["error"]


def test_expired_token_is_401(client, make_token):
    token, secret = make_token("acme")
    db.session.execute(
        sa.update(ApiToken)
        .where(ApiToken.id == token.id)
        .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
    )
    db.session.commit()
    response = client.get("/whoami", headers={"Authorization": f"Bearer {secret}"})
    assert response.status_code == 401
    assert "expired" in response.get_json()["error"]


def test_revocation_reaches_another_process_cache_within_its_ttl(app, client, make_token):
    """Another server process only learns of a revocation when its cache entry ends."""
    token, secret = make_token("acme")
    headers = {"Authorization": f"Bearer {secret}"}
    assert client.get("/whoami", headers=headers).status_code == 200
    db.session.execute(sa.update(ApiToken).values(revoked_at=sa.func.now()))
    db.session.commit()
    cache = app.extensions["dacc_token_cache"]
    assert client.get("/whoami", headers=headers).status_code == 200  # still cached
    for digest, (_, identity) in list(cache.items()):
        cache[digest] = (0, identity)  # the TTL has run out
    assert client.get("/whoami", headers=headers).status_code == 401
    assert app.config["DACC"].token_cache_seconds <= 60


def test_rotate_gives_a_new_secret_and_kills_the_old(client, make_token):
    _, old = make_token("acme")
    _, new = rotate_token("acme")
    assert new != old
    assert client.get("/whoami", headers={"Authorization": f"Bearer {old}"}).status_code == 401
    assert client.get("/whoami", headers={"Authorization": f"Bearer {new}"}).status_code == 200


def test_rotate_with_several_active_tokens_needs_an_id(app, make_token):
    first, _ = make_token("acme")
    make_token("acme")
    with pytest.raises(BadRequest, match="several active tokens"):
        rotate_token("acme")
    token, _ = rotate_token("acme", token_id=first.id)
    assert token.id == first.id


def test_rotate_unknown_org_is_not_found(app):
    with pytest.raises(NotFound):
        rotate_token("nobody")


@pytest.mark.parametrize("scopes", [["admin"], []])
def test_bad_scopes_are_refused(app, scopes):
    with pytest.raises(BadRequest, match="scope"):
        create_token("acme", scopes=scopes)


@pytest.mark.parametrize(
    "org, fields, message",
    [
        ("red\x1b[31m", {}, "org: must be 1 to 100 printable characters (no control characters)"),
        ("a\nb", {}, "org: must be 1 to 100 printable characters (no control characters)"),
        ("acme", {"label": "ci\x1b]0;title\x07"}, "label: must not hold control characters"),
        (
            "acme",
            {"app": "app\x9b2J"},
            "app: must be 1 to 100 printable characters (the app's createdBy slug)",
        ),
    ],
)
def test_text_with_control_characters_is_refused_at_creation(app, org, fields, message):
    with pytest.raises(BadRequest) as info:
        create_token(org, **fields)
    assert info.value.message == message
    assert db.session.scalar(sa.select(sa.func.count()).select_from(ApiToken)) == 0
