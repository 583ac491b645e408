"""The production files: docker-compose.yml, Dockerfile and .dockerignore, read as text
(Docker is not available on the build machines)."""

import re
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _command(service) -> str:
    command = service.get("command", "")
    return " ".join(command) if isinstance(command, list) else command


def test_compose_has_db_web_and_scheduler(compose):
    assert {"db", "web", "scheduler"} <= set(compose["services"])


def test_db_is_postgresql_16_on_a_named_volume_with_a_healthcheck(compose):
    db = compose["services"]["db"]
    assert db["image"].split(":")[1].startswith("16")
    volume, _, target = db["volumes"][0].partition(":")
    assert volume in compose["volumes"] and target == "/var/lib/postgresql/data"
    assert "pg_isready" in " ".join(db["healthcheck"]["test"])
    assert db["restart"] == "unless-stopped"


def test_web_waits_for_the_db_migrates_and_is_checked(compose):
    web = compose["services"]["web"]
    assert web["depends_on"]["db"]["condition"] == "service_healthy"
    command = _command(web)
    assert re.search(r"flask db upgrade && exec scripts/docker-web.sh", command)
    assert web["restart"] == "unless-stopped"
    check = " ".join(web["healthcheck"]["test"])
    assert "http://127.0.0.1:5000/status" in check
    assert web["environment"]["DATABASE_URL"].startswith("postgresql://")


def test_published_ports_are_on_the_loopback_only(compose):
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)


def test_jobs_and_workers_start_once_web_has_migrated(compose):
    scheduler = compose["services"]["scheduler"]
    assert "flask jobs run" in _command(scheduler)
    assert scheduler["restart"] == "unless-stopped"
    for name, service in compose["services"].items():
        if "build" in service and name != "web":
            assert service["depends_on"]["web"]["condition"] == "service_healthy", name
            assert service["image"] == compose["services"]["web"]["image"], name


def test_web_script_serves_without_a_control_socket_and_with_shared_metrics():
    script = (ROOT / "scripts" / "docker-web.sh").read_text()
    assert "exec gunicorn --no-control-socket" in script
    assert "0.0.0.0:5000" in script and "'dacc:create_app()'" in script
    assert 'rm -rf "$PROMETHEUS_MULTIPROC_DIR"' in script
    result = subprocess.run(["sh", "-n", str(ROOT / "scripts" / "docker-web.sh")], capture_output=True)
    assert result.returncode == 0


def test_dockerfile_runs_as_an_unprivileged_user_and_serves_the_web_script():
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()]
    instructions = [line for line in lines if line and not line.startswith("#")]
    assert instructions[0].startswith("FROM python:3.11-slim")
    users = [line.split()[1] for line in instructions if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert instructions.index(f"USER {users[-1]}") > max(
        i for i, line in enumerate(instructions) if line.startswith(("RUN ", "COPY "))
    )
    assert 'CMD ["scripts/docker-web.sh"]' in instructions
    assert "PIP_NO_CACHE_DIR=1 \\" in instructions


@pytest.mark.parametrize("path", [".venv", "instance", ".git", "config.yml", "tests"])
def test_dockerignore_keeps_local_state_out_of_the_image(path):
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert path in ignored


def test_dockerignore_keeps_what_the_image_needs():
    ignored = set((ROOT / ".dockerignore").read_text().split())
    for needed in ("dacc", "migrations", "setup.cfg", "pyproject.toml", "README.md", "scripts"):
        assert needed not in ignored
