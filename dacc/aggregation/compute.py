"""Aggregation runs: merge new raw measures into their cells, exactly once, in SQL."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from datetime import UTC, date, datetime, timedelta

import sqlalchemy as sa
from psycopg2 import errors as pg_errors
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from dacc.aggregation import sql
from dacc.db import db
from dacc.errors import BadRequest, Conflict, DaccError, NotFound, error_message
from dacc.models import MeasureDefinition
from dacc.publication import publish_measure
from dacc.restitution import forget_cached_reads
from dacc.runs import recorded_run

log = logging.getLogger(__name__)

PLAIN = frozenset()
"""The level of ordinary cells: no group starred."""
RETRIES = 3
"""Attempts of a run that lost a serialization race (e.g. with a purge batch)."""


@dataclasses.dataclass
class AggregationResult:
    """What one run did to one measure."""

    measure_name: str
    raw_read: int = 0
    """New raw measures merged (refused ones excluded)."""
    inserted: int = 0
    """Aggregate rows created, all levels."""
    updated: int = 0
    """Aggregate rows merged into, all levels."""
    refused: int = 0
    """New raw measures moved to refused_raw_measure (quartiles after purge)."""
    published: int = 0
    """Rows served as new versions by the run's publication (same transaction)."""
    withheld: int = 0
    """Rows of k or more contributions the publication withheld (see dacc.publication)."""
    seconds: float = 0.0
    skipped: str | None = None
    """Why nothing ran: frequency not elapsed, or another run holds the measure."""
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclasses.dataclass
class WildcardResult:
    measure_name: str
    groups: list[str]
    per_start_date: dict[datetime, int]
    """Aggregates written per cell start date, in date order."""
    seconds: float = 0.0
    published: int = 0
    withheld: int = 0

    @property
    def count(self) -> int:
        return sum(self.per_start_date.values())


@dataclasses.dataclass
class AllAggregationsResult:
    """What compute_all_aggregations did: one result per measure."""

    results: list[AggregationResult]


@dataclasses.dataclass(frozen=True)
class _Plan:
    """What a run needs to know of its definition, read before the run's transaction."""

    name: str
    period: str
    frequency: str
    quartiles: bool
    levels: tuple[frozenset[str], ...]
    stars: dict[str, str | None]
    updated_at: datetime | None = None
    """The definition's version the plan was made from; checked under the lock."""
    top2: bool = False
    """Keep each cell's second largest value: the definition has a dominance rule."""


class _StalePlan(Exception):
    """The definition changed between reading it and winning the measure's lock."""


@recorded_run("aggregation")
def compute_aggregation(definition: MeasureDefinition | str, *, force: bool = False) -> AggregationResult:
    """Merge the raw measures of `definition` that arrived since its previous run, and
    publish what that changed.

    One REPEATABLE READ transaction under the measure's advisory lock: merges every
    level (plain cells and declared wildcard levels), records the snapshot it read,
    publishes (dacc.publication) and commits; a failure or a kill at any point leaves
    nothing. Skips (result.skipped) when another run holds the measure, or, unless
    `force`, when its execution frequency has not elapsed since the last run. Raises
    NotFound for an unknown name, BadRequest for a malformed wildcard level.
    """
    plan = _read_plan(definition)
    started = time.monotonic()
    for attempt in range(1, RETRIES + 1):
        try:
            result = _run(plan, force=force)
            break
        except _StalePlan:
            # A definition change (e.g. new wildcard levels, with a rebuild pending)
            # committed before this run's snapshot: plan again from the new version.
            if attempt == RETRIES:
                raise Conflict(f"measure {plan.name}: its definition keeps changing; run again") from None
            db.session.expire_all()
            plan = _read_plan(plan.name)
        except DBAPIError as exc:
            if not isinstance(exc.orig, pg_errors.SerializationFailure) or attempt == RETRIES:
                raise
            log.info("aggregation %s: concurrent update, retrying (%d)", plan.name, attempt)
    result.seconds = time.monotonic() - started
    if result.skipped:
        log.info("aggregation %s skipped: %s", plan.name, result.skipped)
        return result
    if result.refused:
        log.warning(
            "aggregation %s: %d raw measure(s) refused (%s)",
            plan.name,
            result.refused,
            sql.REFUSED_REASON,
        )
    log.info(
        "aggregation %s: %d raw read, %d inserted, %d updated, %d refused in %.3f s",
        plan.name,
        result.raw_read,
        result.inserted,
        result.updated,
        result.refused,
        result.seconds,
    )
    forget_cached_reads()
    return result


