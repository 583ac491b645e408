"""Measure definitions: file validation, upsert, listing, removal, per-process cache."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import sqlalchemy as sa
from flask import current_app

from dacc.aggregation.compute import delete_aggregations_from_date
from dacc.db import db
from dacc.errors import BadRequest, DaccError, NotFound
from dacc.models import (
    Aggregate,
    AggregationState,
    CellContributor,
    ContributorQuota,
    MeasureDefinition,
    MeasureKey,
    PublicationPiece,
    PublishedVersion,
    RawMeasure,
    RefusedRawMeasure,
)
from dacc.models.definitions import ANY_WRITER, EXTREMES, KEY_LENGTH, NAME_LENGTH, PERIODS
from dacc.validation import storable_text

log = logging.getLogger(__name__)

DEFAULT_FILE = Path(__file__).resolve().parent / "assets" / "definitions.json"
CACHE_SECONDS = 5.0
"""How long a process trusts a cached definition: another process's change (a CLI
upsert or removal) reaches every web process within this time."""
CACHE_KEY = "dacc_definition_cache"
MAX_ERRORS_SHOWN = 20
GROUPS = ("group1", "group2", "group3")


def _text(limit, *, required=False):
    def check(value):
        if value is None and not required:
            return None
        if not isinstance(value, str) or not value or len(value) > limit:
            raise ValueError(f"must be a string of 1 to {limit} characters")
        if value != value.strip() or not value.isprintable():
            raise ValueError("must not hold control characters or surrounding spaces")
        return value

    return check


def _description(value):
    if value is not None and not isinstance(value, str):
        raise ValueError("must be a string or null")
    if value is not None and not storable_text(value):
        raise ValueError("must not hold NUL characters or lone surrogates")
    return value


def _choice(value):
    if value not in PERIODS:
        raise ValueError(f"must be one of {', '.join(PERIODS)}, got {json.dumps(value)}")
    return value


def _integer(minimum, *, nullable=False):
    def check(value):
        if value is None and nullable:
            return None
        # bool is an int subclass in Python: true must not pass for 1.
        if not isinstance(value, int) or isinstance(value, bool) or not minimum <= value < 2**31:
            raise ValueError(f"must be an integer ≥ {minimum}" + (" or null" if nullable else ""))
        return value

    return check


def _extremes(value):
    if value not in EXTREMES:
        raise ValueError(f"must be one of {', '.join(EXTREMES)}, got {json.dumps(value)}")
    return value


def _p_percent(value):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 100:
        raise ValueError("must be a number above 0 and at most 100, or null")
    return Decimal(repr(value)).quantize(Decimal("0.01"))


def _writers(value):
    """A non-empty list of orgs, or ["*"]; None (absent) is resolved by upsert_definitions."""
    if value is None:
        return None
    check = _text(KEY_LENGTH, required=True)
    if not isinstance(value, list) or not value:
        raise ValueError(f'must be a non-empty list of orgs, or ["{ANY_WRITER}"] for any token')
    for org in value:
        check(org)
    if ANY_WRITER in value and len(value) > 1:
        raise ValueError(f'"{ANY_WRITER}" (any token) goes alone')
    if len(set(value)) != len(value):
        raise ValueError("names an org twice")
    return sorted(value)


def _boolean(value):
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


# camelCase field in the file → (column, default when absent, check). An upsert writes
# every column, so a field left out of the file goes back to its default.
FIELDS = {
    "id": ("id", None, _integer(1, nullable=True)),
    "name": ("name", None, _text(NAME_LENGTH, required=True)),
    "org": ("org", None, _text(KEY_LENGTH, required=True)),
    "createdBy": ("created_by", None, _text(KEY_LENGTH)),
    "group1Key": ("group1_key", None, _text(KEY_LENGTH)),
    "group2Key": ("group2_key", None, _text(KEY_LENGTH)),
    "group3Key": ("group3_key", None, _text(KEY_LENGTH)),
    "description": ("description", None, _description),
    "aggregationPeriod": ("aggregation_period", "day", _choice),
    "executionFrequency": ("execution_frequency", "day", _choice),
    "aggregationThreshold": ("aggregation_threshold", 5, _integer(1)),
    "accessApp": ("access_app", False, _boolean),
    "accessPublic": ("access_public", False, _boolean),
    "withQuartiles": ("with_quartiles", False, _boolean),
    "maxDaysToUpdateQuartile": ("max_days_to_update_quartile", 100, _integer(0)),
    "wildcardGroups": ("wildcard_groups", [], None),  # checked with the group keys
    "rawRetentionDays": ("raw_retention_days", None, _integer(1, nullable=True)),
    "publishDelayHours": ("publish_delay_hours", 0, _integer(0)),
    # Absent: [org] for a new definition, unchanged for a stored one (see upsert_definitions).
    "writers": ("writers", None, _writers),
    "extremes": ("extremes", "k2", _extremes),
    "pPercent": ("p_percent", None, _p_percent),
    "maxContributionsPerCell": ("max_contributions_per_cell", None, _integer(1, nullable=True)),
}
COLUMNS = [column for column, _, _ in FIELDS.values() if column != "id"]


@dataclasses.dataclass(frozen=True)
class DefinitionRules:
    """What ingestion needs of a definition; a plain value, safe to share across requests."""

    name: str
    created_by: str | None
    group_keys: tuple[str | None, str | None, str | None]
    aggregation_period: str
    writers: frozenset[str]
    """Orgs whose tokens may send the measure; {"*"}: any token."""
    max_contributions: int | None


# --- reading and validating a definitions file -------------------------------------


def read_definitions_file(path: str | Path) -> list[dict]:
    """Read and validate `{"definitions": [...]}`; return one column dict per definition.

    Raises BadRequest naming the file, or each faulty definition (index and name) and
    field. Nothing is written.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise BadRequest(f"{path}: cannot read ({exc.strerror})") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise BadRequest(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("definitions"), list):
        raise BadRequest(f'{path}: expected an object {{"definitions": [...]}}')
    return validate_definitions(data["definitions"])


