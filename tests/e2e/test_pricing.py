"""Campaign pricing end to end: purchases over TCP priced by the engine on the basis the
database confirms, budgets reserved under concurrency, the ledger after confirm, releases on
reversal and expiry, and store-credit lots (spent earliest-expiring first, expired by the
sweeper under an injected clock). `db check` runs after each test (the fixture).

The demo's own campaigns are paused in the e2e template (tests/e2e/conftest.py); each test
stores the campaigns it prices with, as the admin does (switch/campaign_store.py).
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from protocol.fields import AccountType, AmountType, ProcessingCode, ResponseCode
from protocol.values import AdditionalData
from switch import cli_pricing, dbcheck, demo, keys, ledger
from switch.campaign_file import parse_campaigns
from switch.campaign_pricing import TEHRAN
from switch.campaign_store import store_campaigns
from tests.e2e.conftest import Env
from tests.e2e.support import (
    balance,
    blocks,
    failed_checks,
    lock_waiters,
    merchant_id,
    net_balances,
    network_id,
    write_past_triggers,
)
from tests.switch.test_dbcheck import (
    BUDGET_MATCHES,
    DAILY_MATCHES,
    GRANTS_MATCH,
    LOT_DRAWS_MATCH,
    LOTS_MATCH,
    PRICING_CHECKS,
)

NONE, CREDIT, POINTS = AccountType.NONE.value, AccountType.STORE_CREDIT.value, \
    AccountType.POINTS.value
HYPER, CAFE = "hyper-setareh", "cafe-lale"


async def add(env: Env, **spec: Any) -> None:
    """Store an active campaign of the demo network, validated as a campaign file is."""
    await store_campaigns(env.conn, parse_campaigns(
        {"campaign": [{"network": demo.NETWORK_CODE, **spec}]}, "test"))


async def budget_used(env: Env, rule_id: str) -> int:
    used: int = await env.conn.fetchval(
        "SELECT budget_used_rial + budget_used_units FROM campaign WHERE id = $1", rule_id)
    return used


async def lots(env: Env, spec: ledger.AccountSpec) -> list[tuple[int, int, Any]]:
    rows = await env.conn.fetch(
        """SELECT l.amount, l.remaining, l.expires_at FROM ledger_lot l
           JOIN ledger_account a ON a.id = l.account_id WHERE a.key = $1 ORDER BY l.id""",
        spec.key)
    return [(r[0], r[1], r[2]) for r in rows]


STACKED: list[dict[str, Any]] = [
    # Melli funds 10 % for its cards (here the member's linked card), the hypermarket its own
    # 5 %, the network 2 % cashback for 30 days and a point per 10,000 rials, doubled for
    # groceries (5411).
    {"id": "melli-10", "kind": "percent_discount", "priority": 30, "bp": 1_000,
     "funder": "sponsor:melli", "bin_prefixes": [demo.BANK_BIN]},
    {"id": "hyper-5", "kind": "percent_discount", "priority": 20, "bp": 500, "merchant": HYPER},
    {"id": "net-cashback", "kind": "cashback", "priority": 10, "bp": 200, "expiry_days": 30,
     "funder": "network"},
    {"id": "net-points", "kind": "points", "rial_per_point": 10_000, "funder": "network",
     "multipliers": [{"category": "5411", "bp": 20_000}]},
]


async def test_stacked_purchase_priced_and_posted_to_each_funder(env):
    for spec in STACKED:
        await add(env, **spec)
    card_id = await env.card_id(0)  # member 0 has a linked Melli card
    hyper, net = await merchant_id(env, HYPER), await network_id(env)
    before = await net_balances(env)
    # The admin's quote of the same purchase: the same figures, nothing changed.
    store = keys.load(env.key_file)
    purchase = cli_pricing.Purchase(
        terminal="HYPR0001", pan_hash=store.pan_hash(demo.demo_club_pan(0)), bank_bin=None,
        code=ProcessingCode.PURCHASE_CLUB, amount=400_000, now=env.clock(),
        categories=("5411",))
    quoted = await cli_pricing.price_quote(env.conn, env.settings, purchase)
    assert not isinstance(quoted, str)
    assert await net_balances(env) == before
    quote, breakdown = quoted
    assert (quote.discount, quote.payable, quote.network_fee, quote.cashback, quote.points) \
        == (58_000, 342_000, 3_236, 6_840, 68)
    assert breakdown is not None
    assert breakdown["fired"] == ["melli-10", "hyper-5", "net-cashback", "net-points"]
    client = await env.client("HYPR0001")
    async with client:
        response, prepared = await client.purchase(
            400_000, demo.demo_club_pan(0), demo.CARD_EXPIRY,
            additional_data=AdditionalData(item_categories=("5411",)))
        assert response.code is ResponseCode.APPROVED, response
        # 10 % of 400,000 = 40,000 (Melli); 5 % of 360,000 = 18,000 (merchant); payable
        # 342,000; fee 0.8 % + 500 = 3,236; cashback 2 % = 6,840; points 342,000 / 10,000
        # doubled = 68.4, rounded down to 68.
        assert blocks(response) == {
            (NONE, AmountType.DISCOUNT.value): 58_000, (NONE, AmountType.PAYABLE.value): 342_000,
            (NONE, AmountType.NETWORK_FEE.value): 3_236,
            (CREDIT, AmountType.CASHBACK.value): 6_840,
            (POINTS, AmountType.POINTS_EARNED.value): 68,
            ("91", AmountType.LEDGER_BALANCE.value): before[ledger.card_rial(card_id).key][0],
            ("91", AmountType.AVAILABLE_BALANCE.value):
                before[ledger.card_rial(card_id).key][0] - 342_000}
        confirmed = await client.confirm(prepared, response.message.rrn)
        assert confirmed.code is ResponseCode.APPROVED
    after = await net_balances(env)

    def moved(spec: ledger.AccountSpec) -> int:
        return after.get(spec.key, (0,))[0] - before.get(spec.key, (0,))[0]

    assert moved(ledger.card_rial(card_id)) == -342_000
    # The merchant: what the card paid, less the fee, plus the part Melli funds.
    assert moved(ledger.merchant_payable(hyper)) == 342_000 - 3_236 + 40_000
    assert moved(ledger.AccountSpec(ledger.Kind.DISCOUNT_FUNDING, sponsor="melli")) == -40_000
    assert moved(ledger.fee_income(net)) == 3_236
    assert moved(ledger.card_credit(card_id, network_id=net)) == 6_840
    assert moved(ledger.credit_issued(network_id=net)) == -6_840
    assert moved(ledger.card_points(card_id)) == 68
    assert moved(ledger.points_issued(net)) == -68
    grants = await env.conn.fetch(
        """SELECT rule_id, effect, funder_kind, sponsor, amount FROM txn_grant g
           JOIN txn x ON x.id = g.txn_id WHERE x.rrn = $1 ORDER BY seq""",
        response.message.rrn)
    assert [tuple(g) for g in grants] == [
        ("melli-10", "discount", "sponsor", "melli", 40_000),
        ("hyper-5", "discount", "merchant", None, 18_000),
        ("net-cashback", "cashback", "network", None, 6_840),
        ("net-points", "points", "network", None, 68)]
    credit_lots = await lots(env, ledger.card_credit(card_id, network_id=net))
    expiry = env.clock.now.astimezone(TEHRAN).replace(microsecond=0) + timedelta(days=30)
    assert credit_lots[-1][:2] == (6_840, 6_840)
    assert credit_lots[-1][2] == expiry
    # The cardholder's history shows what this purchase earned, and why.
    rows = await env.conn.fetch(cli_pricing.HISTORY_SQL, card_id)
    earned = [line for line in cli_pricing.history_lines([dict(r) for r in rows])
              if response.message.rrn in line]
    fired = "melli-10, hyper-5, net-cashback, net-points"
    assert len(earned) == 2
    assert "cashback" in earned[0] and "+6,840" in earned[0] and fired in earned[0]
    assert "points" in earned[1] and "+68" in earned[1] and "Setareh Hypermarket" in earned[1]


async def test_budget_runs_out_mid_stream_exactly(env):
    """18 purchases on all six terminals at once against a network discount of 10,000
    rials with 55,000 of budget: exactly 55,000 is granted (five whole grants and one of
    5,000); the rest are priced without it and still approved."""
    await add(env, id="net-10k", kind="fixed_discount", amount_rial=10_000, budget_rial=55_000,
              funder="network")
    tids = sorted(env.ik_ids)
    clients = [await env.client(tid) for tid in tids]

    async def shop(n: int, client: Any) -> tuple[int, Any, Any]:
        card = 1 + n  # a different card each: no card's daily amounts or lock in the way
        response, prepared = await client.purchase(60_000, demo.demo_club_pan(card),
                                                   demo.CARD_EXPIRY)
        assert response.code is ResponseCode.APPROVED, response
        return blocks(response)[(NONE, AmountType.DISCOUNT.value)], prepared, response

    results = await asyncio.gather(*(shop(n, clients[n % len(clients)]) for n in range(18)))
    discounts = sorted(d for d, _, _ in results)
    assert sum(discounts) == 55_000
    assert [d for d in discounts if d] == [5_000] + [10_000] * 5
    assert await budget_used(env, "net-10k") == 55_000
    # Confirming keeps the grants; reversing one gives its part of the budget back.
    for n, (_, prepared, response) in enumerate(results):
        assert (await clients[n % len(clients)].confirm(
            prepared, response.message.rrn)).code is ResponseCode.APPROVED
    assert await budget_used(env, "net-10k") == 55_000
    n, (_, prepared, response) = next(
        (n, r) for n, r in enumerate(results) if r[0] == 10_000)
    reversed_ = await clients[n % len(clients)].reverse(prepared, response.message.rrn)
    assert reversed_.code is ResponseCode.APPROVED
    assert await budget_used(env, "net-10k") == 45_000
    for client in clients:
        await client.close()


async def test_a_budget_taken_while_a_purchase_waits_for_its_row_prices_it_again(env):
    """The campaign row is locked last (migration 0027): the purchase passes the early
    check on 15,000 left, writes its hold and transaction, then waits for the row, which a
    stand-in for another purchase holds while it takes 10,000. Once that commits, the
    purchase's 10,000 no longer fits: its first attempt is undone, and it is priced again
    on the 5,000 left."""
    await add(env, id="net-10k", kind="fixed_discount", amount_rial=10_000, budget_rial=15_000,
              funder="network")
    before = await env.count("txn")
    async with await env.client("CAFE0001") as client:
        async with env.conn.transaction():
            await env.conn.execute(
                "UPDATE campaign SET budget_used_rial = 10_000 WHERE id = 'net-10k'")
            purchase = asyncio.create_task(
                client.purchase(60_000, demo.demo_club_pan(4), demo.CARD_EXPIRY))
            while await lock_waiters(env) < 1:  # written, and waiting for the row
                assert not purchase.done(), purchase.result()
            assert await env.conn.fetchval(
                """SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)
                   WHERE a.datname = current_database() AND a.wait_event_type = 'Lock'
                     AND l.relation = 'txn'::regclass AND l.mode = 'RowExclusiveLock'
                """) == 1, "the waiting purchase has written its transaction row"
        response, _ = await purchase
    assert response.code is ResponseCode.APPROVED
    assert blocks(response)[(NONE, AmountType.DISCOUNT.value)] == 5_000
    assert await budget_used(env, "net-10k") == 15_000
    assert await env.count("txn") == before + 1, "nothing of the first attempt remains"
    # The stand-in reserved nothing: give its 10,000 back, so that db check's budgets match.
    await env.conn.execute(
        "UPDATE campaign SET budget_used_rial = budget_used_rial - 10_000 WHERE id = 'net-10k'")


async def test_reversal_and_expiry_release_every_reservation(env):
    await add(env, id="cafe-20", kind="percent_discount", bp=2_000, budget_rial=1_000_000,
              daily_limit_rial=15_000, merchant=CAFE)
    await add(env, id="cafe-back", kind="cashback", bp=500, expiry_days=7, merchant=CAFE)
    before = await net_balances(env)
    client = await env.client("CAFE0001")
    async with client:
        pan = demo.demo_club_pan(2)
        first, p1 = await client.purchase(50_000, pan, demo.CARD_EXPIRY)
        assert blocks(first)[(NONE, AmountType.DISCOUNT.value)] == 10_000
        second, p2 = await client.purchase(50_000, pan, demo.CARD_EXPIRY)
        # The card's daily limit leaves 5,000 of the second discount.
        assert blocks(second)[(NONE, AmountType.DISCOUNT.value)] == 5_000
        assert await budget_used(env, "cafe-20") == 15_000
        assert (await client.reverse(p2, second.message.rrn)).code is ResponseCode.APPROVED
        assert await budget_used(env, "cafe-20") == 10_000
        confirmed = await client.confirm(p1, first.message.rrn)
        assert confirmed.code is ResponseCode.APPROVED
        assert (await client.reverse(p1, first.message.rrn)).code is ResponseCode.APPROVED
        assert await budget_used(env, "cafe-20") == 0
        granted = await env.conn.fetchval("SELECT coalesce(sum(granted), 0) FROM card_rule_day")
        assert granted == 0
        # A purchase whose hold expires gives its reservation back too.
        third, _ = await client.purchase(50_000, pan, demo.CARD_EXPIRY)
        assert blocks(third)[(NONE, AmountType.DISCOUNT.value)] == 10_000
        env.clock.advance(seconds=env.settings.hold_timeout_s + 1)
        assert await env.sweep() == 1
    assert await budget_used(env, "cafe-20") == 0
    # Nothing of the pricing remains: every balance is as before (the reversal mirrored
    # the cashback and took its lot back).
    assert await net_balances(env) == before
    card_id = await env.card_id(2)
    cafe = await merchant_id(env, CAFE)
    assert [lot[1] for lot in await lots(env, ledger.card_credit(card_id, merchant_id=cafe))
            if lot[2] is not None] == [0]


async def test_cashback_lot_spent_first_then_expired_by_the_sweeper(env):
    """Card 4 holds network credit that never expires; it earns network cashback that
    expires in 2 days. A partial credit purchase spends the cashback lot first; what is
    left of it expires two days later, back to the issuer, at the sweeper's next run."""
    await add(env, id="net-back", kind="cashback", bp=1_000, expiry_days=2, funder="network")
    card_id, net = await env.card_id(4), await network_id(env)
    credit = ledger.card_credit(card_id, network_id=net)
    [(old_amount, _, never)] = await lots(env, credit)
    assert never is None
    client = await env.client("BARB0001")
    async with client:
        pan = demo.demo_club_pan(4)
        response, prepared = await client.purchase(100_000, pan, demo.CARD_EXPIRY)
        assert blocks(response)[(CREDIT, AmountType.CASHBACK.value)] == 10_000
        await client.confirm(prepared, response.message.rrn)
        spend, p2 = await client.purchase(4_000, pan, demo.CARD_EXPIRY,
                                          processing_code=ProcessingCode.PURCHASE_STORE_CREDIT)
        assert spend.code is ResponseCode.APPROVED, spend
        await client.confirm(p2, spend.message.rrn)
    assert [lot[:2] for lot in await lots(env, credit)] == [(old_amount, old_amount),
                                                            (10_000, 6_000)]
    issued_before = (await balance(env, ledger.credit_issued(network_id=net))).ledger
    env.clock.advance(days=1)
    await env.sweep()
    assert [lot[1] for lot in await lots(env, credit)] == [old_amount, 6_000]
    env.clock.advance(days=1, seconds=1)
    await env.sweep()
    assert [lot[1] for lot in await lots(env, credit)] == [old_amount, 0]
    assert (await balance(env, credit)).ledger == old_amount
    assert (await balance(env, ledger.credit_issued(network_id=net))).ledger \
        == issued_before + 6_000


