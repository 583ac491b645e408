"""Config lookup order, DATABASE_URL spellings and one-line errors."""

import os
import subprocess
import sys

import pytest
import sqlalchemy as sa

from dacc.config import ConfigError, load_config, normalise_database_url, redact_url

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

GOOD = """
database:
  default: {host: db.example, port: 5433, dbname: dacc, user: dacc, password: "p@ss"}
  testing: {host: localhost, dbname: dacc_test, user: test}
logging: {enable: true, logger_criticity: warning}
"""


def test_no_file_and_no_url_means_embedded_in_the_project_instance_folder(tmp_path):
    config = load_config({}, tmp_path)
    assert config.embedded
    # From the checkout, whatever the current directory: a `flask` command run from
    # another folder joins the same database instead of starting an empty one there.
    assert config.data_dir == os.path.join(PROJECT, "instance", "pgdata")
    assert load_config({}, tmp_path / "elsewhere").data_dir == config.data_dir
    assert config.source == "defaults"


def test_dacc_data_dir_overrides_the_folder(tmp_path):
    config = load_config({"DACC_DATA_DIR": "/srv/pg"}, tmp_path)
    assert config.data_dir == "/srv/pg"
    assert load_config({"DACC_DATA_DIR": "pg"}, tmp_path).data_dir == str(tmp_path / "pg")


def test_a_relative_data_dir_in_a_file_is_relative_to_that_file(tmp_path):
    path = tmp_path / "etc" / "dacc.yml"
    path.parent.mkdir()
    path.write_text("dacc: {data_dir: pgdata}")
    config = load_config({"DACC_CONFIG": str(path)}, tmp_path / "somewhere")
    assert config.data_dir == str(tmp_path / "etc" / "pgdata")


@pytest.mark.parametrize("password", ["p@ss", "a/b:c@d", "x%41y", "sp ace"])
def test_passwords_with_url_characters_survive(tmp_path, password):
    (tmp_path / "config.yml").write_text(yaml_database(host="db.example", password=password))
    url = sa.engine.make_url(load_config({}, tmp_path).database_url)
    assert (url.username, url.password, url.host, url.port, url.database) == (
        "dacc",
        password,
        "db.example",
        5432,
        "dacc",
    )


def test_a_socket_directory_host_goes_to_libpq_as_host(tmp_path):
    (tmp_path / "config.yml").write_text(yaml_database(host="/var/run/postgresql", port=5433))
    engine = sa.create_engine(load_config({}, tmp_path).database_url)
    _, params = engine.dialect.create_connect_args(engine.url)
    assert params == {
        "dbname": "dacc",
        "user": "dacc",
        "password": "pw",
        "host": "/var/run/postgresql",
        "port": "5433",
    }


