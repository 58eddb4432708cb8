"""Jalali (Solar Hijri, the Iranian civil calendar) dates: conversion and weekdays. Pure.

The conversion is Borkowski's integer algorithm, the one behind jalaali-js and most Iranian
software: leap years follow 33-year cycles that are broken at the years in `_BREAKS`, which
keeps the arithmetic calendar on the official (astronomical) one at least for 1178–1633 AP
(1799–2256 AD). Years outside 1 to 3177 are refused rather than guessed. Gregorian dates are
Python's proleptic Gregorian `date`s, so day arithmetic goes through `date.toordinal`.

The Iranian week starts on Saturday; Friday is the weekend.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import date, timedelta

MIN_YEAR = 1
MAX_YEAR = 3177

# Jalali years at which the 33-year leap cycle restarts (Borkowski; jalaali-js `breaks`).
_BREAKS = (-61, 9, 38, 199, 426, 686, 756, 818, 1111, 1181, 1210, 1635, 2060, 2097, 2192,
           2262, 2324, 2394, 2456, 3178)
_FIRST_HALF_DAYS = 186  # months 1–6 have 31 days, 7–11 have 30, Esfand 29 or 30

MONTH_NAMES = ("Farvardin", "Ordibehesht", "Khordad", "Tir", "Mordad", "Shahrivar",
               "Mehr", "Aban", "Azar", "Dey", "Bahman", "Esfand")


class Weekday(enum.IntEnum):
    """Days of the Iranian week, Saturday first."""

    SATURDAY = 0
    SUNDAY = 1
    MONDAY = 2
    TUESDAY = 3
    WEDNESDAY = 4
    THURSDAY = 5
    FRIDAY = 6

    @property
    def persian(self) -> str:
        return ("شنبه", "یکشنبه", "دوشنبه", "سه‌شنبه", "چهارشنبه", "پنجشنبه", "جمعه")[self]


def weekday(day: date) -> Weekday:
    # Python counts from Monday = 0; Saturday is 5.
    return Weekday((day.weekday() + 2) % 7)


def is_weekend(day: date) -> bool:
    return weekday(day) is Weekday.FRIDAY


def _check_year(year: int) -> None:
    if not MIN_YEAR <= year <= MAX_YEAR:
        raise ValueError(f"Jalali year {year}: supported {MIN_YEAR} to {MAX_YEAR}")


def _year_start(year: int) -> tuple[int, bool]:
    """(the day of March on which 1 Farvardin `year` falls, whether `year` is leap)."""
    _check_year(year)
    # Leap days from the epoch to `year`, counted cycle by cycle up to the last break.
    leap_j, previous, jump = -14, _BREAKS[0], 0
    for brk in _BREAKS[1:]:
        jump = brk - previous
        if year < brk:
            break
        leap_j += jump // 33 * 8 + jump % 33 // 4
        previous = brk
    n = year - previous
    leap_j += n // 33 * 8 + (n % 33 + 3) // 4
    if jump % 33 == 4 and jump - n == 4:
        leap_j += 1
    gy = year + 621
    leap_g = gy // 4 - (gy // 100 + 1) * 3 // 4 - 150
    march_day = 20 + leap_j - leap_g
    # Years since the last leap year; the last years of a cycle belong to the next one.
    if jump - n < 6:
        n = n - jump + (jump + 4) // 33 * 33
    since_leap = (n + 1) % 33 - 1
    return march_day, since_leap >= 0 and since_leap % 4 == 0


def is_leap(year: int) -> bool:
    """Whether Esfand of `year` has 30 days."""
    return _year_start(year)[1]


def month_length(year: int, month: int) -> int:
    _check_year(year)
    if not 1 <= month <= 12:
        raise ValueError(f"Jalali month {month}: 1 to 12")
    if month <= 6:
        return 31
    if month <= 11:
        return 30
    return 30 if is_leap(year) else 29


def nowruz(year: int) -> date:
    """1 Farvardin `year` as a Gregorian date."""
    return date(year + 621, 3, _year_start(year)[0])


@dataclass(frozen=True, slots=True, order=True)
class JalaliDate:
    year: int
    month: int
    day: int

    def __post_init__(self) -> None:
        if not 1 <= self.day <= month_length(self.year, self.month):
            raise ValueError(f"no day {self.day} in {MONTH_NAMES[self.month - 1]} {self.year}")

    def __str__(self) -> str:
        return f"{self.year:04d}/{self.month:02d}/{self.day:02d}"

    @classmethod
    def from_gregorian(cls, day: date) -> JalaliDate:
        year = day.year - 621
        if year > MAX_YEAR or day < nowruz(year):
            year -= 1  # January to mid-March: still the Jalali year that began last March
        offset = day.toordinal() - nowruz(year).toordinal()
        if offset >= 365 + is_leap(year):
            _check_year(year + 1)  # past the last supported year: refused
        if offset < _FIRST_HALF_DAYS:
            return cls(year, 1 + offset // 31, 1 + offset % 31)
        offset -= _FIRST_HALF_DAYS
        return cls(year, 7 + offset // 30, 1 + offset % 30)

    def to_gregorian(self) -> date:
        month = self.month - 1
        offset = month * 31 - max(0, month - 6) + self.day - 1
        return nowruz(self.year) + timedelta(days=offset)

    @property
    def weekday(self) -> Weekday:
        return weekday(self.to_gregorian())

    def anniversary(self, year: int) -> JalaliDate:
        """The same day and month in `year`; 30 Esfand falls on 29 Esfand in common years."""
        return JalaliDate(year, self.month, min(self.day, month_length(year, self.month)))


def to_jalali(day: date) -> JalaliDate:
    return JalaliDate.from_gregorian(day)


def to_gregorian(year: int, month: int, day: int) -> date:
    return JalaliDate(year, month, day).to_gregorian()