# Each corruption (one less) of what pricing wrote, and the checks that name it (a lot's
# remainder no longer matches its account's balance nor its draws).
_CORRUPTIONS = [
    ("UPDATE ledger_lot SET remaining = remaining {} 1 WHERE id = (SELECT max(id) FROM ledger_lot)",
     {LOTS_MATCH, LOT_DRAWS_MATCH}),
    ("UPDATE campaign SET budget_used_rial = budget_used_rial {} 1 WHERE id = 'cafe-20'",
     {BUDGET_MATCHES}),
    ("UPDATE card_rule_day SET granted = granted {} 1", {DAILY_MATCHES}),
    ("UPDATE txn_grant SET amount = amount {} 1 WHERE effect = 'discount'", {GRANTS_MATCH}),
]


async def test_db_check_proves_the_pricing_invariants(env):
    await add(env, id="cafe-20", kind="percent_discount", bp=2_000, budget_rial=1_000_000,
              daily_limit_rial=15_000, merchant=CAFE)
    await add(env, id="cafe-back", kind="cashback", bp=500, expiry_days=7, merchant=CAFE)
    client = await env.client("CAFE0001")
    async with client:
        response, prepared = await client.purchase(50_000, demo.demo_club_pan(2),
                                                   demo.CARD_EXPIRY)
        await client.confirm(prepared, response.message.rrn)
    outcomes = {o.check.name: o for o in await dbcheck.run_checks(env.conn)}
    assert all(outcomes[name].ok and outcomes[name].examined > 0 for name in PRICING_CHECKS)
    for sql, names in _CORRUPTIONS:
        await write_past_triggers(env, sql.format("-"))
        assert await failed_checks(env) == names
        await write_past_triggers(env, sql.format("+"))


