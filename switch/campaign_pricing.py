"""Pricing a request with the campaign engine on the basis the database stated. Pure.

The basis (migrations/0012_pricing_reservations.sql) is the merchant's fee plan and the
amount, plus, when campaigns are in scope, the campaigns (id, version), the merchant,
network and terminal, the member behind the card, what each rule granted this card today
and each budgeted campaign's remaining budget. This module turns it into the engine's
`PurchaseContext`, runs `engine.evaluate`, and writes the breakdown the database records
and carries out (`pricing_json`): grants with their funders and expiries, reservations
against budgets and daily limits, stamp progress, lottery entries and the rules fired.

Local time is the merchant's: Tehran (Asia/Tehran), from the switch's clock, so the Jalali
calendar, weekdays and hours of a rule are read where the shop is. Credit and points
expire at a Tehran wall-clock instant, stored with its offset.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from protocol.fields import ProcessingCode
from switch.engine import Effect, Grant, Pricing, evaluate
from switch.pricing import FeePlan, Quote, ShaparakFeeRule
from switch.rules import MemberState, PurchaseContext, Rule
from switch.tiers import Tier

TEHRAN = ZoneInfo("Asia/Tehran")
_TIERS = {"member": Tier.MEMBER, "bronze": Tier.BRONZE, "silver": Tier.SILVER,
          "gold": Tier.GOLD}


def local_time(now: datetime) -> datetime:
    """The merchant's wall-clock time (Tehran), naive, as the engine reads it."""
    return now.astimezone(TEHRAN).replace(tzinfo=None)


def has_campaigns(basis: Mapping[str, Any]) -> bool:
    return bool(basis.get("campaigns"))


def without_budgets(basis: Mapping[str, Any]) -> dict[str, Any]:
    """`basis` with each budgeted campaign's remainder taken as spent: those campaigns grant
    nothing, as when their budget has run out, and reserve no budget. The database accepts a
    price on it while the rest of the basis holds: it compares the basis without the
    remainders, and tests only that each budget reservation fits (none here)."""
    if "remaining" not in basis:  # no campaign in scope: the basis is compared whole
        return dict(basis)
    return {**basis, "remaining": dict.fromkeys(basis["remaining"], 0)}


def member_state(data: Mapping[str, Any] | None) -> MemberState | None:
    if data is None:
        return None
    birthday = data.get("birthday")
    return MemberState(
        tier=_TIERS[data["tier"]], visits_at_merchant=data["visits_at_merchant"],
        purchases_in_network=data["purchases_in_network"],
        birthday=None if birthday is None else date.fromisoformat(birthday),
        linked_bin=data.get("linked_bin"))


@dataclass(frozen=True, slots=True)
class Request:
    """What the request itself contributes to the price (the basis gives the rest)."""

    code: ProcessingCode
    now: datetime  # the switch's clock, aware
    categories: tuple[str, ...] = ()  # field 48 IT
    bank_bin: str | None = None  # the paying Shetab card's BIN (bank purchases)


def context(basis: Mapping[str, Any], request: Request) -> PurchaseContext:
    return PurchaseContext(
        amount=basis["amount"], code=request.code, merchant_id=basis["merchant_id"],
        network_id=basis["network_id"] or 0, terminal_id=basis["tid"],
        local_time=local_time(request.now), categories=request.categories,
        bank_bin=request.bank_bin, member=member_state(basis["member"]),
        granted_today=basis["granted_today"], remaining_budget=basis["remaining"])


def fee_plan(basis: Mapping[str, Any]) -> FeePlan:
    return FeePlan(basis["fee_bp"], basis["fee_fixed_rial"], basis["fee_min_rial"],
                   basis["fee_max_rial"])


def price(basis: Mapping[str, Any], rules: Sequence[Rule], request: Request,
          shaparak: ShaparakFeeRule, points_expiry_days: int) -> tuple[Quote, dict[str, Any]]:
    """The quote and the breakdown for `request` priced on `basis` under `rules`."""
    pricing = evaluate(rules, context(basis, request), fee_plan(basis), shaparak,
                       shaparak_exempt=basis["shaparak_fee_exempt"])
    return pricing.to_quote(), pricing_json(pricing, rules, request.now, points_expiry_days)


def pricing_json(pricing: Pricing, rules: Sequence[Rule], now: datetime,
                 points_expiry_days: int) -> dict[str, Any]:
    """The breakdown as the database records it (txn.pricing, txn_grant, txn_reservation).
    Points, which rules give no expiry, expire `points_expiry_days` after the purchase."""
    by_id = {r.id: r for r in rules}
    points_expiry = local_time(now) + timedelta(days=points_expiry_days)
    return {
        "grants": [_grant_json(g, points_expiry) for g in pricing.grants],
        "reservations": [
            {"rule": r.rule_id, "amount": r.amount,
             "budget": by_id[r.rule_id].budget is not None,
             "daily": by_id[r.rule_id].daily_limit is not None}
            for r in pricing.reservations if r.amount > 0],
        "stamps": [{"rule": s.rule_id, "stamps": s.stamps, "every": s.every,
                    "free_rial": s.free_rial} for s in pricing.stamps],
        "lottery": pricing.lottery_entries,
        "fired": list(pricing.fired),
    }


def _grant_json(g: Grant, points_expiry: datetime) -> dict[str, Any]:
    expires = g.expires_at
    if expires is None and g.effect is Effect.POINTS:
        expires = points_expiry
    return {"rule": g.rule_id, "effect": g.effect.value, "funder": g.funder.kind.value,
            "sponsor": g.funder.sponsor, "amount": g.amount,
            "expires_at": None if expires is None
            else expires.replace(tzinfo=TEHRAN).isoformat()}
