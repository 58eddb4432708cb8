"""The campaign file's schema: one pydantic model per rule kind of `switch.rules`. Pure.

A campaign is written in human units (integer rials, basis points, Jalali dates such as
"1405-01-01", times such as "08:00", codes rather than database ids) and becomes a
`switch.rules.Rule` through `CampaignSpec.to_rule()`. The switch stores a campaign as
`model_dump(mode="json")`, which is the same human form plus the database ids of its network
and merchant (`network_id`, `merchant_id`), filled in when it is stored and never written in
a file (`switch.campaign_file` refuses them there).

Budgets and daily limits are named by the unit the kind grants: `budget_rial` and
`daily_limit_rial` for discounts and store credit, `budget_points` for points and
`budget_entries` for lottery entries.
"""

from __future__ import annotations

import re
from datetime import date, datetime, time
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    field_validator,
)

from protocol.fields import ProcessingCode
from switch import jalali, rules
from switch.tiers import Tier

# --- scalar formats ------------------------------------------------------------------------

_MOMENT = re.compile(r"^(\d{4})-(\d{2})-(\d{2})(?:[ T](\d{2}):(\d{2}))?$")
_DAY = re.compile(r"^(?:(\d{4})-)?(\d{2})-(\d{2})$")
_TIME = re.compile(r"^(\d{2}):(\d{2})$")


def _parse_moment(value: Any) -> Any:
    """Jalali "YYYY-MM-DD" or "YYYY-MM-DD HH:MM" (local time) to a Gregorian datetime.
    An unquoted TOML date arrives as a `date`: its numbers are read as the Jalali date."""
    if isinstance(value, datetime):
        value = f"{value:%Y-%m-%d %H:%M}"
    elif isinstance(value, date):
        value = f"{value:%Y-%m-%d}"
    if not isinstance(value, str) or not (match := _MOMENT.match(value)):
        raise ValueError('must be a Jalali date "YYYY-MM-DD", optionally with " HH:MM"')
    year, month, day = (int(g) for g in match.group(1, 2, 3))
    hour, minute = (int(g) if g else 0 for g in match.group(4, 5))
    gregorian = jalali.to_gregorian(year, month, day)  # ValueError names the bad day
    return datetime.combine(gregorian, time(hour, minute))


def _format_moment(moment: datetime) -> str:
    day = jalali.to_jalali(moment.date())
    text = f"{day.year:04d}-{day.month:02d}-{day.day:02d}"
    return text if moment.time() == time() else f"{text} {moment:%H:%M}"


def _parse_time(value: Any) -> Any:
    if isinstance(value, time) and not (value.second or value.microsecond or value.tzinfo):
        return value
    if isinstance(value, str) and (match := _TIME.match(value)):
        hour, minute = int(match[1]), int(match[2])
        if hour < 24 and minute < 60:
            return time(hour, minute)
    raise ValueError('must be a time "HH:MM" (00:00 to 23:59)')


# Jalali local date-time, written "1405-01-01" or "1405-01-01 08:00".
JalaliMoment = Annotated[datetime, BeforeValidator(_parse_moment),
                         PlainSerializer(_format_moment, return_type=str)]
ClockTime = Annotated[time, BeforeValidator(_parse_time),
                      PlainSerializer(lambda t: f"{t:%H:%M}", return_type=str)]
Code = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{1,31}$")]
# Amounts, counts and budgets must fit the database's bigint; credit must expire within a
# century (a longer expiry overflows date arithmetic). These bound the format, not policy.
INT_MAX = 2**63 - 1
EXPIRY_DAYS_MAX = 36_500
Int = Annotated[int, Field(le=INT_MAX)]
Rial = Annotated[int, Field(ge=0, le=INT_MAX)]
Bp = Annotated[int, Field(ge=0, le=rules.BP_PER_UNIT)]
WeekdayName = Literal["saturday", "sunday", "monday", "tuesday", "wednesday", "thursday",
                      "friday"]
TierName = Literal["member", "bronze", "silver", "gold"]
_CODES = tuple(c.value for c in ProcessingCode)


def _check_code(value: str) -> str:
    if value not in _CODES:
        raise ValueError(f"not a processing code (one of {', '.join(_CODES)})")
    return value


ProcessingCodeValue = Annotated[str, AfterValidator(_check_code)]
_FUNDER = re.compile(r"^(merchant|network|sponsor:[a-z0-9][a-z0-9-]{0,31})$")


def _funder(text: str) -> rules.Funder:
    kind, _, sponsor = text.partition(":")
    return rules.Funder(rules.FunderKind(kind), sponsor or None)


