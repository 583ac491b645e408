"""Domain and database errors become one-line CLI errors with a non-zero exit."""

import functools

import click
from sqlalchemy.exc import SQLAlchemyError

from dacc.db import db
from dacc.errors import SCHEMA_HINT, DaccError, error_message, is_schema_behind


def cli_errors(func):
    """Turn a DaccError or a database error raised by the command into a ClickException
    (one line on stderr, exit 1) instead of a traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except DaccError as exc:
            raise click.ClickException(exc.message) from None
        except SQLAlchemyError as exc:
            # The domain function's transaction did not commit; leave the session usable.
            db.session.rollback()
            hint = f" ({SCHEMA_HINT})" if is_schema_behind(exc) else ""
            raise click.ClickException(f"failed: {error_message(exc)}{hint}") from None

    return wrapper
