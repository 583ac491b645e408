"""The embedded PostgreSQL (pgserver) used when no database is configured."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import psycopg2
import psycopg2.errors
from psycopg2 import sql

log = logging.getLogger(__name__)

DATABASE = "dacc"


def start_embedded(data_dir: str | Path, *, database: str = DATABASE, stop_at_exit=False) -> str:
    """Start (or join) the PostgreSQL of `data_dir`, create `database`, return its URL.

    The server outlives this process unless `stop_at_exit`: the CLI and the next start
    join the same server instead of paying for a new one.
    """
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (servers, containers): harmless.
        warnings.simplefilter("ignore")
        import pgserver  # heavy import, only when embedded

    path = Path(data_dir)
    path.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(path, cleanup_mode="stop" if stop_at_exit else None)
    create_database(server.get_uri("postgres"), database)
    return server.get_uri(database).replace("postgresql://", "postgresql+psycopg2://", 1)


def create_database(admin_uri: str, database: str) -> bool:
    """Create `database` unless it exists; True when created."""
    conn = psycopg2.connect(admin_uri)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
            if cur.fetchone():
                return False
            try:
                cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
            except (psycopg2.errors.DuplicateDatabase, psycopg2.errors.UniqueViolation):
                # Another process (a second gunicorn worker) created it first.
                return False
            return True
    finally:
        conn.close()
