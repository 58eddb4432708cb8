"""switch/campaign_cache.py on a real database: a rule is read once per version, a new
version is read when the basis names it, and past its bound the cache starts over."""

from __future__ import annotations

from typing import Any

import asyncpg

from switch import registry
from switch.campaign_cache import RuleCache
from switch.campaign_file import parse_campaigns, rules_from_stored
from switch.campaign_store import store_campaigns
from switch.rules import PercentDiscount


async def _store(conn: asyncpg.Connection, *ids: str, bp: int = 500) -> None:
    specs = [{"id": i, "kind": "percent_discount", "network": "mall", "bp": bp} for i in ids]
    await store_campaigns(conn, parse_campaigns({"campaign": specs}, "test"), replace=True)


async def test_rules_read_once_per_version_and_cache_bounded(conn):
    await registry.add_network(conn, "mall", "Mall", "990200")
    await _store(conn, "a1", "b2", "c3")
    reads: list[list[str]] = []

    def parse(rows: Any) -> list[Any]:
        reads.append(sorted(row["id"] for row in rows))
        return rules_from_stored(rows)

    cache = RuleCache(2, parse)
    rules = await cache.rules(conn, [["a1", 1], ["b2", 1]])
    assert [r.id for r in rules] == ["a1", "b2"] and reads == [["a1", "b2"]]
    assert [r.id for r in await cache.rules(conn, [["a1", 1], ["b2", 1]])] == ["a1", "b2"]
    assert reads == [["a1", "b2"]]  # cached
    await _store(conn, "a1", bp=700)  # version 2
    [new] = await cache.rules(conn, [["a1", 2]])
    assert isinstance(new, PercentDiscount) and new.bp == 700 and reads[-1] == ["a1"]
    # The bound is 2 entries: a third read starts the cache over.
    assert [r.id for r in await cache.rules(conn, [["c3", 1]])] == ["c3"]
    await cache.rules(conn, [["a1", 2], ["c3", 1]])
    assert len(reads) == 3  # both cached
    await cache.rules(conn, [["b2", 1]])
    await cache.rules(conn, [["a1", 2]])
    assert reads[3:] == [["b2"], ["a1"]]  # a1 was dropped when b2 came in
    # A version the database no longer holds is left out (the database names the new one).
    assert await cache.rules(conn, [["a1", 1]]) == []
