"""The campaign engine, rule kind by rule kind and condition by condition, with expected
rials worked out by hand. Combination: test_campaigns_combination.py; invariants:
test_campaigns_invariants.py."""

from dataclasses import replace
from datetime import date, datetime, time, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from switch.engine import Effect, StampProgress, evaluate
from switch.jalali import Weekday
from switch.pricing import FeePlan
from switch.rules import (
    MERCHANT,
    NETWORK,
    NOWRUZ,
    PURCHASE_CODES,
    YALDA,
    BirthdayWindow,
    Cashback,
    DateSpan,
    FirstPurchases,
    FixedDiscount,
    Hours,
    Lottery,
    Multiplier,
    PercentDiscount,
    Points,
    StampCard,
    TopUpBonus,
    When,
)
from switch.tiers import Tier
from tests.switch.campaign_cases import MELLAT, NOON, PC, TEN, ctx, fires, member, price

# --- one kind at a time ----------------------------------------------------------------------

@pytest.mark.parametrize(("rule", "amount", "discount"), [
    (PercentDiscount(id="p", bp=1_000), 1_000_000, 100_000),
    (PercentDiscount(id="p", bp=2_000, cap_rial=150_000), 1_000_000, 150_000),
    (PercentDiscount(id="p", bp=2_000, cap_rial=150_000), 500_000, 100_000),
    (PercentDiscount(id="p", bp=1_000), 1_005, 101),  # 100.5 rounds half up
    (PercentDiscount(id="p", bp=1_000), 1_004, 100),
    (PercentDiscount(id="p", bp=10_000), 1_000_000, 1_000_000),
    (PercentDiscount(id="p", bp=1_000, min_purchase_rial=1_000_000), 1_000_000, 100_000),
    (PercentDiscount(id="p", bp=1_000, min_purchase_rial=1_000_001), 1_000_000, 0),
    (FixedDiscount(id="f", amount_rial=50_000), 1_000_000, 50_000),
    (FixedDiscount(id="f", amount_rial=50_000), 30_000, 30_000),  # never below zero
    (FixedDiscount(id="f", amount_rial=50_000, min_purchase_rial=200_000), 199_999, 0),
])
def test_percent_and_fixed_discounts(rule, amount, discount):
    p = price([rule], amount=amount)
    assert (p.discount, p.payable) == (discount, amount - discount)
    assert p.fired == ((rule.id,) if discount else ())
    assert p.discount_by_funder() == ({MERCHANT: discount} if discount else {})


LADDER = FirstPurchases(id="first3", steps_bp=(6_000, 5_000, 4_000))


@pytest.mark.parametrize(("rule", "state", "discount"), [
    (LADDER, member(visits_at_merchant=0), 600_000),
    (LADDER, member(visits_at_merchant=1), 500_000),
    (LADDER, member(visits_at_merchant=2), 400_000),
    (LADDER, member(visits_at_merchant=3), 0),
    (LADDER, member(visits_at_merchant=0, purchases_in_network=5), 600_000),
    (replace(LADDER, cap_rial=450_000), member(), 450_000),
    (replace(LADDER, per_merchant=False), member(visits_at_merchant=0, purchases_in_network=2),
     400_000),
    (LADDER, None, 0),  # a bank card with no member behind it has no purchase count
])
def test_first_purchases_ladder(rule, state, discount):
    assert price([rule], member=state).discount == discount


STAMPS = StampCard(id="tenth", every=10, free_up_to_rial=300_000)


@pytest.mark.parametrize(("visits", "amount", "free", "stamps"), [
    (0, 1_000_000, 0, 1),
    (8, 1_000_000, 0, 9),
    (9, 1_000_000, 300_000, 0),   # the tenth visit: free up to the value
    (9, 200_000, 200_000, 0),     # a cheaper tenth is wholly free
    (10, 1_000_000, 0, 1),
    (19, 1_000_000, 300_000, 0),
])
def test_stamp_card(visits, amount, free, stamps):
    p = price([STAMPS], amount=amount, member=member(visits_at_merchant=visits))
    assert p.discount == free
    assert p.stamps == (StampProgress("tenth", stamps, 10, free),)
    assert p.fired == ("tenth",)  # every visit earns a stamp


def test_cashback_is_store_credit_on_the_payable_with_an_expiry():
    rules = [PercentDiscount(id="a", bp=1_000), Cashback(id="cb", bp=500, expiry_days=30)]
    p = price(rules)
    assert (p.payable, p.credit) == (900_000, 45_000)
    (grant,) = [g for g in p.grants if g.effect is Effect.CASHBACK]
    assert grant.funder == MERCHANT
    assert grant.expires_at == NOON + timedelta(days=30)


@pytest.mark.parametrize(("cap", "credit"), [(None, 50_000), (20_000, 20_000)])
def test_cashback_cap(cap, credit):
    assert price([Cashback(id="cb", bp=500, expiry_days=1, cap_rial=cap)]).credit == credit


