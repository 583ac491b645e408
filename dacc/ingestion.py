"""Raw measures: the one place that validates and stores them (/measure, /measures, MQTT)."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import NamedTuple

import sqlalchemy as sa
from flask import current_app
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session, scoped_session

from dacc.contributors import contributor_key, hash_contributor
from dacc.db import db
from dacc.definitions import DefinitionRules, get_definition_rules
from dacc.errors import BadRequest, Conflict, Forbidden
from dacc.measure_writer import MeasureWriter
from dacc.models.definitions import ANY_WRITER, KEY_LENGTH, NAME_LENGTH
from dacc.models.measures import CELL_KEY_HASH, CURRENT_XID_SQL
from dacc.validation import FUTURE_TOLERANCE, shown

log = logging.getLogger(__name__)

MAX_BATCH = 10_000
MAX_ERRORS_LISTED = 100
VALUE_LIMIT = Decimal(10) ** 14
"""raw_measure.value is numeric(16, 2): |value| must stay below 10^14."""
CENT = Decimal("0.01")
MEASURE_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
NUMERIC_STRING = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d{1,4})?")
START_DATE = re.compile(
    r"\d{4}-\d{2}-\d{2}" r"(?:[Tt ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d{1,9})?)?(?:[Zz]|[+-]\d{2}(?::?\d{2})?)?)?"
)
_INT_GROUP_LIMIT = 10**KEY_LENGTH
WRITER_EXTENSION = "dacc_measure_writer"
WILDCARD = "*"
"""A group value of "*" marks a wildcard aggregate: a raw measure carrying it would be
merged into the wildcard cell and skew (or unmask) it."""


Executor = Connection | Session | scoped_session
"""Where a statement of ingestion runs: the batch's Core connection or the session."""


class Measure(NamedTuple):
    """A validated raw measure, ready to store. (A tuple: cheap to build 10,000 times.)"""

    measure_name: str
    value: Decimal
    start_date: datetime
    """UTC, naive, truncated to the start of the definition's aggregation period."""
    created_by: str
    group1: dict | None
    group2: dict | None
    group3: dict | None
    measure_id: str | None
    contributor: bytes | None = None
    """Keyed hash of the writer's org and the client's pseudonym (dacc.contributors)."""
    org: str | None = None
    """The writer's org: its measureIds are its own (measure_key)."""


@dataclasses.dataclass(frozen=True)
class RecordResult:
    inserted: int
    duplicates: int


class _Batch:
    """Per-call memo: the same definition and startDate recur across a batch."""

    def __init__(self):
        self.now = datetime.now(UTC).replace(tzinfo=None)
        self.rules: dict[str, DefinitionRules] = {}
        self.dates: dict[tuple[str, str], datetime] = {}
        self.contributor_key: bytes | None = None
        self.contributors: dict[str, bytes] = {}
        """pseudonym → hash, for this call's writer org (a batch has one writer)."""


# --- validation -----------------------------------------------------------------------


