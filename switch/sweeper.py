"""Hold expiry: PENDING transactions whose hold (or Shaparak confirm window) has passed
are voided and their holds (and campaign reservations) released, by a background task that
also runs at start-up. The same task expires store-credit and points lots past their
expiry, each back to its issuer (migrations/0014_lot_expiry.sql), and reviews the tiers
of members who stopped buying, each card at most once per `tier_review_interval_days`
(migrations/0018_tier_review_interval.sql). Each job runs in bounded batches of its own
setting (`hold_sweep_batch_max`, `lot_expiry_batch_max`, `tier_review_batch_max`),
gathered with the rest of a round's bounds in `SweepLimits`.

Several switch processes may sweep at once: rows are claimed with FOR UPDATE SKIP LOCKED,
so each expired transaction is voided by exactly one of them, and a confirm racing the
sweeper waits for the row lock and then sees VOIDED (68). A batch is one database call
(`switch_sweep`, migrations/0007_request_functions.sql), in its own transaction.

Each round (`tick`) also counts the holds still pending, at most `pending_max` rows (the
partial index on PENDING makes that an index-only count), for the `loyalty_holds_pending`
gauge, and sets `loyalty_db_up`: the sweeper is the switch's periodic database probe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg

from switch import metrics, store
from switch.config import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SweepLimits:
    """What bounds one round: a batch size per job (each batch is one transaction, so this
    bounds how long its row locks are held), the tier review's spacing, and how far the
    pending-holds gauge counts."""

    hold_batch_max: int
    lot_batch_max: int
    tier_batch_max: int
    tier_review_interval: timedelta
    pending_max: int

    @classmethod
    def from_settings(cls, settings: Settings) -> SweepLimits:
        return cls(hold_batch_max=settings.hold_sweep_batch_max,
                   lot_batch_max=settings.lot_expiry_batch_max,
                   tier_batch_max=settings.tier_review_batch_max,
                   tier_review_interval=timedelta(days=settings.tier_review_interval_days),
                   pending_max=settings.metrics_holds_pending_max)


# One batch: (connection, batch bound) -> how many rows it handled, at most the bound.
Batch = Callable[[asyncpg.Connection, int], Awaitable[int]]


async def sweep_once(conn: asyncpg.Connection, now: datetime, batch_max: int) -> int:
    """Void up to `batch_max` expired transactions in one database transaction."""
    swept = await store.sweep(conn, now, batch_max)
    metrics.HOLDS_EXPIRED.inc(swept)
    return swept


async def sweep_all(pool: asyncpg.Pool, now: datetime, limits: SweepLimits) -> int:
    """Sweep holds, then lots, then tiers, until nothing due is left (bounded batches, one
    commit each); how many holds were swept."""
    holds = await _until_done(pool, limits.hold_batch_max,
                              lambda conn, n: sweep_once(conn, now, n))
    lots = await _until_done(pool, limits.lot_batch_max,
                             lambda conn, n: store.expire_lots(conn, now, n))
    if lots:
        log.info("lots_expired", extra={"count": lots})
    tiers = await _until_done(
        pool, limits.tier_batch_max,
        lambda conn, n: store.sweep_tiers(conn, now, n, limits.tier_review_interval))
    if tiers:
        log.info("tiers_reviewed", extra={"count": tiers})
    return holds


async def _until_done(pool: asyncpg.Pool, batch_max: int, batch: Batch) -> int:
    """Run `batch` until one comes back short of `batch_max`: exactly `batch_max` due takes
    a second batch, which finds nothing."""
    total = 0
    while True:
        async with pool.acquire() as conn:
            done = await batch(conn, batch_max)  # type: ignore[arg-type]
        total += done
        if done < batch_max:
            return total


async def count_pending(conn: asyncpg.Connection, pending_max: int) -> int:
    """PENDING transactions (those holding funds or awaiting a confirm), at most
    `pending_max`."""
    count: int = await conn.fetchval(
        "SELECT count(*) FROM (SELECT 1 FROM txn WHERE state = 'PENDING' LIMIT $1) p",
        pending_max)
    return count


async def tick(pool: asyncpg.Pool, now: datetime, limits: SweepLimits) -> int:
    """One round: expire what is due, then refresh the pending-holds and database gauges."""
    swept = await sweep_all(pool, now, limits)
    async with pool.acquire() as conn:
        pending = await count_pending(conn, limits.pending_max)  # type: ignore[arg-type]
    metrics.HOLDS_PENDING.set(pending)
    metrics.DB_UP.set(1)
    return swept


async def guarded_tick(pool: asyncpg.Pool, now: datetime, limits: SweepLimits) -> int | None:
    """`tick`, with database trouble logged and `loyalty_db_up` set to 0: None then."""
    try:
        swept = await tick(pool, now, limits)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
        metrics.DB_UP.set(0)
        log.warning("hold_sweep_failed", extra={"error": type(exc).__name__})
        return None
    if swept:
        log.info("holds_expired", extra={"count": swept})
    return swept


async def run_sweeper(pool: asyncpg.Pool, clock: Callable[[], datetime], interval_s: float,
                      limits: SweepLimits, stop: asyncio.Event) -> None:
    """Sweep every `interval_s` until `stop` is set; database trouble is retried at the next
    tick (holds only get older, nothing is lost by waiting). The first tick comes one
    interval after the start: the switch ran one round before serving (`Switch.start`), and
    a second at once would only race whoever reads the gauges first."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval_s)
        if not stop.is_set():
            await guarded_tick(pool, clock(), limits)
