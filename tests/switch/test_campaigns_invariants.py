"""Invariants of the campaign engine over random rule sets and purchases."""

from dataclasses import replace
from datetime import date, datetime, time
from typing import Any, TypeVar

from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.fields import ProcessingCode
from switch.engine import Effect, Pricing, evaluate
from switch.jalali import Weekday
from switch.pricing import FeePlan, ShaparakFeeRule
from switch.rules import (
    MERCHANT,
    NETWORK,
    PURCHASE_CODES,
    BirthdayWindow,
    Cashback,
    DateSpan,
    FirstPurchases,
    FixedDiscount,
    Hours,
    Lottery,
    MemberState,
    Multiplier,
    PercentDiscount,
    Points,
    PurchaseContext,
    Rule,
    Share,
    StampCard,
    TopUpBonus,
    When,
    sponsor,
)
from switch.tiers import Tier

PC = ProcessingCode
T = TypeVar("T")
IDS = [f"r{i}" for i in range(8)]
CATEGORIES = ["bakery", "dairy", "tobacco"]
BINS = ["610433", "603799"]

bp = st.integers(1, 10_000)
rial = st.integers(0, 10**8)
maybe_cap = st.none() | st.integers(1, 10**8)
when = st.builds(
    When,
    weekdays=st.frozensets(st.sampled_from(Weekday), max_size=3),
    hours=st.lists(st.builds(Hours, st.times(), st.times()), max_size=1).map(tuple),
    dates=st.just(()) | st.just((DateSpan((12, 20), (1, 13)),)),
    birthday=st.none() | st.builds(BirthdayWindow, st.integers(0, 10), st.integers(0, 10)))
co_funders = st.sampled_from([(), (Share(NETWORK, 3_000),),
                              (Share(sponsor("mellat"), 1),
                               Share(NETWORK, 6_666))])


def mostly(usual: T, other: st.SearchStrategy[T]) -> st.SearchStrategy[T]:
    """Usually `usual`, so that most rules apply and the walk has something to combine."""
    return st.one_of(st.just(usual), st.just(usual), st.just(usual), other)


common = {"id": st.just("placeholder"), "priority": st.integers(0, 3),
          "exclusive": mostly(False, st.just(True))}
# Most rules have no condition besides their kind's, so that the walk has plenty to combine;
# the others have a random subset of conditions, and of limits.
conditions: st.SearchStrategy[dict[str, Any]] = mostly({}, st.fixed_dictionaries({}, optional={
    "when": when,
    "tiers": st.frozensets(st.sampled_from(Tier), min_size=1),
    "bin_prefixes": st.just(("6104",)),
    "min_purchase_rial": rial,
}))
some_limits: st.SearchStrategy[dict[str, Any]] = st.fixed_dictionaries({}, optional={
    "budget": st.integers(0, 10**7), "daily_limit": st.integers(0, 10**7)})
discount_common = {**common, "co_funders": co_funders,
                   "codes": st.just(PURCHASE_CODES) | st.just(frozenset({PC.PURCHASE_CLUB}))}
kinds = [
    st.builds(PercentDiscount, bp=bp, cap_rial=maybe_cap, **discount_common),
    st.builds(FixedDiscount, amount_rial=st.integers(1, 10**8), **discount_common),
    st.builds(FirstPurchases, steps_bp=st.lists(bp, min_size=1, max_size=4).map(tuple),
              cap_rial=maybe_cap, per_merchant=st.booleans(), **discount_common),
    st.builds(StampCard, every=st.integers(2, 12), free_up_to_rial=st.integers(1, 10**7),
              **discount_common),
    st.builds(Cashback, bp=bp, expiry_days=st.integers(1, 365), cap_rial=maybe_cap,
              funder=st.sampled_from([MERCHANT, NETWORK]), **common),
    st.builds(TopUpBonus, bp=bp, expiry_days=st.integers(1, 365), cap_rial=maybe_cap,
              **common),
    st.builds(Points, rial_per_point=st.integers(1, 100_000), multipliers=st.just((
        Multiplier("bakery", 30_000), Multiplier("tobacco", 0))), **common),
    st.builds(Lottery, rial_per_entry=st.integers(1, 10**7),
              max_entries=st.none() | st.integers(1, 10), **common),
]


@st.composite
def rule_sets(draw: st.DrawFn, limited: bool = False) -> list[Rule]:
    """Up to 8 rules with distinct ids; `limited`: each has a budget or a daily limit."""
    limits = some_limits.filter(bool) if limited else mostly({}, some_limits)
    ids = draw(st.lists(st.sampled_from(IDS), unique=True, max_size=len(IDS)))
    return [replace(draw(st.one_of(kinds)), id=i, **draw(conditions), **draw(limits))
            for i in ids]


members = st.builds(
    MemberState, tier=st.sampled_from(Tier),
    visits_at_merchant=st.integers(0, 4) | st.integers(0, 30),
    purchases_in_network=st.integers(0, 4) | st.integers(0, 30),
    birthday=st.none() | st.dates(date(1940, 1, 1), date(2020, 1, 1)),
    linked_bin=st.none() | st.sampled_from(BINS))
contexts = st.builds(
    PurchaseContext,
    amount=st.integers(100_000, 100_000_000) | st.integers(1, 10**10),
    code=st.sampled_from([PC.PURCHASE_CLUB, PC.PURCHASE_CLUB, PC.PURCHASE_SHAPARAK,
                          PC.PURCHASE_STORE_CREDIT, PC.TOP_UP_CLUB]),
    merchant_id=st.just(7), network_id=st.just(1), terminal_id=st.just("T1"),
    local_time=st.datetimes(datetime(2020, 1, 1), datetime(2030, 12, 31)),
    categories=st.lists(st.sampled_from(CATEGORIES), unique=True).map(tuple),
    bank_bin=st.none() | st.sampled_from(BINS),
    member=st.integers(0, 3).flatmap(lambda n: members if n else st.none()),
    granted_today=st.dictionaries(st.sampled_from(IDS), st.integers(0, 10**7)),
    remaining_budget=st.fixed_dictionaries({}, optional={i: st.integers(0, 10**7) for i in IDS}))
