"""Who a bearer token is: lets a client (or an admin) check a token works."""

from flask import Blueprint, jsonify

from dacc.auth import current_token

bp = Blueprint("whoami", __name__)


@bp.get("/whoami")
def whoami():
    token = current_token()
    return jsonify({"org": token.org, "scopes": sorted(token.scopes), "tokenId": token.id})
