"""Pricing of a purchase: discount, payable amount and the fees each party pays. Pure.

Rounding rule (the only one in the project): a rate in basis points applied to an amount of
rials gives `amount * bp / 10000` rounded half up to a whole rial, computed in integers
(`(amount * bp + 5000) // 10000`). Clamps (minimum, maximum, cap) apply after rounding. No
fee ever exceeds the amount it is charged on. Campaigns (discounts, cashback, points) come
with the pricing engine; until then they are zero and `Quote` carries the fields already.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

BP_PER_UNIT = 10_000


def apply_bp(amount_rial: int, bp: int) -> int:
    """`amount * bp / 10000`, rounded half up to a whole rial."""
    assert amount_rial >= 0
    assert 0 <= bp <= BP_PER_UNIT
    return (amount_rial * bp + BP_PER_UNIT // 2) // BP_PER_UNIT


@dataclass(frozen=True, slots=True)
class FeePlan:
    """The network's fee on a merchant's purchase: bp of the amount plus a fixed part,
    clamped to [min_rial, max_rial] (no maximum when None)."""

    bp: int = 0
    fixed_rial: int = 0
    min_rial: int = 0
    max_rial: int | None = None

    def problem(self) -> str | None:
        """Why this plan is invalid, or None."""
        if not 0 <= self.bp <= BP_PER_UNIT:
            return f"fee bp {self.bp}: 0 to {BP_PER_UNIT}"
        if self.fixed_rial < 0 or self.min_rial < 0:
            return "fee amounts must not be negative"
        if self.max_rial is not None and self.max_rial < self.min_rial:
            return "fee maximum must be at least the minimum"
        return None

    def fee(self, amount_rial: int) -> int:
        fee = apply_bp(amount_rial, self.bp) + self.fixed_rial
        fee = max(fee, self.min_rial)
        if self.max_rial is not None:
            fee = min(fee, self.max_rial)
        return min(fee, amount_rial)


@dataclass(frozen=True, slots=True)
class ShaparakFeeRule:
    """The PSP fee charged to the merchant on a bank-card purchase (the Central Bank rule
    as reported: a fixed fee below a threshold, else a rate with a cap)."""

    fixed_rial: int = 1_200
    threshold_rial: int = 6_000_000
    bp: int = 2
    cap_rial: int = 40_000

    def fee(self, amount_rial: int, exempt: bool) -> int:
        if exempt or amount_rial == 0:
            return 0
        if amount_rial < self.threshold_rial:
            return min(self.fixed_rial, amount_rial)
        return min(apply_bp(amount_rial, self.bp), self.cap_rial)


@dataclass(frozen=True, slots=True)
class Quote:
    """What phase 1 promises and phase 2 carries out. All amounts in rials (points: PTS)."""

    amount: int
    discount: int
    payable: int
    network_fee: int
    shaparak_fee: int
    cashback: int = 0
    points: int = 0

    def __post_init__(self) -> None:
        assert 0 <= self.discount <= self.amount
        assert self.payable == self.amount - self.discount
        assert 0 <= self.network_fee <= self.payable or self.payable == 0
        assert self.shaparak_fee >= 0
        assert self.cashback >= 0
        assert self.points >= 0

    def to_json(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, int]) -> Quote:
        return cls(**data)


def quote_purchase(amount_rial: int, plan: FeePlan, shaparak: ShaparakFeeRule | None,
                   shaparak_exempt: bool = False) -> Quote:
    """Price a purchase: no campaigns yet, so no discount; fees on the payable amount.
    `shaparak` is given for bank-card purchases only (the money moves over Shaparak)."""
    discount = 0
    payable = amount_rial - discount
    return Quote(
        amount=amount_rial, discount=discount, payable=payable,
        network_fee=plan.fee(payable),
        shaparak_fee=0 if shaparak is None else shaparak.fee(payable, shaparak_exempt),
    )


def refund_share(total: int, refunded_before: int, refund: int, amount: int) -> int:
    """The part of `total` (a fee, say) that a refund of `refund` out of `amount` returns,
    when `refunded_before` was already refunded. Floor for partial refunds; the refund that
    completes the amount returns the remainder, so the shares always sum to `total`."""
    assert refund > 0
    assert refunded_before + refund <= amount
    before = total * refunded_before // amount
    done = refunded_before + refund
    after = total if done == amount else total * done // amount
    return after - before
