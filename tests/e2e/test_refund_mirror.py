"""A refund gives back its share of every discount the network or a sponsor funded, and of
the budgets the purchase used; a sponsor's points are the sponsor's. Over TCP, with `db
check` after each test (the fixture), including the discount checks named here.

The arithmetic of a share is the clawback's (tests/e2e/test_clawback.py): floored, the
refund that completes the payable owing the rest, so the shares add up to the grant.
"""

from __future__ import annotations

from typing import Any

from protocol.fields import AmountType, ProcessingCode, ResponseCode
from switch import dbcheck, demo, ledger
from tests.e2e.conftest import Env
from tests.e2e.support import (
    balance,
    blocks,
    counts,
    failed_checks,
    net_balances,
    network_id,
)
from tests.e2e.test_clawback import clawbacks
from tests.e2e.test_pricing import NONE, POINTS, add, budget_used
from tests.switch.test_dbcheck import (
    BUDGET_MATCHES,
    CLAWBACK_POSTED,
    DISCOUNT_FUNDING_RETURNED,
)

HYPER, CAFE = "hyper-setareh", "cafe-lale"
BANK_EXPIRY = "3106"
MELLI = ledger.discount_funding(sponsor="melli")


async def funding(env: Env, spec: ledger.AccountSpec = MELLI) -> int:
    """What a funder's discount_funding account holds (debit-normal: what it paid is < 0)."""
    return (await balance(env, spec)).ledger


async def confirmed(client: Any, amount: int, pan: str, expiry: str = demo.CARD_EXPIRY,
                    code: ProcessingCode = ProcessingCode.PURCHASE_CLUB) -> Any:
    response, prepared = await client.purchase(amount, pan, expiry, processing_code=code)
    assert response.code is ResponseCode.APPROVED, response
    assert (await client.confirm(prepared, response.message.rrn)).code is ResponseCode.APPROVED
    return response


async def refunded(client: Any, rrn: str, amount: int, pan: str,
                   expiry: str = demo.CARD_EXPIRY,
                   code: ProcessingCode = ProcessingCode.REFUND_CLUB) -> tuple[Any, Any]:
    response, prepared = await client.refund(rrn, amount, pan, expiry, processing_code=code)
    assert response.code is ResponseCode.APPROVED, response
    assert (await client.confirm(prepared, response.message.rrn)).code is ResponseCode.APPROVED
    return response, prepared


async def test_full_refund_leaves_no_trace_of_any_funder_or_budget(env):
    """Melli's 10 %, the network's 5,000 and the hypermarket's own 5 %, each with a budget:
    the full refund puts every account back where it was (card, merchant, fees, Melli, the
    network) and releases every budget, the merchant's included."""
    await add(env, id="melli-10", kind="percent_discount", priority=30, bp=1_000,
              funder="sponsor:melli", bin_prefixes=[demo.BANK_BIN], budget_rial=1_000_000)
    await add(env, id="net-5k", kind="fixed_discount", priority=20, amount_rial=5_000,
              funder="network", budget_rial=1_000_000)
    await add(env, id="hyper-5", kind="percent_discount", priority=10, bp=500, merchant=HYPER,
              budget_rial=1_000_000)
    network = ledger.discount_funding(network_id=await network_id(env))
    before = await net_balances(env)
    pan = demo.demo_club_pan(0)
    async with await env.client("HYPR0001") as client:
        bought = await confirmed(client, 400_000, pan)
        rrn = bought.message.rrn
        grants = {r["rule_id"]: r["amount"] for r in await env.conn.fetch(
            """SELECT g.rule_id, g.amount FROM txn_grant g JOIN txn x ON x.id = g.txn_id
               WHERE x.rrn = $1""", rrn)}
        assert grants["melli-10"] == 40_000 and grants["net-5k"] == 5_000
        discount = blocks(bought)[(NONE, AmountType.DISCOUNT.value)]
        assert discount == sum(grants.values())
        assert await funding(env) == -40_000 and await funding(env, network) == -5_000
        assert {rule: await budget_used(env, rule) for rule in grants} == grants
        refund, _ = await refunded(client, rrn, 400_000 - discount, pan)
    assert await net_balances(env) == before
    assert {rule: await budget_used(env, rule) for rule in grants} == dict.fromkeys(grants, 0)
    assert sorted(await clawbacks(env, refund.message.rrn)) == sorted(
        ("discount", amount, amount) for amount in grants.values())


