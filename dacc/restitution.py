"""Restitution: reading published aggregates back (/aggregate), already shaped as JSON."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone

import sqlalchemy as sa
from flask import current_app

from dacc.db import db
from dacc.errors import BadRequest, Forbidden
from dacc.models.definitions import KEY_LENGTH, NAME_LENGTH
from dacc.privacy import may_read_results
from dacc.tokens import TokenIdentity
from dacc.validation import shown, storable_text

SERVED_ROW_JSON = """json_strip_nulls(json_build_object(
    'measureName', a.measure_name,
    'startDate', to_char(a.start_date, 'YYYY-MM-DD"T"HH24:MI:SS'),
    'createdBy', a.created_by,
    'group1', a.group1, 'group2', a.group2, 'group3', a.group3,
    'count', a.count, 'countNotZero', a.count_not_zero,
    'sum', round(a.sum, 2), 'min', a.min, 'max', a.max,
    'avg', round(a.avg::numeric, 2), 'std', round(a.std::numeric, 2),
    'median', round(a.median::numeric, 2),
    'firstQuartile', round(a.first_quartile::numeric, 2),
    'thirdQuartile', round(a.third_quartile::numeric, 2)
))::text"""
"""SQL of one served row of aggregate `a`, as /aggregate returns it: DACC's camelCase
fields, numbers rounded to 2 decimals, null fields left out. The view stores it
(column `body`), so a read concatenates stored text: measured 1.4 ms for 600 rows,
against 13 ms building the JSON at query time and 23 ms in Python."""

SERVED_ORDER_KEY = """concat_ws(' ', a.group1, a.group2, a.group3, a.created_by) COLLATE "C\""""
"""SQL of the order of rows within a start date (column `sort_key` of the view): the
groups' JSON text, compared bytewise, which sorts far faster than jsonb values."""

_READ = sa.text(
    # One round trip: the definition's access fields, and the published rows of the
    # range concatenated into a JSON array (index on (measure_name, start_date)).
    """
    SELECT d.org, d.access_public, d.access_app,
           (SELECT coalesce('[' || string_agg(f.body, ',' ORDER BY f.start_date, f.sort_key) || ']', '[]')
            FROM filtered_aggregation f
            WHERE f.measure_name = d.name AND f.start_date >= :start AND f.start_date < :end
              AND (CAST(:created_by AS text) IS NULL OR f.created_by = :created_by)) AS rows
    FROM measure_definition d
    WHERE d.name = :name
    """
)


CACHE = "dacc_aggregate_cache"
CACHE_BUDGET_BYTES = 64 << 20
"""Per process; the least recently used answers go first."""
CACHE_MAX_ANSWER_BYTES = 16 << 20


@dataclasses.dataclass
class _Cache:
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    entries: OrderedDict = dataclasses.field(default_factory=OrderedDict)
    size: int = 0


@dataclasses.dataclass(frozen=True)
class _Found:
    org: str
    access_public: bool
    access_app: bool
    rows: str


@dataclasses.dataclass(frozen=True)
class AggregateQuery:
    """A validated /aggregate request: [start, end) in UTC (naive)."""

    measure_name: str
    start: datetime
    end: datetime
    created_by: str | None = None


def parse_aggregate_query(params: Mapping) -> AggregateQuery:
    """Check /aggregate parameters (camelCase, as sent); raise BadRequest naming the field."""
    name = _text("measureName", params.get("measureName"), NAME_LENGTH, required=True)
    start = _moment("startDate", params.get("startDate"))
    end = _moment("endDate", params.get("endDate"))
    if end <= start:
        raise BadRequest("endDate: must be after startDate (the range is [startDate, endDate))")
    created_by = _text("createdBy", params.get("createdBy"), KEY_LENGTH)
    return AggregateQuery(name, start, end, created_by)


def read_aggregates(params: Mapping, *, token: TokenIdentity) -> str:
    """The published rows a request asks for, as the text of a JSON array.

    Rows come only from filtered_aggregation, which holds no suppressed row (see
    dacc.privacy), ordered by start date then groups. Raises BadRequest for bad
    parameters or an unknown measure, Forbidden when the token may not read it.
    Reads only.
    """
    query = parse_aggregate_query(params)
    found = _cached_read(query)
    if found is None:
        raise BadRequest(f"No measure definition found for: {query.measure_name}")
    allowed = may_read_results(
        owner_org=found.org, access_public=found.access_public, access_app=found.access_app, token=token
    )
    if not allowed:
        raise Forbidden(f"You cannot access results for this measure: {query.measure_name}")
    return found.rows


