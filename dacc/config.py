"""Configuration: found once at start, merged onto defaults, validated, frozen."""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import click
import sqlalchemy as sa
import yaml

SYSTEM_CONFIG = Path("/etc/dacc/config.yml")
LOG_LEVELS = ("DEBUG", "INFO", "NOTICE", "WARNING", "ERROR", "CRITICAL")
"""Syslog's names (Cozy's `logger_criticity`); NOTICE sits between INFO and WARNING."""
DB_KEYS = ("host", "port", "dbname", "user", "password")
TOP_LEVEL_KEYS = ("database", "logging", "dacc", "mqtt")
LOGGING_KEYS = ("enable", "logger_criticity", "syslog_address")
DACC_KEYS = (
    "data_dir",
    "token_cache_seconds",
    "aggregate_cache_seconds",
    "statement_timeout_ms",
    "bench_endpoints",
    "metrics",
    "contributor_secret",
    "ingest_batch_ms",
    "ingest_batch_max",
    "rate_limit",
    "rate_limit_storage",
)
METRICS_MODES = ("off", "open", "token")
MQTT_KEYS = (
    "host",
    "port",
    "username",
    "password",
    "tls",
    "client_id",
    "qos",
    "subscriptions",
    "batch_max_size",
    "save_interval_ms",
    "rejected_topic",
)
MQTT_TLS_KEYS = ("ca_certs", "certfile", "keyfile")


def _project_instance_dir() -> Path:
    """The instance folder of this installation, whatever the current directory.

    Flask's convention: `<checkout>/instance` for a source checkout (an editable
    install), `<prefix>/var/dacc-instance` for an installed package. A `flask` command
    run from another folder thus joins the same embedded database instead of starting
    a second, empty one there.
    """
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "setup.cfg").is_file():
        return checkout / "instance"
    return Path(sys.prefix) / "var" / "dacc-instance"


DEFAULT_DATA_DIR = str(_project_instance_dir() / "pgdata")
MIN_SECRET_LENGTH = 32
MAX_INGEST_BATCH_MS = 1000
MAX_INGEST_BATCH = 10_000


class ConfigError(click.ClickException):
    """The configuration cannot be used.

    A ClickException so that any `flask` command loading the app prints one line
    and exits 1 instead of a traceback.
    """


@dataclasses.dataclass(frozen=True)
class Subscription:
    """An MQTT topic filter and the org its measures are written for (a token's part)."""

    topic: str
    org: str


@dataclasses.dataclass(frozen=True)
class MqttConfig:
    """The broker that `flask ingest mqtt` drains, and how it batches."""

    subscriptions: tuple[Subscription, ...]
    host: str = "localhost"
    port: int = 1883
    username: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    """From the file or DACC_MQTT_PASSWORD; kept out of repr so that no log shows it."""
    tls: bool = False
    tls_ca_certs: str | None = None
    tls_certfile: str | None = None
    tls_keyfile: str | None = None
    client_id: str = "dacc-ingest"
    """Fixed, so that the broker keeps the session (and unacknowledged messages) for it."""
    qos: int = 1
    batch_max_size: int = 1000
    save_interval_ms: int = 500
    rejected_topic: str | None = None


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything the app reads from its environment, read once."""

    database_url: str | None = None
    """SQLAlchemy URL of an external PostgreSQL; None means the embedded server."""
    data_dir: str = DEFAULT_DATA_DIR
    """Data folder of the embedded PostgreSQL."""
    source: str = "defaults"
    """Where the configuration came from, for the start-up log line."""
    logging_enable: bool = True
    """False silences DACC's logs altogether (test subprocesses that read stderr)."""
    log_to_syslog: bool = False
    """`logging.enable`: records go to syslog instead of stderr."""
    log_level: str = "INFO"
    """`logging.logger_criticity`: the least severe level logged, a name of LOG_LEVELS."""
    syslog_address: str = "/dev/log"
    """`logging.syslog_address`: a unix socket path, or `host:port` (UDP)."""
    token_cache_seconds: int = 5
    """How long a process trusts a token it already checked (at most 60)."""
    aggregate_cache_seconds: int = 2
    """How long a process keeps an /aggregate answer (0..60; 0 turns the cache off)."""
    statement_timeout_ms: int = 30_000
    """Default statement timeout of web requests; jobs lift it."""
    bench_endpoints: bool = False
    """Expose the benchmark's ceiling endpoints. Only the benchmark sets it."""
    rate_limit: str | None = None
    """Per-token request limit, e.g. "1000/minute" (Flask-Limiter syntax); None: off."""
    rate_limit_storage: str = "memory://"
    """Where the limit's counters live: memory:// (per process) or a redis:// URL."""
    metrics: str = "token"
    """GET /metrics: off (404), open (no token), token (a token with metrics:read)."""
    metrics_multiprocess_dir: str | None = None
    """PROMETHEUS_MULTIPROC_DIR: the folder where gunicorn workers add their metrics up."""
    mqtt: MqttConfig | None = None
    """The `mqtt` section, for `flask ingest mqtt`; None when absent."""
    contributor_secret: str | None = dataclasses.field(default=None, repr=False)
    """Key of the contributor hashes (HMAC-SHA256). None: the embedded default keeps one
    in its instance folder (dacc.contributors); an external database needs it set, so
    that every web process hashes alike."""
    ingest_batch_ms: int = 2
    """Group commit of POST /measure: how long a batch may wait for more measures while
    others are on their way (0..1000 ms); 0 turns it off (one commit per request)."""
    ingest_batch_max: int = 100
    """Most measures one group commit holds (1..10,000)."""
    testing: bool = False

    @property
    def embedded(self) -> bool:
        return self.database_url is None


