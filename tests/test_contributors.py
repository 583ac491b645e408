"""Contributors: keyed hashes, distinct counts per cell (also after a purge), the two
largest values, and maxContributionsPerCell."""

import hashlib
import hmac
import json
import os
import random
import threading

import pytest
import sqlalchemy as sa

from dacc.aggregation.compute import compute_aggregation, compute_wildcard_aggregate
from dacc.config import Config, ConfigError
from dacc.contributors import SECRET_FILE, contributor_key, hash_contributor, init_contributor_key
from dacc.db import db
from dacc.ingestion import record_measure, record_measures
from dacc.models import ContributorQuota, RawMeasure
from dacc.models.measures import CELL_KEY_HASH
from dacc.purge import purge_raw_measures
from tests.conftest import CONTRIBUTOR_SECRET


def body(value=1, group="x", contributor=None, day="2022-01-01", **extra):
    item = {"measureName": "m", "value": value, "startDate": day, "createdBy": "app", "group1": {"g1": group}}
    if contributor is not None:
        item["contributor"] = contributor
    return {**item, **extra}


def cell_key(created_by, group1, group2=None, group3=None) -> int:
    """The cell's CELL_KEY_HASH, as contributor_quota keys it."""
    return db.session.execute(
        sa.text(
            f"SELECT {CELL_KEY_HASH.format(t='c.')} FROM (SELECT CAST(:created_by AS text) AS created_by,"
            " CAST(:group1 AS jsonb) AS group1, CAST(:group2 AS jsonb) AS group2,"
            " CAST(:group3 AS jsonb) AS group3) AS c"
        ),
        {
            "created_by": created_by,
            **{f"group{i}": json.dumps(g) if g else None for i, g in enumerate((group1, group2, group3), 1)},
        },
    ).scalar()


def cells(name="m"):
    """{group1 value or '*': (count, contributors, largest, second largest)}."""
    rows = db.session.execute(
        sa.text(
            "SELECT group1->>'g1', count, contributors, largest_value, second_largest_value"
            " FROM aggregate WHERE measure_name = :name"
        ),
        {"name": name},
    ).all()
    return {g: (n, c, hi, hi2) for g, n, c, hi, hi2 in rows}


def recomputed(name="m"):
    """The same from all raw rows, counted as the rule says."""
    rows = db.session.execute(
        sa.text("""
        SELECT g, count(*), count(DISTINCT contributor) + count(*) FILTER (WHERE contributor IS NULL),
               (array_agg(value ORDER BY value DESC))[1], (array_agg(value ORDER BY value DESC))[2]
        FROM raw_measure, LATERAL (VALUES (group1->>'g1'), ('*')) AS l(g)
        WHERE measure_name = :name GROUP BY g"""),
        {"name": name},
    ).all()
    return {g: (n, c, hi, hi2) for g, n, c, hi, hi2 in rows}


@pytest.fixture
def measure(make_definition):
    return make_definition("m", wildcard_groups=[["group1"]], p_percent=10)


def test_k_counts_distinct_contributors_on_plain_and_wildcard_cells_also_after_a_purge(measure):
    record_measures(
        [
            body(1, "x", "alice"),
            body(2, "x", "alice"),
            body(3, "x", "alice"),
            body(4, "x", "bob"),
            body(5, "y", "alice"),
            body(6, "y"),
            body(7, "y"),
        ]
    )
    compute_aggregation("m", force=True)
    assert (
        cells()
        == recomputed()
        == {
            "x": (4, 2, 4, 3),
            "y": (3, 3, 7, 6),
            "*": (7, 4, 7, 6),
        }
    )
    db.session.execute(
        sa.update(RawMeasure).values(last_updated=sa.func.now() - sa.text("interval '10 days'"))
    )
    db.session.commit()
    assert purge_raw_measures("m", days=1).deleted == 7
    # alice again (already counted everywhere), carol new, one more without contributor.
    record_measures([body(0, "x", "alice"), body(9, "x", "carol"), body(8, "y", "carol"), body(1, "y")])
    compute_aggregation("m", force=True)
    assert cells() == {
        "x": (6, 3, 9, 4),
        "y": (5, 5, 8, 7),
        "*": (11, 6, 9, 8),
    }


def test_without_contributors_k_is_the_count_as_in_dacc(measure):
    record_measures([body(v, g) for v, g in [(1, "x"), (1, "x"), (2, "y")]])
    compute_aggregation("m", force=True)
    assert cells() == {"x": (2, 2, 1, 1), "y": (1, 1, 2, None), "*": (3, 3, 2, 1)}


