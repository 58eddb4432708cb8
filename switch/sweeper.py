"""Hold expiry: PENDING transactions whose hold (or Shaparak confirm window) has passed
are voided and their holds (and campaign reservations) released, by a background task that
also runs at start-up. The same task expires store-credit and points lots past their
expiry, each back to its issuer (migrations/0014_lot_expiry.sql), and reviews the tiers
of members who stopped buying (migrations/0016_tier_sweep.sql), in bounded batches too.

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
from datetime import datetime

import asyncpg

from switch import metrics, store

log = logging.getLogger(__name__)


async def sweep_once(conn: asyncpg.Connection, now: datetime, batch_max: int) -> int:
    """Void up to `batch_max` expired transactions in one database transaction."""
    swept = await store.sweep(conn, now, batch_max)
    metrics.HOLDS_EXPIRED.inc(swept)
    return swept


async def expire_lots_once(conn: asyncpg.Connection, now: datetime, batch_max: int) -> int:
    """Expire up to `batch_max` due lots in one database transaction."""
    return await store.expire_lots(conn, now, batch_max)


async def sweep_tiers_once(conn: asyncpg.Connection, now: datetime, batch_max: int) -> int:
    """Review up to `batch_max` tiers due for a periodic review in one transaction."""
    return await store.sweep_tiers(conn, now, batch_max)


async def sweep_all(pool: asyncpg.Pool, now: datetime, batch_max: int) -> int:
    """Sweep holds, then lots, then tiers, until nothing due is left (bounded batches, one
    commit each); how many holds were swept."""
    total = await _until_done(pool, now, batch_max, sweep_once)
    lots = await _until_done(pool, now, batch_max, expire_lots_once)
    if lots:
        log.info("lots_expired", extra={"count": lots})
    tiers = await _until_done(pool, now, batch_max, sweep_tiers_once)
    if tiers:
        log.info("tiers_reviewed", extra={"count": tiers})
    return total


async def _until_done(pool: asyncpg.Pool, now: datetime, batch_max: int,
                      batch: Callable[[asyncpg.Connection, datetime, int], Awaitable[int]]
                      ) -> int:
    total = 0
    while True:
        async with pool.acquire() as conn:
            done = await batch(conn, now, batch_max)  # type: ignore[arg-type]
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


async def tick(pool: asyncpg.Pool, now: datetime, batch_max: int, pending_max: int) -> int:
    """One round: expire what is due, then refresh the pending-holds and database gauges."""
    swept = await sweep_all(pool, now, batch_max)
    async with pool.acquire() as conn:
        metrics.HOLDS_PENDING.set(await count_pending(conn, pending_max))  # type: ignore[arg-type]
    metrics.DB_UP.set(1)
    return swept


async def guarded_tick(pool: asyncpg.Pool, now: datetime, batch_max: int,
                       pending_max: int) -> int | None:
    """`tick`, with database trouble logged and `loyalty_db_up` set to 0: None then."""
    try:
        swept = await tick(pool, now, batch_max, pending_max)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
        metrics.DB_UP.set(0)
        log.warning("hold_sweep_failed", extra={"error": type(exc).__name__})
        return None
    if swept:
        log.info("holds_expired", extra={"count": swept})
    return swept


async def run_sweeper(pool: asyncpg.Pool, clock: Callable[[], datetime], interval_s: float,
                      batch_max: int, pending_max: int, stop: asyncio.Event) -> None:
    """Sweep every `interval_s` until `stop` is set; database trouble is retried at the next
    tick (holds only get older, nothing is lost by waiting). The first tick comes one
    interval after the start: the switch ran one round before serving (`Switch.start`), and
    a second at once would only race whoever reads the gauges first."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval_s)
        if not stop.is_set():
            await guarded_tick(pool, clock(), batch_max, pending_max)
