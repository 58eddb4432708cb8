"""Budgets and per-card daily limits under concurrency, against the real database: random
purchases on six terminals at once (one TCP connection each, so up to six database
connections), each then confirmed, reversed before confirm, reversed after confirm, or left
to expire. The reservation logic is SQL (migration 0012: switch_reservations_fit,
switch_reserve, switch_release_pricing), so this is where it is tested; the engine's own
bounds are tests/switch/test_campaigns_invariants.py.

Throughout, each campaign's used budget stays within its budget and each card's daily
amount within its limit; once the sweeper has expired what was left pending, what is used
is exactly what the kept (confirmed, not reversed) purchases were granted, per campaign and
per card: every release gave back exactly what it reserved. Then reversing the kept purchase
with the largest discount gives a fresh card's purchase exactly that much more budget.
`db check` runs after the test (the fixture)."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from dataclasses import dataclass

import pytest

from protocol.fields import AmountType, ResponseCode
from simulator.client import TerminalClient
from simulator.terminal import PreparedAuth
from switch import demo, keys
from tests.e2e.conftest import Env
from tests.e2e.support import blocks
from tests.e2e.test_pricing import NONE, POINTS, add

DISCOUNT, EARNED = (NONE, AmountType.DISCOUNT.value), (POINTS, AmountType.POINTS_EARNED.value)
# Network-wide, so that all six terminals (of three merchants) price with them. 20 % off,
# network-funded: 60,000 rial in all, 15,000 a card a day; a point per 1,000 rial
# paid: 400 in all, 60 a card a day. Eight cards could keep 120,000 of discount and 480
# points, so the budgets, not the daily limits, run out first, and are then released by
# reversals and expiries for later purchases.
DISCOUNT_BUDGET, DISCOUNT_DAILY, POINTS_BUDGET, POINTS_DAILY = 60_000, 15_000, 400, 60
CARDS = tuple(range(20, 28))
FRESH = 28  # a card of none of the random purchases
PURCHASES = 30
ACTIONS = ("confirm", "confirm", "void", "reverse", "expire")


@dataclass
class Sale:
    card: int
    amount: int
    action: str
    discount: int = 0
    points: int = 0
    approved: bool = False
    client: TerminalClient | None = None  # where it was approved, and its 0100 and RRN
    prepared: PreparedAuth | None = None
    rrn: str = ""


async def used_budgets(env: Env) -> dict[str, int]:
    rows = await env.conn.fetch(
        "SELECT id, budget_used_rial + budget_used_units FROM campaign "
        "WHERE id IN ('race-20', 'race-pts')")
    return {row[0]: row[1] for row in rows}


class Ledger:
    """The test's view of the database, read between operations on one connection."""

    def __init__(self, env: Env) -> None:
        self.env, self.lock = env, asyncio.Lock()

    async def check_limits(self) -> None:
        async with self.lock:
            used = await used_budgets(self.env)
            daily = await self.env.conn.fetch(
                "SELECT rule_id, max(granted) FROM card_rule_day GROUP BY rule_id")
        assert used["race-20"] <= DISCOUNT_BUDGET and used["race-pts"] <= POINTS_BUDGET
        limits = {"race-20": DISCOUNT_DAILY, "race-pts": POINTS_DAILY}
        assert all(row[1] <= limits[row[0]] for row in daily)


