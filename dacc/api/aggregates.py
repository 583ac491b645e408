"""Aggregate restitution endpoints (filled in by the restitution work)."""

from flask import Blueprint

bp = Blueprint("aggregates", __name__)
