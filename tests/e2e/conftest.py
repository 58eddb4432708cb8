"""End-to-end fixtures: the real switch on a real port, against a fresh copy of a database
holding the demo data, driven by the terminal client over TCP.

The demo data is seeded once per session into a template database, its campaigns paused;
each test gets its own copy. Time is a `FakeClock` shared by the switch and the terminals,
so hold expiry and the field-7 window are tested by moving the clock, never by sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from protocol.dukpt import derive_initial_key
from simulator.client import TerminalClient
from simulator.terminal import Terminal
from switch import db, demo, keys, ledger
from switch.cli import main
from switch.config import Settings, load_settings
from switch.service import Switch
from switch.sweeper import SweepLimits, sweep_all
from tests.conftest import assert_ledger_ok, create_database, drop_database


class FakeClock:
    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture(scope="session")
async def demo_template(admin_url: str, template_name: str, tmp_path_factory
                        ) -> AsyncIterator[tuple[str, Path]]:
    key_file = tmp_path_factory.mktemp("keys") / "keys.json"
    name = await create_database(admin_url, template_name)
    conn = await asyncpg.connect(db.with_database(admin_url, name))
    try:
        async with conn.transaction():
            await demo.seed(conn, keys.load_or_create(key_file), key_file)
            # The request-path tests pin what a purchase does without campaigns (exact
            # balances); tests/e2e/test_pricing.py adds the campaigns it prices with.
            await conn.execute("UPDATE campaign SET status = 'paused'")
    finally:
        await conn.close()
    yield name, key_file
    await drop_database(admin_url, name)


@dataclass
class Env:
    url: str
    settings: Settings
    clock: FakeClock
    switch: Switch
    key_file: Path
    conn: asyncpg.Connection
    ik_ids: dict[str, str]

    def terminal(self, tid: str) -> Terminal:
        store = keys.load(self.key_file)
        return Terminal.from_profile(tid, *self._initial_key(store, tid), clock=self.clock)

    def _initial_key(self, store: keys.KeyStore, tid: str) -> tuple[bytes, bytes]:
        ik_id = self.ik_ids[tid]
        bdk = store.bdk(ik_id[:8])
        return derive_initial_key(bdk, bytes.fromhex(ik_id)), bytes.fromhex(ik_id)

    async def client(self, tid: str = "CAFE0001", **options: float) -> TerminalClient:
        client = TerminalClient(self.terminal(tid), **options)  # type: ignore[arg-type]
        return await client.connect("127.0.0.1", self.switch.port)

    async def card_balance(self, card_index: int, kind: str = "rial") -> ledger.Balance:
        card_id = await self.card_id(card_index)
        spec = {"rial": ledger.card_rial(card_id), "points": ledger.card_points(card_id)}[kind]
        return await ledger.balance(self.conn, await ledger.account_id(self.conn, spec))

    async def card_id(self, card_index: int) -> int:
        card_id: int = await self.conn.fetchval(
            "SELECT id FROM card WHERE pan_last4 = $1 AND pan_bin = $2",
            demo.demo_club_pan(card_index)[-4:], demo.CLUB_BIN)
        return card_id

    async def count(self, table: str) -> int:
        rows: int = await self.conn.fetchval(f"SELECT count(*) FROM {table}")
        return rows

    @property
    def limits(self) -> SweepLimits:
        return SweepLimits.from_settings(self.settings)

    async def sweep(self) -> int:
        """What the sweeper does in a round, at the test clock's time and with the
        settings' bounds; how many holds it expired."""
        assert self.switch.pool is not None
        return await sweep_all(self.switch.pool, self.clock(), self.limits)


@contextlib.asynccontextmanager
async def running_env(admin_url: str, demo_template: tuple[str, Path], **switch_options: Any
                      ) -> AsyncIterator[Env]:
    """A switch on a fresh copy of the demo database; `db check` when it ends."""
    template, key_file = demo_template
    name = await create_database(admin_url, template)
    url = db.with_database(admin_url, name)
    settings = load_settings(environ={}, key_file=key_file, listen_port=0,
                             hold_sweep_interval_s=3600, db_pool_size_min=1,
                             db_pool_size_max=8, metrics_port=0)
    clock = FakeClock(datetime.now(UTC).replace(microsecond=0))
    switch = Switch(settings, clock=clock, database_url=url, **switch_options)
    await switch.start()
    conn = await asyncpg.connect(url)
    rows = await conn.fetch("SELECT tid, bdk_id || derivation_id AS ik FROM terminal")
    environment = Env(url, settings, clock, switch, key_file, conn,
                      {r["tid"]: r["ik"] for r in rows})
    try:
        yield environment
    finally:
        await conn.close()
        await switch.stop()
        try:
            await assert_ledger_ok(url)
        finally:
            await drop_database(admin_url, name)


@pytest.fixture
async def env(admin_url: str, demo_template: tuple[str, Path], request: pytest.FixtureRequest
              ) -> AsyncIterator[Env]:
    """The switch on a fresh copy of the demo database; with the `serve_metrics` mark it
    also serves /metrics on a free port (`env.switch.metrics_port`)."""
    serve_metrics = request.node.get_closest_marker("serve_metrics") is not None
    async with running_env(admin_url, demo_template, serve_metrics=serve_metrics) as environment:
        yield environment


@pytest.fixture
def pan() -> Callable[[int], str]:
    return demo.demo_club_pan


@pytest.fixture
def loyalty(env: Env, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
            ) -> Callable[..., Awaitable[tuple[int, str, str]]]:
    """`await loyalty(*argv)`: `loyalty ARGV` on the switch's database and key file, as an
    operator runs it; (exit status, stdout, stderr). In a thread, as `main` runs its own
    event loop."""
    monkeypatch.setenv("DATABASE_URL", env.url)
    monkeypatch.setenv("LOYALTY_KEY_FILE", str(env.key_file))

    async def run(*argv: str) -> tuple[int, str, str]:
        code = await asyncio.to_thread(main, list(argv))
        out = capsys.readouterr()
        return code, out.out, out.err

    return run
