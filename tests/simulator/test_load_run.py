"""Load mode over real TCP, without a switch: terminals that cannot connect (refused, or never
answered), and the progress lines of a run."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from simulator import cli
from simulator.load import CONNECT_TIMEOUT_S_MAX, LoadConfig, LoadReport, parse_mix, run_load
from simulator.terminal import Terminal


def _terminal(tid: str) -> Terminal:
    return Terminal.from_profile(tid, bytes(16), bytes(8),
                                 clock=lambda: datetime(2026, 11, 24, tzinfo=UTC))


def closed_port() -> int:
    """A port nothing listens on: bound, then released."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def unanswered_port() -> Iterator[int]:
    """A port whose connections are never answered: a listener with backlog 0 and its one
    queue slot taken by a connection nobody accepts. Linux then drops further SYNs, so a
    connect hangs (retrying) for the OS's TCP timeout, minutes, instead of being refused."""
    with socket.socket() as listener, socket.socket() as filler:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port: int = listener.getsockname()[1]
        filler.connect(("127.0.0.1", port))  # the queue's one slot
        yield port


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
                            closed_port(), config)
    assert report.connect_failed == 2
    assert report.started == 0 and report.outcomes["error"] == 0
    data = report.to_json()
    assert data["connect_failed"] == 2 and data["transactions"]["started"] == 0
    assert "2 terminals failed to connect" in report.text()


async def test_a_connection_never_answered_fails_after_the_connect_timeout(
        unanswered_port: int) -> None:
    config = LoadConfig(seconds=0.2, mix=parse_mix("club=1"), connect_timeout_s=0.2)
    # The guard: without a connect timeout the run would wait for the OS's (minutes).
    report = await asyncio.wait_for(run_load(
        [_terminal("CAFE0001"), _terminal("CAFE0002")], "127.0.0.1", unanswered_port, config),
        timeout=5)
    assert report.connect_failed == 2 and report.started == 0
    assert report.elapsed_s > 0.15, "each terminal waited its connect timeout (not refused)"


@pytest.mark.parametrize("value", [0.0, -1.0, CONNECT_TIMEOUT_S_MAX + 0.001])
def test_the_connect_timeout_is_bounded(value: float) -> None:
    with pytest.raises(ValueError, match="connect_timeout_s"):
        LoadConfig(seconds=1, connect_timeout_s=value)
    assert LoadConfig(seconds=1, connect_timeout_s=CONNECT_TIMEOUT_S_MAX).connect_timeout_s \
        == CONNECT_TIMEOUT_S_MAX


@pytest.mark.parametrize(("value", "problem"), [
    ("0", "must be above 0"), ("60.5", "must be at most 60"), ("soon", "is not a number")])
async def test_sim_load_refuses_a_bad_connect_timeout(
        value: str, problem: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = await cli.run(["load", "--terminals", "1", "--seconds", "1",
                          "--profiles", str(tmp_path), "--connect-timeout-s", value])
    err = capsys.readouterr().err
    assert code == 2 and "--connect-timeout-s" in err and problem in err


def test_sim_load_connect_timeout_default_and_bound() -> None:
    parser = cli.build_parser()
    args = parser.parse_args(["load", "--terminals", "1", "--seconds", "1"])
    assert args.connect_timeout_s == 5.0
    args = parser.parse_args(["load", "--terminals", "1", "--seconds", "1",
                              "--connect-timeout-s", "60"])
    assert args.connect_timeout_s == CONNECT_TIMEOUT_S_MAX == 60.0


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
