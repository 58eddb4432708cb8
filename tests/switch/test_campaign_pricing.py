"""switch/campaign_pricing.py: the basis as the database states it becomes the engine's
context, and the engine's Pricing becomes the breakdown the database records. Pure."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.fields import ProcessingCode
from switch import campaign_pricing as cp
from switch.config import ConfigError, load_settings
from switch.pricing import ShaparakFeeRule
from switch.rules import (
    NETWORK,
    Cashback,
    FixedDiscount,
    MemberState,
    PercentDiscount,
    Points,
    sponsor,
)
from switch.tiers import Tier

PC = ProcessingCode
NOW = datetime(2026, 3, 20, 20, 45, tzinfo=UTC)  # 1405/01/01 00:15 in Tehran: Nowruz


def basis(**changes: object) -> dict[str, object]:
    base: dict[str, object] = {
        "amount": 1_000_000, "fee_bp": 100, "fee_fixed_rial": 0, "fee_min_rial": 0,
        "fee_max_rial": None, "shaparak_fee_exempt": False, "campaigns": [["r", 1]],
        "merchant_id": 2, "network_id": 1, "tid": "HYPR0001",
        "member": {"tier": "silver", "visits_at_merchant": 3, "purchases_in_network": 9,
                   "birthday": "1990-03-21", "linked_bin": "603799"},
        "granted_today": {"daily": 4_000}, "remaining": {"budget": 7_000}}
    return {**base, **changes}


def test_local_time_is_tehran_wall_clock():
    assert cp.local_time(NOW) == datetime(2026, 3, 21, 0, 15)


@pytest.mark.parametrize(("data", "expected"), [
    (None, None),
    (basis()["member"], MemberState(tier=Tier.SILVER, visits_at_merchant=3,
                                       purchases_in_network=9, birthday=date(1990, 3, 21),
                                       linked_bin="603799")),
    ({"tier": "member", "visits_at_merchant": 0, "purchases_in_network": 0,
      "birthday": None, "linked_bin": None}, MemberState()),
])
def test_member_state(data, expected):
    assert cp.member_state(data) == expected


def test_context_takes_the_basis_and_the_request():
    request = cp.Request(code=PC.PURCHASE_SHAPARAK, now=NOW, categories=("5411",),
                         bank_bin="610433")
    ctx = cp.context(basis(), request)
    assert (ctx.amount, ctx.merchant_id, ctx.network_id, ctx.terminal_id) \
        == (1_000_000, 2, 1, "HYPR0001")
    assert ctx.local_time == datetime(2026, 3, 21, 0, 15)
    assert ctx.card_bin == "610433"  # the paying card wins over the linked one
    assert ctx.granted_today == {"daily": 4_000} and ctx.remaining_budget == {"budget": 7_000}


def test_breakdown_names_funders_expiries_and_reservations():
    rules = [
        PercentDiscount(id="bank", priority=2, bp=1_000, funder=sponsor("melli"),
                        budget=50_000),
        FixedDiscount(id="daily", priority=1, amount_rial=10_000, daily_limit=12_000),
        Cashback(id="back", bp=100, expiry_days=30, funder=NETWORK),
        Points(id="pts", rial_per_point=10_000),
    ]
    quote, data = cp.price(basis(remaining={"bank": 50_000}), rules,
                           cp.Request(code=PC.PURCHASE_CLUB, now=NOW), ShaparakFeeRule(), 90)
    # 10 % of 1,000,000 = 100,000, cut to the budget left (50,000); then 8,000 (12,000 a
    # day, 4,000 granted today); payable 942,000; cashback 9,420; points 94.
    assert (quote.discount, quote.payable, quote.cashback, quote.points) \
        == (58_000, 942_000, 9_420, 94)
    assert data["grants"] == [
        {"rule": "bank", "effect": "discount", "funder": "sponsor", "sponsor": "melli",
         "amount": 50_000, "expires_at": None},
        {"rule": "daily", "effect": "discount", "funder": "merchant", "sponsor": None,
         "amount": 8_000, "expires_at": None},
        {"rule": "back", "effect": "cashback", "funder": "network", "sponsor": None,
         "amount": 9_420, "expires_at": "2026-04-20T00:15:00+03:30"},
        {"rule": "pts", "effect": "points", "funder": "merchant", "sponsor": None,
         "amount": 94, "expires_at": "2026-06-19T00:15:00+03:30"}]
    assert data["reservations"] == [
        {"rule": "bank", "amount": 50_000, "budget": True, "daily": False},
        {"rule": "daily", "amount": 8_000, "budget": False, "daily": True}]
    assert data["fired"] == ["bank", "daily", "back", "pts"]
    assert data["lottery"] == 0 and data["stamps"] == []


def test_without_budgets_prices_as_if_every_budget_had_run_out():
    """The last pricing of a request (switch/processor.py): only the remainders change, to
    0, so the budgeted rule grants and reserves nothing and the others price as before."""
    rules = [PercentDiscount(id="bank", priority=2, bp=1_000, budget=50_000),
             FixedDiscount(id="daily", priority=1, amount_rial=10_000, daily_limit=12_000)]
    spent = cp.without_budgets(basis(remaining={"bank": 50_000}))
    assert spent == basis(remaining={"bank": 0})
    quote, data = cp.price(spent, rules, cp.Request(code=PC.PURCHASE_CLUB, now=NOW),
                           ShaparakFeeRule(), 90)
    assert quote.discount == 8_000
    assert data["reservations"] == [
        {"rule": "daily", "amount": 8_000, "budget": False, "daily": True}]
    # Without campaigns the database compares the basis whole: it stays as it was.
    plain = {k: v for k, v in basis().items() if k in ("amount", "fee_bp")}
    assert cp.without_budgets(plain) == plain


@given(amount=st.integers(1, 10**10), remaining=st.integers(0, 10**6),
       today=st.integers(0, 20_000), minutes=st.integers(0, 60 * 24 * 366))
def test_breakdown_accounts_for_every_rial(amount, remaining, today, minutes):
    rules = [PercentDiscount(id="budget", bp=2_500, budget=10**6, funder=NETWORK),
             FixedDiscount(id="daily", amount_rial=5_000, daily_limit=20_000),
             Cashback(id="back", bp=300, expiry_days=7)]
    now = NOW + timedelta(minutes=minutes)
    quote, data = cp.price(
        basis(amount=amount, remaining={"budget": remaining}, granted_today={"daily": today}),
        rules, cp.Request(code=PC.PURCHASE_CLUB, now=now), ShaparakFeeRule(), 365)
    discounts = [g["amount"] for g in data["grants"] if g["effect"] == "discount"]
    assert sum(discounts) == quote.discount == amount - quote.payable
    reserved = {r["rule"]: r["amount"] for r in data["reservations"]}
    assert reserved.get("budget", 0) <= remaining
    assert today + reserved.get("daily", 0) <= 20_000
    assert all(r["amount"] > 0 for r in data["reservations"])


@pytest.mark.parametrize(("days", "ok"), [("0", False), ("1", True), ("3650", True),
                                          ("3651", False)])
def test_points_expiry_days_bounds(days, ok):
    environ = {"LOYALTY_POINTS_EXPIRY_DAYS": days}
    if ok:
        assert load_settings(environ=environ).points_expiry_days == int(days)
    else:
        with pytest.raises(ConfigError, match="points_expiry_days"):
            load_settings(environ=environ)
