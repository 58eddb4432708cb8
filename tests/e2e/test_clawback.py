"""A refund takes back, in proportion, the cashback and points its purchase granted, over
TCP: whole on a full refund, exactly the grant over partial refunds, and only what the card
still has when it spent the cashback (the rest recorded in txn_clawback). The refund's 0110
reports what it owes back and its 0230 what it took (field 54 types 94 and 95, sign D).
`db check` runs after each test (the fixture), including the clawback checks.
"""

from __future__ import annotations

from typing import Any

from protocol.fields import AmountType, ProcessingCode, ResponseCode
from simulator.terminal import Response
from switch import dbcheck, demo, ledger, registry
from switch.tiers import Threshold, TierPolicy
from tests.e2e.conftest import Env
from tests.e2e.support import (
    balance,
    blocks,
    failed_checks,
    merchant_id,
    write_past_triggers,
)
from tests.e2e.test_pricing import CREDIT, POINTS, add
from tests.switch.test_dbcheck import CLAWBACK_CHECKS, CLAWBACK_POSTED, CLAWBACK_WITHIN_GRANT

CAFE, TID = "cafe-lale", "CAFE0001"


async def credit_and_points(env: Env, card: int) -> tuple[int, int]:
    card_id, cafe = await env.card_id(card), await merchant_id(env, CAFE)
    credit = await balance(env, ledger.card_credit(card_id, merchant_id=cafe))
    points = await balance(env, ledger.card_points(card_id))
    return credit.ledger, points.ledger


async def clawbacks(env: Env, rrn: str) -> list[tuple[str, int, int]]:
    rows = await env.conn.fetch(
        """SELECT g.effect, c.due, c.taken FROM txn_clawback c JOIN txn r ON r.id = c.txn_id
           JOIN txn_grant g ON g.txn_id = c.original_txn_id AND g.seq = c.seq
           WHERE r.rrn = $1 ORDER BY c.seq""", rrn)
    return [(r[0], r[1], r[2]) for r in rows]


# Each corruption of a clawback row, and the one check that names it.
_CORRUPTIONS = [
    ("UPDATE txn_clawback SET taken = taken {0} 1, due = due {0} 1 WHERE seq = ("
     "SELECT min(seq) FROM txn_clawback)", CLAWBACK_POSTED),
    ("UPDATE txn_clawback SET due = due {0} -1 WHERE seq = (SELECT min(seq) FROM txn_clawback)",
     CLAWBACK_WITHIN_GRANT),
]


def taken_back(response: Response[Any]) -> tuple[int, int]:
    """A refund's 94 and 95 (store credit and points it takes back: sign D, so negative)."""
    found = blocks(response)
    return (found[(CREDIT, AmountType.CASHBACK.value)],
            found[(POINTS, AmountType.POINTS_EARNED.value)])


async def campaigns(env: Env) -> None:
    # 3.33 % merchant cashback and a point per 7,000 rials, so partial shares round.
    await add(env, id="cafe-back", kind="cashback", bp=333, expiry_days=30, merchant=CAFE)
    await add(env, id="cafe-points", kind="points", rial_per_point=7_000, merchant=CAFE)


async def test_full_refund_takes_back_all_cashback_and_points(env):
    await campaigns(env)
    pan = demo.demo_club_pan(1)
    before = await credit_and_points(env, 1)
    client = await env.client(TID)
    async with client:
        bought, prepared = await client.purchase(100_000, pan, demo.CARD_EXPIRY)
        # 3.33 % of 100,000 = 3,330; 100,000 / 7,000 = 14.28, 14 points.
        assert blocks(bought)[(CREDIT, AmountType.CASHBACK.value)] == 3_330
        assert blocks(bought)[(POINTS, AmountType.POINTS_EARNED.value)] == 14
        await client.confirm(prepared, bought.message.rrn)
        assert await credit_and_points(env, 1) == (before[0] + 3_330, before[1] + 14)
        refund, p2 = await client.refund(bought.message.rrn, 100_000, pan, demo.CARD_EXPIRY)
        assert refund.code is ResponseCode.APPROVED, refund
        assert taken_back(refund) == (-3_330, -14)
        confirmed = await client.confirm(p2, refund.message.rrn)
        assert confirmed.code is ResponseCode.APPROVED
        assert taken_back(confirmed) == (-3_330, -14)
    assert await credit_and_points(env, 1) == before
    assert await clawbacks(env, refund.message.rrn) == [
        ("cashback", 3_330, 3_330), ("points", 14, 14)]
    # db check proves the clawback invariants, and names each corruption of them.
    outcomes = {o.check.name: o for o in await dbcheck.run_checks(env.conn)}
    assert all(outcomes[name].ok and outcomes[name].examined > 0 for name in CLAWBACK_CHECKS)
    for sql, name in _CORRUPTIONS:
        await write_past_triggers(env, sql.format("-"))
        assert await failed_checks(env) == {name}
        await write_past_triggers(env, sql.format("+"))


