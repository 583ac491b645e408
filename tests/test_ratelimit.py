"""The optional per-token rate limit: 429 JSON with Retry-After, per token, not /status."""

import pytest

from dacc import create_app
from dacc.config import Config, ConfigError, load_config


@pytest.fixture
def limited(session_app, database_url):
    app = create_app(Config(database_url=database_url, testing=True, source="tests", rate_limit="3/minute"))
    with session_app.app_context():  # tokens made in the shared test database
        yield app


def test_past_the_limit_a_token_gets_429_json_with_retry_after(limited, make_token):
    _, first = make_token("org")
    _, second = make_token("org")
    client = limited.test_client()
    statuses = [
        client.get("/whoami", headers={"Authorization": f"Bearer {first}"}).status_code for _ in range(3)
    ]
    assert statuses == [200, 200, 200]
    response = client.get("/whoami", headers={"Authorization": f"Bearer {first}"})
    assert response.status_code == 429
    assert response.is_json and "error" in response.get_json()
    assert 0 < int(response.headers["Retry-After"]) <= 60
    # Counted per token: another token is not limited; /status never is.
    assert client.get("/whoami", headers={"Authorization": f"Bearer {second}"}).status_code == 200
    assert [client.get("/status").status_code for _ in range(5)] == [200] * 5


def test_without_the_setting_nothing_is_limited(client, auth_header):
    headers = auth_header()
    assert {client.get("/whoami", headers=headers).status_code for _ in range(20)} == {200}


@pytest.mark.parametrize("value", ["lots", 5, "1000/fortnight"])
def test_a_malformed_rate_limit_is_a_config_error(tmp_path, value):
    (tmp_path / "config.yml").write_text(f"dacc: {{rate_limit: {value!r}}}\n")
    with pytest.raises(ConfigError, match="'dacc.rate_limit' must be a limit"):
        load_config(environ={}, cwd=tmp_path)


def test_rate_limit_is_read_from_the_config(tmp_path):
    (tmp_path / "config.yml").write_text(
        'dacc: {rate_limit: "1000/minute", rate_limit_storage: "redis://h:6379/0"}\n'
    )
    config = load_config(environ={}, cwd=tmp_path)
    assert (config.rate_limit, config.rate_limit_storage) == ("1000/minute", "redis://h:6379/0")


def test_respelling_the_header_does_not_reset_a_token_s_count(limited, make_token):
    """The count is the token's, not its header's: case, extra spaces or a bad token
    in place of a good one never give a fresh allowance."""
    _, secret = make_token("org")
    client = limited.test_client()
    spellings = [f"Bearer {secret}", f"bearer {secret}", f"Bearer   {secret}", f"BEARER {secret}  "]
    statuses = [client.get("/whoami", headers={"Authorization": h}).status_code for h in spellings]
    assert statuses == [200, 200, 200, 429]


def test_unknown_tokens_are_counted_per_client_address(limited):
    """Guessing tokens, each guess a new header, still counts against the address."""
    client = limited.test_client()
    statuses = [
        client.get("/whoami", headers={"Authorization": f"Bearer dacc_{n:043d}"}).status_code
        for n in range(4)
    ]
    assert statuses == [401, 401, 401, 429]
    assert client.get("/whoami").status_code == 429  # the same address, no token


def test_each_app_keeps_its_own_limit(session_app, database_url, make_token):
    """Two apps in one process: each has its limit and its counters; making one does
    not change the other's."""
    _, secret = make_token("org")
    headers = {"Authorization": f"Bearer {secret}"}
    three = create_app(Config(database_url=database_url, testing=True, source="tests", rate_limit="3/minute"))
    five = create_app(Config(database_url=database_url, testing=True, source="tests", rate_limit="5/minute"))
    free = create_app(Config(database_url=database_url, testing=True, source="tests"))
    with session_app.app_context():
        assert [three.test_client().get("/whoami", headers=headers).status_code for _ in range(4)] == [
            200
        ] * 3 + [429]
        assert [five.test_client().get("/whoami", headers=headers).status_code for _ in range(6)] == [
            200
        ] * 5 + [429]
        assert {free.test_client().get("/whoami", headers=headers).status_code for _ in range(8)} == {200}
