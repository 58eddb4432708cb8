"""Credit given back to a card returns to the lots it was drawn from, with their expiry
(migrations/0021_lot_draws.sql), over TCP: a refund or a reversal of a store-credit purchase
opens no lot that never expires; a lot given back after its expiry goes to its issuer at the
sweeper's next round (injected clock); a refund's clawback takes its purchase's own cashback
first; a chain of refunds and reversals ends where it began; credit whose draws are unknown
opens a lot bounded by the lots it came from. And a refund's network fee, reckoned on
confirm, never drifts when a pending refund is voided. `db check` runs after each test.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import asyncpg
import pytest

from protocol.fields import ProcessingCode, ResponseCode
from simulator.client import TerminalClient
from simulator.terminal import PreparedAuth
from switch import dbcheck, demo, ledger
from switch.campaign_pricing import TEHRAN
from tests.e2e.conftest import Env
from tests.e2e.support import balance, failed_checks, network_id, write_past_triggers
from tests.e2e.test_pricing import add, lots
from tests.switch.test_dbcheck import (
    LOT_DRAW_CHECKS,
    LOT_DRAWS_MATCH,
    LOT_ENTRIES_MATCH,
    LOT_UNDO_WITHIN,
    REFUND_FEES_MATCH,
)

PC = ProcessingCode
BARBER = "BARB0001"
Lots = list[tuple[int, int, datetime | None]]


async def bought(client: TerminalClient, amount: int, pan: str,
                 code: ProcessingCode = PC.PURCHASE_CLUB) -> str:
    """A confirmed purchase; its RRN."""
    response, prepared = await client.purchase(amount, pan, demo.CARD_EXPIRY,
                                               processing_code=code)
    rrn = response.message.rrn
    assert response.code is ResponseCode.APPROVED and rrn is not None, response
    assert (await client.confirm(prepared, rrn)).code is ResponseCode.APPROVED
    return rrn


async def refunded(client: TerminalClient, rrn: str, amount: int, pan: str,
                   code: ProcessingCode = PC.REFUND_STORE_CREDIT) -> tuple[str, PreparedAuth]:
    """A confirmed refund; its RRN and 0100 (to reverse it)."""
    response, prepared = await client.refund(rrn, amount, pan, demo.CARD_EXPIRY,
                                             processing_code=code)
    refund = response.message.rrn
    assert response.code is ResponseCode.APPROVED and refund is not None, response
    assert (await client.confirm(prepared, refund)).code is ResponseCode.APPROVED
    return refund, prepared


def days(env: Env, n: int) -> datetime:
    """The expiry of a grant made now that lasts `n` days (as the engine computes it)."""
    return env.clock.now.astimezone(TEHRAN).replace(microsecond=0) + timedelta(days=n)


async def network_cashback(env: Env, expiry_days: int) -> datetime:
    """A 10 % cashback campaign funded by the network, its grants lasting `expiry_days`;
    when a grant made now expires."""
    await add(env, id="net-back", kind="cashback", bp=1_000, expiry_days=expiry_days,
              funder="network")
    return days(env, expiry_days)


async def network_lots(env: Env, card: int) -> tuple[ledger.AccountSpec, Lots]:
    spec = ledger.card_credit(await env.card_id(card), network_id=await network_id(env))
    return spec, await lots(env, spec)


async def test_refund_gives_credit_back_to_its_lot_and_the_sweeper_expires_it(env):
    """Card 4's network credit never expires; network cashback (10 %, 2 days) opens lot C,
    and a 4,000 credit purchase spends from C. C expires; the refund then gives the 4,000
    back to C, past its expiry, and the sweeper's next round takes it back to the issuer.
    Before 0021 the refund opened a new lot that never expired."""
    expiry = await network_cashback(env, 2)
    pan = demo.demo_club_pan(4)
    credit, [(old, _, never)] = await network_lots(env, 4)
    assert never is None
    client = await env.client(BARBER)
    async with client:
        await bought(client, 100_000, pan)
        spend = await bought(client, 4_000, pan, PC.PURCHASE_STORE_CREDIT)
        assert (await network_lots(env, 4))[1] == [(old, old, None), (10_000, 6_000, expiry)]
        env.clock.advance(days=2, seconds=1)
        await env.sweep()
        assert (await network_lots(env, 4))[1] == [(old, old, None), (10_000, 0, expiry)]
        await refunded(client, spend, 4_000, pan)
    assert (await network_lots(env, 4))[1] == [(old, old, None), (10_000, 4_000, expiry)]
    issuer = ledger.credit_issued(network_id=await network_id(env))
    issued = (await balance(env, issuer)).ledger
    await env.sweep()
    assert (await network_lots(env, 4))[1] == [(old, old, None), (10_000, 0, expiry)]
    assert (await balance(env, credit)).ledger == old
    assert (await balance(env, issuer)).ledger == issued + 4_000  # back to the issuer


async def test_reversal_after_confirm_gives_credit_back_to_its_lot(env):
    expiry = await network_cashback(env, 2)
    pan = demo.demo_club_pan(4)
    _, [(old, _, _)] = await network_lots(env, 4)
    client = await env.client(BARBER)
    async with client:
        await bought(client, 100_000, pan)
        response, prepared = await client.purchase(4_000, pan, demo.CARD_EXPIRY,
                                                   processing_code=PC.PURCHASE_STORE_CREDIT)
        await client.confirm(prepared, response.message.rrn)
        assert (await client.reverse(prepared, response.message.rrn)).code \
            is ResponseCode.APPROVED
    assert (await network_lots(env, 4))[1] == [(old, old, None), (10_000, 10_000, expiry)]


async def test_clawback_takes_its_purchase_cashback_first_and_its_reversal_gives_it_back(env):
    """Card 1 earns network cashback lasting 30 days twice, ten days apart. Refunding the
    second purchase takes back its own lot (expiring on day 40), not the earlier one (day
    30): taking the earliest would have left the member later-expiring credit. Reversing
    the refund gives the cashback back to that lot."""
    first_expiry = await network_cashback(env, 30)
    pan = demo.demo_club_pan(1)
    client = await env.client(BARBER)
    async with client:
        await bought(client, 100_000, pan)
        env.clock.advance(days=10)
        second = await bought(client, 100_000, pan)
        second_expiry = days(env, 30)
        response, prepared = await client.refund(second, 100_000, pan, demo.CARD_EXPIRY)
        await client.confirm(prepared, response.message.rrn)
        assert (await network_lots(env, 1))[1] == [(10_000, 10_000, first_expiry),
                                                   (10_000, 0, second_expiry)]
        assert (await client.reverse(prepared, response.message.rrn)).code \
            is ResponseCode.APPROVED
    assert (await network_lots(env, 1))[1] == [(10_000, 10_000, first_expiry),
                                               (10_000, 10_000, second_expiry)]


async def test_a_chain_of_refunds_and_reversals_ends_where_it_began(env):
    """A 4,000 credit purchase P from cashback lot C (10,000); refund F gives it back; an
    8,000 purchase Y spends C down to 2,000; F's reversal takes back 2,000 from C and the
    rest earliest expiring (the old lot); P's reversal gives P's 4,000 back to C; Y's refund
    gives back what fits in C and opens a lot for the rest. The card ends with what it had
    before P, and every movement is recorded (db check)."""
    expiry = await network_cashback(env, 2)
    pan = demo.demo_club_pan(4)
    credit, [(old, _, _)] = await network_lots(env, 4)
    client = await env.client(BARBER)
    async with client:
        await bought(client, 100_000, pan)
        start = (await balance(env, credit)).ledger
        response, p_prepared = await client.purchase(4_000, pan, demo.CARD_EXPIRY,
                                                     processing_code=PC.PURCHASE_STORE_CREDIT)
        await client.confirm(p_prepared, response.message.rrn)
        p_rrn = response.message.rrn
        f_rrn, f_prepared = await refunded(client, p_rrn, 4_000, pan)
        assert (await network_lots(env, 4))[1] == [(old, old, None), (10_000, 10_000, expiry)]
        y_rrn = await bought(client, 8_000, pan, PC.PURCHASE_STORE_CREDIT)
        assert (await client.reverse(f_prepared, f_rrn)).code is ResponseCode.APPROVED
        assert (await network_lots(env, 4))[1] == [(old, old - 2_000, None),
                                                   (10_000, 0, expiry)]
        assert (await client.reverse(p_prepared, p_rrn)).code is ResponseCode.APPROVED
        assert (await network_lots(env, 4))[1] == [(old, old - 2_000, None),
                                                   (10_000, 4_000, expiry)]
        await refunded(client, y_rrn, 8_000, pan)
    # C takes back 6,000 (up to its amount); the other 2,000 came out of lots before Y, one
    # of which never expires, so its lot never expires.
    assert (await network_lots(env, 4))[1] == [(old, old - 2_000, None),
                                               (10_000, 10_000, expiry), (2_000, 2_000, None)]
    assert (await balance(env, credit)).ledger == start
    outcomes = {o.check.name: o for o in await dbcheck.run_checks(env.conn)}
    assert all(outcomes[name].ok and outcomes[name].examined > 0 for name in LOT_DRAW_CHECKS)


async def test_credit_whose_draws_are_unknown_opens_a_lot_bounded_by_its_source(env):
    """A credit purchase whose draws were made before 0021 (recorded then without their
    transfer): its refund cannot tell which lots it drew, so it opens a lot that expires
    with the latest-expiring lot the account held before the purchase (card 1 has only the
    cashback lot C), never later; the sweeper expires it with C."""
    expiry = await network_cashback(env, 2)
    pan = demo.demo_club_pan(1)
    client = await env.client(BARBER)
    async with client:
        await bought(client, 100_000, pan)
        spend = await bought(client, 4_000, pan, PC.PURCHASE_STORE_CREDIT)
        # As 0021 recorded draws made before it.
        await write_past_triggers(env, "UPDATE ledger_lot_draw SET transfer_id = NULL")
        await refunded(client, spend, 4_000, pan)
    credit, found = await network_lots(env, 1)
    assert found == [(10_000, 6_000, expiry), (4_000, 4_000, expiry)]
    env.clock.advance(days=2, seconds=1)
    await env.sweep()
    assert (await balance(env, credit)).ledger == 0


# Each corruption of the lot movements, its repair, and the checks that name it.
_LAST_DRAW = "(SELECT max(id) FROM ledger_lot_draw WHERE amount > 0)"
_LAST_GIVE_BACK = "(SELECT max(id) FROM ledger_lot_draw WHERE amount < 0)"
_CORRUPTIONS = [
    # A draw one less: its lot's rows and its transfer's entry disagree with it.
    (f"UPDATE ledger_lot_draw SET amount = amount - 1 WHERE id = {_LAST_DRAW}",
     f"UPDATE ledger_lot_draw SET amount = amount + 1 WHERE id = {_LAST_DRAW}",
     {LOT_DRAWS_MATCH, LOT_ENTRIES_MATCH}),
    # A lot smaller than it was: what it lost is no longer what was drawn from it.
    ("UPDATE ledger_lot SET amount = amount - 1000 "
     f"WHERE id = (SELECT lot_id FROM ledger_lot_draw WHERE id = {_LAST_DRAW})",
     "UPDATE ledger_lot SET amount = amount + 1000 "
     f"WHERE id = (SELECT lot_id FROM ledger_lot_draw WHERE id = {_LAST_DRAW})",
     {LOT_DRAWS_MATCH}),
    # A give-back that names a give-back (itself) as what it undoes; it undid the first draw.
    (f"UPDATE ledger_lot_draw SET undoes = id WHERE id = {_LAST_GIVE_BACK}",
     "UPDATE ledger_lot_draw SET undoes = (SELECT min(id) FROM ledger_lot_draw) "
     f"WHERE id = {_LAST_GIVE_BACK}",
     {LOT_UNDO_WITHIN}),
]


async def test_db_check_names_each_corruption_of_the_lot_movements(env):
    await network_cashback(env, 2)
    pan = demo.demo_club_pan(1)
    client = await env.client(BARBER)
    async with client:
        await bought(client, 100_000, pan)
        first = await bought(client, 1_000, pan, PC.PURCHASE_STORE_CREDIT)
        await refunded(client, first, 1_000, pan)
        await bought(client, 2_000, pan, PC.PURCHASE_STORE_CREDIT)  # drawn, not given back
    assert {o.check.name for o in await dbcheck.run_checks(env.conn) if not o.ok} == set()
    for corrupt, repair, names in _CORRUPTIONS:
        for sql in (corrupt, repair):
            await write_past_triggers(env, sql)
            assert await failed_checks(env) == (names if sql is corrupt else set())


@pytest.mark.parametrize("statement", ["UPDATE ledger_lot_draw SET amount = amount + 1",
                                       "DELETE FROM ledger_lot_draw"])
async def test_lot_movements_are_append_only(env, statement):
    await network_cashback(env, 2)
    pan = demo.demo_club_pan(1)
    client = await env.client(BARBER)
    async with client:
        await bought(client, 100_000, pan)
        await bought(client, 1_000, pan, PC.PURCHASE_STORE_CREDIT)
    before = await env.conn.fetch("SELECT * FROM ledger_lot_draw")
    assert before
    with pytest.raises(asyncpg.RaiseError, match="ledger is append-only"):
        await env.conn.execute(statement)
    assert await env.conn.fetch("SELECT * FROM ledger_lot_draw") == before


# The network fee given back by refunds.

async def fees_back(env: Env, rrns: list[str]) -> list[int]:
    """What each refund posted back to the merchant as the network's fee."""
    out = []
    for rrn in rrns:
        fee: int = await env.conn.fetchval(
            """SELECT coalesce(sum(e.amount), 0)::bigint FROM ledger_transfer t
               JOIN ledger_entry e ON e.transfer_id = t.id
               WHERE t.ref = $1 AND t.code = 'refund_fee' AND e.amount > 0""", rrn)
        out.append(fee)
    return out


