"""The embedded PostgreSQL under a served process: restarted when it dies, left alone
when an admin stopped it on purpose (`flask embedded stop`)."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from dacc.embedded import STOPPED_MARKER, is_running
from dacc.serving import GUNICORN_OPTIONS


@pytest.fixture
def embedded_server(tmp_path, secret_watch):
    """gunicorn on the default embedded database of a fresh folder; (folder, port, env)."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DACC_") and k != "DATABASE_URL"}
    env["DACC_DATA_DIR"] = str(tmp_path / "pgdata")
    env["FLASK_APP"] = "dacc"
    log = open(tmp_path / "gunicorn.log", "wb")
    secret_watch.watch_output(tmp_path / "gunicorn.log")
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", *GUNICORN_OPTIONS, "dacc:create_app()"],
        env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        assert _wait_status(port, 200, 60, process), (tmp_path / "gunicorn.log").read_text()[-2000:]
        # Every worker past its start (a worker that loses its database while it
        # migrates fails to boot, and gunicorn stops).
        workers = int(GUNICORN_OPTIONS[GUNICORN_OPTIONS.index("--workers") + 1])
        deadline = time.monotonic() + 30
        while (tmp_path / "gunicorn.log").read_text().count("database: embedded") < workers:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        time.sleep(1.5)
        yield tmp_path, port, env
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        (tmp_path / "pgdata" / STOPPED_MARKER).unlink(missing_ok=True)
        if is_running(tmp_path / "pgdata"):
            import pgserver

            pgserver.get_server(tmp_path / "pgdata", cleanup_mode="stop").cleanup()


def _status(port):
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/status")
        return conn.getresponse().status
    except OSError:
        return None
    finally:
        conn.close()


def _wait_status(port, wanted, seconds, process=None):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and (process is None or process.poll() is None):
        if _status(port) == wanted:
            return True
        time.sleep(0.2)
    return False


def _flask(env, folder, *args):
    return subprocess.run(
        [sys.executable, "-m", "flask", *args],
        env=env,
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _postmaster(folder):
    from pgserver.utils import PostmasterInfo

    return PostmasterInfo.read_from_pgdata((folder / "pgdata").resolve())


def test_the_server_restarts_its_embedded_postgresql_when_it_dies(embedded_server):
    folder, port, _ = embedded_server
    old_pid = _postmaster(folder).pid
    os.kill(old_pid, signal.SIGKILL)  # crash: no clean shutdown
    deadline = time.monotonic() + 10
    while is_running(folder / "pgdata") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _status(port) == 503
    assert _wait_status(port, 200, 30)
    assert _postmaster(folder).pid != old_pid
    assert "is not running: restarting it" in (folder / "gunicorn.log").read_text()


def test_a_database_stopped_on_purpose_stays_stopped_until_started(embedded_server):
    folder, port, env = embedded_server
    result = _flask(env, folder, "embedded", "stop")
    assert result.returncode == 0, result.stderr
    assert "stopped" in result.stdout
    assert not is_running(folder / "pgdata")

    # Neither an unrelated command nor the server's own requests start it again.
    result = _flask(env, folder, "token", "get", "org")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    for _ in range(3):
        assert _status(port) == 503
    time.sleep(3)  # a restart, had one been tried at the first 503, would be done
    assert _status(port) == 503
    assert not is_running(folder / "pgdata")
    result = _flask(env, folder, "embedded", "status")
    assert "not running (stopped on purpose" in result.stdout

    result = _flask(env, folder, "embedded", "start")
    assert result.returncode == 0, result.stderr
    assert is_running(folder / "pgdata")
    assert _wait_status(port, 200, 15)


@pytest.fixture
def fresh_instance(tmp_path):
    """(folder, env) of `flask` commands on the embedded default of a folder never used;
    stops the embedded PostgreSQL a command started there."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DACC_") and k != "DATABASE_URL"}
    env["DACC_DATA_DIR"] = str(tmp_path / "pgdata")
    env["FLASK_APP"] = "dacc"
    env["DACC_CONFIG"] = str(tmp_path / "config.yml")
    (tmp_path / "config.yml").write_text("logging: {logger_criticity: DEBUG}\n")
    try:
        yield tmp_path, env
    finally:
        if is_running(tmp_path / "pgdata"):
            import pgserver

            pgserver.get_server(tmp_path / "pgdata", cleanup_mode="stop").cleanup()


@pytest.mark.parametrize(
    "args", [("--help",), ("token", "--help"), ("db", "--help"), ("--version",), ("embedded", "status")]
)
def test_commands_that_need_no_database_start_none(fresh_instance, args):
    folder, env = fresh_instance
    result = _flask(env, folder, *args)
    assert result.returncode == 0, result.stderr
    # Nothing written: no data folder, no contributor secret (made at its first use).
    assert [p.name for p in folder.iterdir()] == ["config.yml"]
    # Logging at debug: not even a debug line about a database.
    assert "database" not in result.stderr
    assert "migrating" not in result.stderr
    if args == ("embedded", "status"):
        assert result.stdout.strip() == f"embedded PostgreSQL in {folder / 'pgdata'}: not running"


def test_a_command_that_needs_the_database_starts_it_on_first_use(fresh_instance):
    folder, env = fresh_instance
    helped = _flask(env, folder, "--help")
    assert helped.returncode == 0 and "token" in helped.stdout
    # The same program, the same folder: the help started no server (no data folder,
    # nothing running there) and migrated nothing (at debug, not a line about either).
    assert not (folder / "pgdata").exists()
    assert not is_running(folder / "pgdata")
    assert "database" not in helped.stderr and "migrating" not in helped.stderr
    got = _flask(env, folder, "token", "get", "nobody")
    assert got.returncode == 1
    assert got.stderr.strip().splitlines()[-1] == "Error: no token for org 'nobody'"
    assert is_running(folder / "pgdata")
    assert "migrating the database to" in got.stderr
    # The next command joins the running, migrated server.
    created = _flask(env, folder, "token", "create", "org-a", "--scope", "aggregate:read")
    assert created.returncode == 0, created.stderr
    assert "migrating" not in created.stderr
    listed = _flask(env, folder, "token", "get", "org-a")
    assert listed.returncode == 0, listed.stderr
    (row,) = listed.stdout.splitlines()[1:]
    assert row.split()[0] == "1" and row.split()[3] == "aggregate:read"
