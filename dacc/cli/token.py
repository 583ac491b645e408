"""`flask token ...`: create, list, rotate, revoke and delete API tokens."""

import click
from flask.cli import AppGroup

from dacc import tokens
from dacc.cli.errors import cli_errors
from dacc.cli.table import echo_table, escape_unprintable

token_group = AppGroup("token", help="Manage API tokens (secrets are shown once).")


@token_group.command("create")
@click.argument("org")
@click.option("--label", help="Free text to recognise the token.")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    type=click.Choice(tokens.SCOPES),
    help="Repeat for several; default: measure:write and aggregate:read.",
)
@click.option("--expires-in", type=click.IntRange(min=1), metavar="DAYS", help="Lifetime in days.")
@click.option(
    "--app", metavar="SLUG", help="Bind the token to one app: its measures must carry createdBy SLUG."
)
@cli_errors
def create_command(org, label, scopes, expires_in, app):
    """Create a token for ORG and print its secret (last line, shown once)."""
    token, secret = tokens.create_token(
        org, label=label, scopes=scopes or tokens.DEFAULT_SCOPES, expires_in_days=expires_in, app=app
    )
    bound = f", app {app}" if app else ""
    click.echo(f"created token {token.id} for org {org} ({', '.join(token.scopes)}{bound})", err=True)
    click.echo("store this secret now, it will not be shown again:", err=True)
    click.echo(secret)


@token_group.command("get")
@click.argument("org")
@cli_errors
def get_command(org):
    """List ORG's tokens (never their secrets)."""
    rows = tokens.list_tokens(org)
    if not rows:
        raise click.ClickException(f"no token for org '{escape_unprintable(org)}'")
    header = ("id", "label", "prefix", "scopes", "app", "created", "last used", "expires", "revoked")
    table = [
        (
            str(t.id),
            t.label or "-",
            t.prefix + "…",
            ",".join(t.scopes),
            t.app or "-",
            _when(t.created_at),
            _when(t.last_used_at),
            _when(t.expires_at),
            _when(t.revoked_at),
        )
        for t in rows
    ]
    echo_table(header, table)


@token_group.command("update")
@click.argument("org")
@click.option("--id", "token_id", type=int, help="Which token, when the org has several.")
@cli_errors
def update_command(org, token_id):
    """Rotate ORG's token: print a new secret; the old one stops working."""
    token, secret = tokens.rotate_token(org, token_id=token_id)
    click.echo(
        f"rotated token {token.id} of org {escape_unprintable(org)}; the old secret no longer works", err=True
    )
    click.echo("store this secret now, it will not be shown again:", err=True)
    click.echo(secret)


@token_group.command("revoke")
@click.argument("token_id", type=int)
@cli_errors
def revoke_command(token_id):
    """Revoke the token with id TOKEN_ID."""
    token = tokens.revoke_token(token_id)
    click.echo(f"revoked token {token.id} of org {escape_unprintable(token.org)}")


@token_group.command("delete-org")
@click.argument("org")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@cli_errors
def delete_org_command(org, yes):
    """Delete every token of ORG."""
    if not yes:
        click.confirm(f"Delete every token of org '{escape_unprintable(org)}'?", abort=True)
    count = tokens.delete_org_tokens(org)
    if count == 0:
        raise click.ClickException(f"no token for org '{escape_unprintable(org)}'")
    click.echo(f"deleted {count} token(s) of org {escape_unprintable(org)}")


def _when(value) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value else "-"


COMMANDS = [token_group]