async def test_a_pending_refund_voided_between_refunds_does_not_drift_the_fee(env):
    """A 62,500 club purchase at the hypermarket pays a fee of 1,000 (0.8 % + 500). Refund
    A (20,833) is confirmed; B (20,833) and C (20,834, completing the amount with B) are
    pending when B is reversed; C is confirmed, then D (20,833) completes the amount.
    Priced in phase 1 on amounts that counted B, C and D each gave back 334 and the fees
    came to 1,001; reckoned on confirm they come to 1,000 exactly."""
    pan = demo.demo_club_pan(2)
    client = await env.client("HYPR0001")
    async with client:
        rrn = await bought(client, 62_500, pan)
        assert await env.conn.fetchval(
            "SELECT quote->>'network_fee' FROM txn WHERE rrn = $1", rrn) == "1000"
        a, _ = await refunded(client, rrn, 20_833, pan, PC.REFUND_CLUB)
        b, b_prepared = await client.refund(rrn, 20_833, pan, demo.CARD_EXPIRY)
        c, c_prepared = await client.refund(rrn, 20_834, pan, demo.CARD_EXPIRY)
        reversed_ = await client.reverse(b_prepared, b.message.rrn)
        assert reversed_.code is ResponseCode.APPROVED
        assert (await client.confirm(c_prepared, c.message.rrn)).code is ResponseCode.APPROVED
        d, _ = await refunded(client, rrn, 20_833, pan, PC.REFUND_CLUB)
    # 1,000 x 20,833 / 62,500 = 333.3 -> 333; with C 666.7 -> 666, so C 333; D the rest.
    assert await fees_back(env, [a, c.message.rrn, d]) == [333, 333, 334]
    quoted = await env.conn.fetch(
        "SELECT (quote->>'network_fee')::bigint FROM txn WHERE rrn = ANY($1) ORDER BY id",
        [a, c.message.rrn, d])
    assert [r[0] for r in quoted] == [333, 333, 334]  # each quote says what was posted
    outcomes = {o.check.name: o for o in await dbcheck.run_checks(env.conn)}
    assert outcomes[REFUND_FEES_MATCH].ok and outcomes[REFUND_FEES_MATCH].examined == 1
    for fee, failed in (("999", {REFUND_FEES_MATCH}), ("1000", set())):
        # A purchase's fee given back beyond it (or not whole) is named.
        await env.conn.execute(
            "UPDATE txn SET quote = jsonb_set(quote, '{network_fee}', $2) WHERE rrn = $1",
            rrn, fee)
        assert {o.check.name for o in await dbcheck.run_checks(env.conn) if not o.ok} == failed


async def test_a_reversed_refund_fee_falls_to_the_next_refund(env):
    """Refunds A and B (20,833 each) give back 333 and 333; A is reversed; C (41,667)
    completes the amount and gives back the rest of the fee, 667, so B and C sum to it."""
    pan = demo.demo_club_pan(2)
    client = await env.client("HYPR0001")
    async with client:
        rrn = await bought(client, 62_500, pan)
        a, a_prepared = await refunded(client, rrn, 20_833, pan, PC.REFUND_CLUB)
        b, _ = await refunded(client, rrn, 20_833, pan, PC.REFUND_CLUB)
        assert (await client.reverse(a_prepared, a)).code is ResponseCode.APPROVED
        c, _ = await refunded(client, rrn, 41_667, pan, PC.REFUND_CLUB)
    assert await fees_back(env, [b, c]) == [333, 667]