def _check_funder(text: str) -> str:
    if not _FUNDER.match(text):
        raise ValueError('must be "merchant", "network" or "sponsor:CODE" (e.g. sponsor:melli)')
    return text


FunderText = Annotated[str, BeforeValidator(lambda v: _check_funder(v) if isinstance(
    v, str) else v)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


# --- conditions ----------------------------------------------------------------------------

class ShareSpec(_Model):
    funder: FunderText
    bp: Annotated[int, Field(gt=0, lt=rules.BP_PER_UNIT)]


class HoursSpec(_Model):
    start: ClockTime
    end: ClockTime


class DateSpanSpec(_Model):
    """Jalali days "MM-DD" every year, or "YYYY-MM-DD" for one occasion; `end` is inclusive
    and may precede `start` to cross Nowruz (then `end` falls in the next year)."""

    start: str
    end: str

    def to_span(self) -> rules.DateSpan:
        start, end = _day(self.start, "start"), _day(self.end, "end")
        if (start[0] is None) != (end[0] is None):
            raise ValueError("start and end both name a year, or neither does")
        year = start[0]
        span = rules.DateSpan(start[1:], end[1:], year)
        if year is not None:
            crosses = span.end < span.start
            if end[0] != year + crosses:
                raise ValueError(f"end must fall in {year + crosses}")
            jalali.JalaliDate(year, *span.start)  # refuses 30 Esfand of a common year
            jalali.JalaliDate(year + crosses, *span.end)
        return span


def _day(text: str, name: str) -> tuple[int | None, int, int]:
    match = _DAY.match(text)
    if not match:
        raise ValueError(f'{name} must be a Jalali day "MM-DD" or "YYYY-MM-DD"')
    return (int(match[1]) if match[1] else None), int(match[2]), int(match[3])


class BirthdaySpec(_Model):
    days_before: Annotated[int, Field(ge=0, le=90)] = 0
    days_after: Annotated[int, Field(ge=0, le=90)] = 6


class WhenSpec(_Model):
    weekdays: list[WeekdayName] = []
    hours: list[HoursSpec] = []
    dates: list[DateSpanSpec] = []
    birthday: BirthdaySpec | None = None

    @field_validator("dates")
    @classmethod
    def _dates_are_valid(cls, dates: list[DateSpanSpec]) -> list[DateSpanSpec]:
        for span in dates:
            span.to_span()
        return dates

    def to_when(self) -> rules.When:
        birthday = self.birthday
        return rules.When(
            weekdays=frozenset(jalali.Weekday[d.upper()] for d in self.weekdays),
            hours=tuple(rules.Hours(h.start, h.end) for h in self.hours),
            dates=tuple(d.to_span() for d in self.dates),
            birthday=None if birthday is None else rules.BirthdayWindow(
                birthday.days_before, birthday.days_after))


# --- the kinds -----------------------------------------------------------------------------

class CampaignSpec(_Model):
    """What every kind shares; see `switch.rules.Rule` for what each condition means."""

    rule_class: ClassVar[type[rules.Rule]]
    limit_unit: ClassVar[str] = "rial"

    id: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]{1,63}$")]
    kind: str
    network: Code
    merchant: Code | None = None  # None: every merchant of the network
    terminals: list[Annotated[str, Field(pattern=r"^[0-9A-Z]{8}$")]] = []
    network_id: int | None = None   # set when stored
    merchant_id: int | None = None  # set when stored
    priority: Annotated[int, Field(ge=-1_000_000, le=1_000_000)] = 0
    exclusive: bool = False
    funder: FunderText = "merchant"
    co_funders: list[ShareSpec] = []
    valid_from: JalaliMoment | None = None
    valid_until: JalaliMoment | None = None
    when: WhenSpec = WhenSpec()
    codes: list[ProcessingCodeValue] | None = None  # None: the kind's default
    tiers: list[TierName] = []
    bin_prefixes: list[Annotated[str, Field(pattern=r"^[0-9]{1,9}$")]] = []
    min_purchase_rial: Rial = 0

    @property
    def budget(self) -> int | None:
        """The budget in the kind's unit (field `budget_<unit>`)."""
        value = getattr(self, f"budget_{self.limit_unit}", None)
        assert value is None or isinstance(value, int)
        return value

    @property
    def daily_limit(self) -> int | None:
        value = getattr(self, f"daily_limit_{self.limit_unit}", None)
        assert value is None or isinstance(value, int)
        return value

    def kind_fields(self) -> dict[str, Any]:
        """The kind's own arguments to its rule class."""
        return {}

    def to_rule(self) -> rules.Rule:
        """The rule this campaign stands for; ValueError if `switch.rules` refuses it."""
        shared: dict[str, Any] = dict(
            id=self.id, priority=self.priority, exclusive=self.exclusive,
            funder=_funder(self.funder),
            co_funders=tuple(rules.Share(_funder(s.funder), s.bp) for s in self.co_funders),
            valid_from=self.valid_from, valid_until=self.valid_until, when=self.when.to_when(),
            network_id=self.network_id,
            merchant_ids=frozenset(() if self.merchant_id is None else (self.merchant_id,)),
            terminal_ids=frozenset(self.terminals),
            tiers=frozenset(Tier[t.upper()] for t in self.tiers),
            bin_prefixes=tuple(self.bin_prefixes), min_purchase_rial=self.min_purchase_rial,
            budget=self.budget, daily_limit=self.daily_limit)
        if self.codes is not None:
            shared["codes"] = frozenset(ProcessingCode(c) for c in self.codes)
        return self.rule_class(**shared, **self.kind_fields())


