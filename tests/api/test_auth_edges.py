"""Bearer authentication at its edges, on every authenticated endpoint of the url_map.

Each hostile or odd Authorization header gets 401 (no usable token) or 403 (a token
that may not do this) with the same JSON shape, never a 5xx; the accepted spellings
(scheme in any case, several spaces before the token) authenticate.
"""

import base64
import json
import statistics
import time

import pytest
import sqlalchemy as sa

from dacc.db import db
from dacc.models import RawMeasure
from dacc.tokens import delete_org_tokens, hash_secret, revoke_token

PUBLIC = {"/status", "/openapi.json", "/api/doc", "/api/doc/<filename>", "/static/<path:filename>"}
"""Rules any client may call without a token; every other rule must answer 401 without one."""
AUTH_FREE_METHODS = {"OPTIONS", "HEAD"}
"""OPTIONS is answered by Flask itself (the Allow header, no data); HEAD runs the GET view."""
MEASURE = {
    "measureName": "m",
    "value": 1,
    "startDate": "2024-01-01",
    "createdBy": "app",
    "group1": {"g1": "a"},
}
BODIES = {
    "/measure": MEASURE,
    "/measures": [MEASURE],
    "/aggregate": {"measureName": "m", "startDate": "2024-01-01", "endDate": "2024-02-01"},
}


def authenticated_endpoints(app) -> list[tuple[str, str, str | None]]:
    """(method, path, scope) of every rule but the public ones, read from the url_map;
    `scope` is what require_scope asks (None: any live token)."""
    endpoints = []
    for rule in app.url_map.iter_rules():
        if rule.rule in PUBLIC:
            continue
        assert not rule.arguments, f"{rule.rule}: give the test a value for its arguments"
        view = app.view_functions[rule.endpoint]
        for method in sorted(rule.methods - AUTH_FREE_METHODS):
            endpoints.append((method, rule.rule, getattr(view, "required_scope", None)))
    return endpoints


@pytest.fixture
def endpoints(app):
    found = authenticated_endpoints(app)
    # The ones this suite knows of; a new route is covered by every test below at once.
    assert {path for _, path, _ in found} >= {"/whoami", "/measure", "/measures", "/aggregate", "/metrics"}
    return found


@pytest.fixture
def setup(make_definition):
    make_definition("m", writers=["org"], created_by=None)


def call(client, method, path, headers):
    return client.open(path, method=method, json=BODIES.get(path), headers=headers)


def assert_refused(response, status, fault):
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.is_json
    assert set(response.get_json()) == {"error"}
    assert fault in response.get_json()["error"]
    if status == 401:
        assert response.headers["WWW-Authenticate"] == "Bearer"


def test_every_route_but_the_public_ones_needs_a_token(app, client, endpoints):
    for method, path, _ in endpoints:
        assert_refused(call(client, method, path, {}), 401, "missing Authorization header")
    for path in ("/status", "/openapi.json", "/api/doc"):
        assert client.get(path).status_code == 200


def _headers_for(secret):
    return {
        "empty": ("", "missing Authorization header"),
        "scheme alone": ("Bearer", "malformed Authorization header"),
        "scheme and a space": ("Bearer ", "malformed Authorization header"),
        "Basic with the secret": (
            "Basic " + base64.b64encode(f"org:{secret}".encode()).decode(),
            "malformed Authorization header",
        ),
        "Basic, the raw secret": (f"Basic {secret}", "malformed Authorization header"),
        "Token scheme": (f"Token {secret}", "malformed Authorization header"),
        "no scheme": (secret, "malformed Authorization header"),
        "tab for the space": (f"Bearer\t{secret}", "malformed Authorization header"),
        "a second word": (f"Bearer {secret} extra", "malformed bearer token"),
        "10 kB token": ("Bearer " + "A" * 10_240, "malformed bearer token"),
        "10 kB after a real secret": (f"Bearer {secret}" + "A" * 10_240, "malformed bearer token"),
        "non-ASCII": ("Bearer dacc_é" + secret[6:], "malformed bearer token"),
        "NUL after the secret": (f"Bearer {secret}\x00", "malformed bearer token"),
        "NUL inside": (f"Bearer {secret[:10]}\x00{secret[11:]}", "malformed bearer token"),
        # What a WSGI server makes of two Authorization headers (joined by a comma).
        "twice, joined": (f"Bearer {secret}, Bearer {secret}", "malformed bearer token"),
        "twice, joined tightly": (f"Bearer {secret},Bearer {secret}", "malformed bearer token"),
        "one letter off": (
            f"Bearer {secret[:-1]}{'B' if secret[-1] != 'B' else 'C'}",
            "unknown bearer token",
        ),
    }


