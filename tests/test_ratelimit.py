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
