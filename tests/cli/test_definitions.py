"""`flask insert-definitions-json` and `flask definitions list|remove`."""

import json

import pytest
import sqlalchemy as sa

from dacc.db import db
from dacc.ingestion import record_measure
from dacc.models import Aggregate, MeasureDefinition, RawMeasure


def write(path, *items):
    path.write_text(json.dumps({"definitions": list(items)}))
    return path


def names():
    db.session.expire_all()
    return db.session.scalars(sa.select(MeasureDefinition.name).order_by(MeasureDefinition.name)).all()


def test_insert_prints_one_line_per_definition_and_a_summary(runner, tmp_path):
    path = write(tmp_path / "d.json", {"name": "a", "org": "o"}, {"name": "b", "org": "o"})
    result = runner.invoke(args=["insert-definitions-json", "-f", str(path)])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "inserted   a",
        "inserted   b",
        "2 definition(s): 2 inserted, 0 updated, 0 unchanged",
    ]
    assert names() == ["a", "b"]


def test_running_the_same_file_twice_changes_nothing(runner, tmp_path):
    path = write(tmp_path / "d.json", {"name": "a", "org": "o", "aggregationThreshold": 3})
    runner.invoke(args=["insert-definitions-json", "-f", str(path)])
    before = db.session.execute(sa.select(MeasureDefinition.__table__)).all()
    result = runner.invoke(args=["insert-definitions-json", "-f", str(path)])
    assert result.output.splitlines()[-1] == "1 definition(s): 0 inserted, 0 updated, 1 unchanged"
    db.session.expire_all()
    assert db.session.execute(sa.select(MeasureDefinition.__table__)).all() == before


def test_a_changed_definition_is_updated(runner, tmp_path):
    path = write(tmp_path / "d.json", {"name": "a", "org": "o"})
    runner.invoke(args=["insert-definitions-json", "-f", str(path)])
    write(path, {"name": "a", "org": "o", "aggregationPeriod": "month"})
    result = runner.invoke(args=["insert-definitions-json", "-f", str(path)])
    assert result.output.splitlines()[0] == "updated    a"
    assert db.session.scalar(sa.select(MeasureDefinition.aggregation_period)) == "month"


def test_relative_path_is_relative_to_the_current_directory(runner, tmp_path, monkeypatch):
    write(tmp_path / "d.json", {"name": "a", "org": "o"})
    monkeypatch.chdir(tmp_path)
    assert runner.invoke(args=["insert-definitions-json", "-f", "d.json"]).exit_code == 0
    assert names() == ["a"]


