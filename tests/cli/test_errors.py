"""cli_errors: domain and database errors become one line and exit 1, in every command group."""

import pytest
import sqlalchemy as sa

from dacc import definitions, publication, tokens
from dacc.db import db


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
