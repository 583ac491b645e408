"""Measure ingestion endpoints (filled in by the ingestion work)."""

from flask import Blueprint

bp = Blueprint("measures", __name__)
