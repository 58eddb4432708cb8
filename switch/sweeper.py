"""Hold expiry: PENDING transactions whose hold (or Shaparak confirm window) has passed
are voided and their holds released, by a background task that also runs at start-up.

Several switch processes may sweep at once: rows are claimed with FOR UPDATE SKIP LOCKED,
so each expired transaction is voided by exactly one of them, and a confirm racing the
sweeper waits for the row lock and then sees VOIDED (68). A batch is one database call
(`switch_sweep`, migrations/0007_request_functions.sql), in its own transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import datetime

import asyncpg

from switch import metrics, store

log = logging.getLogger(__name__)


async def sweep_once(conn: asyncpg.Connection, now: datetime, batch_max: int) -> int:
    """Void up to `batch_max` expired transactions in one database transaction."""
    swept = await store.sweep(conn, now, batch_max)
    metrics.HOLDS_EXPIRED.inc(swept)
    return swept


async def sweep_all(pool: asyncpg.Pool, now: datetime, batch_max: int) -> int:
    """Sweep until nothing expired is left (bounded batches, one commit each)."""
    total = 0
    while True:
        async with pool.acquire() as conn:
            done = await sweep_once(conn, now, batch_max)  # type: ignore[arg-type]
        total += done
        if done < batch_max:
            return total


async def run_sweeper(pool: asyncpg.Pool, clock: Callable[[], datetime], interval_s: float,
                      batch_max: int, stop: asyncio.Event) -> None:
    """Sweep every `interval_s` until `stop` is set; database trouble is logged and retried
    at the next tick (holds only get older, nothing is lost by waiting)."""
    while not stop.is_set():
        try:
            swept = await sweep_all(pool, clock(), batch_max)
            if swept:
                log.info("expired %d hold(s)", swept)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            log.warning("hold sweep failed: %s", type(exc).__name__)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval_s)
