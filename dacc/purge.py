"""Purge of raw measures that are aggregated and older than their retention."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from dacc.aggregation.compute import get_definition
from dacc.aggregation.snapshot import SEEN_BY_LAST_RUN
from dacc.db import db
from dacc.errors import BadRequest, DaccError, error_message
from dacc.models import MeasureDefinition
from dacc.models.measures import CELL_KEY_HASH
from dacc.runs import recorded_run

log = logging.getLogger(__name__)

DEFAULT_RETENTION_DAYS = 90
"""Cozy's DACC default, used when neither -d nor the definition says otherwise."""
BATCH_SIZE = 50_000
"""Rows per delete transaction: short enough that ingestion never waits on a purge."""


@dataclasses.dataclass
class PurgeResult:
    """What a purge did to one measure."""

    measure_name: str
    days: int
    """Effective age limit: the quartile guard may have raised the one asked for."""
    cutoff: datetime | None = None
    """Raw measures ingested (last_updated) before this instant were candidates."""
    deleted: int = 0
    stamped: int = 0
    """Aggregates (plain and wildcard cells) whose last_raw_measures_purged was set."""
    not_aggregated: int = 0
    """Candidates not aggregated yet; when > 0 nothing was deleted."""
    forgotten: int = 0
    """Contributor state rows deleted (cell_contributor, contributor_quota): see _FORGET."""
    quartile_states_dropped: int = 0
    """Cells past maxDaysToUpdateQuartile whose quartile state went (_AGE_QUARTILE_STATE);
    the cells stamped by the batches lose theirs too, counted in `stamped`."""
    error: str | None = None
    seconds: float = 0.0

    @property
    def refused(self) -> bool:
        return self.not_aggregated > 0

    @property
    def ok(self) -> bool:
        return self.error is None and not self.refused

    @property
    def status(self) -> str:
        if self.error:
            return f"failed: {self.error}"
        if self.refused:
            return f"refused: {self.not_aggregated} raw measure(s) not aggregated yet"
        return "purged" if self.deleted else "nothing to purge"


ProgressCallback = Callable[[PurgeResult], None]

# Raw measures past the cut-off that the last run has not seen. SEEN_BY_LAST_RUN is the
# truth; the OR before it follows from its negation (a row older than the snapshot's
# xmin and before rebuild_from was seen) and lets PostgreSQL use the txid and
# start_date indexes: the guard reads the few recent or rebuilt rows, not every
# candidate. A NULL :rebuild_from makes its half false.
_UNSEEN = f"""
SELECT count(*)
FROM raw_measure r
JOIN aggregation_state s ON s.measure_name = r.measure_name
WHERE r.measure_name = :name
  AND r.last_updated < :cutoff
  AND (r.txid >= :xmin OR r.start_date >= :rebuild_from)
  AND NOT ({SEEN_BY_LAST_RUN})
"""
_STATE = "SELECT snapshot_xmin, rebuild_from FROM aggregation_state WHERE measure_name = :name"
# A measure that was never aggregated: every row past the cut-off is unseen.
_PAST_CUTOFF = "SELECT count(*) FROM raw_measure WHERE measure_name = :name AND last_updated < :cutoff"

# Held until the batch commits: delete-aggregations-from-date (which moves rebuild_from,
# making rows "unseen" again) waits for it, and a batch that starts after it sees the
# new value, so no batch deletes a row a rebuild is about to re-read.
_LOCK_STATE = "SELECT 1 FROM aggregation_state WHERE measure_name = :name FOR SHARE"

