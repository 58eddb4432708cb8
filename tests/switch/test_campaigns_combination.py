"""How campaign rules combine: stacking, exclusivity, funding, budgets and daily limits,
fees, and the definitions the engine refuses. Expected rials worked out by hand."""

from dataclasses import replace

import pytest

from switch.engine import Reservation, evaluate
from switch.pricing import FeePlan, ShaparakFeeRule
from switch.rules import (
    MERCHANT,
    NETWORK,
    PURCHASE_CODES,
    Cashback,
    DateSpan,
    FirstPurchases,
    FixedDiscount,
    Lottery,
    Multiplier,
    PercentDiscount,
    Points,
    Rule,
    Share,
    StampCard,
    TopUpBonus,
    sponsor,
)
from tests.switch.campaign_cases import MELLAT, NOON, PC, TEN, ctx, member, price

# --- stacking and exclusivity ----------------------------------------------------------------

def test_discounts_stack_on_the_running_payable_by_priority():
    a, b = replace(TEN, id="a", priority=2), replace(TEN, id="b", priority=1)
    p = price([b, a])
    assert (p.discount, p.fired) == (100_000 + 90_000, ("a", "b"))


@pytest.mark.parametrize(("fixed_priority", "discount", "fired"), [
    (2, 100_000 + 90_000, ("fixed", "ten")),   # 10 % of what the fixed part leaves
    (0, 100_000 + 100_000, ("ten", "fixed")),
])
def test_priority_decides_the_order(fixed_priority, discount, fired):
    fixed = FixedDiscount(id="fixed", amount_rial=100_000, priority=fixed_priority)
    p = price([fixed, replace(TEN, priority=1)])
    assert (p.discount, p.fired) == (discount, fired)


def test_equal_priorities_go_by_id():
    fixed = FixedDiscount(id="a-fixed", amount_rial=100_000)
    assert price([TEN, fixed]).fired == ("a-fixed", "ten")


def test_an_exclusive_rule_stops_the_rules_after_it_only():
    first = FixedDiscount(id="first", amount_rial=100_000, priority=3)
    solo = PercentDiscount(id="solo", bp=1_000, priority=2, exclusive=True)
    later = [replace(TEN, id="later", priority=1), Points(id="pts", rial_per_point=10_000)]
    p = price([*later, solo, first])
    assert (p.discount, p.points, p.fired) == (100_000 + 90_000, 0, ("first", "solo"))


def test_an_exclusive_rule_that_grants_nothing_stops_nothing():
    solo = PercentDiscount(id="solo", bp=5_000, priority=2, exclusive=True, budget=1_000)
    p = price([solo, replace(TEN, priority=1)], remaining_budget={"solo": 0})
    assert (p.discount, p.fired) == (100_000, ("ten",))


STAMP_SOLO = StampCard(id="stamps", every=10, free_up_to_rial=300_000, priority=5,
                       exclusive=True)
LATER = [replace(TEN, priority=1), Points(id="pts", rial_per_point=10_000)]


@pytest.mark.parametrize(("visits", "discount", "points", "fired"), [
    # Visits 1 to 9 only count a stamp: nothing granted, nothing blocked.
    (0, 100_000, 90, ("stamps", "ten", "pts")),
    (8, 100_000, 90, ("stamps", "ten", "pts")),
    # The 10th visit is free (up to 300,000): that grant ends the walk.
    (9, 300_000, 0, ("stamps",)),
    (19, 300_000, 0, ("stamps",)),
    (10, 100_000, 90, ("stamps", "ten", "pts")),
])
def test_an_exclusive_stamp_card_blocks_only_on_its_free_visit(visits, discount, points, fired):
    p = price([*LATER, STAMP_SOLO], member=member(visits_at_merchant=visits))
    assert (p.discount, p.points, p.fired) == (discount, points, fired)
    assert [s.rule_id for s in p.stamps] == ["stamps"]  # the visit counts either way


def test_an_exclusive_stamp_card_whose_free_visit_is_capped_to_nothing_blocks_nothing():
    stamps = replace(STAMP_SOLO, daily_limit=50_000)
    p = price([*LATER, stamps], member=member(visits_at_merchant=9),
              granted_today={"stamps": 50_000})
    # No headroom left today: the rule does not apply at all, so it neither counts nor blocks.
    assert (p.discount, p.points, p.fired) == (100_000, 90, ("ten", "pts"))


