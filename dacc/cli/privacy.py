"""`flask privacy check`: audit everything served for recoverable small aggregates."""

import click
from flask.cli import AppGroup

from dacc import publication
from dacc.cli.errors import cli_errors

privacy_group = AppGroup("privacy", help="Audit what /aggregate has served.")


@privacy_group.command("check")
@click.argument("name", required=False)
@click.option("--date", "day", type=click.DateTime(["%Y-%m-%d"]), help="Only cells starting that day.")
@cli_errors
def check_command(name, day):
    """List every set of 1..k-1 contributions whose total the served rows give away
    (all measures, or NAME); exit 1 if there is any."""
    found = publication.check_privacy(name, day=day)
    for d in found:
        click.echo(
            f"{d.measure_name} {d.start_date:%Y-%m-%d} {d.created_by}:"
            f" {d.contributions} contribution(s) recoverable"
        )
        click.echo("  pieces: " + "; ".join(d.pieces))
        click.echo("  from:   " + "; ".join(d.rows))
    if found:
        raise click.ClickException(f"{len(found)} recoverable aggregate(s) of 1..k-1 contributions")
    click.echo("no recoverable aggregate of 1..k-1 contributions")


COMMANDS = [privacy_group]
