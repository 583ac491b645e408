"""cli_errors: domain and database errors become one line and exit 1, in every command group."""

import os
import subprocess
import sys

import pytest
import sqlalchemy as sa

from dacc import definitions, publication, tokens
from dacc.db import db
from dacc.models import ApiToken


def _division_by_zero(*args, **kwargs):
    """A real database error, raised where the domain function would run."""
    db.session.execute(sa.text("SELECT 1/0"))


@pytest.mark.parametrize(
    "module, function, args",
    [
        (tokens, "list_tokens", ["token", "get", "org"]),
        (tokens, "create_token", ["token", "create", "org"]),
        (definitions, "list_definitions", ["definitions", "list"]),
        (definitions, "remove_definition", ["definitions", "remove", "m", "--yes"]),
        (publication, "publish_pending", ["view", "update-filtered-aggregation"]),
        (publication, "create_view", ["view", "create-filtered-aggregation"]),
        (publication, "check_privacy", ["privacy", "check"]),
    ],
)
def test_a_database_error_is_one_line_and_exit_1(runner, monkeypatch, module, function, args):
    monkeypatch.setattr(module, function, _division_by_zero)
    result = runner.invoke(args=args)
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == ["Error: failed: division by zero"]
    assert isinstance(result.exception, SystemExit)
    # The failed transaction was rolled back: the session works again.
    assert db.session.execute(sa.text("SELECT 1")).scalar() == 1


@pytest.mark.parametrize(
    "args, message",
    [
        ([b"token", b"create", b"\xff"], "Error: ORG: not valid UTF-8: b'\\xff'"),
        (
            [b"token", b"create", b"org", b"--label", b"caf\xe9"],
            "Error: --label: not valid UTF-8: b'caf\\xe9'",
        ),
        ([b"definitions", b"remove", b"m\xc3", b"--yes"], "Error: NAME: not valid UTF-8: b'm\\xc3'"),
        ([b"purge", b"measure", b"\xfe\xff"], "Error: NAME: not valid UTF-8: b'\\xfe\\xff'"),
    ],
)
def test_an_argument_that_is_not_utf8_is_one_line_and_exit_2(tmp_path, args, message):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DACC_") and k != "DATABASE_URL"}
    # A contributor secret of its own: else a fresh instance logs that it made one.
    (tmp_path / "config.yml").write_text("dacc: {contributor_secret: 0123456789abcdef0123456789abcdef}\n")
    env.update(DACC_DATA_DIR=str(tmp_path / "pgdata"), DACC_CONFIG=str(tmp_path / "config.yml"))
    env.update(FLASK_APP="dacc", LC_ALL="C.UTF-8")
    result = subprocess.run(
        [sys.executable.encode(), b"-m", b"flask", *args], env=env, capture_output=True, timeout=60
    )
    assert result.returncode == 2
    assert result.stderr.decode().splitlines() == [message]
    # Refused before the command ran: no database was even started.
    assert not (tmp_path / "pgdata").exists()


def test_an_undecodable_argument_writes_nothing(runner, app):
    result = runner.invoke(args=["token", "create", "org\udcff"])
    assert result.exit_code == 2
    assert result.output.splitlines() == ["Error: ORG: not valid UTF-8: b'org\\xff'"]
    assert db.session.scalar(sa.select(sa.func.count()).select_from(ApiToken)) == 0