# One batch, one statement, one transaction: delete up to :batch aggregated rows past
# the cut-off, and stamp every aggregate cell that held one of them (its own cell and
# the wildcard rows {key: "*"} covering it) so that the engine knows the cell can no
# longer be recomputed from raw rows.
# - `batch` walks ix_raw_measure_name_last_updated in order from where the previous
#   batch stopped (keyset), so no batch re-walks what earlier ones deleted and nothing
#   is sorted; ties on last_updated are re-read with >=, already-deleted ones are
#   invisible. The SEEN filter comes after the LIMIT so that the planner's estimate of
#   it cannot push it off that index.
# - The delete goes by ctid (a TID scan): no join against the whole table.
# - :purged_at is the same for every batch of a run, so a cell is stamped once per run.
# - A stamped cell loses its quartile state (a copy of its raw values) with its rows.
# - {forget}: what the stamped cells' contributor state no longer needs (see _FORGET).
_DELETE_BATCH = f"""
WITH batch AS (
    SELECT ctid, last_updated, start_date, txid
    FROM raw_measure
    WHERE measure_name = :name
      AND last_updated >= CAST(:after_ts AS timestamptz)
      AND last_updated < :cutoff
    ORDER BY last_updated
    LIMIT :batch
), doomed AS (
    SELECT r.ctid
    FROM batch r
    JOIN aggregation_state s ON s.measure_name = :name
    WHERE {SEEN_BY_LAST_RUN}
), gone AS (
    DELETE FROM raw_measure
    WHERE ctid = ANY (ARRAY(SELECT ctid FROM doomed))
      AND measure_name = :name
    RETURNING start_date, created_by, group1, group2, group3
), cells AS (
    SELECT DISTINCT date_trunc(:period, start_date) AS start_date,
           created_by, group1, group2, group3
    FROM gone
), stamped AS (
    UPDATE aggregate a
    SET last_raw_measures_purged = :purged_at, quartile_values = NULL
    FROM cells c
    WHERE a.measure_name = :name
      AND a.start_date = c.start_date
      AND a.created_by = c.created_by
      AND (a.group1 IS NOT DISTINCT FROM c.group1 OR a.group1 = CAST(:wild1 AS jsonb))
      AND (a.group2 IS NOT DISTINCT FROM c.group2 OR a.group2 = CAST(:wild2 AS jsonb))
      AND (a.group3 IS NOT DISTINCT FROM c.group3 OR a.group3 = CAST(:wild3 AS jsonb))
      AND a.last_raw_measures_purged IS DISTINCT FROM :purged_at
    RETURNING a.start_date, a.created_by, a.group1, a.group2, a.group3
){{forget}}
SELECT (SELECT count(*) FROM batch) AS selected,
       (SELECT count(*) FROM gone) AS deleted,
       (SELECT count(*) FROM stamped) AS stamped,
       (SELECT max(last_updated) FROM batch) AS last_ts,
       {{forgotten}} AS forgotten
"""
# Contributor state of a quartile measure's stamped cells. The aggregation refuses
# every later raw measure of a stamped cell, on every level (aggregation.sql.REFUSE):
# no merge will read the cell's contributor hashes again, nor will a quota of it ever
# let a measure count. Both go in the batch that stamps the cell (atomic with the
# stamp: a run that merged into the cell from an older snapshot fails to update the
# stamped row and is retried, then refused). `contributors` keeps the cell's exact count.
# A measure without quartiles merges late measures into stamped cells, so its hashes
# and quotas stay: they are what keeps k and the cap exact. {same_cell}: the cell key
# as index conditions of cell_contributor's unique index (a group the definition has
# no key for is NULL); a quota's cell is its CELL_KEY_HASH ({cell_key}), of plain cells
# only.
_FORGET = """, contributors_forgotten AS (
    DELETE FROM cell_contributor k
    USING stamped c
    WHERE k.measure_name = :name
      AND k.start_date = c.start_date
      AND k.created_by = c.created_by
      AND {same_cell}
    RETURNING 1
), quotas_forgotten AS (
    DELETE FROM contributor_quota k
    USING stamped c
    WHERE k.measure_name = :name
      AND k.start_date = c.start_date
      AND k.cell_key = {cell_key}
      AND coalesce(c.group1 <> CAST(:wild1 AS jsonb), TRUE)
      AND coalesce(c.group2 <> CAST(:wild2 AS jsonb), TRUE)
      AND coalesce(c.group3 <> CAST(:wild3 AS jsonb), TRUE)
    RETURNING 1
)"""
_FORGOTTEN = "(SELECT count(*) FROM contributors_forgotten) + (SELECT count(*) FROM quotas_forgotten)"
# A definition without maxContributionsPerCell counts no quota: its rows are left from
# a cap since removed (a cap set again counts from then on, as ingestion without a cap
# counts nothing).
_UNCAPPED_QUOTAS = """
DELETE FROM contributor_quota
WHERE measure_name = :name
  AND NOT EXISTS (SELECT 1 FROM measure_definition d
                  WHERE d.name = :name AND d.max_contributions_per_cell IS NOT NULL)
"""