def validate_definitions(items: list) -> list[dict]:
    """Check every definition; raise one BadRequest listing the faults, else return rows."""
    rows, errors, seen = [], [], {}
    for index, item in enumerate(items):
        name = item.get("name") if isinstance(item, dict) else None
        where = f"definitions[{index}]" + (f" (name {json.dumps(name)})" if isinstance(name, str) else "")
        try:
            row = _validate_definition(item)
        except ValueError as exc:
            errors.append(f"{where}: {exc}")
            continue
        if row["name"] in seen:
            errors.append(f"{where}: name: duplicate of definitions[{seen[row['name']]}]")
            continue
        seen[row["name"]] = index
        rows.append(row)
    ids = [row["id"] for row in rows if row["id"] is not None]
    if len(ids) != len(set(ids)):
        errors.append("definitions: id: the same id is given to several definitions")
    if errors:
        more = len(errors) - MAX_ERRORS_SHOWN
        shown = errors[:MAX_ERRORS_SHOWN] + ([f"... and {more} more"] if more > 0 else [])
        raise BadRequest("invalid definitions, nothing written:\n" + "\n".join(shown))
    return rows


def _validate_definition(item) -> dict:
    if not isinstance(item, dict):
        raise ValueError("expected an object")
    unknown = sorted(set(item) - set(FIELDS))
    if unknown:
        raise ValueError(f"{unknown[0]}: unknown field (known: {', '.join(FIELDS)})")
    row = {}
    for field, (column, default, check) in FIELDS.items():
        value = item.get(field, default)
        if check is not None:
            try:
                value = check(value)
            except ValueError as exc:
                raise ValueError(f"{field}: {exc}") from None
        row[column] = value
    keys = [row["group1_key"], row["group2_key"], row["group3_key"]]
    for i in (1, 2):
        if keys[i] is not None and keys[i - 1] is None:
            raise ValueError(f"group{i + 1}Key: set while group{i}Key is not (group keys are positional)")
    present = [k for k in keys if k is not None]
    if len(present) != len(set(present)):
        raise ValueError("groupKeys: the same key is used twice")
    row["wildcard_groups"] = _wildcard_levels(item.get("wildcardGroups", []), len(present))
    return row


