"""Benchmark: ingestion, aggregation, restitution, publication, purge and MQTT, each
against its ceiling.

    python scripts/bench.py [--quick] [--json FILE] [--only SECTION ...]

Starts its own PostgreSQL (embedded pgserver in a temporary folder, or a throw-away
database on DATABASE_URL's server), migrates it, loads definitions and tokens, serves
the app with gunicorn on a free loopback port, and measures every figure next to a
ceiling taken in the same run. Prints a markdown table; `--json FILE` writes the same
figures. See docs/PERFORMANCE.md for the figures and what limits each one.

One module per section (`single`, `bulk`, `aggregation` with `quartiles` and `memory`,
`restitution`, `publication`, `purge`, `mqtt`); the set-up they share lives in `env`
(database, app, gunicorn), `data` (bodies and generated raw rows), `load` (the load
generator's runs) and `compute` (timed aggregation runs); `main` runs them.
"""