def parse_measure(
    body, *, org: str | None = None, app: str | None = None, _batch: _Batch | None = None
) -> Measure:
    """Validate one DACC measure body; raise BadRequest naming the field at fault.

    `org` and `app` are the writer's (its token's org and bound app); None for a caller
    without one. A writer the definition's `writers` do not list, or whose token is bound
    to another app, gets Forbidden before any check that would tell it the measure's
    schema. Reads the definition (cached); writes nothing. Unknown top-level fields are
    ignored.
    """
    batch = _batch or _Batch()
    if type(body) is not dict:
        raise BadRequest("body: expected a JSON object")
    # The memo lookups are inlined: this runs 10,000 times per bulk request.
    name = body.get("measureName")
    rules = batch.rules.get(name) if type(name) is str else None
    if rules is None:
        rules = _rules(name, batch)
    if org is not None and org not in rules.writers and ANY_WRITER not in rules.writers:
        raise Forbidden(f"measureName: this token may not send measures of '{rules.name}'")
    created_by = body.get("createdBy")
    if app is not None and created_by != app:
        raise Forbidden(f"createdBy: this token only sends measures created by '{app}'")
    value = _value(body.get("value"))
    start = body.get("startDate")
    start_date = batch.dates.get((start, rules.aggregation_period)) if type(start) is str else None
    if start_date is None:
        start_date = _start_date(start, rules.aggregation_period, batch)
    if type(created_by) is not str or not 0 < len(created_by) <= KEY_LENGTH or not created_by.isprintable():
        raise BadRequest(f"createdBy: expected a string of 1 to {KEY_LENGTH} printable characters")
    if rules.created_by is not None and created_by != rules.created_by:
        raise BadRequest(f"createdBy: measure '{rules.name}' only accepts '{rules.created_by}'")
    key1, key2, key3 = rules.group_keys
    group1 = _group("group1", key1, body.get("group1"), rules.name)
    group2 = _group("group2", key2, body.get("group2"), rules.name)
    group3 = _group("group3", key3, body.get("group3"), rules.name)
    measure_id = body.get("measureId")
    if measure_id is not None and (type(measure_id) is not str or not MEASURE_ID.fullmatch(measure_id)):
        raise BadRequest("measureId: expected 1 to 64 characters among A-Z a-z 0-9 . _ : -")
    pseudonym = body.get("contributor")
    contributor = None
    if pseudonym is not None:
        # One household sends many measures of a batch: hash each pseudonym once.
        contributor = batch.contributors.get(pseudonym) if type(pseudonym) is str else None
        if contributor is None:
            if batch.contributor_key is None:
                batch.contributor_key = contributor_key()
            contributor = hash_contributor(batch.contributor_key, org, pseudonym)
            batch.contributors[pseudonym] = contributor
    return Measure(
        rules.name, value, start_date, created_by, group1, group2, group3, measure_id, contributor, org
    )


class Reject(NamedTuple):
    """An invalid item of a batch: its index and what is wrong with it."""

    index: int
    error: str
    forbidden: bool = False
    """The writer may not send this measure (grants, app binding), whatever its fields."""


def validate_batch(
    items: list, *, org: str | None = None, app: str | None = None
) -> tuple[list[Measure], list[Reject]]:
    """Validate each item on its own: the valid ones as Measures, in order, and one
    Reject per invalid one. The one validator of every path that takes several measures.

    `org` is the writer's org (a token's, or an MQTT subscription's), `app` its token's
    bound app; None when the caller has none. Reads definitions (cached); writes nothing.
    """
    batch = _Batch()
    measures, rejects = [], []
    for index, item in enumerate(items):
        try:
            measures.append(parse_measure(item, org=org, app=app, _batch=batch))
        except BadRequest as exc:
            rejects.append(Reject(index, exc.message))
        except Forbidden as exc:
            rejects.append(Reject(index, exc.message, forbidden=True))
    return measures, rejects


def validate_measures(items, *, org: str | None = None, app: str | None = None) -> list[Measure]:
    """Validate a bulk body: all items or none; BadRequest lists up to 100 faulty indexes.

    Forbidden, naming no field, when one item may not be written by this writer.
    """
    if type(items) is not list:
        raise BadRequest("body: expected a JSON array of measures")
    if len(items) > MAX_BATCH:
        raise BadRequest(f"body: at most {MAX_BATCH} measures per request, got {len(items)}")
    measures, rejects = validate_batch(items, org=org, app=app)
    forbidden = next((r for r in rejects if r.forbidden), None)
    if forbidden is not None:
        raise Forbidden(f"index {forbidden.index}: {forbidden.error}; nothing stored")
    if rejects:
        first = rejects[0]
        raise BadRequest(
            f"{len(rejects)} invalid measure(s), nothing stored;"
            f" first at index {first.index}: {first.error}",
            details=[{"index": r.index, "error": r.error} for r in rejects[:MAX_ERRORS_LISTED]],
        )
    return measures


def _rules(name, batch: _Batch) -> DefinitionRules:
    if type(name) is not str or not 0 < len(name) <= NAME_LENGTH or not name.isprintable():
        raise BadRequest("measureName: expected the name of a measure definition")
    rules = get_definition_rules(name)
    if rules is None:
        raise BadRequest(f"measureName: no measure definition named '{name}'")
    batch.rules[name] = rules
    return rules


def _value(value) -> Decimal:
    kind = type(value)
    if kind is int:
        number = Decimal(value)
    elif kind is float and math.isfinite(value):
        number = Decimal(repr(value))  # the shortest decimal that reads back as this float
    elif kind is str and len(value) <= 64 and NUMERIC_STRING.fullmatch(value):
        number = Decimal(value)
    else:
        raise BadRequest(f"value: expected a finite number, got {shown(value)}")
    if abs(number) < VALUE_LIMIT:
        # Half away from zero, as PostgreSQL rounds into numeric(16, 2).
        number = number.quantize(CENT, rounding=ROUND_HALF_UP)
        if abs(number) < VALUE_LIMIT:
            return number
    raise BadRequest("value: magnitude must stay below 10^14")


