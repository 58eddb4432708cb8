"""Member tiers (bronze, silver, gold) from rolling 12-month spend or points. Pure.

Rules name the tiers they apply to (`switch.rules.Rule.tiers`); the tier itself is kept with
the member and changed by `review_tier`, which the caller runs when a purchase is confirmed
(upgrades are immediate: "you are now a silver member") and on a periodic review (downgrades).
"""

from __future__ import annotations

import enum
import itertools
from dataclasses import dataclass


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


@dataclass(frozen=True, slots=True)
class TierPolicy:
    bronze: Threshold
    silver: Threshold
    gold: Threshold

    def __post_init__(self) -> None:
        steps = (self.bronze, self.silver, self.gold)
        if any(b.spend_rial < a.spend_rial for a, b in itertools.pairwise(steps)):
            raise ValueError("tier spend thresholds must not decrease")


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
