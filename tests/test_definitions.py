"""Definitions (dacc/definitions.py): file validation, upsert, removal, cache."""

import json
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa

from dacc import definitions
from dacc.aggregation import sql
from dacc.aggregation.compute import compute_aggregation
from dacc.db import db
from dacc.errors import BadRequest, Conflict, NotFound
from dacc.ingestion import record_measure
from dacc.models import (
    Aggregate,
    AggregationState,
    MeasureDefinition,
    MeasureKey,
    RawMeasure,
    RefusedRawMeasure,
)

REPO = Path(__file__).resolve().parent.parent


def definition(**overrides):
    values = {"name": "m", "org": "org", "group1Key": "g1"}
    values.update(overrides)
    return values


def stored(name="m") -> MeasureDefinition:
    db.session.expire_all()
    return db.session.scalar(sa.select(MeasureDefinition).where(MeasureDefinition.name == name))


def count(model):
    return db.session.scalar(sa.select(sa.func.count()).select_from(model))


def test_validation_fills_the_defaults(app):
    (row,) = definitions.validate_definitions([{"name": "m", "org": "o"}])
    assert row == {
        "id": None,
        "name": "m",
        "org": "o",
        "created_by": None,
        "group1_key": None,
        "group2_key": None,
        "group3_key": None,
        "description": None,
        "aggregation_period": "day",
        "execution_frequency": "day",
        "aggregation_threshold": 5,
        "access_app": False,
        "access_public": False,
        "with_quartiles": False,
        "max_days_to_update_quartile": 100,
        "wildcard_groups": [],
        "raw_retention_days": None,
        "publish_delay_hours": 0,
        # writers None: resolved at upsert ([org] when new, kept when stored).
        "writers": None,
        "extremes": "k2",
        "p_percent": None,
        "max_contributions_per_cell": None,
    }


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"aggregationPeriod": "year"}, 'aggregationPeriod: must be one of day, week, month, got "year"'),
        ({"executionFrequency": None}, "executionFrequency: must be one of day, week, month, got null"),
        ({"aggregationThreshold": 0}, "aggregationThreshold: must be an integer ≥ 1"),
        ({"aggregationThreshold": "5"}, "aggregationThreshold: must be an integer ≥ 1"),
        ({"aggregationThreshold": True}, "aggregationThreshold: must be an integer ≥ 1"),
        ({"maxDaysToUpdateQuartile": -1}, "maxDaysToUpdateQuartile: must be an integer ≥ 0"),
        ({"group1Key": None, "group2Key": "b"}, "group2Key: set while group1Key is not"),
        ({"group3Key": "c"}, "group3Key: set while group2Key is not"),
        ({"group2Key": "g1"}, "groupKeys: the same key is used twice"),
        ({"group1Key": ""}, "group1Key: must be a string of 1 to 100 characters"),
        ({"accessPublic": "yes"}, "accessPublic: must be true or false"),
        ({"withQuartiles": 1}, "withQuartiles: must be true or false"),
        ({"org": None}, "org: must be a string of 1 to 100 characters"),
        ({"name": "x" * 201}, "name: must be a string of 1 to 200 characters"),
        ({"name": " m"}, "name: must not hold control characters or surrounding spaces"),
        ({"name": "m\x1b[2J"}, "name: must not hold control characters or surrounding spaces"),
        ({"org": "o\x1b]0;x\x07"}, "org: must not hold control characters or surrounding spaces"),
        ({"createdBy": "a\x1bb"}, "createdBy: must not hold control characters or surrounding spaces"),
        ({"createdBy": 3}, "createdBy: must be a string of 1 to 100 characters"),
        ({"description": ["x"]}, "description: must be a string or null"),
        ({"aggregationTreshold": 5}, "aggregationTreshold: unknown field"),
        ({"rawRetentionDays": 0}, "rawRetentionDays: must be an integer ≥ 1 or null"),
        ({"wildcardGroups": ["group1"]}, "wildcardGroups[0]: must be a non-empty list of group names"),
        ({"wildcardGroups": [["group2"]]}, 'wildcardGroups[0]: "group2" is not a group of this definition'),
        ({"wildcardGroups": [["group1"], ["group1"]]}, "wildcardGroups[1]: duplicate level"),
        ({"id": 0}, "id: must be an integer ≥ 1 or null"),
    ],
)
def test_invalid_field_names_the_definition_and_the_field(app, overrides, message):
    items = [definition(name="ok"), definition(**overrides)]
    with pytest.raises(BadRequest) as caught:
        definitions.validate_definitions(items)
    name = overrides.get("name", "m")
    where = f"definitions[1] (name {json.dumps(name)})" if isinstance(name, str) else "definitions[1]"
    assert f"{where}: {message}" in caught.value.message