def test_top_up_bonus_pay_a_million_receive_one_point_one():
    bonus = TopUpBonus(id="bonus", bp=1_000, expiry_days=90, funder=NETWORK)
    p = evaluate([bonus], ctx(code=PC.TOP_UP_CLUB), FeePlan(bp=100), None)
    assert (p.payable, p.credit, p.network_fee) == (1_000_000, 100_000, 0)
    assert p.grants[0].effect is Effect.TOP_UP_BONUS
    assert price([bonus]).fired == ()  # a purchase is no top-up


@pytest.mark.parametrize(("payable", "categories", "points"), [
    (1_000_000, (), 100),
    (9_999, (), 0),                              # a point per *full* 10,000 rial
    (10_000, (), 1),
    (15_000, (), 1),                             # 1.5 points: rounded down
    (19_999, (), 1),
    (20_000, (), 2),
    (4_999, ("bakery",), 0),                     # 0.9998 at 2x
    (5_000, ("bakery",), 1),                     # the multiplier applies before rounding
    (15_000, ("bakery",), 3),
    (6_666, ("perfume",), 0),                    # 0.9999 at 1.5x
    (6_667, ("perfume",), 1),
    (15_000, ("perfume",), 2),                   # 2.25
    (1_000_000, ("bakery",), 200),
    (1_000_000, ("bakery", "tobacco"), 200),     # the highest multiplier in the basket
    (1_000_000, ("tobacco",), 0),
    (1_000_000, ("tobacco", "dairy"), 100),      # dairy has none: 1x
    (1_000_000, ("perfume",), 150),
])
def test_points_per_rial_with_category_multipliers(payable, categories, points):
    rule = Points(id="pts", rial_per_point=10_000, funder=NETWORK, multipliers=(
        Multiplier("bakery", 20_000), Multiplier("tobacco", 0), Multiplier("perfume", 15_000)))
    p = price([rule], amount=payable, categories=categories)
    assert p.points == points
    assert p.fired == (("pts",) if points else ())


@given(st.integers(1, 10**9), st.integers(1, 10**9), st.integers(1, 100_000),
       st.sampled_from([(), ("bakery",), ("perfume",), ("tobacco",)]))
def test_splitting_a_purchase_never_earns_more_points(first, second, per_point, categories):
    """Two purchases earn at most what one of their sum earns: rounding down is superadditive
    (half up was not: 5,000 + 5,000 earned 2 points where 10,000 earns 1)."""
    rule = Points(id="pts", rial_per_point=per_point, multipliers=(
        Multiplier("bakery", 20_000), Multiplier("tobacco", 0), Multiplier("perfume", 15_000)))

    def points(amount: int) -> int:
        return price([rule], amount=amount, categories=categories).points

    assert points(first) + points(second) <= points(first + second)


@pytest.mark.parametrize(("payable", "cap", "entries"), [
    (1_499_999, None, 2), (1_500_000, None, 3), (499_999, None, 0), (5_000_000, 2, 2)])
def test_lottery_entries_per_full_amount(payable, cap, entries):
    rule = Lottery(id="draw", rial_per_entry=500_000, max_entries=cap)
    assert price([rule], amount=payable).lottery_entries == entries

# --- conditions ------------------------------------------------------------------------------


@pytest.mark.parametrize(("when", "moment", "expected"), [
    (When(weekdays=frozenset({Weekday.FRIDAY})), datetime(2024, 5, 17, 12), True),
    (When(weekdays=frozenset({Weekday.FRIDAY})), NOON, False),
    (When(hours=(Hours(time(10), time(14)),)), datetime(2024, 5, 15, 10), True),
    (When(hours=(Hours(time(10), time(14)),)), datetime(2024, 5, 15, 14), False),  # end excl.
    (When(hours=(Hours(time(22), time(2)),)), datetime(2024, 5, 15, 23, 30), True),
    (When(hours=(Hours(time(22), time(2)),)), datetime(2024, 5, 16, 1, 59), True),
    (When(hours=(Hours(time(22), time(2)),)), datetime(2024, 5, 16, 2), False),
    (When(dates=(NOWRUZ,)), datetime(2024, 3, 20, 9), True),     # 1403/01/01
    (When(dates=(NOWRUZ,)), datetime(2024, 4, 1, 9), True),      # 1403/01/13
    (When(dates=(NOWRUZ,)), datetime(2024, 4, 2, 9), False),     # 1403/01/14
    (When(dates=(YALDA,)), datetime(2023, 12, 21, 20), True),    # 1402/09/30
    (When(dates=(YALDA,)), datetime(2023, 12, 22, 20), False),
    (When(dates=(DateSpan((12, 25), (1, 13), year=1402),)), datetime(2024, 3, 15), True),
    (When(dates=(DateSpan((12, 25), (1, 13), year=1402),)), datetime(2024, 4, 1), True),
    (When(dates=(DateSpan((12, 25), (1, 13), year=1402),)), datetime(2025, 3, 15), False),
    (When(dates=(DateSpan((12, 25), (1, 13)),)), datetime(2025, 3, 15), True),  # every year
])
def test_time_windows(when, moment, expected):
    assert fires(replace(TEN, when=when), local_time=moment) is expected