def _start_date(value, period: str, batch: _Batch) -> datetime:
    if type(value) is not str or not START_DATE.fullmatch(value):
        raise BadRequest(
            "startDate: expected an ISO 8601 date or date-time"
            f" (2022-01-31, 2022-01-31T10:00:00Z), got {shown(value)}"
        )
    try:
        moment = datetime.fromisoformat(value.upper())
        if moment.tzinfo is not None:
            moment = moment.astimezone(UTC).replace(tzinfo=None)
    except (ValueError, OverflowError):
        raise BadRequest(f"startDate: not a valid date or time: {shown(value)}") from None
    if moment > batch.now + FUTURE_TOLERANCE:
        raise BadRequest("startDate: more than 24 hours in the future")
    batch.dates[(value, period)] = start = period_start(moment, period)
    return start


def period_start(moment: datetime, period: str) -> datetime:
    """Start of the day, ISO week (Monday) or month holding `moment`."""
    day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "week":
        return day - timedelta(days=day.weekday())
    if period == "month":
        return day.replace(day=1)
    return day


def _group(field: str, key: str | None, group, name: str) -> dict | None:
    if key is None:
        if group is not None:
            raise BadRequest(f"{field}: measure '{name}' has no {field}")
        return None
    if type(group) is not dict or len(group) != 1 or key not in group:
        raise BadRequest(f"{field}: expected an object with the one key '{key}', got {shown(group)}")
    value = group[key]
    kind = type(value)
    if kind is str:
        if value == WILDCARD:
            raise BadRequest(f"{field}: '{WILDCARD}' is reserved for wildcard aggregates")
        ok = len(value) <= KEY_LENGTH and value.isprintable()
    elif kind is int:
        ok = abs(value) < _INT_GROUP_LIMIT
    elif kind is float:
        ok = math.isfinite(value)
    else:
        ok = kind is bool
    if not ok:
        raise BadRequest(
            f"{field}: the value of '{key}' must be a string (at most {KEY_LENGTH} printable characters),"
            f" a finite number or a boolean, got {shown(value)}"
        )
    return group


# --- storage --------------------------------------------------------------------------

_RAW_COLUMNS = "measure_name, value, start_date, created_by, group1, group2, group3, contributor"
_RAW_VALUES = (
    ":measure_name, :value, :start_date, :created_by,"
    " CAST(:group1 AS jsonb), CAST(:group2 AS jsonb), CAST(:group3 AS jsonb), :contributor"
)
_QUOTA_KEY = "measure_name, start_date, cell_key, contributor"
"""contributor_quota's unique key: the cell as its period and CELL_KEY_HASH."""
_PARAM_CELL = (
    "(SELECT CAST(:created_by AS text) AS created_by, CAST(:group1 AS jsonb) AS group1,"
    " CAST(:group2 AS jsonb) AS group2, CAST(:group3 AS jsonb) AS group3) AS p"
)
"""One measure's cell key, as a row `p` that CELL_KEY_HASH can read."""
_PARAM_CELL_KEY = CELL_KEY_HASH.format(t="p.")
_STAGED_CELL_KEY = CELL_KEY_HASH.format(t="k.")

_INSERT = sa.text(f"INSERT INTO raw_measure ({_RAW_COLUMNS}) VALUES ({_RAW_VALUES})")

# measureId: the key row and the raw row go in one statement. The primary key of
# measure_key (measure, writer org, id) settles concurrent duplicates (the second waits
# for the first, then finds the conflict); the raw row is inserted only when its key
# was new. Another org's id is another key: it can neither be probed nor squatted.
_NEW_KEY = (
    "INSERT INTO measure_key (measure_name, org, measure_id)"
    " VALUES (:measure_name, :org, :measure_id) ON CONFLICT DO NOTHING RETURNING 1"
)
_INSERT_KEYED = sa.text(
    f"WITH new_key AS ({_NEW_KEY})"
    f" INSERT INTO raw_measure ({_RAW_COLUMNS}) SELECT {_RAW_VALUES} FROM new_key"
)