# Quartile state (aggregate.quartile_values, a sorted copy of a cell's raw values) is
# kept for the cells whose quartiles still follow new measures: those that start within
# maxDaysToUpdateQuartile days ago or later, of a definition with quartiles (without
# quartiles, every cell's state goes). An older cell that still gets a late measure
# reads its raw rows instead. A range of ix_aggregate_quartile_state: only the cells
# that have state, past the limit.
_AGE_QUARTILE_STATE = """
UPDATE aggregate
SET quartile_values = NULL
WHERE measure_name = :name
  AND quartile_values IS NOT NULL
  AND start_date < CASE WHEN CAST(:quartiles AS boolean)
                        THEN CAST(now() AS timestamp) - make_interval(days => :quartile_days)
                        ELSE CAST('infinity' AS timestamp) END
"""


def _delete_batch_statement(definition: MeasureDefinition) -> str:
    if not definition.with_quartiles:
        return _DELETE_BATCH.format(forget="", forgotten="0")
    keys = (definition.group1_key, definition.group2_key, definition.group3_key)
    same_cell = "\n      AND ".join(
        f"k.group{i} = c.group{i}" if key else f"k.group{i} IS NULL" for i, key in enumerate(keys, 1)
    )
    forget = _FORGET.format(same_cell=same_cell, cell_key=CELL_KEY_HASH.format(t="c."))
    return _DELETE_BATCH.format(forget=forget, forgotten=_FORGOTTEN)


@recorded_run("purge")
def purge_raw_measures(
    definition: MeasureDefinition | str,
    *,
    days: int | None = None,
    batch_size: int = BATCH_SIZE,
    on_batch: ProgressCallback | None = None,
) -> PurgeResult:
    """Delete the raw measures of `definition` ingested more than `days` days ago.

    `days` defaults to the definition's raw_retention_days, else 90; with quartiles it
    is raised to max_days_to_update_quartile. If any raw measure past the cut-off is not
    aggregated yet, nothing is deleted and the result is `refused`. Otherwise rows go in
    batches of `batch_size`, each one transaction that also stamps the aggregates that
    lost rows; a purge stopped between batches leaves a consistent state and a re-run
    finishes it. measureId tombstones (measure_key) are never touched. Contributor
    state goes where no later measure can use it: the hashes and quotas of a quartile
    measure's stamped cells, with the stamp (_FORGET), and the quotas of a definition
    without a cap. Quartile state (a sorted copy of a cell's values) goes from every
    cell a batch stamps, and first from the cells past maxDaysToUpdateQuartile
    (_AGE_QUARTILE_STATE). `on_batch` is called with the running result after each
    committed batch.
    Raises NotFound for an unknown name, BadRequest for days < 1.
    """
    started = time.monotonic()
    definition = get_definition(definition)
    result = PurgeResult(definition.name, _effective_days(definition, days))
    params = {
        "name": definition.name,
        "period": definition.aggregation_period,
        "batch": batch_size,
        "after_ts": datetime.min.replace(tzinfo=UTC),
        **_wildcards(definition),
    }
    _lift_statement_timeout()
    params["purged_at"], params["cutoff"] = _clock(result.days)
    result.not_aggregated = _count_unseen(params)
    db.session.commit()
    # Whatever the raw rows' fate: ageing depends on the cells' dates only.
    result.quartile_states_dropped = db.session.execute(
        sa.text(_AGE_QUARTILE_STATE),
        {
            "name": definition.name,
            "quartiles": definition.with_quartiles,
            "quartile_days": definition.max_days_to_update_quartile,
        },
    ).rowcount
    db.session.commit()
    result.cutoff = params["cutoff"]
    if result.refused:
        log.warning("purge %s: %s", result.measure_name, result.status)
        result.seconds = time.monotonic() - started
        return result
    if definition.max_contributions_per_cell is None:
        result.forgotten += db.session.execute(sa.text(_UNCAPPED_QUOTAS), params).rowcount
        db.session.commit()
    statement = sa.text(_delete_batch_statement(definition))
    while True:
        batch = _delete_batch(statement, params)
        result.deleted += batch.deleted
        result.stamped += batch.stamped
        result.forgotten += batch.forgotten
        if batch.deleted and on_batch:
            on_batch(result)
        # A short batch reached the cut-off; an empty delete means that only rows
        # that became unaggregated since the guard remain (a rebuild): leave them.
        if batch.selected < batch_size or batch.deleted == 0:
            break
        params["after_ts"] = batch.last_ts
    result.seconds = time.monotonic() - started
    log.info(
        "purge %s: %d rows deleted, %d aggregates stamped, %d contributor rows forgotten,"
        " %d quartile states dropped in %.1f s",
        result.measure_name,
        result.deleted,
        result.stamped,
        result.forgotten,
        result.quartile_states_dropped,
        result.seconds,
    )
    return result


