"""A reversal undoes every lot movement of its transaction, also on a card account where the
transaction nets to zero (migrations/0030_lot_reversal_net_zero.sql)."""

from __future__ import annotations

from protocol.fields import ProcessingCode, ResponseCode
from switch import dbcheck, demo, ledger
from tests.e2e.conftest import Env
from tests.e2e.support import network_id
from tests.e2e.test_lot_restore import bought, days, refunded
from tests.e2e.test_pricing import add, lots
from tests.switch.test_dbcheck import LOT_REVERSAL_UNDONE

PC = ProcessingCode
CAFE = "CAFE0001"


async def cafe_credit_and_cashback(env: Env) -> ledger.AccountSpec:
    """Card 1 holds 10,000 of the café's credit (never expiring) and 90,000 of the network's;
    the café gives 10 % cashback for two days on store-credit purchases."""
    cafe = await env.conn.fetchval("SELECT id FROM merchant WHERE code = 'cafe-lale'")
    card = await env.card_id(1)
    await demo._grant_credit(env.conn, card, 10_000, merchant_id=cafe)
    await demo._grant_credit(env.conn, card, 90_000, network_id=await network_id(env))
    await add(env, id="cafe-back", kind="cashback", bp=1_000, expiry_days=2,
              funder="merchant", merchant="cafe-lale", codes=["009200"])
    return ledger.card_credit(card, merchant_id=cafe)


async def test_reversing_a_refund_that_nets_to_zero_on_an_account_restores_its_lots(env):
    """A 100,000 store-credit purchase spends the café's 10,000 (never expiring) first and
    earns 10,000 café cashback expiring in two days. Its full refund gives the 10,000 back
    to the never-expiring lot and claws the cashback back from its lot: on the café account
    the refund nets to zero, so its reversal posts no entry there. The reversal must still
    put the lots back as the refund found them; before 0030 it left 10,000 never-expiring
    and the cashback spent, and each refund and reversal repeated it."""
    spec = await cafe_credit_and_cashback(env)
    pan = demo.demo_club_pan(1)
    client = await env.client(CAFE)
    async with client:
        purchase = await bought(client, 100_000, pan, PC.PURCHASE_STORE_CREDIT)
        before = await lots(env, spec)
        assert before == [(10_000, 0, None), (10_000, 10_000, days(env, 2))]
        refund, prepared = await refunded(client, purchase, 100_000, pan)
        assert await lots(env, spec) == [(10_000, 10_000, None), (10_000, 0, days(env, 2))]
        assert (await client.reverse(prepared, refund)).code is ResponseCode.APPROVED
    assert await lots(env, spec) == before
    assert [o.check.name for o in await dbcheck.run_checks(env.conn) if not o.ok] == []


async def test_db_check_names_a_reversal_that_left_lot_movements_standing(env):
    """The state before 0030: the reversal's movements on the café account removed and the
    lots set back to what they were after the refund."""
    spec = await cafe_credit_and_cashback(env)
    pan = demo.demo_club_pan(1)
    client = await env.client(CAFE)
    async with client:
        purchase = await bought(client, 100_000, pan, PC.PURCHASE_STORE_CREDIT)
        refund, prepared = await refunded(client, purchase, 100_000, pan)
        assert (await client.reverse(prepared, refund)).code is ResponseCode.APPROVED
    draws = await env.conn.fetch(
        """SELECT w.* FROM ledger_lot_draw w JOIN ledger_transfer t ON t.id = w.transfer_id
           JOIN ledger_lot l ON l.id = w.lot_id JOIN ledger_account a ON a.id = l.account_id
           WHERE t.ref = $1 AND t.code = 'reversal' AND a.key = $2""", refund, spec.key)
    assert draws
    for undone in (True, False):  # the reversal's movements removed, then put back
        async with env.conn.transaction():
            await env.conn.execute("SET LOCAL session_replication_role = replica")
            for d in draws:
                if undone:
                    await env.conn.execute("DELETE FROM ledger_lot_draw WHERE id = $1", d["id"])
                else:
                    await env.conn.execute(
                        "INSERT INTO ledger_lot_draw VALUES ($1, $2, $3, $4, $5)", *d.values())
                await env.conn.execute(
                    "UPDATE ledger_lot SET remaining = remaining + $2 WHERE id = $1",
                    d["lot_id"], d["amount"] if undone else -d["amount"])
        failed = [o.check.name for o in await dbcheck.run_checks(env.conn) if not o.ok]
        if undone:
            assert await lots(env, spec) == [(10_000, 10_000, None), (10_000, 0, days(env, 2))]
        assert failed == ([LOT_REVERSAL_UNDONE] if undone else [])