class _RialLimits(CampaignSpec):
    budget_rial: Rial | None = None
    daily_limit_rial: Rial | None = None


class PercentDiscountSpec(_RialLimits):
    rule_class = rules.PercentDiscount
    kind: Literal["percent_discount"]
    bp: Int
    cap_rial: Int | None = None

    def kind_fields(self) -> dict[str, Any]:
        return {"bp": self.bp, "cap_rial": self.cap_rial}


class FixedDiscountSpec(_RialLimits):
    rule_class = rules.FixedDiscount
    kind: Literal["fixed_discount"]
    amount_rial: Int

    def kind_fields(self) -> dict[str, Any]:
        return {"amount_rial": self.amount_rial}


class FirstPurchasesSpec(_RialLimits):
    rule_class = rules.FirstPurchases
    kind: Literal["first_purchases"]
    steps_bp: list[Int]
    cap_rial: Int | None = None
    per_merchant: bool = True

    def kind_fields(self) -> dict[str, Any]:
        return {"steps_bp": tuple(self.steps_bp), "cap_rial": self.cap_rial,
                "per_merchant": self.per_merchant}


class StampCardSpec(_RialLimits):
    rule_class = rules.StampCard
    kind: Literal["stamp_card"]
    every: Int
    free_up_to_rial: Int

    def kind_fields(self) -> dict[str, Any]:
        return {"every": self.every, "free_up_to_rial": self.free_up_to_rial}


class CashbackSpec(_RialLimits):
    rule_class: ClassVar[type[rules.Rule]] = rules.Cashback
    kind: Literal["cashback"]
    bp: Int
    expiry_days: Annotated[int, Field(le=EXPIRY_DAYS_MAX)]
    cap_rial: Int | None = None

    def kind_fields(self) -> dict[str, Any]:
        return {"bp": self.bp, "expiry_days": self.expiry_days, "cap_rial": self.cap_rial}


class TopUpBonusSpec(CashbackSpec):
    rule_class = rules.TopUpBonus
    kind: Literal["top_up_bonus"]  # type: ignore[assignment]


class MultiplierSpec(_Model):
    category: Annotated[str, Field(min_length=1, max_length=32)]
    bp: Int


class PointsSpec(CampaignSpec):
    rule_class = rules.Points
    limit_unit = "points"
    kind: Literal["points"]
    rial_per_point: Int
    multipliers: list[MultiplierSpec] = []
    budget_points: Annotated[int, Field(ge=0, le=INT_MAX)] | None = None
    daily_limit_points: Annotated[int, Field(ge=0, le=INT_MAX)] | None = None

    def kind_fields(self) -> dict[str, Any]:
        return {"rial_per_point": self.rial_per_point,
                "multipliers": tuple(rules.Multiplier(m.category, m.bp)
                                     for m in self.multipliers)}


class LotterySpec(CampaignSpec):
    rule_class = rules.Lottery
    limit_unit = "entries"
    kind: Literal["lottery"]
    rial_per_entry: Int
    max_entries: Int | None = None
    budget_entries: Annotated[int, Field(ge=0, le=INT_MAX)] | None = None
    daily_limit_entries: Annotated[int, Field(ge=0, le=INT_MAX)] | None = None

    def kind_fields(self) -> dict[str, Any]:
        return {"rial_per_entry": self.rial_per_entry, "max_entries": self.max_entries}


AnySpec = Annotated[
    PercentDiscountSpec | FixedDiscountSpec | FirstPurchasesSpec | StampCardSpec
    | CashbackSpec | TopUpBonusSpec | PointsSpec | LotterySpec,
    Field(discriminator="kind")]
KINDS = ("percent_discount", "fixed_discount", "first_purchases", "stamp_card", "cashback",
         "top_up_bonus", "points", "lottery")