def compute_all_aggregations(*, force: bool = False) -> AllAggregationsResult:
    """Run compute_aggregation for every definition, in name order.

    Measures are independent: an error on one is recorded in its result (`error`) and
    the others still run. Commits per measure.
    """
    names = db.session.scalars(sa.select(MeasureDefinition.name).order_by(MeasureDefinition.name)).all()
    db.session.commit()
    results = []
    for name in names:
        try:
            results.append(compute_aggregation(name, force=force))
        except (DaccError, SQLAlchemyError) as exc:
            db.session.rollback()
            log.exception("aggregation %s failed", name)
            results.append(AggregationResult(name, error=error_message(exc)))
    return AllAggregationsResult(results)


def delete_aggregations_from_date(
    definition: MeasureDefinition | str, day: date, *, allow_purged_loss: bool = False
) -> tuple[datetime, int]:
    """Delete the measure's aggregates (all levels) from `day`'s cell on; the next run rebuilds them.

    `day` is rounded down to the start of its aggregation period. The next run re-reads
    every raw measure from there on. Returns (that start, rows deleted). A cell stamped
    by a purge cannot be rebuilt (its purged raw measures are gone for good, and so
    would be its stamp): unless `allow_purged_loss`, raises Conflict when any deleted
    cell carries one, and deletes nothing. Raises Conflict while a run holds the
    measure. What was served stays served (the ledger keeps it): rebuilt rows are
    published by the next run, audited against it. Commits.
    """
    plan = _plan(get_definition(definition))
    params = {"name": plan.name, "period": plan.period, "date": day}
    with db.engine.connect() as conn:
        with conn.begin():
            conn.execute(sa.text(sql.NO_TIMEOUT))
            # READ COMMITTED: statements after the lock see the last run's commit.
            if not conn.execute(sa.text(sql.TRY_XACT_LOCK), params).scalar():
                raise Conflict(f"another run holds measure {plan.name}; try again when it ends")
            params["aligned"] = conn.execute(sa.text(sql.ALIGN_DATE), params).scalar()
            deleted, purged = conn.execute(sa.text(sql.DELETE_FROM_DATE), params).one()
            if purged and not allow_purged_loss:
                # Leaving the block rolls the delete back.
                raise Conflict(purged_loss_message(plan.name, params["aligned"], purged))
            conn.execute(sa.text(sql.SET_REBUILD), params)
    if purged:
        log.warning(
            "aggregation %s: %d aggregates holding purged measures deleted from %s;" " that data is lost",
            plan.name,
            purged,
            params["aligned"],
        )
    log.info(
        "aggregation %s: %d aggregates deleted from %s, to be rebuilt", plan.name, deleted, params["aligned"]
    )
    return params["aligned"], deleted


def count_purged_aggregations_from_date(
    definition: MeasureDefinition | str, day: date
) -> tuple[datetime, int]:
    """(aligned start, aggregates stamped by a purge) that delete_aggregations_from_date
    would delete: what a rebuild would lose. Reads only."""
    plan = _plan(get_definition(definition))
    params = {"name": plan.name, "period": plan.period, "date": day}
    with db.engine.connect() as conn:
        params["aligned"] = conn.execute(sa.text(sql.ALIGN_DATE), params).scalar()
        purged = conn.execute(sa.text(sql.COUNT_PURGED_FROM_DATE), params).scalar()
    return params["aligned"], purged


def purged_loss_message(name: str, aligned: datetime, purged: int) -> str:
    return (
        f"{purged} aggregate(s) of {name} from {aligned:%Y-%m-%d} on hold raw measures"
        " that were purged: rebuilt from the raw measures left, they would lose that data"
        " and their purge stamps for good (allow it explicitly: --allow-purged-loss)"
    )


