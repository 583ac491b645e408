"""Domain errors become one-line CLI errors with a non-zero exit."""

import functools

import click

from dacc.errors import DaccError


def cli_errors(func):
    """Turn a DaccError raised by the command into a ClickException (exit 1)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except DaccError as exc:
            raise click.ClickException(exc.message) from None

    return wrapper