async def test_two_partial_refunds_take_back_exactly_the_grant_then_reversal_undoes(env):
    await campaigns(env)
    pan = demo.demo_club_pan(1)
    before = await credit_and_points(env, 1)
    client = await env.client(TID)
    async with client:
        bought, prepared = await client.purchase(100_000, pan, demo.CARD_EXPIRY)
        await client.confirm(prepared, bought.message.rrn)
        rrn = bought.message.rrn
        first, p1 = await client.refund(rrn, 33_333, pan, demo.CARD_EXPIRY)
        assert taken_back(first) == (-1_109, -4)
        assert taken_back(await client.confirm(p1, first.message.rrn)) == (-1_109, -4)
        # Floor of 3,330 x 33,333 / 100,000 = 1,109.9 -> 1,109; 14 x 0.33333 = 4.67 -> 4.
        assert await clawbacks(env, first.message.rrn) == [
            ("cashback", 1_109, 1_109), ("points", 4, 4)]
        assert await credit_and_points(env, 1) == (before[0] + 2_221, before[1] + 10)
        second, p2 = await client.refund(rrn, 66_667, pan, demo.CARD_EXPIRY)
        assert taken_back(second) == (-2_221, -10)
        assert taken_back(await client.confirm(p2, second.message.rrn)) == (-2_221, -10)
        # The refund that completes the payable takes the remainder.
        assert await clawbacks(env, second.message.rrn) == [
            ("cashback", 2_221, 2_221), ("points", 10, 10)]
        assert await credit_and_points(env, 1) == before
        # Reversing the second refund gives its share back to the card.
        reversed_ = await client.reverse(p2, second.message.rrn)
        assert reversed_.code is ResponseCode.APPROVED, reversed_
    assert await credit_and_points(env, 1) == (before[0] + 2_221, before[1] + 10)


async def test_spent_cashback_is_taken_back_as_far_as_left_and_the_rest_recorded(env):
    await campaigns(env)
    pan = demo.demo_club_pan(1)
    card_id, cafe = await env.card_id(1), await merchant_id(env, CAFE)
    client = await env.client(TID)
    async with client:
        bought, prepared = await client.purchase(100_000, pan, demo.CARD_EXPIRY)
        await client.confirm(prepared, bought.message.rrn)
        # The customer spends all the cafe credit but 1,000 rials.
        credit = ledger.card_credit(card_id, merchant_id=cafe)
        spend_rial = (await balance(env, credit)).ledger - 1_000
        spend, p2 = await client.purchase(
            spend_rial, pan, demo.CARD_EXPIRY,
            processing_code=ProcessingCode.PURCHASE_STORE_CREDIT)
        assert spend.code is ResponseCode.APPROVED, spend
        await client.confirm(p2, spend.message.rrn)
        assert (await balance(env, credit)).ledger == 1_000
        refund, p3 = await client.refund(bought.message.rrn, 100_000, pan, demo.CARD_EXPIRY)
        assert refund.code is ResponseCode.APPROVED, refund
        # The 0110 says what the refund owes back; the 0230 what it could take.
        assert taken_back(refund) == (-3_330, -14)
        confirmed = await client.confirm(p3, refund.message.rrn)
        assert taken_back(confirmed) == (-1_000, -14)
        # A repeated confirm answers the same amounts.
        assert taken_back(await client.confirm(p3, refund.message.rrn)) == (-1_000, -14)
    assert (await balance(env, credit)).ledger == 0
    assert (await clawbacks(env, refund.message.rrn))[0] == ("cashback", 3_330, 1_000)


async def test_a_refund_of_a_purchase_that_earned_nothing_reports_no_clawback(env):
    pan = demo.demo_club_pan(1)
    client = await env.client(TID)
    async with client:
        bought, prepared = await client.purchase(100_000, pan, demo.CARD_EXPIRY)
        await client.confirm(prepared, bought.message.rrn)
        refund, p2 = await client.refund(bought.message.rrn, 100_000, pan, demo.CARD_EXPIRY)
        confirmed = await client.confirm(p2, refund.message.rrn)
    for response in (refund, confirmed):
        assert response.code is ResponseCode.APPROVED, response
        assert not {key for key in blocks(response)
                    if key[1] in (AmountType.CASHBACK.value, AmountType.POINTS_EARNED.value)}


async def test_tier_points_are_net_of_the_points_refunds_took_back(env):
    """Tiers by points only (silver from 30, gold from 50): 60 points make the card gold;
    the full refund takes them back, so after the next purchase (1 point) the card has
    earned bronze and goes down one step, to silver. Counted gross, 61 points kept gold."""
    await registry.set_tier_policy(env.conn, demo.NETWORK_CODE, TierPolicy(
        bronze=Threshold(0), silver=Threshold(10**9, 30), gold=Threshold(10**9, 50)))
    await add(env, id="cafe-points", kind="points", rial_per_point=1_000, merchant=CAFE)
    card_id, pan = await env.card_id(7), demo.demo_club_pan(7)
    tier_sql = "SELECT tier FROM card WHERE id = $1"
    client = await env.client(TID)
    async with client:
        bought, prepared = await client.purchase(60_000, pan, demo.CARD_EXPIRY)
        await client.confirm(prepared, bought.message.rrn)
        assert await env.conn.fetchval(tier_sql, card_id) == "gold"
        refund, p2 = await client.refund(bought.message.rrn, 60_000, pan, demo.CARD_EXPIRY)
        await client.confirm(p2, refund.message.rrn)
        assert await clawbacks(env, refund.message.rrn) == [("points", 60, 60)]
        again, p3 = await client.purchase(1_000, pan, demo.CARD_EXPIRY)
        await client.confirm(p3, again.message.rrn)
    assert await env.conn.fetchval(tier_sql, card_id) == "silver"