def test_a_socket_directory_host_connects(database_url, tmp_path):
    """The tests' own PostgreSQL listens on a unix socket: reach it through the file."""
    served = sa.engine.make_url(database_url)
    socket_dir = served.query.get("host") or served.host
    if not str(socket_dir).startswith("/"):
        pytest.skip("the test database is not on a unix socket")
    (tmp_path / "config.yml").write_text(
        yaml_database(
            host=socket_dir,
            port=served.port or 5432,
            user=served.username,
            password=served.password or "",
            dbname=served.database,
        )
    )
    engine = sa.create_engine(load_config({}, tmp_path).database_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT current_database()")).scalar() == served.database
    finally:
        engine.dispose()


def yaml_database(*, host, port=5432, user="dacc", password="pw", dbname="dacc"):
    import json

    settings = {"host": host, "port": port, "dbname": dbname, "user": user}
    if password:
        settings["password"] = password
    return json.dumps({"database": {"default": settings}})


def test_config_file_in_cwd_builds_a_psycopg2_url(tmp_path):
    (tmp_path / "config.yml").write_text(GOOD)
    config = load_config({}, tmp_path)
    assert config.database_url == "postgresql+psycopg2://dacc:p%40ss@db.example:5433/dacc"
    assert config.log_level == "WARNING"


def test_dacc_env_selects_the_testing_section(tmp_path):
    (tmp_path / "config.yml").write_text(GOOD)
    config = load_config({"DACC_ENV": "testing"}, tmp_path)
    assert config.database_url == "postgresql+psycopg2://test@localhost:5432/dacc_test"


def test_dacc_config_wins_over_cwd(tmp_path):
    (tmp_path / "config.yml").write_text("database: 3")
    other = tmp_path / "other.yml"
    other.write_text(GOOD)
    assert load_config({"DACC_CONFIG": str(other)}, tmp_path).source == str(other)


@pytest.mark.parametrize(
    "url",
    ["postgres://u:p@h/d", "postgresql://u:p@h/d", "postgresql+psycopg2://u:p@h/d"],
)
def test_database_url_spellings_map_to_psycopg2(tmp_path, url):
    config = load_config({"DATABASE_URL": url}, tmp_path)
    assert config.database_url == "postgresql+psycopg2://u:p@h/d"


@pytest.mark.parametrize(
    "url, user, password, host, database",
    [
        ("postgresql://dacc:p@ss@db.example:5433/d", "dacc", "p@ss", "db.example", "d"),
        ("postgres://dacc:a@b:c@@db.example/d", "dacc", "a@b:c@", "db.example", "d"),
        ("postgresql://me@tenant:p@ss@h/d", "me@tenant", "p@ss", "h", "d"),
        ("postgresql://dacc:p%40s@s@h/d", "dacc", "p@s@s", "h", "d"),
        ("postgresql://dacc:p%40ss@h/d", "dacc", "p@ss", "h", "d"),
    ],
)
def test_database_url_with_a_raw_at_sign_is_split_at_the_last_one(
    tmp_path, url, user, password, host, database
):
    parsed = sa.engine.make_url(load_config({"DATABASE_URL": url}, tmp_path).database_url)
    assert (parsed.drivername, parsed.username, parsed.password, parsed.host, parsed.database) == (
        "postgresql+psycopg2",
        user,
        password,
        host,
        database,
    )


@pytest.mark.parametrize(
    "url", ["postgresql://dacc:se/cret@h/d", "postgresql://dacc:se?cret@h/d", "postgresql://dacc:se#cret@h/d"]
)
def test_database_url_with_a_raw_slash_or_question_mark_is_refused(tmp_path, url):
    with pytest.raises(ConfigError) as info:
        load_config({"DATABASE_URL": url}, tmp_path)
    assert info.value.message == (
        "DATABASE_URL: '@' after the host: a '/', '?' or '#' in the user or password must be"
        " percent-encoded (%2F, %3F, %23; '@' is %40)"
    )
    assert "cret" not in info.value.message


def test_a_password_with_a_raw_at_sign_connects(database_url):
    """On the tests' own server: the socket folder comes from the query, the password
    (ignored by its trust authentication) must not swallow it."""
    parsed = sa.engine.make_url(database_url)
    if parsed.host or "host" not in parsed.query:
        pytest.skip("the test database is not on a unix socket")
    raw = f"postgresql://{parsed.username}:p@ss@/{parsed.database}?host={parsed.query['host']}"
    engine = sa.create_engine(normalise_database_url(raw, "DATABASE_URL"))
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT current_database()")).scalar() == parsed.database
    finally:
        engine.dispose()


def test_database_url_overrides_the_file(tmp_path):
    (tmp_path / "config.yml").write_text(GOOD)
    config = load_config({"DATABASE_URL": "postgres://x@y/z"}, tmp_path)
    assert config.database_url == "postgresql+psycopg2://x@y/z"


@pytest.mark.parametrize(
    "text, fault",
    [
        ("database: [1, 2", "malformed YAML"),
        ("- a\n- b\n", "mapping at the top level"),
        ("database: {default: {host: h, dbname: d}}", "database.default.user"),
        ("database: {other: {}}", "database.default"),
        ("database: {default: {host: h, dbname: d, user: u, port: x}}", "port"),
        ("logging: {logger_criticity: loud}", "logging.logger_criticity"),
        ("logging: {syslog_address: 'nohost'}", "logging.syslog_address"),
        ("logging: {syslog_address: 'h:99999'}", "logging.syslog_address"),
        ("logging: {enable: maybe}", "logging.enable"),
        ("logging: {level: INFO}", "unknown key 'logging.level'"),
        ("databse: {}", "unknown key 'databse'"),
        ("dacc: {token_cache_second: 60}", "unknown key 'dacc.token_cache_second'"),
        ("dacc: {token_cache_seconds: true}", "dacc.token_cache_seconds"),
        ("dacc: {data_dir: null}", "dacc.data_dir"),
        ("database: {default: {host: h, dbname: d, user: u, port: true}}", "port"),
        ("database: {default: {host: h, dbname: d, user: u, pass: x}}", "database.default.pass"),
    ],
)
def test_bad_config_names_file_and_key(tmp_path, text, fault):
    path = tmp_path / "config.yml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config({}, tmp_path)
    assert str(path) in info.value.message
    assert fault in info.value.message


def test_missing_dacc_config_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="not a readable file"):
        load_config({"DACC_CONFIG": str(tmp_path / "nope.yml")}, tmp_path)