fee_plans = st.builds(FeePlan, bp=st.integers(0, 10_000), fixed_rial=st.integers(0, 10_000),
                      min_rial=st.integers(0, 10_000), max_rial=st.none())


def _priced(rules: list[Rule], ctx: PurchaseContext, plan: FeePlan) -> Pricing:
    return evaluate(rules, ctx, plan, ShaparakFeeRule())


@settings(max_examples=400)
@given(rule_sets(), contexts, fee_plans)
def test_amounts_are_bounded_and_conserved(rules, ctx, plan):
    p = _priced(rules, ctx, plan)
    assert 0 <= p.discount <= p.amount
    assert p.payable >= 0
    assert p.payable + sum(p.discount_by_funder().values()) == p.amount  # no rial made or lost
    assert 0 <= p.network_fee <= p.payable
    assert 0 <= p.shaparak_fee <= p.payable
    assert p.credit >= 0 and p.points >= 0 and p.lottery_entries >= 0
    assert all(g.amount > 0 for g in p.grants)
    assert p.to_quote().payable == p.payable


@settings(max_examples=400)
@given(rule_sets(limited=True), contexts)
def test_budgets_and_daily_limits_are_never_exceeded(rules, ctx):
    p = _priced(rules, ctx, FeePlan())
    by_id = {r.id: r for r in rules}
    granted: dict[str, int] = {}
    for g in p.grants:
        granted[g.rule_id] = granted.get(g.rule_id, 0) + g.amount
    for rule_id, amount in granted.items():
        rule = by_id[rule_id]
        if rule.budget is not None:
            assert amount <= min(rule.budget, ctx.remaining_budget.get(rule_id, 0))
        if rule.daily_limit is not None:
            assert amount <= rule.daily_limit - ctx.granted_today.get(rule_id, 0)
    limited = {r for r, amount in granted.items()
               if by_id[r].budget is not None or by_id[r].daily_limit is not None}
    assert {r.rule_id: r.amount for r in p.reservations} == {r: granted[r] for r in limited}


@settings(max_examples=200)
@given(rule_sets(), contexts, st.randoms(use_true_random=False))
def test_same_input_same_output_whatever_the_rule_order(rules, ctx, rnd):
    shuffled = list(rules)
    rnd.shuffle(shuffled)
    assert _priced(shuffled, ctx, FeePlan(bp=50)) == _priced(rules, ctx, FeePlan(bp=50))


@settings(max_examples=400)
@given(rule_sets(), contexts)
def test_fired_rules_follow_the_order_and_an_exclusive_one_that_grants_is_last(rules, ctx):
    p = _priced(rules, ctx, FeePlan())
    by_id = {r.id: r for r in rules}
    keys = [(-by_id[i].priority, i) for i in p.fired]
    assert keys == sorted(keys)
    granted = {g.rule_id for g in p.grants}
    blocking = [i for i in p.fired if by_id[i].exclusive and i in granted]
    assert not blocking or blocking == [p.fired[-1]]
    # A rule fires by granting or by counting a stamp: an exclusive rule that fired without
    # a grant (a stamp counted, no free visit) blocked nothing.
    stamped = {s.rule_id for s in p.stamps}
    assert set(p.fired) == granted | stamped
    assert all(s.free_rial == 0 for s in p.stamps if s.rule_id not in granted)


@settings(max_examples=300)
@given(rule_sets(), contexts)
def test_a_rule_that_grants_nothing_changes_nothing(rules, ctx):
    """Exclusive or not, a rule that granted nothing (a stamp counted without a free visit,
    a spent budget, a condition that fails) neither blocks nor changes any other grant."""
    p = _priced(rules, ctx, FeePlan())
    granted = {g.rule_id for g in p.grants}
    for idle in (r for r in rules if r.id not in granted):
        without = _priced([r for r in rules if r is not idle], ctx, FeePlan())
        assert without.grants == p.grants


@settings(max_examples=300)
@given(rule_sets(), contexts)
def test_rewards_go_only_to_members_and_credit_only_from_credit_rules(rules, ctx):
    p = _priced(rules, ctx, FeePlan())
    rewards = [g for g in p.grants if g.effect is not Effect.DISCOUNT]
    if ctx.member is None:
        assert rewards == []
    by_id = {r.id: r for r in rules}
    for g in rewards:
        assert g.funder == by_id[g.rule_id].funder  # one funder for credit, points, entries
        assert (g.expires_at is not None) == (g.effect in (Effect.CASHBACK, Effect.TOP_UP_BONUS))


@given(st.integers(1, 10**9), st.integers(1, 9_998), st.integers(1, 10**12))
def test_a_co_funded_discount_is_split_exactly(discount, share_bp, amount):
    rule = FixedDiscount(id="f", amount_rial=discount, funder=sponsor("bank"),
                         co_funders=(Share(MERCHANT, share_bp), Share(NETWORK, 1)))
    ctx = PurchaseContext(amount=amount, code=PC.PURCHASE_CLUB, merchant_id=1, network_id=1,
                          terminal_id="T", local_time=datetime.combine(date(2024, 1, 1), time()))
    p = evaluate([rule], ctx, FeePlan(), None)
    assert sum(p.discount_by_funder().values()) == p.discount == min(discount, amount)
