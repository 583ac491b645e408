"""Load runs against the served app, through scripts/loadgen.py."""

from __future__ import annotations

from scripts import loadgen
from scripts.bench.env import Environment


def load(env: Environment, requests, *, port: int | None = None, **kwargs) -> loadgen.LoadResult:
    """One run on `port` (the main server by default); any failed request is an error."""
    result = loadgen.run_load(port or env.port, requests, timeout=env.cap, **kwargs)
    if result.failures:
        raise RuntimeError(f"{result.failures} failed requests: {dict(result.statuses)}")
    return result


def paired(env: Environment, ceiling_requests, requests, *, total: int, connections: int, rounds: int = 4):
    """(ceiling, real) results, measured in alternating rounds so that a change in the
    machine's load during the run weighs on both alike."""
    ceilings, reals = [], []
    share = max(1, total // rounds)
    for _ in range(rounds):
        ceilings.append(load(env, ceiling_requests, total=share, connections=connections))
        reals.append(load(env, requests, total=share, connections=connections))
    return loadgen.LoadResult.combine(ceilings), loadgen.LoadResult.combine(reals)