def load_config(environ: dict[str, str] | None = None, cwd: Path | None = None) -> Config:
    """Find, read and validate the configuration.

    Order: the file named by DACC_CONFIG, ./config.yml, /etc/dacc/config.yml; a missing
    file everywhere means defaults. DATABASE_URL then overrides the database section.
    A relative `dacc.data_dir` is relative to its file, a relative DACC_DATA_DIR to the
    current directory; the default is the installation's instance folder.
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
    if raw.get("mqtt") is not None:
        values["mqtt"] = _read_mqtt_section(raw["mqtt"], env.get("DACC_MQTT_PASSWORD"), where)

    if env.get("DATABASE_URL"):
        values["database_url"] = normalise_database_url(env["DATABASE_URL"], "DATABASE_URL")
        values["source"] += " + DATABASE_URL"
    if env.get("PROMETHEUS_MULTIPROC_DIR"):
        # prometheus-client reads it too, at import: both must agree.
        values["metrics_multiprocess_dir"] = env["PROMETHEUS_MULTIPROC_DIR"]
    if env.get("DACC_DATA_DIR"):
        values["data_dir"] = str(cwd / env["DACC_DATA_DIR"])
    elif "data_dir" in values:
        values["data_dir"] = str(path.resolve().parent / values["data_dir"])
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
    host = str(settings["host"])
    socket_dir = host.startswith("/")
    # URL.create escapes every part: a password with '@', '/' or ':' stays a password.
    # A host that is a folder is libpq's unix-socket directory: it goes in the query
    # (with the port, which names the socket file), not in the authority.
    url = sa.engine.URL.create(
        "postgresql+psycopg2",
        username=str(settings["user"]),
        password=str(settings["password"]) if settings.get("password") else None,
        host=None if socket_dir else host,
        port=None if socket_dir else port,
        database=str(settings["dbname"]),
        query={"host": host, "port": str(port)} if socket_dir else {},
    )
    return url.render_as_string(hide_password=False)


def _read_logging(logging_, where: str, values: dict) -> None:
    if logging_ is None:
        return
    if not isinstance(logging_, dict):
        raise ConfigError(f"{where}: key 'logging' must be a mapping")
    _refuse_unknown(logging_, LOGGING_KEYS, "logging.", where)
    if "enable" in logging_:
        if not isinstance(logging_["enable"], bool):
            raise ConfigError(f"{where}: 'logging.enable' must be true or false")
        values["log_to_syslog"] = logging_["enable"]
    if "logger_criticity" in logging_:
        level = str(logging_["logger_criticity"]).upper()
        if level not in LOG_LEVELS:
            names = ", ".join(name.lower() for name in LOG_LEVELS)
            raise ConfigError(f"{where}: 'logging.logger_criticity' must be one of {names}")
        values["log_level"] = level
    if "syslog_address" in logging_:
        address = logging_["syslog_address"]
        if not isinstance(address, str) or not (address.startswith("/") or _is_host_port(address)):
            raise ConfigError(
                f"{where}: 'logging.syslog_address' must be a socket path (/dev/log) or host:port"
            )
        values["syslog_address"] = address


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
    if "metrics" in section:
        if section["metrics"] not in METRICS_MODES:
            raise ConfigError(f"{where}: 'dacc.metrics' must be one of {', '.join(METRICS_MODES)}")
        values["metrics"] = section["metrics"]
    if "rate_limit" in section:
        values["rate_limit"] = _rate_limit(section["rate_limit"], where)
    if "rate_limit_storage" in section:
        storage = section["rate_limit_storage"]
        if not isinstance(storage, str) or not storage.startswith(("memory://", "redis://", "rediss://")):
            raise ConfigError(f"{where}: 'dacc.rate_limit_storage' must be memory:// or a redis:// URL")
        values["rate_limit_storage"] = storage
    if "contributor_secret" in section:
        secret = section["contributor_secret"]
        if not isinstance(secret, str) or len(secret) < MIN_SECRET_LENGTH:
            # Never echo the value: it is a secret.
            raise ConfigError(
                f"{where}: 'dacc.contributor_secret' must be a string of at least"
                f" {MIN_SECRET_LENGTH} characters"
            )
        values["contributor_secret"] = secret
    for key, low, high in (
        ("ingest_batch_ms", 0, MAX_INGEST_BATCH_MS),
        ("ingest_batch_max", 1, MAX_INGEST_BATCH),
    ):
        if key in section:
            if not _is_int(section[key]) or not low <= section[key] <= high:
                raise ConfigError(f"{where}: 'dacc.{key}' must be an integer {low}..{high}")
            values[key] = section[key]


def _rate_limit(value, where: str) -> str | None:
    if value is None:
        return None
    from limits import parse_many

    try:
        if not isinstance(value, str) or not parse_many(value):
            raise ValueError
    except ValueError:
        raise ConfigError(f"{where}: 'dacc.rate_limit' must be a limit such as \"1000/minute\"") from None
    return value


def _read_mqtt_section(section, env_password: str | None, where: str) -> MqttConfig:
    """The broker settings; DACC_MQTT_PASSWORD, when set, wins over `mqtt.password`."""
    if not isinstance(section, dict):
        raise ConfigError(f"{where}: key 'mqtt' must be a mapping")
    _refuse_unknown(section, MQTT_KEYS, "mqtt.", where)
    values: dict = {"subscriptions": _mqtt_subscriptions(section.get("subscriptions"), where)}
    for key in ("host", "username", "password", "client_id"):
        if key in section:
            if not isinstance(section[key], str) or not section[key]:
                raise ConfigError(f"{where}: 'mqtt.{key}' must be a non-empty string")
            values[key] = section[key]
    if env_password:
        values["password"] = env_password
    qos = section.get("qos", 1)
    if not _is_int(qos) or qos != 1:
        # At QoS 0 the broker never redelivers; at QoS 2 it forgets a message once we
        # have received it (PUBREC), before we stored it. Only QoS 1 redelivers until
        # the acknowledgement, which the worker sends after its commit.
        raise ConfigError(f"{where}: 'mqtt.qos' must be 1 (0 and 2 could lose a message in a crash)")
    limits = {"port": (1, 65535), "batch_max_size": (1, 100_000), "save_interval_ms": (1, 600_000)}
    for key, (low, high) in limits.items():
        if key in section:
            if not _is_int(section[key]) or not low <= section[key] <= high:
                raise ConfigError(f"{where}: 'mqtt.{key}' must be an integer in {low}..{high}")
            values[key] = section[key]
    tls = section.get("tls", False)
    if isinstance(tls, dict):
        _refuse_unknown(tls, MQTT_TLS_KEYS, "mqtt.tls.", where)
        for key in MQTT_TLS_KEYS:
            if key in tls and (not isinstance(tls[key], str) or not tls[key]):
                raise ConfigError(f"{where}: 'mqtt.tls.{key}' must be a file path")
            values[f"tls_{key}"] = tls.get(key)
        tls = True
    elif not isinstance(tls, bool):
        raise ConfigError(
            f"{where}: 'mqtt.tls' must be true, false or a mapping of {', '.join(MQTT_TLS_KEYS)}"
        )
    values["tls"] = tls
    rejected = section.get("rejected_topic")
    if rejected is not None:
        if not isinstance(rejected, str) or not rejected or "+" in rejected or "#" in rejected:
            raise ConfigError(f"{where}: 'mqtt.rejected_topic' must be a topic name without wildcards")
        values["rejected_topic"] = rejected
    return MqttConfig(**values)


def _mqtt_subscriptions(subscriptions, where: str) -> tuple[Subscription, ...]:
    if not isinstance(subscriptions, list) or not subscriptions:
        raise ConfigError(f"{where}: 'mqtt.subscriptions' must be a list of {{topic, org}}")
    result = []
    for i, item in enumerate(subscriptions):
        at = f"mqtt.subscriptions[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(f"{where}: '{at}' must be a mapping {{topic, org}}")
        _refuse_unknown(item, ("topic", "org"), f"{at}.", where)
        topic, org = item.get("topic"), item.get("org")
        if not isinstance(topic, str) or not _valid_topic_filter(topic):
            raise ConfigError(f"{where}: '{at}.topic' must be an MQTT topic filter")
        if not isinstance(org, str) or not org:
            raise ConfigError(f"{where}: '{at}.org' must be a non-empty string")
        for j, earlier in enumerate(result):
            if _filters_overlap(earlier.topic, topic):
                # The broker would deliver a message matching both once per subscription.
                raise ConfigError(f"{where}: '{at}.topic' overlaps 'mqtt.subscriptions[{j}].topic'")
        result.append(Subscription(topic, org))
    return tuple(result)


def _filters_overlap(first: str, second: str) -> bool:
    """Whether some topic matches both filters ('a/#' matches 'a' too)."""
    a, b = first.split("/"), second.split("/")
    for x, y in zip(a, b):
        if x == "#" or y == "#":
            return True
        if x != y and "+" not in (x, y):
            return False
    rest = a[len(b) :] or b[len(a) :]
    return rest in ([], ["#"])


def _valid_topic_filter(topic: str) -> bool:
    """'+' takes a whole level, '#' only the whole last one (MQTT 3.1.1, 4.7.1)."""
    levels = topic.split("/")
    return bool(topic) and all(
        ("+" not in level or level == "+") and ("#" not in level or (level == "#" and i == len(levels) - 1))
        for i, level in enumerate(levels)
    )


def _refuse_unknown(mapping: dict, known, prefix: str, where: str) -> None:
    """A misspelt key would otherwise be ignored silently."""
    unknown = sorted(str(key) for key in mapping if key not in known)
    if unknown:
        raise ConfigError(f"{where}: unknown key '{prefix}{unknown[0]}'")


def _is_host_port(address: str) -> bool:
    host, _, port = address.rpartition(":")
    return bool(host) and port.isdigit() and 0 < int(port) < 65536


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def normalise_database_url(url: str, where: str = "database URL") -> str:
    """Map the usual spellings (postgres://, postgresql://) to the psycopg2 driver, and
    percent-encode a user or password written with a raw `@`.

    SQLAlchemy 2.1 would pick psycopg 3 for a bare postgresql://; we ship psycopg2.
    SQLAlchemy ends the password at its first `@` (and takes the rest for the host):
    the authority is split at its last `@` instead, as libpq and urllib do. A raw `/`,
    `?` or `#` in a password ends the authority itself, which no split can undo:
    refused, without quoting the URL (it holds the password).
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("postgres", "postgresql", "postgresql+psycopg2"):
        raise ConfigError(f"{where}: expected a postgresql:// URL, got scheme '{scheme or '?'}'")
    # The first query key or the fragment never holds an '@' of its own.
    if "@" in parts.path or "@" in parts.query.partition("=")[0] or "@" in parts.fragment:
        raise ConfigError(
            f"{where}: '@' after the host: a '/', '?' or '#' in the user or password must be"
            " percent-encoded (%2F, %3F, %23; '@' is %40)"
        )
    netloc = parts.netloc
    if netloc.count("@") > 1:
        userinfo, _, hostport = netloc.rpartition("@")
        user, colon, password = userinfo.partition(":")
        netloc = f"{_encoded(user)}{colon}{_encoded(password)}@{hostport}"
    return urlunsplit(("postgresql+psycopg2", netloc, *tuple(parts)[2:]))


def _encoded(text: str) -> str:
    """`text` percent-encoded once, whether or not some of it already was."""
    return quote(unquote(text), safe="")


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
