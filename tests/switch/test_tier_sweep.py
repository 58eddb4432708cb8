"""The sweeper's periodic tier review (migrations/0016_tier_sweep.sql, its spacing a setting
since 0018_tier_review_interval.sql): a member who stops buying loses one tier per review
interval (30 days by default), in bounded batches of `tier_review_batch_max`; one whose tier
is still earned keeps it; two sweepers never review one card twice. Real Postgres, the clock
passed in, concurrency ordered by explicit transactions (no sleeps)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from switch import store
from switch.sweeper import sweep_all
from tests.conftest import sweep_limits

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
MONTH = timedelta(days=30)  # the default tier_review_interval_days


async def network(conn: asyncpg.Connection, code: str, bin_: str, gold_spend_rial: int) -> int:
    network_id: int = await conn.fetchval(
        "INSERT INTO store_network (code, name, club_bin) VALUES ($1, 'N', $2) RETURNING id",
        code, bin_)
    await conn.execute(
        "INSERT INTO tier_policy (network_id, bronze_spend_rial, silver_spend_rial,"
        " gold_spend_rial) VALUES ($1, 0, $2, $2)", network_id, gold_spend_rial)
    return network_id


async def gold_card(conn: asyncpg.Connection, network_id: int, n: int) -> int:
    card_id: int = await conn.fetchval(
        """WITH m AS (INSERT INTO member (network_id, first_name, last_name, mobile)
                      VALUES ($1, 'A', 'B', $3) RETURNING id)
           INSERT INTO card (network_id, member_id, pan_hash, pan_bin, pan_last4, expiry,
                             tier)
           SELECT $1, m.id, $2, '603799', '1234', '3012', 'gold' FROM m RETURNING id""",
        network_id, bytes([n]) * 32, f"0912{n:07d}")
    return card_id


async def tier(conn: asyncpg.Connection, card_id: int) -> str:
    name: str = await conn.fetchval("SELECT tier FROM card WHERE id = $1", card_id)
    return name


async def test_an_idle_gold_member_steps_down_once_per_30_days(conn):
    card = await gold_card(conn, await network(conn, "idle", "990101", 1_000_000), 1)
    assert await store.sweep_tiers(conn, NOW, 10, MONTH) == 1
    assert await tier(conn, card) == "silver"
    assert await store.sweep_tiers(conn, NOW + timedelta(days=29), 10, MONTH) == 0
    assert await tier(conn, card) == "silver"
    assert await store.sweep_tiers(conn, NOW + MONTH, 10, MONTH) == 1
    assert await tier(conn, card) == "bronze"


async def test_a_member_whose_tier_is_still_earned_keeps_it(conn):
    card = await gold_card(conn, await network(conn, "kept", "990102", 0), 2)
    assert await store.sweep_tiers(conn, NOW, 10, MONTH) == 1
    assert await tier(conn, card) == "gold"


async def test_a_network_without_policy_is_left_alone(conn):
    network_id: int = await conn.fetchval(
        "INSERT INTO store_network (code, name, club_bin) VALUES ('free', 'N', '990103')"
        " RETURNING id")
    card = await gold_card(conn, network_id, 3)
    assert await store.sweep_tiers(conn, NOW, 10, MONTH) == 0
    assert await tier(conn, card) == "gold"


async def test_a_batch_reviews_at_most_batch_max_cards(conn):
    network_id = await network(conn, "batch", "990104", 1_000_000)
    cards = [await gold_card(conn, network_id, n) for n in range(4, 7)]
    assert await store.sweep_tiers(conn, NOW, 2, MONTH) == 2
    assert sorted([await tier(conn, c) for c in cards]) == ["gold", "silver", "silver"]
    assert await store.sweep_tiers(conn, NOW, 2, MONTH) == 1
    assert await store.sweep_tiers(conn, NOW, 2, MONTH) == 0
    assert [await tier(conn, c) for c in cards] == ["silver"] * 3


async def swept_at(conn: asyncpg.Connection, card_id: int) -> datetime | None:
    at: datetime | None = await conn.fetchval(
        "SELECT tier_swept_at FROM card WHERE id = $1", card_id)
    return at


async def test_a_card_is_reviewed_again_only_once_its_interval_has_passed(conn, pool):
    """The spacing is `tier_review_interval_days` (7 here, not the 30 that 0016 fixed),
    through the sweeper's round as the switch runs it."""
    card = await gold_card(conn, await network(conn, "week", "990105", 1_000_000), 7)
    week = sweep_limits(tier_review_interval_days=7)
    await sweep_all(pool, NOW, week)
    assert (await tier(conn, card), await swept_at(conn, card)) == ("silver", NOW)
    await sweep_all(pool, NOW + timedelta(days=7, microseconds=-1), week)
    assert (await tier(conn, card), await swept_at(conn, card)) == ("silver", NOW)
    await sweep_all(pool, NOW + timedelta(days=7), week)
    assert (await tier(conn, card), await swept_at(conn, card)) == (
        "bronze", NOW + timedelta(days=7))


async def test_a_spacing_that_is_not_positive_is_refused_and_changes_nothing(conn):
    card = await gold_card(conn, await network(conn, "zero", "990106", 1_000_000), 8)
    for spacing in (timedelta(0), timedelta(days=-1)):
        with pytest.raises(asyncpg.RaiseError, match="interval must be positive"):
            await store.sweep_tiers(conn, NOW, 10, spacing)
    assert (await tier(conn, card), await swept_at(conn, card)) == ("gold", None)


async def test_the_fixed_30_day_signature_is_gone(conn):
    with pytest.raises(asyncpg.UndefinedFunctionError):
        await conn.fetchval("SELECT switch_sweep_tiers(now(), 10)")


async def test_two_sweepers_review_each_due_card_exactly_once(conn, db_url):
    """Sweeper A claims a batch of 2 in a transaction it keeps open; sweeper B, on its own
    connection, meanwhile skips A's locked cards (it must not wait: its lock_timeout would
    fail it) and reviews the other 3 due ones. A card reviewed yesterday is left to both.
    Each sweeper stamps its own time, so tier_swept_at tells who reviewed a card."""
    network_id = await network(conn, "pair", "990107", 1_000_000)
    due = [await gold_card(conn, network_id, n) for n in range(20, 25)]
    recent = await gold_card(conn, network_id, 25)
    yesterday = NOW - timedelta(days=1)
    await conn.execute("UPDATE card SET tier_swept_at = $2 WHERE id = $1", recent, yesterday)
    at_a, at_b = NOW, NOW + timedelta(seconds=1)
    a, b = await asyncpg.connect(db_url), await asyncpg.connect(db_url)
    try:
        await b.execute("SET lock_timeout = '5s'")
        async with a.transaction():
            assert await store.sweep_tiers(a, at_a, 2, MONTH) == 2
            by_a = set(await a.fetchval(
                "SELECT array_agg(id) FROM card WHERE tier_swept_at = $1", at_a))
            assert await store.sweep_tiers(b, at_b, 10, MONTH) == 3
            # A has not committed: the others see B's three reviews only.
            assert {c: await swept_at(conn, c) for c in due} == {
                c: None if c in by_a else at_b for c in due}
        assert await store.sweep_tiers(b, at_b, 10, MONTH) == 0, "nothing due is left"
    finally:
        await a.close()
        await b.close()
    assert by_a < set(due)
    assert {c: (await tier(conn, c), await swept_at(conn, c)) for c in due} == {
        c: ("silver", at_a if c in by_a else at_b) for c in due}
    assert (await tier(conn, recent), await swept_at(conn, recent)) == ("gold", yesterday)