def test_rewards_use_the_final_payable_whatever_their_priority():
    rules = [Cashback(id="cb", bp=1_000, expiry_days=7, priority=9), replace(TEN, priority=1)]
    p = price(rules)
    assert (p.payable, p.credit, p.fired) == (900_000, 90_000, ("cb", "ten"))


def test_an_exclusive_reward_stops_later_discounts_and_sees_the_payable_so_far():
    rules = [FixedDiscount(id="fixed", amount_rial=200_000, priority=3),
             Cashback(id="cb", bp=1_000, expiry_days=7, priority=2, exclusive=True),
             replace(TEN, priority=1)]
    p = price(rules)
    assert (p.payable, p.credit, p.fired) == (800_000, 80_000, ("fixed", "cb"))


def test_duplicate_rule_ids_are_refused():
    with pytest.raises(ValueError, match="unique"):
        price([TEN, replace(TEN, bp=500)])


# --- funding ---------------------------------------------------------------------------------

def test_co_funded_discount_splits_exactly():
    rule = replace(TEN, funder=MELLAT, co_funders=(Share(MERCHANT, 3_000),))
    assert price([rule]).discount_by_funder() == {MERCHANT: 30_000, MELLAT: 70_000}


@pytest.mark.parametrize(("discount", "parts"), [
    (3, [1, 1, 1]),     # cumulative shares of 3: 1, then 2 - 1, then 3 - 2
    (1, [0, 1, 0]),     # half up at 6666 bp gives the one rial to the second funder
    (2, [1, 0, 1]),
    (100, [33, 34, 33]),
])
def test_split_rounding_never_creates_or_destroys_a_rial(discount, parts):
    rule = FixedDiscount(id="f", amount_rial=discount, funder=MELLAT,
                         co_funders=(Share(MERCHANT, 3_333), Share(NETWORK, 3_333)))
    split = price([rule]).discount_by_funder()
    assert [split.get(f, 0) for f in (MERCHANT, NETWORK, MELLAT)] == parts
    assert sum(split.values()) == discount


def test_discounts_of_several_rules_add_up_per_funder():
    rules = [replace(TEN, id="a", funder=NETWORK), replace(TEN, id="b", funder=NETWORK),
             FixedDiscount(id="c", amount_rial=1_000)]
    assert price(rules).discount_by_funder() == {NETWORK: 190_000, MERCHANT: 1_000}


# --- budgets and per-card daily limits -------------------------------------------------------

BUDGETED = replace(TEN, budget=1_000_000)


@pytest.mark.parametrize(("remaining", "discount"), [
    ({"ten": 100_000}, 100_000),
    ({"ten": 99_999}, 99_999),
    ({"ten": 1}, 1),
    ({"ten": 0}, 0),
    ({}, 0),                      # not reported: treated as spent
    ({"ten": 5_000_000}, 100_000),
])
def test_budget_at_its_bounds(remaining, discount):
    p = price([BUDGETED], remaining_budget=remaining)
    assert p.discount == discount
    assert p.reservations == ((Reservation("ten", discount),) if discount else ())


def test_remaining_above_the_budget_is_capped_by_the_budget():
    p = price([replace(TEN, budget=40_000)], remaining_budget={"ten": 5_000_000})
    assert p.reservations == (Reservation("ten", 40_000),)


@pytest.mark.parametrize(("granted", "discount"), [
    (0, 100_000), (50_000, 100_000), (50_001, 99_999), (149_999, 1), (150_000, 0),
    (200_000, 0)])
def test_daily_limit_per_card_at_its_bounds(granted, discount):
    rule = replace(TEN, daily_limit=150_000)
    p = price([rule], granted_today={"ten": granted})
    assert p.discount == discount
    assert p.reservations == ((Reservation("ten", discount),) if discount else ())


def test_points_limits_count_points():
    rule = Points(id="pts", rial_per_point=10_000, daily_limit=30, budget=1_000)
    p = price([rule], granted_today={"pts": 5}, remaining_budget={"pts": 1_000})
    assert (p.points, p.reservations) == (25, (Reservation("pts", 25),))