def _wildcard_levels(levels, group_count: int) -> list[list[str]]:
    """Each level is a list of groups the definition has, e.g. [["group2"], ["group1", "group2"]]."""
    if not isinstance(levels, list):
        raise ValueError("wildcardGroups: must be a list of lists of group names")
    result = []
    for i, level in enumerate(levels):
        where = f"wildcardGroups[{i}]"
        if not isinstance(level, list) or not level:
            raise ValueError(f"{where}: must be a non-empty list of group names")
        for group in level:
            if group not in GROUPS[:group_count]:
                have = ", ".join(GROUPS[:group_count]) or "none"
                raise ValueError(
                    f"{where}: {json.dumps(group)} is not a group of this definition (has: {have})"
                )
        if len(set(level)) != len(level):
            raise ValueError(f"{where}: names a group twice")
        level = sorted(level)
        if level in result:
            raise ValueError(f"{where}: duplicate level")
        result.append(level)
    return result


# --- writing ------------------------------------------------------------------------


def upsert_definitions(rows: list[dict]) -> list[tuple[str, str]]:
    """Insert or update validated definitions by name, in one transaction.

    Returns (name, "inserted" | "updated" | "rebuilding" | "unchanged") per definition;
    "rebuilding": updated, and its aggregates deleted for the next aggregation run to
    rebuild them from the raw measures (its wildcard levels changed). An `id` is used for
    a new definition and must match an existing one's. Raises BadRequest (nothing
    written) when an id clashes or a change would leave stored data wrong (see
    _check_changes), Conflict when an aggregation run holds a measure to rebuild.
    Commits, then republishes (audited) the measures whose publication rules changed.
    """
    names = [row["name"] for row in rows]
    existing = {
        d.name: d
        for d in db.session.scalars(
            sa.select(MeasureDefinition).where(MeasureDefinition.name.in_(names)).with_for_update()
        )
    }
    for row in rows:
        if row["writers"] is None:
            # Left out of the file: a new definition is written by its own org only (safe
            # by default); a stored one keeps its grants, so that re-importing an older
            # file never locks its writers out (nor opens the measure) silently.
            current = existing.get(row["name"])
            row["writers"] = list(current.writers) if current else [row["org"]]
    with_id = [row for row in rows if row["id"] is not None]
    outcomes = {}
    try:
        rebuilds, view_changed = _check_changes(rows, existing)
        # Rows with an explicit id first; the identity sequence, which they bypass, then
        # moves past them before the other rows take ids from it.
        for row in with_id:
            outcomes[row["name"]] = _upsert_one(row, existing.get(row["name"]))
        if with_id:
            _flush()
            _move_sequence_past_ids()
        for row in rows:
            if row["id"] is None:
                outcomes[row["name"]] = _upsert_one(row, existing.get(row["name"]))
        _flush()
        _schedule_rebuilds([existing[name] for name in rebuilds], rebuilds)
    except DaccError:
        db.session.rollback()
        raise
    for name in rebuilds:
        outcomes[name] = "rebuilding"
    results = [(row["name"], outcomes[row["name"]]) for row in rows]
    db.session.commit()
    forget_cached_definitions()
    for name, outcome in results:
        if outcome != "unchanged":
            log.info("definition %s %s", name, outcome)
    if view_changed:
        from dacc.publication import publish_pending

        publish_pending(names=view_changed, full=True)
    return results


# Columns that shape stored rows: raw start dates are cut to the period at ingestion,
# groups are stored under their keys, cells hold quartiles or not. Changing one under
# stored data would mix old and new shapes in the same measure.
FIXED_WITH_DATA = {
    "aggregation_period": "aggregationPeriod",
    "group1_key": "group1Key",
    "group2_key": "group2Key",
    "group3_key": "group3Key",
    "with_quartiles": "withQuartiles",
}
VIEW_COLUMNS = ("aggregation_threshold", "publish_delay_hours")
"""Columns the publication rules read: changing one calls for a full republication."""


