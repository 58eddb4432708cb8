"""The running switch: database pool, processor, TCP server, hold sweeper, metrics.

`Switch.start` migrates the database, releases holds that expired while no switch ran,
then listens; `Switch.stop` shuts the server down gracefully (in-flight requests finish and
are answered), stops the sweeper and closes the pool. Several switch processes may run
against one database: identity claims, counters and the sweeper all coordinate there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from wsgiref.simple_server import WSGIServer

import asyncpg
import prometheus_client

from protocol.dukpt import HostKeys
from switch import db, keys, metrics, migrate
from switch.config import Settings
from switch.processor import Clock, Processor, utc_now
from switch.server import Server, install_signal_handlers
from switch.sweeper import SweepLimits, run_sweeper, tick

log = logging.getLogger(__name__)


@dataclass
class Switch:
    settings: Settings
    clock: Clock = utc_now
    database_url: str | None = None
    serve_metrics: bool = False
    server: Server | None = field(default=None, init=False)
    pool: asyncpg.Pool | None = field(default=None, init=False)
    _stop: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    _sweeper: asyncio.Task[None] | None = field(default=None, init=False)
    _metrics_server: WSGIServer | None = field(default=None, init=False)

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.port

    @property
    def metrics_port(self) -> int:
        """The bound metrics port (`metrics_port` may be 0); only with `serve_metrics`."""
        assert self._metrics_server is not None
        return self._metrics_server.server_port

    async def start(self) -> None:
        settings = self.settings
        url = self.database_url or await db.resolve_url(settings)
        conn = await db.connect(url, settings)
        try:
            await migrate.migrate(conn)
        finally:
            await conn.close()
        store = keys.load(settings.key_file)
        self.pool = await db.create_pool(url, settings)
        metrics.watch_pool(self.pool)
        # The first round also sets the pending-holds and database gauges before anyone can
        # scrape them (the sweeper task's own first round may come later).
        limits = SweepLimits.from_settings(settings)
        swept = await tick(self.pool, self.clock(), limits)
        if swept:
            log.info("holds_expired_while_down", extra={"count": swept})
        processor = Processor(self.pool, settings, HostKeys(store.bdks_by_raw_id()),
                              store.pan_hash, self.clock)
        self.server = Server(settings, processor)
        await self.server.start()
        self._sweeper = asyncio.create_task(run_sweeper(
            self.pool, self.clock, settings.hold_sweep_interval_s, limits, self._stop),
            name="hold-sweeper")
        if self.serve_metrics:
            self._metrics_server, _ = prometheus_client.start_http_server(
                settings.metrics_port, settings.metrics_host)

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.shutdown()
        self._stop.set()
        if self._sweeper is not None:
            await self._sweeper
        if self.pool is not None:
            metrics.watch_pool(None)
            await self.pool.close()
        if self._metrics_server is not None:
            # `shutdown` waits for the serving thread's next poll (up to half a second).
            await asyncio.to_thread(self._metrics_server.shutdown)
            self._metrics_server.server_close()
            self._metrics_server = None

    async def serve_until_signalled(self) -> None:
        assert self.server is not None
        install_signal_handlers(self.server)
        await self.server.serve_forever()
        await self.stop()


@contextlib.asynccontextmanager
async def running(settings: Settings, **kwargs: object) -> AsyncIterator[Switch]:
    switch = Switch(settings, **kwargs)  # type: ignore[arg-type]
    await switch.start()
    try:
        yield switch
    finally:
        await switch.stop()