# maxContributionsPerCell: count the measure against its contributor's quota for the
# cell in the same statement as the raw row. The upsert takes the quota row's lock, so
# concurrent measures of one contributor queue on it and each sees the count the
# previous one left: the cap holds without a race. At the cap, the DO UPDATE's WHERE
# leaves the row as it is and returns nothing, and no raw row is inserted; the caller
# rolls back (the key row, if any, with it).
_INSERT_CAPPED = """
WITH new_key AS ({new_key}),
counted AS (
    INSERT INTO contributor_quota AS q ({quota_key}, contributions)
    SELECT :measure_name, :start_date, {cell_key}, :contributor, 1
    FROM new_key, {cell}
    ON CONFLICT ({quota_key}) DO UPDATE SET contributions = q.contributions + 1
    WHERE q.contributions < :cap
    RETURNING 1
),
stored AS (
    INSERT INTO raw_measure ({raw_columns}) SELECT {raw_values} FROM counted RETURNING 1
)
SELECT (SELECT count(*) FROM new_key) AS new_key, (SELECT count(*) FROM stored) AS stored
"""
_INSERT_CAPPED_KEYED = sa.text(
    _INSERT_CAPPED.format(
        new_key=_NEW_KEY,
        quota_key=_QUOTA_KEY,
        cell_key=_PARAM_CELL_KEY,
        cell=_PARAM_CELL,
        raw_columns=_RAW_COLUMNS,
        raw_values=_RAW_VALUES,
    )
)
_INSERT_CAPPED_UNKEYED = sa.text(
    _INSERT_CAPPED.format(
        new_key="SELECT 1",
        quota_key=_QUOTA_KEY,
        cell_key=_PARAM_CELL_KEY,
        cell=_PARAM_CELL,
        raw_columns=_RAW_COLUMNS,
        raw_values=_RAW_VALUES,
    )
)

_CREATE_STAGING = sa.text(
    "CREATE TEMP TABLE measure_staging (measure_name text, value numeric(16, 2),"
    " start_date timestamp, created_by text, group1 jsonb, group2 jsonb, group3 jsonb,"
    " contributor bytea, org text, measure_id text) ON COMMIT DROP"
)

# Same rules as _INSERT_KEYED and _INSERT_CAPPED, set-based. Staged ids are unique
# (deduplicated in Python); those already in measure_key for this org are skipped, the
# others stored with their raw rows. Each (cell, contributor) of a capped definition
# adds its batch count to its quota only where the sum stays within the cap: when fewer
# quotas were counted than asked, the caller rolls the whole batch back.
_INSERT_STAGED = sa.text(f"""
WITH new_key AS (
    INSERT INTO measure_key (measure_name, org, measure_id)
    SELECT measure_name, org, measure_id FROM measure_staging WHERE measure_id IS NOT NULL
    ON CONFLICT DO NOTHING RETURNING measure_name, org, measure_id
), kept AS (
    SELECT * FROM measure_staging s
    WHERE s.measure_id IS NULL OR (s.measure_name, s.org, s.measure_id) IN (SELECT * FROM new_key)
), asked AS (
    SELECT k.measure_name, k.start_date, {_STAGED_CELL_KEY} AS cell_key, k.contributor,
           count(*) AS n, min(d.max_contributions_per_cell) AS cap
    FROM kept k JOIN measure_definition d ON d.name = k.measure_name
    WHERE k.contributor IS NOT NULL AND d.max_contributions_per_cell IS NOT NULL
    GROUP BY 1, 2, 3, 4
), counted AS (
    INSERT INTO contributor_quota AS q ({_QUOTA_KEY}, contributions)
    SELECT {_QUOTA_KEY}, n FROM asked WHERE n <= cap
    ON CONFLICT ({_QUOTA_KEY}) DO UPDATE SET contributions = q.contributions + EXCLUDED.contributions
    WHERE q.contributions + EXCLUDED.contributions <= (
        SELECT d.max_contributions_per_cell FROM measure_definition d WHERE d.name = q.measure_name)
    RETURNING 1
), stored AS (
    INSERT INTO raw_measure ({_RAW_COLUMNS})
    SELECT measure_name, value, start_date, created_by, group1, group2, group3, contributor FROM kept
    RETURNING 1
)
SELECT (SELECT count(*) FROM stored) AS inserted,
       (SELECT count(*) FROM asked) AS asked,
       (SELECT count(*) FROM counted) AS counted
""")

