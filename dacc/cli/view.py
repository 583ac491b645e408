"""`flask view ...`: publish what is pending, republish, and the filtered_aggregation view."""

import click
from flask.cli import AppGroup

from dacc import publication
from dacc.cli.errors import cli_errors

view_group = AppGroup("view", help="Publish aggregates to the ledger that /aggregate serves (and its view).")


@view_group.command("create-filtered-aggregation")
@cli_errors
def create_command():
    """Create the filtered_aggregation view over the ledger, then publish what is pending."""
    publication.create_view()
    click.echo(f"{publication.VIEW} created")
    _summary(publication.publish_pending())


@view_group.command("update-filtered-aggregation")
@cli_errors
def update_command():
    """Publish what is pending: cells whose period closed, changes not yet published."""
    _summary(publication.publish_pending())
    click.echo(f"{publication.VIEW} refreshed")


@view_group.command("delete-filtered-aggregation")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@cli_errors
def delete_command(yes):
    """Drop the filtered_aggregation view (external readers); /aggregate keeps serving."""
    if not yes:
        click.confirm(
            f"Drop {publication.VIEW}? External readers of it fail until it is created again.",
            abort=True,
        )
    publication.delete_view()
    click.echo(f"{publication.VIEW} deleted")


@view_group.command("recreate-filtered-aggregation")
@click.option("--measure", "name", help="Republish this measure only (default: every measure).")
@cli_errors
def recreate_command(name):
    """Decide every closed cell again (after a rule change), audited against what was
    already served: nothing served disappears; new rows and versions pass every rule."""
    publication.create_view(replace=True)
    _summary(publication.publish_pending(names=[name] if name else None, full=True))
    click.echo(f"{publication.VIEW} recreated")


def _summary(results) -> None:
    for r in results:
        if r.skipped:
            click.echo(f"{r.measure_name}: skipped (another run holds it; it publishes when done)")
        elif r.hierarchies:
            click.echo(
                f"{r.measure_name}: {r.published} row(s) published, {r.withheld} withheld,"
                f" {r.hierarchies} day(s)/app(s) decided in {r.seconds:.3f} s"
            )


COMMANDS = [view_group]
