"""The double-entry ledger against a real Postgres: its Python API, the rules the database
itself enforces, and its behaviour under concurrent callers.

Time is never waited for: every call that cares takes `now`, and tests pass datetimes.
Concurrent tests make their racers queue behind a row lock held by a third connection, then
release it, so the race is real on every run rather than left to scheduling luck.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar, cast

import asyncpg
import pytest

from switch import ledger
from switch.ledger import Balance, Status, Unit

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
TIMEOUT = timedelta(minutes=2)
TICK = timedelta(microseconds=1)

_card_numbers = itertools.count(1)


async def new_card(conn: asyncpg.Connection) -> int:
    """A card row (card accounts reference one), in a network and member of its own."""
    n = str(next(_card_numbers))
    card_id: int = await conn.fetchval(
        """WITH n AS (INSERT INTO store_network (code, name, club_bin)
                      VALUES ('n' || $1, 'Test network', lpad($1, 6, '0')) RETURNING id),
                m AS (INSERT INTO member (network_id, first_name, last_name, mobile)
                      SELECT id, 'Test', 'Holder', '09' || lpad($1, 9, '0') FROM n
                      RETURNING id, network_id)
           INSERT INTO card (network_id, member_id, pan_hash, pan_bin, pan_last4, expiry)
           SELECT network_id, id, sha256(convert_to($1, 'UTF8')), lpad($1, 6, '0'), '0000',
                  '3012'
           FROM m RETURNING id""", n)
    return card_id


async def other_account(conn: asyncpg.Connection, name: str) -> int:
    """An IRR account without an overdraft limit (a sponsor's discount funding)."""
    return await ledger.account_id(conn, ledger.discount_funding(sponsor=name))


async def card_account(conn: asyncpg.Connection, funded: int = 0) -> int:
    """A new card's rial account, topped up with `funded` rials from the bank."""
    account = await ledger.account_id(conn, ledger.card_rial(await new_card(conn)))
    if funded:
        bank = await other_account(conn, "bank")
        topup = [(bank, funded), (account, -funded)]
        assert (await ledger.transfer(conn, Unit.IRR, "topup", topup)).ok
    return account


def balance(credits_posted: int = 0, debits_posted: int = 0, *, credits_pending: int = 0,
            debits_pending: int = 0) -> Balance:
    return Balance(debits_pending=debits_pending, debits_posted=debits_posted,
                   credits_pending=credits_pending, credits_posted=credits_posted)


@pytest.fixture
async def card(conn) -> int:
    """A card account holding 1,000 rials."""
    return await card_account(conn, funded=1_000)


@pytest.fixture
async def shop(conn) -> int:
    return await other_account(conn, "shop")


async def hold(conn, card: int, shop: int, amount: int, timeout_at: datetime = T0 + TIMEOUT
               ) -> int:
    result = await ledger.hold(conn, Unit.IRR, "purchase", debit=card, credit=shop,
                               amount=amount, timeout_at=timeout_at)
    assert result.ok and result.transfer_id is not None
    return result.transfer_id


async def transfer_count(conn) -> int:
    count: int = await conn.fetchval("SELECT count(*) FROM ledger_transfer")
    return count


# --- Immediate transfers --------------------------------------------------------------------

async def test_transfer_moves_posted_totals(conn, card, shop):
    result = await ledger.transfer(conn, Unit.IRR, "purchase", [(card, 400), (shop, -400)],
                                   ref="rrn-1")
    assert result.ok and result.transfer_id is not None
    assert await ledger.balance(conn, card) == balance(1_000, 400)
    assert await ledger.balance(conn, shop) == balance(400)
    row = await conn.fetchrow("SELECT kind, amount, ref FROM ledger_transfer WHERE id = $1",
                              result.transfer_id)
    assert tuple(row) == ("single", 400, "rrn-1")


async def test_unbalanced_transfer_is_refused_before_the_database(conn, card, shop):
    with pytest.raises(AssertionError, match="balance"):
        await ledger.transfer(conn, Unit.IRR, "purchase", [(card, 10), (shop, -9)])
    assert await transfer_count(conn) == 1  # the top-up only


@pytest.mark.parametrize("amounts", [
    pytest.param([10, -9], id="unbalanced"),
    pytest.param([10, -10, 0], id="zero-entry"),
    pytest.param([0], id="single-entry"),
])
async def test_database_refuses_malformed_transfer(conn, card, shop, amounts):
    accounts = [card, shop, shop][:len(amounts)]
    with pytest.raises(asyncpg.RaiseError, match="non-zero entries summing to zero"):
        await conn.fetchrow("SELECT * FROM ledger_transfer_create('IRR', 'x', NULL, $1, $2)",
                            accounts, amounts)
    assert await ledger.balance(conn, shop) == balance()


async def test_unknown_account_raises(conn, card):
    with pytest.raises(asyncpg.RaiseError, match="unknown account or unit mismatch"):
        await ledger.transfer(conn, Unit.IRR, "purchase", [(card, 5), (999_999, -5)])
    with pytest.raises(asyncpg.RaiseError, match="unknown account or unit mismatch"):
        await ledger.hold(conn, Unit.IRR, "purchase", debit=card, credit=999_999, amount=5,
                          timeout_at=T0)


async def test_unit_mismatch_raises(conn, card):
    points = await ledger.account_id(conn, ledger.card_points(await new_card(conn)))
    with pytest.raises(asyncpg.RaiseError, match="unknown account or unit mismatch"):
        await ledger.transfer(conn, Unit.IRR, "purchase", [(card, 5), (points, -5)])
    with pytest.raises(asyncpg.RaiseError, match="unknown account or unit mismatch"):
        await ledger.transfer(conn, Unit.PTS, "purchase", [(card, 5), (points, -5)])
    with pytest.raises(asyncpg.RaiseError, match="unknown account or unit mismatch"):
        await ledger.hold(conn, Unit.IRR, "purchase", debit=card, credit=points, amount=5,
                          timeout_at=T0)
    assert await ledger.balance(conn, card) == balance(1_000)


async def test_account_id_is_get_or_create(conn):
    card_id = await new_card(conn)
    rial = await ledger.account_id(conn, ledger.card_rial(card_id))
    assert await ledger.account_id(conn, ledger.card_rial(card_id)) == rial
    points = await ledger.account_id(conn, ledger.card_points(card_id))
    sponsor = await other_account(conn, "sponsor")
    assert len({rial, points, sponsor}) == 3
    rows = await conn.fetch("""SELECT id, unit, debits_must_not_exceed_credits
                               FROM ledger_account ORDER BY id""")
    assert [tuple(r) for r in rows] == [
        (rial, "IRR", True), (points, "PTS", True), (sponsor, "IRR", False)]
    assert await ledger.balance(conn, rial) == balance()


async def test_transfer_that_would_overdraw_a_card_is_declined(conn, card, shop):
    before = await transfer_count(conn)
    result = await ledger.transfer(conn, Unit.IRR, "purchase", [(card, 1_001), (shop, -1_001)])
    assert result == ledger.Result(Status.EXCEEDS_CREDITS, None)
    assert await transfer_count(conn) == before
    assert await ledger.balance(conn, card) == balance(1_000)
    assert (await ledger.transfer(conn, Unit.IRR, "purchase", [(card, 1_000), (shop, -1_000)])).ok
    assert (await ledger.balance(conn, card)).available == 0


async def test_overdraft_is_judged_on_each_accounts_net_debit(conn, card, shop):
    split = [(card, 600), (card, 600), (shop, -1_200)]
    assert (await ledger.transfer(conn, Unit.IRR, "purchase", split)).status \
        is Status.EXCEEDS_CREDITS
    refund_in_same_transfer = [(card, 1_500), (card, -600), (shop, -900)]
    assert (await ledger.transfer(conn, Unit.IRR, "purchase", refund_in_same_transfer)).ok
    assert await ledger.balance(conn, card) == balance(1_600, 1_500)


async def test_transfer_counts_pending_debits(conn, card, shop):
    await hold(conn, card, shop, 700)
    result = await ledger.transfer(conn, Unit.IRR, "purchase", [(card, 301), (shop, -301)])
    assert result.status is Status.EXCEEDS_CREDITS
    assert (await ledger.transfer(conn, Unit.IRR, "purchase", [(card, 300), (shop, -300)])).ok


# --- Holds ------------------------------------------------------------------------------------

async def test_hold_reduces_available_but_not_ledger_balance(conn, card, shop):
    await hold(conn, card, shop, 300)
    card_balance = await ledger.balance(conn, card)
    assert card_balance == balance(1_000, debits_pending=300)
    assert (card_balance.ledger, card_balance.available) == (1_000, 700)
    assert await ledger.balance(conn, shop) == balance(credits_pending=300)


async def test_hold_beyond_available_is_declined_and_changes_nothing(conn, card, shop):
    await hold(conn, card, shop, 700)
    before = await transfer_count(conn)
    result = await ledger.hold(conn, Unit.IRR, "purchase", debit=card, credit=shop, amount=301,
                               timeout_at=T0 + TIMEOUT)
    assert result == ledger.Result(Status.EXCEEDS_CREDITS, None)
    assert await transfer_count(conn) == before
    assert await ledger.balance(conn, card) == balance(1_000, debits_pending=700)
    await hold(conn, card, shop, 300)  # exactly what is left
    assert (await ledger.balance(conn, card)).available == 0


@pytest.mark.parametrize(("amount", "posted"), [(None, 300), (300, 300), (120, 120)])
async def test_post_moves_the_posted_amount_and_releases_the_rest(conn, card, shop, amount,
                                                                  posted):
    pending = await hold(conn, card, shop, 300)
    result = await ledger.post(conn, pending, T0, amount)
    assert result.ok and result.transfer_id is not None
    assert await ledger.balance(conn, card) == balance(1_000, posted)
    assert await ledger.balance(conn, shop) == balance(posted)
    row = await conn.fetchrow("SELECT kind, amount, pending_id FROM ledger_transfer WHERE id = $1",
                              result.transfer_id)
    assert tuple(row) == ("post", posted, pending)


@pytest.mark.parametrize("amount", [301, 0])
async def test_post_outside_the_hold_is_exceeds_pending_and_keeps_the_hold(conn, card, shop,
                                                                           amount):
    pending = await hold(conn, card, shop, 300)
    assert (await ledger.post(conn, pending, T0, amount)).status is Status.EXCEEDS_PENDING
    assert await ledger.balance(conn, card) == balance(1_000, debits_pending=300)
    assert (await ledger.post(conn, pending, T0, 300)).ok


async def test_void_releases_the_whole_hold(conn, card, shop):
    pending = await hold(conn, card, shop, 300)
    assert (await ledger.void(conn, pending, T0)).ok
    assert await ledger.balance(conn, card) == balance(1_000)
    assert await ledger.balance(conn, shop) == balance()


async def test_post_at_or_after_timeout_expires_the_hold_for_good(conn, card, shop):
    pending = await hold(conn, card, shop, 300)
    assert (await ledger.post(conn, pending, T0 + TIMEOUT)).status is Status.EXPIRED
    assert await ledger.balance(conn, card) == balance(1_000)
    assert await ledger.balance(conn, shop) == balance()
    assert await conn.fetchval("SELECT status FROM ledger_transfer WHERE id = $1",
                               pending) == "expired"
    for late in (ledger.post(conn, pending, T0), ledger.void(conn, pending, T0),
                 ledger.expire(conn, pending, T0 + TIMEOUT)):
        assert (await late).status is Status.ALREADY_EXPIRED


async def test_post_just_before_timeout_succeeds(conn, card, shop):
    pending = await hold(conn, card, shop, 300)
    assert (await ledger.post(conn, pending, T0 + TIMEOUT - TICK)).ok


async def test_expire_before_timeout_is_refused(conn, card, shop):
    pending = await hold(conn, card, shop, 300)
    assert (await ledger.expire(conn, pending, T0 + TIMEOUT - TICK)).status \
        is Status.NOT_EXPIRED
    assert await ledger.balance(conn, card) == balance(1_000, debits_pending=300)
    assert (await ledger.expire(conn, pending, T0 + TIMEOUT)).ok
    assert await ledger.balance(conn, card) == balance(1_000)


Action = Callable[[asyncpg.Connection, int], Awaitable[ledger.Result]]
ACTIONS: dict[str, Action] = {
    "post": lambda conn, pending: ledger.post(conn, pending, T0, 100),
    "void": lambda conn, pending: ledger.void(conn, pending, T0),
    "expire": lambda conn, pending: ledger.expire(conn, pending, T0 + TIMEOUT),
}
ALREADY = {"post": Status.ALREADY_POSTED, "void": Status.ALREADY_VOIDED,
           "expire": Status.ALREADY_EXPIRED}


@pytest.mark.parametrize("first", ACTIONS)
@pytest.mark.parametrize("second", ACTIONS)
async def test_a_hold_is_resolved_at_most_once(conn, card, shop, first, second):
    pending = await hold(conn, card, shop, 300)
    assert (await ACTIONS[first](conn, pending)).ok
    after_first = await ledger.balance(conn, card)
    result = await ACTIONS[second](conn, pending)
    assert result == ledger.Result(ALREADY[first], None)
    assert await ledger.balance(conn, card) == after_first


async def test_resolving_what_is_not_a_hold_is_not_found(conn, card, shop):
    single = await ledger.transfer(conn, Unit.IRR, "purchase", [(card, 5), (shop, -5)])
    assert single.transfer_id is not None
    for not_a_hold in (single.transfer_id, 999_999):
        assert (await ledger.post(conn, not_a_hold, T0)).status is Status.NOT_FOUND
        assert (await ledger.void(conn, not_a_hold, T0)).status is Status.NOT_FOUND


async def test_expire_due_expires_due_holds_oldest_first_up_to_limit(conn, card, shop):
    due = [await hold(conn, card, shop, 10, T0 + timedelta(minutes=m)) for m in (3, 1, 2)]
    later = await hold(conn, card, shop, 10, T0 + timedelta(minutes=4))
    now = T0 + timedelta(minutes=3)
    assert await ledger.expire_due(conn, now, limit=2) == [due[1], due[2]]
    assert await ledger.expire_due(conn, now, limit=2) == [due[0]]
    assert await ledger.expire_due(conn, now, limit=2) == []
    assert await ledger.balance(conn, card) == balance(1_000, debits_pending=10)
    assert (await ledger.post(conn, later, now)).ok


# --- What the database enforces for every writer ----------------------------------------------

@pytest.mark.parametrize("change", ["debits_posted = debits_posted + 1001",
                                    "debits_pending = debits_pending + 1001"])
async def test_database_refuses_a_direct_overdraft(conn, card, change):
    with pytest.raises(asyncpg.CheckViolationError) as refused:
        await conn.execute(f"UPDATE ledger_account SET {change} WHERE id = $1", card)
    assert refused.value.constraint_name == "ledger_account_no_overdraft"
    assert await ledger.balance(conn, card) == balance(1_000)


async def test_database_refuses_running_totals_on_accounts_that_derive_them(conn, shop):
    with pytest.raises(asyncpg.CheckViolationError) as refused:
        await conn.execute("UPDATE ledger_account SET credits_posted = 1 WHERE id = $1", shop)
    assert refused.value.constraint_name == "ledger_account_derived_keeps_no_totals"


@pytest.mark.parametrize("statement", [
    "UPDATE ledger_entry SET amount = amount * 2",
    "DELETE FROM ledger_entry",
    "UPDATE ledger_transfer SET amount = amount * 2",
    "DELETE FROM ledger_transfer",
    "UPDATE ledger_transfer SET status = 'posted', amount = 1 WHERE kind = 'pending'",
    "UPDATE ledger_transfer SET status = 'pending' WHERE kind = 'pending'",
])
async def test_ledger_rows_are_append_only(conn, card, shop, statement):
    await hold(conn, card, shop, 300)
    snapshot = "SELECT t, e FROM ledger_transfer t JOIN ledger_entry e ON e.transfer_id = t.id"
    before = await conn.fetch(snapshot)
    with pytest.raises(asyncpg.PostgresError) as refused:
        await conn.execute(statement)
    assert await conn.fetch(snapshot) == before
    with pytest.raises(asyncpg.RaiseError, match="ledger is append-only"):
        raise refused.value  # refused by the trigger's own check, not by accident


# --- Concurrency ------------------------------------------------------------------------------
# Racers queue behind a row lock that `conn` holds in a transaction; `observer` (outside any
# transaction, so it sees fresh activity) tells when they are all waiting; then the lock goes.

WAITING_ON_LOCKS = """SELECT count(*) FROM pg_stat_activity
                      WHERE datname = current_database() AND wait_event_type = 'Lock'"""
T = TypeVar("T")


@pytest.fixture
async def observer(db_url) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(db_url)
    yield connection
    await connection.close()


async def race_behind_lock(conn: asyncpg.Connection, observer: asyncpg.Connection,
                           locked: tuple[str, int], racers: list[Awaitable[T]], queued: int
                           ) -> list[T]:
    """Start `racers` while `conn` locks the row `locked` (table, id); let go once `queued` of
    them wait on it. Returns their results, or raises the first failure once all have ended."""
    table, row_id = locked
    async with conn.transaction():
        await conn.execute(f"SELECT FROM {table} WHERE id = $1 FOR UPDATE", row_id)
        race = asyncio.gather(*racers, return_exceptions=True)
        await until_queued(observer, queued, race)
    results = await race
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return cast(list[T], results)


async def until_queued(observer: asyncpg.Connection, sessions: int,
                       race: asyncio.Future[list[Any]]) -> None:
    """Return once `sessions` sessions wait on a lock, or once a racer has failed (awaiting
    the race raises why). Polls the server; never sleeps."""
    for _ in range(20_000):
        if race.done():
            assert any(isinstance(r, BaseException) for r in race.result()), \
                "the racers finished without queuing behind the lock: no race was run"
            return
        if await observer.fetchval(WAITING_ON_LOCKS) >= sessions:
            return
    raise AssertionError(f"{sessions} sessions never queued on the lock")


async def test_concurrent_holds_never_overdraw(conn, observer, pool, card, shop):
    amount, attempts, fits = 70, 50, 1_000 // 70

    async def try_hold() -> Status:
        async with pool.acquire() as c:
            result = await ledger.hold(c, Unit.IRR, "purchase", debit=card, credit=shop,
                                       amount=amount, timeout_at=T0 + TIMEOUT)
            return result.status

    statuses = await race_behind_lock(conn, observer, ("ledger_account", card),
                                      [try_hold() for _ in range(attempts)], queued=10)
    assert statuses.count(Status.OK) == fits
    assert statuses.count(Status.EXCEEDS_CREDITS) == attempts - fits
    card_balance = await ledger.balance(conn, card)
    assert card_balance == balance(1_000, debits_pending=amount * fits)
    assert card_balance.available >= 0


async def test_concurrent_post_and_void_of_one_hold_exactly_one_wins(conn, observer, pool, card,
                                                                      shop):
    pending = await hold(conn, card, shop, 300)
    async with pool.acquire() as poster, pool.acquire() as voider:
        posted, voided = await race_behind_lock(
            conn, observer, ("ledger_transfer", pending),
            [ledger.post(poster, pending, T0), ledger.void(voider, pending, T0)], queued=2)
    if posted.ok:
        assert voided.status is Status.ALREADY_POSTED
        assert await ledger.balance(conn, card) == balance(1_000, 300)
    else:
        assert voided.ok and posted.status is Status.ALREADY_VOIDED
        assert await ledger.balance(conn, card) == balance(1_000)
    resolutions = await conn.fetchval(
        "SELECT count(*) FROM ledger_transfer WHERE pending_id = $1", pending)
    assert resolutions == 1


async def sweep(conn: asyncpg.Connection, now: datetime) -> list[int]:
    """What a sweeper does: expire due holds in batches until none is left to it."""
    swept: list[int] = []
    while batch := await ledger.expire_due(conn, now, limit=10):
        swept += batch
    return swept


async def sweep_concurrently(conn, observer, pool, blocked_card: int, now: datetime
                             ) -> tuple[list[int], list[int]]:
    """Two sweepers, both queued behind a lock on `blocked_card`, then let go."""
    async with pool.acquire() as a, pool.acquire() as b:
        swept_a, swept_b = await race_behind_lock(
            conn, observer, ("ledger_account", blocked_card),
            [sweep(a, now), sweep(b, now)], queued=2)
    return swept_a, swept_b


async def test_concurrent_expire_due_expires_each_hold_exactly_once(conn, observer, pool, shop):
    cards = [await card_account(conn, funded=1_000) for _ in range(3)]
    due = [await hold(conn, cards[i % 3], shop, 10, T0 + timedelta(seconds=i))
           for i in range(30)]
    not_due = await hold(conn, cards[0], shop, 10, T0 + TIMEOUT)
    swept_a, swept_b = await sweep_concurrently(conn, observer, pool, cards[0],
                                                T0 + timedelta(minutes=1))
    assert swept_a and swept_b, "both sweepers expired something"
    assert not set(swept_a) & set(swept_b)
    assert sorted(swept_a + swept_b) == due
    statuses = await conn.fetch("SELECT id, status FROM ledger_transfer WHERE kind = 'pending'")
    assert {r["id"]: r["status"] for r in statuses} == {
        **dict.fromkeys(due, "expired"), not_due: "pending"}
    pending_debits = [(await ledger.balance(conn, account)).debits_pending for account in cards]
    assert pending_debits == [10, 0, 0]  # not_due's


async def test_concurrent_sweepers_do_not_deadlock(conn, observer, pool):
    """Holds on several cards at a shop opened after them, so that the sweepers' timeout
    order is not the accounts' id order (each sweep once kept its locks in that order and two
    sweepers deadlocked)."""
    cards = [await card_account(conn, funded=1_000) for _ in range(3)]
    shop = await other_account(conn, "shop")
    due = [await hold(conn, cards[i % 3], shop, 10, T0 + timedelta(seconds=i))
           for i in range(30)]
    swept_a, swept_b = await sweep_concurrently(conn, observer, pool, cards[0],
                                                T0 + timedelta(minutes=1))
    assert sorted(swept_a + swept_b) == due
