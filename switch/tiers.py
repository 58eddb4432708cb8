"""Member tiers (bronze, silver, gold) from rolling 12-month spend or points. Pure.

Rules name the tiers they apply to (`switch.rules.Rule.tiers`); the tier itself is kept with
the member and changed by `review_tier`, which the caller runs when a purchase is confirmed
(upgrades are immediate: "you are now a silver member") and on a periodic review (downgrades).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal

THRESHOLD_MAX = 2**63 - 1  # the range of tier_policy's bigint columns


class Tier(enum.IntEnum):
    MEMBER = 0  # a member who has not yet earned bronze
    BRONZE = 1
    SILVER = 2
    GOLD = 3


@dataclass(frozen=True, slots=True)
class Threshold:
    """Rolling 12-month spend or points that earn a tier; either one suffices."""

    spend_rial: int
    points: int | None = None  # None: not reachable by points


Measure = Literal["spend", "points"]


class TierPolicyError(ValueError):
    """A threshold the policy refuses; `tier` and `measure` say which one."""

    def __init__(self, tier: Tier, measure: Measure, problem: str) -> None:
        super().__init__(f"{tier.name.lower()} {measure}: {problem}")
        self.tier, self.measure, self.problem = tier, measure, problem


@dataclass(frozen=True, slots=True)
class TierPolicy:
    """Spend thresholds are non-negative and do not decrease from bronze to gold. Points may
    be given for any of the tiers (a tier without them is reached by spend only, as a NULL
    is in migrations/0015_tiers.sql); those given follow the same rule among themselves, so
    bronze 100 points and gold 500 is a policy, bronze 500 and gold 100 is not."""

    bronze: Threshold
    silver: Threshold
    gold: Threshold

    def __post_init__(self) -> None:
        steps = ((Tier.BRONZE, self.bronze), (Tier.SILVER, self.silver), (Tier.GOLD, self.gold))
        _check_ascending("spend", [(tier, t.spend_rial) for tier, t in steps])
        _check_ascending("points", [(tier, t.points) for tier, t in steps
                                    if t.points is not None])


def _check_ascending(measure: Measure, steps: list[tuple[Tier, int]]) -> None:
    below: tuple[Tier, int] | None = None
    for tier, value in steps:
        if not 0 <= value <= THRESHOLD_MAX:
            raise TierPolicyError(tier, measure, f"{value} is not between 0 and {THRESHOLD_MAX}")
        if below is not None and value < below[1]:
            raise TierPolicyError(tier, measure, f"{value:,} is below {below[0].name.lower()}'s "
                                  f"{below[1]:,} (thresholds must not decrease to gold)")
        below = (tier, value)


def earned_tier(spend_12m_rial: int, points_12m: int, policy: TierPolicy) -> Tier:
    """The highest tier whose threshold the rolling 12 months reach."""
    earned = Tier.MEMBER
    for tier, threshold in ((Tier.BRONZE, policy.bronze), (Tier.SILVER, policy.silver),
                            (Tier.GOLD, policy.gold)):
        by_points = threshold.points is not None and points_12m >= threshold.points
        if spend_12m_rial >= threshold.spend_rial or by_points:
            earned = tier
    return earned


def review_tier(current: Tier, spend_12m_rial: int, points_12m: int,
                policy: TierPolicy) -> Tier:
    """The member's tier after a review: up at once to the tier earned; down one step per
    review at most, so a lapsing gold member becomes silver, and is told, before losing
    everything (clubs lose members who feel punished)."""
    earned = earned_tier(spend_12m_rial, points_12m, policy)
    if earned >= current:
        return earned
    return Tier(current - 1)
