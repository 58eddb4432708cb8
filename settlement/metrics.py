"""Prometheus metrics of settlement (kept out of switch/metrics.py on purpose: the switch
and the scheduler are separate processes, and this module is imported by both).

`loyalty_settlement_lag_working_seconds` is the alerting signal: how long, in working time,
the oldest confirmed transaction that is not yet settled has been waiting. It must stay
under 24 working hours (86,400 s) minus the bank's payout lag."""

from __future__ import annotations

from datetime import datetime

import asyncpg
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from settlement.calendar import WorkCalendar
from settlement.windows import Summary

# The scheduler serves this registry on its own port; the switch's metrics stay apart.
REGISTRY = CollectorRegistry()
LAG = Gauge("loyalty_settlement_lag_working_seconds",
            "Working-time age of the oldest confirmed transaction not yet settled",
            registry=REGISTRY)
WINDOW_DURATION = Histogram(
    "loyalty_settlement_window_duration_seconds", "Time to close and settle one window",
    buckets=(0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0), registry=REGISTRY)
WINDOWS = Counter("loyalty_settlement_windows_total", "Windows run, by outcome",
                  ["outcome"], registry=REGISTRY)  # SETTLED | FAILED
TRANSACTIONS = Counter("loyalty_settlement_transactions_total", "Transactions settled",
                       registry=REGISTRY)
PAYOUTS = Counter("loyalty_settlement_payouts_total", "Payout instructions issued",
                  registry=REGISTRY)
PAID = Counter("loyalty_settlement_paid_rial_total", "Rials paid out to merchants",
               registry=REGISTRY)
LATE = Counter("loyalty_settlement_late_transactions_total",
               "Transactions paid after their due time (24 working hours)", registry=REGISTRY)

# The oldest unsettled confirmation: outside any window, or in a window not yet settled.
_OLDEST = """
SELECT least(
    (SELECT min(confirmed_at) FROM txn
     WHERE state = 'CONFIRMED' AND settlement_window_id IS NULL),
    (SELECT min((e.detail->>'first_confirmed_at')::timestamptz)
     FROM settlement_window_event e
     WHERE e.state = 'CLOSED' AND NOT EXISTS (
         SELECT 1 FROM settlement_window_event s
         WHERE s.window_id = e.window_id AND s.state = 'SETTLED')))
"""


async def oldest_unsettled(conn: asyncpg.Connection) -> datetime | None:
    found: datetime | None = await conn.fetchval(_OLDEST)
    return found


async def refresh_lag(conn: asyncpg.Connection, calendar: WorkCalendar, now: datetime) -> float:
    oldest = await oldest_unsettled(conn)
    lag = 0.0 if oldest is None else calendar.working_seconds(oldest, now)
    LAG.set(lag)
    return lag


def count_settled(summary: Summary, duration_s: float) -> None:
    WINDOWS.labels(summary.state).inc()
    WINDOW_DURATION.observe(duration_s)
    TRANSACTIONS.inc(summary.txn_count)
    PAYOUTS.inc(summary.payout_count)
    PAID.inc(summary.payout_rial)
    LATE.inc(summary.late_count)