def compute_wildcard_aggregate(
    definition: MeasureDefinition | str,
    groups: list[str],
    *,
    from_date: date | None = None,
    to_date: date | None = None,
    allow_purged_loss: bool = False,
) -> WildcardResult:
    """Recompute the wildcard level `groups` (e.g. ["group1", "group2"]) over a window.

    Replaces every earlier row of the level with cells of the raw measures ingested
    (last_updated, UTC) from `from_date` (default 1970-01-01) to the end of `to_date`
    (default today), in one transaction under the measure's advisory lock. A level
    declared in the definition's wildcard_groups is refused: the periodic aggregation
    keeps it exactly, a windowed recompute would break that. Unless
    `allow_purged_loss`, raises Conflict (nothing changed) when a row of the level was
    stamped by a purge: its purged measures cannot be recomputed. Raises Conflict
    while a run holds the measure, BadRequest for an unknown group, NotFound for an
    unknown measure. Publishes the level's rows that pass every rule (a windowed level
    covering only part of the cells under a row is never served). Commits.
    """
    plan = _read_plan(definition)
    starred = _wildcard_level(plan, groups, where="groups")
    if starred in plan.levels:
        raise BadRequest(
            f"groups: {','.join(sorted(starred))} is a declared wildcard level of"
            f" {plan.name}, kept up to date by compute-aggregation"
        )
    from_date = from_date or date(1970, 1, 1)
    to_date = to_date or datetime.now(UTC).date()
    if from_date > to_date:
        raise BadRequest("from-date: must not be after to-date")
    started = time.monotonic()
    params = {
        "name": plan.name,
        "period": plan.period,
        "from_ts": datetime.combine(from_date, datetime.min.time(), UTC),
        "to_ts": datetime.combine(to_date + timedelta(days=1), datetime.min.time(), UTC),
        **plan.stars,
    }
    level = ",".join(sorted(starred))
    with db.engine.connect() as conn:
        with conn.begin():
            conn.execute(sa.text(sql.NO_TIMEOUT))
            # The same lock as runs and delete-aggregations-from-date: no run of the
            # measure interleaves with the delete and the recompute.
            if not conn.execute(sa.text(sql.TRY_XACT_LOCK), params).scalar():
                raise Conflict(f"another run holds measure {plan.name}; try again when it ends")
            deleted, purged = conn.execute(
                sa.text(sql.DELETE_WILDCARD_LEVEL.format(level=sql.wildcard_level(starred))), params
            ).one()
            if purged and not allow_purged_loss:
                raise Conflict(
                    f"{purged} wildcard aggregate(s) of {plan.name} ({level}) hold raw measures"
                    " that were purged: recomputed, they would lose that data for good"
                    " (allow it explicitly: --allow-purged-loss)"
                )
            dates = (
                conn.execute(sa.text(sql.wildcard(starred, quartiles=plan.quartiles, top2=plan.top2)), params)
                .scalars()
                .all()
            )
            published = publish_measure(conn, plan.name)
    per_date: dict[datetime, int] = {}
    for start in sorted(dates):
        per_date[start] = per_date.get(start, 0) + 1
    result = WildcardResult(
        plan.name,
        sorted(starred),
        per_date,
        time.monotonic() - started,
        published=published.published,
        withheld=published.withheld,
    )
    log.info(
        "wildcard %s %s: %d earlier rows deleted, %d aggregates", plan.name, level, deleted, result.count
    )
    forget_cached_reads()
    return result


def _run(plan: _Plan, *, force: bool) -> AggregationResult:
    result = AggregationResult(plan.name)
    lock = {"name": plan.name}
    with db.engine.connect() as conn:
        # The lock is taken at session level BEFORE the transaction, then handed over to
        # the transaction: a REPEATABLE READ snapshot is taken by the first statement, so
        # a lock tried inside the transaction could be won just after the previous
        # holder committed, with a snapshot that still misses that commit.
        got = conn.execute(sa.text(sql.TRY_SESSION_LOCK), lock).scalar()
        conn.commit()
        if not got:
            result.skipped = f"another run holds measure {plan.name}"
            return result
        try:
            conn.execution_options(isolation_level="REPEATABLE READ")
            transaction = conn.begin()
            conn.execute(sa.text(sql.TAKE_XACT_LOCK), lock)
            conn.execute(sa.text(sql.RELEASE_SESSION_LOCK), lock)
            conn.execute(sa.text(sql.NO_TIMEOUT))
            _merge(conn, plan, result, force=force)
            if result.skipped:
                transaction.rollback()
            else:
                transaction.commit()
        except _StalePlan:
            # Planned again at once: the rollback releases the measure's lock now (an
            # invalidated connection's backend holds it until it notices, and the next
            # attempt would find the measure held by this one).
            transaction.rollback()
            raise
        except BaseException:
            # Whatever happened, no lock may outlive this run on a pooled connection.
            conn.invalidate()
            raise
    return result


