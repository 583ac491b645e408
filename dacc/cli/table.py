"""The one table printer of the CLI: left-aligned columns, no trailing blanks."""

import click


def escape_unprintable(text: str) -> str:
    """Stored text as the terminal may print it: each control or other unprintable
    character (a terminal escape sequence's ESC, a newline, a lone surrogate) as its
    Python escape, e.g. `\\x1b`, so that a stored value cannot drive the terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def echo_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    table = [header, *([escape_unprintable(cell) for cell in row] for row in rows)]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
