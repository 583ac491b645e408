"""Health of the service."""

from flask import Blueprint, jsonify

from dacc import __version__
from dacc.deadlines import STATUS_SECONDS, start_request_deadline
from dacc.status import check_database

bp = Blueprint("status", __name__)


@bp.get("/status")
def status():
    start_request_deadline(STATUS_SECONDS)
    db_status = check_database()
    ok = db_status["status"] == "ok"
    body = {"db": db_status, "global_status": "ok" if ok else "ko", "version": __version__}
    return jsonify(body), 200 if ok else 503
