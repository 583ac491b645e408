"""/openapi.json matches the app's routes and the README's examples; Swagger UI is local;
schemathesis checks generated requests against the document."""

import json
import re
from pathlib import Path

import jsonschema_rs
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from dacc import __version__
from dacc.api.docs import ASSETS, openapi_document
from dacc.ratelimit import EXEMPT_PATHS as RATE_LIMIT_EXEMPT

README = Path(__file__).resolve().parents[2] / "README.md"
METHODS = {"get", "post", "put", "patch", "delete"}


def _validator(schema: dict):
    # The document is the root of the schema, so that its "#/components/..." refs resolve.
    return jsonschema_rs.validator_for({**schema, "components": openapi_document()["components"]})


def test_openapi_json_is_the_document_with_this_version(client):
    response = client.get("/openapi.json")
    assert response.status_code == 200
    body = response.get_json()
    assert body["openapi"].startswith("3.")
    assert body["info"]["version"] == __version__
    assert body == openapi_document()


def test_every_route_is_documented_and_every_documented_path_is_a_route(app):
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        routes |= {(path, m.lower()) for m in rule.methods - {"HEAD", "OPTIONS"}}
    documented = {
        (path, method)
        for path, item in openapi_document()["paths"].items()
        for method in item
        if method in METHODS
    }
    assert routes == documented


def test_every_operation_documents_its_errors():
    for path, item in openapi_document()["paths"].items():
        for method, operation in item.items():
            responses = operation["responses"]
            secured = operation.get("security", openapi_document()["security"]) != []
            if secured:
                assert "401" in responses, (path, method)
                assert "503" in responses, (path, method)
            if path not in RATE_LIMIT_EXEMPT:
                assert "429" in responses, (path, method)
            if "requestBody" in operation:
                assert "400" in responses, (path, method)
            for status, response in responses.items():
                if status.startswith(("4", "5")) and path != "/status":
                    ref = response["$ref"].rsplit("/", 1)[-1]
                    schema = openapi_document()["components"]["responses"][ref]
                    body = schema["content"]["application/json"]["schema"]
                    assert _validator(body).is_valid({"error": "x"}), (path, method, status)


def test_options_on_every_path_is_204_with_its_methods_and_no_body(client):
    for path, item in openapi_document()["paths"].items():
        response = client.open(re.sub(r"\{[^{}]+\}", "index.html", path), method="OPTIONS")
        assert response.status_code == 204, path
        assert response.get_data() == b"", path
        assert "Content-Type" not in response.headers, path
        methods = {method.upper() for method in item if method in METHODS}
        if "GET" in methods:
            methods.add("HEAD")
        assert set(response.headers["Allow"].split(", ")) == methods | {"OPTIONS"}, path
    response = client.open("/no-such-path", method="OPTIONS")
    assert response.status_code == 404 and "error" in response.get_json()


def _readme_requests() -> list:
    return [json.loads(block) for block in re.findall(r"```json\n(.*?)```", README.read_text(), re.S)]


def _readme_responses() -> list[tuple[str, object]]:
    """Each `STATUS {json}` of the README, with n and d placeholders made numbers."""
    found = []
    for status, text in re.findall(r"`(\d{3}) (\{[^`]*\})`", README.read_text()):
        text = re.sub(r":\s*[ndi]\b", ": 0", re.sub(r"\s*\n\s*", " ", text))
        found.append((status, json.loads(text)))
    return found


def _schemas(kind: str, status: str | None = None) -> list[dict]:
    document, schemas = openapi_document(), []
    for item in document["paths"].values():
        for method, operation in item.items():
            if method not in METHODS:
                continue
            if kind == "request":
                content = operation.get("requestBody", {}).get("content", {})
                if "application/json" in content:
                    schemas.append(content["application/json"]["schema"])
                    schema = content["application/json"]["schema"]
                    if schema.get("type") == "array":
                        schemas.append(schema["items"])
                continue
            response = operation["responses"].get(status)
            if response is None:
                continue
            if "$ref" in response:
                response = document["components"]["responses"][response["$ref"].rsplit("/", 1)[-1]]
            content = response.get("content", {})
            if "application/json" in content:
                schemas.append(content["application/json"]["schema"])
    return schemas


def test_readme_example_bodies_validate_against_the_document():
    requests = _readme_requests()
    assert requests, "the README shows a request body"
    for body in requests:
        assert any(_validator(s).is_valid(body) for s in _schemas("request")), body
    responses = _readme_responses()
    assert len(responses) >= 5
    for status, body in responses:
        schemas = _schemas("response", status)
        assert schemas, f"no documented {status} answer"
        assert any(_validator(s).is_valid(body) for s in schemas), (status, body)


def test_the_schemas_refuse_what_the_api_refuses():
    measure = _validator({"$ref": "#/components/schemas/Measure"})
    good = _readme_requests()[0]
    assert measure.is_valid(good)
    assert not measure.is_valid({k: v for k, v in good.items() if k != "startDate"})
    assert not measure.is_valid({**good, "measureId": "has space"})
    assert not measure.is_valid({**good, "group1": {"a": 1, "b": 2}})


def test_api_doc_is_swagger_ui_from_local_assets(client):
    response = client.get("/api/doc")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    page = response.get_data(as_text=True)
    assert "SwaggerUIBundle" in page and '"../openapi.json"' in page
    sources = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert sources and all(not s.startswith(("http:", "https:", "//")) for s in sources)
    for source in sources:
        asset = client.get("/api/" + source)
        assert asset.status_code == 200, source
        assert len(asset.get_data()) > 100
    assert {s.removeprefix("doc/") for s in sources} <= ASSETS


@pytest.mark.parametrize("name", ["index.html", "..%2Fsetup.cfg", "swagger-ui.js.map"])
def test_other_files_are_not_served(client, name):
    response = client.get(f"/api/doc/{name}")
    assert response.status_code == 404
    assert "error" in response.get_json()


# --- schemathesis: generated requests, answers checked against the document ---------


# Loaded from the same document the app serves (test_openapi_json_is_the_document_...);
# the requests go to the session's app through WSGI.
schema = schemathesis.openapi.from_dict(openapi_document())


@pytest.fixture
def bearer(make_token, make_definition):
    """A token with every scope, and one definition for the generated measures to hit."""
    make_definition("m", group1_key=None)
    _, secret = make_token("org", scopes=["measure:write", "aggregate:read", "metrics:read"])
    return {"Authorization": f"Bearer {secret}"}


@schema.parametrize()
@settings(
    max_examples=15,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_generated_requests_get_documented_answers(case, bearer, app):
    # Every request (the checks' own probes too, e.g. the one without a token) goes to
    # this app through WSGI.
    case.operation.schema.app = app
    # Not "schema-valid data is accepted": a measure's validity depends on the stored
    # definitions (its name, its group keys), which no schema can say. Every other
    # check runs: no 5xx, documented statuses, content types and bodies, invalid data
    # refused, 401 without the token.
    case.call_and_validate(app=app, headers=bearer, excluded_checks=[positive_data_acceptance])
