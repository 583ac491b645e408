"""Aggregate restitution: GET|POST /aggregate (DACC)."""

from flask import Blueprint, current_app, request

from dacc.api.body import parse_json, read_body
from dacc.auth import current_token, require_scope
from dacc.errors import BadRequest
from dacc.restitution import read_aggregates

bp = Blueprint("aggregates", __name__)

PARAMS_MAX_BYTES = 64 * 1024
"""The parameters are four short fields."""


@bp.route("/aggregate", methods=["GET", "POST"])
@require_scope("aggregate:read")
def aggregate():
    rows = read_aggregates(_params(), token=current_token())
    # Already JSON: the view stores each served row's text (see dacc.restitution).
    return current_app.response_class(rows, mimetype="application/json")


def _params() -> dict:
    """The JSON body (DACC clients send one even with GET); for GET, the query string too.

    The Content-Type is not checked: GET bodies often come without one.
    """
    params = request.args.to_dict() if request.method == "GET" else {}
    raw = read_body(PARAMS_MAX_BYTES)
    if raw.strip():
        body = parse_json(raw)
        if not isinstance(body, dict):
            raise BadRequest("body: expected a JSON object")
        params.update(body)
    return params