async def test_partial_refunds_give_back_exactly_the_grant_and_a_reversal_takes_it_again(env):
    """A network discount of 3,333 on 100,000 (payable 96,667) refunded in three parts:
    floor(3,333 x 40,000 / 96,667) = 1,379, then 2,758 - 1,379 = 1,379, then the rest, 575.
    Reversing the last refund takes its 575 back from the network and reserves it again."""
    await add(env, id="net-3333", kind="fixed_discount", amount_rial=3_333, funder="network",
              budget_rial=100_000)
    network = ledger.discount_funding(network_id=await network_id(env))
    start = await funding(env, network)
    pan = demo.demo_club_pan(1)
    async with await env.client("CAFE0001") as client:
        rrn = (await confirmed(client, 100_000, pan)).message.rrn
        shares = []
        for amount, used in ((40_000, 1_954), (40_000, 575), (16_667, 0)):
            refund, prepared = await refunded(client, rrn, amount, pan)
            shares.append(await clawbacks(env, refund.message.rrn))
            assert await budget_used(env, "net-3333") == used
        assert shares == [[("discount", 1_379, 1_379)], [("discount", 1_379, 1_379)],
                          [("discount", 575, 575)]]
        assert await funding(env, network) == start
        reversed_ = await client.reverse(prepared, refund.message.rrn)
        assert reversed_.code is ResponseCode.APPROVED, reversed_
    assert await funding(env, network) == start - 575
    assert await budget_used(env, "net-3333") == 575


async def test_a_refund_is_not_reversed_once_its_budget_share_is_granted_again(env):
    """The full refund frees the 10,000 of a 10,000 budget and another card's purchase takes
    it: reversing the refund would overrun the budget, so it is declined (51) and changes
    nothing (the database undoes it after the mirror, store._late_decline). Once that
    purchase is reversed, the refund's reversal goes through."""
    await add(env, id="net-10k", kind="fixed_discount", amount_rial=10_000, funder="network",
              budget_rial=10_000)
    async with await env.client("CAFE0001") as client:
        rrn = (await confirmed(client, 50_000, demo.demo_club_pan(1))).message.rrn
        refund, prepared = await refunded(client, rrn, 40_000, demo.demo_club_pan(1))
        assert await budget_used(env, "net-10k") == 0
        other, other_prepared = await client.purchase(50_000, demo.demo_club_pan(2),
                                                      demo.CARD_EXPIRY)
        assert blocks(other)[(NONE, AmountType.DISCOUNT.value)] == 10_000
        before, rows = await net_balances(env), await counts(env)
        declined = await client.reverse(prepared, refund.message.rrn)
        assert declined.code is ResponseCode.INSUFFICIENT_FUNDS
        # The reversal was undone whole: no balance moved, no row written, not even its log.
        assert (await net_balances(env), await counts(env)) == (before, rows)
        assert await budget_used(env, "net-10k") == 10_000
        state = await env.conn.fetchval("SELECT state FROM txn WHERE rrn = $1",
                                        refund.message.rrn)
        assert state == "CONFIRMED"
        assert (await client.reverse(other_prepared, other.message.rrn)).code \
            is ResponseCode.APPROVED
        assert (await client.reverse(prepared, refund.message.rrn)).code \
            is ResponseCode.APPROVED
    assert await budget_used(env, "net-10k") == 10_000


async def test_shaparak_refunds_give_melli_its_share_back(env):
    """A Shaparak purchase of 1,000,000 with Melli's 10 % (payable 900,000): a refund of
    300,000 gives Melli floor(100,000 / 3) = 33,333, the refund of the rest 66,667."""
    await add(env, id="melli-10", kind="percent_discount", bp=1_000, funder="sponsor:melli",
              bin_prefixes=[demo.BANK_BIN])
    pan, code = demo.demo_bank_pan(0), ProcessingCode.PURCHASE_SHAPARAK
    async with await env.client("CAFE0001") as client:
        rrn = (await confirmed(client, 1_000_000, pan, BANK_EXPIRY, code)).message.rrn
        assert await funding(env) == -100_000
        first, _ = await refunded(client, rrn, 300_000, pan, BANK_EXPIRY,
                                  ProcessingCode.REFUND_SHAPARAK)
        assert await clawbacks(env, first.message.rrn) == [("discount", 33_333, 33_333)]
        assert await funding(env) == -66_667
        await refunded(client, rrn, 600_000, pan, BANK_EXPIRY, ProcessingCode.REFUND_SHAPARAK)
    assert await funding(env) == 0