@pytest.mark.parametrize("case", list(_headers_for("dacc_" + "x" * 43)))
def test_a_bad_authorization_header_is_401_json_on_every_endpoint(client, make_token, endpoints, setup, case):
    _, secret = make_token("org")
    header, fault = _headers_for(secret)[case]
    for method, path, _ in endpoints:
        assert_refused(call(client, method, path, {"Authorization": header}), 401, fault)
    assert db.session.scalar(sa.select(sa.func.count()).select_from(RawMeasure)) == 0


def test_two_authorization_headers_are_401(client, make_token, endpoints, setup):
    _, secret = make_token("org")
    headers = [("Authorization", f"Bearer {secret}"), ("Authorization", f"Bearer {secret}")]
    for method, path, _ in endpoints:
        assert_refused(call(client, method, path, headers), 401, "malformed bearer token")


@pytest.mark.parametrize(
    "spelling", ["Bearer {}", "bearer {}", "BEARER {}", "bEaReR {}", "Bearer   {}", "Bearer {}   "]
)
def test_the_scheme_is_case_insensitive_and_spaces_may_repeat(client, make_token, endpoints, setup, spelling):
    """RFC 7235: the scheme is case-insensitive and `1*SP` separates it from the token."""
    _, secret = make_token("org")
    for method, path, _ in endpoints:
        canonical = call(client, method, path, {"Authorization": f"Bearer {secret}"})
        response = call(client, method, path, {"Authorization": spelling.format(secret)})
        assert response.status_code == canonical.status_code
        assert response.status_code not in (401, 403, 500), (method, path, response.get_json())


@pytest.mark.parametrize("how", ["revoked", "deleted", "expired"])
def test_a_dead_token_is_401_on_every_endpoint(client, make_token, endpoints, setup, how):
    token, secret = make_token("org", expires_in_days=1 if how == "expired" else None)
    headers = {"Authorization": f"Bearer {secret}"}
    assert client.get("/whoami", headers=headers).status_code == 200  # now cached in this process
    if how == "revoked":
        revoke_token(token.id)
        fault = "revoked"
    elif how == "deleted":
        delete_org_tokens("org")
        fault = "unknown bearer token"
    else:
        db.session.execute(sa.text("UPDATE api_token SET expires_at = now() - interval '1 second'"))
        db.session.commit()
        client.application.extensions.pop("dacc_token_cache", None)
        fault = "expired"
    for method, path, _ in endpoints:
        assert_refused(call(client, method, path, headers), 401, fault)
    assert db.session.scalar(sa.select(sa.func.count()).select_from(RawMeasure)) == 0


def test_a_token_without_the_scope_is_403_on_every_endpoint_that_needs_one(
    client, make_token, endpoints, setup
):
    from dacc.tokens import SCOPES

    scoped = [(m, p, s) for m, p, s in endpoints if s is not None]
    assert {s for _, _, s in scoped} == set(SCOPES)
    for method, path, scope in scoped:
        _, secret = make_token("org", scopes=[s for s in SCOPES if s != scope])
        response = call(client, method, path, {"Authorization": f"Bearer {secret}"})
        assert_refused(response, 403, f"lacks the '{scope}' scope")
    assert db.session.scalar(sa.select(sa.func.count()).select_from(RawMeasure)) == 0


