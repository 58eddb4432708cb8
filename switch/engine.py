"""Pricing a purchase under campaign rules: `evaluate`. Deterministic; no I/O.

How rules combine, in this order:

1. Order: priority, highest first, then id. Ids must be unique, so the order of the list
   given never matters.
2. Eligibility: every condition of the rule holds (`switch.rules`), and if it has a budget
   or a daily limit, some of both is left. Rules that need a member (tiers, birthdays,
   ladders, stamps, and every reward) never apply to a bank card with no club card linked.
3. Discounts, in order, each on the running payable (the amount less the discounts before
   it): a rate through `apply_bp` (half up to a whole rial, the project's one rounding
   rule), then the rule's cap, then at most the running payable, the card's headroom under
   the daily limit and the budget left. So the discount never exceeds the amount.
4. Exclusivity: an exclusive rule that grants anything stops every rule after it; rules
   before it keep what they granted. One that grants nothing (its budget is spent, say, or
   a stamp card's visit that only counts a stamp) stops nothing.
5. Rewards (cashback, top-up bonus, points, lottery entries) are computed on the final
   payable, what the customer actually pays, wherever they stand in the order. (An exclusive
   reward that grants ends the walk, so the payable it sees is already final.) Credit is a
   rate through `apply_bp`; points (payable x multiplier / rial_per_point) and entries
   (payable / rial_per_entry) round down, so splitting a purchase never earns more.
6. Funding: a discount D is split among the rule's co-funders and then its funder by
   cumulative shares: a funder whose shares up to and including its own sum to c gets
   apply_bp(D, c) less what the funders before it got; the funder comes last with
   c = 10000. The parts are never negative and sum exactly to D.
7. Fees on the final payable: the merchant's `FeePlan` (none on top-ups, as in phase 1) and
   the Shaparak fee on bank purchases only.

Rounding never creates or destroys a rial: amount == payable + the sum of the discount parts.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from protocol.fields import ProcessingCode
from switch import jalali
from switch.pricing import BP_PER_UNIT, FeePlan, Quote, ShaparakFeeRule, apply_bp
from switch.rules import (
    Cashback,
    FirstPurchases,
    FixedDiscount,
    Funder,
    Lottery,
    PercentDiscount,
    Points,
    PurchaseContext,
    Rule,
    Share,
    StampCard,
    TopUpBonus,
)


class Effect(enum.StrEnum):
    DISCOUNT = "discount"          # rials off the amount
    CASHBACK = "cashback"          # rials of store credit
    TOP_UP_BONUS = "top_up_bonus"  # rials of store credit
    POINTS = "points"
    LOTTERY = "lottery"            # entries


@dataclass(frozen=True, slots=True)
class Grant:
    """What one rule gives and who pays for it (one grant per funder of a discount)."""

    rule_id: str
    effect: Effect
    funder: Funder
    amount: int
    expires_at: datetime | None = None  # store credit: local time it stops being usable


@dataclass(frozen=True, slots=True)
class StampProgress:
    rule_id: str
    stamps: int     # stamps toward the next free visit, after this one
    every: int
    free_rial: int  # the value given free on this visit (0 unless it was the every-th)


@dataclass(frozen=True, slots=True)
class Reservation:
    """To hold against the rule's budget and the card's daily limit; released on void."""

    rule_id: str
    amount: int


@dataclass(frozen=True, slots=True)
class Pricing:
    amount: int
    discount: int
    payable: int
    network_fee: int
    shaparak_fee: int
    grants: tuple[Grant, ...]  # in the order of `fired`
    stamps: tuple[StampProgress, ...]
    reservations: tuple[Reservation, ...]
    fired: tuple[str, ...]  # rule ids in the order they were applied

    def __post_init__(self) -> None:
        assert 0 <= self.discount <= self.amount
        assert self.payable == self.amount - self.discount
        assert self.discount == self.total(Effect.DISCOUNT)
        assert all(g.amount > 0 for g in self.grants)
        assert self.network_fee >= 0 and self.shaparak_fee >= 0

    def total(self, *effects: Effect) -> int:
        return sum(g.amount for g in self.grants if g.effect in effects)

    @property
    def credit(self) -> int:
        """Store credit granted (cashback and top-up bonus), rials."""
        return self.total(Effect.CASHBACK, Effect.TOP_UP_BONUS)

    @property
    def points(self) -> int:
        return self.total(Effect.POINTS)

    @property
    def lottery_entries(self) -> int:
        return self.total(Effect.LOTTERY)

    def discount_by_funder(self) -> dict[Funder, int]:
        split: dict[Funder, int] = {}
        for g in self.grants:
            if g.effect is Effect.DISCOUNT:
                split[g.funder] = split.get(g.funder, 0) + g.amount
        return split

    def to_quote(self) -> Quote:
        return Quote(amount=self.amount, discount=self.discount, payable=self.payable,
                     network_fee=self.network_fee, shaparak_fee=self.shaparak_fee,
                     cashback=self.credit, points=self.points)


@dataclass(frozen=True, slots=True)
class _Outcome:
    grants: tuple[Grant, ...] = ()
    stamp: StampProgress | None = None

    @property
    def fired(self) -> bool:
        """Shown among the rules fired: it granted, or counted a stamp."""
        return bool(self.grants) or self.stamp is not None

    @property
    def total(self) -> int:
        return sum(g.amount for g in self.grants)


def evaluate(rules: Iterable[Rule], ctx: PurchaseContext, fee_plan: FeePlan,
             shaparak_rule: ShaparakFeeRule | None, *, shaparak_exempt: bool = False
             ) -> Pricing:
    """Price the purchase in `ctx` under `rules`; see the module docstring for how."""
    ordered = _ordered(rules)
    payable = ctx.amount
    outcomes: dict[str, _Outcome] = {}
    deferred: list[tuple[Rule, int | None]] = []
    for rule in ordered:
        headroom = _headroom(rule, ctx)
        if headroom == 0 or not _applies(rule, ctx):
            continue
        if rule.is_discount():
            outcome = _discount(rule, ctx, payable, headroom)
            payable -= outcome.total
        elif rule.exclusive:
            outcome = _reward(rule, ctx, payable, headroom)
        else:
            deferred.append((rule, headroom))  # needs the final payable
            continue
        outcomes[rule.id] = outcome
        # A stamp counted without a free visit grants nothing, so it blocks nothing (step 4).
        if rule.exclusive and outcome.grants:
            break
    for rule, headroom in deferred:
        outcomes[rule.id] = _reward(rule, ctx, payable, headroom)
    fired = [(rule, outcomes[rule.id]) for rule in ordered
             if rule.id in outcomes and outcomes[rule.id].fired]
    return _pricing(ctx, fired, payable, fee_plan, shaparak_rule, shaparak_exempt)


def _ordered(rules: Iterable[Rule]) -> list[Rule]:
    ordered = sorted(rules, key=lambda r: (-r.priority, r.id))
    ids = [r.id for r in ordered]
    if len(set(ids)) != len(ids):
        raise ValueError("rule ids must be unique (the order would otherwise depend on input)")
    return ordered


def _headroom(rule: Rule, ctx: PurchaseContext) -> int | None:
    """How much the rule may still grant this card now; None when unlimited. A budget the
    caller did not report counts as spent: the engine never guesses in a funder's disfavour."""
    limits = []
    if rule.budget is not None:
        limits.append(min(rule.budget, ctx.remaining_budget.get(rule.id, 0)))
    if rule.daily_limit is not None:
        limits.append(rule.daily_limit - ctx.granted_today.get(rule.id, 0))
    return max(0, min(limits)) if limits else None


