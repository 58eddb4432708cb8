"""Prometheus metrics of the switch, served on the metrics port (`metrics_host:metrics_port`).

Theory of operation. Every metric is defined once here, in the process-wide default
registry, and moved where its event happens. Names use base units and `_total`/`_seconds`
suffixes. Labels never carry a PAN, STAN, RRN, TID or KSN: their values come from small
closed sets (MTIs, processing and response codes, phases, named reasons), so the number of
series is bounded; a security-failure kind the code does not know is counted as `other`.

The request path must stay cheap: the label children it moves are created once and kept in
dicts (`count_message`, `observe_latency`), so a request costs a dict look-up and an
increment, not a `.labels()` call (which takes a lock and builds a key every time).

Some values are read rather than pushed: the database pool's size and use are read from the
pool at scrape time (`watch_pool`), and pending holds and database reachability are set by
the sweeper's periodic count (switch/sweeper.py), which is bounded by
`metrics_holds_pending_max` so a huge backlog cannot make the count expensive.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
from prometheus_client import Counter, Gauge, Histogram

# Latency buckets for a payment switch: a request normally takes a few milliseconds; a
# terminal gives up after some seconds, so nothing beyond 5 s needs telling apart.
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
PHASES = ("request", "confirm", "reversal", "network")
SECURITY_KINDS = frozenset({
    "bad_mac", "unknown_device", "unknown_bdk", "ksn_invalid", "ksn_exhausted", "replay",
    "bad_padding", "tid_mismatch"})
DB_ERROR_KINDS = ("unavailable", "retries_exhausted", "price_unsettled", "refused_write")

CONNECTIONS_OPEN = Gauge("loyalty_connections_open", "Open terminal connections")
CONNECTIONS_REJECTED = Counter(
    "loyalty_connections_rejected_total", "Connections closed at accept because of a limit",
    ["reason"])  # total | per_ip | shutdown
CONNECTIONS_CLOSED = Counter(
    "loyalty_connections_closed_total", "Connections closed by the switch", ["reason"])
FRAMES_REJECTED = Counter(
    "loyalty_frames_rejected_total", "Frames refused before decoding", ["reason"])
IN_FLIGHT = Gauge("loyalty_requests_in_flight", "Requests being processed")
MESSAGES = Counter(
    "loyalty_messages_total", "Requests answered, by request MTI, processing code (empty when "
    "the request has none) and response code", ["mti", "processing_code", "response_code"])
SECURITY_FAILURES = Counter(
    "loyalty_security_failures_total", "Requests refused by the security chain (63)", ["kind"])
PHASE_LATENCY = Histogram(
    "loyalty_request_duration_seconds", "Time from decoded request to response, per phase",
    ["phase"], buckets=LATENCY_BUCKETS_S)
HOLDS_EXPIRED = Counter("loyalty_holds_expired_total", "Holds expired by the sweeper")
HOLDS_PENDING = Gauge(
    "loyalty_holds_pending", "Transactions holding funds (PENDING), as last counted by the "
    "sweeper; capped at metrics_holds_pending_max")
DB_ERRORS = Counter(
    "loyalty_db_errors_total", "Database failures by kind: unavailable and retries_exhausted "
    "and price_unsettled are answered 91, refused_write 96", ["kind"])
DB_UP = Gauge("loyalty_db_up", "1 when the sweeper's last database round trip succeeded")
DB_POOL_CONNECTIONS = Gauge(
    "loyalty_db_pool_connections", "Database pool connections by state", ["state"])
DB_POOL_SIZE_MAX = Gauge("loyalty_db_pool_size_max", "The pool's configured maximum size")
DB_POOL_WAITING = Gauge(
    "loyalty_db_pool_waiting", "Requests waiting for a database connection from the pool")

_messages: dict[tuple[str, str, str], Any] = {}
_latency = {phase: PHASE_LATENCY.labels(phase) for phase in PHASES}
_db_errors = {kind: DB_ERRORS.labels(kind) for kind in DB_ERROR_KINDS}


def count_message(mti: str, processing_code: str, response_code: str) -> None:
    """One answered request; the arguments come from the protocol's closed enums."""
    key = (mti, processing_code, response_code)
    child = _messages.get(key)
    if child is None:
        child = _messages[key] = MESSAGES.labels(*key)
    child.inc()


def observe_latency(phase: str, duration_s: float) -> None:
    _latency[phase].observe(duration_s)


def count_security_failure(kind: str) -> None:
    SECURITY_FAILURES.labels(kind if kind in SECURITY_KINDS else "other").inc()


def count_db_error(kind: str) -> None:
    _db_errors[kind].inc()


class _PoolWatch:
    """The pool the gauges read at scrape time (None: report an empty pool)."""

    pool: asyncpg.Pool | None = None

    def in_use(self) -> float:
        pool = self.pool
        return 0.0 if pool is None else float(pool.get_size() - pool.get_idle_size())

    def idle(self) -> float:
        return 0.0 if self.pool is None else float(self.pool.get_idle_size())

    def size_max(self) -> float:
        return 0.0 if self.pool is None else float(self.pool.get_max_size())


_pool_watch = _PoolWatch()
DB_POOL_CONNECTIONS.labels("in_use").set_function(_pool_watch.in_use)
DB_POOL_CONNECTIONS.labels("idle").set_function(_pool_watch.idle)
DB_POOL_SIZE_MAX.set_function(_pool_watch.size_max)


def watch_pool(pool: asyncpg.Pool | None) -> None:
    """Report this pool's size and use from now on (one switch per process)."""
    _pool_watch.pool = pool


@contextlib.asynccontextmanager
async def pool_connection(pool: asyncpg.Pool, timeout_s: float
                          ) -> AsyncIterator[asyncpg.pool.PoolConnectionProxy[Any]]:
    """`pool.acquire`, counted in `loyalty_db_pool_waiting` while it waits."""
    DB_POOL_WAITING.inc()
    try:
        proxy = await pool.acquire(timeout=timeout_s)
    finally:
        DB_POOL_WAITING.dec()
    try:
        yield proxy
    finally:
        await pool.release(proxy)
