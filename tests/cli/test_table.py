"""echo_table: the one table printer of token get, definitions list, purge and jobs run."""

import click
from click.testing import CliRunner

from dacc.cli.table import echo_table


def test_columns_are_left_aligned_to_the_widest_cell_without_trailing_blanks():
    @click.command()
    def show():
        echo_table(("name", "n", "note"), [("a", "12345", "-"), ("long-name", "1", "")])

    assert CliRunner().invoke(show).output.splitlines() == [
        "name       n      note",
        "a          12345  -",
        "long-name  1",
    ]
