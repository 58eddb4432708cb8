"""Parsed campaign rules by id and version, for pricing on the request path.

Theory of operation. A basis names its campaigns as (id, version); every change to a
campaign bumps its version, so a parsed rule keyed by both never goes stale and needs no
invalidation. Rules missing from the cache are read in one query and parsed. If the
database has moved on to a newer version meanwhile, the newer one is cached and the rule
left out of this pricing: the database sees another version than the basis named and
answers "price again" with the current ones, which are then cached.
The cache is bounded: past `size_max` entries it starts over (rare; cheaper than LRU
bookkeeping on every hit).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import asyncpg

from switch.campaign_file import rules_from_stored
from switch.rules import Rule

Parse = Callable[[Sequence[Any]], list[Rule]]


def _parse_stored(rows: Sequence[Any]) -> list[Rule]:
    from switch.campaign_file import rules_from_stored

    return rules_from_stored(rows)


class RuleCache:
    def __init__(self, size_max: int, parse: Parse = rules_from_stored) -> None:
        self._rules: dict[tuple[str, int], Rule] = {}
        self._size_max = size_max
        self._parse = parse

    async def rules(self, conn: asyncpg.Connection, refs: Sequence[Sequence[Any]]
                    ) -> list[Rule]:
        """The rules `refs` ([id, version] pairs) name, reading those not cached yet."""
        wanted = [(str(ref[0]), int(ref[1])) for ref in refs]
        missing = [key for key in wanted if key not in self._rules]
        if missing:
            await self._load(conn, [rule_id for rule_id, _ in missing])
        found = [self._rules.get(key) for key in wanted]
        return [rule for rule in found if rule is not None]

    async def _load(self, conn: asyncpg.Connection, ids: list[str]) -> None:
        rows = await conn.fetch("SELECT * FROM campaign WHERE id = ANY ($1::text[])", ids)
        if len(self._rules) + len(rows) > self._size_max:
            self._rules.clear()
        versions = {row["id"]: row["version"] for row in rows}
        for rule in self._parse(rows):
            self._rules[(rule.id, versions[rule.id])] = rule
