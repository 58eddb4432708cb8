"""The database's clawback share (migration 0017, switch_share_due) follows
pricing.refund_share: each refund's share is the difference of what is owed before and after
it, floored, and a sequence of refunds that completes the amount owes the whole grant."""

from __future__ import annotations

import pytest

from switch.pricing import refund_share

# (grant, payable, refunds in order): ragged splits where floors matter.
CASES = [
    (3_330, 100_000, [33_333, 66_667]),
    (14, 100_000, [33_333, 33_333, 33_334]),
    (1, 3, [1, 1, 1]),
    (7, 10, [9, 1]),
    (6_840, 342_000, [342_000]),
    (999_999, 1_000_001, [1, 500_000, 500_000]),
]


@pytest.mark.parametrize(("grant", "payable", "refunds"), CASES)
async def test_sql_share_matches_refund_share_and_sums_to_the_grant(conn, grant, payable,
                                                                   refunds):
    owed_before, done = 0, 0
    for refund in refunds:
        owed_after: int = await conn.fetchval(
            "SELECT switch_share_due($1, $2, $3)", grant, done + refund, payable)
        assert owed_after - owed_before == refund_share(grant, done, refund, payable)
        owed_before, done = owed_after, done + refund
    assert owed_before == grant