def test_the_two_largest_values_merge_exactly_over_runs(measure):
    rng = random.Random(17)
    people = [f"p{i}" for i in range(6)]
    for _ in range(4):
        record_measures(
            [
                body(rng.randint(-500, 500) / 4, rng.choice("xyz"), rng.choice(people + [None]))
                for _ in range(40)
            ]
        )
        compute_aggregation("m", force=True)
        assert cells() == recomputed()


def test_a_windowed_wildcard_level_counts_contributors_too(make_definition):
    make_definition("m", group2_key="g2", p_percent=10)
    record_measures(
        [
            body(1, "x", "alice", group2={"g2": 1}),
            body(2, "y", "alice", group2={"g2": 2}),
            body(3, "y", group2={"g2": 2}),
        ]
    )
    compute_aggregation("m", force=True)
    compute_wildcard_aggregate("m", ["group1", "group2"])
    star = db.session.execute(
        sa.text(
            "SELECT count, contributors, largest_value, second_largest_value FROM aggregate"
            ' WHERE group1 = \'{"g1": "*"}\''
        )
    ).one()
    assert tuple(star) == (3, 2, 3, 2)


def test_the_pseudonym_is_stored_only_as_a_keyed_hash_scoped_to_the_writer_org(measure, caplog):
    caplog.set_level("DEBUG")
    record_measure(body(contributor="alice-secret-pseudonym"), org="cozy")
    record_measure(body(contributor="alice-secret-pseudonym"), org="other")
    compute_aggregation("m", force=True)
    hashes = db.session.scalars(sa.select(RawMeasure.contributor).order_by(RawMeasure.id)).all()
    expected = hmac.new(CONTRIBUTOR_SECRET.encode(), b"cozy\0alice-secret-pseudonym", hashlib.sha256).digest()
    assert hashes[0] == expected and len(hashes[1]) == 32 and hashes[1] != expected
    assert cells()["x"][1] == 2  # two orgs' "alice" are two contributors
    dump = db.session.execute(
        sa.text("SELECT string_agg(t::text, ' ') FROM (SELECT * FROM raw_measure) t")
    ).scalar()
    assert "alice" not in dump and "alice" not in caplog.text


@pytest.mark.parametrize("pseudonym", ["", "x" * 129, 12, ["a"], "tab\there"])
def test_a_malformed_contributor_is_400(client, measure, auth_header, pseudonym):
    response = client.post("/measure", json=body(contributor=pseudonym), headers=auth_header())
    assert response.status_code == 400
    assert response.get_json()["error"].startswith("contributor:")


def test_over_the_cap_a_contributor_is_refused_with_409(client, make_definition, auth_header):
    make_definition("m", max_contributions_per_cell=2)
    headers = auth_header()
    for _ in range(2):
        assert client.post("/measure", json=body(contributor="alice"), headers=headers).status_code == 201
    response = client.post("/measure", json=body(contributor="alice"), headers=headers)
    assert response.status_code == 409
    assert "maxContributionsPerCell" in response.get_json()["error"]
    # Another cell, another contributor, no contributor: still accepted.
    for other in (body(contributor="alice", group="y"), body(contributor="bob"), body()):
        assert client.post("/measure", json=other, headers=headers).status_code == 201
    # A keyed duplicate stays a duplicate; a new keyed measure over the cap leaves no key.
    keyed = body(contributor="bob", measureId="b-1")
    assert client.post("/measure", json=keyed, headers=headers).status_code == 201
    assert client.post("/measure", json=keyed, headers=headers).status_code == 200
    over = body(contributor="bob", measureId="b-2")
    assert client.post("/measure", json=over, headers=headers).status_code == 409
    assert client.post("/measure", json=over, headers=headers).status_code == 409
    # Bulk: all or nothing.
    items = [body(contributor="carol"), body(contributor="carol", group="y"), body(contributor="carol")]
    assert client.post("/measures", json=items, headers=headers).status_code == 201
    response = client.post(
        "/measures", json=[body(contributor="dave"), body(contributor="carol")], headers=headers
    )
    assert response.status_code == 409
    assert db.session.scalar(sa.select(sa.func.count()).select_from(RawMeasure)) == 9
    keys = {cell_key("app", {"g1": g}): g for g in ("x", "y")}
    quotas = db.session.execute(
        sa.select(ContributorQuota.cell_key, sa.func.sum(ContributorQuota.contributions)).group_by(
            ContributorQuota.cell_key
        )
    ).all()
    assert {keys[key]: n for key, n in quotas} == {"x": 6, "y": 2}


