"""Campaign rules and the purchase they are priced against. Pure definitions;
`switch.engine.evaluate` applies the rules.

A rule is one *effect* (a kind below) plus *conditions* that every kind shares, so that any
effect can be limited to a time, a bank's cards or a tier without a kind per combination:

| kind              | effect (amounts in integer rials; rates in basis points)             |
|-------------------|----------------------------------------------------------------------|
| `PercentDiscount` | bp of the running payable, capped at `cap_rial`                      |
| `FixedDiscount`   | a fixed number of rials off                                          |
| `FirstPurchases`  | the ladder: `steps_bp[n]` off the member's purchase number n+1       |
| `StampCard`       | every `every`-th visit at the merchant free, up to `free_up_to_rial` |
| `Cashback`        | bp of the payable as store credit that expires after `expiry_days`   |
| `TopUpBonus`      | charge X, receive X plus bp of X as store credit                     |
| `Points`          | payable x the basket's multiplier / `rial_per_point`, rounded down   |
| `Lottery`         | an entry per full `rial_per_entry` paid                              |

Shared conditions (all must hold; an empty set means "any"): validity [valid_from,
valid_until) in local time; `when` (Iranian weekdays, hours, Jalali date spans for occasions,
the member's birthday window); processing codes; network, merchants and terminals; member
tiers (tier rules: e.g. gold members get 10 %); bank card BIN prefixes (co-marketing: a bank
funds 10 % for its cards); a minimum purchase (on the amount before any discount).

Funding: every rule names its `funder` (the merchant of the purchase, the store network, or a
sponsor bank). A discount may be shared: `co_funders` pay their bp of it and the funder pays
the rest. Credit, points and entries have exactly one funder (the ledger gives credit one
issuer). Limits, in the rule's unit (rials of discount or credit, points, entries):
`budget` (the campaign's total; the caller supplies what remains) and `daily_limit` (per card
per day; the caller supplies what was granted today).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time

from protocol.fields import ProcessingCode
from switch import jalali
from switch.pricing import BP_PER_UNIT
from switch.tiers import Tier

PC = ProcessingCode
PURCHASE_CODES = frozenset({PC.PURCHASE_SHAPARAK, PC.PURCHASE_CLUB, PC.PURCHASE_STORE_CREDIT})
# By default rules reward money paid: spending store credit earns no new discount or credit.
PAID_CODES = frozenset({PC.PURCHASE_SHAPARAK, PC.PURCHASE_CLUB})
TOP_UP_CODES = frozenset({PC.TOP_UP_CLUB})
MAX_MULTIPLIER_BP = 100 * BP_PER_UNIT


class FunderKind(enum.StrEnum):
    MERCHANT = "merchant"  # the merchant of the purchase
    NETWORK = "network"    # the store network of the purchase
    SPONSOR = "sponsor"    # a third party, usually a bank, named by `sponsor`


@dataclass(frozen=True, slots=True, order=True)
class Funder:
    kind: FunderKind
    sponsor: str | None = None

    def __post_init__(self) -> None:
        if (self.kind is FunderKind.SPONSOR) != bool(self.sponsor):
            raise ValueError("a sponsor funder, and only it, names the sponsor")


MERCHANT = Funder(FunderKind.MERCHANT)
NETWORK = Funder(FunderKind.NETWORK)


def sponsor(code: str) -> Funder:
    return Funder(FunderKind.SPONSOR, code)


@dataclass(frozen=True, slots=True)
class Share:
    """A co-funder's part of a discount, in bp of it."""

    funder: Funder
    bp: int


# --- conditions ----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Hours:
    """[start, end) in local time; a span whose end is not after its start crosses midnight."""

    start: time
    end: time

    def contains(self, moment: time) -> bool:
        if self.start < self.end:
            return self.start <= moment < self.end
        return moment >= self.start or moment < self.end


@dataclass(frozen=True, slots=True)
class DateSpan:
    """Jalali days (month, day) from `start` to `end` inclusive: every year, or only the
    span that starts in `year`. A span whose end precedes its start crosses Nowruz."""

    start: tuple[int, int]
    end: tuple[int, int]
    year: int | None = None

    def __post_init__(self) -> None:
        for month, day in (self.start, self.end):
            if not (1 <= month <= 12 and 1 <= day <= (31 if month <= 6 else 30)):
                raise ValueError(f"no Jalali day {month}/{day}")

    def contains(self, day: jalali.JalaliDate) -> bool:
        key = (day.month, day.day)
        if self.start <= self.end:
            return self.start <= key <= self.end and self.year in (None, day.year)
        if key >= self.start:
            return self.year in (None, day.year)
        return key <= self.end and (self.year is None or day.year == self.year + 1)


NOWRUZ = DateSpan((1, 1), (1, 13))
YALDA = DateSpan((9, 30), (9, 30))


