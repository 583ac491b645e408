"""Write grants, app-bound tokens, writer-scoped measureIds: tried as an attacker."""

import pytest
import sqlalchemy as sa

from dacc.aggregation.compute import compute_aggregation
from dacc.db import db
from dacc.definitions import upsert_definitions, validate_definitions
from dacc.models import MeasureDefinition, RawMeasure

VICTIM = {
    "measureName": "m",
    "value": 250.5,
    "startDate": "2022-01-01",
    "createdBy": "ecolyo",
    "group1": {"heating": "electric"},
}


@pytest.fixture
def pinned(app):
    """A measure pinned to the app ecolyo, written by the org cozy only, k = 5."""
    upsert_definitions(
        validate_definitions(
            [
                {
                    "name": "m",
                    "org": "cozy",
                    "createdBy": "ecolyo",
                    "group1Key": "heating",
                    "aggregationThreshold": 5,
                    "writers": ["cozy"],
                    "wildcardGroups": [["group1"]],
                }
            ]
        )
    )


def post(client, headers, body, path="/measure"):
    return client.post(path, json=body, headers=headers)


def served(client, headers):
    response = client.get(
        "/aggregate",
        json={
            "measureName": "m",
            "startDate": "2022-01-01",
            "endDate": "2022-01-02",
        },
        headers=headers,
    )
    assert response.status_code == 200
    return {str(row.get("group1")): (row["count"], row["sum"]) for row in response.get_json()}


def stored_count():
    return db.session.scalar(sa.select(sa.func.count()).select_from(RawMeasure))


@pytest.mark.parametrize("group", ["electric", "gas"], ids=["victim cell", "new group value"])
def test_sybil_padding_by_another_org_is_403_and_nothing_is_served(client, pinned, auth_header, group):
    cozy, evil = auth_header("cozy"), auth_header("evil")
    assert post(client, cozy, VICTIM).status_code == 201
    for _ in range(4):
        response = post(client, evil, {**VICTIM, "value": 0, "group1": {"heating": group}})
        assert response.status_code == 403
    assert stored_count() == 1
    compute_aggregation("m", force=True)
    assert served(client, cozy) == {}  # neither the cell nor the wildcard total
    # Control: four genuine measures of the writer org make the cell publishable.
    for value in (1, 2, 3, 4):
        assert post(client, cozy, {**VICTIM, "value": value}).status_code == 201
    compute_aggregation("m", force=True)
    assert served(client, cozy)["{'heating': 'electric'}"] == (5, 260.5)


def test_a_forbidden_token_learns_nothing_of_the_schema(client, pinned, auth_header):
    body = {**VICTIM, "createdBy": "other", "group1": {"wrong": 1}}
    response = post(client, auth_header("evil"), body)
    assert response.status_code == 403
    error = response.get_json()["error"]
    assert "heating" not in error and "ecolyo" not in error
    # The allowed writer is told what is wrong.
    response = post(client, auth_header("cozy"), {**body, "createdBy": "ecolyo"})
    assert response.status_code == 400 and "heating" in response.get_json()["error"]


def test_bulk_with_one_forbidden_item_is_403_and_stores_nothing(client, pinned, auth_header, make_definition):
    make_definition("open", writers=["*"])
    items = [
        {"measureName": "open", "value": 1, "startDate": "2022-01-01", "createdBy": "a", "group1": {"g1": 1}}
    ] * 3 + [VICTIM]
    response = post(client, auth_header("evil"), items, path="/measures")
    assert response.status_code == 403 and "index 3" in response.get_json()["error"]
    assert stored_count() == 0
    assert post(client, auth_header("evil"), items[:3], path="/measures").status_code == 201


def test_a_token_bound_to_an_app_sends_only_that_app(client, pinned, runner):
    result = runner.invoke(args=["token", "create", "cozy", "--app", "other-app"])
    assert result.exit_code == 0, result.output
    assert "app other-app" in result.output
    headers = {"Authorization": f"Bearer {result.output.splitlines()[-1]}"}
    response = post(client, headers, VICTIM)
    assert response.status_code == 403 and "other-app" in response.get_json()["error"]
    assert stored_count() == 0
    result = runner.invoke(args=["token", "create", "cozy", "--app", "ecolyo"])
    headers = {"Authorization": f"Bearer {result.output.splitlines()[-1]}"}
    assert post(client, headers, VICTIM).status_code == 201


def test_a_measure_id_of_another_org_can_be_neither_probed_nor_squatted(client, make_definition, auth_header):
    make_definition("m", group1_key="heating", writers=["*"])
    body = {**VICTIM, "createdBy": "a", "measureId": "victim-1"}
    victim, evil = auth_header("victim"), auth_header("evil")
    assert post(client, victim, body).status_code == 201
    # Probe: the attacker's answer does not depend on the victim's id existing.
    assert post(client, evil, body).status_code == 201
    assert post(client, evil, {**body, "measureId": "never-used"}).status_code == 201
    # Squat: an id taken first by the attacker does not drop the victim's measure.
    assert post(client, evil, {**body, "measureId": "victim-2"}).status_code == 201
    assert post(client, victim, {**body, "measureId": "victim-2"}).status_code == 201
    # The victim's own retries are still duplicates, in bulk too.
    assert post(client, victim, body).status_code == 200
    response = post(client, victim, [body, {**body, "measureId": "victim-3"}], path="/measures")
    assert response.get_json() == {"ok": True, "inserted": 1, "duplicates": 1}
    assert stored_count() == 6


def test_new_definitions_are_written_by_their_org_and_stored_grants_survive_a_reimport(app):
    upsert_definitions(validate_definitions([{"name": "new", "org": "cozy"}]))
    definition = db.session.scalar(sa.select(MeasureDefinition).where(MeasureDefinition.name == "new"))
    assert definition.writers == ["cozy"]
    upsert_definitions(validate_definitions([{"name": "new", "org": "cozy", "writers": ["*"]}]))
    # A file without the field (e.g. an older one) leaves the grant as stored.
    assert upsert_definitions(validate_definitions([{"name": "new", "org": "cozy"}])) == [
        ("new", "unchanged")
    ]
    db.session.expire_all()
    assert db.session.get(MeasureDefinition, definition.id).writers == ["*"]


@pytest.mark.parametrize(
    "writers, message",
    [
        ([], "non-empty list"),
        (["*", "cozy"], "goes alone"),
        ("cozy", "non-empty list"),
        (["a", "a"], "twice"),
    ],
)
def test_malformed_writers_are_refused(app, writers, message):
    with pytest.raises(Exception, match=message):
        validate_definitions([{"name": "m", "org": "o", "writers": writers}])


def test_the_batch_validator_of_every_path_sets_a_forbidden_item_aside(pinned):
    from dacc.ingestion import validate_batch

    measures, rejects = validate_batch([VICTIM, {**VICTIM, "group1": {"wrong": 1}}], org="evil")
    assert measures == [] and [(r.index, r.forbidden) for r in rejects] == [(0, True), (1, True)]
    assert "heating" not in rejects[1].error
    measures, rejects = validate_batch([VICTIM], org="cozy")
    assert len(measures) == 1 and measures[0].org == "cozy" and rejects == []