async def test_points_budget_runs_out_exactly(env):
    """Points budgets are counted in points: 15 in all, so 10 then the 5 left, then none."""
    await add(env, id="pts-15", kind="points", rial_per_point=10_000, budget_points=15,
              merchant=HYPER)
    client = await env.client("HYPR0002")
    async with client:
        for amount, points in ((100_000, 10), (100_000, 5), (100_000, 0)):
            response, _ = await client.purchase(amount, demo.demo_club_pan(9), demo.CARD_EXPIRY)
            assert blocks(response).get((POINTS, AmountType.POINTS_EARNED.value), 0) == points
    assert await budget_used(env, "pts-15") == 15


async def test_a_basis_that_never_settles_is_answered_91_after_four_pricings(env):
    """Every call here sees the campaign at a new version (a stand-in for a basis changing
    under load): the first call and four more pricings, then 91, nothing written."""
    await add(env, id="cafe-5", kind="percent_discount", bp=500, merchant=CAFE)
    await env.conn.execute("CREATE SEQUENCE test_versions")
    await env.conn.execute(
        """CREATE OR REPLACE FUNCTION switch_campaigns(t switch_terminal) RETURNS jsonb
           LANGUAGE sql AS $$
               SELECT jsonb_build_array(jsonb_build_array('cafe-5', nextval('test_versions')))
           $$""")
    before = await env.count("txn")
    client = await env.client("CAFE0001")
    async with client:
        response, _ = await client.purchase(10_000, demo.demo_club_pan(11), demo.CARD_EXPIRY)
    assert response.code is ResponseCode.SWITCH_UNAVAILABLE
    assert await env.conn.fetchval("SELECT last_value FROM test_versions") == 5
    assert await env.count("txn") == before


