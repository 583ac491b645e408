"""`flask purge ...`: delete raw measures that are aggregated and past their retention."""

import click
from flask.cli import AppGroup

from dacc import purge
from dacc.cli.errors import cli_errors
from dacc.cli.table import echo_table

purge_group = AppGroup("purge", help="Delete raw measures ingested more than DAYS days ago, once aggregated.")

_DAYS_HELP = "Age limit in days (default: the definition's rawRetentionDays, else 90)."
_BATCH_HELP = "Rows per delete transaction."


@purge_group.command("measure")
@click.argument("name")
@click.option("-d", "--days", type=click.IntRange(min=1), help=_DAYS_HELP)
@click.option(
    "--batch-size", type=click.IntRange(min=1), default=purge.BATCH_SIZE, show_default=True, help=_BATCH_HELP
)
@cli_errors
def measure_command(name, days, batch_size):
    """Purge the raw measures of measure NAME.

    Deletes nothing, and exits 1, when a raw measure past the cut-off is not
    aggregated yet.
    """
    result = purge.purge_raw_measures(name, days=days, batch_size=batch_size, on_batch=_progress(batch_size))
    _echo_summary([result])
    if not result.ok:
        raise click.ClickException(f"measure '{name}': {result.status}")


@purge_group.command("all-measures")
@click.option(
    "-d",
    "--days",
    type=click.IntRange(min=1),
    help="Age limit in days for every measure (default: each definition's" " rawRetentionDays, else 90).",
)
@click.option(
    "--batch-size", type=click.IntRange(min=1), default=purge.BATCH_SIZE, show_default=True, help=_BATCH_HELP
)
@cli_errors
def all_measures_command(days, batch_size):
    """Purge the raw measures of every measure.

    A measure with raw measures past its cut-off that are not aggregated yet is left
    whole and reported; the others are purged. Exits 1 only if a purge failed.
    """
    results = purge.purge_all_measures(days=days, batch_size=batch_size, on_batch=_progress(batch_size))
    _echo_summary(results)
    failed = [r.measure_name for r in results if r.error]
    if failed:
        raise click.ClickException(f"purge failed for: {', '.join(failed)}")


def _progress(batch_size: int):
    """Echo progress to stderr, only for purges that take several batches."""

    def echo(result: purge.PurgeResult) -> None:
        if result.deleted >= batch_size:
            click.echo(f"{result.measure_name}: {result.deleted} rows deleted so far", err=True)

    return echo


def _echo_summary(results: list[purge.PurgeResult]) -> None:
    header = ("measure", "days", "cut-off", "deleted", "stamped", "seconds", "status")
    rows = [
        (
            r.measure_name,
            str(r.days) if r.days else "-",
            r.cutoff.strftime("%Y-%m-%d %H:%M") if r.cutoff else "-",
            str(r.deleted),
            str(r.stamped),
            f"{r.seconds:.1f}",
            r.status,
        )
        for r in results
    ]
    echo_table(header, rows)
    deleted = sum(r.deleted for r in results)
    seconds = sum(r.seconds for r in results)
    click.echo(f"{deleted} raw measure(s) deleted in {seconds:.1f} s")


COMMANDS = [purge_group]
