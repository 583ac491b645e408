"""The rate limit shared through Redis: one count across app instances, and a Redis
outage that neither fails requests nor stops limiting (each process counts alone)."""

import logging
import shutil
import signal
import socket
import subprocess
import time

import pytest

from dacc import create_app
from dacc.config import Config

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


class Redis:
    """redis-server on a free loopback port, nothing persisted, stopped at the end."""

    def __init__(self, folder):
        listener = socket.create_server(("127.0.0.1", 0))
        self.port = listener.getsockname()[1]
        listener.close()
        self.folder = folder
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process = None
        self.start()

    def start(self):
        command = [REDIS_SERVER, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
                   "--appendonly", "no", "--dir", str(self.folder)]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            assert self.process.poll() is None, "redis-server exited"
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("redis-server did not answer PING in time")

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


@pytest.fixture
def redis(tmp_path):
    if not shutil.which(REDIS_SERVER):
        pytest.skip("redis-server is not installed (apt-get install redis-server; .ci/run does)")
    server = Redis(tmp_path)
    yield server
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGCONT)  # in case a test left it frozen
    server.stop()


@pytest.fixture
def make_limited(session_app, database_url):
    """make_limited(storage) -> a new app instance limited to 3 requests a minute per token."""

    def make(storage):
        return create_app(
            Config(
                database_url=database_url,
                testing=True,
                source="tests",
                rate_limit="3/minute",
                rate_limit_storage=storage,
            )
        )

    with session_app.app_context():  # tokens are made in the shared test database
        yield make


def _statuses(app, headers, n):
    client = app.test_client()
    return [client.get("/whoami", headers=headers).status_code for _ in range(n)]


def test_two_app_instances_share_the_limit_through_redis(redis, make_limited, make_token):
    first, second = make_limited(redis.url), make_limited(redis.url)
    _, secret = make_token("org")
    _, other = make_token("org")
    headers = {"Authorization": f"Bearer {secret}"}
    assert _statuses(first, headers, 2) == [200, 200]
    assert _statuses(second, headers, 1) == [200]
    response = second.test_client().get("/whoami", headers=headers)
    assert response.status_code == 429
    assert response.is_json and "error" in response.get_json()
    assert 0 <= int(response.headers["Retry-After"]) <= 60
    assert _statuses(first, headers, 1) == [429]
    # Per token: another token of the same org has its own count.
    assert _statuses(first, {"Authorization": f"Bearer {other}"}, 1) == [200]


def test_in_memory_counts_are_per_instance(make_limited, make_token):
    """The control: without Redis, each instance counts alone."""
    first, second = make_limited("memory://"), make_limited("memory://")
    _, secret = make_token("org")
    headers = {"Authorization": f"Bearer {secret}"}
    assert _statuses(first, headers, 3) == [200] * 3
    assert _statuses(second, headers, 3) == [200] * 3
    assert _statuses(first, headers, 1) == [429]


def test_a_redis_outage_falls_back_to_counting_in_memory_logged(redis, make_limited, make_token, caplog):
    app = make_limited(redis.url)
    _, secret = make_token("org")
    headers = {"Authorization": f"Bearer {secret}"}
    assert _statuses(app, headers, 2) == [200, 200]
    redis.stop()
    caplog.set_level(logging.INFO, logger="dacc.ratelimit")
    # Not refused for want of Redis, and still limited: this process counts afresh.
    assert _statuses(app, headers, 4) == [200, 200, 200, 429]
    warnings = [r for r in caplog.records if r.name == "dacc.ratelimit" and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "falling back to in-memory" in warnings[0].getMessage()
    # Once Redis is back, the shared count resumes (checked at growing intervals: 1, 2, 4 s...).
    redis.start()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and "recovered" not in caplog.text:
        _statuses(app, headers, 1)
        time.sleep(0.2)
    assert "Rate limit storage recovered" in caplog.text


def test_a_frozen_redis_delays_a_request_by_at_most_its_timeout(redis, make_limited, make_token):
    app = make_limited(redis.url)
    _, secret = make_token("org")
    headers = {"Authorization": f"Bearer {secret}"}
    assert _statuses(app, headers, 1) == [200]
    redis.process.send_signal(signal.SIGSTOP)  # connections open, no answer: a partition
    try:
        started = time.monotonic()
        assert _statuses(app, headers, 4) == [200, 200, 200, 429]
        assert time.monotonic() - started < 3  # one 0.5 s read timeout, then in memory
    finally:
        redis.process.send_signal(signal.SIGCONT)


def test_redis_down_at_start_still_serves(redis, make_limited, make_token):
    redis.stop()
    app = make_limited(redis.url)
    _, secret = make_token("org")
    assert _statuses(app, {"Authorization": f"Bearer {secret}"}, 4) == [200, 200, 200, 429]
