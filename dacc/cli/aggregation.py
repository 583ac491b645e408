"""Aggregation commands, under their DACC names: compute-aggregation, compute-all-aggregations,
compute-wildcard-aggregate, delete-aggregations-from-date."""

import time

import click

from dacc.aggregation import compute
from dacc.cli.errors import cli_errors


@click.command("compute-aggregation")
@click.argument("name")
@click.option("--force", is_flag=True, help="Run even if the execution frequency has not elapsed.")
@cli_errors
def compute_aggregation_command(name, force):
    """Aggregate the raw measures of NAME that arrived since its previous run."""
    result = compute.compute_aggregation(name, force=force)
    _echo(result)
    _summary([result], result.seconds)


@click.command("compute-all-aggregations")
@click.option("--force", is_flag=True, help="Run even if execution frequencies have not elapsed.")
@cli_errors
def compute_all_aggregations_command(force):
    """Aggregate the new raw measures of every measure."""
    started = time.monotonic()
    run = compute.compute_all_aggregations(force=force)
    for result in run.results:
        _echo(result)
    _summary(run.results, time.monotonic() - started)
    failed = [r.measure_name for r in run.results if not r.ok]
    if failed:
        raise click.ClickException(f"aggregation failed for: {', '.join(failed)}")


@click.command("compute-wildcard-aggregate")
@click.argument("name")
@click.argument("groups")
@click.option(
    "--from-date", type=click.DateTime(["%Y-%m-%d"]), help="First ingestion day (default 1970-01-01)."
)
@click.option(
    "--to-date", type=click.DateTime(["%Y-%m-%d"]), help="Last ingestion day, included (default today)."
)
@click.option(
    "--allow-purged-loss",
    is_flag=True,
    help="Recompute even if rows of the level lost raw measures to a purge (that data is lost).",
)
@cli_errors
def compute_wildcard_aggregate_command(name, groups, from_date, to_date, allow_purged_loss):
    """Aggregate NAME with GROUPS (e.g. group1,group2) merged into {key: "*"}.

    Replaces all earlier rows of that level with the window's.
    """
    result = compute.compute_wildcard_aggregate(
        name,
        [g.strip() for g in groups.split(",")],
        from_date=from_date.date() if from_date else None,
        to_date=to_date.date() if to_date else None,
        allow_purged_loss=allow_purged_loss,
    )
    for start, count in result.per_start_date.items():
        click.echo(f"{start:%Y-%m-%d}: {count} wildcard aggregate(s)")
    click.echo(
        f"{result.count} wildcard aggregate(s) computed for {name} ({','.join(result.groups)})"
        f" in {result.seconds:.2f} s; {result.published} published, {result.withheld} withheld"
    )


@click.command("delete-aggregations-from-date")
@click.argument("name")
@click.argument("date", type=click.DateTime(["%Y-%m-%d"]), metavar="DATE")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option(
    "--allow-purged-loss",
    is_flag=True,
    help="Also delete aggregates whose raw measures were partly purged (that data is lost).",
)
@cli_errors
def delete_aggregations_from_date_command(name, date, yes, allow_purged_loss):
    """Delete NAME's aggregates from DATE (YYYY-MM-DD) on; the next run rebuilds them.

    Refuses (exit 1) when some of them hold raw measures that were purged, unless
    --allow-purged-loss is given.
    """
    aligned, purged = compute.count_purged_aggregations_from_date(name, date.date())
    if purged:
        if not allow_purged_loss:
            raise click.ClickException(compute.purged_loss_message(name, aligned, purged))
        click.echo(
            f"warning: {purged} aggregate(s) of {name} from {aligned:%Y-%m-%d} on hold purged"
            " raw measures: they will be rebuilt from the raw measures left, that data is lost",
            err=True,
        )
    if not yes:
        click.confirm(f"Delete the aggregates of {name} from {date:%Y-%m-%d} on?", abort=True)
    aligned, deleted = compute.delete_aggregations_from_date(
        name, date.date(), allow_purged_loss=allow_purged_loss
    )
    click.echo(
        f"{deleted} aggregate(s) of {name} deleted from {aligned:%Y-%m-%d} on;"
        " the next compute-aggregation rebuilds them from the raw measures"
    )


def _echo(result: compute.AggregationResult) -> None:
    if result.error:
        click.echo(f"{result.measure_name}: failed: {result.error}", err=True)
    elif result.skipped:
        click.echo(f"{result.measure_name}: skipped: {result.skipped}")
    else:
        click.echo(
            f"{result.measure_name}: {result.raw_read} raw measures read,"
            f" {result.inserted} aggregates inserted, {result.updated} updated,"
            f" {result.refused} refused, {result.seconds:.2f} s"
        )
        click.echo(f"{result.measure_name}: {result.published} row(s) published, {result.withheld} withheld")
        if result.refused:
            click.echo(
                f"{result.measure_name}: {result.refused} raw measure(s) moved to"
                f" refused_raw_measure ({compute.sql.REFUSED_REASON})",
                err=True,
            )


def _summary(results, seconds: float) -> None:
    ran = [r for r in results if r.ok and not r.skipped]
    click.echo(
        f"{len(ran)} measure(s) aggregated, {sum(1 for r in results if r.skipped)} skipped,"
        f" {sum(1 for r in results if not r.ok)} failed:"
        f" {sum(r.raw_read for r in ran)} raw measures read,"
        f" {sum(r.inserted for r in ran)} aggregates inserted,"
        f" {sum(r.updated for r in ran)} updated, {sum(r.refused for r in ran)} refused"
        f" in {seconds:.2f} s"
    )


COMMANDS = [
    compute_aggregation_command,
    compute_all_aggregations_command,
    compute_wildcard_aggregate_command,
    delete_aggregations_from_date_command,
]