_NEEDS_MEMBER = (FirstPurchases, StampCard, Cashback, TopUpBonus, Points, Lottery)


def _applies(rule: Rule, ctx: PurchaseContext) -> bool:
    member = ctx.member
    if member is None:
        if isinstance(rule, _NEEDS_MEMBER) or rule.tiers or rule.when.birthday is not None:
            return False
    elif rule.tiers and member.tier not in rule.tiers:
        return False
    card_bin = ctx.card_bin
    if rule.bin_prefixes and not (card_bin and card_bin.startswith(rule.bin_prefixes)):
        return False
    return (ctx.code in rule.codes and ctx.amount >= rule.min_purchase_rial
            and _in_scope(rule, ctx) and _in_time(rule, ctx))


def _in_scope(rule: Rule, ctx: PurchaseContext) -> bool:
    return (rule.network_id in (None, ctx.network_id)
            and (not rule.merchant_ids or ctx.merchant_id in rule.merchant_ids)
            and (not rule.terminal_ids or ctx.terminal_id in rule.terminal_ids))


def _in_time(rule: Rule, ctx: PurchaseContext) -> bool:
    now, when = ctx.local_time, rule.when
    if rule.valid_from is not None and now < rule.valid_from:
        return False
    if rule.valid_until is not None and now >= rule.valid_until:
        return False
    if when.weekdays and jalali.weekday(now.date()) not in when.weekdays:
        return False
    if when.hours and not any(h.contains(now.time()) for h in when.hours):
        return False
    if when.dates and not any(d.contains(jalali.to_jalali(now.date())) for d in when.dates):
        return False
    if when.birthday is None:
        return True
    birthday = ctx.member.birthday if ctx.member else None
    return birthday is not None and when.birthday.contains(birthday, now.date())


def _limit(amount: int, *limits: int | None) -> int:
    return min([amount, *(x for x in limits if x is not None)])


