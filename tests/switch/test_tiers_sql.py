"""The database's tier review (migrations/0015_tiers.sql, run on confirm) is switch/tiers.py's
`review_tier`, on every kind of input: table-driven through the pure function's own cases,
then Hypothesis over random policies, tiers, spend and points."""

from __future__ import annotations

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from switch.tiers import Threshold, Tier, TierPolicy, review_tier

_NAMES = {Tier.MEMBER: "member", Tier.BRONZE: "bronze", Tier.SILVER: "silver",
          Tier.GOLD: "gold"}
POLICY = TierPolicy(bronze=Threshold(10_000_000, 1_000), silver=Threshold(50_000_000, 5_000),
                    gold=Threshold(200_000_000))


async def sql_review(conn: asyncpg.Connection, current: Tier, spend: int, points: int,
                     policy: TierPolicy) -> str:
    steps = (policy.bronze, policy.silver, policy.gold)
    tier: str = await conn.fetchval(
        "SELECT tier_review($1, $2, $3, ROW(1, $4, $5, $6, $7, $8, $9)::tier_policy)",
        _NAMES[current], spend, points, *(s.spend_rial for s in steps),
        *(s.points for s in steps))
    return tier


@pytest.mark.parametrize(("current", "spend", "points"), [
    (Tier.MEMBER, 200_000_000, 0), (Tier.SILVER, 50_000_000, 0), (Tier.GOLD, 0, 0),
    (Tier.SILVER, 0, 0), (Tier.BRONZE, 0, 0), (Tier.MEMBER, 0, 0), (Tier.MEMBER, 0, 1_000),
    (Tier.BRONZE, 0, 10**9), (Tier.GOLD, 9_999_999, 999), (Tier.BRONZE, 10_000_000, 0),
])
async def test_sql_review_matches_the_table(conn, current, spend, points):
    assert await sql_review(conn, current, spend, points, POLICY) \
        == _NAMES[review_tier(current, spend, points, POLICY)]


amounts = st.integers(0, 10**12)


@st.composite
def policies(draw: st.DrawFn) -> TierPolicy:
    """Valid policies (TierPolicy refuses others): spends in order, points for any of the
    tiers (None: by spend only), in order among those given."""
    spends = sorted(draw(st.lists(amounts, min_size=3, max_size=3)))
    points = [p if draw(st.booleans()) else None
              for p in sorted(draw(st.lists(amounts, min_size=3, max_size=3)))]
    return TierPolicy(*(Threshold(s, p) for s, p in zip(spends, points, strict=True)))


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(policy=policies(), current=st.sampled_from(list(Tier)), spend=amounts, points=amounts)
async def test_sql_review_is_review_tier(conn, policy, current, spend, points):
    assert await sql_review(conn, current, spend, points, policy) \
        == _NAMES[review_tier(current, spend, points, policy)]
