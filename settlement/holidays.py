"""The holiday table (migration 0020) and the working calendar built from it and the
settings."""

from __future__ import annotations

import asyncpg

from settlement.calendar import ThursdayPolicy, WorkCalendar, parse_hhmm
from switch.config import Settings
from switch.jalali import JalaliDate


class HolidayError(Exception):
    """A refused holiday (a day already in the table)."""


def base_calendar(settings: Settings) -> WorkCalendar:
    """The calendar the settings describe, without holidays."""
    return WorkCalendar(
        thursday=ThursdayPolicy(settings.settlement_thursday),
        work_start=parse_hhmm(settings.settlement_work_start),
        work_end=parse_hhmm(settings.settlement_work_end),
        half_day_end=parse_hhmm(settings.settlement_half_day_end))


async def load_calendar(conn: asyncpg.Connection, settings: Settings) -> WorkCalendar:
    days = await conn.fetch("SELECT day FROM settlement_holiday")
    return base_calendar(settings).with_holidays(r["day"] for r in days)


async def add(conn: asyncpg.Connection, day: JalaliDate, name: str) -> None:
    """Add an operator's holiday; a day already listed is refused, nothing written."""
    if not 1 <= len(name) <= 200:
        raise HolidayError("a holiday needs a name of 1 to 200 characters")
    inserted = await conn.fetchval(
        """INSERT INTO settlement_holiday (day, jalali, name, source)
           VALUES ($1, $2, $3, 'operator') ON CONFLICT (day) DO NOTHING RETURNING day""",
        day.to_gregorian(), str(day), name)
    if inserted is None:
        raise HolidayError(f"{day} is already a holiday")


async def listing(conn: asyncpg.Connection, year: int | None = None) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        """SELECT day, jalali, name, source FROM settlement_holiday
           WHERE $1::int IS NULL OR left(jalali, 4)::int = $1 ORDER BY day""", year)
    return rows