def test_unknown_url_scheme_is_refused():
    with pytest.raises(ConfigError, match="mysql"):
        normalise_database_url("mysql://a@b/c")


def test_redact_url_hides_the_password():
    assert redact_url("postgresql+psycopg2://u:secret@h/d") == "postgresql+psycopg2://u:***@h/d"


def test_redact_url_hides_a_password_in_the_query():
    redacted = redact_url("postgresql://u@h/d?sslmode=require&password=secret")
    assert redacted == "postgresql://u@h/d?sslmode=require&password=***"


def test_malformed_config_makes_the_cli_print_one_line_and_exit_1(tmp_path):
    path = tmp_path / "broken.yml"
    path.write_text("database: {default: {host: h}}")
    env = {**os.environ, "DACC_CONFIG": str(path)}
    env.pop("DATABASE_URL", None)
    result = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "dacc", "token", "get", "x"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [f"Error: {path}: missing key 'database.default.dbname'"]


def test_bench_endpoints_are_off_by_default_and_on_only_when_set(tmp_path):
    assert load_config({}, tmp_path).bench_endpoints is False
    (tmp_path / "config.yml").write_text("dacc: {bench_endpoints: true}")
    assert load_config({}, tmp_path).bench_endpoints is True


@pytest.mark.parametrize("value", ["'true'", "1", "[true]"])
def test_bench_endpoints_must_be_a_boolean(tmp_path, value):
    path = tmp_path / "config.yml"
    path.write_text(f"dacc: {{bench_endpoints: {value}}}")
    with pytest.raises(ConfigError) as info:
        load_config({}, tmp_path)
    assert info.value.message == f"{path}: 'dacc.bench_endpoints' must be true or false"


def test_aggregate_cache_seconds_is_read_and_bounded(tmp_path):
    path = tmp_path / "config.yml"
    path.write_text("dacc: {aggregate_cache_seconds: 0}")
    assert load_config({}, tmp_path).aggregate_cache_seconds == 0
    path.write_text("dacc: {aggregate_cache_seconds: 61}")
    with pytest.raises(ConfigError, match="dacc.aggregate_cache_seconds"):
        load_config({}, tmp_path)


MQTT = """
mqtt:
  host: broker.example
  port: 8883
  username: dacc
  password: from-file
  tls: {ca_certs: /etc/ssl/ca.pem}
  subscriptions:
    - {topic: "dacc/measures/#", org: energy}
    - {topic: "sensors/+/measures", org: sensors}
    - {topic: "sensors/+/other", org: sensors}
  batch_max_size: 200
  save_interval_ms: 250
  rejected_topic: dacc/rejected
"""


def test_mqtt_section_is_read_with_defaults_for_the_rest(tmp_path):
    (tmp_path / "config.yml").write_text(MQTT)
    mqtt = load_config({}, tmp_path).mqtt
    assert (mqtt.host, mqtt.port, mqtt.username, mqtt.password) == (
        "broker.example",
        8883,
        "dacc",
        "from-file",
    )
    assert mqtt.tls and mqtt.tls_ca_certs == "/etc/ssl/ca.pem"
    assert [(s.topic, s.org) for s in mqtt.subscriptions] == [
        ("dacc/measures/#", "energy"),
        ("sensors/+/measures", "sensors"),
        ("sensors/+/other", "sensors"),
    ]
    assert (mqtt.batch_max_size, mqtt.save_interval_ms, mqtt.rejected_topic) == (200, 250, "dacc/rejected")
    assert (mqtt.qos, mqtt.client_id) == (1, "dacc-ingest")
    assert "from-file" not in repr(mqtt)