async def test_a_budget_taken_before_every_pricing_ends_approved_without_its_grant(env):
    """A stand-in for other purchases takes 500 of a 5,000 budget each time the database
    reads the remainders, so each clipped grant (4,500, 3,500, 2,500, 1,500) no longer fits
    when checked. The last of the four pricings takes the budget as spent: the purchase is
    approved without the discount instead of 91, and reserves nothing."""
    await add(env, id="net-10k", kind="fixed_discount", amount_rial=10_000, budget_rial=5_000,
              funder="network")
    await env.conn.execute(
        """CREATE OR REPLACE FUNCTION switch_remaining(p_campaigns jsonb) RETURNS jsonb
           LANGUAGE plpgsql AS $$
           BEGIN
               UPDATE campaign SET budget_used_rial = least(budget_used_rial + 500, budget_rial)
               WHERE id = 'net-10k';
               RETURN (SELECT jsonb_object_agg(k.id, campaign_budget_left(k)) FROM campaign k
                       WHERE k.id = 'net-10k');
           END $$""")
    async with await env.client("CAFE0001") as client:
        response, _ = await client.purchase(60_000, demo.demo_club_pan(13), demo.CARD_EXPIRY)
    assert response.code is ResponseCode.APPROVED
    assert blocks(response)[(NONE, AmountType.DISCOUNT.value)] == 0
    assert await budget_used(env, "net-10k") == 4_000, "five calls read it; each took 500"
    assert await env.conn.fetchval(
        "SELECT count(*) FROM txn_reservation v JOIN txn x ON x.id = v.txn_id "
        "WHERE x.rrn = $1", response.message.rrn) == 0
    # The stand-in reserved nothing: give its 4,000 back, so that db check's budgets match.
    await env.conn.execute("UPDATE campaign SET budget_used_rial = 0 WHERE id = 'net-10k'")


