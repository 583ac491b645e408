"""Bench section `single`: POST /measure, one measure per request, with and without
group commit and with a contributor, against the one-INSERT endpoint."""

from __future__ import annotations

import contextlib
import json

from scripts import loadgen
from scripts.bench.cpu import CpuMeter, postmaster_pid
from scripts.bench.data import contributor_body, ensure_single_definition, measure_body
from scripts.bench.env import Environment, gunicorn
from scripts.bench.figures import Figure
from scripts.bench.load import load, paired


def section_single(env: Environment) -> list[Figure]:
    ensure_single_definition(env)
    count = env.sizes["single"]
    bodies = [json.dumps(measure_body("bench.single", i)).encode() for i in range(1000)]
    headers = {"Authorization": env.tokens["write"]}
    real = [loadgen.build_request("POST", "/measure", body=b, headers=headers) for b in bodies]
    trivial = [loadgen.build_request("POST", "/_bench/insert", body=b, headers=headers) for b in bodies]
    window = env.args.ingest_batch_ms
    figures = []
    # A second server with group commit off serves today's one commit per request, so
    # that the batched endpoint is compared with it in the same run.
    with _unbatched_server(env) as unbatched:
        runs = [(trivial, env.server), (real, env.server), (real, unbatched)]
        for requests, server in runs:  # warm every worker: token cache, pools, imports
            load(env, requests, port=server.port, total=200, connections=8)
        for connections in (1, 8):
            (ceiling, result, alone), per_commit, cpu = _alternated(
                env, runs, total=count, connections=connections
            )
            label = f"{connections} conn"
            figures += [
                Figure("single", f"POST /measure rate, {label}", result.rate, "measures/s", ceiling.rate,
                       "ratio>=2" if connections == 8 else "ratio>=0.6",
                       f"ceiling: POST /_bench/insert (one INSERT); generator {result.cpu_share:.2f} cores"),
                Figure("single", f"POST /measure rate, {label}, group commit off", alone.rate, "measures/s",
                       ceiling.rate, note="today's one commit per request; ceiling: the one-INSERT endpoint"),
                Figure("single", f"POST /measure rate, {label}, against group commit off", result.rate, "measures/s",
                       alone.rate, "ratio>=0.9" if connections == 1 else ""),
                Figure("single", f"POST /measure p50, {label}", result.percentile(50), "ms", ceiling.percentile(50)),
                Figure("single", f"POST /measure p99, {label}", result.percentile(99), "ms", ceiling.percentile(99),
                       f"value<={20 + window}" if connections == 8 else "",
                       f"target 20 ms + the {window} ms window" if connections == 8 else ""),
                Figure("single", f"POST /measure p99, {label}, group commit off", alone.percentile(99), "ms",
                       ceiling.percentile(99)),
                Figure("single", f"measures per commit, {label}", per_commit, "", note=f"ingest_batch_ms {window}"),
                *_cpu_figures(cpu, label),
            ]  # fmt: skip
    # With a contributor on a capped measure: its HMAC and its quota upsert, same ceiling.
    named = [
        loadgen.build_request(
            "POST", "/measure", body=json.dumps(contributor_body(i)).encode(), headers=headers
        )
        for i in range(1000)
    ]
    load(env, named, total=200, connections=8)
    ceiling, result = paired(env, trivial, named, total=count, connections=8)
    figures += [
        Figure("single", "POST /measure + contributor (capped), 8 conn", result.rate, "measures/s", ceiling.rate,
               "ratio>=0.6", "ceiling: POST /_bench/insert; one statement: quota upsert + INSERT"),
        Figure("single", "POST /measure + contributor p99, 8 conn", result.percentile(99), "ms",
               ceiling.percentile(99), "value<=20"),
    ]  # fmt: skip
    alone = loadgen.generator_ceiling(real, total=count, connections=8, timeout=env.cap)
    figures.append(
        Figure("single", "load generator alone, 8 conn", alone.rate, "requests/s", ceiling.rate,
               note="canned-reply server; ceiling column: the trivial endpoint's rate")
    )  # fmt: skip
    return figures


@contextlib.contextmanager
def _unbatched_server(env: Environment):
    """A second gunicorn, same settings, `ingest_batch_ms: 0`; yields it, serving."""
    config = env.tmp / "config-unbatched.yml"
    config.write_text(
        env.config_file.read_text().replace(
            f"ingest_batch_ms: {env.args.ingest_batch_ms}", "ingest_batch_ms: 0"
        )
    )
    with gunicorn(env, config_file=config, log_name="gunicorn-unbatched.log") as server:
        server.ready()
        yield server


def _alternated(env: Environment, runs, *, total: int, connections: int, rounds: int = 4):
    """One combined result per (requests, server) of `runs`, measured in alternating
    rounds; the measures per commit of the second run (the batched endpoint); and a
    CpuMeter per run (its server's workers, and the embedded PostgreSQL)."""
    results: list[list[loadgen.LoadResult]] = [[] for _ in runs]
    postmaster = postmaster_pid(env.pgdata) if env.pgdata else None
    meters = [CpuMeter(server.process.pid, postmaster) for _, server in runs]
    rows = commits = 0
    share = max(1, total // rounds)
    for _ in range(rounds):
        for index, (requests, server) in enumerate(runs):
            since = env.execute("SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint").scalar()
            run = meters[index].measure(
                load, env, requests, port=server.port, total=share, connections=connections
            )
            results[index].append(run)
            if index == 1:
                # Rows of one commit share its transaction id.
                counted = env.execute(
                    "SELECT count(*), count(DISTINCT txid) FROM raw_measure"
                    " WHERE measure_name = 'bench.single' AND txid >= :since",
                    {"since": since},
                ).one()
                rows, commits = rows + counted[0], commits + counted[1]
    combined = [loadgen.LoadResult.combine(r) for r in results]
    return combined, rows / commits if commits else None, meters


def _cpu_figures(meters, label: str) -> list[Figure]:
    """CPU per request of the web workers and of PostgreSQL: what a request costs the
    machine, whatever else runs on it (rates and latencies depend on that)."""
    ceiling, batched, alone = meters
    figures = []
    for part, what in (("web", "gunicorn workers"), ("pg", "PostgreSQL")):
        value = batched.per_request(part)
        if value is None:
            continue
        off = alone.per_request(part)
        figures.append(
            Figure("single", f"{what} CPU per measure, {label}", value, "µs", ceiling.per_request(part),
                   note=f"ceiling column: /_bench/insert; group commit off: {off:,.0f} µs")
        )  # fmt: skip
    return figures