def forget_cached_reads() -> None:
    """Drop this process's cached answers (after the view changed)."""
    cache = current_app.extensions.get(CACHE)
    if cache is not None:
        with cache.lock:
            cache.entries.clear()
            cache.size = 0


def _cached_read(query: AggregateQuery) -> _Found | None:
    """The view's answer, kept `aggregate_cache_seconds` per process.

    Many clients ask the same ranges, and the view only changes when a job refreshes
    it: this process forgets its answers at once when it refreshes the view, other
    processes within the TTL. A cached answer was published by the view when read, so
    serving it a little longer discloses nothing new. Unknown measures are not kept,
    and access is checked on every request.
    """
    ttl = current_app.config["DACC"].aggregate_cache_seconds
    if ttl <= 0:
        return _read(query)
    cache = current_app.extensions.setdefault(CACHE, _Cache())
    key = _cache_key(query)
    now = time.monotonic()
    with cache.lock:
        hit = cache.entries.get(key)
        if hit is not None and hit[0] > now:
            cache.entries.move_to_end(key)
            return hit[1]
    found = _read(query)
    if found is not None and len(found.rows) <= CACHE_MAX_ANSWER_BYTES:
        with cache.lock:
            old = cache.entries.pop(key, None)
            if old is not None:
                cache.size -= len(old[1].rows)
            cache.entries[key] = (now + ttl, found)
            cache.size += len(found.rows)
            while cache.size > CACHE_BUDGET_BYTES:
                _, (_, evicted) = cache.entries.popitem(last=False)
                cache.size -= len(evicted.rows)
    return found


def _cache_key(query: AggregateQuery) -> AggregateQuery:
    """The query with both bounds moved up to the next midnight.

    Every aggregate starts at a midnight (the start of its day, week or month), so a
    bound anywhere in (D - 1 day, D] selects the same rows as D. Cozy's client asks
    from 1970 to the current instant, a different end at every call: within a day, all
    those calls share one answer. Only the cache key changes: the read uses the query
    as asked.
    """
    return dataclasses.replace(query, start=_next_midnight(query.start), end=_next_midnight(query.end))


def _next_midnight(moment: datetime) -> datetime:
    midnight = datetime.combine(moment.date(), datetime.min.time())
    return midnight if midnight == moment else midnight + timedelta(days=1)


def _read(query: AggregateQuery) -> _Found | None:
    values = {
        "name": query.measure_name,
        "start": query.start,
        "end": query.end,
        "created_by": query.created_by,
    }
    # One statement, so no transaction: autocommit spares the BEGIN and ROLLBACK round
    # trips that a session would add to the hot path.
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        row = conn.execute(_READ, values).one_or_none()
    return None if row is None else _Found(row.org, row.access_public, row.access_app, row.rows)


def _text(field: str, value, limit: int, *, required: bool = False) -> str | None:
    if value is None:
        if required:
            raise BadRequest(f"{field}: required")
        return None
    if not isinstance(value, str):
        raise BadRequest(f"{field}: expected a string, got {shown(value)}")
    if not value or len(value) > limit:
        raise BadRequest(f"{field}: must be 1 to {limit} characters")
    # PostgreSQL text can hold neither NUL nor a lone surrogate: say so, not a 500.
    if not storable_text(value):
        raise BadRequest(f"{field}: must not hold NUL characters or lone surrogates")
    return value


def _moment(field: str, value) -> datetime:
    """An ISO 8601 date or date-time as naive UTC; a date means its midnight (UTC)."""
    if value is None:
        raise BadRequest(f"{field}: required")
    fault = f"{field}: expected an ISO 8601 date or date-time, got {shown(value)}"
    if not isinstance(value, str):
        raise BadRequest(fault)
    try:
        moment = datetime.fromisoformat(value)
        if moment.tzinfo is not None:
            moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
    except (ValueError, OverflowError):
        raise BadRequest(fault) from None
    return moment
