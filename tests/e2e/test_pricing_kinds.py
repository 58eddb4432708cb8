"""The campaign kinds that depend on the database, end to end over TCP: a top-up bonus
(field 54 type 94, a credit lot), a stamp card and a first-purchases ladder counted from the
member's earlier purchases, lottery entries recorded against their budget, and a points lot
expired by the sweeper under an injected clock. `db check` runs after each test (the
fixture, tests/e2e/conftest.py)."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from protocol.fields import AmountType, ResponseCode
from simulator.client import TerminalClient
from switch import demo, ledger
from switch.campaign_pricing import TEHRAN
from tests.e2e.conftest import Env
from tests.e2e.support import balance, blocks, merchant_id, net_balances, network_id
from tests.e2e.test_pricing import CAFE, CREDIT, HYPER, NONE, POINTS, add, budget_used, lots

DISCOUNT, CASHBACK = (NONE, AmountType.DISCOUNT.value), (CREDIT, AmountType.CASHBACK.value)
EARNED = (POINTS, AmountType.POINTS_EARNED.value)


async def bought(client: TerminalClient, amount: int, card: int, *, confirm: bool = True
                 ) -> tuple[dict[tuple[str, str], int], str]:
    """A club purchase by demo card `card`, confirmed (or reversed before confirm): its
    field 54 and RRN."""
    response, prepared = await client.purchase(amount, demo.demo_club_pan(card),
                                               demo.CARD_EXPIRY)
    assert response.code is ResponseCode.APPROVED, response
    rrn = response.message.rrn
    assert rrn is not None
    if confirm:
        assert (await client.confirm(prepared, rrn)).code is ResponseCode.APPROVED
    else:
        assert (await client.reverse(prepared, rrn)).code is ResponseCode.APPROVED
    return blocks(response), rrn


async def pricing_of(env: Env, rrn: str) -> dict[str, Any]:
    row = await env.conn.fetchval("SELECT pricing FROM txn WHERE rrn = $1", rrn)
    assert row is not None
    value: dict[str, Any] = json.loads(row)
    return value


async def test_top_up_bonus_is_field_54_type_94_and_a_credit_lot(env):
    """Top up 200,000 at the café with the network's 5 % bonus for 90 days: the 0110 shows
    10,000 as type 94; on confirm the card's rials grow by the whole 200,000 (no fee: a
    top-up carries none) and the network's credit by 10,000 in a lot expiring in 90 days."""
    await add(env, id="topup-5", kind="top_up_bonus", bp=500, expiry_days=90, funder="network")
    card_id, net, cafe = await env.card_id(3), await network_id(env), await merchant_id(env, CAFE)
    before = await net_balances(env)
    client = await env.client("CAFE0001")
    async with client:
        response, prepared = await client.topup(200_000, demo.demo_club_pan(3), demo.CARD_EXPIRY)
        assert response.code is ResponseCode.APPROVED, response
        assert blocks(response)[CASHBACK] == 10_000
        assert DISCOUNT not in blocks(response)
        confirmed = await client.confirm(prepared, response.message.rrn)
        assert confirmed.code is ResponseCode.APPROVED
    after = await net_balances(env)
    moved = {key: after.get(key, (0,))[0] - before.get(key, (0,))[0]
             for key in set(after) | set(before)}
    credit = ledger.card_credit(card_id, network_id=net)
    assert {k: v for k, v in moved.items() if v} == {
        ledger.card_rial(card_id).key: 200_000,
        ledger.merchant_payable(cafe).key: -200_000,  # the café holds the cash
        credit.key: 10_000, ledger.credit_issued(network_id=net).key: -10_000}
    expiry = env.clock.now.astimezone(TEHRAN).replace(microsecond=0) + timedelta(days=90)
    assert (await lots(env, credit))[-1] == (10_000, 10_000, expiry)
    grants = await env.conn.fetch(
        """SELECT rule_id, effect, funder_kind, amount FROM txn_grant g JOIN txn x
           ON x.id = g.txn_id WHERE x.rrn = $1""", response.message.rrn)
    assert [tuple(g) for g in grants] == [("topup-5", "top_up_bonus", "network", 10_000)]


async def test_stamp_card_counts_visits_in_the_database_and_frees_the_third(env):
    """Every 3rd visit at the café free up to 30,000. A purchase reversed before confirm is
    no visit, and a purchase at another merchant is no visit at the café."""
    await add(env, id="cafe-3rd", kind="stamp_card", every=3, free_up_to_rial=30_000,
              merchant=CAFE)
    card = 6
    cafe, hyper = await env.client("CAFE0001"), await env.client("HYPR0001")
    async with cafe, hyper:
        stamps = []
        for client, confirm in ((cafe, True), (cafe, False), (cafe, True), (hyper, True),
                                (cafe, True), (cafe, True)):
            fields, rrn = await bought(client, 50_000, card, confirm=confirm)
            given = (await pricing_of(env, rrn))["stamps"] if client is cafe else None
            stamps.append((fields.get(DISCOUNT, 0), given))
    free = {"rule": "cafe-3rd", "every": 3}
    assert stamps == [
        (0, [{**free, "stamps": 1, "free_rial": 0}]),
        (0, [{**free, "stamps": 2, "free_rial": 0}]),  # then reversed: not a visit
        (0, [{**free, "stamps": 2, "free_rial": 0}]),
        (0, None),                                      # the hypermarket: no café visit
        (30_000, [{**free, "stamps": 0, "free_rial": 30_000}]),
        (0, [{**free, "stamps": 1, "free_rial": 0}])]


