"""Request and refused-measure log lines, syslog at logger_criticity, quiet CLI start."""

import logging
import os
import socket
import subprocess
import sys

import pytest

from dacc.config import Config, load_config
from dacc.logs import NOTICE, configure_logging, printable

MEASURE = {"measureName": "m", "value": 4242.42, "startDate": "2022-01-01", "createdBy": "app"}


@pytest.fixture
def records(caplog):
    caplog.set_level(logging.INFO, logger="dacc")
    return caplog


def _request_lines(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "dacc.request"]


def test_one_info_line_per_request_with_token_id_and_org_never_the_secret(
    client, make_definition, make_token, records
):
    make_definition("m", group1_key=None)
    token, secret = make_token("acme", scopes=["measure:write"])
    response = client.post("/measure", json=MEASURE, headers={"Authorization": f"Bearer {secret}"})
    assert response.status_code == 201
    lines = _request_lines(records)
    assert len(lines) == 1
    method, path, status, duration, token_part, org_part = lines[0].split(" ")
    assert (method, path, status) == ("POST", "/measure", "201")
    assert duration.endswith("ms") and float(duration[:-2]) >= 0
    assert (token_part, org_part) == (f"token={token.id}", "org=acme")
    text = "\n".join(r.getMessage() for r in records.records)
    assert secret not in text and "4242.42" not in text


def test_an_anonymous_request_and_a_404_are_logged_too(client, records):
    assert client.get("/status").status_code == 200
    assert client.get("/nowhere%0Aforged%20line").status_code == 404
    assert _request_lines(records) == [
        records.records[-2].getMessage(),
        records.records[-1].getMessage(),
    ]
    first, second = _request_lines(records)
    assert first.startswith("GET /status 200 ") and first.endswith(" token=- org=-")
    # A client's newline cannot forge a second log line.
    assert second.startswith("GET /nowhere\\nforged line 404 ")


def test_a_refused_measure_logs_its_name_error_and_token_not_its_value(
    client, make_definition, make_token, records
):
    make_definition("m", group1_key=None)
    token, secret = make_token("acme", scopes=["measure:write"])
    body = {**MEASURE, "value": "secret-ish 987"}
    response = client.post("/measure", json=body, headers={"Authorization": f"Bearer {secret}"})
    assert response.status_code == 400
    refused = [line for line in _request_lines(records) if line.startswith("measure refused")]
    assert refused == [f"measure refused: measure=m error=value: expected a finite number token={token.id}"]
    assert "987" not in "\n".join(_request_lines(records))


def test_a_refused_bulk_logs_one_line_per_faulty_item(client, make_definition, auth_header, records):
    make_definition("m", group1_key=None)
    items = [MEASURE, {**MEASURE, "measureName": "nope"}, {**MEASURE, "startDate": "x"}]
    response = client.post("/measures", json=items, headers=auth_header())
    assert response.status_code == 400
    refused = [line for line in _request_lines(records) if line.startswith("measure refused")]
    assert len(refused) == 2
    assert refused[0].startswith("measure refused: measure=nope error=[1] measureName: ")
    assert refused[1].startswith("measure refused: measure=m error=[2] startDate: ")


def test_printable_escapes_control_characters_and_cuts():
    assert printable("a\nb\x1b") == "a\\nb\\x1b"
    assert printable("x" * 300) == "x" * 200


@pytest.fixture
def syslog_server():
    """A UDP socket on a free loopback port standing in for syslogd."""
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.settimeout(5)
    yield server
    server.close()


@pytest.fixture
def restore_dacc_logger():
    logger = logging.getLogger("dacc")
    saved = (logger.level, logger.propagate, list(logger.handlers))
    yield
    configure_logging(Config(source="tests"))
    logger.setLevel(saved[0])
    logger.propagate = saved[1]
    for handler in saved[2]:
        if handler not in logger.handlers:
            logger.addHandler(handler)


@pytest.mark.parametrize(
    "criticity, sent, received",
    [
        ("notice", ["info", "notice", "error"], ["notice", "err"]),
        ("debug", ["debug", "warning"], ["debug", "warning"]),
        ("critical", ["error", "critical"], ["crit"]),
    ],
)
def test_logging_enable_sends_to_syslog_at_or_above_logger_criticity(
    tmp_path, syslog_server, restore_dacc_logger, criticity, sent, received
):
    port = syslog_server.getsockname()[1]
    (tmp_path / "config.yml").write_text(
        f"logging: {{enable: true, logger_criticity: {criticity}, syslog_address: '127.0.0.1:{port}'}}"
    )
    config = load_config({}, tmp_path)
    assert config.log_to_syslog and config.syslog_address == f"127.0.0.1:{port}"
    configure_logging(config)
    levels = {
        "debug": logging.DEBUG,
        "info": logging.INFO,
        "notice": NOTICE,
        "warning": logging.WARNING,
        "error": logging.ERROR,
        "critical": logging.CRITICAL,
    }
    for name in sent:
        logging.getLogger("dacc.test").log(levels[name], "hello %s", name)
    logging.getLogger("dacc.test").critical("end")
    severities = {
        "emerg": 0,
        "alert": 1,
        "crit": 2,
        "err": 3,
        "warning": 4,
        "notice": 5,
        "info": 6,
        "debug": 7,
    }
    got = []
    while True:
        data = syslog_server.recv(4096).decode()
        if data.endswith("end\x00"):
            break
        priority = int(data[1 : data.index(">")])
        assert priority // 8 == 1  # facility "user"
        assert "dacc[" in data and "hello" in data
        got.append(priority % 8)
    assert got == [severities[name] for name in received]


def test_without_logging_enable_records_go_to_stderr_at_the_level(tmp_path):
    (tmp_path / "config.yml").write_text("logging: {enable: false, logger_criticity: warning}")
    config = load_config({}, tmp_path)
    assert not config.log_to_syslog and config.log_level == "WARNING"


def _run(args, env, cwd):
    return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=120)


def test_a_cli_command_logs_its_database_line_at_debug_only(database_url, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DACC_CONFIG",)}
    env["DATABASE_URL"] = database_url
    result = _run([sys.executable, "-m", "flask", "--app", "dacc", "--help"], env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "database:" not in result.stderr
    (tmp_path / "config.yml").write_text("logging: {logger_criticity: debug}")
    result = _run([sys.executable, "-m", "flask", "--app", "dacc", "--help"], env, tmp_path)
    assert "database: postgresql+psycopg2://" in result.stderr


def test_a_config_error_under_gunicorn_is_one_line_and_a_clean_exit(tmp_path):
    path = tmp_path / "broken.yml"
    path.write_text("database: {default: {host: h}}")
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env["DACC_CONFIG"] = str(path)
    gunicorn = os.path.join(os.path.dirname(sys.executable), "gunicorn")
    result = _run(
        [gunicorn, "--no-control-socket", "-w", "1", "-b", "127.0.0.1:0", "dacc:create_app()"],
        env,
        tmp_path,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert errors == [f"Error: {path}: missing key 'database.default.dbname'"]