def _discount(rule: Rule, ctx: PurchaseContext, payable: int, headroom: int | None
              ) -> _Outcome:
    if isinstance(rule, StampCard):
        return _stamp(rule, ctx, payable, headroom)
    if isinstance(rule, PercentDiscount):
        raw = _limit(apply_bp(payable, rule.bp), rule.cap_rial)
    elif isinstance(rule, FixedDiscount):
        raw = rule.amount_rial
    else:
        assert isinstance(rule, FirstPurchases), rule
        raw = _ladder(rule, ctx, payable)
    return _Outcome(_split(rule, Effect.DISCOUNT, _limit(raw, payable, headroom)))


def _ladder(rule: FirstPurchases, ctx: PurchaseContext, payable: int) -> int:
    assert ctx.member is not None
    member = ctx.member
    earlier = member.visits_at_merchant if rule.per_merchant else member.purchases_in_network
    if earlier >= len(rule.steps_bp):
        return 0
    return _limit(apply_bp(payable, rule.steps_bp[earlier]), rule.cap_rial)


def _stamp(rule: StampCard, ctx: PurchaseContext, payable: int, headroom: int | None
           ) -> _Outcome:
    assert ctx.member is not None
    stamps = (ctx.member.visits_at_merchant + 1) % rule.every
    free = 0 if stamps else _limit(rule.free_up_to_rial, payable, headroom)
    return _Outcome(_split(rule, Effect.DISCOUNT, free),
                    StampProgress(rule.id, stamps, rule.every, free))


def _reward(rule: Rule, ctx: PurchaseContext, payable: int, headroom: int | None
            ) -> _Outcome:
    expires_at = None
    if isinstance(rule, Cashback | TopUpBonus):
        effect = Effect.CASHBACK if isinstance(rule, Cashback) else Effect.TOP_UP_BONUS
        raw = _limit(apply_bp(payable, rule.bp), rule.cap_rial)
        expires_at = ctx.local_time + timedelta(days=rule.expiry_days)
    elif isinstance(rule, Points):
        effect, raw = Effect.POINTS, _points(rule, ctx.categories, payable)
    else:
        assert isinstance(rule, Lottery), rule
        # An entry per *full* amount spent, as the draw's terms say: no rounding up.
        effect, raw = Effect.LOTTERY, _limit(payable // rule.rial_per_entry, rule.max_entries)
    return _Outcome(_split(rule, effect, _limit(raw, headroom), expires_at))


def _points(rule: Points, categories: tuple[str, ...], payable: int) -> int:
    by_category = {m.category: m.bp for m in rule.multipliers}
    plain = not categories or any(c not in by_category for c in categories)
    multiplier = max([by_category[c] for c in categories if c in by_category]
                     + ([BP_PER_UNIT] if plain else []))
    # A point per *full* rial_per_point paid (at 1x), rounded down like lottery entries:
    # rounding up would let a purchase split in two earn more than the whole.
    return payable * multiplier // (rule.rial_per_point * BP_PER_UNIT)


def _split(rule: Rule, effect: Effect, amount: int, expires_at: datetime | None = None
           ) -> tuple[Grant, ...]:
    """`amount` in parts per funder by cumulative shares (module docstring, step 6)."""
    rest = BP_PER_UNIT - sum(s.bp for s in rule.co_funders)
    grants, cumulative_bp, given = [], 0, 0
    for share in (*rule.co_funders, Share(rule.funder, rest)):
        cumulative_bp += share.bp
        upto = apply_bp(amount, cumulative_bp)
        if upto > given:
            grants.append(Grant(rule.id, effect, share.funder, upto - given, expires_at))
        given = upto
    return tuple(grants)


def _pricing(ctx: PurchaseContext, fired: list[tuple[Rule, _Outcome]], payable: int,
             fee_plan: FeePlan, shaparak_rule: ShaparakFeeRule | None,
             shaparak_exempt: bool) -> Pricing:
    shaparak_fee = 0
    if ctx.code is ProcessingCode.PURCHASE_SHAPARAK and shaparak_rule is not None:
        shaparak_fee = shaparak_rule.fee(payable, shaparak_exempt)
    return Pricing(
        amount=ctx.amount, discount=ctx.amount - payable, payable=payable,
        network_fee=0 if ctx.code is ProcessingCode.TOP_UP_CLUB else fee_plan.fee(payable),
        shaparak_fee=shaparak_fee,
        grants=tuple(g for _, outcome in fired for g in outcome.grants),
        stamps=tuple(o.stamp for _, o in fired if o.stamp is not None),
        reservations=tuple(
            Reservation(rule.id, outcome.total) for rule, outcome in fired
            if outcome.total and (rule.budget is not None or rule.daily_limit is not None)),
        fired=tuple(rule.id for rule, _ in fired))
