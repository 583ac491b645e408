"""Prometheus scrape endpoint: GET /metrics (off, open or behind a metrics:read token)."""

from flask import Blueprint, current_app

from dacc.auth import require_scope
from dacc.metrics import CONTENT_TYPE, render_metrics

bp = Blueprint("metrics", __name__)


def _metrics():
    config = current_app.config["DACC"]
    body = render_metrics(multiprocess_dir=config.metrics_multiprocess_dir)
    return current_app.response_class(body, mimetype=None, content_type=CONTENT_TYPE)


# Per-measure counts tell which measures are active: a token by default.
bp.add_url_rule("/metrics", "metrics", require_scope("metrics:read")(_metrics))
open_bp = Blueprint("metrics_open", __name__)
open_bp.add_url_rule("/metrics", "metrics", _metrics)
