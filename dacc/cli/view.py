"""`flask view ...`: manage the filtered_aggregation materialized view."""

import click
from flask.cli import AppGroup

from dacc import filtered_view
from dacc.cli.errors import cli_errors

view_group = AppGroup("view", help="Manage the filtered_aggregation view that serves reads.")


@view_group.command("create-filtered-aggregation")
@cli_errors
def create_command():
    """Create the view (fails if it exists)."""
    filtered_view.create_filtered_view()
    click.echo(f"{filtered_view.VIEW} created")


@view_group.command("update-filtered-aggregation")
@cli_errors
def update_command():
    """Refresh the view from the aggregates, without blocking reads."""
    filtered_view.refresh_filtered_view()
    click.echo(f"{filtered_view.VIEW} refreshed")


@view_group.command("delete-filtered-aggregation")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@cli_errors
def delete_command(yes):
    """Drop the view: /aggregate fails until it is created again."""
    if not yes:
        click.confirm(f"Drop {filtered_view.VIEW}? Reads fail until it is created again.", abort=True)
    filtered_view.delete_filtered_view()
    click.echo(f"{filtered_view.VIEW} deleted")


@view_group.command("recreate-filtered-aggregation")
@cli_errors
def recreate_command():
    """Build the view afresh and swap it in (reads never see it missing)."""
    filtered_view.recreate_filtered_view()
    click.echo(f"{filtered_view.VIEW} recreated")


COMMANDS = [view_group]
