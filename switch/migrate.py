"""Apply the numbered SQL files of the `migrations` package, in order, once each.

Each file runs in its own transaction and is recorded in `schema_migration` with the
SHA-256 of its content. A session-level advisory lock serialises concurrent runs (two
switch processes starting at once). A file that was applied and has changed since is
refused: the database would no longer match the code that describes it.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

import asyncpg

# An arbitrary constant that names "schema migration" among this database's advisory locks.
MIGRATION_LOCK_KEY = 0x10_7A_17_00
FILE_PATTERN = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class MigrationError(Exception):
    pass


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def available() -> list[Migration]:
    found = []
    for entry in resources.files("migrations").iterdir():
        match = FILE_PATTERN.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    assert len(set(versions)) == len(versions), f"duplicate migration numbers: {versions}"
    return found


async def migrate(conn: asyncpg.Connection, migrations: list[Migration] | None = None) -> list[str]:
    """Apply what is missing; return the names applied. Raises MigrationError on drift."""
    migrations = available() if migrations is None else migrations
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migration (
                   version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        rows = await conn.fetch("SELECT version, name, checksum FROM schema_migration")
        applied = {r["version"]: r for r in rows}
        _refuse_drift(migrations, applied)
        done = []
        for m in migrations:
            if m.version in applied:
                continue
            async with conn.transaction():
                await conn.execute(m.sql)
                await conn.execute(
                    "INSERT INTO schema_migration (version, name, checksum) VALUES ($1, $2, $3)",
                    m.version, m.name, m.checksum,
                )
            done.append(f"{m.version:04d}_{m.name}")
        return done
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)


def _refuse_drift(migrations: list[Migration], applied: dict[int, asyncpg.Record]) -> None:
    known = {m.version: m for m in migrations}
    for version, row in sorted(applied.items()):
        m = known.get(version)
        if m is None:
            raise MigrationError(
                f"database has migration {version:04d}_{row['name']} that this code does not know"
            )
        if m.checksum != row["checksum"]:
            raise MigrationError(
                f"migration {version:04d}_{m.name} was changed after it was applied "
                f"(checksum {row['checksum'][:12]} in the database, {m.checksum[:12]} in the "
                "file); add a new migration instead of editing an applied one"
            )


async def status(conn: asyncpg.Connection) -> list[tuple[str, str]]:
    """(name, 'applied' | 'pending') for every known migration."""
    exists = await conn.fetchval("SELECT to_regclass('schema_migration') IS NOT NULL")
    applied = set()
    if exists:
        applied = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migration")}
    return [
        (f"{m.version:04d}_{m.name}", "applied" if m.version in applied else "pending")
        for m in available()
    ]
