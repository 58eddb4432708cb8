"""Load mode over real TCP, without a switch: terminals that cannot connect, and the progress
lines of a run."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from simulator.load import LoadConfig, LoadReport, parse_mix, run_load
from simulator.terminal import Terminal


def _terminal(tid: str) -> Terminal:
    return Terminal.from_profile(tid, bytes(16), bytes(8),
                                 clock=lambda: datetime(2026, 11, 24, tzinfo=UTC))


def _closed_port() -> int:
    """A port nothing listens on: bound, then released."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
async def silent_port() -> AsyncIterator[int]:
    """A server that accepts and never answers."""
    connections: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    for writer in connections:
        writer.close()


async def test_a_terminal_that_cannot_connect_starts_no_transaction() -> None:
    config = LoadConfig(seconds=0.2, mix=parse_mix("club=1"), timeout_s=0.5)
    report = await run_load([_terminal("CAFE0001"), _terminal("CAFE0002")], "127.0.0.1",
                            _closed_port(), config)
    assert report.connect_failed == 2
    assert report.started == 0 and report.outcomes["error"] == 0
    data = report.to_json()
    assert data["connect_failed"] == 2 and data["transactions"]["started"] == 0
    assert "2 terminals failed to connect" in report.text()


def test_the_report_names_connection_failures_only_when_there_are_some() -> None:
    report = LoadReport(3, "closed", None)
    assert report.to_json()["connect_failed"] == 0
    assert "failed to connect" not in report.text()
    report.connect_failed = 1
    assert "  connections: 1 terminal failed to connect (of 3)" in report.text().splitlines()


async def test_the_final_progress_line_is_printed_once(silent_port: int) -> None:
    # A closed loop against a silent switch: the one transaction runs past the end of the
    # run until its timeout. Progress ticks come every 0.1 s of the 0.25 s run; the final
    # figures come once, when the last transaction has ended, and no tick repeats them.
    calls: list[float] = []
    config = LoadConfig(seconds=0.25, mix=parse_mix("club=1"), timeout_s=1.0,
                        progress_interval_s=0.1)
    report = await run_load([_terminal("CAFE0001")], "127.0.0.1", silent_port, config,
                            progress=lambda r, elapsed_s: calls.append(elapsed_s))
    assert calls[:-1] == pytest.approx([0.1, 0.2])
    assert calls[-1] == report.elapsed_s >= 1.0
