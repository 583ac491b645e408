"""Bench section `restitution`: /aggregate over 30 days and over all time, against the
same rows served from memory."""

from __future__ import annotations

import datetime as dt
import http.client
import json

from scripts import loadgen
from scripts.bench.compute import fresh_compute, publish_everything
from scripts.bench.data import generate_raw
from scripts.bench.env import Environment
from scripts.bench.figures import Figure
from scripts.bench.load import load, paired


def section_restitution(env: Environment) -> list[Figure]:
    today = dt.date.today()
    days = 3 * 365
    definition = env.add_definition("bench.rest", group2_key="g2", aggregation_threshold=5)
    generate_raw(
        env,
        definition.name,
        days * 20 * 5,
        start=today - dt.timedelta(days=days),
        days=days,
        groups=5,
        group2=4,
    )
    env.vacuum()
    fresh_compute(env, definition, days * 20 * 5)
    publish_everything()

    headers = {"Authorization": env.tokens["read"]}

    def request(path, since):
        body = {"measureName": definition.name, "startDate": since.isoformat(), "endDate": today.isoformat()}
        return [loadgen.build_request("POST", path, body=json.dumps(body).encode(), headers=headers)]

    month = request("/aggregate", today - dt.timedelta(days=30))
    trivial = request("/_bench/aggregate", today - dt.timedelta(days=30))
    rows = _rows_returned(env, month[0])
    for requests in (trivial, month):
        load(env, requests, total=64, connections=8)
    count = env.sizes["rest_requests"]
    figures = []
    for connections in (1, 8):
        ceiling, result = paired(env, trivial, month, total=count, connections=connections)
        label = f"30 days ({rows} rows), {connections} conn"
        figures += [
            Figure("restitution", f"/aggregate rate, {label}", result.rate, "requests/s", ceiling.rate, "ratio>=0.5",
                   "ceiling: /_bench/aggregate, same rows from memory"),
            Figure("restitution", f"/aggregate p50, {label}", result.percentile(50), "ms", ceiling.percentile(50)),
            Figure("restitution", f"/aggregate p99, {label}", result.percentile(99), "ms", ceiling.percentile(99),
                   "value<=30" if connections == 8 else ""),
        ]  # fmt: skip
        if connections == 1:
            month_p50 = result.percentile(50)
    forever = request("/aggregate", dt.date(1970, 1, 1))
    long_rows = _rows_returned(env, forever[0])
    result = load(env, forever, total=env.sizes["rest_long_requests"], connections=1)
    figures += [
        Figure("restitution", f"/aggregate 1970 → now ({long_rows} rows) p50, 1 conn", result.percentile(50), "ms",
               month_p50, "ratio<=2", "ceiling column: the 30-day p50"),
        Figure("restitution", "/aggregate 1970 → now, per row returned", result.percentile(50) / max(long_rows, 1),
               "ms/row", month_p50 / max(rows, 1), "ratio<=2", "ceiling column: the 30-day query per row"),
    ]  # fmt: skip
    return figures


def _rows_returned(env: Environment, raw_request: bytes) -> int:
    head, _, body = raw_request.partition(b"\r\n\r\n")
    conn = http.client.HTTPConnection(loadgen.HOST, env.port, timeout=60)
    headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n")[1:])
    conn.request("POST", "/aggregate", body=body, headers=headers)
    response = conn.getresponse()
    payload = json.loads(response.read())
    if response.status != 200:
        raise RuntimeError(f"/aggregate answered {response.status}: {payload}")
    return len(payload)
