"""Points are spent as store credit (migrations/0026_points_redeem.sql, switch/points.py):
a redemption posts its points and its credit exactly, leaves the rest, refuses more than the
issuer's redeemable points having changed nothing, opens credit that expires with the points
it came from (injected clock, the sweeper), credit a 009200 purchase then spends over TCP,
and concurrent redemptions and purchases never spend anything twice. `db check` runs after
each test (the fixture), with the redemption check.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

import asyncpg
import pytest

from protocol.fields import ProcessingCode, ResponseCode
from switch import cli_pricing, dbcheck, demo, ledger, points
from switch.registry import RegistryError
from tests.e2e.conftest import Env
from tests.e2e.support import all_balances, balance, merchant_id, net_under_ref, network_id
from tests.e2e.test_db_trouble import wait_for_lock_waiter
from tests.e2e.test_pricing import HYPER, add, lots
from tests.switch.test_dbcheck import REDEMPTIONS_POSTED

NET = points.Issuer("network", demo.NETWORK_CODE)
HYPER_ISSUER = points.Issuer("merchant", HYPER)
VALUE = demo.POINTS_VALUE_RIAL  # the demo's value of a point, network's and hypermarket's
MAX_RIAL = 100_000_000
CARD = 1  # demo member 1: no store credit, no points


async def grant(env: Env, card_id: int, amount: int, expires_at: datetime | None, *,
                merchant: str | None = None) -> None:
    """Points granted as a confirm posts them (0013): the network's, or `merchant`'s."""
    m = None if merchant is None else await merchant_id(env, merchant)
    n = None if merchant is not None else await network_id(env)
    transfer = await env.conn.fetchval(
        """SELECT switch_transfer('PTS', 'points', 'test-grant',
                  ledger_account_ensure('points_issued', NULL, $2, $3),
                  ledger_account_ensure('card_points', $1, NULL, NULL), $4)""",
        card_id, m, n, amount)
    await env.conn.execute("UPDATE ledger_lot SET expires_at = $2 WHERE transfer_id = $1",
                           transfer, expires_at)


async def redeem(env: Env, card_id: int, amount: int, issuer: points.Issuer | None = NET,
                 conn: asyncpg.Connection | None = None, request_id: str | None = None,
                 ) -> points.Redemption:
    """As `loyalty admin card redeem-points` does: one transaction, rolled back if refused."""
    conn = conn or env.conn
    async with conn.transaction():
        return await points.redeem(conn, card_id, amount, issuer, request_id=request_id,
                                   now=env.clock(), max_rial=MAX_RIAL)


async def state(env: Env) -> tuple[object, ...]:
    """Everything a refused redemption must leave as it was."""
    return (await all_balances(env), await env.count("points_redemption"),
            await env.count("ledger_transfer"),
            [tuple(r) for r in await env.conn.fetch(
                "SELECT id, remaining, expires_at FROM ledger_lot ORDER BY id")])


def card_points(card_id: int) -> ledger.AccountSpec:
    return ledger.card_points(card_id)


async def test_redemption_posts_points_and_credit_exactly_and_leaves_the_rest(env):
    card_id, net, hyper = await env.card_id(CARD), await network_id(env), \
        await merchant_id(env, HYPER)
    t = env.clock()
    await grant(env, card_id, 300, t + timedelta(days=10))
    # The hypermarket's points expire first, yet a redemption of the network's leaves them.
    await grant(env, card_id, 200, t + timedelta(days=5), merchant=HYPER)

    done = await redeem(env, card_id, 120, request_id="app-1")
    assert (done.points, done.rial, done.rial_per_point, done.repeated) == (
        120, 120 * VALUE, VALUE, False)
    ids = {key: await ledger.account_id(env.conn, spec) for key, spec in {
        "points": card_points(card_id), "issued": ledger.points_issued(net),
        "credit": ledger.card_credit(card_id, network_id=net),
        "credit_issued": ledger.credit_issued(network_id=net)}.items()}
    assert await net_under_ref(env, f"redeem:{done.redemption_id}") == {
        ids["points"]: 120, ids["issued"]: -120,
        ids["credit_issued"]: 12_000, ids["credit"]: -12_000}
    # Any part of one issuer's points: the rest of them, and the other issuer's, stay.
    assert [(a, r) for a, r, _ in await lots(env, card_points(card_id))] == [
        (300, 180), (200, 200)]
    assert await lots(env, ledger.card_credit(card_id, network_id=net)) == [
        (12_000, 12_000, t + timedelta(days=10))]
    assert await points.redeemable(env.conn, card_id, NET, t) == 180
    assert await points.redeemable(env.conn, card_id, HYPER_ISSUER, t) == 200
    assert (await balance(env, ledger.card_credit(card_id, merchant_id=hyper))).ledger == 0

    # A retry with the same request id is answered as stored and posts nothing.
    before = await state(env)
    again = await redeem(env, card_id, 120, request_id="app-1")
    assert (again.redemption_id, again.rial, again.repeated) == (done.redemption_id, 12_000, True)
    assert await state(env) == before
    with pytest.raises(RegistryError, match="'app-1' was used for another redemption"):
        await redeem(env, card_id, 121, request_id="app-1")

    # The card history names the redemption.
    rows = await env.conn.fetch(cli_pricing.HISTORY_SQL, card_id)
    mine = [(r["code"], r["kind"], r["delta"]) for r in rows
            if r["ref"] == f"redeem:{done.redemption_id}"]
    assert mine == [("points_redeem", "card_points", -120),
                    ("points_redeem", "card_credit", 12_000)]
    assert any("points_redeem" in line and "+12,000" in line
               for line in cli_pricing.history_lines([dict(r) for r in rows]))

    # db check proves each redemption's postings, and names a row that disagrees.
    outcomes = {o.check.name: o for o in await dbcheck.run_checks(env.conn)}
    assert outcomes[REDEMPTIONS_POSTED].ok and outcomes[REDEMPTIONS_POSTED].examined == 1
    for sign in ("+", "-"):
        await env.conn.execute(f"UPDATE points_redemption SET points = points {sign} 1, "
                               f"rial = rial {sign} rial_per_point")
        failed = {o.check.name for o in await dbcheck.run_checks(env.conn) if not o.ok}
        assert failed == ({REDEMPTIONS_POSTED} if sign == "+" else set())


async def test_more_than_the_issuers_points_or_no_value_is_refused_and_changes_nothing(env):
    card_id = await env.card_id(CARD)
    t = env.clock()
    await grant(env, card_id, 180, None)
    await grant(env, card_id, 200, t + timedelta(days=20), merchant=HYPER)
    before = await state(env)
    # 380 points on the card, but only 180 of them the network's.
    with pytest.raises(RegistryError,
                       match=rf"--points 181: card {card_id} has 180 points of network demo "):
        await redeem(env, card_id, 181)
    with pytest.raises(RegistryError, match="has 200 points of merchant hyper-setareh"):
        await redeem(env, card_id, 201, HYPER_ISSUER)
    with pytest.raises(RegistryError, match="no points value is set for merchant cafe-lale"):
        await redeem(env, card_id, 1, points.Issuer("merchant", "cafe-lale"))
    with pytest.raises(RegistryError, match="no merchant 'nowhere'"):
        await redeem(env, card_id, 1, points.Issuer("merchant", "nowhere"))
    with pytest.raises(RegistryError, match="--points 0"):
        await redeem(env, card_id, 0)
    assert await state(env) == before
    # The whole of it, when the member wants: nothing left of the network's.
    assert (await redeem(env, card_id, 180)).rial == 180 * VALUE
    assert await points.redeemable(env.conn, card_id, NET, t) == 0
    assert (await balance(env, card_points(card_id))).ledger == 200


async def test_redeemed_credit_expires_with_the_points_it_came_from(env):
    card_id, net = await env.card_id(CARD), await network_id(env)
    t = env.clock()
    await grant(env, card_id, 100, t + timedelta(days=30))
    await grant(env, card_id, 100, t + timedelta(days=5))
    await grant(env, card_id, 50, None)
    # Drawn earliest expiring first: 100 (5 days), 100 (30 days), 20 of those that never
    # expire; one credit lot per expiry, expiring with them.
    await redeem(env, card_id, 220)
    credit = ledger.card_credit(card_id, network_id=net)
    assert await lots(env, credit) == [(10_000, 10_000, t + timedelta(days=5)),
                                       (10_000, 10_000, t + timedelta(days=30)),
                                       (2_000, 2_000, None)]
    await grant(env, card_id, 40, t + timedelta(days=6))
    env.clock.advance(days=7)
    # Points past their expiry are not redeemable, even before the sweeper expires them.
    assert await points.redeemable(env.conn, card_id, NET, env.clock()) == 30
    with pytest.raises(RegistryError, match="has 30 points"):
        await redeem(env, card_id, 31)
    await env.sweep()
    assert (await balance(env, credit)).ledger == 12_000  # the 5-day credit went back
    assert (await balance(env, card_points(card_id))).ledger == 30
    await redeem(env, card_id, 30)
    assert (await balance(env, credit)).ledger == 15_000


async def test_earned_points_are_spent_as_credit_at_their_issuer_over_tcp(env):
    await add(env, id="hyper-points", kind="points", rial_per_point=10_000, merchant=HYPER)
    pan, card_id = demo.demo_club_pan(CARD), await env.card_id(CARD)
    async with await env.client("HYPR0001") as hyper:
        bought, prepared = await hyper.purchase(500_000, pan, demo.CARD_EXPIRY)
        assert bought.code is ResponseCode.APPROVED, bought
        await hyper.confirm(prepared, bought.message.rrn)
        done = await redeem(env, card_id, 30, HYPER_ISSUER)  # of the 50 earned
        assert done.rial == 3_000
        async with await env.client("CAFE0001") as cafe:  # the hypermarket's credit only
            elsewhere, _ = await cafe.purchase(
                3_000, pan, demo.CARD_EXPIRY,
                processing_code=ProcessingCode.PURCHASE_STORE_CREDIT)
            assert elsewhere.code is ResponseCode.INSUFFICIENT_FUNDS, elsewhere
        spent, p2 = await hyper.purchase(3_000, pan, demo.CARD_EXPIRY,
                                         processing_code=ProcessingCode.PURCHASE_STORE_CREDIT)
        assert spent.code is ResponseCode.APPROVED, spent
        assert (await hyper.confirm(p2, spent.message.rrn)).code is ResponseCode.APPROVED
    credit = ledger.card_credit(card_id, merchant_id=await merchant_id(env, HYPER))
    assert (await balance(env, credit)).ledger == 0
    assert (await balance(env, card_points(card_id))).ledger == 20


async def test_two_redemptions_of_the_same_points_at_once_spend_them_once(env):
    card_id = await env.card_id(CARD)
    await grant(env, card_id, 100, None)
    other = await asyncpg.connect(env.url)
    try:
        async with other.transaction():  # the first redemption, not committed yet
            first = await points.redeem(other, card_id, 70, NET, request_id=None,
                                        now=env.clock(), max_rial=MAX_RIAL)
            second = asyncio.create_task(redeem(env, card_id, 70))
            await wait_for_lock_waiter(other)  # the second waits for the card's lock
        with pytest.raises(RegistryError, match="has 30 points"):
            await second
    finally:
        await other.close()
    assert first.points == 70
    assert (await balance(env, card_points(card_id))).ledger == 30


@pytest.mark.parametrize("commit", [True, False])
async def test_a_purchase_racing_a_redemption_spends_only_credit_that_exists(env, commit):
    card = 4  # demo member 4: network credit and network points (that never expire)
    card_id, pan = await env.card_id(card), demo.demo_club_pan(card)
    credit = ledger.card_credit(card_id, network_id=await network_id(env))
    had = (await balance(env, credit)).ledger
    pts = (await balance(env, card_points(card_id))).ledger
    assert had > 0 and pts > 0
    other = await asyncpg.connect(env.url)
    try:
        async with await env.client("CAFE0001") as client:
            tx = other.transaction()
            await tx.start()
            await points.redeem(other, card_id, pts, NET, request_id=None, now=env.clock(),
                                max_rial=MAX_RIAL)
            # A purchase of the credit there will be, sent while the redemption holds the lock.
            buying = asyncio.create_task(client.purchase(
                had + pts * VALUE, pan, demo.CARD_EXPIRY,
                processing_code=ProcessingCode.PURCHASE_STORE_CREDIT))
            await wait_for_lock_waiter(env.conn)
            await (tx.commit() if commit else tx.rollback())
            bought, prepared = await buying
            if commit:
                assert bought.code is ResponseCode.APPROVED, bought
                await client.confirm(prepared, bought.message.rrn)
            else:
                assert bought.code is ResponseCode.INSUFFICIENT_FUNDS, bought
    finally:
        await other.close()
    assert (await balance(env, credit)).ledger == (0 if commit else had)
    assert (await balance(env, card_points(card_id))).ledger == (0 if commit else pts)


async def test_redeemed_credit_spent_and_refunded_returns_to_its_lot_with_its_expiry(env):
    """Redemption and 0021's lot draws together: a refund of a purchase paid with redeemed
    credit gives it back to the lot it came from, which keeps the points' expiry."""
    card_id, pan = await env.card_id(CARD), demo.demo_club_pan(CARD)
    t = env.clock()
    await grant(env, card_id, 100, t + timedelta(days=10))
    await redeem(env, card_id, 100)
    credit = ledger.card_credit(card_id, network_id=await network_id(env))
    async with await env.client("CAFE0001") as cafe:
        spent, p1 = await cafe.purchase(6_000, pan, demo.CARD_EXPIRY,
                                        processing_code=ProcessingCode.PURCHASE_STORE_CREDIT)
        await cafe.confirm(p1, spent.message.rrn)
        assert await lots(env, credit) == [(10_000, 4_000, t + timedelta(days=10))]
        back, p2 = await cafe.refund(spent.message.rrn, 6_000, pan, demo.CARD_EXPIRY,
                                     processing_code=ProcessingCode.REFUND_STORE_CREDIT)
        assert back.code is ResponseCode.APPROVED, back
        await cafe.confirm(p2, back.message.rrn)
    assert await lots(env, credit) == [(10_000, 10_000, t + timedelta(days=10))]
