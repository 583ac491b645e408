"""`flask embedded start|stop|status`: the embedded PostgreSQL, on purpose."""

from pathlib import Path

import click
from flask import current_app
from flask.cli import AppGroup

from dacc.embedded import clear_stopped, is_running, start_embedded, stop_embedded, stopped_on_purpose

embedded_group = AppGroup("embedded", help="The embedded PostgreSQL (when no database is configured).")


def _data_dir() -> str:
    config = current_app.config["DACC"]
    if not config.embedded:
        raise click.ClickException("a database is configured: the embedded PostgreSQL is not used")
    return config.data_dir


@embedded_group.command("stop")
def stop_command():
    """Stop it on purpose: nothing starts it again until `flask embedded start`."""
    data_dir = _data_dir()
    ran = stop_embedded(data_dir)
    click.echo(
        f"embedded PostgreSQL in {data_dir}: {'stopped' if ran else 'was not running'};"
        " servers answer 503 and will not restart it until `flask embedded start`"
    )


@embedded_group.command("start")
def start_command():
    """Start it again (and migrate it) after `flask embedded stop`."""
    from dacc.migrations_runner import upgrade_to_head

    data_dir = _data_dir()
    clear_stopped(data_dir)
    start_embedded(data_dir)
    upgrade_to_head()
    click.echo(f"embedded PostgreSQL in {data_dir}: running")


@embedded_group.command("status")
def status_command():
    """Say whether it runs, and whether it was stopped on purpose."""
    data_dir = _data_dir()
    state = "running" if is_running(Path(data_dir)) else "not running"
    if stopped_on_purpose(data_dir):
        state += " (stopped on purpose: `flask embedded start` starts it)"
    click.echo(f"embedded PostgreSQL in {data_dir}: {state}")


COMMANDS = [embedded_group]
