"""Running a window end to end: close and settle in one database transaction, record a
failure in another, keep the metrics. Used by the CLI and the scheduler."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta

import asyncpg

from settlement import holidays, metrics, windows
from settlement.calendar import latest_on_time_bound
from settlement.windows import Summary
from switch.config import Settings


async def run(conn: asyncpg.Connection, settings: Settings, now: datetime, *,
              cutoff_at: datetime | None = None, window_id: int | None = None,
              fault: Callable[[str], None] = lambda step: None) -> Summary:
    """Close the window of `cutoff_at` (if given) and settle it (or `window_id`), all in one
    transaction. A failure is recorded as FAILED (when the window exists) and re-raised.
    The metrics count a window once, when it is settled; a re-run returns the summary only."""
    assert (cutoff_at is None) != (window_id is None), "a cut-off or a window"
    started = time.perf_counter()
    try:
        async with conn.transaction():
            calendar = await holidays.load_calendar(conn, settings)
            if cutoff_at is not None:
                window_id = await windows.close(conn, cutoff_at, now, fault)
            assert window_id is not None
            pay_at = now + timedelta(seconds=settings.settlement_payout_lag_s)
            summary, settled_now = await windows.settle(
                conn, window_id, now, latest_on_time_bound(calendar, pay_at), fault)
    except windows.WindowError:
        raise
    except Exception as exc:
        if window_id is not None:
            async with conn.transaction():
                await windows.fail(conn, window_id, now, f"{type(exc).__name__}: {exc}")
            metrics.WINDOWS.labels(windows.FAILED).inc()
        raise
    fault("after_commit")
    if settled_now:  # a re-run of a SETTLED window moved nothing, so it counts nothing
        metrics.count_settled(summary, time.perf_counter() - started)
    return summary


async def pending_windows(conn: asyncpg.Connection) -> list[int]:
    """Windows closed (or failed) but not settled, oldest cut-off first."""
    rows = await conn.fetch(
        """SELECT w.id FROM settlement_window w
           WHERE (SELECT state FROM settlement_window_event e WHERE e.window_id = w.id
                  ORDER BY e.id DESC LIMIT 1) IN ('CLOSED', 'FAILED')
           ORDER BY w.cutoff_at""")
    return [r["id"] for r in rows]
