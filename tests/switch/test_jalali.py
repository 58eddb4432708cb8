from datetime import date, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from switch import jalali
from switch.jalali import JalaliDate, Weekday

# Published pairs: Nowruz of recent years (the official calendar), the dates jalaali-js is
# tested with, and a few dates every Iranian knows.
KNOWN = [
    ((1395, 1, 1), date(2016, 3, 20)),
    ((1398, 1, 1), date(2019, 3, 21)),
    ((1399, 1, 1), date(2020, 3, 20)),
    ((1400, 1, 1), date(2021, 3, 21)),
    ((1402, 1, 1), date(2023, 3, 21)),
    ((1403, 1, 1), date(2024, 3, 20)),
    ((1404, 1, 1), date(2025, 3, 21)),
    ((1405, 1, 1), date(2026, 3, 21)),
    ((1403, 12, 30), date(2025, 3, 20)),   # 1403 is leap: 30 Esfand exists
    ((1402, 12, 29), date(2024, 3, 19)),
    ((1360, 5, 26), date(1981, 8, 17)),
    ((1391, 10, 21), date(2013, 1, 10)),
    ((1393, 5, 13), date(2014, 8, 4)),
    ((1357, 11, 22), date(1979, 2, 11)),   # 22 Bahman
    ((1402, 9, 30), date(2023, 12, 21)),   # Yalda
    ((1403, 7, 1), date(2024, 9, 22)),     # first day of the 30-day months
]


@pytest.mark.parametrize(("ymd", "gregorian"), KNOWN)
def test_known_pairs_both_ways(ymd, gregorian):
    assert jalali.to_jalali(gregorian) == JalaliDate(*ymd)
    assert jalali.to_gregorian(*ymd) == gregorian


def test_leap_years_match_the_official_calendar():
    # Note the five-year gaps (1370 → 1375, 1403 → 1408) that a plain 4-year rule misses.
    assert [y for y in range(1360, 1425) if jalali.is_leap(y)] == [
        1362, 1366, 1370, 1375, 1379, 1383, 1387, 1391, 1395, 1399, 1403, 1408, 1412,
        1416, 1420, 1424]


def test_30_esfand_exists_only_in_leap_years():
    assert JalaliDate(1403, 12, 30).to_gregorian() == date(2025, 3, 20)
    with pytest.raises(ValueError, match="no day 30 in Esfand 1404"):
        JalaliDate(1404, 12, 30)
    assert jalali.month_length(1404, 12) == 29


@pytest.mark.parametrize(("month", "length"), [(1, 31), (6, 31), (7, 30), (11, 30)])
def test_month_lengths(month, length):
    assert jalali.month_length(1402, month) == length


@pytest.mark.parametrize(("year", "month", "day"), [
    (1403, 0, 1), (1403, 13, 1), (1403, 1, 0), (1403, 1, 32), (1403, 7, 31),
    (0, 1, 1), (3178, 1, 1)])
def test_invalid_dates_are_refused(year, month, day):
    with pytest.raises(ValueError, match=r"Jalali|no day"):
        JalaliDate(year, month, day)


def test_dates_outside_the_supported_years_are_refused():
    first = jalali.nowruz(jalali.MIN_YEAR)
    assert jalali.to_jalali(first) == JalaliDate(1, 1, 1)
    last = JalaliDate(jalali.MAX_YEAR, 12, jalali.month_length(jalali.MAX_YEAR, 12))
    assert jalali.to_jalali(last.to_gregorian()) == last
    for outside in (first - timedelta(days=1), last.to_gregorian() + timedelta(days=1)):
        with pytest.raises(ValueError, match="Jalali year"):
            jalali.to_jalali(outside)


def _next(d: JalaliDate) -> JalaliDate:
    if d.day < jalali.month_length(d.year, d.month):
        return JalaliDate(d.year, d.month, d.day + 1)
    if d.month < 12:
        return JalaliDate(d.year, d.month + 1, 1)
    return JalaliDate(d.year + 1, 1, 1)


def test_every_day_of_1300_to_1500_round_trips_and_follows_the_day_before():
    day = jalali.nowruz(1300)
    expected = JalaliDate(1300, 1, 1)
    while expected.year <= 1500:
        assert jalali.to_jalali(day) == expected
        assert expected.to_gregorian() == day
        day, expected = day + timedelta(days=1), _next(expected)


def test_year_lengths_agree_with_leap_years():
    for year in range(1, 3177):
        length = (jalali.nowruz(year + 1) - jalali.nowruz(year)).days
        assert length == (366 if jalali.is_leap(year) else 365), year


_SUPPORTED = st.dates(min_value=jalali.nowruz(jalali.MIN_YEAR),
                      max_value=jalali.nowruz(jalali.MAX_YEAR) + timedelta(days=364))


@given(_SUPPORTED, _SUPPORTED)
def test_conversion_round_trips_and_keeps_order(a, b):
    ja, jb = jalali.to_jalali(a), jalali.to_jalali(b)
    assert ja.to_gregorian() == a
    assert (ja < jb) == (a < b)


@pytest.mark.parametrize(("day", "weekday", "persian"), [
    (date(2026, 3, 21), Weekday.SATURDAY, "شنبه"),
    (date(2024, 3, 20), Weekday.WEDNESDAY, "چهارشنبه"),
    (date(2025, 3, 20), Weekday.THURSDAY, "پنجشنبه"),
    (date(2025, 3, 21), Weekday.FRIDAY, "جمعه"),
])
def test_weekdays_start_on_saturday(day, weekday, persian):
    assert jalali.weekday(day) is weekday
    assert weekday.persian == persian
    assert jalali.to_jalali(day).weekday is weekday
    assert jalali.is_weekend(day) == (weekday is Weekday.FRIDAY)


def test_saturday_is_day_zero_and_friday_day_six():
    saturday = date(2026, 3, 21)
    assert [jalali.weekday(saturday + timedelta(days=i)) for i in range(7)] == list(Weekday)


@pytest.mark.parametrize(("birth", "year", "anniversary"), [
    (JalaliDate(1399, 12, 30), 1402, JalaliDate(1402, 12, 29)),  # common year: 29 Esfand
    (JalaliDate(1399, 12, 30), 1403, JalaliDate(1403, 12, 30)),
    (JalaliDate(1369, 1, 1), 1403, JalaliDate(1403, 1, 1)),
])
def test_anniversary(birth, year, anniversary):
    assert birth.anniversary(year) == anniversary


def test_str_is_the_usual_slashed_form():
    assert str(JalaliDate(1403, 1, 9)) == "1403/01/09"
