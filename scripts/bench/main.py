"""Run the sections in order, each in its own try, and print the table of figures."""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import time
import traceback
from pathlib import Path

import scripts.bench
from scripts.bench import aggregation, bulk, mqtt, publication, purge, restitution, single
from scripts.bench.env import Environment, fdatasync_rate, machine, say, settings
from scripts.bench.figures import Figure, markdown

SECTION_FUNCTIONS = {
    "single": single.section_single,
    "bulk": bulk.section_bulk,
    "aggregation": aggregation.section_aggregation,
    "restitution": restitution.section_restitution,
    "publication": publication.section_publication,
    "purge": purge.section_purge,
    "mqtt": mqtt.section_mqtt,
}
SECTIONS = tuple(SECTION_FUNCTIONS)


def run(args) -> dict:
    figures: list[Figure] = []
    with contextlib.ExitStack() as stack:
        began = time.monotonic()
        env = Environment(args, stack)
        meta = {
            "mode": "quick" if args.quick else "full",
            "machine": {**machine(), "fdatasync_per_s": round(fdatasync_rate(env.tmp))},
            "postgresql": {"tuned_by_bench": env.tuned, **settings(env)},
            "gunicorn": f"{args.worker_class}, {args.workers} workers × {args.threads} threads",
            "generator": "scripts/loadgen.py: asyncio raw HTTP/1.1, keep-alive, 1 forked process",
            "sizes": env.sizes,
        }
        say(f"PostgreSQL: {meta['postgresql']}")
        say(f"gunicorn: {meta['gunicorn']} on 127.0.0.1:{env.port}; set-up {time.monotonic() - began:.1f} s")
        for name in args.only or SECTIONS:
            t0 = time.monotonic()
            say(f"{name} ...")
            try:
                figures += SECTION_FUNCTIONS[name](env)
            except Exception as exc:  # one broken section must not hide the others
                traceback.print_exc()
                first = (str(exc).strip().splitlines() or [""])[0][:200]
                figures.append(Figure(name, f"FAILED: {type(exc).__name__}: {first}", None))
                env.rollback()
            say(f"{name} done in {time.monotonic() - t0:.1f} s")
        meta["seconds"] = round(time.monotonic() - began, 1)
    return {"meta": meta, "figures": figures}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=scripts.bench.__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10× smaller, under a minute (smoke test)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, help="run only these sections")
    parser.add_argument(
        "--count", type=int, help="POST /measure requests per run (default 20,000; quick 2,000)"
    )
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (default 2)")
    parser.add_argument(
        "--threads", type=int, default=8, help="threads per gunicorn worker (default 8, as served)"
    )
    parser.add_argument(
        "--worker-class",
        default="dacc.serving.Worker",
        help="gunicorn worker class (default dacc.serving.Worker, as served)",
    )
    parser.add_argument(
        "--ingest-batch-ms",
        type=int,
        default=2,
        help="the server's dacc.ingest_batch_ms (default 2; 0: group commit off)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, data)")
    return parser.parse_args(argv)


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv=None) -> int:
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so that gunicorn and PostgreSQL are stopped; SIGINT
    # too when a shell started this in the background (it would be ignored).
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    began = time.monotonic()
    try:
        result = run(args)
    except KeyboardInterrupt:
        say("interrupted: gunicorn and PostgreSQL stopped, temporary folder removed")
        return 130
    say(f"finished in {time.monotonic() - began:.1f} s, clean-up included")
    meta = result["meta"]
    print(f"# DACC benchmark ({meta['mode']}), {meta['machine']['date']}\n")
    m = meta["machine"]
    print(f"{m['cores']} cores ({m['cpu']}), {m['memory_gib']} GiB, load average {m['load_average']}, "
          f"disk {m['fdatasync_per_s']} fdatasync/s; gunicorn {meta['gunicorn']}; run took {meta['seconds']} s\n")  # fmt: skip
    print(markdown(result["figures"]))
    if args.json:
        payload = {"meta": meta, "figures": [f.as_dict() for f in result["figures"]]}
        Path(args.json).write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return 0
