"""Configuration: found once at start, merged onto defaults, validated, frozen."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import click
import yaml

SYSTEM_CONFIG = Path("/etc/dacc/config.yml")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
DB_KEYS = ("host", "port", "dbname", "user", "password")
TOP_LEVEL_KEYS = ("database", "logging", "dacc")
LOGGING_KEYS = ("enable", "logger_criticity")
DACC_KEYS = (
    "data_dir",
    "token_cache_seconds",
    "aggregate_cache_seconds",
    "statement_timeout_ms",
    "bench_endpoints",
)


class ConfigError(click.ClickException):
    """The configuration cannot be used.

    A ClickException so that any `flask` command loading the app prints one line
    and exits 1 instead of a traceback.
    """


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything the app reads from its environment, read once."""

    database_url: str | None = None
    """SQLAlchemy URL of an external PostgreSQL; None means the embedded server."""
    data_dir: str = "instance/pgdata"
    """Data folder of the embedded PostgreSQL."""
    source: str = "defaults"
    """Where the configuration came from, for the start-up log line."""
    logging_enable: bool = True
    log_level: str = "INFO"
    token_cache_seconds: int = 5
    """How long a process trusts a token it already checked (at most 60)."""
    aggregate_cache_seconds: int = 2
    """How long a process keeps an /aggregate answer (0..60; 0 turns the cache off)."""
    statement_timeout_ms: int = 30_000
    """Default statement timeout of web requests; jobs lift it."""
    bench_endpoints: bool = False
    """Expose the benchmark's ceiling endpoints. Only the benchmark sets it."""
    testing: bool = False

    @property
    def embedded(self) -> bool:
        return self.database_url is None


def load_config(environ: dict[str, str] | None = None, cwd: Path | None = None) -> Config:
    """Find, read and validate the configuration.

    Order: the file named by DACC_CONFIG, ./config.yml, /etc/dacc/config.yml; a missing
    file everywhere means defaults. DATABASE_URL then overrides the database section.
    Raises ConfigError naming the file and key at fault.
    """
    env = os.environ if environ is None else environ
    cwd = Path.cwd() if cwd is None else cwd
    path = _find_config_file(env, cwd)
    raw = _read_yaml(path) if path else {}
    values: dict = {"source": str(path) if path else "defaults"}
    where = str(path) if path else "config"

    _refuse_unknown(raw, TOP_LEVEL_KEYS, "", where)
    section = env.get("DACC_ENV", "default")
    database = raw.get("database")
    if database is not None:
        values["database_url"] = _database_url(database, section, where)
    _read_logging(raw.get("logging"), where, values)
    _read_dacc_section(raw.get("dacc"), where, values)

    if env.get("DATABASE_URL"):
        values["database_url"] = normalise_database_url(env["DATABASE_URL"], "DATABASE_URL")
        values["source"] += " + DATABASE_URL"
    if env.get("DACC_DATA_DIR"):
        values["data_dir"] = env["DACC_DATA_DIR"]
    if not Path(values.get("data_dir", Config.data_dir)).is_absolute():
        values["data_dir"] = str(cwd / values.get("data_dir", Config.data_dir))
    return Config(**values)


