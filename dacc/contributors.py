"""Contributor pseudonyms: checked, then kept only as a keyed hash, never in clear."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from pathlib import Path

from flask import current_app

from dacc.config import MIN_SECRET_LENGTH, Config, ConfigError
from dacc.errors import BadRequest, DaccError

log = logging.getLogger(__name__)

MAX_LENGTH = 128
SECRET_FILE = "contributor_secret"
"""In the embedded default's instance folder (the parent of its data folder), mode 0600."""
EXTENSION_KEY = "dacc_contributor_key"


class NoContributorSecret(DaccError):
    """A measure names a contributor, but this server has no key to hash it with."""

    status = 503


def init_contributor_key(app, config: Config) -> None:
    """Decide once, at start, the key of this app's contributor hashes.

    The configured `dacc.contributor_secret`; else, for the embedded default, the secret
    of its instance folder: read now if it exists (a bad one stops the start), else
    generated at its first use, so that a command that hashes nothing (`flask --help`)
    writes nothing; else none (contributors are then refused). The key is kept on the
    app, never logged.
    """
    if config.contributor_secret:
        key: bytes | Path | None = config.contributor_secret.encode()
    elif config.embedded:
        path = Path(config.data_dir).parent / SECRET_FILE
        key = _read_secret(path) if path.exists() else path
    else:
        key = None
    app.extensions[EXTENSION_KEY] = key


def contributor_key() -> bytes:
    key = current_app.extensions.get(EXTENSION_KEY)
    if isinstance(key, Path):
        # First use of the embedded default's secret: generated now. Threads that get
        # here together create it once (_instance_secret) and all read the same.
        try:
            key = _instance_secret(key)
        except ConfigError as exc:  # another process wrote a bad one meanwhile
            log.error("%s", exc.message)
            raise NoContributorSecret(
                "contributor: this server's contributor secret is unusable; ask its admin"
            ) from None
        current_app.extensions[EXTENSION_KEY] = key
    if key is None:
        raise NoContributorSecret(
            "contributor: this server has no contributor secret (dacc.contributor_secret);"
            " send the measure without the field, or ask its admin"
        )
    return key


def hash_contributor(key: bytes, org: str | None, pseudonym) -> bytes:
    """HMAC-SHA256 of the writer's org and the pseudonym: the same pseudonym sent by two
    orgs is two contributors (neither can exhaust the other's cap). BadRequest unless
    the pseudonym is 1 to 128 printable characters."""
    if type(pseudonym) is not str or not 0 < len(pseudonym) <= MAX_LENGTH or not pseudonym.isprintable():
        raise BadRequest(f"contributor: expected a string of 1 to {MAX_LENGTH} printable characters")
    message = f"{org or ''}\0{pseudonym}".encode("utf-8", "surrogatepass")
    # hmac.digest: the one-shot C implementation, several times faster than hmac.new.
    return hmac.digest(key, message, hashlib.sha256)


def _instance_secret(path: Path) -> bytes:
    """Read the instance's secret, creating it first if absent (0600, atomically: two
    processes starting together end up with the same one)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        draft = path.with_name(f".{SECRET_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(secrets.token_urlsafe(48) + "\n")
        try:
            os.link(draft, path)  # fails if another process linked its own first
            log.info("contributor secret generated in %s", path)
        except FileExistsError:
            pass
        finally:
            os.unlink(draft)
    return _read_secret(path)


def _read_secret(path: Path) -> bytes:
    secret = path.read_text(encoding="utf-8").strip()
    if len(secret) < MIN_SECRET_LENGTH:
        raise ConfigError(f"{path}: the contributor secret must hold at least {MIN_SECRET_LENGTH} characters")
    return secret.encode()
