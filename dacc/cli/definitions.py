"""`flask insert-definitions-json` (DACC name) and `flask definitions list|remove`."""

import click
from flask.cli import AppGroup, with_appcontext

from dacc import definitions
from dacc.cli.errors import cli_errors
from dacc.cli.table import echo_table


@click.command("insert-definitions-json")
@click.option(
    "-f",
    "--file",
    "path",
    type=click.Path(exists=True, dir_okay=False),
    default=str(definitions.DEFAULT_FILE),
    show_default="the shipped dacc/assets/definitions.json",
    help='JSON file {"definitions": [...]}; relative to the current directory.',
)
@with_appcontext
@cli_errors
def insert_definitions_json_command(path):
    """Insert or update measure definitions by name; validates the whole file first."""
    rows = definitions.read_definitions_file(path)
    results = definitions.upsert_definitions(rows)
    for name, outcome in results:
        click.echo(f"{outcome:9}  {name}")
    outcomes = ("inserted", "updated", "rebuilding", "unchanged")
    counts = {o: sum(1 for _, got in results if got == o) for o in outcomes}
    click.echo(
        f"{len(results)} definition(s): {counts['inserted']} inserted, "
        f"{counts['updated'] + counts['rebuilding']} updated, {counts['unchanged']} unchanged"
    )
    for name, outcome in results:
        if outcome == "rebuilding":
            click.echo(
                f"{name}: wildcard levels changed, aggregates deleted; rebuild pending"
                " (the next compute-aggregation run rebuilds them from the raw measures)"
            )


definitions_group = AppGroup("definitions", help="List and remove measure definitions.")


@definitions_group.command("list")
@cli_errors
def list_command():
    """Print the definitions as a table."""
    rows = definitions.list_definitions()
    if not rows:
        click.echo("no definition (load some with: flask insert-definitions-json -f FILE)")
        return
    header = ("name", "org", "createdBy", "groups", "period", "threshold", "access", "quartiles")
    table = [
        (
            d.name,
            d.org,
            d.created_by or "-",
            ",".join(d.group_keys) or "-",
            d.aggregation_period,
            str(d.aggregation_threshold),
            ",".join(a for a, on in (("app", d.access_app), ("public", d.access_public)) if on) or "-",
            "yes" if d.with_quartiles else "no",
        )
        for d in rows
    ]
    echo_table(header, table)


@definitions_group.command("remove")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@cli_errors
def remove_command(name, yes):
    """Delete definition NAME with its raw measures, refused measures and aggregates."""
    if not yes:
        click.confirm(f"Delete definition '{name}' with all its raw measures and aggregates?", abort=True)
    counts = definitions.remove_definition(name)
    detail = ", ".join(f"{count} {label}" for label, count in counts.items())
    click.echo(f"removed definition {name}: {detail}")


COMMANDS = [insert_definitions_json_command, definitions_group]
