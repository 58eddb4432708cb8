"""The scheduler on an injected clock, the lag gauge, and the schedule check."""

from __future__ import annotations

from datetime import datetime, time, timedelta

import asyncpg
import pytest

from settlement import metrics, scheduler
from settlement.calendar import ThursdayPolicy, WorkCalendar
from switch.cli import main
from switch.config import Settings
from tests.settlement.support import tehran
from tests.settlement.test_day import record_day


class FakeClock:
    """Time moves only when the scheduler sleeps; each sleep records the lag gauge."""

    def __init__(self, start: datetime) -> None:
        self.instant = start
        self.lags: list[tuple[datetime, float]] = []

    def now(self) -> datetime:
        return self.instant

    async def sleep_until(self, instant: datetime) -> None:
        value = metrics.REGISTRY.get_sample_value("loyalty_settlement_lag_working_seconds")
        assert value is not None
        self.lags.append((self.instant, value))
        self.instant = max(self.instant, instant)


async def test_the_scheduler_settles_at_each_cut_off(conn: asyncpg.Connection) -> None:
    await record_day(conn)
    clock = FakeClock(tehran(2026, 11, 24, 13))
    settings = Settings(settlement_metrics_refresh_s=1800)
    done = await scheduler.run_schedule(conn, settings, clock, windows_max=2)
    # Tuesday 14:00 takes the nine transactions before it; Wednesday 10:00 the barber's
    # 14:30 cut (90,000 - 2,000 fee).
    assert [(s.txn_count, s.payout_rial) for s in done] == [(9, 2_682_800), (1, 88_000)]
    cutoffs = await conn.fetch("SELECT cutoff_at FROM settlement_window ORDER BY id")
    assert [r["cutoff_at"] for r in cutoffs] == [tehran(2026, 11, 24, 14),
                                                 tehran(2026, 11, 25, 10)]
    # At 13:00 the oldest unsettled confirmation (08:30) is 4.5 working hours old; the gauge
    # is refreshed every half hour while waiting. Right after the 14:00 window nothing
    # confirmed by then is unsettled (the barber's cut is stamped 14:30): 0.
    assert clock.lags[:3] == [(tehran(2026, 11, 24, 13), 16_200.0),
                              (tehran(2026, 11, 24, 13, 30), 18_000.0),
                              (tehran(2026, 11, 24, 14), 0.0)]
    # Wednesday 08:00, waiting for 10:00: the barber's cut has waited 14:30-16:00 on
    # Tuesday; the night is not working time.
    assert (tehran(2026, 11, 25, 8), 5_400.0) in clock.lags
    assert metrics.REGISTRY.get_sample_value("loyalty_settlement_lag_working_seconds") == 0


async def test_the_lag_gauge_is_read_before_the_scheduler_settles_anything(
        conn: asyncpg.Connection) -> None:
    # The gauge is served from the scheduler's start; it must not read 0 (all paid) while
    # the scheduler is still working through windows left by an earlier run.
    await record_day(conn)
    metrics.LAG.set(0)
    done = await scheduler.run_schedule(conn, Settings(), FakeClock(tehran(2026, 11, 24, 13)),
                                        windows_max=0)
    assert done == []
    # 08:30 to 13:00 on a Tuesday: 4.5 working hours.
    assert metrics.REGISTRY.get_sample_value("loyalty_settlement_lag_working_seconds") == 16_200


def test_next_cutoff_skips_fridays_and_holidays() -> None:
    calendar = WorkCalendar()
    cuts = [time(10), time(14)]
    # Thursday 15:00 -> Saturday 10:00 (Friday has no cut-off).
    assert scheduler.next_cutoff(calendar, cuts, tehran(2026, 11, 26, 15)) == tehran(
        2026, 11, 28, 10)
    holiday = calendar.with_holidays({tehran(2026, 11, 28, 12).date()})
    assert scheduler.next_cutoff(holiday, cuts, tehran(2026, 11, 26, 15)) == tehran(
        2026, 11, 29, 10)
    assert scheduler.next_cutoff(calendar, cuts, tehran(2026, 11, 24, 10)) == tehran(
        2026, 11, 24, 14)


def test_the_default_schedule_pays_everything_on_time() -> None:
    settings = Settings()
    assert scheduler.check_schedule(WorkCalendar(), scheduler.cutoff_times(settings),
                                    settings.settlement_payout_lag_s,
                                    tehran(2026, 3, 1, 0)) == []


def test_a_schedule_that_would_pay_late_is_found() -> None:
    # Working all day every day, 24 working hours is about one day; a single daily cut-off
    # plus an hour for the bank pays a transaction confirmed just after it too late.
    calendar = WorkCalendar(thursday=ThursdayPolicy.FULL, work_start=time(0),
                            work_end=time(23, 59), half_day_end=time(23, 59))
    found = scheduler.check_schedule(calendar, [time(10)], 3600, tehran(2026, 11, 24, 0),
                                     days=7)
    assert found
    first = found[0]
    assert first.cutoff_at == tehran(2026, 11, 24, 10)
    assert first.paid_at == tehran(2026, 11, 25, 11)
    assert first.paid_at > first.due_at
    # Two cut-offs a day fix it.
    assert scheduler.check_schedule(calendar, [time(10), time(22)], 3600,
                                    tehran(2026, 11, 24, 0), days=7) == []


def test_the_scheduler_refuses_a_late_schedule(db_url: str, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    for name, value in (("DATABASE_URL", db_url), ("LOYALTY_SETTLEMENT_WORK_START", "00:00"),
                        ("LOYALTY_SETTLEMENT_WORK_END", "23:59"),
                        ("LOYALTY_SETTLEMENT_HALF_DAY_END", "23:59"),
                        ("LOYALTY_SETTLEMENT_THURSDAY", "full"),
                        ("LOYALTY_SETTLEMENT_CUTOFFS", "10:00"),
                        ("LOYALTY_SETTLEMENT_METRICS_PORT", "0")):
        monkeypatch.setenv(name, value)
    assert main(["settle", "schedule", "--windows", "1"]) == 2
    assert "pay too late" in capsys.readouterr().err


def test_due_horizon_constant() -> None:
    assert scheduler.CHECK_HORIZON_DAYS * timedelta(days=1) > timedelta(days=365)
