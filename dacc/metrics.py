"""Prometheus metrics: requests, measures and cache hits per process; job runs from the database.

The counters of web requests live in this process (prometheus-client's own state,
process-wide by design). Under gunicorn, set PROMETHEUS_MULTIPROC_DIR (an empty folder,
shared by the workers) and the client's multiprocess mode adds every worker's values
up. Jobs are short CLI processes, possibly in another container: each run adds to its
row of `job_run_stat` (dacc.runs), which every scrape reads.
"""

from __future__ import annotations

import logging
import time

import sqlalchemy as sa
from flask import Flask, request
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from dacc.db import db
from dacc.logs import REQUEST_START_KEY
from dacc.models import JobRunStat
from dacc.models.definitions import NAME_LENGTH

log = logging.getLogger(__name__)

CONTENT_TYPE = CONTENT_TYPE_LATEST
UNKNOWN_MEASURE = "(unknown)"
"""The label of refused measures whose name is not a definition: any client text would
otherwise become a label (unbounded series)."""
UNMATCHED = "(unmatched)"
"""The endpoint label of requests that matched no route (404)."""

REGISTRY = CollectorRegistry()
REQUESTS = Counter(
    "dacc_http_requests",
    "HTTP requests by route, method and status.",
    ["endpoint", "method", "status"],
    registry=REGISTRY,
)
LATENCY = Histogram(
    "dacc_http_request_duration_seconds",
    "Time from the request's arrival in the app to its response, by route.",
    ["endpoint"],
    buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30),
    registry=REGISTRY,
)
MEASURES_ACCEPTED = Counter(
    "dacc_measures_accepted",
    "Measures accepted by POST /measure and /measures (duplicates included), by measure.",
    ["measure"],
    registry=REGISTRY,
)
MEASURES_REFUSED = Counter(
    "dacc_measures_refused",
    "Measures refused with a 4xx (a bulk request: each listed fault), by measure.",
    ["measure"],
    registry=REGISTRY,
)
AGGREGATE_CACHE = Counter(
    "dacc_aggregate_cache_lookups",
    "/aggregate answers looked up in this process's cache, by result (hit, miss).",
    ["result"],
    registry=REGISTRY,
)


def register_request_metrics(app: Flask) -> None:
    """Count every request and time it, by route template (bounded labels).

    Timed from dacc.logs' clock, which every request starts."""

    @app.after_request
    def _count(response):
        rule = request.url_rule
        endpoint = rule.rule if rule is not None else UNMATCHED
        _child(REQUESTS, endpoint, request.method, response.status_code).inc()
        started = request.environ.get(REQUEST_START_KEY)
        if started is not None:
            _child(LATENCY, endpoint).observe(time.perf_counter() - started)
        return response


_children: dict[tuple, object] = {}


def _child(metric, *labels):
    """`metric.labels(*labels)`, looked up in a dict: labels() takes a lock and builds
    its key each time, and every request counts two or three series."""
    key = (metric, *labels)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(*map(str, labels))
    return child


def count_accepted(body) -> None:
    """Count a stored /measure body, or each item of a stored /measures array."""
    if isinstance(body, dict):
        _child(MEASURES_ACCEPTED, body["measureName"]).inc()
        return
    per_measure: dict[str, int] = {}
    for item in body:
        per_measure[item["measureName"]] = per_measure.get(item["measureName"], 0) + 1
    for name, count in per_measure.items():
        MEASURES_ACCEPTED.labels(name).inc(count)


def count_refused(refused: list[tuple[str | None, str]]) -> None:
    """Count refused measures, given as (measureName sent, fault) pairs.

    Validation checks the name first: a fault about anything else means the name is a
    definition's, safe as a label. Not so for the checks of the whole body that come
    before it (NUL, lone surrogates): a name no definition can have is never a label,
    and a lone surrogate in one would break every later rendering of /metrics.
    """
    for name, fault in refused:
        known = (
            isinstance(name, str)
            and 0 < len(name) <= NAME_LENGTH
            and name.isprintable()
            and not fault.startswith("measureName:")
        )
        MEASURES_REFUSED.labels(name if known else UNKNOWN_MEASURE).inc()


def count_cache_lookup(hit: bool) -> None:
    AGGREGATE_CACHE.labels("hit" if hit else "miss").inc()


def render_metrics(*, multiprocess_dir: str | None) -> bytes:
    """The exposition text: this process's (or every worker's) metrics, then the jobs'."""
    if multiprocess_dir:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=multiprocess_dir)
    else:
        registry = REGISTRY
    return generate_latest(registry) + generate_latest(_JobRuns(_job_rows()))


# Every job's cumulative row: a few rows per measure, read in one statement.
_JOB_ROWS = sa.select(JobRunStat).order_by(JobRunStat.job, JobRunStat.measure_name)


def _job_rows() -> list[JobRunStat]:
    rows = list(db.session.scalars(_JOB_ROWS))
    db.session.rollback()
    return rows


class _JobRuns:
    """A collector over job_run_stat rows, for generate_latest."""

    def __init__(self, rows: list[JobRunStat]):
        self.rows = rows

    def collect(self):
        labels = ["job", "measure"]
        runs = CounterMetricFamily(
            "dacc_job_runs", "Job runs by job, measure and result.", labels=[*labels, "result"]
        )
        durations = SummaryMetricFamily(
            "dacc_job_run_duration_seconds", "Duration of job runs (count and sum).", labels=labels
        )
        last = GaugeMetricFamily(
            "dacc_job_last_run_duration_seconds", "Duration of the latest run.", labels=labels
        )
        success = GaugeMetricFamily(
            "dacc_job_last_success_timestamp_seconds",
            "Unix time of the latest successful run.",
            labels=labels,
        )
        for row in self.rows:
            key = [row.job, row.measure_name]
            runs.add_metric([*key, "ok"], row.runs_ok)
            runs.add_metric([*key, "failed"], row.runs_failed)
            durations.add_metric(key, count_value=row.runs_ok + row.runs_failed, sum_value=row.seconds_total)
            if row.last_seconds is not None:
                last.add_metric(key, row.last_seconds)
            if row.last_success_at is not None:
                success.add_metric(key, row.last_success_at.timestamp())
        return [runs, durations, last, success]