def purge_all_measures(
    *,
    days: int | None = None,
    batch_size: int = BATCH_SIZE,
    on_batch: ProgressCallback | None = None,
) -> list[PurgeResult]:
    """Purge every measure, each by its own retention unless `days` is given.

    Measures are independent: an error on one (a database failure, a definition
    removed meanwhile) is recorded in its result (`error`) and the others still run.
    Raises BadRequest for days < 1. Commits per batch, as purge_raw_measures.
    """
    if days is not None:
        _check_days(days)
    names = db.session.scalars(sa.select(MeasureDefinition.name).order_by(MeasureDefinition.name))
    results = []
    for name in names.all():
        try:
            results.append(purge_raw_measures(name, days=days, batch_size=batch_size, on_batch=on_batch))
        except (DaccError, SQLAlchemyError) as exc:
            db.session.rollback()
            log.exception("purge %s failed", name)
            results.append(PurgeResult(name, days or 0, error=error_message(exc)))
    return results


def _check_days(days) -> None:
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        raise BadRequest("days: must be an integer >= 1")


def _effective_days(definition: MeasureDefinition, days: int | None) -> int:
    if days is None:
        days = definition.raw_retention_days or DEFAULT_RETENTION_DAYS
    _check_days(days)
    # Quartiles are recomputed from raw rows for max_days_to_update_quartile days:
    # those rows must outlive any shorter retention.
    if definition.with_quartiles:
        days = max(days, definition.max_days_to_update_quartile)
    return days


def _clock(days: int) -> tuple[datetime, datetime]:
    """The database's now() and the cut-off, fixed once for the whole run."""
    row = db.session.execute(
        sa.text("SELECT now() AS now, now() - make_interval(days => :days) AS cutoff"),
        {"days": days},
    ).one()
    return row.now, row.cutoff


def _count_unseen(params: dict) -> int:
    state = db.session.execute(sa.text(_STATE), params).first()
    if state is None:
        return db.session.execute(sa.text(_PAST_CUTOFF), params).scalar()
    return db.session.execute(
        sa.text(_UNSEEN),
        {**params, "xmin": state.snapshot_xmin, "rebuild_from": state.rebuild_from},
    ).scalar()


def _wildcards(definition: MeasureDefinition) -> dict[str, str | None]:
    """The JSON of each group's wildcard cell ({key: "*"}), as bound parameters."""
    keys = (definition.group1_key, definition.group2_key, definition.group3_key)
    return {f"wild{i}": json.dumps({key: "*"}) if key else None for i, key in enumerate(keys, 1)}


def _lift_statement_timeout() -> None:
    """For the current transaction: a purge is no web request, its scans may be long."""
    db.session.execute(sa.text("SET LOCAL statement_timeout = 0"))


def _delete_batch(statement, params: dict):
    _lift_statement_timeout()
    try:
        db.session.execute(sa.text(_LOCK_STATE), {"name": params["name"]})
        batch = db.session.execute(statement, params).one()
    except BaseException:
        db.session.rollback()
        raise
    db.session.commit()
    return batch