def test_every_fault_is_listed_at_once(app):
    with pytest.raises(BadRequest) as caught:
        definitions.validate_definitions(
            [definition(aggregationThreshold=0), "oops", definition(name="b", org=3)]
        )
    lines = caught.value.message.splitlines()
    assert lines[0] == "invalid definitions, nothing written:"
    assert lines[1].startswith('definitions[0] (name "m"): aggregationThreshold')
    assert lines[2] == "definitions[1]: expected an object"
    assert lines[3].startswith('definitions[2] (name "b"): org')


def test_duplicate_names_in_the_file_are_refused(app):
    with pytest.raises(
        BadRequest, match=r'definitions\[2\] \(name "m"\): name: duplicate of definitions\[0\]'
    ):
        definitions.validate_definitions([definition(), definition(name="n"), definition()])


def test_upsert_inserts_then_reports_unchanged(app):
    rows = definitions.validate_definitions([definition(), definition(name="n")])
    assert definitions.upsert_definitions(rows) == [("m", "inserted"), ("n", "inserted")]
    first = stored().updated_at
    assert definitions.upsert_definitions(rows) == [("m", "unchanged"), ("n", "unchanged")]
    assert stored().updated_at == first and count(MeasureDefinition) == 2


def test_upsert_updates_by_name_and_touches_updated_at(app):
    definitions.upsert_definitions(definitions.validate_definitions([definition()]))
    before = stored()
    id_, updated = before.id, before.updated_at
    rows = definitions.validate_definitions(
        [definition(aggregationThreshold=10, wildcardGroups=[["group1"]])]
    )
    assert definitions.upsert_definitions(rows) == [("m", "updated")]
    after = stored()
    assert (after.id, after.aggregation_threshold, after.wildcard_groups) == (id_, 10, [["group1"]])
    assert after.updated_at > updated


def test_upsert_honours_ids_and_moves_the_sequence_past_them(app):
    definitions.upsert_definitions(definitions.validate_definitions([definition(id=40)]))
    definitions.upsert_definitions(definitions.validate_definitions([definition(name="n")]))
    assert (stored("m").id, stored("n").id) == (40, 41)


def test_upsert_refuses_an_id_of_another_definition_and_writes_nothing(app):
    definitions.upsert_definitions(definitions.validate_definitions([definition(id=7)]))
    rows = definitions.validate_definitions([definition(name="new"), definition(name="other", id=7)])
    with pytest.raises(BadRequest, match='definition "other": id: 7 belongs to "m"'):
        definitions.upsert_definitions(rows)
    assert count(MeasureDefinition) == 1


def test_upsert_refuses_a_changed_id(app):
    definitions.upsert_definitions(definitions.validate_definitions([definition(id=7)]))
    with pytest.raises(BadRequest, match='definition "m": id: the stored definition has id 7'):
        definitions.upsert_definitions(definitions.validate_definitions([definition(id=8)]))


def test_read_definitions_file_refuses_a_bad_shape(app, tmp_path):
    path = tmp_path / "defs.json"
    path.write_text('[{"name": "m"}]')
    with pytest.raises(BadRequest, match=r'defs.json: expected an object \{"definitions": \[...\]\}'):
        definitions.read_definitions_file(path)
    path.write_text("{")
    with pytest.raises(BadRequest, match="defs.json: not valid JSON"):
        definitions.read_definitions_file(path)