async def run(client: TerminalClient, sales: list[Sale], view: Ledger) -> None:
    for sale in sales:
        response, prepared = await client.purchase(sale.amount, demo.demo_club_pan(sale.card),
                                                   demo.CARD_EXPIRY)
        # 91: the price did not settle in four pricings while the same card's purchases on
        # other terminals moved its daily amounts or its member's state (the last pricing
        # takes the budgets as spent, so a moving budget alone cannot end here); nothing
        # was written, which the sums at the end prove.
        assert response.code in (ResponseCode.APPROVED, ResponseCode.SWITCH_UNAVAILABLE)
        await view.check_limits()
        if response.code is not ResponseCode.APPROVED:
            continue
        fields, rrn = blocks(response), response.message.rrn
        assert rrn is not None
        sale.approved, sale.client, sale.prepared, sale.rrn = True, client, prepared, rrn
        sale.discount, sale.points = fields.get(DISCOUNT, 0), fields.get(EARNED, 0)
        assert sale.discount <= min(sale.amount // 5, DISCOUNT_DAILY)
        if sale.action in ("confirm", "reverse"):
            assert (await client.confirm(prepared, rrn)).code is ResponseCode.APPROVED
        if sale.action in ("void", "reverse"):
            assert (await client.reverse(prepared, rrn)).code is ResponseCode.APPROVED
        await view.check_limits()


def plan(seed: int) -> list[Sale]:
    rng = random.Random(seed)  # a reproducible plan; the interleaving is the machine's
    return [Sale(rng.choice(CARDS), rng.randrange(20_000, 120_001, 500), rng.choice(ACTIONS))
            for _ in range(PURCHASES)]


@pytest.mark.parametrize("seed", [5, 17])
async def test_budgets_hold_under_concurrent_reserve_confirm_and_release(env, seed):
    await add(env, id="race-20", kind="percent_discount", funder="network",
              bp=2_000, budget_rial=DISCOUNT_BUDGET, daily_limit_rial=DISCOUNT_DAILY)
    await add(env, id="race-pts", kind="points", funder="network", rial_per_point=1_000,
              budget_points=POINTS_BUDGET, daily_limit_points=POINTS_DAILY)
    sales = plan(seed)
    clients = [await env.client(tid) for tid in sorted(env.ik_ids)]  # all six terminals
    view = Ledger(env)
    try:
        await asyncio.gather(*(run(client, sales[n::len(clients)], view)
                               for n, client in enumerate(clients)))
        env.clock.advance(seconds=env.settings.hold_timeout_s + 1)
        expired = await env.sweep()
        assert expired == sum(1 for s in sales if s.approved and s.action == "expire")
        await view.check_limits()
        kept = [s for s in sales if s.approved and s.action == "confirm"]
        assert await used_budgets(env) == {"race-20": sum(s.discount for s in kept),
                                           "race-pts": sum(s.points for s in kept)}
        top = max(kept, key=lambda s: s.discount)
        kept.remove(top)
        kept.append(await regrant(env, top, clients[0]))
    finally:
        for client in clients:
            await client.close()
    assert await used_budgets(env) == {"race-20": sum(s.discount for s in kept),
                                       "race-pts": sum(s.points for s in kept)}
    store = keys.load(env.key_file)
    by_card = {store.pan_hash(demo.demo_club_pan(c)): c for c in (*CARDS, FRESH)}
    daily = await env.conn.fetch(
        "SELECT pan_hash, rule_id, sum(granted) FROM card_rule_day GROUP BY 1, 2")
    expected: Counter[tuple[int, str]] = Counter()
    for s in kept:
        expected[(s.card, "race-20")] += s.discount
        expected[(s.card, "race-pts")] += s.points
    assert {(by_card[bytes(r[0])], r[1]): r[2] for r in daily if r[2]} == {
        k: v for k, v in expected.items() if v}


async def regrant(env: Env, top: Sale, client: TerminalClient) -> Sale:
    """Reverse the confirmed purchase `top` (the one kept with the most discount): a fresh
    card's purchase then finds exactly its discount back in the budget, whatever the run
    left. Returns the fresh card's sale."""
    assert top.client is not None and top.prepared is not None and top.discount > 0
    left = DISCOUNT_BUDGET - (await used_budgets(env))["race-20"] + top.discount
    reversed_ = await top.client.reverse(top.prepared, top.rrn)
    assert reversed_.code is ResponseCode.APPROVED
    fresh = Sale(FRESH, 100_000, "confirm")
    await run(client, [fresh], Ledger(env))
    assert fresh.approved and fresh.discount == min(fresh.amount // 5, DISCOUNT_DAILY, left)
    return fresh
