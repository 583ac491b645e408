"""The API's description: GET /openapi.json, and Swagger UI at /api/doc from local assets."""

import functools
from pathlib import Path

import yaml
from flask import Blueprint, current_app, jsonify, send_from_directory
from swagger_ui_bundle import swagger_ui_path

from dacc import __version__
from dacc.errors import NotFound

bp = Blueprint("docs", __name__)

DOCUMENT = Path(__file__).resolve().parent.parent / "openapi.yml"
ASSETS = frozenset(
    {"swagger-ui.css", "swagger-ui-bundle.js", "swagger-ui-standalone-preset.js", "favicon-32x32.png"}
)
"""The files of the swagger-ui-bundle package that the page loads: no CDN, no internet."""

# Relative links: the page works behind a reverse proxy that adds a path prefix.
_PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>DACC API</title>
  <link rel="stylesheet" href="doc/swagger-ui.css">
  <link rel="icon" type="image/png" href="doc/favicon-32x32.png">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="doc/swagger-ui-bundle.js"></script>
  <script src="doc/swagger-ui-standalone-preset.js"></script>
  <script>
    window.ui = SwaggerUIBundle({
      url: "../openapi.json",
      dom_id: "#swagger-ui",
      presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
      layout: "StandaloneLayout",
    });
  </script>
</body>
</html>
"""


@functools.cache
def openapi_document() -> dict:
    """dacc/openapi.yml, with the version of this code."""
    document = yaml.safe_load(DOCUMENT.read_text(encoding="utf-8"))
    document["info"]["version"] = __version__
    return document


@bp.get("/openapi.json")
def openapi():
    return jsonify(openapi_document())


@bp.get("/api/doc")
def api_doc():
    return current_app.response_class(_PAGE, mimetype="text/html")


@bp.get("/api/doc/<filename>")
def api_doc_asset(filename: str):
    if filename not in ASSETS:
        raise NotFound(f"no such asset: {filename[:100]}")
    return send_from_directory(str(swagger_ui_path), filename, max_age=24 * 3600)