@pytest.mark.parametrize("path", ["assets/definitions-example.json", "dacc/assets/definitions.json"])
def test_shipped_files_are_valid(app, path):
    rows = definitions.read_definitions_file(REPO / path)
    assert definitions.upsert_definitions(rows) == [(r["name"], "inserted") for r in rows]


def test_example_file_shows_every_field(app):
    first, *_ = json.loads((REPO / "assets/definitions-example.json").read_text())["definitions"]
    assert list(first) == list(definitions.FIELDS)


def test_remove_deletes_the_definition_and_everything_it_owns(app, make_definition):
    make_definition("m")
    make_definition("other")
    for name in ("m", "m", "other"):
        record_measure(
            {
                "measureName": name,
                "value": 1,
                "startDate": "2022-01-01",
                "createdBy": "a",
                "group1": {"g1": "x"},
                "measureId": f"id-{count(RawMeasure)}",
            }
        )
    cell = dict(
        start_date=datetime(2022, 1, 1),
        created_by="a",
        group1={"g1": "x"},
        count=2,
        count_not_zero=2,
        sum=2,
        sum_squares=2,
        min=1,
        max=1,
        avg=1.0,
        std=0.0,
        contributors=2,
        largest_value=1,
        second_largest_value=1,
    )
    db.session.add_all(
        [
            Aggregate(measure_name="m", **cell),
            Aggregate(measure_name="other", **cell),
            AggregationState(measure_name="m"),
            RefusedRawMeasure(
                measure_name="m",
                value=1,
                start_date=datetime(2022, 1, 1),
                created_by="a",
                last_updated=datetime(2022, 1, 2),
                reason="test",
            ),
        ]
    )
    db.session.commit()
    assert definitions.remove_definition("m") == {
        "raw measures": 2,
        "refused measures": 1,
        "measure ids": 2,
        "aggregates": 1,
        "aggregation states": 1,
    }
    assert [
        count(m)
        for m in (MeasureDefinition, RawMeasure, MeasureKey, Aggregate, AggregationState, RefusedRawMeasure)
    ] == [1, 1, 1, 1, 0, 0]


def test_remove_deletes_the_ledger_of_the_measure_and_only_its(app):
    """The history tables (versions, pieces) have no foreign key: removal deletes them."""
    from tests.aggregation.helpers import insert_raw
    from tests.publication.test_attacks import define

    ledger = (
        "published_cell",
        "published_version",
        "publication_piece",
        "publication_leaf",
        "publication_state",
    )
    for name in ("m", "other"):
        define(name, groups=1, k=1)
        insert_raw(name, [(Decimal(1), datetime(2022, 1, 1), "a", {"a": "x"}, None, None)] * 2)
        compute_aggregation(name, force=True)

    def rows(name):
        return [
            db.session.execute(
                sa.text(f"SELECT count(*) FROM {table} WHERE measure_name = :n"), {"n": name}
            ).scalar()
            for table in ledger
        ]

    assert rows("m") == rows("other") == [1, 1, 1, 1, 1]
    definitions.remove_definition("m")
    assert rows("m") == [0, 0, 0, 0, 0]
    assert rows("other") == [1, 1, 1, 1, 1]


def test_remove_unknown_definition_is_not_found(app):
    with pytest.raises(NotFound, match='no definition named "nope"'):
        definitions.remove_definition("nope")


def test_cache_serves_a_definition_until_this_process_changes_it(app, make_definition):
    make_definition("m", group1_key="g1")
    assert definitions.get_definition_rules("m").group_keys == ("g1", None, None)
    db.session.execute(sa.update(MeasureDefinition).values(group1_key="other"))
    db.session.commit()
    assert definitions.get_definition_rules("m").group_keys == ("g1", None, None)  # cached
    definitions.upsert_definitions(definitions.validate_definitions([definition(group1Key="new")]))
    assert definitions.get_definition_rules("m").group_keys == ("new", None, None)