# A capped body without measureIds goes straight into raw_measure by COPY; its quotas
# are then counted from the rows this transaction wrote (ix_raw_measure_name_txid),
# with the rule of _INSERT_STAGED, instead of staging the rows first and copying them
# over (a second write of every row). The caps are bound (:names, :caps, as the
# one-measure path binds :cap), not read per row from measure_definition.
_COUNT_COPIED = sa.text(f"""
WITH caps AS (
    SELECT * FROM unnest(CAST(:names AS text[]), CAST(:caps AS int[])) AS c(name, cap)
), asked AS (
    SELECT k.measure_name, k.start_date, {_STAGED_CELL_KEY} AS cell_key, k.contributor,
           count(*) AS n, min(c.cap) AS cap
    FROM raw_measure k JOIN caps c ON c.name = k.measure_name
    WHERE k.measure_name = ANY (CAST(:names AS text[]))
      AND k.txid = {CURRENT_XID_SQL}
      AND k.contributor IS NOT NULL
    GROUP BY 1, 2, 3, 4
), counted AS (
    INSERT INTO contributor_quota AS q ({_QUOTA_KEY}, contributions)
    SELECT {_QUOTA_KEY}, n FROM asked WHERE n <= cap
    ON CONFLICT ({_QUOTA_KEY}) DO UPDATE SET contributions = q.contributions + EXCLUDED.contributions
    WHERE q.contributions + EXCLUDED.contributions <= (SELECT c.cap FROM caps c WHERE c.name = q.measure_name)
    RETURNING 1
)
SELECT (SELECT count(*) FROM asked) AS asked, (SELECT count(*) FROM counted) AS counted
""")

_BATCH_FIELDS = ("measure_name", "value", "start_date", "created_by", "contributor", "measure_id")
# Group commit: the measures of concurrent requests as parallel arrays, unnested into
# rows, one statement. Same measureId rule as _INSERT_KEYED (ids are unique per org
# within the batch, deduplicated in Python); the data-modifying CTEs run to completion
# even though the outer SELECT reads only the keys that were new, which tell stored
# from duplicate. Measures under a contributor cap are not written here.
_INSERT_BATCH = sa.text(f"""
WITH batch AS (
    SELECT * FROM unnest(
        CAST(:measure_name AS text[]), CAST(:value AS numeric[]), CAST(:start_date AS timestamp[]),
        CAST(:created_by AS text[]), CAST(:group1 AS jsonb[]), CAST(:group2 AS jsonb[]),
        CAST(:group3 AS jsonb[]), CAST(:contributor AS bytea[]), CAST(:org AS text[]),
        CAST(:measure_id AS text[])
    ) AS b(measure_name, value, start_date, created_by, group1, group2, group3, contributor, org, measure_id)
), new_key AS (
    INSERT INTO measure_key (measure_name, org, measure_id)
    SELECT measure_name, org, measure_id FROM batch WHERE measure_id IS NOT NULL
    ON CONFLICT DO NOTHING RETURNING measure_name, org, measure_id
), stored AS (
    INSERT INTO raw_measure ({_RAW_COLUMNS})
    SELECT measure_name, value, start_date, created_by, group1, group2, group3, contributor FROM batch b
    WHERE b.measure_id IS NULL OR (b.measure_name, b.org, b.measure_id) IN (SELECT * FROM new_key)
)
SELECT measure_name, org, measure_id FROM new_key
""")

NULL = "\\N"
_COPY_COLUMNS = "(measure_name, start_date, created_by, value, group1, group2, group3, contributor"
# COPY text format: backslash starts an escape; validation already refused control
# characters, the table is there for safety.
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def record_measure(body, *, org: str | None = None, app: str | None = None) -> RecordResult:
    """Validate and store one measure; (0, 1) when its measureId is already stored for
    this writer's org.

    Raises BadRequest or Forbidden with nothing written, Conflict (nothing written) when
    its contributor already reached the definition's maxContributionsPerCell in its
    cell. Returns only once the measure is committed: alone (one INSERT statement, one
    commit) or, with group commit on (`dacc.ingest_batch_ms` > 0), in the batch that the
    process's writer shares with concurrent requests. A database error raised here means
    nothing of it is stored.
    """
    writer = _measure_writer()
    if writer is None:
        try:
            inserted = _store_one(db.session, parse_measure(body, org=org, app=app))
        except Conflict:
            db.session.rollback()
            raise
        db.session.commit()
    else:
        inserted = writer.write(parse_measure, body, org=org, app=app)
    return RecordResult(int(inserted), 1 - int(inserted))


