"""`flask token ...` commands."""

import sqlalchemy as sa

from dacc.db import db
from dacc.models import ApiToken


def _secret(result) -> str:
    return result.stdout.strip().splitlines()[-1]


def test_create_prints_the_secret_alone_on_the_last_line(runner, client):
    result = runner.invoke(args=["token", "create", "myorg", "--label", "ci"])
    assert result.exit_code == 0, result.output
    secret = _secret(result)
    assert secret.startswith("dacc_") and " " not in secret
    response = client.get("/whoami", headers={"Authorization": f"Bearer {secret}"})
    assert response.get_json()["org"] == "myorg"


def test_create_with_scope_and_expiry(runner, app):
    result = runner.invoke(args=["token", "create", "o", "--scope", "aggregate:read", "--expires-in", "3"])
    assert result.exit_code == 0, result.output
    token = db.session.scalar(sa.select(ApiToken))
    assert token.scopes == ["aggregate:read"]
    assert token.expires_at is not None


def test_create_with_unknown_scope_fails(runner, app):
    result = runner.invoke(args=["token", "create", "o", "--scope", "root"])
    assert result.exit_code == 2
    assert db.session.scalar(sa.select(sa.func.count()).select_from(ApiToken)) == 0


def test_create_with_a_label_over_200_characters_is_refused(runner, app):
    result = runner.invoke(args=["token", "create", "o", "--label", "x" * 201])
    assert result.exit_code == 1
    assert result.output.strip() == "Error: label: must be text of at most 200 characters"
    assert db.session.scalar(sa.select(sa.func.count()).select_from(ApiToken)) == 0
    assert runner.invoke(args=["token", "create", "o", "--label", "x" * 200]).exit_code == 0
    assert db.session.scalar(sa.select(ApiToken.label)) == "x" * 200


def test_get_lists_tokens_without_secrets(runner):
    secret = _secret(runner.invoke(args=["token", "create", "myorg", "--label", "first"]))
    result = runner.invoke(args=["token", "get", "myorg"])
    assert result.exit_code == 0
    assert "first" in result.output and secret[:12] in result.output
    assert secret not in result.output


def test_get_unknown_org_exits_non_zero(runner):
    result = runner.invoke(args=["token", "get", "nobody"])
    assert result.exit_code == 1
    assert "no token for org 'nobody'" in result.output


def test_update_rotates_and_the_old_secret_gets_401(runner, client):
    old = _secret(runner.invoke(args=["token", "create", "myorg"]))
    result = runner.invoke(args=["token", "update", "myorg"])
    assert result.exit_code == 0, result.output
    new = _secret(result)
    assert new != old
    assert client.get("/whoami", headers={"Authorization": f"Bearer {old}"}).status_code == 401
    assert client.get("/whoami", headers={"Authorization": f"Bearer {new}"}).status_code == 200


def test_revoke_makes_the_token_401(runner, client):
    secret = _secret(runner.invoke(args=["token", "create", "myorg"]))
    headers = {"Authorization": f"Bearer {secret}"}
    assert client.get("/whoami", headers=headers).status_code == 200
    token_id = db.session.scalar(sa.select(ApiToken.id))
    result = runner.invoke(args=["token", "revoke", str(token_id)])
    assert result.exit_code == 0
    assert client.get("/whoami", headers=headers).status_code == 401


def test_revoke_unknown_id_exits_1(runner):
    result = runner.invoke(args=["token", "revoke", "999"])
    assert result.exit_code == 1
    assert "no token with id 999" in result.output


def test_delete_org_asks_for_confirmation(runner, app):
    runner.invoke(args=["token", "create", "myorg"])
    result = runner.invoke(args=["token", "delete-org", "myorg"], input="n\n")
    assert result.exit_code == 1
    assert db.session.scalar(sa.select(sa.func.count()).select_from(ApiToken)) == 1
    result = runner.invoke(args=["token", "delete-org", "myorg", "--yes"])
    assert result.exit_code == 0
    assert "deleted 1 token" in result.output
    assert db.session.scalar(sa.select(sa.func.count()).select_from(ApiToken)) == 0


def test_create_with_an_escape_sequence_in_the_org_is_one_line_and_exit_1(runner, app):
    result = runner.invoke(args=["token", "create", "\x1b[2Jorg"])
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        "Error: org: must be 1 to 100 printable characters (no control characters)"
    ]
    assert db.session.scalar(sa.select(sa.func.count()).select_from(ApiToken)) == 0


def test_get_escapes_control_characters_already_stored(runner, app):
    """Rows written before the check (or by hand) are shown escaped, never raw."""
    secret = _secret(runner.invoke(args=["token", "create", "evil"]))
    db.session.execute(
        sa.update(ApiToken).values(org="evil\x1b[31m", label="line\nbreak\x07", app="a\x1b]0;t\x07")
    )
    db.session.commit()
    result = runner.invoke(args=["token", "get", "evil\x1b[31m"])
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output and "\x07" not in result.output
    header, row = result.output.splitlines()
    assert row.split()[:2] == ["1", "line\\nbreak\\x07"]
    assert row.split()[4] == "a\\x1b]0;t\\x07"
    assert secret[:12] in row
    revoked = runner.invoke(args=["token", "revoke", "1"])
    assert revoked.output.splitlines() == ["revoked token 1 of org evil\\x1b[31m"]
    missing = runner.invoke(args=["token", "get", "other\x1b[0m"])
    assert missing.exit_code == 1
    assert missing.output.splitlines() == ["Error: no token for org 'other\\x1b[0m'"]
