"""Ceiling endpoints of the benchmark (scripts/bench.py): registered only when enabled.

They are measuring sticks, not features: each does the least work the real endpoint
cannot avoid (the framework, the JSON, the driver), so that the benchmark can report
the real endpoint as a ratio of what this stack allows on the same machine. They skip
the domain layer on purpose; `dacc.bench_endpoints` is never set outside the benchmark.
"""

import json
import threading

import sqlalchemy as sa
from flask import Blueprint, current_app, jsonify, request
from sqlalchemy.exc import DataError

from dacc.db import db
from dacc.errors import BadRequest

bp = Blueprint("bench", __name__, url_prefix="/_bench")

# One INSERT of one raw measure, as plain as the driver allows: no checks, no lookups.
_INSERT_RAW = sa.text(
    "INSERT INTO raw_measure (measure_name, value, start_date, created_by, group1, group2, group3)"
    " VALUES (:name, :value, :start_date, :created_by,"
    " CAST(:group1 AS jsonb), CAST(:group2 AS jsonb), CAST(:group3 AS jsonb))"
)
_FIELDS = ("measureName", "value", "startDate", "createdBy")

_replies: dict[tuple, tuple[int, bytes, str]] = {}
_replies_lock = threading.Lock()


@bp.post("/insert")
def insert():
    """The single-ingestion ceiling: parse the JSON body, one INSERT, one commit."""
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise BadRequest("body: expected a JSON object")
    missing = [f for f in _FIELDS if f not in body]
    if missing:
        raise BadRequest(f"{missing[0]}: required")
    groups = {f"group{i}": _json_or_none(body.get(f"group{i}")) for i in (1, 2, 3)}
    try:
        db.session.execute(
            _INSERT_RAW,
            {
                "name": body["measureName"],
                "value": body["value"],
                "start_date": body["startDate"],
                "created_by": body["createdBy"],
                **groups,
            },
        )
    except DataError:
        db.session.rollback()
        raise BadRequest("body: a field has a value PostgreSQL cannot store") from None
    db.session.commit()
    return jsonify({"ok": True}), 201


@bp.route("/aggregate", methods=["GET", "POST"])
def aggregate():
    """The /aggregate ceiling: the same answer, kept in memory.

    The first request with a given body, query string and token asks the real
    /aggregate once (in this process); later ones send the bytes it returned. The real
    endpoint gets its JSON text from PostgreSQL, so the ceiling is the framework alone:
    request parsing, routing and sending the same bytes.
    """
    key = (request.method, request.query_string, request.get_data(), request.headers.get("Authorization"))
    reply = _replies.get(key)
    if reply is None:
        reply = _ask_real_aggregate()
        with _replies_lock:
            _replies[key] = reply
    status, body, mimetype = reply
    return current_app.response_class(body, status=status, mimetype=mimetype)


def _ask_real_aggregate() -> tuple[int, bytes, str]:
    headers = {"Content-Type": request.content_type or "application/json"}
    if "Authorization" in request.headers:
        headers["Authorization"] = request.headers["Authorization"]
    response = current_app.test_client().open(
        "/aggregate",
        method=request.method,
        query_string=request.query_string,
        data=request.get_data(),
        headers=headers,
    )
    return response.status_code, response.get_data(), response.mimetype


def _json_or_none(value) -> str | None:
    return None if value is None else json.dumps(value)
