"""A refund of a store-credit purchase paid by two issuers gives each issuer back what the
purchase drew from it, when a refund between others is reversed after its confirm or voided
before it (migrations/0028_refund_issuer_split.sql, protocol rule 21), over TCP. Before 0028
the refunds after it split by the purchase's refunded amount: the network's credit got back
more than the purchase took from it and the café's less. `db check` runs after each test,
and names a corrupted split.
"""

from __future__ import annotations

import pytest

from protocol.fields import ProcessingCode, ResponseCode
from switch import demo, ledger
from tests.e2e.conftest import Env
from tests.e2e.support import (
    failed_checks,
    merchant_id,
    net_under_ref,
    network_id,
    write_past_triggers,
)
from tests.e2e.test_lot_restore import bought, refunded
from tests.switch.test_dbcheck import REFUND_ISSUERS_MATCH as ISSUERS_MATCH

PC = ProcessingCode
CARD = 12  # demo member 12 holds café credit and network credit, both usable at the café


async def credit_accounts(env: Env) -> tuple[int, int]:
    """Card 12's café and network credit accounts."""
    card = await env.card_id(CARD)
    cafe = ledger.card_credit(card, merchant_id=await merchant_id(env, "cafe-lale"))
    network = ledger.card_credit(card, network_id=await network_id(env))
    return (await ledger.account_id(env.conn, cafe), await ledger.account_id(env.conn, network))


async def split(env: Env, rrn: str, accounts: tuple[int, int]) -> tuple[int, int]:
    """What stands of what `rrn` moved on the café and network accounts: given back (> 0)
    by a refund, drawn (< 0) by a purchase."""
    net = await net_under_ref(env, rrn)
    return (-net.get(accounts[0], 0), -net.get(accounts[1], 0))


@pytest.mark.parametrize("undo", ["reversal after confirm", "void before confirm"])
async def test_a_refund_undone_between_refunds_leaves_each_issuer_what_it_gave(env, undo):
    """The purchase draws all the café credit (C) and half the network's (N/2). Refunds:
    R1 half the café's; R2 the rest of the café's and N/8 of the network's; R3 N/8, all
    network; R2 is undone; R4 the rest. R4 gives the café what it has left (C - C/2) and the
    network the rest. Before 0028 R4 read [C/2 + N/8, C + N/2) of the spending order: the
    café got back C/2 + max(0, C/2 - N/8) and the network N/2 + N/8 or more."""
    accounts = await credit_accounts(env)
    cafe0, net0 = [(await ledger.balance(env.conn, a)).ledger for a in accounts]
    assert cafe0 > 0 and net0 > 0
    pan = demo.demo_club_pan(CARD)
    spend, half, eighth = cafe0 + net0 // 2, cafe0 // 2, net0 // 8
    client = await env.client("CAFE0001")
    async with client:
        purchase = await bought(client, spend, pan, PC.PURCHASE_STORE_CREDIT)
        assert await split(env, purchase, accounts) == (-cafe0, -(net0 // 2))
        r1, _ = await refunded(client, purchase, half, pan)
        if undo == "reversal after confirm":
            r2, r2_prepared = await refunded(client, purchase, cafe0 - half + eighth, pan)
            assert await split(env, r2, accounts) == (cafe0 - half, eighth)
            r3, _ = await refunded(client, purchase, eighth, pan)
        else:  # R3 is priced and held while R2 is still pending
            response, r2_prepared = await client.refund(
                purchase, cafe0 - half + eighth, pan, demo.CARD_EXPIRY,
                processing_code=PC.REFUND_STORE_CREDIT)
            assert response.code is ResponseCode.APPROVED and response.message.rrn
            r2 = response.message.rrn
            r3, _ = await refunded(client, purchase, eighth, pan)
        assert (await client.reverse(r2_prepared, r2)).code is ResponseCode.APPROVED
        r4, _ = await refunded(client, purchase, spend - half - eighth, pan)
    assert [await split(env, rrn, accounts) for rrn in (r1, r2, r3, r4)] == [
        (half, 0), (0, 0), (0, eighth), (cafe0 - half, net0 // 2 - eighth)]
    assert [(await ledger.balance(env.conn, a)).ledger for a in accounts] == [cafe0, net0]
    assert ISSUERS_MATCH not in await failed_checks(env)


async def test_db_check_names_an_issuer_given_back_more_or_less_than_it_gave(env):
    """A purchase from both issuers, refunded whole in three refunds, the first reversed.
    Made to stand again, the reversed refund gives the café back more than it gave; with
    the last refund voided and its amount counted in the second, the purchase reads as
    refunded whole while the issuers got back less than they gave."""
    accounts = await credit_accounts(env)
    cafe0, net0 = [(await ledger.balance(env.conn, a)).ledger for a in accounts]
    pan = demo.demo_club_pan(CARD)
    spend = cafe0 + net0 // 2
    client = await env.client("CAFE0001")
    async with client:
        purchase = await bought(client, spend, pan, PC.PURCHASE_STORE_CREDIT)
        first, first_prepared = await refunded(client, purchase, cafe0 // 2, pan)
        assert (await client.reverse(first_prepared, first)).code is ResponseCode.APPROVED
        second, _ = await refunded(client, purchase, cafe0, pan)
        last, _ = await refunded(client, purchase, spend - cafe0, pan)
    assert ISSUERS_MATCH not in await failed_checks(env)
    standing = ("UPDATE txn SET state = 'CONFIRMED', voided_at = NULL, void_reason = NULL "
                "WHERE rrn = $1", first)
    undone = ("UPDATE txn SET state = 'VOIDED', voided_at = confirmed_at, "
              "void_reason = 'reversal' WHERE rrn = $1", first)
    # The last refund voided, its amount counted in the second: refunded whole on paper.
    moved = ("UPDATE txn SET amount_rial = amount_rial + CASE WHEN rrn = $1 THEN $3 ELSE 0 END, "
             "state = CASE WHEN rrn = $2 THEN 'VOIDED' ELSE state END, "
             "voided_at = CASE WHEN rrn = $2 THEN confirmed_at END "
             "WHERE rrn IN ($1, $2)", second, last, spend - cafe0)
    back = ("UPDATE txn SET amount_rial = amount_rial - CASE WHEN rrn = $1 THEN $3 ELSE 0 END, "
            "state = 'CONFIRMED', voided_at = NULL WHERE rrn IN ($1, $2)",
            second, last, spend - cafe0)
    for corrupt, repair in ((standing, undone), (moved, back)):
        for (sql, *args), named in ((corrupt, True), (repair, False)):
            await write_past_triggers(env, sql, *args)
            assert (ISSUERS_MATCH in await failed_checks(env)) is named, sql