def _check_changes(rows: list[dict], existing: dict) -> tuple[dict[str, datetime], list[str]]:
    """Refuse changes that stored data forbids; nothing is written here.

    Returns the measures whose aggregates must be rebuilt (name → first cell start) and
    the measures to republish (a publication rule changed). Raises one BadRequest
    listing every fault.
    """
    errors, rebuilds, view_changed = [], {}, []
    for index, row in enumerate(rows):
        current = existing.get(row["name"])
        if current is None:
            continue
        changed = {c for c in COLUMNS if getattr(current, c) != row[c]}
        if changed & set(VIEW_COLUMNS):
            view_changed.append(row["name"])
        # Cells keep their second largest value only under a dominance rule: one set
        # later needs the cells rebuilt from their raw measures.
        dominance = current.p_percent is None and row["p_percent"] is not None
        if not (changed & (set(FIXED_WITH_DATA) | {"created_by", "wildcard_groups"}) or dominance):
            continue
        data = _stored_data(row["name"], row["created_by"])
        if not (data.raw or data.cells):
            continue
        where = f"definitions[{index}] (name {json.dumps(row['name'])})"
        held = f"while {row['name']} has raw measures or aggregates"
        for column in sorted(changed & set(FIXED_WITH_DATA)):
            old, new = json.dumps(getattr(current, column)), json.dumps(row[column])
            errors.append(f"{where}: {FIXED_WITH_DATA[column]}: cannot change from {old} to {new} {held}")
        if "created_by" in changed and row["created_by"] is not None and data.other_creators:
            errors.append(
                f"{where}: createdBy: cannot become {json.dumps(row['created_by'])}: stored"
                " raw measures or aggregates come from other apps"
            )
        if "wildcard_groups" in changed and data.cells:
            if data.purged:
                errors.append(
                    f"{where}: wildcardGroups: cannot change: raw measures of {row['name']} were"
                    " purged, so its aggregates cannot be rebuilt from them"
                )
            else:
                rebuilds[row["name"]] = data.first_cell
        if dominance and data.cells:
            if data.purged:
                errors.append(
                    f"{where}: pPercent: cannot be set: raw measures of {row['name']} were purged,"
                    " so the two largest values of its cells cannot be recomputed"
                )
            else:
                rebuilds[row["name"]] = data.first_cell
    if errors:
        raise BadRequest("definitions not written:\n" + "\n".join(errors[:MAX_ERRORS_SHOWN]))
    return rebuilds, view_changed


def _stored_data(name: str, created_by: str | None):
    """What is stored for a measure: raw rows? cells? purged cells? rows from other apps?"""
    raw = sa.select(RawMeasure.id).where(RawMeasure.measure_name == name)
    cells = sa.select(Aggregate.id).where(Aggregate.measure_name == name)
    # Each EXISTS stops at its first row (both tables are indexed by measure_name first).
    return db.session.execute(
        sa.select(
            raw.exists().label("raw"),
            cells.exists().label("cells"),
            cells.where(Aggregate.last_raw_measures_purged.is_not(None)).exists().label("purged"),
            sa.or_(
                raw.where(RawMeasure.created_by.is_distinct_from(created_by)).exists(),
                cells.where(Aggregate.created_by.is_distinct_from(created_by)).exists(),
            ).label("other_creators"),
            sa.select(sa.func.min(Aggregate.start_date))
            .where(Aggregate.measure_name == name)
            .scalar_subquery()
            .label("first_cell"),
        )
    ).one()


def _schedule_rebuilds(changed: list[MeasureDefinition], first_cells: dict[str, datetime]) -> None:
    """Delete every aggregate of each measure and mark it for rebuild by the next run.

    Runs before the definitions commit, each in its own transaction under the measure's
    lock: if one fails, the definitions roll back and a measure already cleared is just
    rebuilt as it was. Committing the definitions first could leave a new level fed only
    by later rows, the corruption this guards against, when a run held the lock.
    """
    for definition in changed:
        delete_aggregations_from_date(definition, first_cells[definition.name].date())


def _flush() -> None:
    try:
        db.session.flush()
    except sa.exc.IntegrityError:
        raise BadRequest("definitions: a name or id clashed with a concurrent change; run again") from None