def _find_config_file(env, cwd: Path) -> Path | None:
    if env.get("DACC_CONFIG"):
        path = Path(env["DACC_CONFIG"])
        if not path.is_file():
            raise ConfigError(f"DACC_CONFIG names {path}, which is not a readable file")
        return path
    for path in (cwd / "config.yml", SYSTEM_CONFIG):
        if path.is_file():
            return path
    return None


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError(f"{path}: malformed YAML{at}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def _database_url(database, section: str, where: str) -> str:
    if not isinstance(database, dict):
        raise ConfigError(f"{where}: key 'database' must be a mapping")
    settings = database.get(section)
    if not isinstance(settings, dict):
        raise ConfigError(f"{where}: missing key 'database.{section}' (a mapping)")
    for key in ("host", "dbname", "user"):
        if not settings.get(key):
            raise ConfigError(f"{where}: missing key 'database.{section}.{key}'")
    _refuse_unknown(settings, DB_KEYS, f"database.{section}.", where)
    port = settings.get("port", 5432)
    if not _is_int(port) or not 0 < port < 65536:
        raise ConfigError(f"{where}: 'database.{section}.port' must be a port number")
    password = settings.get("password") or ""
    auth = quote(str(settings["user"]), safe="")
    if password:
        auth += ":" + quote(str(password), safe="")
    host = str(settings["host"])
    dbname = quote(str(settings["dbname"]), safe="")
    return f"postgresql+psycopg2://{auth}@{host}:{port}/{dbname}"


def _read_logging(logging_, where: str, values: dict) -> None:
    if logging_ is None:
        return
    if not isinstance(logging_, dict):
        raise ConfigError(f"{where}: key 'logging' must be a mapping")
    _refuse_unknown(logging_, LOGGING_KEYS, "logging.", where)
    if "enable" in logging_:
        if not isinstance(logging_["enable"], bool):
            raise ConfigError(f"{where}: 'logging.enable' must be true or false")
        values["logging_enable"] = logging_["enable"]
    if "logger_criticity" in logging_:
        level = str(logging_["logger_criticity"]).upper()
        if level not in LOG_LEVELS:
            raise ConfigError(
                f"{where}: 'logging.logger_criticity' must be one of {', '.join(LOG_LEVELS)}"
            )
        values["log_level"] = level


def _read_dacc_section(section, where: str, values: dict) -> None:
    """Settings of our own, under `dacc:` so the DACC-compatible keys stay as they are."""
    if section is None:
        return
    if not isinstance(section, dict):
        raise ConfigError(f"{where}: key 'dacc' must be a mapping")
    _refuse_unknown(section, DACC_KEYS, "dacc.", where)
    if "data_dir" in section:
        if not isinstance(section["data_dir"], str) or not section["data_dir"]:
            raise ConfigError(f"{where}: 'dacc.data_dir' must be a folder path")
        values["data_dir"] = section["data_dir"]
    for key in ("token_cache_seconds", "aggregate_cache_seconds"):
        if key in section:
            seconds = section[key]
            if not _is_int(seconds) or not 0 <= seconds <= 60:
                raise ConfigError(f"{where}: 'dacc.{key}' must be 0..60")
            values[key] = seconds
    if "statement_timeout_ms" in section:
        timeout = section["statement_timeout_ms"]
        if not _is_int(timeout) or timeout < 0:
            raise ConfigError(f"{where}: 'dacc.statement_timeout_ms' must be an integer ≥ 0")
        values["statement_timeout_ms"] = timeout
    if "bench_endpoints" in section:
        if not isinstance(section["bench_endpoints"], bool):
            raise ConfigError(f"{where}: 'dacc.bench_endpoints' must be true or false")
        values["bench_endpoints"] = section["bench_endpoints"]


def _refuse_unknown(mapping: dict, known, prefix: str, where: str) -> None:
    """A misspelt key would otherwise be ignored silently."""
    unknown = sorted(str(key) for key in mapping if key not in known)
    if unknown:
        raise ConfigError(f"{where}: unknown key '{prefix}{unknown[0]}'")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def normalise_database_url(url: str, where: str = "database URL") -> str:
    """Map the usual spellings (postgres://, postgresql://) to the psycopg2 driver.

    SQLAlchemy 2.1 would pick psycopg 3 for a bare postgresql://; we ship psycopg2.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in ("postgres", "postgresql", "postgresql+psycopg2"):
        return urlunsplit(("postgresql+psycopg2",) + tuple(parts)[1:])
    raise ConfigError(f"{where}: expected a postgresql:// URL, got scheme '{scheme or '?'}'")


def redact_url(url: str) -> str:
    """The URL with its password replaced (in the authority and the query), for logs."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        netloc = netloc.replace(":" + parts.password + "@", ":***@", 1)
    query = "&".join(
        f"{name}=***" if name.lower() == "password" else pair
        for pair in parts.query.split("&")
        if pair
        for name in [pair.partition("=")[0]]
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
