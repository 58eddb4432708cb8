import pytest

from switch.tiers import Threshold, Tier, TierPolicy, earned_tier, review_tier

POLICY = TierPolicy(bronze=Threshold(10_000_000, 1_000), silver=Threshold(50_000_000, 5_000),
                    gold=Threshold(200_000_000))


@pytest.mark.parametrize(("spend", "points", "tier"), [
    (0, 0, Tier.MEMBER),
    (9_999_999, 999, Tier.MEMBER),
    (10_000_000, 0, Tier.BRONZE),
    (0, 1_000, Tier.BRONZE),
    (0, 5_000, Tier.SILVER),
    (0, 10**9, Tier.SILVER),       # gold is reachable by spend only
    (200_000_000, 0, Tier.GOLD),
])
def test_earned_tier(spend, points, tier):
    assert earned_tier(spend, points, POLICY) is tier


@pytest.mark.parametrize(("current", "spend", "after"), [
    (Tier.MEMBER, 200_000_000, Tier.GOLD),    # up at once
    (Tier.SILVER, 50_000_000, Tier.SILVER),
    (Tier.GOLD, 0, Tier.SILVER),              # down one step per review
    (Tier.SILVER, 0, Tier.BRONZE),
    (Tier.BRONZE, 0, Tier.MEMBER),
    (Tier.MEMBER, 0, Tier.MEMBER),
])
def test_review_tier(current, spend, after):
    assert review_tier(current, spend, 0, POLICY) is after


def test_tier_thresholds_must_not_decrease():
    with pytest.raises(ValueError, match="decrease"):
        TierPolicy(bronze=Threshold(2), silver=Threshold(1), gold=Threshold(3))

