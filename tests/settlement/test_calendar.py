"""The working calendar: due times around Fridays, Thursdays, Nowruz and holiday changes,
worked out by hand (default hours 08:00-16:00 Tehran, Thursday a half day to 12:00)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from settlement.calendar import (
    CalendarError,
    ThursdayPolicy,
    WorkCalendar,
    latest_on_time_bound,
    parse_hhmm,
)
from tests.settlement.support import tehran

HALF = WorkCalendar()
# The 1404/1405 turn of the year as the seeded table has it.
NOWRUZ_1405 = frozenset({date(2026, 3, 20), date(2026, 3, 21), date(2026, 3, 22),
                         date(2026, 3, 23), date(2026, 3, 24)})


@pytest.mark.parametrize(("calendar", "confirmed", "due"), [
    # Tuesday 10:00: Tue 6 h + Wed 8 h + Thu 4 h + Sat 6 h -> Saturday 14:00.
    (HALF, tehran(2026, 11, 24, 10), tehran(2026, 11, 28, 14)),
    # Thursday off: Tue 6 + Wed 8 + Sat 8 + Sun 2 -> Sunday 10:00.
    (WorkCalendar(thursday=ThursdayPolicy.NONE), tehran(2026, 11, 24, 10),
     tehran(2026, 11, 29, 10)),
    # Thursday a full day: Tue 6 + Wed 8 + Thu 8 + Sat 2 -> Saturday 10:00.
    (WorkCalendar(thursday=ThursdayPolicy.FULL), tehran(2026, 11, 24, 10),
     tehran(2026, 11, 28, 10)),
    # Before opening counts from 08:00: Tue 8 + Wed 8 + Thu 4 + Sat 4 -> Saturday 12:00.
    (HALF, tehran(2026, 11, 24, 7), tehran(2026, 11, 28, 12)),
    # On a Friday evening: Sat, Sun, Mon, 8 h each -> Monday 16:00, the close.
    (HALF, tehran(2026, 11, 27, 20), tehran(2026, 11, 30, 16)),
    # Thursday 11:00 before Nowruz 1405: Thu 1 h, Fri 29 Esfand, Nowruz Sat-Tue, then
    # Wed 8 + Thu 4 + Sat 8 + Sun 3 -> Sunday 1405/01/09 11:00.
    (HALF.with_holidays(NOWRUZ_1405), tehran(2026, 3, 19, 11), tehran(2026, 3, 29, 11)),
    # The same without the holiday table: Thu 1 + Sat 8 + Sun 8 + Mon 7 -> Monday 15:00.
    (HALF, tehran(2026, 3, 19, 11), tehran(2026, 3, 23, 15)),
])
def test_due_at(calendar: WorkCalendar, confirmed: datetime, due: datetime) -> None:
    assert calendar.due_at(confirmed) == due
    assert calendar.working_seconds(confirmed, due) == 24 * 3600


def test_a_holiday_added_to_the_table_moves_the_due_time() -> None:
    before = HALF.due_at(tehran(2026, 11, 24, 10))
    # Wednesday 1405/09/04 declared a holiday: Tue 6 + Thu 4 + Sat 8 + Sun 6 -> Sunday 14:00.
    after = HALF.with_holidays({date(2026, 11, 25)}).due_at(tehran(2026, 11, 24, 10))
    assert (before, after) == (tehran(2026, 11, 28, 14), tehran(2026, 11, 29, 14))


def test_working_days() -> None:
    assert not HALF.is_working_day(date(2026, 11, 27))  # Friday
    assert HALF.hours(date(2026, 11, 26)) == (time(8), time(12))  # Thursday, half
    assert WorkCalendar(thursday=ThursdayPolicy.NONE).hours(date(2026, 11, 26)) is None
    assert HALF.with_holidays(NOWRUZ_1405).hours(date(2026, 3, 21)) is None


def test_working_seconds_over_a_weekend_and_backwards() -> None:
    # Thursday 11:00 to Saturday 09:00: Thu 1 h + Sat 1 h.
    assert HALF.working_seconds(tehran(2026, 11, 26, 11), tehran(2026, 11, 28, 9)) == 7200
    assert HALF.working_seconds(tehran(2026, 11, 28, 9), tehran(2026, 11, 26, 11)) == 0


def test_bad_calendars_are_refused() -> None:
    with pytest.raises(CalendarError, match="start"):
        WorkCalendar(work_start=time(16), work_end=time(8))
    with pytest.raises(CalendarError, match="half day"):
        WorkCalendar(half_day_end=time(17))
    every_day = frozenset(date(2026, 1, 1) + timedelta(days=n) for n in range(4000))
    with pytest.raises(CalendarError, match="no working day"):
        HALF.with_holidays(every_day).due_at(tehran(2026, 1, 1, 9))
    with pytest.raises(ValueError, match="time zone"):
        HALF.due_at(datetime(2026, 1, 1, 9))  # naive on purpose
    with pytest.raises(ValueError, match="HH:MM"):
        parse_hhmm("8h")


instants = st.datetimes(min_value=datetime(2025, 3, 1), max_value=datetime(2028, 3, 1),
                        timezones=st.just(UTC))


@settings(max_examples=200, deadline=None)
@given(instants, st.integers(min_value=0, max_value=10 * 86400),
       st.sampled_from(list(ThursdayPolicy)))
def test_adding_working_time_then_measuring_it_gives_it_back(
        start: datetime, seconds: int, thursday: ThursdayPolicy) -> None:
    calendar = WorkCalendar(thursday=thursday).with_holidays(NOWRUZ_1405)
    end = calendar.add_working(start, seconds)
    assert end >= start
    assert calendar.working_seconds(start, end) == seconds


@settings(max_examples=100, deadline=None)
@given(instants, instants)
def test_due_times_never_decrease(a: datetime, b: datetime) -> None:
    first, second = sorted((a, b))
    assert HALF.due_at(first) <= HALF.due_at(second)


@settings(max_examples=30, deadline=None)
@given(instants)
def test_the_lateness_bound_splits_late_from_on_time(pay_at: datetime) -> None:
    bound = latest_on_time_bound(HALF, pay_at)
    assert HALF.due_at(bound) >= pay_at
    assert HALF.due_at(bound - timedelta(milliseconds=2)) < pay_at