async def test_a_budget_taken_after_every_early_check_is_not_a_database_retry(env):
    """A stand-in for 0027's re-check finding the budget taken every time (40001 whenever
    the call reserves budget): each 40001 counts as a pricing, not one of the three database
    retries, and the last pricing takes the budget as spent, so the purchase is approved
    without the discount rather than 91."""
    await add(env, id="net-10k", kind="fixed_discount", amount_rial=10_000, budget_rial=50_000,
              funder="network")
    await env.conn.execute(
        """CREATE OR REPLACE FUNCTION switch_take_budgets(p switch_auth, p_txn bigint)
           RETURNS void LANGUAGE plpgsql AS $$
           BEGIN
               IF EXISTS (SELECT 1 FROM txn_reservation WHERE txn_id = p_txn AND budget) THEN
                   RAISE EXCEPTION 'taken meanwhile' USING ERRCODE = 'serialization_failure';
               END IF;
           END $$""")
    before = await env.count("txn")
    async with await env.client("CAFE0001") as client:
        response, _ = await client.purchase(60_000, demo.demo_club_pan(14), demo.CARD_EXPIRY)
    assert response.code is ResponseCode.APPROVED
    assert blocks(response)[(NONE, AmountType.DISCOUNT.value)] == 0
    assert await budget_used(env, "net-10k") == 0
    assert await env.count("txn") == before + 1, "nothing of the undone attempts remains"
