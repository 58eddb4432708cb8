"""The sweeper's periodic tier review (migrations/0016_tier_sweep.sql): a member who stops
buying loses one tier per 30 days, in bounded batches; one whose tier is still earned keeps
it. Real Postgres, the clock passed in."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg

from switch import store

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


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
    assert await store.sweep_tiers(conn, NOW, 10) == 1
    assert await tier(conn, card) == "silver"
    assert await store.sweep_tiers(conn, NOW + timedelta(days=29), 10) == 0
    assert await tier(conn, card) == "silver"
    assert await store.sweep_tiers(conn, NOW + timedelta(days=30), 10) == 1
    assert await tier(conn, card) == "bronze"


async def test_a_member_whose_tier_is_still_earned_keeps_it(conn):
    card = await gold_card(conn, await network(conn, "kept", "990102", 0), 2)
    assert await store.sweep_tiers(conn, NOW, 10) == 1
    assert await tier(conn, card) == "gold"


async def test_a_network_without_policy_is_left_alone(conn):
    network_id: int = await conn.fetchval(
        "INSERT INTO store_network (code, name, club_bin) VALUES ('free', 'N', '990103')"
        " RETURNING id")
    card = await gold_card(conn, network_id, 3)
    assert await store.sweep_tiers(conn, NOW, 10) == 0
    assert await tier(conn, card) == "gold"


async def test_a_batch_reviews_at_most_batch_max_cards(conn):
    network_id = await network(conn, "batch", "990104", 1_000_000)
    cards = [await gold_card(conn, network_id, n) for n in range(4, 7)]
    assert await store.sweep_tiers(conn, NOW, 2) == 2
    assert sorted([await tier(conn, c) for c in cards]) == ["gold", "silver", "silver"]
    assert await store.sweep_tiers(conn, NOW, 2) == 1
    assert await store.sweep_tiers(conn, NOW, 2) == 0
    assert [await tier(conn, c) for c in cards] == ["silver"] * 3
