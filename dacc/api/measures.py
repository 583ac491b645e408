"""Measure ingestion endpoints: POST /measure (DACC) and POST /measures (bulk)."""

from flask import Blueprint, current_app, jsonify, request

from dacc.api.body import parse_json, parse_json_array, read_body
from dacc.auth import current_token, require_scope
from dacc.errors import DaccError, UnsupportedMediaType
from dacc.ingestion import MAX_BATCH, record_measure, record_measures
from dacc.logs import log_refused_measures, refused_measures
from dacc.metrics import count_accepted, count_refused

bp = Blueprint("measures", __name__)
_STORED = b'{"ok":true}\n'

MEASURE_MAX_BYTES = 64 * 1024
"""One measure is a few hundred bytes; the app-wide limit (16 MiB) is for bulk."""


@bp.post("/measure")
@require_scope("measure:write")
def post_measure():
    # The definition's `writers` and the token's app binding decide, in ingestion,
    # before any detail of the measure's schema is told.
    token = current_token()
    body = _json_body(max_bytes=MEASURE_MAX_BYTES)
    try:
        result = record_measure(body, org=token.org, app=token.app)
    except DaccError as exc:
        _refused(body, exc)
        raise
    count_accepted(body)
    if result.duplicates:
        return jsonify({"ok": True, "duplicate": True}), 200
    # The answer of every stored measure: bytes made once (jsonify's own), not per request.
    return current_app.response_class(_STORED, status=201, mimetype="application/json")


@bp.post("/measures")
@require_scope("measure:write")
def post_measures():
    token = current_token()
    body = _json_body(array_items=MAX_BATCH)
    try:
        result = record_measures(body, org=token.org, app=token.app)
    except DaccError as exc:
        _refused(body, exc)
        raise
    count_accepted(body)
    return jsonify({"ok": True, "inserted": result.inserted, "duplicates": result.duplicates}), 201


def _json_body(max_bytes: int | None = None, *, array_items: int | None = None):
    """The parsed JSON body; 415 unless declared JSON, 413 past the limit, 400 if malformed.

    A bulk body is parsed item by item (`array_items`): memory stays bounded."""
    if not request.is_json:
        raise UnsupportedMediaType("Content-Type: expected application/json")
    raw = read_body(max_bytes or current_app.config["MAX_CONTENT_LENGTH"])
    if array_items is not None:
        return parse_json_array(raw, max_items=array_items)
    return parse_json(raw)


def _refused(body, error: DaccError) -> None:
    refused = refused_measures(body, error)
    log_refused_measures(refused)
    count_refused([(name, fault) for name, fault, _ in refused])
