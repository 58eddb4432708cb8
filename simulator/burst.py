"""The demo burst `loyalty run` drives: a couple of seconds of load mode (closed loop,
complete two-phase purchases of every kind) from the second terminal of each demo merchant,
so the main job shows the switch working end to end, with the load report.

Terminal keys come from the key file (as a real terminal would have them injected), and
each terminal continues from the KSN counter the switch last accepted from it. The first
terminal of each merchant (CAFE0001, HYPR0001, BARB0001) is left to `sim` and its profiles,
whose counters the burst would otherwise overtake.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import asyncpg

from protocol.dukpt import derive_initial_key
from simulator.load import LoadConfig, LoadReport, parse_mix, run_load
from simulator.terminal import Terminal
from switch.keys import KeyStore

BURST_SECONDS: Final = 2.0
BURST_MIX: Final = parse_mix("club=2,credit=1,bank=1")
BURST_TERMINAL_SUFFIX: Final = "0002"


async def demo_terminals(conn: asyncpg.Connection, store: KeyStore,
                         suffix: str = "") -> list[Terminal]:
    """Every active terminal whose TID ends with `suffix`, at its last accepted counter."""
    rows = await conn.fetch(
        """SELECT tid, bdk_id, derivation_id, ksn_counter_max FROM terminal
           WHERE status = 'active' AND tid LIKE '%' || $1 ORDER BY tid""", suffix)
    terminals = []
    for r in rows:
        ik_id = bytes.fromhex(r["bdk_id"] + r["derivation_id"])
        initial_key = derive_initial_key(store.bdk(r["bdk_id"]), ik_id)
        terminals.append(Terminal.from_profile(r["tid"], initial_key, ik_id,
                                               r["ksn_counter_max"]))
    return terminals


async def run_burst(host: str, port: int, terminals: Sequence[Terminal],
                    seconds: float = BURST_SECONDS) -> LoadReport:
    return await run_load(terminals, host, port, LoadConfig(seconds=seconds, mix=BURST_MIX))