# Each corruption of a discount's clawback (made, then undone), and the checks that name it.
_POSTING = ("UPDATE ledger_entry SET amount = amount {0} sign(amount) WHERE transfer_id IN ("
            "SELECT id FROM ledger_transfer WHERE code = 'discount_clawback')")
_CORRUPTIONS = [
    # The posting alone: it is not what was recorded, and Melli paid 1 rial of a refunded sale.
    ((_POSTING,), {CLAWBACK_POSTED, DISCOUNT_FUNDING_RETURNED}),
    # Posting and record agree, but Melli still paid 1 rial, and the budget released 1 less.
    ((_POSTING, "UPDATE txn_clawback SET due = due {0} 1, taken = taken {0} 1"),
     {DISCOUNT_FUNDING_RETURNED, BUDGET_MATCHES}),
]


async def corrupt(env: Env, statements: tuple[str, ...], op: str) -> set[str]:
    """Apply `statements` with `op` past the triggers; the checks that fail then."""
    async with env.conn.transaction():
        await env.conn.execute("SET LOCAL session_replication_role = replica")
        for sql in statements:
            await env.conn.execute(sql.format(op))
    return await failed_checks(env)


async def test_db_check_proves_a_refunded_discount_went_back_to_its_funder(env):
    await add(env, id="melli-10", kind="percent_discount", bp=1_000, funder="sponsor:melli",
              bin_prefixes=[demo.BANK_BIN], budget_rial=1_000_000)
    pan = demo.demo_club_pan(0)
    async with await env.client("HYPR0001") as client:
        rrn = (await confirmed(client, 400_000, pan)).message.rrn
        await refunded(client, rrn, 360_000, pan)
    outcomes = {o.check.name: o for o in await dbcheck.run_checks(env.conn)}
    checked = {DISCOUNT_FUNDING_RETURNED, BUDGET_MATCHES, CLAWBACK_POSTED}
    assert all(outcomes[name].ok and outcomes[name].examined > 0 for name in checked)
    for statements, names in _CORRUPTIONS:
        assert await corrupt(env, statements, "-") == names
        assert await corrupt(env, statements, "+") == set()


# points_issued accounts with no owner in their key (where sponsor points used to go).
_OWNERLESS_POINTS = ("SELECT count(*) FROM ledger_account WHERE kind = 'points_issued' "
                     "AND network_id IS NULL AND merchant_id IS NULL AND sponsor IS NULL")


async def test_sponsor_points_are_the_sponsors_taken_back_and_expired_to_it(env):
    """Melli's point per 1,000 rials is posted from Melli's own points_issued account; a
    partial refund takes its share back there, and what is left expires back there too."""
    await add(env, id="melli-pts", kind="points", rial_per_point=1_000, funder="sponsor:melli")
    melli = ledger.points_issued(sponsor="melli")
    card = ledger.card_points(await env.card_id(0))
    anonymous = await env.conn.fetchval(_OWNERLESS_POINTS)
    start = (await balance(env, card)).ledger
    pan = demo.demo_club_pan(0)
    async with await env.client("HYPR0001") as client:
        bought = await confirmed(client, 100_000, pan)
        assert blocks(bought)[(POINTS, AmountType.POINTS_EARNED.value)] == 100
        row = await env.conn.fetchrow("SELECT unit, sponsor FROM ledger_account WHERE key = $1",
                                      melli.key)
        assert tuple(row) == ("PTS", "melli")
        assert (await balance(env, melli)).ledger == -100
        await refunded(client, bought.message.rrn, 25_000, pan)
    assert (await balance(env, melli)).ledger == -75
    assert (await balance(env, card)).ledger == start + 75
    env.clock.advance(days=env.settings.points_expiry_days + 1)
    await env.sweep()
    assert (await balance(env, melli)).ledger == 0
    assert (await balance(env, card)).ledger == start
    assert await env.conn.fetchval(_OWNERLESS_POINTS) == anonymous


async def test_a_refund_gives_a_points_budget_the_points_it_took_back(env):
    """A points budget counts points: half the purchase refunded takes back 5 of its 10
    points, and the budget has them again."""
    await add(env, id="pts-15", kind="points", rial_per_point=10_000, budget_points=15,
              merchant=HYPER)
    pan = demo.demo_club_pan(9)
    async with await env.client("HYPR0002") as client:
        bought = await confirmed(client, 100_000, pan)
        assert await budget_used(env, "pts-15") == 10
        refund, _ = await refunded(client, bought.message.rrn, 50_000, pan)
    assert await clawbacks(env, refund.message.rrn) == [("points", 5, 5)]
    assert await budget_used(env, "pts-15") == 5