def test_the_cap_holds_under_concurrent_writers(app, make_definition):
    make_definition("m", max_contributions_per_cell=3)
    outcomes, start = [], threading.Barrier(8)

    def send(keyed):
        with app.app_context():
            start.wait()
            try:
                record_measure(
                    body(contributor="alice", measureId=f"c-{keyed}")
                    if keyed % 2
                    else body(contributor="alice")
                )
                outcomes.append(201)
            except Exception as exc:  # Conflict
                outcomes.append(getattr(exc, "status", 500))

    threads = [threading.Thread(target=send, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == [201] * 3 + [409] * 5
    assert db.session.scalar(sa.select(sa.func.count()).select_from(RawMeasure)) == 3


def test_the_embedded_default_generates_its_secret_once_with_mode_0600(tmp_path):
    from flask import Flask

    config = Config(data_dir=str(tmp_path / "instance" / "pgdata"))
    first, second = Flask("a"), Flask("b")
    init_contributor_key(first, config)
    init_contributor_key(second, config)
    # Nothing written at start: only a measure with a contributor needs the key.
    assert not (tmp_path / "instance").exists()
    keys = []
    for app in (first, second):
        with app.app_context():
            keys.append(contributor_key())
            assert contributor_key() == keys[-1]
    path = tmp_path / "instance" / SECRET_FILE
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert keys[0] == keys[1] == path.read_text().strip().encode()
    assert len(keys[0]) >= 32
    # A later start reads the same one at once.
    third = Flask("c")
    init_contributor_key(third, config)
    assert third.extensions["dacc_contributor_key"] == keys[0]
    assert "secret" not in repr(Config(contributor_secret="s" * 40)).replace("contributor_secret", "")


def test_a_short_instance_secret_stops_the_start_naming_the_file(tmp_path):
    from flask import Flask

    (tmp_path / "instance").mkdir()
    (tmp_path / "instance" / SECRET_FILE).write_text("short\n")
    config = Config(data_dir=str(tmp_path / "instance" / "pgdata"))
    with pytest.raises(ConfigError, match=r"contributor_secret: the contributor secret must hold at least"):
        init_contributor_key(Flask("a"), config)


def test_without_a_secret_an_external_database_refuses_contributors_with_503(client, measure, auth_header):
    client.application.extensions["dacc_contributor_key"], saved = (
        None,
        client.application.extensions["dacc_contributor_key"],
    )
    try:
        response = client.post("/measure", json=body(contributor="alice"), headers=auth_header())
        assert response.status_code == 503 and "contributor_secret" in response.get_json()["error"]
        assert client.post("/measure", json=body(), headers=auth_header()).status_code == 201
    finally:
        client.application.extensions["dacc_contributor_key"] = saved


def test_hash_is_keyed():
    assert hash_contributor(b"k1" * 16, "o", "p") != hash_contributor(b"k2" * 16, "o", "p")


def test_a_rebuild_counts_the_same_contributors_again(measure):
    from datetime import date

    from dacc.aggregation.compute import delete_aggregations_from_date

    record_measures([body(1, "x", "alice"), body(2, "x", "alice"), body(3, "y", "bob"), body(4, "y")])
    compute_aggregation("m", force=True)
    before = cells()
    delete_aggregations_from_date("m", date(2022, 1, 1))
    assert db.session.execute(sa.text("SELECT count(*) FROM cell_contributor")).scalar() == 0
    compute_aggregation("m", force=True)
    assert cells() == before == {"x": (2, 1, 2, 1), "y": (2, 2, 4, 3), "*": (4, 3, 4, 3)}


def test_without_a_dominance_rule_no_second_largest_is_kept_and_setting_one_rebuilds(app, measure):
    from dacc.definitions import upsert_definitions, validate_definitions

    db.session.execute(sa.text("UPDATE measure_definition SET p_percent = NULL"))
    db.session.commit()
    record_measures([body(1, "x", "alice"), body(5, "x", "bob"), body(3, "x")])
    compute_aggregation("m", force=True)
    assert cells()["x"] == (3, 3, 5, None)
    item = {
        "name": "m",
        "org": "org",
        "group1Key": "g1",
        "aggregationThreshold": 1,
        "wildcardGroups": [["group1"]],
        "pPercent": 15,
    }
    assert upsert_definitions(validate_definitions([item])) == [("m", "rebuilding")]
    compute_aggregation("m", force=True)
    assert cells() == recomputed() == {"x": (3, 3, 5, 3), "*": (3, 3, 5, 3)}
