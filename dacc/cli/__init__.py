"""Admin commands: each module holds one click group or a few DACC-named commands."""

from flask import Flask


def register_commands(app: Flask) -> None:
    from dacc.cli import aggregation, definitions, ingest, jobs, purge, token, view

    for module in (token, definitions, aggregation, view, purge, jobs, ingest):
        for command in module.COMMANDS:
            app.cli.add_command(command)