def test_cache_notices_another_process_after_its_ttl(app, make_definition, monkeypatch):
    make_definition("m", group1_key="g1")
    assert definitions.get_definition_rules("m").group_keys[0] == "g1"
    db.session.execute(sa.update(MeasureDefinition).values(group1_key="other"))
    db.session.commit()
    monkeypatch.setattr(definitions, "CACHE_SECONDS", 0.0)
    app.extensions[definitions.CACHE_KEY]["m"] = (
        0.0,
        app.extensions[definitions.CACHE_KEY]["m"][1],
    )  # expired
    assert definitions.get_definition_rules("m").group_keys[0] == "other"


def test_unknown_name_is_not_cached(app, make_definition):
    assert definitions.get_definition_rules("later") is None
    make_definition("later")
    assert definitions.get_definition_rules("later").name == "later"


# --- changing a definition that has data ------------------------------------------------


def measure(value, day="2024-01-01", group="x", created_by="app", name="m"):
    record_measure(
        {
            "measureName": name,
            "value": value,
            "startDate": day,
            "createdBy": created_by,
            "group1": {"g1": group},
        }
    )


def cells(name="m"):
    """(group1, count, sum) of every aggregate row of the measure, sorted."""
    db.session.expire_all()
    rows = db.session.execute(
        sa.select(Aggregate.group1, Aggregate.count, Aggregate.sum).where(Aggregate.measure_name == name)
    ).all()
    return sorted((json.dumps(g), c, int(s)) for g, c, s in rows)


def upsert(*items):
    return definitions.upsert_definitions(definitions.validate_definitions(list(items)))


@pytest.mark.parametrize("aggregated", [False, True], ids=["raw-only", "aggregated"])
@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"aggregationPeriod": "month"}, 'aggregationPeriod: cannot change from "day" to "month"'),
        ({"group1Key": "other"}, 'group1Key: cannot change from "g1" to "other"'),
        ({"group2Key": "g2"}, 'group2Key: cannot change from null to "g2"'),
        ({"withQuartiles": True}, "withQuartiles: cannot change from false to true"),
        ({"createdBy": "another"}, 'createdBy: cannot become "another": stored raw measures or aggregates'),
    ],
)
def test_structural_change_with_data_is_refused_and_the_file_writes_nothing(
    app, overrides, message, aggregated
):
    upsert(definition(aggregationThreshold=3))
    measure(1)
    if aggregated:
        compute_aggregation("m", force=True)
    before = db.session.execute(sa.select(MeasureDefinition.__table__)).all()
    with pytest.raises(BadRequest) as caught:
        upsert(definition(name="new"), definition(aggregationThreshold=9, **overrides))
    assert f'definitions[1] (name "m"): {message}' in caught.value.message
    assert "while m has raw measures or aggregates" in caught.value.message or "createdBy" in overrides
    db.session.expire_all()
    assert db.session.execute(sa.select(MeasureDefinition.__table__)).all() == before  # "new" not inserted


def test_every_refused_change_is_listed(app):
    upsert(definition())
    measure(1)
    with pytest.raises(BadRequest) as caught:
        upsert(definition(aggregationPeriod="week", withQuartiles=True))
    assert caught.value.message.splitlines()[1:] == [
        'definitions[0] (name "m"): aggregationPeriod: cannot change from "day" to "week"'
        " while m has raw measures or aggregates",
        'definitions[0] (name "m"): withQuartiles: cannot change from false to true'
        " while m has raw measures or aggregates",
    ]


def test_created_by_may_be_set_to_the_only_app_stored_or_cleared(app):
    upsert(definition())
    measure(1, created_by="app")
    compute_aggregation("m", force=True)
    assert upsert(definition(createdBy="app")) == [("m", "updated")]
    assert upsert(definition()) == [("m", "updated")]
    assert stored().created_by is None


