"""Open-loop load mode at its in-flight bound: with a switch that never answers, a terminal
holds `in_flight_per_terminal_max` transactions and every later start is skipped, not queued."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from simulator.load import LoadConfig, parse_mix, run_load
from simulator.terminal import Terminal


async def test_starts_beyond_the_in_flight_bound_are_skipped() -> None:
    connections: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)  # read nothing, answer nothing

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    terminal = Terminal.from_profile("CAFE0001", bytes(16), bytes(8),
                                     clock=lambda: datetime(2026, 11, 24, tzinfo=UTC))
    config = LoadConfig(seconds=0.3, rate_per_s=50, mix=parse_mix("club=1"),
                        in_flight_per_terminal_max=2, timeout_s=0.5)
    try:
        report = await run_load([terminal], "127.0.0.1", port, config)
    finally:
        server.close()
        for writer in connections:
            writer.close()
    ticks = report.started + report.skipped
    assert report.started == 2, "exactly the bound is in flight"
    assert report.skipped == ticks - 2 > 0
    assert report.outcomes["error"] == 2  # both timed out unanswered
    assert report.to_json()["latency_ms"]["request"]["count"] == 0
