"""The working-day calendar that settlement deadlines are counted in. Pure: no I/O.

Theory of operation. Time is kept in UTC everywhere else; here it is turned into Tehran
local time (UTC+03:30 all year: Iran abolished daylight saving time in 1401/2022), and
each local day is given its working hours:
* Friday is never a working day; a day in the holiday table is not one either;
* Thursday follows `ThursdayPolicy`: a full day, a half day (work ends at `half_day_end`)
  or no work at all;
* any other day works from `work_start` to `work_end`.
"Working time" between two instants is the length of their overlap with working hours;
`due_at(t)` is the instant at which 24 working hours have passed since `t` (a confirmation
outside working hours starts counting at the next opening). Every function walks day by
day, so its cost is the number of calendar days covered (a few for a 24-hour deadline).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, timezone

from switch.jalali import Weekday, weekday

TEHRAN = timezone(timedelta(hours=3, minutes=30), "IRST")
DUE_WORKING_S = 24 * 3600  # a confirmed transaction is paid within 24 working hours
_SEARCH_DAYS_MAX = 3660    # a calendar with no working day for ten years is refused


class ThursdayPolicy(enum.StrEnum):
    FULL = "full"
    HALF = "half"
    NONE = "none"


class CalendarError(ValueError):
    """A calendar that cannot work (hours out of order, no working day in sight)."""


@dataclass(frozen=True)
class WorkCalendar:
    holidays: frozenset[date] = field(default_factory=frozenset)
    thursday: ThursdayPolicy = ThursdayPolicy.HALF
    work_start: time = time(8, 0)
    work_end: time = time(16, 0)
    half_day_end: time = time(12, 0)

    def __post_init__(self) -> None:
        if not self.work_start < self.work_end:
            raise CalendarError(f"working hours: start {self.work_start} must be before "
                                f"end {self.work_end}")
        if not self.work_start < self.half_day_end <= self.work_end:
            raise CalendarError(f"half day end {self.half_day_end} must be after the start "
                                f"and not after the end of the working day")

    def with_holidays(self, holidays: Iterable[date]) -> WorkCalendar:
        return WorkCalendar(frozenset(holidays), self.thursday, self.work_start,
                            self.work_end, self.half_day_end)

    def hours(self, day: date) -> tuple[time, time] | None:
        """The working hours of a local (Tehran) day, or None when nobody works."""
        wd = weekday(day)
        if wd is Weekday.FRIDAY or day in self.holidays:
            return None
        if wd is Weekday.THURSDAY:
            if self.thursday is ThursdayPolicy.NONE:
                return None
            if self.thursday is ThursdayPolicy.HALF:
                return self.work_start, self.half_day_end
        return self.work_start, self.work_end

    def is_working_day(self, day: date) -> bool:
        return self.hours(day) is not None

    def _spans_from(self, instant: datetime) -> Iterator[tuple[datetime, datetime]]:
        """Working spans (UTC) that end after `instant`, in order, the first clipped."""
        local_day = _aware(instant).astimezone(TEHRAN).date()
        idle_days = 0
        while True:
            hours = self.hours(local_day)
            if hours is None:
                idle_days += 1
                if idle_days > _SEARCH_DAYS_MAX:
                    raise CalendarError("no working day within ten years")
            else:
                idle_days = 0
                start = datetime.combine(local_day, hours[0], TEHRAN).astimezone(UTC)
                end = datetime.combine(local_day, hours[1], TEHRAN).astimezone(UTC)
                if end > instant:
                    yield max(start, _aware(instant)), end
            local_day += timedelta(days=1)

    def add_working(self, instant: datetime, seconds: float) -> datetime:
        """The instant at which `seconds` of working time have passed since `instant`."""
        if seconds < 0:
            raise ValueError("working time to add must not be negative")
        left = timedelta(seconds=seconds)
        for start, end in self._spans_from(instant):
            if end - start >= left:
                return start + left
            left -= end - start
        raise AssertionError("unreachable: _spans_from never ends")

    def due_at(self, confirmed_at: datetime) -> datetime:
        """When a transaction confirmed at `confirmed_at` must have been paid."""
        return self.add_working(confirmed_at, DUE_WORKING_S)

    def working_seconds(self, since: datetime, until: datetime) -> float:
        """Working time between two instants (0 when `until` is not after `since`)."""
        if until <= since:
            return 0.0
        total = timedelta()
        for start, end in self._spans_from(since):
            if start >= until:
                break
            total += min(end, until) - start
        return total.total_seconds()


def _aware(instant: datetime) -> datetime:
    if instant.tzinfo is None:
        raise ValueError("a settlement instant must carry its time zone")
    return instant


def parse_hhmm(text: str) -> time:
    """'08:00' -> time(8, 0); a clear error otherwise."""
    try:
        hour, minute = (int(part) for part in text.split(":"))
        return time(hour, minute)
    except ValueError:
        raise ValueError(f"{text!r} is not a time of day (HH:MM)") from None


def latest_on_time_bound(calendar: WorkCalendar, pay_at: datetime) -> datetime:
    """An instant b such that a transaction confirmed before b is due before `pay_at` (it
    would be paid late) and one confirmed at or after b is not, to the millisecond.

    due_at is non-decreasing, so a bisection finds the boundary without computing a due
    time per transaction."""
    late = pay_at - timedelta(days=400)  # due long before pay_at, whatever the holidays
    on_time = pay_at                      # due_at(t) > t: never late
    if calendar.due_at(late) >= pay_at:
        return late
    while on_time - late > timedelta(milliseconds=1):
        middle = late + (on_time - late) / 2
        if calendar.due_at(middle) < pay_at:
            late = middle
        else:
            on_time = middle
    return on_time
