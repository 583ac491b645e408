"""The periodic run: aggregation, view refresh and retention purge, in order, one at a time."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable

import sqlalchemy as sa

from dacc import publication, purge
from dacc.aggregation import compute
from dacc.db import db
from dacc.errors import Conflict, error_message
from dacc.models import MeasureDefinition

log = logging.getLogger(__name__)

RUNNER_LOCK = "hashtextextended('dacc.jobs', 0)"
"""Session-level advisory lock key held for a whole run: one runner at a time."""

OK, SKIPPED, REFUSED, FAILED = "ok", "skipped", "refused", "failed"


@dataclasses.dataclass
class StepResult:
    """One line of the run's summary: a step, for one measure or for all."""

    step: str
    """"aggregate", "publish" or "purge"."""
    measure_name: str | None
    status: str
    """ok, skipped (nothing to do, or another run holds the measure), refused (a purge
    that found raw measures not aggregated yet: deleted nothing) or failed."""
    detail: str
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return self.status == FAILED


StepCallback = Callable[[StepResult], None]


def run_jobs(*, on_step: StepCallback | None = None) -> list[StepResult]:
    """Run every periodic job, in order, and return one result per step and measure.

    1. the aggregation of every measure whose execution frequency has elapsed (which
       keeps its declared wildcard levels too, and publishes what it changed),
    2. the publication of what became pending without new data (periods that
    closed), 3. the retention purge (each definition's rawRetentionDays, else 90 days).
    A step that fails is recorded and the next ones still run. The whole run holds a
    session-level advisory lock: raises Conflict, having done nothing, while another
    run holds it. Each step commits its own work. `on_step` sees each result as it ends.
    """
    results: list[StepResult] = []

    def record(result: StepResult) -> None:
        results.append(result)
        if on_step:
            on_step(result)

    with db.engine.connect() as lock:
        # Session level, on a connection of its own: it survives the commits of the
        # steps, and dies with this process if the run is killed.
        if not lock.execute(sa.text(f"SELECT pg_try_advisory_lock({RUNNER_LOCK})")).scalar():
            raise Conflict("another jobs run is in progress")
        lock.commit()
        try:
            log.info("jobs run started")
            for name in _measure_names():
                record(_aggregate(name))
            record(_publish())
            for result in _purge():
                record(result)
        finally:
            lock.execute(sa.text(f"SELECT pg_advisory_unlock({RUNNER_LOCK})"))
            lock.commit()
    failed = sum(r.failed for r in results)
    log.info("jobs run ended: %d step(s), %d failed", len(results), failed)
    return results


def _measure_names() -> list[str]:
    names = db.session.scalars(sa.select(MeasureDefinition.name).order_by(MeasureDefinition.name)).all()
    db.session.commit()
    return list(names)


def _aggregate(name: str) -> StepResult:
    started = time.monotonic()
    try:
        result = compute.compute_aggregation(name)
    except Exception as exc:  # a failed step must not stop the next ones
        return _failure("aggregate", name, exc, started)
    if result.skipped:
        return StepResult("aggregate", name, SKIPPED, result.skipped, result.seconds)
    detail = (
        f"{result.raw_read} raw read, {result.inserted} inserted, {result.updated} updated"
        + (f", {result.refused} refused (quartiles after purge)" if result.refused else "")
        + f"; {result.published} published, {result.withheld} withheld"
    )
    return StepResult("aggregate", name, OK, detail, result.seconds)


def _publish() -> StepResult:
    started = time.monotonic()
    try:
        results = publication.publish_pending()
    except Exception as exc:
        return _failure("publish", None, exc, started)
    detail = (
        f"{sum(r.published for r in results)} published, {sum(r.withheld for r in results)}"
        f" withheld over {sum(r.hierarchies for r in results)} day(s)/app(s)"
    )
    return StepResult("publish", None, OK, detail, time.monotonic() - started)


def _purge() -> list[StepResult]:
    started = time.monotonic()
    try:
        results = purge.purge_all_measures()
    except Exception as exc:
        return [_failure("purge", None, exc, started)]
    steps = []
    for r in results:
        if r.error:
            status, detail = FAILED, r.error
        elif r.refused:
            status, detail = REFUSED, r.status
        else:
            status = OK
            detail = f"{r.deleted} deleted, {r.stamped} aggregates stamped ({r.days} days)"
        steps.append(StepResult("purge", r.measure_name, status, detail, r.seconds))
    return steps


def _failure(step: str, name: str | None, exc: Exception, started: float) -> StepResult:
    db.session.rollback()
    log.exception("jobs run: %s %s failed", step, name or "")
    return StepResult(step, name, FAILED, error_message(exc), time.monotonic() - started)
