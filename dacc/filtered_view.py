"""The filtered_aggregation materialized view, which serves reads: its SQL and its upkeep."""

from __future__ import annotations

import logging

import sqlalchemy as sa
from psycopg2 import errors as pg_errors
from sqlalchemy.exc import DBAPIError

from dacc.db import db
from dacc.errors import Conflict, NotFound
from dacc.privacy import PUBLISHABLE_AGGREGATES
from dacc.restitution import SERVED_ORDER_KEY, SERVED_ROW_JSON, forget_cached_reads

log = logging.getLogger(__name__)

VIEW = "filtered_aggregation"
BUILD = "filtered_aggregation_build"
"""Name under which recreate builds the new view before swapping it in."""
SWAP_LOCK_TIMEOUT = "3s"
SWAP_ATTEMPTS = 5

FILTERED_VIEW_QUERY = f"""
SELECT a.id, a.measure_name, a.start_date, a.created_by, a.group1, a.group2, a.group3,
       a.count, a.count_not_zero, a.sum, a.min, a.max, a.avg, a.std,
       a.median, a.first_quartile, a.third_quartile, a.last_updated,
       {SERVED_ROW_JSON} AS body,
       {SERVED_ORDER_KEY} AS sort_key
FROM aggregate a
WHERE a.id IN (
{PUBLISHABLE_AGGREGATES}
)
ORDER BY a.measure_name, a.start_date, sort_key
"""
"""THE definition of what may be served: the rows dacc.privacy publishes (threshold and
secondary suppression), each with its served JSON; stored in read order, so that a
range of one measure sits in few pages. Migrations that change the live view must
create it from this same text."""

INDEXES = {
    # The unique index is what lets REFRESH ... CONCURRENTLY run without blocking reads.
    "uq_{view}_id": "CREATE UNIQUE INDEX {index} ON {view} (id)",
    "ix_{view}_name_start_date": "CREATE INDEX {index} ON {view} (measure_name, start_date)",
}
"""Index name pattern → statement, for both the live and the build name."""

_STATE = """
SELECT relispopulated FROM pg_class
WHERE relname = :name AND relkind = 'm' AND relnamespace = current_schema()::regnamespace
"""


def create_filtered_view() -> None:
    """Create and fill the view with its indexes. Raises Conflict if it exists. Commits."""
    with db.engine.begin() as conn:
        conn.execute(sa.text("SET LOCAL statement_timeout = 0"))
        if _populated(conn, VIEW) is not None:
            raise Conflict(f"{VIEW} already exists (recreate-filtered-aggregation rebuilds it)")
        _build(conn, VIEW)
    forget_cached_reads()
    log.info("%s created", VIEW)


def refresh_filtered_view(*, concurrently: bool = True) -> None:
    """Bring the view up to date with the aggregates. Raises NotFound if it does not exist.

    CONCURRENTLY lets readers go on during the refresh; a view never filled cannot be
    refreshed that way, so it is filled plainly once. Commits.
    """
    with db.engine.begin() as conn:
        conn.execute(sa.text("SET LOCAL statement_timeout = 0"))
        populated = _populated(conn, VIEW)
        if populated is None:
            raise NotFound(f"{VIEW} does not exist (create-filtered-aggregation creates it)")
        mode = "CONCURRENTLY " if concurrently and populated else ""
        conn.execute(sa.text(f"REFRESH MATERIALIZED VIEW {mode}{VIEW}"))
    forget_cached_reads()


def delete_filtered_view() -> None:
    """Drop the view: reads fail until it is created again. Raises NotFound. Commits."""
    with db.engine.begin() as conn:
        if _populated(conn, VIEW) is None:
            raise NotFound(f"{VIEW} does not exist")
        conn.execute(sa.text(f"DROP MATERIALIZED VIEW {VIEW}"))
    forget_cached_reads()
    log.info("%s deleted", VIEW)


def recreate_filtered_view() -> None:
    """Build the view afresh from FILTERED_VIEW_QUERY and swap it in; readers never miss it.

    The new view is built and indexed under a temporary name while readers keep using
    the old one. Then one short transaction drops the old view and renames the new one
    (indexes too): a query waiting on that lock looks the name up again and reads the
    new view. The swap waits at most SWAP_LOCK_TIMEOUT for readers, so that queries
    queued behind it are not stalled by a long reader, and is retried; raises Conflict
    if it never gets its turn (the old view is then left as it was). Works whether or
    not the view exists. Commits.
    """
    with db.engine.begin() as conn:
        conn.execute(sa.text("SET LOCAL statement_timeout = 0"))
        conn.execute(sa.text(f"DROP MATERIALIZED VIEW IF EXISTS {BUILD}"))
        _build(conn, BUILD)
    for attempt in range(1, SWAP_ATTEMPTS + 1):
        try:
            with db.engine.begin() as conn:
                conn.execute(sa.text(f"SET LOCAL lock_timeout = '{SWAP_LOCK_TIMEOUT}'"))
                conn.execute(sa.text(f"DROP MATERIALIZED VIEW IF EXISTS {VIEW}"))
                conn.execute(sa.text(f"ALTER MATERIALIZED VIEW {BUILD} RENAME TO {VIEW}"))
                for pattern in INDEXES:
                    old, new = pattern.format(view=BUILD), pattern.format(view=VIEW)
                    conn.execute(sa.text(f"ALTER INDEX {old} RENAME TO {new}"))
            break
        except DBAPIError as exc:
            if not isinstance(exc.orig, pg_errors.LockNotAvailable):
                raise
            log.warning("%s: readers held the view, swap attempt %d failed", VIEW, attempt)
    else:
        raise Conflict(f"{VIEW} stayed busy with readers; try recreate again later")
    forget_cached_reads()
    log.info("%s recreated", VIEW)


def _build(conn, name: str) -> None:
    conn.execute(sa.text(f"CREATE MATERIALIZED VIEW {name} AS {FILTERED_VIEW_QUERY}"))
    for pattern, statement in INDEXES.items():
        index = pattern.format(view=name)
        conn.execute(sa.text(statement.format(index=index, view=name)))


def _populated(conn, name: str) -> bool | None:
    """None when the view does not exist, else whether it holds data."""
    return conn.execute(sa.text(_STATE), {"name": name}).scalar()
