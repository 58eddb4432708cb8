"""Database trouble end to end (profile §6, code 91): the switch answers `91` promptly when
it cannot reach its database, a retry of the same request succeeds once it can, and nothing
is ever half applied.

The database is taken away for real: backends are terminated with pg_terminate_backend, a
database is dropped under a running switch, or the switch reaches Postgres through a TCP
relay (`Relay`, below) that the test cuts or turns into a black hole. No mocks: the relay
only forwards bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
import pytest

from protocol.dukpt import derive_initial_key
from protocol.fields import ProcessingCode, ResponseCode
from simulator.client import TerminalClient
from simulator.terminal import Prepared, Terminal
from switch import db, demo, keys
from switch.config import Settings, load_settings
from switch.service import Switch
from tests.conftest import assert_ledger_ok, create_database, drop_database
from tests.e2e.conftest import Env, FakeClock
from tests.e2e.support import counts, make_terminal

PC = ProcessingCode
RC = ResponseCode
EXP = demo.CARD_EXPIRY
club = demo.demo_club_pan
CONNECT_TIMEOUT_S = 1.0
STATEMENT_TIMEOUT_S = 2.0
SLACK_S = 1.5  # scheduling and one extra round trip on a loaded machine
POOL_MAX = 4  # the pool size of the tests' own switches


# -- a TCP relay in front of Postgres ---------------------------------------------------------


Opener = Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


def upstream_of(url: str) -> Opener:
    """How to open a connection to the server `url` names (Unix socket or TCP)."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    host = query.get("host") or parts.hostname or "localhost"
    port = int(query.get("port") or parts.port or 5432)
    if host.startswith("/"):
        path = f"{host}/.s.PGSQL.{port}"
        return lambda: asyncio.open_unix_connection(path)
    return lambda: asyncio.open_connection(host, port)


def via(url: str, port: int) -> str:
    """`url` redirected to 127.0.0.1:`port` over TCP."""
    parts = urlsplit(url)
    user = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k not in ("host", "port")])
    return urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{port}", query=query))