@dataclass(frozen=True, slots=True)
class BirthdayWindow:
    """From `days_before` days before to `days_after` days after the Jalali anniversary of
    the member's birth (birthdays are kept and celebrated in the Jalali calendar)."""

    days_before: int = 0
    days_after: int = 6

    def __post_init__(self) -> None:
        if not (0 <= self.days_before <= 90 and 0 <= self.days_after <= 90):
            raise ValueError("birthday window: 0 to 90 days either side")

    def contains(self, birthday: date, today: date) -> bool:
        birth = jalali.to_jalali(birthday)
        this_year = jalali.to_jalali(today).year
        # The nearest anniversary may fall in the Jalali year before or after today's.
        for year in (this_year - 1, this_year, this_year + 1):
            if jalali.MIN_YEAR <= year <= jalali.MAX_YEAR:
                days = (today - birth.anniversary(year).to_gregorian()).days
                if -self.days_before <= days <= self.days_after:
                    return True
        return False


@dataclass(frozen=True, slots=True)
class When:
    """Times a rule applies, in the merchant's local time; an empty condition always holds."""

    weekdays: frozenset[jalali.Weekday] = frozenset()
    hours: tuple[Hours, ...] = ()
    dates: tuple[DateSpan, ...] = ()
    birthday: BirthdayWindow | None = None


# --- the purchase --------------------------------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class MemberState:
    """The club member behind the card, as the caller read it before this purchase."""

    tier: Tier = Tier.MEMBER
    visits_at_merchant: int = 0    # earlier purchases at this merchant (stamps, ladders)
    purchases_in_network: int = 0  # earlier purchases anywhere in the network (ladders)
    birthday: date | None = None
    linked_bin: str | None = None  # BIN of the bank card the member linked, if any


@dataclass(frozen=True, slots=True, kw_only=True)
class PurchaseContext:
    amount: int  # rials asked, before any discount
    code: ProcessingCode
    merchant_id: int
    network_id: int
    terminal_id: str
    local_time: datetime  # the merchant's wall-clock time (Tehran), naive
    categories: tuple[str, ...] = ()  # basket category codes (field 48 IT)
    bank_bin: str | None = None  # BIN of the paying bank card (Shaparak purchases)
    member: MemberState | None = None  # None: a bank card that no club card is linked to
    granted_today: Mapping[str, int] = field(default_factory=dict)  # rule id -> to this card
    remaining_budget: Mapping[str, int] = field(default_factory=dict)  # rule id -> left

    def __post_init__(self) -> None:
        if self.amount <= 0:
            raise ValueError("amount must be positive")
        if self.code not in PURCHASE_CODES | TOP_UP_CODES:
            raise ValueError(f"processing code {self.code.value} is not priced by campaigns")

    @property
    def card_bin(self) -> str | None:
        """The bank card a co-marketing rule looks at: the paying one, else the linked one."""
        if self.bank_bin is not None:
            return self.bank_bin
        return None if self.member is None else self.member.linked_bin


# --- rules ---------------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class Rule:
    """What every kind shares. Higher `priority` applies first; an `exclusive` rule that
    grants anything stops every rule after it (see `switch.engine`)."""

    id: str
    priority: int = 0
    exclusive: bool = False
    funder: Funder = MERCHANT
    co_funders: tuple[Share, ...] = ()
    valid_from: datetime | None = None
    valid_until: datetime | None = None  # exclusive
    when: When = When()
    codes: frozenset[ProcessingCode] = PAID_CODES
    network_id: int | None = None  # None: any network
    merchant_ids: frozenset[int] = frozenset()
    terminal_ids: frozenset[str] = frozenset()
    tiers: frozenset[Tier] = frozenset()
    bin_prefixes: tuple[str, ...] = ()
    min_purchase_rial: int = 0
    budget: int | None = None
    daily_limit: int | None = None

    def __post_init__(self) -> None:
        problem = self._problem() or self._kind_problem()
        if problem:
            raise ValueError(f"rule {self.id!r}: {problem}")

    def _problem(self) -> str | None:
        if type(self) is Rule:
            return "a rule is one of the kinds, not the base class"
        if not self.id or len(self.id) > 64:
            return "id must be 1 to 64 characters"
        if self.valid_from and self.valid_until and self.valid_from >= self.valid_until:
            return "valid_from must precede valid_until"
        if not self.codes or not self.codes <= self.allowed_codes():
            return f"codes must be some of {sorted(c.value for c in self.allowed_codes())}"
        if any(v is not None and v < 0 for v in (self.budget, self.daily_limit)):
            return "budget and daily limit must not be negative"
        if self.min_purchase_rial < 0:
            return "minimum purchase must not be negative"
        if not all(p.isascii() and p.isdigit() and 1 <= len(p) <= 9 for p in self.bin_prefixes):
            return "BIN prefixes are 1 to 9 digits"
        return self._funding_problem()

    def _funding_problem(self) -> str | None:
        if self.co_funders and not self.is_discount():
            return "credit, points and entries have exactly one funder"
        funders = [self.funder, *(s.funder for s in self.co_funders)]
        if len(set(funders)) != len(funders):
            return "a funder may appear once"
        if any(s.bp <= 0 for s in self.co_funders) or sum(
                s.bp for s in self.co_funders) >= BP_PER_UNIT:
            return f"co-funder shares are positive and leave the funder some of {BP_PER_UNIT}"
        return None

    def _kind_problem(self) -> str | None:
        return None

    @classmethod
    def allowed_codes(cls) -> frozenset[ProcessingCode]:
        return PURCHASE_CODES

    @classmethod
    def is_discount(cls) -> bool:
        return False


