"""HTTP API: one blueprint per area."""

from flask import Flask


def register_blueprints(app: Flask, *, bench: bool = False) -> None:
    from dacc.api import aggregates, measures, status, whoami

    for module in (status, whoami, measures, aggregates):
        app.register_blueprint(module.bp)
    if bench:
        from dacc.api import bench as bench_api

        app.register_blueprint(bench_api.bp)