def _measure_writer() -> MeasureWriter | None:
    """This process's writer, made on first use: after gunicorn forked the worker and
    gevent (if used) patched `threading`. None when group commit is off."""
    app = current_app._get_current_object()
    writer = app.extensions.get(WRITER_EXTENSION)
    if writer is None:
        config = app.config["DACC"]
        if not config.ingest_batch_ms:
            return None
        made = MeasureWriter(
            store_one=_store_one,
            store_batch=_store_batch,
            window_ms=config.ingest_batch_ms,
            batch_max=config.ingest_batch_max,
        )
        writer = app.extensions.setdefault(WRITER_EXTENSION, made)  # atomic: one per process
    return writer


def _store_one(connection: Executor, measure: Measure) -> bool:
    """Execute (no commit) the INSERT of one measure on `connection` (a Core connection
    or the session); False if its measureId is stored.

    Raises Conflict when its contributor is at its cap; the caller rolls back."""
    params = _params(measure)
    cap = _cap(measure)
    if cap is not None:
        params["cap"] = cap
        statement = _INSERT_CAPPED_UNKEYED if measure.measure_id is None else _INSERT_CAPPED_KEYED
        new_key, inserted = connection.execute(statement, params).one()
        if new_key and not inserted:
            raise Conflict(_cap_message(measure.measure_name, cap))
        return bool(inserted)
    if measure.measure_id is None:
        connection.execute(_INSERT, params)
        return True
    return connection.execute(_INSERT_KEYED, params).rowcount == 1


def _params(measure: Measure) -> dict:
    return {
        "measure_name": measure.measure_name,
        "value": measure.value,
        "start_date": measure.start_date,
        "created_by": measure.created_by,
        "group1": _json(measure.group1),
        "group2": _json(measure.group2),
        "group3": _json(measure.group3),
        "contributor": measure.contributor,
        "org": measure.org or "",
        "measure_id": measure.measure_id,
    }


def _store_batch(connection: Executor, measures: Sequence[Measure]) -> list[bool]:
    """Execute (no commit) the INSERT of several measures; per measure, False when its
    measureId was already stored for its org or came earlier in the batch (the first
    one is stored). Measures under a contributor cap go one statement each (the cap's
    rule); the others all in one. Raises Conflict when a capped one is at its cap."""
    seen: set[tuple] = set()
    plain: list[Measure] = []
    results: dict[int, bool] = {}
    for index, measure in enumerate(measures):
        if measure.measure_id is not None:
            key = (measure.measure_name, measure.org or "", measure.measure_id)
            if key in seen:
                results[index] = False
                continue
            seen.add(key)
        if _cap(measure) is not None:
            results[index] = _store_one(connection, measure)
        else:
            plain.append(measure)
    new_keys: set[tuple] = set()
    if plain:
        columns = dict(zip(Measure._fields, zip(*plain)))
        params = {field: list(columns[field]) for field in _BATCH_FIELDS}
        params["org"] = [org or "" for org in columns["org"]]
        for group in ("group1", "group2", "group3"):
            params[group] = [_json(g) for g in columns[group]]
        new_keys = set(connection.execute(_INSERT_BATCH, params).tuples())
    return [
        (
            results[index]
            if index in results
            else m.measure_id is None or (m.measure_name, m.org or "", m.measure_id) in new_keys
        )
        for index, m in enumerate(measures)
    ]


def record_measures(items, *, org: str | None = None, app: str | None = None) -> RecordResult:
    """Validate a bulk body and store it all, or raise (BadRequest, Forbidden, Conflict)
    and store nothing."""
    return store_measures(validate_measures(items, org=org, app=app))


