import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from switch import db, migrate
from tests.conftest import create_database, drop_database


@pytest.fixture
async def empty_url(admin_url: str) -> AsyncIterator[str]:
    name = await create_database(admin_url, "template0")
    yield db.with_database(admin_url, name)
    await drop_database(admin_url, name)


async def _connect(url: str) -> asyncpg.Connection:
    return await asyncpg.connect(url)


async def test_applies_every_file_in_order_then_nothing(empty_url):
    conn = await _connect(empty_url)
    try:
        names = [f"{m.version:04d}_{m.name}" for m in migrate.available()]
        assert await migrate.migrate(conn) == names
        assert await migrate.migrate(conn) == []
        recorded = await conn.fetch("SELECT version, checksum FROM schema_migration ORDER BY 1")
        assert [(r["version"], r["checksum"]) for r in recorded] == [
            (m.version, m.checksum) for m in migrate.available()]
        assert {state for _, state in await migrate.status(conn)} == {"applied"}
    finally:
        await conn.close()


async def test_changed_applied_file_is_refused(empty_url):
    conn = await _connect(empty_url)
    try:
        await migrate.migrate(conn)
        first = migrate.available()[0]
        edited = migrate.Migration(first.version, first.name, first.sql + "\n-- edited\n")
        with pytest.raises(migrate.MigrationError, match="changed after it was applied"):
            await migrate.migrate(conn, [edited, *migrate.available()[1:]])
    finally:
        await conn.close()


async def test_unknown_applied_version_is_refused(empty_url):
    conn = await _connect(empty_url)
    try:
        await migrate.migrate(conn)
        with pytest.raises(migrate.MigrationError, match="does not know"):
            await migrate.migrate(conn, migrate.available()[:1])
    finally:
        await conn.close()


async def test_failing_file_leaves_nothing_behind(empty_url):
    conn = await _connect(empty_url)
    try:
        bad = [migrate.Migration(1, "half", "CREATE TABLE half (x int); SELECT 1/0;")]
        with pytest.raises(asyncpg.DivisionByZeroError):
            await migrate.migrate(conn, bad)
        assert await conn.fetchval("SELECT to_regclass('half')") is None
        assert await conn.fetchval("SELECT count(*) FROM schema_migration") == 0
        # The advisory lock was released: another run proceeds.
        assert await migrate.migrate(conn) != []
    finally:
        await conn.close()


async def test_concurrent_runs_are_serialised(empty_url):
    conns = [await _connect(empty_url) for _ in range(4)]
    try:
        results = await asyncio.gather(*(migrate.migrate(c) for c in conns))
        applied = [name for result in results for name in result]
        assert sorted(applied) == sorted(f"{m.version:04d}_{m.name}" for m in migrate.available())
    finally:
        for c in conns:
            await c.close()
