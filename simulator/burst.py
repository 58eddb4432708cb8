"""A short burst of demo traffic: each demo terminal signs on and runs a few complete
two-phase club purchases, so the main job shows the switch working end to end.

Terminal keys come from the key file (as a real terminal would have them injected), and
each terminal continues from the KSN counter the switch last accepted from it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import asyncpg

from protocol.dukpt import derive_initial_key
from protocol.fields import ResponseCode
from simulator.client import TerminalClient
from simulator.terminal import Terminal
from switch import demo
from switch.keys import KeyStore


@dataclass
class BurstReport:
    purchases: int = 0
    approved: int = 0
    declined: int = 0
    seconds: float = 0.0

    def __str__(self) -> str:
        rate = self.purchases / self.seconds if self.seconds else 0.0
        return (f"demo traffic: {self.purchases} two-phase club purchases, {self.approved} "
                f"approved and confirmed, {self.declined} declined, {rate:.0f}/s")


async def demo_terminals(conn: asyncpg.Connection, store: KeyStore) -> list[Terminal]:
    rows = await conn.fetch(
        """SELECT tid, bdk_id, derivation_id, ksn_counter_max FROM terminal
           WHERE status = 'active' ORDER BY tid""")
    terminals = []
    for r in rows:
        ik_id = bytes.fromhex(r["bdk_id"] + r["derivation_id"])
        initial_key = derive_initial_key(store.bdk(r["bdk_id"]), ik_id)
        terminals.append(Terminal.from_profile(r["tid"], initial_key, ik_id,
                                               r["ksn_counter_max"]))
    return terminals


async def run_burst(host: str, port: int, terminals: list[Terminal],
                    purchases_per_terminal: int = 5) -> BurstReport:
    report = BurstReport()
    started = time.perf_counter()
    for index, terminal in enumerate(terminals):
        async with await TerminalClient(terminal).connect(host, port) as client:
            await client.sign_on()
            for n in range(purchases_per_terminal):
                card = (index * purchases_per_terminal + n) % demo.MEMBERS
                response, prepared = await client.purchase(
                    10_000 * (n + 1), demo.demo_club_pan(card), demo.CARD_EXPIRY)
                report.purchases += 1
                if response.code is not ResponseCode.APPROVED:
                    report.declined += 1
                    continue
                confirmed = await client.confirm(prepared, response.message.rrn or "")
                report.approved += confirmed.code is ResponseCode.APPROVED
    report.seconds = time.perf_counter() - started
    return report