def store_measures(measures: list[Measure]) -> RecordResult:
    """Store validated measures in one transaction, skipping measureIds already stored
    for their writer's org or repeated in the list (counted as duplicates). Loads with
    COPY; commits once. Raises Conflict, storing nothing, when a contributor would pass
    its cap."""
    keyed = any(m.measure_id is not None for m in measures)
    with_contributor = {m.measure_name for m in measures if m.contributor is not None}
    caps = {name: _max_contributions(name) for name in sorted(with_contributor)}
    capped = {name: cap for name, cap in caps.items() if cap is not None}
    lines = _copy_lines(measures, keyed)
    duplicates = len(measures) - len(lines)
    if not lines:
        return RecordResult(0, duplicates)
    data = io.StringIO("".join(lines))
    if keyed:
        db.session.execute(_CREATE_STAGING)
        _copy(f"COPY measure_staging {_COPY_COLUMNS}, org, measure_id) FROM STDIN", data)
        inserted, asked, counted = db.session.execute(_INSERT_STAGED).one()
    else:
        # Without ids nothing can clash: straight into the table.
        _copy(f"COPY raw_measure {_COPY_COLUMNS}) FROM STDIN", data)
        inserted = len(lines)
        asked = counted = 0
        if capped:
            params = {"names": list(capped), "caps": list(capped.values())}
            asked, counted = db.session.execute(_COUNT_COPIED, params).one()
    if counted < asked:
        db.session.rollback()
        raise Conflict(
            f"{asked - counted} contributor(s) would pass the maxContributionsPerCell of"
            " their cell; nothing stored"
        )
    db.session.commit()
    duplicates += len(lines) - inserted
    log.debug("stored %d measures (%d duplicates)", inserted, duplicates)
    return RecordResult(inserted, duplicates)


def _cap(measure: Measure) -> int | None:
    """The definition's maxContributionsPerCell when it applies to this measure."""
    return None if measure.contributor is None else _max_contributions(measure.measure_name)


def _max_contributions(name: str) -> int | None:
    rules = get_definition_rules(name)
    return rules.max_contributions if rules is not None else None


def _cap_message(name: str, cap: int) -> str:
    return (
        f"contributor: already sent {cap} measure(s) into this cell of '{name}'"
        f" (its maxContributionsPerCell); measure not stored"
    )


def _copy_lines(measures: list[Measure], keyed: bool) -> list[str]:
    """COPY text lines in _COPY_COLUMNS order, the first of each repeated measureId only."""
    seen, lines = set(), []
    heads: dict[tuple, str] = {}
    encode = _GroupEncoder()
    for name, value, start_date, created_by, group1, group2, group3, measure_id, contributor, org in measures:
        if measure_id is not None:
            if (name, org, measure_id) in seen:
                continue
            seen.add((name, org, measure_id))
        # Name, start date and app recur across a batch: format them once.
        head = heads.get((name, start_date, created_by))
        if head is None:
            head = heads[(name, start_date, created_by)] = (
                f"{name.translate(_COPY_ESCAPES)}\t{start_date.isoformat()}\t"
                f"{created_by.translate(_COPY_ESCAPES)}\t"
            )
        # bytea in COPY text: \x and hex digits, the backslash itself escaped.
        who = NULL if contributor is None else "\\\\x" + contributor.hex()
        line = f"{head}{value}\t{encode(group1)}\t{encode(group2)}\t{encode(group3)}\t{who}"
        if keyed:
            line = f"{line}\t{(org or '').translate(_COPY_ESCAPES)}\t{measure_id or NULL}"
        lines.append(f"{line}\n")
    return lines


def _copy(statement: str, data: io.StringIO) -> None:
    # COPY needs the driver's cursor; it runs on the session's connection, so inside
    # the session's transaction.
    raw = db.session.connection().connection.driver_connection
    with raw.cursor() as cursor:
        cursor.copy_expert(statement, data)


class _GroupEncoder:
    """JSON text of a group for COPY, memoised: few distinct groups recur in a batch."""

    def __init__(self):
        self.strings: dict[tuple, str] = {}
        self.others: dict[tuple, str] = {}

    def __call__(self, group: dict | None) -> str:
        if group is None:
            return NULL
        ((key, value),) = group.items()
        if type(value) is str:
            memo, memo_key = self.strings, (key, value)
        else:
            memo, memo_key = self.others, (key, type(value), value)  # 1, 1.0 and true are equal
        text = memo.get(memo_key)
        if text is None:
            text = memo[memo_key] = json.dumps(group, separators=(",", ":")).translate(_COPY_ESCAPES)
        return text


def _json(group: dict | None) -> str | None:
    return None if group is None else json.dumps(group, separators=(",", ":"))