def test_unlimited_rules_reserve_nothing():
    assert price([TEN]).reservations == ()


# --- fees ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("code", "network_fee", "shaparak_fee"), [
    (PC.PURCHASE_SHAPARAK, 9_000, 1_200),
    (PC.PURCHASE_CLUB, 9_000, 0),
    (PC.PURCHASE_STORE_CREDIT, 10_000, 0),  # TEN does not apply: payable 1,000,000
])
def test_fees_are_on_the_payable(code, network_fee, shaparak_fee):
    p = evaluate([TEN], ctx(code=code, bank_bin="603799"), FeePlan(bp=100), ShaparakFeeRule())
    assert (p.network_fee, p.shaparak_fee) == (network_fee, shaparak_fee)


def test_shaparak_fee_cap_and_exemption():
    big = ctx(code=PC.PURCHASE_SHAPARAK, amount=500_000_000)
    assert evaluate([], big, FeePlan(), ShaparakFeeRule()).shaparak_fee == 40_000
    assert evaluate([], big, FeePlan(), ShaparakFeeRule(), shaparak_exempt=True
                    ).shaparak_fee == 0


def test_pricing_becomes_the_switch_quote():
    rules = [TEN, Cashback(id="cb", bp=500, expiry_days=1), Points(id="p", rial_per_point=1_000)]
    quote = evaluate(rules, ctx(), FeePlan(bp=100), None).to_quote()
    assert (quote.discount, quote.payable, quote.network_fee, quote.cashback, quote.points) == (
        100_000, 900_000, 9_000, 45_000, 900)


# --- validation ------------------------------------------------------------------------------

@pytest.mark.parametrize(("make", "message"), [
    (lambda: PercentDiscount(id="x", bp=0), "bp must be"),
    (lambda: PercentDiscount(id="x", bp=10_001), "bp must be"),
    (lambda: PercentDiscount(id="", bp=1), "id must be"),
    (lambda: PercentDiscount(id="x", bp=1, cap_rial=-1), "cap"),
    (lambda: FixedDiscount(id="x", amount_rial=0), "positive"),
    (lambda: FirstPurchases(id="x", steps_bp=()), "at least one step"),
    (lambda: StampCard(id="x", every=1, free_up_to_rial=1), "every"),
    (lambda: Cashback(id="x", bp=1, expiry_days=0), "at least one day"),
    (lambda: Cashback(id="x", bp=1, expiry_days=1, funder=MELLAT), "merchant or the network"),
    (lambda: Cashback(id="x", bp=1, expiry_days=1, co_funders=(Share(NETWORK, 1),)),
     "exactly one funder"),
    (lambda: TopUpBonus(id="x", bp=1, expiry_days=1, codes=PURCHASE_CODES), "codes"),
    (lambda: PercentDiscount(id="x", bp=1, codes=frozenset({PC.TOP_UP_CLUB})), "codes"),
    (lambda: PercentDiscount(id="x", bp=1, codes=frozenset()), "codes"),
    (lambda: PercentDiscount(id="x", bp=1, co_funders=(Share(NETWORK, 10_000),)), "shares"),
    (lambda: PercentDiscount(id="x", bp=1, co_funders=(Share(MERCHANT, 10),)), "once"),
    (lambda: PercentDiscount(id="x", bp=1, budget=-1), "negative"),
    (lambda: PercentDiscount(id="x", bp=1, bin_prefixes=("61a",)), "BIN"),
    (lambda: PercentDiscount(id="x", bp=1, valid_from=NOON, valid_until=NOON), "precede"),
    (lambda: Points(id="x", rial_per_point=0), "positive"),
    (lambda: Points(id="x", rial_per_point=1, multipliers=(Multiplier("a", 1),) * 2), "one"),
    (lambda: Lottery(id="x", rial_per_entry=1, max_entries=0), "max entries"),
    (lambda: Rule(id="x"), "kinds"),
    (lambda: DateSpan((7, 31), (8, 1)), "no Jalali day"),
    (lambda: sponsor(""), "sponsor"),
    (lambda: ctx(amount=0), "positive"),
    (lambda: ctx(code=PC.REFUND_CLUB), "not priced"),
])
def test_invalid_definitions_are_refused(make, message):
    with pytest.raises(ValueError, match=message):
        make()


