"""Load mode: many terminals doing complete two-phase purchases for a while, and the report.

Theory of operation
-------------------
Each terminal gets one `TerminalClient` connection. In a *closed loop* (the default) each
terminal runs one transaction at a time, back to back: 0100, then, if approved, its 0220.
With a target *rate* (open loop) transactions start on a fixed schedule whatever the switch's
speed, spread evenly over the terminals and pipelined on each connection; a start that finds
its terminal already at `in_flight_per_terminal_max` is counted as skipped rather than
queued, so a slow switch shows as skips instead of a silently lower rate.

Every started transaction ends in exactly one outcome (completed, declined, confirm failed,
error), so the report's counts always add up. A terminal that cannot connect (refused, or
no answer within `connect_timeout_s`) starts no transaction: it is counted in
`connect_failed`, apart from the transactions. Latencies are per phase (0100→0110 and
0220→0230) over the exchanges that got an answer; the transaction rate is completed
transactions over the elapsed time. The transaction kinds follow `Mix`, cards come from a
`CardSource`. Timing uses the event loop's monotonic clock; nothing here is asserted on
time. Progress ticks fall at fixed offsets from the start, only before the end of the run;
the final figures are reported once, after the last transaction has ended (a tick at the
end would repeat them).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from protocol.fields import ResponseCode
from protocol.values import AdditionalData
from simulator.actions import PURCHASE_CODES, Card
from simulator.client import ConnectionClosed, NoResponse, TerminalClient
from simulator.terminal import ResponseError, Terminal
from switch import demo

OUTCOMES: Final = ("completed", "declined", "confirm_failed", "error")
PERCENTILES: Final = (50, 95, 99)
# How long a terminal waits for its connection before counting it failed: a host that never
# answers would otherwise hold the terminal for the OS's TCP timeout (minutes).
CONNECT_TIMEOUT_S: Final = 5.0
CONNECT_TIMEOUT_S_MAX: Final = 60.0


class CardSource(Protocol):
    def card(self, kind: str, terminal_index: int, n: int) -> Card: ...


class DemoCards:
    """The demo members' cards: club cards of all members, store credit from the members
    holding network credit (every fourth), the Shetab cards linked to every fifth."""

    def card(self, kind: str, terminal_index: int, n: int) -> Card:
        i = terminal_index * 7 + n
        if kind == "bank":
            return Card(demo.demo_bank_pan(i * 5 % demo.MEMBERS), demo.CARD_EXPIRY)
        if kind == "credit":
            return Card(demo.demo_club_pan(i * 4 % demo.MEMBERS), demo.CARD_EXPIRY)
        return Card(demo.demo_club_pan(i % demo.MEMBERS), demo.CARD_EXPIRY)


@dataclass(frozen=True)
class Mix:
    """Transaction kinds (club, credit, bank) and their weights."""

    weights: tuple[tuple[str, int], ...]

    def sequence(self) -> tuple[str, ...]:
        """One cycle of kinds, interleaved (bank=1,club=2,credit=1 -> bank club credit club)."""
        left = dict(self.weights)
        out: list[str] = []
        while any(left.values()):
            for kind, _ in self.weights:
                if left[kind]:
                    out.append(kind)
                    left[kind] -= 1
        return tuple(out)


def parse_mix(text: str) -> Mix:
    """`bank=1,club=2,credit=1`; raises ValueError naming the fault."""
    weights: list[tuple[str, int]] = []
    for part in text.split(","):
        kind, sep, weight = part.strip().partition("=")
        if kind not in PURCHASE_CODES or not sep or not weight.isdigit():
            raise ValueError(f"mix item {part.strip()!r}: want KIND=WEIGHT with KIND one of "
                             f"{', '.join(PURCHASE_CODES)}")
        if kind in dict(weights):
            raise ValueError(f"mix names {kind} twice")
        weights.append((kind, int(weight)))
    if not any(w for _, w in weights):
        raise ValueError("mix weights are all zero")
    return Mix(tuple((k, w) for k, w in weights if w))


DEFAULT_MIX: Final = parse_mix("club=2,credit=1,bank=1")


@dataclass(frozen=True)
class LoadConfig:
    seconds: float
    rate_per_s: float | None = None  # None: closed loop
    mix: Mix = DEFAULT_MIX
    in_flight_per_terminal_max: int = 16
    timeout_s: float = 10.0
    progress_interval_s: float = 1.0
    item_categories: tuple[str, ...] = ()  # basket categories (field 48 IT) on every 0100
    connect_timeout_s: float = CONNECT_TIMEOUT_S

    def __post_init__(self) -> None:
        if not 0 < self.connect_timeout_s <= CONNECT_TIMEOUT_S_MAX:
            raise ValueError(f"connect_timeout_s must be above 0 and at most "
                             f"{CONNECT_TIMEOUT_S_MAX:g} s")


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile of `values` (None when empty)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class LoadReport:
    terminals: int
    mode: str
    target_rate_per_s: float | None
    elapsed_s: float = 0.0
    skipped: int = 0
    connect_failed: int = 0  # terminals that could not connect (no transaction started)
    outcomes: Counter[str] = field(default_factory=Counter)
    codes: dict[str, Counter[str]] = field(
        default_factory=lambda: {"request": Counter(), "confirm": Counter()})
    latencies_s: dict[str, list[float]] = field(
        default_factory=lambda: {"request": [], "confirm": []})

    @property
    def started(self) -> int:
        return sum(self.outcomes.values())

    @property
    def completed_per_s(self) -> float:
        return self.outcomes["completed"] / self.elapsed_s if self.elapsed_s else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "terminals": self.terminals, "mode": self.mode,
            "target_rate_per_s": self.target_rate_per_s,
            "elapsed_s": round(self.elapsed_s, 3),
            "connect_failed": self.connect_failed,
            "transactions": {"started": self.started, "skipped": self.skipped,
                             **{o: self.outcomes[o] for o in OUTCOMES}},
            "completed_per_s": round(self.completed_per_s, 1),
            "latency_ms": {phase: self._latency(phase) for phase in ("request", "confirm")},
            "response_codes": {phase: dict(sorted(c.items())) for phase, c in self.codes.items()},
        }

    def _latency(self, phase: str) -> dict[str, Any]:
        values = self.latencies_s[phase]
        out: dict[str, Any] = {"count": len(values)}
        for q in PERCENTILES:
            value = percentile(values, q)
            out[f"p{q}"] = None if value is None else round(value * 1000, 2)
        return out

    def progress_line(self, now_s: float) -> str:
        failed = f", {self.connect_failed} failed to connect" if self.connect_failed else ""
        return (f"load: {now_s:5.1f} s, {self.started} started, "
                f"{self.outcomes['completed']} completed, {self.outcomes['declined']} declined, "
                f"{self.outcomes['error']} errors{failed}")

    def text(self) -> str:
        data = self.to_json()
        tx = data["transactions"]
        rate = (f", target {self.target_rate_per_s:g}/s" if self.target_rate_per_s else "")
        lines = [f"load: {self.terminals} terminals, {self.mode} loop{rate}, "
                 f"{self.elapsed_s:.1f} s",
                 f"  transactions: {tx['started']} started, {tx['completed']} completed, "
                 f"{tx['declined']} declined, {tx['confirm_failed']} confirm failed, "
                 f"{tx['error']} errors, {tx['skipped']} skipped",
                 f"  completed two-phase transactions/s: {data['completed_per_s']}"]
        if self.connect_failed:
            noun = "terminal" if self.connect_failed == 1 else "terminals"
            lines.insert(1, f"  connections: {self.connect_failed} {noun} failed to connect "
                            f"(of {self.terminals})")
        for phase, label in (("request", "request (0100)"), ("confirm", "confirm (0220)")):
            lat = data["latency_ms"][phase]
            shown = ", ".join(f"p{q} {_ms(lat[f'p{q}'])}" for q in PERCENTILES)
            lines.append(f"  {label}: {shown} ({lat['count']} answered)")
        for phase, codes in data["response_codes"].items():
            histogram = ", ".join(f"{code}: {n}" for code, n in codes.items()) or "none"
            lines.append(f"  response codes, {phase}: {histogram}")
        return "\n".join(lines)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


class LoadRun:
    """One load run over `terminals`; `run()` returns the report."""

    def __init__(self, terminals: Sequence[Terminal], host: str, port: int,
                 config: LoadConfig, cards: CardSource | None = None,
                 progress: Callable[[LoadReport, float], None] | None = None) -> None:
        self.terminals = terminals
        self.host, self.port = host, port
        self.config = config
        self.cards = cards or DemoCards()
        self.progress = progress
        self.kinds = config.mix.sequence()
        self.basket = (AdditionalData(item_categories=config.item_categories)
                       if config.item_categories else None)
        mode = "closed" if config.rate_per_s is None else "open"
        self.report = LoadReport(len(terminals), mode, config.rate_per_s)

    async def run(self) -> LoadReport:
        loop = asyncio.get_running_loop()
        started = loop.time()
        ticker = asyncio.create_task(self._tick(started)) if self.progress else None
        try:
            await asyncio.gather(*(self._terminal(i, t, started + self.config.seconds)
                                   for i, t in enumerate(self.terminals)))
        finally:
            if ticker is not None:
                ticker.cancel()
                await asyncio.gather(ticker, return_exceptions=True)
        self.report.elapsed_s = loop.time() - started
        if self.progress is not None:  # the final figures, however short the run
            self.progress(self.report, self.report.elapsed_s)
        return self.report

    async def _tick(self, started: float) -> None:
        """Progress at start + k * interval, for every such instant before the end of the run
        (the final figures are run()'s); labelled by the offset, so a late tick reads right."""
        loop = asyncio.get_running_loop()
        assert self.progress is not None
        interval = self.config.progress_interval_s
        k = 1
        while k * interval < self.config.seconds:
            await asyncio.sleep(max(0.0, started + k * interval - loop.time()))
            self.progress(self.report, k * interval)
            k += 1

    async def _terminal(self, index: int, terminal: Terminal, deadline: float) -> None:
        client = TerminalClient(terminal, timeout_s=self.config.timeout_s)
        try:
            await asyncio.wait_for(client.connect(self.host, self.port),
                                   self.config.connect_timeout_s)
        except OSError:  # refused, unreachable, or timed out (TimeoutError is an OSError)
            self.report.connect_failed += 1  # no transaction started: not an outcome
            return
        async with client:
            if self.config.rate_per_s is None:
                await self._closed_loop(client, index, deadline)
            else:
                await self._open_loop(client, index, deadline)

    async def _closed_loop(self, client: TerminalClient, index: int, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        n = 0
        while loop.time() < deadline and not client.closed:
            await self._transaction(client, index, n)
            n += 1

    async def _open_loop(self, client: TerminalClient, index: int, deadline: float) -> None:
        """Start transaction n at start + (n + index/terminals) * interval."""
        loop = asyncio.get_running_loop()
        assert self.config.rate_per_s is not None
        interval = len(self.terminals) / self.config.rate_per_s
        start = loop.time() + interval * index / len(self.terminals)
        tasks: set[asyncio.Task[None]] = set()
        n = 0
        while (due := start + n * interval) < deadline and not client.closed:
            await asyncio.sleep(max(0.0, due - loop.time()))
            if len(tasks) >= self.config.in_flight_per_terminal_max:
                self.report.skipped += 1
            else:
                task = asyncio.create_task(self._transaction(client, index, n))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            n += 1
        if tasks:
            await asyncio.gather(*tasks)

    async def _transaction(self, client: TerminalClient, index: int, n: int) -> None:
        # perf_counter, not loop.time(): uvloop's clock has millisecond resolution.
        clock = time.perf_counter
        report = self.report
        kind = self.kinds[n % len(self.kinds)]
        card = self.cards.card(kind, index, n)
        amount = 5_000 + n % 20 * 500
        t0 = clock()
        try:
            response, prepared = await client.purchase(
                amount, card.pan, card.expiry, processing_code=PURCHASE_CODES[kind],
                additional_data=self.basket)
            t1 = clock()
            report.latencies_s["request"].append(t1 - t0)
            report.codes["request"][response.code.value] += 1
            if not response.code.is_approval:
                report.outcomes["declined"] += 1
                return
            confirmed = await client.confirm(prepared, response.message.rrn or "")
        except (NoResponse, ConnectionClosed, ResponseError):
            report.outcomes["error"] += 1
            return
        report.latencies_s["confirm"].append(clock() - t1)
        report.codes["confirm"][confirmed.code.value] += 1
        done = confirmed.code is ResponseCode.APPROVED
        report.outcomes["completed" if done else "confirm_failed"] += 1


async def run_load(terminals: Sequence[Terminal], host: str, port: int, config: LoadConfig,
                   cards: CardSource | None = None,
                   progress: Callable[[LoadReport, float], None] | None = None) -> LoadReport:
    return await LoadRun(terminals, host, port, config, cards, progress).run()

