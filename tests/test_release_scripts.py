"""scripts/nextversion.sh and scripts/releaseversion.sh, run in a temporary git repository."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import dacc

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ("nextversion.sh", "releaseversion.sh", "mkenv.sh")


def _git(repo, *args):
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def repo(tmp_path):
    """A repository holding the scripts, a dacc/VERSION and a CHANGELOG, all committed."""
    (tmp_path / "scripts").mkdir()
    for name in SCRIPTS:
        shutil.copy2(ROOT / "scripts" / name, tmp_path / "scripts" / name)
    (tmp_path / "dacc").mkdir()
    (tmp_path / "dacc" / "VERSION").write_text("1.2.3-dev\n")
    (tmp_path / "CHANGELOG.md").write_text(
        "# Changelog\n\n## Unreleased\n\n- a change\n\n## 1.2.2 (2020-01-01)\n"
    )
    _git(tmp_path, "init", "-q", "-b", "main")
    _git(tmp_path, "config", "user.email", "test@example.invalid")
    _git(tmp_path, "config", "user.name", "Test")
    _git(tmp_path, "config", "tag.gpgSign", "false")
    _git(tmp_path, "config", "commit.gpgSign", "false")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-q", "-m", "start")
    return tmp_path


def _run(repo, script, *args):
    return subprocess.run(
        ["bash", str(repo / "scripts" / script), *args], cwd=repo, capture_output=True, text=True, timeout=60
    )


def test_the_package_and_its_metadata_read_the_one_file():
    import configparser

    assert dacc.__version__ == (ROOT / "dacc" / "VERSION").read_text().strip()
    # The installed metadata is frozen at install time (editable too): check its source,
    # so that a bump by nextversion.sh does not fail here until the next install.
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    assert setup["metadata"]["version"] == "file: dacc/VERSION"
    assert "VERSION" in setup["options.package_data"]["dacc"]


def test_dacc_version_prints_dacc_s_version(tmp_path):
    dacc_command = Path(sys.executable).parent / "dacc"  # this virtualenv's, not another's
    result = subprocess.run(
        [str(dacc_command), "--version"], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert result.returncode == 0
    assert result.stdout.startswith(f"DACC {dacc.__version__} (Flask ")


def test_status_tells_the_version(client):
    assert client.get("/status").get_json()["version"] == dacc.__version__


def test_nextversion_writes_the_dev_version(repo):
    result = _run(repo, "nextversion.sh", "2.0.0")
    assert result.returncode == 0, result.stderr
    assert (repo / "dacc" / "VERSION").read_text() == "2.0.0-dev\n"


@pytest.mark.parametrize("bad", ["2.0", "v2.0.0", "2.0.0-dev", "02.0.0", "2.0.x", ""])
def test_nextversion_refuses_what_is_not_semver(repo, bad):
    result = _run(repo, "nextversion.sh", bad)
    assert result.returncode == 2
    assert "X.Y.Z" in result.stderr
    assert (repo / "dacc" / "VERSION").read_text() == "1.2.3-dev\n"


def test_releaseversion_commits_tags_and_bumps_to_the_next_patch(repo):
    result = _run(repo, "releaseversion.sh")
    assert result.returncode == 0, result.stderr
    assert _git(repo, "tag", "--list").split() == ["v1.2.3"]
    assert _git(repo, "show", "v1.2.3:dacc/VERSION") == "1.2.3\n"
    released_log = _git(repo, "show", "v1.2.3:CHANGELOG.md")
    assert "## Unreleased" not in released_log
    assert "## 1.2.3 (" in released_log and "- a change" in released_log
    assert (repo / "dacc" / "VERSION").read_text() == "1.2.4-dev\n"
    changelog = (repo / "CHANGELOG.md").read_text()
    assert changelog.index("## Unreleased") < changelog.index("## 1.2.3 (") < changelog.index("## 1.2.2")
    assert _git(repo, "log", "--format=%s").splitlines() == ["Start 1.2.4-dev", "Release 1.2.3", "start"]
    assert _git(repo, "status", "--porcelain") == ""


@pytest.mark.parametrize("dirt", ["modified", "staged", "untracked"])
def test_releaseversion_refuses_a_dirty_tree(repo, dirt):
    if dirt == "untracked":
        (repo / "new.txt").write_text("x")
    else:
        (repo / "CHANGELOG.md").write_text("changed\n")
        if dirt == "staged":
            _git(repo, "add", "CHANGELOG.md")
    result = _run(repo, "releaseversion.sh")
    assert result.returncode == 1
    assert "not clean" in result.stderr
    assert _git(repo, "tag", "--list") == ""
    assert len(_git(repo, "log", "--format=%s").splitlines()) == 1


def test_releaseversion_refuses_a_version_that_is_not_dev(repo):
    (repo / "dacc" / "VERSION").write_text("1.2.3\n")
    _git(repo, "commit", "-q", "-am", "released by hand")
    result = _run(repo, "releaseversion.sh")
    assert result.returncode == 1
    assert "expected X.Y.Z-dev" in result.stderr
    assert _git(repo, "tag", "--list") == ""


def test_releaseversion_refuses_an_existing_tag(repo):
    _git(repo, "tag", "v1.2.3")
    result = _run(repo, "releaseversion.sh")
    assert result.returncode == 1
    assert "v1.2.3 exists" in result.stderr
    assert (repo / "dacc" / "VERSION").read_text() == "1.2.3-dev\n"


def test_mkenv_refuses_a_missing_interpreter(repo):
    result = subprocess.run(
        ["bash", str(repo / "scripts" / "mkenv.sh")],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "PYTHON": "python-that-does-not-exist"},
    )
    assert result.returncode == 1
    assert "python-that-does-not-exist is required" in result.stderr
    assert not (repo / ".venv").exists()
