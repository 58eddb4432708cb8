"""Constants and settings-derived values every request needs, gathered once."""

from __future__ import annotations

from datetime import timedelta

from switch.config import Settings
from switch.pricing import ShaparakFeeRule

# A Shaparak purchase's money moves at the bank; its confirm is accepted this long after
# the 0100 even when the terminal's hold timeout has passed.
SHAPARAK_CONFIRM_WINDOW = timedelta(hours=24)


def shaparak_rule(settings: Settings) -> ShaparakFeeRule:
    s = settings
    return ShaparakFeeRule(s.shaparak_fee_fixed_rial, s.shaparak_fee_threshold_rial,
                           s.shaparak_fee_bp, s.shaparak_fee_cap_rial)
