"""`flask purge measure|all-measures`: exit codes, summaries, rows left behind."""

from datetime import datetime

import pytest

from tests.test_purge import (
    DAY,
    MINUTE,
    insert_cell,
    insert_raw,
    mark_aggregated,
    raw_count,
    stamped_cells,
)


def test_purge_measure_deletes_and_reports_rows_and_stamped_cells(runner, make_definition):
    make_definition("m")
    cell = insert_cell("m", start_date=datetime(2024, 1, 10), group1={"g1": "a"})
    insert_raw("m", age_seconds=31 * DAY, n=3)
    insert_raw("m", age_seconds=29 * DAY)
    mark_aggregated("m")

    result = runner.invoke(args=["purge", "measure", "m", "-d", "30"])

    assert result.exit_code == 0, result.output
    # measure, days, cut-off (date and time), deleted, stamped, seconds, status
    fields = next(l for l in result.output.splitlines() if l.startswith("m ")).split()
    assert fields[:2] == ["m", "30"] and fields[4:6] == ["3", "1"] and fields[-1] == "purged"
    assert "3 raw measure(s) deleted" in result.output
    assert (raw_count("m"), stamped_cells("m")) == (1, {cell})


def test_purge_measure_with_unaggregated_rows_exits_1_and_deletes_nothing(runner, make_definition):
    make_definition("m")
    insert_raw("m", age_seconds=100 * DAY, n=2)

    result = runner.invoke(args=["purge", "measure", "m"])

    assert result.exit_code == 1
    assert "measure 'm': refused: 2 raw measure(s) not aggregated yet" in result.output
    assert raw_count("m") == 2


def test_purge_unknown_measure_exits_1(runner):
    result = runner.invoke(args=["purge", "measure", "nope"])

    assert result.exit_code == 1
    assert "measure 'nope': no such definition" in result.output


@pytest.mark.parametrize(
    "args",
    [
        ["purge", "measure", "m", "-d", "0"],
        ["purge", "measure", "m", "-d", "ten"],
        ["purge", "measure", "m", "--batch-size", "0"],
        ["purge", "all-measures", "-d", "-1"],
        ["purge", "measure"],
    ],
)
def test_bad_arguments_exit_2_and_delete_nothing(runner, make_definition, args):
    make_definition("m")
    insert_raw("m", age_seconds=100 * DAY)
    mark_aggregated("m")

    result = runner.invoke(args=args)

    assert result.exit_code == 2
    assert raw_count("m") == 1


def test_purge_all_applies_each_retention_and_reports_refusals_with_exit_0(runner, make_definition):
    make_definition("kept_long", raw_retention_days=365)
    make_definition("refused")
    make_definition("short", raw_retention_days=7)
    for name in ("kept_long", "refused", "short"):
        insert_raw(name, age_seconds=100 * DAY)
    mark_aggregated("kept_long")
    mark_aggregated("short")

    result = runner.invoke(args=["purge", "all-measures"])

    assert result.exit_code == 0, result.output
    lines = {l.split()[0]: l for l in result.output.splitlines()[1:4]}
    assert lines["kept_long"].split()[1] == "365"
    assert lines["kept_long"].endswith("nothing to purge")
    assert lines["short"].split()[1] == "7" and lines["short"].endswith("purged")
    assert lines["refused"].endswith("refused: 1 raw measure(s) not aggregated yet")
    assert [raw_count(n) for n in ("kept_long", "refused", "short")] == [1, 1, 0]


def test_purge_all_with_days_overrides_every_retention(runner, make_definition):
    make_definition("a", raw_retention_days=365)
    make_definition("b")
    for name in ("a", "b"):
        insert_raw(name, age_seconds=2 * DAY + MINUTE)
        mark_aggregated(name)

    result = runner.invoke(args=["purge", "all-measures", "-d", "2"])

    assert result.exit_code == 0, result.output
    assert "2 raw measure(s) deleted" in result.output
    assert raw_count("a") == raw_count("b") == 0


def test_long_purge_prints_progress_per_batch(runner, make_definition):
    make_definition("m")
    insert_raw("m", age_seconds=100 * DAY, n=5)
    mark_aggregated("m")

    result = runner.invoke(args=["purge", "measure", "m", "--batch-size", "2"])

    assert result.exit_code == 0, result.output
    progress = [l for l in result.output.splitlines() if "so far" in l]
    assert progress == [
        "m: 2 rows deleted so far",
        "m: 4 rows deleted so far",
        "m: 5 rows deleted so far",
    ]
    assert raw_count("m") == 0