def _rate_problem(bp: int, cap_rial: int | None) -> str | None:
    if not 0 < bp <= BP_PER_UNIT:
        return f"bp must be 1 to {BP_PER_UNIT}"
    if cap_rial is not None and cap_rial < 0:
        return "cap must not be negative"
    return None


@dataclass(frozen=True, kw_only=True)
class PercentDiscount(Rule):
    bp: int
    cap_rial: int | None = None

    def _kind_problem(self) -> str | None:
        return _rate_problem(self.bp, self.cap_rial)

    @classmethod
    def is_discount(cls) -> bool:
        return True


@dataclass(frozen=True, kw_only=True)
class FixedDiscount(Rule):
    amount_rial: int

    def _kind_problem(self) -> str | None:
        return None if self.amount_rial > 0 else "amount must be positive"

    @classmethod
    def is_discount(cls) -> bool:
        return True


@dataclass(frozen=True, kw_only=True)
class FirstPurchases(Rule):
    """`steps_bp[n]` off the purchase that has n earlier ones, counted at this merchant
    (`per_merchant`) or in the whole network; nothing from purchase len(steps_bp)+1 on."""

    steps_bp: tuple[int, ...]
    cap_rial: int | None = None
    per_merchant: bool = True

    def _kind_problem(self) -> str | None:
        if not self.steps_bp:
            return "the ladder needs at least one step"
        for bp in self.steps_bp:
            if problem := _rate_problem(bp, self.cap_rial):
                return problem
        return None

    @classmethod
    def is_discount(cls) -> bool:
        return True


@dataclass(frozen=True, kw_only=True)
class StampCard(Rule):
    """Every visit at the merchant is a stamp; the `every`-th is free up to a value. Visits
    are counted by the caller whatever the rules granted, so give a stamp card a priority
    above any exclusive rule, or its free visit can be lost to that rule."""

    every: int
    free_up_to_rial: int

    def _kind_problem(self) -> str | None:
        if self.every < 2:
            return "every must be at least 2"
        return None if self.free_up_to_rial > 0 else "free value must be positive"

    @classmethod
    def is_discount(cls) -> bool:
        return True


def _credit_problem(rule: Cashback | TopUpBonus) -> str | None:
    if rule.funder.kind is FunderKind.SPONSOR:
        return "store credit is issued by the merchant or the network"
    if rule.expiry_days < 1:
        return "credit must be valid at least one day"
    return _rate_problem(rule.bp, rule.cap_rial)


@dataclass(frozen=True, kw_only=True)
class Cashback(Rule):
    bp: int
    expiry_days: int
    cap_rial: int | None = None

    def _kind_problem(self) -> str | None:
        return _credit_problem(self)


@dataclass(frozen=True, kw_only=True)
class TopUpBonus(Rule):
    bp: int
    expiry_days: int
    cap_rial: int | None = None
    codes: frozenset[ProcessingCode] = TOP_UP_CODES

    def _kind_problem(self) -> str | None:
        return _credit_problem(self)

    @classmethod
    def allowed_codes(cls) -> frozenset[ProcessingCode]:
        return TOP_UP_CODES


@dataclass(frozen=True, slots=True)
class Multiplier:
    category: str
    bp: int  # 20_000 doubles the points; 0 gives none


@dataclass(frozen=True, kw_only=True)
class Points(Rule):
    """Points on the payable. Field 48 lists the basket's categories but not what each cost,
    so the whole payable earns the highest multiplier among them (categories without one
    count 1x): the member is never short-changed by a mixed basket."""

    rial_per_point: int
    multipliers: tuple[Multiplier, ...] = ()

    def _kind_problem(self) -> str | None:
        if self.rial_per_point <= 0:
            return "rial per point must be positive"
        if len({m.category for m in self.multipliers}) != len(self.multipliers):
            return "a category may have one multiplier"
        if not all(0 <= m.bp <= MAX_MULTIPLIER_BP for m in self.multipliers):
            return f"multipliers are 0 to {MAX_MULTIPLIER_BP} bp"
        return None


@dataclass(frozen=True, kw_only=True)
class Lottery(Rule):
    rial_per_entry: int
    max_entries: int | None = None

    def _kind_problem(self) -> str | None:
        if self.rial_per_entry <= 0:
            return "rial per entry must be positive"
        return None if self.max_entries is None or self.max_entries > 0 else "max entries > 0"
