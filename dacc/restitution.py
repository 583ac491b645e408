"""Restitution: reading published aggregates back (/aggregate), already shaped as JSON."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from flask import current_app

from dacc.db import db
from dacc.errors import BadRequest, Forbidden
from dacc.metrics import count_cache_lookup
from dacc.models.definitions import KEY_LENGTH, NAME_LENGTH
from dacc.privacy import may_read_results
from dacc.tokens import TokenIdentity
from dacc.validation import shown, storable_text

_READ = sa.text(
    # One round trip: the definition's access fields, and, only when the token may read
    # the measure, the served rows of the range concatenated into a JSON array (index
    # uq_published_cell_cell). A refused request reads no row: it costs the same
    # whatever the data. The CASE mirrors dacc.privacy.may_read_results, which decides.
    """
    SELECT d.org, d.access_public, d.access_app,
           CASE WHEN d.org = :org OR d.access_public OR (d.access_app AND :can_write) THEN
           (SELECT coalesce('[' || string_agg(p.body, ',' ORDER BY p.start_date, p.sort_key) || ']', '[]')
            FROM published_cell p
            WHERE p.measure_name = d.name AND p.start_date >= :start AND p.start_date < :end
              AND (CAST(:created_by AS text) IS NULL OR p.created_by = :created_by))
           END AS rows
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
    rows: str | None
    """None when the token may not read the measure: no row was read."""


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

    Rows come only from the publication ledger (dacc.publication decides what is in
    it), ordered by start date then groups; a withheld row and a missing one look the
    same. Raises BadRequest for bad parameters or an unknown measure, Forbidden when
    the token may not read it. Reads only.
    """
    query = parse_aggregate_query(params)
    found = _cached_read(query, token)
    if found is None:
        raise BadRequest(f"No measure definition found for: {query.measure_name}")
    allowed = may_read_results(
        owner_org=found.org, access_public=found.access_public, access_app=found.access_app, token=token
    )
    if not allowed:
        raise Forbidden(f"You cannot access results for this measure: {query.measure_name}")
    return found.rows


def forget_cached_reads() -> None:
    """Drop this process's cached answers (after a publication)."""
    cache = current_app.extensions.get(CACHE)
    if cache is not None:
        with cache.lock:
            cache.entries.clear()
            cache.size = 0


def _cached_read(query: AggregateQuery, token: TokenIdentity) -> _Found | None:
    """The ledger's answer, kept `aggregate_cache_seconds` per process.

    Many clients ask the same ranges, and the ledger only changes when a publication
    commits: this process forgets its answers at once when it publishes, other
    processes within the TTL. A cached answer was served when read, so serving it a
    little longer discloses nothing new. Unknown measures and refused reads (which
    carry no rows) are not kept, and access is checked on every request.
    """
    ttl = current_app.config["DACC"].aggregate_cache_seconds
    if ttl <= 0:
        return _read(query, token)
    cache = current_app.extensions.setdefault(CACHE, _Cache())
    key = _cache_key(query)
    now = time.monotonic()
    with cache.lock:
        hit = cache.entries.get(key)
        if hit is not None and hit[0] > now:
            cache.entries.move_to_end(key)
            count_cache_lookup(hit=True)
            return hit[1]
    count_cache_lookup(hit=False)
    found = _read(query, token)
    if found is not None and found.rows is not None and len(found.rows) <= CACHE_MAX_ANSWER_BYTES:
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
    if midnight == moment:
        return midnight
    if midnight.date() == datetime.max.date():
        return datetime.max  # no later midnight; every bound in its last day reads the same rows
    return midnight + timedelta(days=1)


def _read(query: AggregateQuery, token: TokenIdentity) -> _Found | None:
    values = {
        "org": token.org,
        "can_write": "measure:write" in token.scopes,
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
            moment = moment.astimezone(UTC).replace(tzinfo=None)
    except (ValueError, OverflowError):
        raise BadRequest(fault) from None
    return moment
