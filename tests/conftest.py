"""Test fixtures: a real Postgres, one fresh database per test.

The server is the one named by LOYALTY_TEST_DATABASE_URL (any database on it; the tests
create and drop their own), else the embedded Postgres under .loyalty/. The schema is
migrated once into a template database; each test gets a copy (CREATE DATABASE ... TEMPLATE),
which takes milliseconds and isolates tests completely. After every test that used a
database, `db check` runs on it: every test that moves money ends with the ledger proved.

Every log the session produces is kept and scanned for card numbers when it ends
(tests/logscan.py): a Luhn-valid 16-digit number in any of them fails the run.
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest

from switch import db, dbcheck, migrate, store
from switch.config import load_settings
from switch.sweeper import SweepLimits
from tests import logscan

ROOT = Path(__file__).resolve().parents[1]
_counter = itertools.count()


def _server_admin_url() -> str:
    url = os.environ.get("LOYALTY_TEST_DATABASE_URL")
    if url:
        return url
    return db.embedded_server_url(ROOT / ".loyalty", "postgres")


def pytest_configure(config: pytest.Config) -> None:
    log_dir = Path(tempfile.mkdtemp(prefix="loyalty-test-logs-"))
    os.environ[logscan.LOG_DIR_ENV] = str(log_dir)
    logscan.capture_records(log_dir)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    findings = logscan.scan(logscan.log_dir())
    if findings:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        text = "card numbers (Luhn-valid, 16 digits) in the logs of this run:\n" + \
            "\n".join(findings[:20]) + f"\nlogs kept in {logscan.log_dir()}"
        if reporter is not None:
            reporter.write_line(text, red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    else:
        shutil.rmtree(logscan.log_dir(), ignore_errors=True)


@pytest.fixture(autouse=True)
def _log_everything() -> None:
    """Every record reaches the scan, whatever level a test or the CLI set."""
    logging.getLogger().setLevel(logging.DEBUG)


@pytest.fixture(scope="session")
def admin_url() -> str:
    return _server_admin_url()


@pytest.fixture(scope="session")
async def template_name(admin_url: str) -> AsyncIterator[str]:
    name = f"loyalty_tmpl_{os.getpid()}"
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    tmpl = await asyncpg.connect(db.with_database(admin_url, name))
    try:
        await migrate.migrate(tmpl)
    finally:
        await tmpl.close()
    yield name
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def create_database(admin_url: str, template: str) -> str:
    name = f"loyalty_t{os.getpid()}_{next(_counter)}"
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    finally:
        await conn.close()
    return name


async def drop_database(admin_url: str, name: str) -> None:
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def assert_ledger_ok(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        outcomes = await dbcheck.run_checks(conn)
    finally:
        await conn.close()
    failed = [o for o in outcomes if not o.ok]
    assert not failed, dbcheck.report(outcomes)


@pytest.fixture
async def db_url(admin_url: str, template_name: str) -> AsyncIterator[str]:
    """A fresh, migrated database; `db check` must pass on it when the test ends."""
    name = await create_database(admin_url, template_name)
    url = db.with_database(admin_url, name)
    yield url
    try:
        await assert_ledger_ok(url)
    finally:
        await drop_database(admin_url, name)


@pytest.fixture
async def conn(db_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(db_url)
    yield connection
    await connection.close()


def sweep_limits(**settings: int) -> SweepLimits:
    """The sweeper's bounds from the defaults with `settings` changed (and validated)."""
    return SweepLimits.from_settings(load_settings(None, {}, **settings))


# A sweeper job's batches: (the bound the sweeper passed, how many rows the call handled).
Batches = list[tuple[int, int]]


@pytest.fixture
def sweep_batches(monkeypatch: pytest.MonkeyPatch) -> dict[str, Batches]:
    """Every batch the sweeper runs from here on, per job (`holds`, `lots`, `tiers`), so a
    test can tell how many batches a round took and with which bound. The real store
    functions still do the work, on the real database."""
    batches: dict[str, Batches] = {"holds": [], "lots": [], "tiers": []}
    for job, name in (("holds", "sweep"), ("lots", "expire_lots"), ("tiers", "sweep_tiers")):
        monkeypatch.setattr(store, name, _recorded(getattr(store, name), batches[job]))
    return batches


def _recorded(batch: Callable[..., Awaitable[int]], into: Batches
              ) -> Callable[..., Awaitable[int]]:
    async def run(conn: asyncpg.Connection, now: object, limit: int, *rest: object) -> int:
        done = await batch(conn, now, limit, *rest)
        into.append((limit, done))
        return done
    return run