class Relay:
    """Forwards TCP connections to Postgres. `cut` resets every connection and refuses new
    ones; `black_hole` resets them and accepts new ones that are never answered; `freeze`
    keeps every connection open but stops passing bytes (a hung server or a dead network
    path); `restore` resets everything and forwards again."""

    def __init__(self, upstream: Opener) -> None:
        self._upstream = upstream
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.mode = "forward"
        self.port = 0
        self._thawed = asyncio.Event()
        self._thawed.set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        task = asyncio.create_task(self._serve(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if self.mode in ("black_hole", "freeze"):
                while await reader.read(65536):
                    pass
                return
            up_reader, up_writer = await self._upstream()
            self._writers.add(up_writer)
            await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))
        except OSError:
            pass
        finally:
            writer.transport.abort()

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                await self._thawed.wait()
                sink.write(data)
                await sink.drain()
        except OSError:
            pass
        finally:
            sink.transport.abort()

    def _drop_all(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def cut(self) -> None:
        """Refuse connections (the port closes) and reset every open one."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        self._drop_all()

    async def black_hole(self) -> None:
        """Reset every open connection; new ones are accepted and never answered."""
        self.mode = "black_hole"
        self._drop_all()
        if self._server is None:
            await self.start()

    def freeze(self) -> None:
        self.mode = "freeze"
        self._thawed.clear()

    async def restore(self) -> None:
        self.mode = "forward"
        self._drop_all()
        self._thawed.set()
        if self._server is None:
            await self.start()

    async def close(self) -> None:
        await self.cut()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


# -- a switch of our own, on a database of our own --------------------------------------------


@dataclass
class Own:
    url: str
    name: str
    key_file: Path
    clock: FakeClock
    admin_url: str

    def settings(self, **overrides: Any) -> Settings:
        return load_settings(environ={}, key_file=self.key_file, listen_port=0,
                             hold_sweep_interval_s=3600, db_pool_size_min=1,
                             db_pool_size_max=POOL_MAX, db_connect_timeout_s=CONNECT_TIMEOUT_S,
                             db_statement_timeout_s=STATEMENT_TIMEOUT_S, **overrides)

    async def terminal(self, tid: str) -> Terminal:
        conn = await asyncpg.connect(self.url)
        try:
            ik_hex: str = await conn.fetchval(
                "SELECT bdk_id || derivation_id FROM terminal WHERE tid = $1", tid)
        finally:
            await conn.close()
        ik_id = bytes.fromhex(ik_hex)
        bdk = keys.load(self.key_file).bdk(ik_hex[:8])
        return Terminal.from_profile(tid, derive_initial_key(bdk, ik_id), ik_id,
                                     clock=self.clock)

    async def scalar(self, sql: str, *args: object) -> object:
        conn = await asyncpg.connect(self.url)
        try:
            return await conn.fetchval(sql, *args)
        finally:
            await conn.close()


@pytest.fixture
async def own(admin_url: str, demo_template: tuple[str, Path]) -> AsyncIterator[Own]:
    template, key_file = demo_template
    name = await create_database(admin_url, template)
    url = db.with_database(admin_url, name)
    yield Own(url, name, key_file, FakeClock(datetime.now(UTC).replace(microsecond=0)),
              admin_url)
    try:
        if await database_exists(admin_url, name):
            await assert_ledger_ok(url)
    finally:
        await drop_database(admin_url, name)


async def database_exists(admin_url: str, name: str) -> bool:
    conn = await asyncpg.connect(admin_url)
    try:
        return bool(await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name))
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def running(settings: Settings, own: Own, url: str) -> AsyncIterator[Switch]:
    switch = Switch(settings, clock=own.clock, database_url=url)
    await switch.start()
    try:
        yield switch
    finally:
        await switch.stop()


async def connect_to(switch: Switch, terminal: Terminal) -> TerminalClient:
    return await TerminalClient(terminal, timeout_s=15).connect("127.0.0.1", switch.port)


async def txn_count(own: Own) -> int:
    value = await own.scalar("SELECT count(*) FROM txn")
    assert isinstance(value, int)
    return value


async def retry_until_approved(client: TerminalClient, prepared: Prepared[Any, Any],
                               dead_connections: int) -> None:
    """Retransmit until 00. Each pooled connection that died with the database may cost one
    more 91 before the pool has replaced them all; anything but 91 or 00 fails."""
    for _ in range(dead_connections + 1):
        answer = await client.retransmit(prepared)
        assert answer.code in (RC.APPROVED, RC.SWITCH_UNAVAILABLE), answer
        if answer.code is RC.APPROVED:
            return
    raise AssertionError(f"still 91 after {dead_connections + 1} retries")


# -- the tests ---------------------------------------------------------------------------------


async def terminate_backends(conn: asyncpg.Connection) -> int:
    """Terminate every other session on this database (the switch's pool, its sweeper)."""
    rows = await conn.fetch(
        """SELECT pg_terminate_backend(pid) FROM pg_stat_activity
           WHERE datname = current_database() AND pid <> pg_backend_pid()""")
    return len(rows)


ROUNDS = 20


async def test_terminated_backends_then_91_or_success_and_a_retry_succeeds(env: Env) -> None:
    """Each round terminates every backend of the switch, then sends a new 0100 at once.
    Every answer must be 00 (the pool reconnected) or a prompt 91, and retrying the same
    request must reach 00 (each pooled connection that died may cost one 91, so up to the
    pool size). In about a third of the rounds the request meets a dead connection before
    asyncpg has seen it close (InternalClientError), so twenty rounds reach that race."""
    terminal = make_terminal(env, "CAFE0001")
    limit = env.settings.db_connect_timeout_s + SLACK_S
    client = await TerminalClient(terminal, timeout_s=15).connect("127.0.0.1", env.switch.port)
    async with client:
        start = await env.card_balance(1)
        for round_ in range(ROUNDS):
            assert await terminate_backends(env.conn) >= 1
            prepared = terminal.auth(PC.PURCHASE_CLUB, 1_000, club(1), EXP)
            started = time.monotonic()
            answer = await client.send(prepared)
            for _ in range(env.settings.db_pool_size_max):
                assert time.monotonic() - started < limit
                assert answer.code in (RC.APPROVED, RC.SWITCH_UNAVAILABLE), round_
                assert answer.mac_verified
                if answer.code is RC.APPROVED:
                    break
                started = time.monotonic()
                answer = await client.retransmit(prepared)
            assert answer.code is RC.APPROVED, round_
        assert (await env.card_balance(1)).available == start.available - ROUNDS * 1_000
        assert await env.count("txn") == ROUNDS


async def test_backends_terminated_mid_transaction_answer_91_and_leave_nothing_behind(
        env: Env) -> None:
    """A request blocked inside its transaction (we hold a lock it needs) loses its
    connection: it must answer 91, its half-done transaction must vanish, and the same
    request sent again must then succeed exactly once."""
    terminal = make_terminal(env, "CAFE0001")
    card_id = await env.card_id(1)
    start, rows = await env.card_balance(1), await counts(env)
    blocker = await asyncpg.connect(env.url)
    try:
        client = await TerminalClient(terminal, timeout_s=15).connect(
            "127.0.0.1", env.switch.port)
        async with client:
            tx = blocker.transaction()
            await tx.start()
            await blocker.execute(
                "SELECT 1 FROM ledger_account WHERE card_id = $1 AND kind = 'card_rial' "
                "FOR UPDATE", card_id)
            prepared = terminal.auth(PC.PURCHASE_CLUB, 25_000, club(1), EXP)
            pending = asyncio.create_task(client.send(prepared))
            await wait_for_lock_waiter(env.conn)
            killed = await env.conn.fetch(
                """SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                   WHERE datname = current_database() AND wait_event_type = 'Lock'""")
            assert killed
            answer = await asyncio.wait_for(pending, env.settings.db_connect_timeout_s + SLACK_S)
            assert answer.code is RC.SWITCH_UNAVAILABLE
            await tx.rollback()
            assert await counts(env) == rows, "nothing of the broken transaction remains"
            assert await env.card_balance(1) == start
            await retry_until_approved(client, prepared, env.settings.db_pool_size_max)
            assert (await env.card_balance(1)).available == start.available - 25_000
            assert (await counts(env))["txn"] == rows["txn"] + 1
    finally:
        await blocker.close()


async def wait_for_lock_waiter(conn: asyncpg.Connection, timeout_s: float = 10) -> None:
    """Until some session of this database waits for a lock (nothing to await: poll)."""
    deadline = time.monotonic() + timeout_s
    while not await conn.fetchval(
            """SELECT count(*) FROM pg_stat_activity
               WHERE datname = current_database() AND wait_event_type = 'Lock'"""):
        assert time.monotonic() < deadline, "the request never reached the lock"
        await asyncio.sleep(0.01)


async def test_unreachable_database_answers_91_promptly_and_recovers(own: Own) -> None:
    relay = Relay(upstream_of(own.url))
    await relay.start()
    try:
        async with running(own.settings(), own, via(own.url, relay.port)) as switch:
            terminal = await own.terminal("CAFE0001")
            async with await connect_to(switch, terminal) as client:
                response, _ = await client.purchase(10_000, club(1), EXP)
                assert response.code is RC.APPROVED
                before = await txn_count(own)

                await relay.cut()  # connection refused from now on
                prepared = terminal.auth(PC.PURCHASE_CLUB, 20_000, club(1), EXP)
                started = time.monotonic()
                answer = await client.send(prepared)
                assert answer.code is RC.SWITCH_UNAVAILABLE
                assert answer.mac_verified
                assert time.monotonic() - started < CONNECT_TIMEOUT_S + SLACK_S
                assert await txn_count(own) == before

                await relay.restore()
                await retry_until_approved(client, prepared, POOL_MAX)
                assert await txn_count(own) == before + 1
    finally:
        await relay.close()


async def test_database_that_never_answers_gives_91_within_the_connect_timeout(
        own: Own) -> None:
    relay = Relay(upstream_of(own.url))
    await relay.start()
    try:
        async with running(own.settings(), own, via(own.url, relay.port)) as switch:
            terminal = await own.terminal("CAFE0001")
            async with await connect_to(switch, terminal) as client:
                response, _ = await client.purchase(10_000, club(1), EXP)
                assert response.code is RC.APPROVED
                before = await txn_count(own)

                await relay.black_hole()  # connects hang, nothing is ever answered
                prepared = terminal.auth(PC.PURCHASE_CLUB, 20_000, club(1), EXP)
                started = time.monotonic()
                answer = await client.send(prepared)
                assert answer.code is RC.SWITCH_UNAVAILABLE
                assert time.monotonic() - started < CONNECT_TIMEOUT_S + SLACK_S

                await relay.restore()
                await retry_until_approved(client, prepared, POOL_MAX)
                assert await txn_count(own) == before + 1
                await relay.cut()  # let the switch's pool close without waiting on us
                await relay.restore()
    finally:
        await relay.close()


async def test_frozen_database_mid_request_gives_91_within_the_statement_timeout(
        own: Own) -> None:
    relay = Relay(upstream_of(own.url))
    await relay.start()
    try:
        async with running(own.settings(), own, via(own.url, relay.port)) as switch:
            terminal = await own.terminal("CAFE0001")
            async with await connect_to(switch, terminal) as client:
                response, _ = await client.purchase(10_000, club(1), EXP)
                assert response.code is RC.APPROVED
                before = await txn_count(own)

                relay.freeze()  # pooled connections stay open; nothing comes back
                prepared = terminal.auth(PC.PURCHASE_CLUB, 20_000, club(1), EXP)
                started = time.monotonic()
                answer = await client.send(prepared)
                elapsed = time.monotonic() - started
                assert answer.code is RC.SWITCH_UNAVAILABLE
                assert elapsed < STATEMENT_TIMEOUT_S + CONNECT_TIMEOUT_S + SLACK_S

                await relay.restore()
                await retry_until_approved(client, prepared, POOL_MAX)
                assert await txn_count(own) == before + 1
    finally:
        await relay.close()


@pytest.mark.parametrize("how", ["drop", "disallow"])
async def test_database_gone_or_closed_to_connections_answers_91(own: Own, how: str) -> None:
    async with running(own.settings(), own, own.url) as switch:
        terminal = await own.terminal("CAFE0001")
        async with await connect_to(switch, terminal) as client:
            response, _ = await client.purchase(10_000, club(1), EXP)
            assert response.code is RC.APPROVED
            admin = await asyncpg.connect(own.admin_url)
            try:
                if how == "drop":
                    await admin.execute(f'DROP DATABASE "{own.name}" WITH (FORCE)')
                else:
                    await admin.execute(
                        f'ALTER DATABASE "{own.name}" ALLOW_CONNECTIONS false')
                    await terminate_backends_of(admin, own.name)
                started = time.monotonic()
                prepared = terminal.auth(PC.PURCHASE_CLUB, 10_000, club(1), EXP)
                answer = await client.send(prepared)
                elapsed = time.monotonic() - started
                codes = [answer.code, (await client.echo()).code]
                if how == "disallow":
                    await admin.execute(f'ALTER DATABASE "{own.name}" ALLOW_CONNECTIONS true')
                    await retry_until_approved(client, prepared, POOL_MAX)
            finally:
                await admin.close()
            assert codes == [RC.SWITCH_UNAVAILABLE] * 2, codes
            assert elapsed < CONNECT_TIMEOUT_S + SLACK_S


async def terminate_backends_of(admin: asyncpg.Connection, name: str) -> None:
    await admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name)


async def test_one_terminals_stuck_requests_do_not_starve_other_terminals(env: Env) -> None:
    """A terminal's requests queue for its per-terminal lock; while one of them is stuck
    in the database, the others must not hold every pooled connection, or every other
    terminal gets 91 too."""
    stuck = make_terminal(env, "CAFE0001")
    other = make_terminal(env, "HYPR0001")
    blocker = await asyncpg.connect(env.url)
    tx = blocker.transaction()
    await tx.start()
    try:
        # Hold CAFE0001's terminal row: its next request waits on it (advance_counter).
        await blocker.execute("SELECT 1 FROM terminal WHERE tid = 'CAFE0001' FOR UPDATE")
        stuck_client = await TerminalClient(stuck, timeout_s=15).connect(
            "127.0.0.1", env.switch.port)
        other_client = await TerminalClient(other, timeout_s=15).connect(
            "127.0.0.1", env.switch.port)
        async with stuck_client, other_client:
            queue = [stuck.echo() for _ in range(env.settings.db_pool_size_max + 2)]
            queued = asyncio.create_task(stuck_client.send_many(queue))
            await wait_for_lock_waiter(env.conn)
            started = time.monotonic()
            answer = await other_client.echo()
            elapsed = time.monotonic() - started
            await tx.rollback()
            await queued
            assert answer.code is RC.APPROVED, f"{answer.code} after {elapsed:.1f} s"
    finally:
        with contextlib.suppress(asyncpg.InterfaceError):
            await tx.rollback()
        await blocker.close()


async def test_a_lost_transaction_leaves_no_stale_account_id_behind(env: Env) -> None:
    """Member 4 has network credit but no café credit account yet. A store-credit purchase
    at the café creates that account (then reads it again) before it blocks on the
    network's credit account, which we hold. Its backend is terminated there: 91, and the
    new account is rolled back with everything else. The switch must not remember the
    rolled-back account: the same request sent again must succeed."""
    terminal = make_terminal(env, "CAFE0001")
    card_id = await env.card_id(4)
    network_id = await env.conn.fetchval("SELECT id FROM store_network WHERE code = 'demo'")
    assert not await env.conn.fetchval(
        "SELECT 1 FROM ledger_account WHERE kind = 'card_credit' AND card_id = $1 "
        "AND merchant_id IS NOT NULL", card_id), "member 4 has no café credit account yet"
    rows = await counts(env)
    blocker = await asyncpg.connect(env.url)
    try:
        client = await TerminalClient(terminal, timeout_s=15).connect(
            "127.0.0.1", env.switch.port)
        async with client:
            tx = blocker.transaction()
            await tx.start()
            await blocker.execute(
                "SELECT 1 FROM ledger_account WHERE key = $1 FOR UPDATE",
                f"credit_issued:n{network_id}")
            prepared = terminal.auth(PC.PURCHASE_STORE_CREDIT, 1_000, club(4), EXP)
            pending = asyncio.create_task(client.send(prepared))
            await wait_for_lock_waiter(env.conn)
            await env.conn.execute(
                """SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                   WHERE datname = current_database() AND wait_event_type = 'Lock'""")
            answer = await asyncio.wait_for(pending, env.settings.db_connect_timeout_s + SLACK_S)
            assert answer.code is RC.SWITCH_UNAVAILABLE
            await tx.rollback()
            assert await counts(env) == rows
            await retry_until_approved(client, prepared, env.settings.db_pool_size_max)
            inquiry = await client.balance(club(4), EXP,
                                           processing_code=PC.BALANCE_INQUIRY_STORE_CREDIT)
            assert inquiry.code is RC.APPROVED
    finally:
        await blocker.close()