@pytest.mark.parametrize(
    "method, path, fault",
    [
        ("POST", "/measure", "may not send measures of 'm'"),
        ("POST", "/measures", "may not send measures of 'm'"),
        ("GET", "/aggregate", "You cannot access results for this measure: m"),
        ("POST", "/aggregate", "You cannot access results for this measure: m"),
    ],
)
def test_a_token_of_another_org_is_403_where_grants_apply(client, make_token, setup, method, path, fault):
    from dacc.tokens import SCOPES

    _, secret = make_token("intruder", scopes=SCOPES)
    response = call(client, method, path, {"Authorization": f"Bearer {secret}"})
    assert_refused(response, 403, fault)
    assert db.session.scalar(sa.select(sa.func.count()).select_from(RawMeasure)) == 0


def test_the_lookup_binds_the_secret_s_hash_never_the_secret(app, client, make_token):
    """The database is asked for the SHA-256 of the presented secret (an index lookup on
    a hash: how close a guess is to a real secret changes nothing it does); the secret
    itself never reaches it."""
    _, secret = make_token("org")
    sent = []

    def record(conn, cursor, statement, parameters, context, executemany):
        sent.append((statement, repr(parameters)))

    sa.event.listen(db.engine, "before_cursor_execute", record)
    try:
        for guess in (secret, secret[:-1] + ("B" if secret[-1] != "B" else "C")):
            app.extensions.pop("dacc_token_cache", None)
            client.get("/whoami", headers={"Authorization": f"Bearer {guess}"})
    finally:
        sa.event.remove(db.engine, "before_cursor_execute", record)
    lookups = [p for s, p in sent if "api_token" in s and s.lstrip().upper().startswith("SELECT")]
    # One SELECT per check (no reload of the row after last_used_at's commit), by hash.
    assert len(lookups) == 2
    assert hash_secret(secret) in lookups[0]
    for _, parameters in sent:
        assert secret not in parameters and secret[5:] not in parameters


def test_a_near_miss_of_a_real_secret_takes_as_long_as_a_random_guess(client, make_token):
    """Timing tells nothing of which secrets exist: a guess sharing all but its last
    character with a live token costs what a random guess costs. The two alternate,
    request by request, so that load on the (shared) machine hits both alike; the
    bound is loose, the structural guarantee is the test above."""
    _, secret = make_token("org")
    guesses = {
        "near": f"Bearer {secret[:-1]}{'B' if secret[-1] != 'B' else 'C'}",
        "far": "Bearer dacc_" + "Q" * 43,
    }
    times = {"near": [], "far": []}
    for _ in range(300):
        for kind, header in guesses.items():
            started = time.perf_counter()
            response = client.get("/whoami", headers={"Authorization": header})
            times[kind].append(time.perf_counter() - started)
            assert response.status_code == 401
    ratio = statistics.median(times["near"]) / statistics.median(times["far"])
    assert 0.67 < ratio < 1.5, ratio


@pytest.mark.parametrize(
    "name, header, status",
    [
        ("invalid UTF-8", b"Authorization: Bearer \xff\xfe\xc3(", 401),
        ("latin-1 byte", "Authorization: Bearer dacc_é".encode("latin-1"), 401),
        ("UTF-8 non-ASCII", "Authorization: Bearer dacc_é".encode(), 401),
        # The server refuses control bytes in a header itself (JSON, see dacc.serving).
        ("NUL", b"Authorization: Bearer {secret}\x00", 400),
        ("control bytes", b"Authorization: Bearer \x01\x02", 400),
        # Past gunicorn's 8190-byte header field limit.
        ("10 kB", b"Authorization: Bearer " + b"A" * 10_240, 431),
        ("7 kB", b"Authorization: Bearer " + b"A" * 7_000, 401),
        ("two headers", b"Authorization: Bearer {secret}\r\nAuthorization: Bearer {secret}", 401),
        ("lower case", b"authorization: bearer {secret}", 200),
    ],
)
def test_raw_header_bytes_on_the_served_app_get_json_4xx(served, name, header, status):
    head = header.replace(b"{secret}", served.secret.encode())
    answer = served.raw(b"GET /whoami HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + head + b"\r\n\r\n")
    status_line, _, rest = answer.partition(b"\r\n")
    assert int(status_line.split()[1]) == status, answer[:300]
    headers, _, body = rest.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in headers.lower()
    parsed = json.loads(body)
    assert ("error" in parsed) == (status != 200), parsed