def test_mqtt_password_from_the_environment_wins(tmp_path):
    (tmp_path / "config.yml").write_text(MQTT)
    assert load_config({"DACC_MQTT_PASSWORD": "from-env"}, tmp_path).mqtt.password == "from-env"


def test_no_mqtt_section_means_no_worker_config(tmp_path):
    assert load_config({}, tmp_path).mqtt is None


@pytest.mark.parametrize(
    "section, fault",
    [
        ("{subscriptions: [{topic: a, org: o}], hots: x}", "unknown key 'mqtt.hots'"),
        ("{host: x}", "'mqtt.subscriptions' must be a list"),
        (
            "{subscriptions: [{topic: 'a/#/b', org: o}]}",
            "'mqtt.subscriptions[0].topic' must be an MQTT topic filter",
        ),
        (
            "{subscriptions: [{topic: 'a+', org: o}]}",
            "'mqtt.subscriptions[0].topic' must be an MQTT topic filter",
        ),
        ("{subscriptions: [{topic: a}]}", "'mqtt.subscriptions[0].org' must be a non-empty string"),
        ("{subscriptions: [{topic: a, org: o, qos: 1}]}", "unknown key 'mqtt.subscriptions[0].qos'"),
        ("{subscriptions: [{topic: a, org: o}], qos: 0}", "'mqtt.qos' must be 1"),
        ("{subscriptions: [{topic: a, org: o}], qos: 2}", "'mqtt.qos' must be 1"),
        (
            "{subscriptions: [{topic: a, org: o}], batch_max_size: 0}",
            "'mqtt.batch_max_size' must be an integer",
        ),
        ("{subscriptions: [{topic: a, org: o}], tls: {cafile: x}}", "unknown key 'mqtt.tls.cafile'"),
        (
            "{subscriptions: [{topic: a, org: o}], rejected_topic: 'r/#'}",
            "'mqtt.rejected_topic' must be a topic",
        ),
        (
            "{subscriptions: [{topic: 'a/#', org: o}, {topic: 'a/b/+', org: p}]}",
            "'mqtt.subscriptions[1].topic' overlaps 'mqtt.subscriptions[0].topic'",
        ),
        (
            "{subscriptions: [{topic: 'a/+/c', org: o}, {topic: 'a', org: p}, {topic: 'a/#', org: q}]}",
            "'mqtt.subscriptions[2].topic' overlaps 'mqtt.subscriptions[0].topic'",
        ),
    ],
)
def test_bad_mqtt_section_names_the_key(tmp_path, section, fault):
    (tmp_path / "config.yml").write_text(f"mqtt: {section}\n")
    with pytest.raises(
        ConfigError,
        match=r"config\.yml: " + fault.replace("[", r"\[").replace("]", r"\]").replace("+", r"\+"),
    ):
        load_config({}, tmp_path)


def test_group_commit_is_on_by_default_and_read_from_the_dacc_section(tmp_path):
    config = load_config({}, tmp_path)
    assert (config.ingest_batch_ms, config.ingest_batch_max) == (2, 100)
    (tmp_path / "config.yml").write_text("dacc: {ingest_batch_ms: 0, ingest_batch_max: 1}")
    config = load_config({}, tmp_path)
    assert (config.ingest_batch_ms, config.ingest_batch_max) == (0, 1)


@pytest.mark.parametrize(
    "text, fault",
    [
        ("dacc: {ingest_batch_ms: -1}", "'dacc.ingest_batch_ms' must be an integer 0..1000"),
        ("dacc: {ingest_batch_ms: 1001}", "'dacc.ingest_batch_ms' must be an integer 0..1000"),
        ("dacc: {ingest_batch_ms: 2.5}", "'dacc.ingest_batch_ms' must be an integer 0..1000"),
        ("dacc: {ingest_batch_ms: true}", "'dacc.ingest_batch_ms' must be an integer 0..1000"),
        ("dacc: {ingest_batch_max: 0}", "'dacc.ingest_batch_max' must be an integer 1..10000"),
        ("dacc: {ingest_batch_max: 10001}", "'dacc.ingest_batch_max' must be an integer 1..10000"),
        ("dacc: {ingest_batch_size: 10}", "unknown key 'dacc.ingest_batch_size'"),
    ],
)
def test_bad_group_commit_settings_name_the_key(tmp_path, text, fault):
    path = tmp_path / "config.yml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config({}, tmp_path)
    assert info.value.message == f"{path}: {fault}"
