"""HTTP API: one blueprint per area."""

from flask import Flask


def register_blueprints(app: Flask, *, bench: bool = False, metrics: str = "token") -> None:
    from dacc.api import aggregates, docs, measures, status, whoami

    for module in (status, whoami, measures, aggregates, docs):
        app.register_blueprint(module.bp)
    if metrics != "off":
        from dacc.api import metrics as metrics_api

        app.register_blueprint(metrics_api.open_bp if metrics == "open" else metrics_api.bp)
    if bench:
        from dacc.api import bench as bench_api

        app.register_blueprint(bench_api.bp)
