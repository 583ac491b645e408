"""Domain and database errors, and undecodable arguments, become one-line CLI errors
with a non-zero exit."""

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


class InvalidArgument(click.ClickException):
    """An argument that is not valid UTF-8: a usage error, exit code 2 as click's own."""

    exit_code = 2


def refuse_undecodable(command: click.Command) -> None:
    """Make `command`, and each command of a group, refuse an argument that is not
    valid UTF-8, or holds a NUL character, before it runs.

    Python decodes such bytes of argv to lone surrogates (PEP 383), which neither
    PostgreSQL text nor a terminal takes: the command would fail in the middle, with a
    traceback. Wrapping is idempotent (every create_app registers the same commands).
    """
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            refuse_undecodable(sub)
    callback = command.callback
    if callback is None or getattr(callback, "_dacc_checks_utf8", False):
        return

    @functools.wraps(callback)
    def checked(*args, **kwargs):
        for name, value in kwargs.items():
            for text in value if isinstance(value, (list, tuple)) else (value,):
                if isinstance(text, str) and not _decodable(text):
                    raise InvalidArgument(f"{_param_name(name)}: not valid UTF-8: {_raw(text)}")
                if isinstance(text, str) and "\x00" in text:
                    # Names nothing PostgreSQL text can hold; the driver would raise.
                    raise InvalidArgument(f"{_param_name(name)}: must not hold NUL characters")
        return callback(*args, **kwargs)

    checked._dacc_checks_utf8 = True
    command.callback = checked


def _decodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _raw(text: str) -> str:
    """The argument's bytes as Python shows them, e.g. b'caf\\xe9'."""
    try:
        return repr(text.encode("utf-8", "surrogateescape"))
    except UnicodeEncodeError:  # a surrogate argv decoding never makes (given by a caller)
        return ascii(text)


def _param_name(name: str) -> str:
    context = click.get_current_context(silent=True)
    for param in context.command.params if context else ():
        if param.name == name:
            return param.opts[0] if isinstance(param, click.Option) else param.human_readable_name
    return name
