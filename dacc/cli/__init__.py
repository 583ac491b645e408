"""Admin commands: each module holds one click group or a few DACC-named commands."""

from flask import Flask


def register_commands(app: Flask) -> None:
    from dacc.cli import aggregation, definitions, embedded, ingest, jobs, privacy, purge, token, view
    from dacc.cli.errors import refuse_undecodable

    for module in (token, definitions, aggregation, view, purge, jobs, ingest, privacy, embedded):
        for command in module.COMMANDS:
            refuse_undecodable(command)
            app.cli.add_command(command)


def main() -> None:
    """The `dacc` command: every `flask` command of the app, and `--version` saying DACC's.

    (`flask --version` is Flask's own and cannot be changed from the app.)
    """
    import platform
    from importlib.metadata import version

    import click
    from flask.cli import FlaskGroup

    from dacc import __version__, create_app

    message = f"DACC %(version)s (Flask {version('flask')}, Python {platform.python_version()})"
    cli = FlaskGroup(create_app=create_app, add_version_option=False, help="DACC admin commands.")
    click.version_option(__version__, "--version", "-V", message=message)(cli)
    cli.main()