def _merge(conn, plan: _Plan, result: AggregationResult, *, force: bool) -> None:
    params = {
        "name": plan.name,
        "period": plan.period,
        "step": sql.STEPS[plan.period],
        "every": sql.STEPS[plan.frequency],
        "xmin": 0,
        "xmax": 0,
        "xip": [],
        "rebuild_from": None,
        "reason": sql.REFUSED_REASON,
        **plan.stars,
    }
    version = conn.execute(sa.text(sql.READ_DEFINITION_VERSION), params).scalar()
    if version != plan.updated_at:
        raise _StalePlan(plan.name)
    state = conn.execute(sa.text(sql.READ_STATE), params).first()
    if state is not None:
        if state.too_early and not force and state.rebuild_from is None:
            result.skipped = (
                f"execution frequency '{plan.frequency}' not elapsed since the last run"
                f" at {state.last_run_at:%Y-%m-%d %H:%M:%S%z} (use --force)"
            )
            return
        params.update(
            xmin=state.snapshot_xmin,
            xmax=state.snapshot_xmax,
            xip=list(state.snapshot_xip),
            rebuild_from=state.rebuild_from,
        )
    rebuild = params["rebuild_from"] is not None
    keyed = frozenset(g for g in sql.GROUPS if plan.stars[f"star_{g}"] is not None)
    all_new = False
    if plan.quartiles:
        cells = conn.execute(sa.text(sql.HAS_CELLS), params).one()
        all_new = not cells.any_cell
        # Without a cell stamped by a purge there is nothing to refuse; REFUSE's probe of
        # every new row costs as much as the merge itself.
        if cells.any_purged:
            result.refused = conn.execute(
                sa.text(sql.refuse(list(plan.levels), rebuild=rebuild)), params
            ).rowcount
    # After a first run, the new rows are few and past the planner's statistics.
    hashed = state is not None and not all_new
    if hashed:
        conn.execute(sa.text(sql.HASH_NEW_ROWS))
    for starred in plan.levels:
        statement = sql.merge(
            starred,
            rebuild=rebuild,
            quartiles=plan.quartiles,
            all_new=all_new,
            keyed=keyed,
            top2=plan.top2,
        )
        row = conn.execute(sa.text(statement), params).one()
        if starred == PLAIN:
            result.raw_read = int(row.raw_read)
        result.inserted += row.inserted
        result.updated += row.updated
    if hashed:
        conn.execute(sa.text(sql.PLAN_AS_USUAL))
    conn.execute(sa.text(sql.SAVE_STATE), params)
    published = publish_measure(conn, plan.name)
    result.published, result.withheld = published.published, published.withheld


def _read_plan(definition: MeasureDefinition | str) -> _Plan:
    """The plan of a definition; ends the session's read transaction, so that it does
    not stay idle in transaction while the run works on a connection of its own."""
    plan = _plan(get_definition(definition))
    db.session.commit()
    return plan


def _plan(definition: MeasureDefinition) -> _Plan:
    keys = {"group1": definition.group1_key, "group2": definition.group2_key, "group3": definition.group3_key}
    plan = _Plan(
        name=definition.name,
        period=definition.aggregation_period,
        frequency=definition.execution_frequency,
        quartiles=definition.with_quartiles,
        levels=(PLAIN,),
        stars={f"star_{g}": json.dumps({k: "*"}) if k else None for g, k in keys.items()},
        updated_at=definition.updated_at,
        top2=definition.p_percent is not None,
    )
    levels = [PLAIN]
    declared = definition.wildcard_groups or []
    if not isinstance(declared, list):
        raise BadRequest(f"wildcard_groups of {definition.name}: must be a list of lists of groups")
    for i, level in enumerate(declared):
        starred = _wildcard_level(plan, level, where=f"wildcard_groups[{i}] of {definition.name}")
        if starred not in levels:
            levels.append(starred)
    return dataclasses.replace(plan, levels=tuple(levels))


def _wildcard_level(plan: _Plan, groups, *, where: str) -> frozenset[str]:
    if not isinstance(groups, list) or not groups:
        raise BadRequest(f"{where}: expected a non-empty list of group names")
    have = [g for g in sql.GROUPS if plan.stars[f"star_{g}"] is not None]
    for group in groups:
        if group not in sql.GROUPS:
            raise BadRequest(
                f"{where}: unknown group {json.dumps(group)} (expected group1, group2 or group3)"
            )
        if group not in have:
            raise BadRequest(f"{where}: {plan.name} has no {group} (it has: {', '.join(have) or 'no group'})")
    if len(set(groups)) != len(groups):
        raise BadRequest(f"{where}: a group is named twice")
    return frozenset(groups)


def get_definition(definition: MeasureDefinition | str) -> MeasureDefinition:
    """The definition itself, or the one named so. Raises NotFound."""
    if isinstance(definition, MeasureDefinition):
        return definition
    found = db.session.scalar(sa.select(MeasureDefinition).where(MeasureDefinition.name == definition))
    if found is None:
        raise NotFound(f"measure '{definition}': no such definition")
    return found