def _move_sequence_past_ids() -> None:
    db.session.execute(
        sa.text(
            "SELECT setval(pg_get_serial_sequence('measure_definition', 'id'),"
            " (SELECT coalesce(max(id), 0) + 1 FROM measure_definition), false)"
        )
    )


def _upsert_one(row: dict, current: MeasureDefinition | None) -> str:
    if current is None:
        if row["id"] is not None:
            taken = db.session.get(MeasureDefinition, row["id"])
            if taken is not None:
                raise BadRequest(
                    f"definition {json.dumps(row['name'])}: id: {row['id']} belongs to {json.dumps(taken.name)}"
                )
        values = {c: row[c] for c in COLUMNS}
        db.session.add(MeasureDefinition(id=row["id"], **values))
        return "inserted"
    if row["id"] is not None and row["id"] != current.id:
        raise BadRequest(
            f"definition {json.dumps(row['name'])}: id: the stored definition has id {current.id}"
        )
    changed = [c for c in COLUMNS if getattr(current, c) != row[c]]
    if not changed:
        return "unchanged"
    for column in changed:
        setattr(current, column, row[column])
    current.updated_at = sa.func.now()
    return "updated"


def list_definitions() -> list[MeasureDefinition]:
    return list(db.session.scalars(sa.select(MeasureDefinition).order_by(MeasureDefinition.name)))


def remove_definition(name: str) -> dict[str, int]:
    """Delete a definition with its raw, refused and keyed measures, aggregates and state.

    Returns how many rows of each went. Raises NotFound. Commits once: all or nothing.
    """
    definition = db.session.scalar(
        sa.select(MeasureDefinition).where(MeasureDefinition.name == name).with_for_update()
    )
    if definition is None:
        raise NotFound(f"no definition named {json.dumps(name)}")
    counts = {}
    for label, model in (
        ("raw measures", RawMeasure),
        ("refused measures", RefusedRawMeasure),
        ("measure ids", MeasureKey),
        ("aggregates", Aggregate),
        ("aggregation states", AggregationState),
    ):
        result = db.session.execute(sa.delete(model).where(model.measure_name == name))
        counts[label] = result.rowcount
    # Bookkeeping of the measures above (keyed hashes), not reported apart.
    for model in (ContributorQuota, CellContributor):
        db.session.execute(sa.delete(model).where(model.measure_name == name))
    db.session.delete(definition)
    db.session.flush()
    # The ledger's history names its measure without a foreign key: deleted after the
    # definition, whose delete waits for a publication holding the measure's state, so
    # that what such a publication appended is deleted too.
    for model in (PublishedVersion, PublicationPiece):
        db.session.execute(sa.delete(model).where(model.measure_name == name))
    db.session.commit()
    forget_cached_definitions()
    log.info("definition %s removed (%s)", name, counts)
    return counts


# --- the per-process cache used by ingestion -----------------------------------------


def get_definition_rules(name: str) -> DefinitionRules | None:
    """The definition named `name`, from this process's cache when fresh, else the database.

    An unknown name is never cached, so a definition inserted by another process works
    at its first measure.
    """
    cache = current_app.extensions.setdefault(CACHE_KEY, {})
    now = time.monotonic()
    hit = cache.get(name)
    if hit is not None and hit[0] > now:
        return hit[1]
    row = db.session.execute(
        sa.select(
            MeasureDefinition.name,
            MeasureDefinition.created_by,
            MeasureDefinition.group1_key,
            MeasureDefinition.group2_key,
            MeasureDefinition.group3_key,
            MeasureDefinition.aggregation_period,
            MeasureDefinition.writers,
            MeasureDefinition.max_contributions_per_cell,
        ).where(MeasureDefinition.name == name)
    ).first()
    if row is None:
        cache.pop(name, None)
        return None
    keys = (row.group1_key, row.group2_key, row.group3_key)
    rules = DefinitionRules(
        row.name,
        row.created_by,
        keys,
        row.aggregation_period,
        frozenset(row.writers),
        row.max_contributions_per_cell,
    )
    cache[name] = (now + CACHE_SECONDS, rules)
    return rules


def forget_cached_definitions() -> None:
    current_app.extensions.pop(CACHE_KEY, None)