BORN = date(1990, 3, 21)  # 1369/01/01: its Jalali anniversary in 2024 is 20 March


@pytest.mark.parametrize(("window", "today", "expected"), [
    (BirthdayWindow(), date(2024, 3, 20), True),
    (BirthdayWindow(), date(2024, 3, 26), True),   # the seventh day
    (BirthdayWindow(), date(2024, 3, 27), False),
    (BirthdayWindow(), date(2024, 3, 19), False),
    (BirthdayWindow(0, 0), date(2024, 3, 21), False),  # the Gregorian anniversary is not it
    (BirthdayWindow(3, 0), date(2024, 3, 17), True),   # 1402/12/27, before the Jalali new year
    (BirthdayWindow(3, 0), date(2024, 3, 16), False),
])
def test_birthday_window_is_jalali(window, today, expected):
    rule = replace(TEN, when=When(birthday=window))
    moment = datetime.combine(today, time(12))
    assert fires(rule, local_time=moment, member=member(birthday=BORN)) is expected


def test_birthday_on_30_esfand_is_kept_on_29_esfand_in_common_years():
    rule = replace(TEN, when=When(birthday=BirthdayWindow(0, 0)))
    born = date(2021, 3, 20)  # 1399/12/30
    assert fires(rule, local_time=datetime(2024, 3, 19, 12), member=member(birthday=born))
    assert not fires(rule, local_time=datetime(2024, 3, 19, 12), member=member())


@pytest.mark.parametrize(("changes", "expected"), [
    ({"valid_from": NOON}, True),
    ({"valid_from": NOON + timedelta(seconds=1)}, False),
    ({"valid_until": NOON}, False),
    ({"valid_until": NOON + timedelta(seconds=1)}, True),
    ({"merchant_ids": frozenset({7, 8})}, True),
    ({"merchant_ids": frozenset({8})}, False),
    ({"network_id": 1}, True),
    ({"network_id": 2}, False),
    ({"terminal_ids": frozenset({"T2"})}, False),
    ({"tiers": frozenset({Tier.MEMBER})}, True),
    ({"tiers": frozenset({Tier.GOLD})}, False),
    ({"codes": frozenset({PC.PURCHASE_SHAPARAK})}, False),
])
def test_scope_and_validity(changes, expected):
    assert fires(replace(TEN, **changes)) is expected


@pytest.mark.parametrize(("code", "bank_bin", "linked", "expected"), [
    (PC.PURCHASE_SHAPARAK, "610433", None, True),
    (PC.PURCHASE_SHAPARAK, "603799", None, False),
    (PC.PURCHASE_SHAPARAK, "603799", "610433", False),  # the paying card decides
    (PC.PURCHASE_CLUB, None, "610433", True),           # else the member's linked card
    (PC.PURCHASE_CLUB, None, None, False),
])
def test_bank_co_marketing_by_bin(code, bank_bin, linked, expected):
    rule = replace(TEN, funder=MELLAT, bin_prefixes=("610433", "991975"),
                   codes=frozenset({PC.PURCHASE_SHAPARAK, PC.PURCHASE_CLUB}))
    p = price([rule], code=code, bank_bin=bank_bin, member=member(linked_bin=linked))
    assert p.discount_by_funder() == ({MELLAT: 100_000} if expected else {})


def test_tier_rules_give_gold_more():
    rules = [replace(TEN, id="silver", tiers=frozenset({Tier.SILVER})),
             PercentDiscount(id="gold", bp=2_000, tiers=frozenset({Tier.GOLD}))]
    assert price(rules, member=member(tier=Tier.SILVER)).discount == 100_000
    assert price(rules, member=member(tier=Tier.GOLD)).discount == 200_000
    assert price(rules, member=member(tier=Tier.BRONZE)).discount == 0
    assert price(rules, member=None).discount == 0


def test_store_credit_purchases_earn_only_where_a_rule_says_so():
    assert not fires(TEN, code=PC.PURCHASE_STORE_CREDIT)
    assert fires(replace(TEN, codes=PURCHASE_CODES), code=PC.PURCHASE_STORE_CREDIT)


def test_without_a_member_only_discounts_apply():
    rules = [TEN, Points(id="pts", rial_per_point=10_000), STAMPS,
             Cashback(id="cb", bp=100, expiry_days=1), Lottery(id="l", rial_per_entry=1)]
    assert price(rules, member=None).fired == ("ten",)