async def test_first_purchases_ladder_step_by_step(env):
    """The barber's 60 %, 50 %, 40 % on the first three purchases there (a reversed one is
    not counted), and the hypermarket's 10 % on the first two in the network: by then the
    card has bought twice at the barber, so it gets none."""
    await add(env, id="barber-welcome", kind="first_purchases", merchant="barber-sadaf",
              steps_bp=[6_000, 5_000, 4_000])
    await add(env, id="net-welcome", kind="first_purchases", merchant=HYPER,
              steps_bp=[1_000, 1_000], per_merchant=False)
    card = 8
    barber, hyper = await env.client("BARB0001"), await env.client("HYPR0001")
    async with barber, hyper:
        discounts = []
        for client, confirm in ((barber, True), (barber, False), (barber, True),
                                (hyper, True), (barber, True), (barber, True)):
            fields, _ = await bought(client, 100_000, card, confirm=confirm)
            discounts.append(fields.get(DISCOUNT, 0))
    assert discounts == [60_000, 50_000, 50_000, 0, 40_000, 0]


async def test_lottery_entries_recorded_against_their_budget(env):
    """An entry per full 10,000 rial, 4 entries in all: 35,000 earns 3, the next 25,000 the
    one left; reversing that confirmed purchase gives it back to the next. Entries are
    recorded in txn_grant and post nothing: the ledger moves only as the purchases do."""
    await add(env, id="draw", kind="lottery", merchant=HYPER, funder="network",
              rial_per_entry=10_000, max_entries=5, budget_entries=4)
    card = 10
    card_id, hyper, net = await env.card_id(card), await merchant_id(env, HYPER), \
        await network_id(env)
    before = await net_balances(env)
    client = await env.client("HYPR0001")
    async with client:
        _, first = await bought(client, 35_000, card)
        response, prepared = await client.purchase(25_000, demo.demo_club_pan(card),
                                                   demo.CARD_EXPIRY)
        second = response.message.rrn
        await client.confirm(prepared, second)
        assert await budget_used(env, "draw") == 4
        assert (await client.reverse(prepared, second)).code is ResponseCode.APPROVED
        assert await budget_used(env, "draw") == 3
        _, third = await bought(client, 15_000, card)
    entries = await env.conn.fetch(
        """SELECT x.rrn, g.rule_id, g.funder_kind, g.amount, (x.pricing->>'lottery')::int
           FROM txn_grant g JOIN txn x ON x.id = g.txn_id
           WHERE g.effect = 'lottery' ORDER BY x.id""")
    assert [tuple(e) for e in entries] == [
        (first, "draw", "network", 3, 3), (second, "draw", "network", 1, 1),
        (third, "draw", "network", 1, 1)]
    assert await budget_used(env, "draw") == 4
    after = await net_balances(env)
    moved = {key for key in set(after) | set(before)
             if after.get(key, (0,))[0] != before.get(key, (0,))[0]}
    assert moved == {ledger.card_rial(card_id).key, ledger.merchant_payable(hyper).key,
                     ledger.fee_income(net).key}  # the purchases themselves, nothing more


async def test_points_lot_expires_back_to_the_merchant_that_granted_it(env):
    """The hypermarket grants a point per 1,000 rial; the lot expires `points_expiry_days`
    after the purchase, when the sweeper gives what is left back to the hypermarket's
    points_issued (not the network's, which issued the card's older demo points, whose lot
    never expires)."""
    await add(env, id="hyper-pts", kind="points", merchant=HYPER, rial_per_point=1_000)
    card = 12
    card_id, hyper, net = await env.card_id(card), await merchant_id(env, HYPER), \
        await network_id(env)
    points = ledger.card_points(card_id)
    merchant_issued = ledger.AccountSpec(ledger.Kind.POINTS_ISSUED, merchant_id=hyper)
    [(demo_points, _, never)] = await lots(env, points)
    network_issued = (await balance(env, ledger.points_issued(net))).ledger
    client = await env.client("HYPR0001")
    async with client:
        fields, _ = await bought(client, 45_500, card)
    assert fields[EARNED] == 45  # 45.5 rounded down
    expiry = env.clock.now.astimezone(TEHRAN).replace(microsecond=0) \
        + timedelta(days=env.settings.points_expiry_days)
    assert await lots(env, points) == [(demo_points, demo_points, never), (45, 45, expiry)]
    assert (await balance(env, merchant_issued)).ledger == -45
    env.clock.advance(days=env.settings.points_expiry_days, seconds=-1)
    await env.sweep()
    assert (await lots(env, points))[-1][1] == 45  # a second early: still there
    env.clock.advance(seconds=1)
    await env.sweep()
    assert [lot[1] for lot in await lots(env, points)] == [demo_points, 0]
    assert (await env.card_balance(card, "points")).ledger == demo_points
    assert (await balance(env, merchant_issued)).ledger == 0
    assert (await balance(env, ledger.points_issued(net))).ledger == network_issued
    expired = await env.conn.fetchval(
        "SELECT count(*) FROM ledger_transfer WHERE code = 'lot_expiry'")
    assert expired == 1
