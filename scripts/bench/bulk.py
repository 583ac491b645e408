"""Bench section `bulk`: POST /measures of 10,000-item bodies, plain and with
contributors, against a COPY of the same rows."""

from __future__ import annotations

import io
import json
import time

from scripts import loadgen
from scripts.bench.data import BULK_ITEMS, contributor_body, ensure_single_definition, measure_body
from scripts.bench.env import Environment
from scripts.bench.figures import Figure
from scripts.bench.load import load


def section_bulk(env: Environment) -> list[Figure]:
    ensure_single_definition(env)
    bodies = [
        [measure_body("bench.single", b * BULK_ITEMS + i) for i in range(BULK_ITEMS)]
        for b in range(env.sizes["bulk_bodies"])
    ]
    headers = {"Authorization": env.tokens["write"]}
    requests = [
        loadgen.build_request("POST", "/measures", body=json.dumps(b).encode(), headers=headers)
        for b in bodies
    ]
    load(env, requests[:1], total=2, connections=2)  # warm both workers
    result = load(env, requests, total=len(requests), connections=1)
    measures = len(requests) * BULK_ITEMS
    copy_seconds = _copy_rows(env, bodies)
    named_bodies = [
        [contributor_body(b * BULK_ITEMS + i) for i in range(BULK_ITEMS)]
        for b in range(env.sizes["bulk_bodies"])
    ]
    named = [
        loadgen.build_request("POST", "/measures", body=json.dumps(b).encode(), headers=headers)
        for b in named_bodies
    ]
    named_result = load(env, named, total=len(named), connections=1)
    # Contributors on a measure without a cap: the same COPY straight into raw_measure.
    uncapped = [
        loadgen.build_request(
            "POST",
            "/measures",
            body=json.dumps([{**m, "measureName": "bench.single"} for m in b]).encode(),
            headers=headers,
        )
        for b in named_bodies
    ]
    uncapped_result = load(env, uncapped, total=len(uncapped), connections=1)
    return [
        Figure("bulk", f"POST /measures + contributors (no cap), {BULK_ITEMS:,}-item bodies",
               measures / uncapped_result.elapsed, "measures/s", measures / copy_seconds, "ratio>=0.3",
               "ceiling: COPY of plain rows; the same COPY, with the contributor hash"),
        Figure("bulk", f"POST /measures + contributors (capped), {BULK_ITEMS:,}-item bodies", measures / named_result.elapsed,
               "measures/s", measures / copy_seconds, "ratio>=0.3",
               "ceiling: COPY of plain rows; the same COPY, then a quota upsert per (cell, contributor)"),
        Figure("bulk", f"POST /measures, {BULK_ITEMS:,}-item bodies, 1 conn", measures / result.elapsed, "measures/s",
               measures / copy_seconds, "ratio>=0.3", "ceiling: COPY of the same rows, one transaction per body"),
        Figure("bulk", "POST /measures p50 per body", result.percentile(50), "ms", copy_seconds / len(bodies) * 1000),
    ]  # fmt: skip


def _copy_rows(env: Environment, bodies: list[list[dict]]) -> float:
    """Seconds to COPY the bodies' rows into raw_measure, one transaction per body."""
    from dacc.db import db

    buffers = []
    for body in bodies:
        lines = (
            f"{m['measureName']}\t{m['value']}\t{m['startDate']}\t{m['createdBy']}\t{json.dumps(m['group1'])}\n"
            for m in body
        )
        buffers.append("".join(lines))
    raw = db.engine.raw_connection()
    try:
        cursor = raw.cursor()
        start = time.perf_counter()
        for text in buffers:
            cursor.copy_expert(
                "COPY raw_measure (measure_name, value, start_date, created_by, group1) FROM STDIN",
                io.StringIO(text),
            )
            raw.commit()
        return time.perf_counter() - start
    finally:
        raw.close()
