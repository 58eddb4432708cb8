"""Shared by the campaign tests: a purchase to vary, and pricing it without fees."""

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime

from protocol.fields import ProcessingCode
from switch.engine import Pricing, evaluate
from switch.pricing import FeePlan
from switch.rules import (
    MemberState,
    PercentDiscount,
    PurchaseContext,
    Rule,
    sponsor,
)

PC = ProcessingCode

NOON = datetime(2024, 5, 15, 12, 0)  # 1403/02/26, a Wednesday
MELLAT = sponsor("mellat")


def ctx(**changes) -> PurchaseContext:
    base = PurchaseContext(amount=1_000_000, code=PC.PURCHASE_CLUB, merchant_id=7, network_id=1,
                           terminal_id="T1", local_time=NOON, member=MemberState())
    return replace(base, **changes)


def member(**changes) -> MemberState:
    return replace(MemberState(), **changes)


def price(rules: Sequence[Rule], **changes) -> Pricing:
    return evaluate(rules, ctx(**changes), FeePlan(), None)


TEN = PercentDiscount(id="ten", bp=1_000)


def fires(rule: Rule, **changes) -> bool:
    return price([rule], **changes).fired == (rule.id,)

