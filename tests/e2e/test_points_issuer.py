"""A points lot is drawn only by debits that credit its issuer: a refund's clawback and a
reversal take the purchase's issuer's points, never another issuer's
(migrations/0032_points_lot_issuer.sql)."""

from __future__ import annotations

from protocol.fields import ProcessingCode, ResponseCode
from simulator.client import TerminalClient
from simulator.terminal import PreparedAuth
from switch import demo, ledger, points
from tests.e2e.conftest import Env
from tests.e2e.support import failed_checks, write_past_triggers
from tests.e2e.test_lot_restore import days, refunded
from tests.e2e.test_points_redeem import NET, grant, redeem
from tests.e2e.test_pricing import add, lots
from tests.switch.test_dbcheck import POINTS_LOT_ISSUER

PC = ProcessingCode
BARBER = "BARB0001"
CARD = 1  # demo member 1: no store credit, no points


async def barber_points_and_network_points(env: Env) -> int:
    """Card 1 holds 100 of the barber's points (five days); a purchase at the barber earns
    a network point per 10,000 rials, worth 100 rials each. The card's id."""
    card = await env.card_id(CARD)
    await grant(env, card, 100, days(env, 5), merchant="barber-sadaf")
    await add(env, id="net-points", kind="points", rial_per_point=10_000, funder="network")
    await points.set_value(env.conn, NET, 100, 10_000, env.clock())
    return card


async def bought_and_redeemed(env: Env, client: TerminalClient) -> tuple[str, PreparedAuth]:
    """A 1,000,000 purchase at the barber earns 100 network points, which the member
    redeems. The purchase's RRN and 0100."""
    response, prepared = await client.purchase(1_000_000, demo.demo_club_pan(CARD),
                                               demo.CARD_EXPIRY)
    rrn = response.message.rrn
    assert response.code is ResponseCode.APPROVED and rrn is not None
    assert (await client.confirm(prepared, rrn)).code is ResponseCode.APPROVED
    assert (await redeem(env, await env.card_id(CARD), 100)).points == 100
    assert await points_lots(env) == [(100, 100), (100, 0)]  # the barber's, the network's
    return rrn, prepared


async def points_lots(env: Env) -> list[tuple[int, int]]:
    """Card 1's points lots: (amount, remaining), oldest first."""
    return [(a, r) for a, r, _ in await lots(env, ledger.card_points(await env.card_id(CARD)))]


async def issued(env: Env) -> list[tuple[object, ...]]:
    """Points out per points_issued account: (merchant, network, credits less debits)."""
    rows = await env.conn.fetch(
        """SELECT merchant_id, network_id, debits_posted - credits_posted FROM ledger_account
           WHERE kind = 'points_issued' ORDER BY id""")
    return [tuple(r) for r in rows]


async def test_a_refund_takes_back_only_its_issuers_points(env):
    """The refund owes the 100 network points; the card holds none of the network's, so it
    takes none (due 100, taken 0) and leaves the barber's 100 where they are. Before 0032 it
    drained the barber's lot and posted them to the network's points_issued."""
    await barber_points_and_network_points(env)
    client = await env.client(BARBER)
    async with client:
        rrn, _ = await bought_and_redeemed(env, client)
        before = await issued(env)
        await refunded(client, rrn, 1_000_000, demo.demo_club_pan(CARD), PC.REFUND_CLUB)
    assert [tuple(r) for r in await env.conn.fetch("SELECT due, taken FROM txn_clawback")] \
        == [(100, 0)]
    assert await points_lots(env) == [(100, 100), (100, 0)]  # the barber's, the network's
    assert await issued(env) == before


async def test_a_reversal_whose_points_were_redeemed_is_declined(env):
    """Reversing the purchase must take its 100 network points back; the card has only the
    barber's, so the reversal is declined 51 (as when a card spent its credit) and changes
    nothing."""
    await barber_points_and_network_points(env)
    client = await env.client(BARBER)
    async with client:
        rrn, prepared = await bought_and_redeemed(env, client)
        before = await issued(env), await env.count("ledger_transfer")
        assert (await client.reverse(prepared, rrn)).code is ResponseCode.INSUFFICIENT_FUNDS
    assert (await issued(env), await env.count("ledger_transfer")) == before
    assert await points_lots(env) == [(100, 100), (100, 0)]  # the barber's, the network's


async def test_db_check_names_a_points_lot_drawn_for_another_issuer(env):
    """The two lots' opening transfers swapped: the redemption, which credits the network,
    then reads as having drawn the barber's lot."""
    await barber_points_and_network_points(env)
    client = await env.client(BARBER)
    async with client:
        await bought_and_redeemed(env, client)
    swap = """UPDATE ledger_lot l SET transfer_id = o.transfer_id
              FROM ledger_lot o JOIN ledger_account a ON a.id = o.account_id
              WHERE a.kind = 'card_points' AND o.account_id = l.account_id AND o.id <> l.id"""
    for corrupt in (True, False):  # swapped, then swapped back
        await write_past_triggers(env, swap)
        assert await failed_checks(env) == ({POINTS_LOT_ISSUER} if corrupt else set())
