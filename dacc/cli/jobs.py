"""`flask jobs run`: every periodic job, in order, under an advisory lock."""

import time

import click
from flask.cli import AppGroup

from dacc import jobs
from dacc.cli.errors import cli_errors
from dacc.cli.table import echo_table
from dacc.errors import Conflict

jobs_group = AppGroup("jobs", help="Periodic jobs (run them from cron or the scheduler).")


@jobs_group.command("run")
@cli_errors
def run_command():
    """Aggregate due measures, refresh the view, purge by retention; print a summary.

    Exits 1 if any step failed (after running the others). Exits 0 without doing
    anything, saying so, while another `jobs run` is in progress.
    """
    started = time.monotonic()
    try:
        results = jobs.run_jobs(on_step=_progress)
    except Conflict as exc:
        click.echo(f"{exc.message}: skipped", err=True)
        return
    rows = [(r.step, r.measure_name or "-", r.status, f"{r.seconds:.1f}", r.detail) for r in results]
    echo_table(("step", "measure", "status", "seconds", "detail"), rows)
    failed = [r for r in results if r.failed]
    click.echo(
        f"{len(results)} step(s) in {time.monotonic() - started:.1f} s: {len(failed)} failed,"
        f" {sum(r.status == jobs.SKIPPED for r in results)} skipped,"
        f" {sum(r.status == jobs.REFUSED for r in results)} refused"
    )
    if failed:
        raise click.ClickException(f"failed: {', '.join(_what(r) for r in failed)}")


def _progress(result: jobs.StepResult) -> None:
    """One stderr line per finished step, so that a long run shows where it is."""
    click.echo(f"{_what(result)}: {result.status} ({result.seconds:.1f} s)", err=True)


def _what(result: jobs.StepResult) -> str:
    return f"{result.step} {result.measure_name}" if result.measure_name else result.step


COMMANDS = [jobs_group]