def test_free_fields_change_with_data(app):
    upsert(definition())
    measure(1)
    compute_aggregation("m", force=True)
    free = {
        "aggregationThreshold": 9,
        "accessApp": True,
        "accessPublic": True,
        "description": "d",
        "rawRetentionDays": 30,
        "org": "other",
        "executionFrequency": "week",
        "maxDaysToUpdateQuartile": 7,
    }
    assert upsert(definition(**free)) == [("m", "updated")]
    assert (stored().aggregation_threshold, stored().org) == (9, "other")
    assert cells() == [('{"g1": "x"}', 1, 1)]


def test_added_wildcard_level_is_rebuilt_from_all_raw_measures(app):
    upsert(definition(aggregationThreshold=1))
    measure(1, group="x")
    measure(2, group="y")
    compute_aggregation("m", force=True)
    assert upsert(definition(aggregationThreshold=1, wildcardGroups=[["group1"]])) == [("m", "rebuilding")]
    assert cells() == []  # deleted, rebuild pending
    assert db.session.scalar(sa.select(AggregationState.rebuild_from)) == datetime(2024, 1, 1)
    measure(4, group="x")
    compute_aggregation("m")
    assert cells() == [('{"g1": "*"}', 3, 7), ('{"g1": "x"}', 2, 5), ('{"g1": "y"}', 1, 2)]


def test_removed_wildcard_level_disappears_with_the_rebuild(app):
    upsert(definition(wildcardGroups=[["group1"]]))
    measure(1)
    compute_aggregation("m", force=True)
    assert cells() == [('{"g1": "*"}', 1, 1), ('{"g1": "x"}', 1, 1)]
    assert upsert(definition()) == [("m", "rebuilding")]
    compute_aggregation("m")
    assert cells() == [('{"g1": "x"}', 1, 1)]


def test_wildcard_change_without_aggregates_needs_no_rebuild(app):
    upsert(definition())
    measure(1)
    assert upsert(definition(wildcardGroups=[["group1"]])) == [("m", "updated")]
    compute_aggregation("m", force=True)
    assert cells() == [('{"g1": "*"}', 1, 1), ('{"g1": "x"}', 1, 1)]


def test_wildcard_change_after_a_purge_is_refused_and_nothing_is_deleted(app):
    upsert(definition(), definition(name="other"))
    measure(1)
    compute_aggregation("m", force=True)
    db.session.execute(sa.update(Aggregate).values(last_raw_measures_purged=sa.func.now()))
    db.session.commit()
    with pytest.raises(
        BadRequest,
        match=r'definitions\[1\] \(name "m"\): wildcardGroups: cannot change: raw '
        "measures of m were purged",
    ):
        upsert(definition(name="other", aggregationThreshold=9), definition(wildcardGroups=[["group1"]]))
    assert stored().wildcard_groups == [] and stored("other").aggregation_threshold == 5
    assert cells() == [('{"g1": "x"}', 1, 1)]


def test_wildcard_change_while_a_run_holds_the_measure_writes_nothing(app):
    upsert(definition())
    measure(1)
    compute_aggregation("m", force=True)
    with db.engine.connect() as holder:
        assert holder.execute(sa.text(sql.TRY_SESSION_LOCK), {"name": "m"}).scalar()
        try:
            with pytest.raises(Conflict, match="another run holds measure m"):
                upsert(definition(wildcardGroups=[["group1"]]))
        finally:
            holder.execute(sa.text(sql.RELEASE_SESSION_LOCK), {"name": "m"})
    assert stored().wildcard_groups == []
    assert cells() == [('{"g1": "x"}', 1, 1)]


def test_threshold_change_refreshes_the_view(app):
    upsert(definition(aggregationThreshold=5))
    for value in (1, 2, 3):
        measure(value)
    compute_aggregation("m", force=True)
    served = sa.text("SELECT count FROM filtered_aggregation WHERE measure_name = 'm'")
    assert db.session.execute(served).scalars().all() == []
    upsert(definition(aggregationThreshold=3))
    assert db.session.execute(served).scalars().all() == [3]
