"""Job run counters (job_run_stat): what /metrics says about aggregation, publication, purge."""

from __future__ import annotations

import functools
import logging
import time

import sqlalchemy as sa

from dacc.db import db
from dacc.errors import NotFound

log = logging.getLogger(__name__)

ALL_MEASURES = ""
"""The measure of a job that covers them all."""

# One upsert per run, in its own short transaction: the job's own work is committed (or
# rolled back) by then, and a failure to count must never undo or fail the job.
_RECORD = sa.text("""
    INSERT INTO job_run_stat AS s
        (job, measure_name, runs_ok, runs_failed, seconds_total, last_seconds,
         last_success_at, last_failure_at)
    VALUES (:job, :measure, CAST(:ok AS int), 1 - CAST(:ok AS int), :seconds, :seconds,
            CASE WHEN :ok THEN now() END, CASE WHEN NOT :ok THEN now() END)
    ON CONFLICT (job, measure_name) DO UPDATE SET
        runs_ok = s.runs_ok + EXCLUDED.runs_ok,
        runs_failed = s.runs_failed + EXCLUDED.runs_failed,
        seconds_total = s.seconds_total + EXCLUDED.seconds_total,
        last_seconds = EXCLUDED.last_seconds,
        last_success_at = COALESCE(EXCLUDED.last_success_at, s.last_success_at),
        last_failure_at = COALESCE(EXCLUDED.last_failure_at, s.last_failure_at)
    """)


def record_run(job: str, measure: str, *, ok: bool, seconds: float) -> None:
    """Add one run to its row; logs (never raises) when it cannot."""
    try:
        with db.engine.begin() as conn:
            conn.execute(_RECORD, {"job": job, "measure": measure, "ok": ok, "seconds": seconds})
    except Exception:  # metrics must not turn a finished job into a failed one
        log.warning("could not record the %s run of %r", job, measure, exc_info=True)


def recorded_run(job: str):
    """Decorator of a job's public function: counts each run that did something.

    The measure is the function's first argument (a definition or its name), or
    ALL_MEASURES without one. A result with a true `skipped` was not a run; an exception
    is a failed run, raised again.
    """

    def decorator(func):
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            measure = _measure_name(args[0]) if args else ALL_MEASURES
            started = time.monotonic()
            try:
                result = func(*args, **kwargs)
            except NotFound:
                raise  # no such measure: nothing ran, and no row for a mistyped name
            except Exception:
                record_run(job, measure, ok=False, seconds=time.monotonic() - started)
                raise
            if not getattr(result, "skipped", None):
                record_run(job, measure, ok=True, seconds=time.monotonic() - started)
            return result

        return wrapper

    return decorator


def _measure_name(definition) -> str:
    return definition if isinstance(definition, str) else getattr(definition, "name", ALL_MEASURES)
