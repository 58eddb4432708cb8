import pytest

from switch.tiers import (
    THRESHOLD_MAX,
    Threshold,
    Tier,
    TierPolicy,
    TierPolicyError,
    earned_tier,
    review_tier,
)

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



@pytest.mark.parametrize(("bronze", "silver", "gold", "tier", "measure"), [
    (Threshold(-1), Threshold(0), Threshold(0), Tier.BRONZE, "spend"),
    (Threshold(0), Threshold(0), Threshold(THRESHOLD_MAX + 1), Tier.GOLD, "spend"),
    (Threshold(0), Threshold(5), Threshold(4), Tier.GOLD, "spend"),
    (Threshold(0, -1), Threshold(0), Threshold(0), Tier.BRONZE, "points"),
    (Threshold(0, 10), Threshold(0, 9), Threshold(0), Tier.SILVER, "points"),
    # a tier without points does not break the order of those around it
    (Threshold(0, 10), Threshold(0), Threshold(0, 9), Tier.GOLD, "points"),
    (Threshold(0), Threshold(0, 0), Threshold(0, THRESHOLD_MAX + 1), Tier.GOLD, "points"),
])
def test_a_refused_policy_names_its_threshold(bronze, silver, gold, tier, measure):
    with pytest.raises(TierPolicyError) as refused:
        TierPolicy(bronze=bronze, silver=silver, gold=gold)
    assert (refused.value.tier, refused.value.measure) == (tier, measure)
    assert str(refused.value).startswith(f"{tier.name.lower()} {measure}: ")


@pytest.mark.parametrize("steps", [
    (Threshold(0), Threshold(0), Threshold(0)),                       # everyone gold
    (Threshold(0), Threshold(1), Threshold(THRESHOLD_MAX)),           # the column's bound
    (Threshold(0), Threshold(1), Threshold(2, 50)),                   # points for gold only
    (Threshold(0, 10), Threshold(1), Threshold(2, 10)),               # equal, silver skipped
    (Threshold(0, 0), Threshold(1, 1), Threshold(2, THRESHOLD_MAX)),
])
def test_valid_policies_are_kept_as_given(steps):
    policy = TierPolicy(*steps)
    assert (policy.bronze, policy.silver, policy.gold) == steps
