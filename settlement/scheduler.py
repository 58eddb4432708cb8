"""`loyalty settle schedule`: settle a window at every cut-off, with an injectable clock.

Theory of operation. Cut-offs are the configured Tehran times of day on working days. The
loop finds the next cut-off after the clock's now, makes sure that window exists (OPEN),
sleeps until it, then closes and settles it in one transaction (settlement/runner.py) and
refreshes the lag gauge. On start it reads the lag gauge, then settles windows left CLOSED
or FAILED by an earlier run. Before anything, `check_schedule` proves the cut-offs can pay
every transaction within its due time over the coming year; a schedule that cannot is
refused.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Protocol

import asyncpg

from settlement import files, holidays, metrics, runner, windows
from settlement.calendar import TEHRAN, WorkCalendar, parse_hhmm
from settlement.faults import fault
from switch.config import Settings

CHECK_HORIZON_DAYS = 400  # check_schedule looks this far ahead


class Clock(Protocol):
    def now(self) -> datetime: ...

    async def sleep_until(self, instant: datetime) -> None: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep_until(self, instant: datetime) -> None:
        delay = (instant - self.now()).total_seconds()
        if delay > 0:
            await asyncio.sleep(delay)


class ScheduleError(ValueError):
    """The cut-offs would pay some transaction after its due time."""


def cutoff_times(settings: Settings) -> list[time]:
    return sorted(parse_hhmm(part) for part in settings.settlement_cutoffs.split(","))


def next_cutoff(calendar: WorkCalendar, cutoffs: Sequence[time], after: datetime) -> datetime:
    """The first cut-off strictly after `after`: a cut-off time on a working day."""
    day = after.astimezone(TEHRAN).date()
    for _ in range(CHECK_HORIZON_DAYS * 10):
        if calendar.is_working_day(day):
            for cut in cutoffs:
                instant = datetime.combine(day, cut, TEHRAN).astimezone(UTC)
                if instant > after:
                    return instant
        day += timedelta(days=1)
    raise ScheduleError("no cut-off within the horizon (no working day?)")


@dataclass(frozen=True, slots=True)
class Violation:
    cutoff_at: datetime       # a transaction confirmed just after this cut-off ...
    paid_at: datetime         # ... is paid at the next cut-off plus the payout lag ...
    due_at: datetime          # ... which is later than this


def check_schedule(calendar: WorkCalendar, cutoffs: Sequence[time], payout_lag_s: int,
                   start: datetime, days: int = CHECK_HORIZON_DAYS) -> list[Violation]:
    """Every pair of consecutive cut-offs in [start, start + days): the worst case is a
    transaction confirmed just after the first, paid after the second (due times only grow
    with the confirmation time)."""
    found = []
    lag = timedelta(seconds=payout_lag_s)
    cut = next_cutoff(calendar, cutoffs, start - timedelta(microseconds=1))
    end = start + timedelta(days=days)
    while cut < end:
        following = next_cutoff(calendar, cutoffs, cut)
        due = calendar.due_at(cut)
        if following + lag > due:
            found.append(Violation(cut, following + lag, due))
        cut = following
    return found


async def settle_and_export(conn: asyncpg.Connection, settings: Settings, now: datetime, *,
                            cutoff_at: datetime | None = None, window_id: int | None = None,
                            out_dir: Path | None = None) -> windows.Summary:
    summary = await runner.run(conn, settings, now, cutoff_at=cutoff_at,
                               window_id=window_id, fault=fault)
    if out_dir is not None:
        await files.export(conn, summary.window_id, out_dir, fault)
    return summary


async def run_schedule(conn: asyncpg.Connection, settings: Settings, clock: Clock, *,
                       out_dir: Path | None = None,
                       windows_max: int | None = None) -> list[windows.Summary]:
    """Settle at each cut-off until `windows_max` windows are done (forever when None)."""
    cutoffs = cutoff_times(settings)
    calendar = await holidays.load_calendar(conn, settings)
    violations = check_schedule(calendar, cutoffs, settings.settlement_payout_lag_s,
                                clock.now())
    if violations:
        v = violations[0]
        raise ScheduleError(
            f"{len(violations)} cut-off(s) pay too late, first: confirmed just after "
            f"{v.cutoff_at.isoformat()}, due {v.due_at.isoformat()}, paid "
            f"{v.paid_at.isoformat()}")
    # The gauge is served from the start: read the backlog before the windows an earlier
    # run left, which may take a while, so that it never shows 0 for work not yet done.
    await metrics.refresh_lag(conn, calendar, clock.now())
    done = []
    for window_id in await runner.pending_windows(conn):
        done.append(await settle_and_export(conn, settings, clock.now(), window_id=window_id,
                                            out_dir=out_dir))
    while windows_max is None or len(done) < windows_max:
        calendar = await holidays.load_calendar(conn, settings)  # holidays may change
        cut = next_cutoff(calendar, cutoffs, clock.now())
        async with conn.transaction():
            await windows.open_window(conn, cut, clock.now())
        # Sleep in steps, refreshing the lag gauge, so the alert sees a stuck queue.
        step = timedelta(seconds=settings.settlement_metrics_refresh_s)
        while clock.now() < cut:
            await metrics.refresh_lag(conn, calendar, clock.now())
            await clock.sleep_until(min(cut, clock.now() + step))
        done.append(await settle_and_export(conn, settings, clock.now(), cutoff_at=cut,
                                            out_dir=out_dir))
        await metrics.refresh_lag(conn, calendar, clock.now())
    return done