def test_default_file_is_the_shipped_one(runner):
    result = runner.invoke(args=["insert-definitions-json"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == "0 definition(s): 0 inserted, 0 updated, 0 unchanged"


@pytest.mark.parametrize(
    "bad, message",
    [
        (
            {"name": "b", "org": "o", "aggregationPeriod": "hour"},
            'definitions[1] (name "b"): aggregationPeriod',
        ),
        (
            {"name": "b", "org": "o", "aggregationThreshold": 0},
            'definitions[1] (name "b"): aggregationThreshold',
        ),
        (
            {"name": "b", "org": "o", "group2Key": "x"},
            'definitions[1] (name "b"): group2Key: set while group1Key',
        ),
        ({"name": "b", "org": "o", "accessApp": "true"}, 'definitions[1] (name "b"): accessApp'),
        ({"name": "a", "org": "o"}, 'definitions[1] (name "a"): name: duplicate of definitions[0]'),
    ],
)
def test_invalid_file_writes_nothing_and_exits_1(runner, tmp_path, bad, message):
    path = write(tmp_path / "d.json", {"name": "a", "org": "o"}, bad)
    result = runner.invoke(args=["insert-definitions-json", "-f", str(path)])
    assert result.exit_code == 1
    assert message in result.output
    assert names() == []


def test_missing_file_exits_2(runner, tmp_path):
    result = runner.invoke(args=["insert-definitions-json", "-f", str(tmp_path / "nope.json")])
    assert result.exit_code == 2
    assert "does not exist" in result.output


def test_list_prints_a_table(runner, tmp_path):
    path = write(
        tmp_path / "d.json",
        {
            "name": "b",
            "org": "o",
            "group1Key": "x",
            "group2Key": "y",
            "accessPublic": True,
            "withQuartiles": True,
        },
        {"name": "a", "org": "p", "createdBy": "app", "aggregationPeriod": "week", "aggregationThreshold": 9},
    )
    runner.invoke(args=["insert-definitions-json", "-f", str(path)])
    result = runner.invoke(args=["definitions", "list"])
    assert result.exit_code == 0
    rows = [line.split() for line in result.output.splitlines()]
    assert rows == [
        ["name", "org", "createdBy", "groups", "period", "threshold", "access", "quartiles"],
        ["a", "p", "app", "-", "week", "9", "-", "no"],
        ["b", "o", "-", "x,y", "day", "5", "public", "yes"],
    ]


def test_list_without_definitions_says_so(runner):
    result = runner.invoke(args=["definitions", "list"])
    assert result.exit_code == 0 and result.output.startswith("no definition")


def test_remove_asks_first_and_keeps_everything_when_refused(runner, make_definition):
    make_definition("m")
    result = runner.invoke(args=["definitions", "remove", "m"], input="n\n")
    assert result.exit_code == 1
    assert names() == ["m"]


def test_remove_deletes_and_reports_counts(runner, make_definition):
    make_definition("m")
    record_measure(
        {"measureName": "m", "value": 1, "startDate": "2022-01-01", "createdBy": "a", "group1": {"g1": 1}}
    )
    result = runner.invoke(args=["definitions", "remove", "m"], input="y\n")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == (
        "removed definition m: 1 raw measures, 0 refused measures, 0 measure ids, 0 aggregates, 0 aggregation states"
    )
    assert names() == [] and db.session.scalar(sa.select(sa.func.count()).select_from(RawMeasure)) == 0


def test_remove_unknown_exits_1(runner):
    result = runner.invoke(args=["definitions", "remove", "nope", "--yes"])
    assert result.exit_code == 1
    assert 'no definition named "nope"' in result.output


def test_changing_the_period_of_a_measure_with_data_exits_1_and_writes_nothing(runner, tmp_path):
    path = write(tmp_path / "d.json", {"name": "a", "org": "o"})
    runner.invoke(args=["insert-definitions-json", "-f", str(path)])
    record_measure({"measureName": "a", "value": 1, "startDate": "2024-01-01", "createdBy": "app"})
    write(path, {"name": "b", "org": "o"}, {"name": "a", "org": "o", "aggregationPeriod": "month"})
    result = runner.invoke(args=["insert-definitions-json", "-f", str(path)])
    assert result.exit_code == 1
    assert (
        'definitions[1] (name "a"): aggregationPeriod: cannot change from "day" to "month"' in result.output
    )
    assert names() == ["a"]
    assert db.session.scalar(sa.select(MeasureDefinition.aggregation_period)) == "day"


def test_changed_wildcard_levels_print_that_a_rebuild_is_pending(runner, tmp_path):
    path = write(tmp_path / "d.json", {"name": "a", "org": "o", "group1Key": "k", "aggregationThreshold": 1})
    runner.invoke(args=["insert-definitions-json", "-f", str(path)])
    record_measure(
        {"measureName": "a", "value": 1, "startDate": "2024-01-01", "createdBy": "app", "group1": {"k": "x"}}
    )
    assert runner.invoke(args=["compute-aggregation", "a", "--force"]).exit_code == 0
    write(
        path,
        {
            "name": "a",
            "org": "o",
            "group1Key": "k",
            "aggregationThreshold": 1,
            "wildcardGroups": [["group1"]],
        },
    )
    result = runner.invoke(args=["insert-definitions-json", "-f", str(path)])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "rebuilding  a",
        "1 definition(s): 0 inserted, 1 updated, 0 unchanged",
        "a: wildcard levels changed, aggregates deleted; rebuild pending"
        " (the next compute-aggregation run rebuilds them from the raw measures)",
    ]
    assert db.session.scalar(sa.select(sa.func.count()).select_from(Aggregate)) == 0
    assert runner.invoke(args=["compute-aggregation", "a"]).exit_code == 0
    db.session.expire_all()
    assert sorted(json.dumps(g) for g in db.session.scalars(sa.select(Aggregate.group1))) == [
        '{"k": "*"}',
        '{"k": "x"}',
    ]
