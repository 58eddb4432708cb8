"""Settlement of what the real switch posted: purchases, a top-up and a refund made over TCP
by demo terminals, then a window; the positions must be what the transactions' quotes say,
and a settled purchase can no longer be reversed (12)."""

from __future__ import annotations

from datetime import timedelta

from protocol.fields import ProcessingCode, ResponseCode
from settlement import runner
from switch import demo, ledger
from tests.e2e.conftest import Env, demo_template, env  # noqa: F401 - fixtures
from tests.e2e.test_lifecycle import EXP, approved
from tests.e2e.test_pricing import add

club = demo.demo_club_pan
PC = ProcessingCode
RC = ResponseCode


async def _payable(e: Env, code: str) -> int:
    merchant = await e.conn.fetchval("SELECT id FROM merchant WHERE code = $1", code)
    account = await ledger.account_id(e.conn, ledger.merchant_payable(merchant))
    return (await ledger.balance(e.conn, account)).ledger


async def test_what_the_switch_posted_is_settled(env: Env) -> None:  # noqa: F811 - fixture
    async with await env.client("CAFE0001") as cafe:
        rrn, purchase = await approved(cafe, 100_000, club(1))
        assert (await cafe.confirm(purchase, rrn)).code is RC.APPROVED
        topup_rrn, topup = await approved(cafe, 30_000, club(2), pc=PC.TOP_UP_CLUB)
        assert (await cafe.confirm(topup, topup_rrn)).code is RC.APPROVED
        response, refund = await cafe.refund(rrn, 20_000, club(1), EXP)
        assert response.code is RC.APPROVED and response.message.rrn
        assert (await cafe.confirm(refund, response.message.rrn)).code is RC.APPROVED
        async with await env.client("HYPR0001") as hyper:
            hyper_rrn, hyper_buy = await approved(hyper, 250_000, club(3))
            assert (await hyper.confirm(hyper_buy, hyper_rrn)).code is RC.APPROVED
        owed = {code: await _payable(env, code) for code in ("cafe-lale", "hyper-setareh")}
        quotes = {r["rrn"]: r for r in await env.conn.fetch(
            """SELECT rrn, (quote->>'payable')::bigint AS payable,
                      (quote->>'network_fee')::bigint AS fee FROM txn""")}
        cutoff = env.clock.now + timedelta(seconds=1)
        summary = await runner.run(env.conn, env.settings, cutoff + timedelta(minutes=1),
                                   cutoff_at=cutoff)
        assert summary.txn_count == 4
        rows = {r["code"]: r for r in await env.conn.fetch(
            """SELECT m.code, p.* FROM settlement_position p JOIN merchant m ON m.id = p.merchant_id
               WHERE p.window_id = $1""", summary.window_id)}
        cafe_row, hyper_row = rows["cafe-lale"], rows["hyper-setareh"]
        assert cafe_row["sales_rial"] == quotes[rrn]["payable"]
        assert cafe_row["refunds_rial"] == -20_000
        assert cafe_row["topups_rial"] == -30_000
        # The purchase's fee, less the part of it the refund gave back.
        assert cafe_row["fees_rial"] == -quotes[rrn]["fee"] + quotes[response.message.rrn]["fee"]
        assert hyper_row["sales_rial"] == quotes[hyper_rrn]["payable"]
        assert hyper_row["fees_rial"] == -quotes[hyper_rrn]["fee"]
        # What the ledger owed each merchant is what was paid or carried, and nothing is left.
        for code, row in rows.items():
            assert row["net_rial"] == owed[code]
            assert await _payable(env, code) == row["carried_forward_rial"]
        # The terminal's reversal of the settled purchase: refused, the merchant refunds.
        assert (await cafe.reverse(purchase, rrn)).code is RC.INVALID_TRANSACTION


async def test_a_refunded_sponsor_discount_is_settled_back(env: Env) -> None:  # noqa: F811
    """Melli funds 10 % of a 400,000 purchase: the first window pays the hypermarket the
    40,000 as a discount; the full refund falls in the second window, which takes the
    40,000 back under discounts (not 'other'), so the two windows net to nothing."""
    await add(env, id="melli-10", kind="percent_discount", bp=1_000, funder="sponsor:melli",
              bin_prefixes=[demo.BANK_BIN])
    windows = []
    async with await env.client("HYPR0001") as hyper:
        rrn, purchase = await approved(hyper, 400_000, club(0))
        assert (await hyper.confirm(purchase, rrn)).code is RC.APPROVED
        for step in ("purchase", "refund"):
            if step == "refund":
                response, refund = await hyper.refund(rrn, 360_000, club(0), EXP)
                assert response.code is RC.APPROVED
                assert (await hyper.confirm(refund, response.message.rrn or "")).code \
                    is RC.APPROVED
            env.clock.advance(seconds=1)
            cutoff = env.clock.now
            summary = await runner.run(env.conn, env.settings, cutoff + timedelta(minutes=1),
                                       cutoff_at=cutoff)
            row = await env.conn.fetchrow(
                """SELECT p.* FROM settlement_position p JOIN merchant m ON m.id = p.merchant_id
                   WHERE p.window_id = $1 AND m.code = 'hyper-setareh'""", summary.window_id)
            assert row is not None
            windows.append(row)
    paid, taken = windows
    assert (paid["sales_rial"], paid["discounts_rial"]) == (360_000, 40_000)
    assert (taken["refunds_rial"], taken["discounts_rial"], taken["other_rial"]) \
        == (-360_000, -40_000, 0)
    assert paid["fees_rial"] + taken["fees_rial"] == 0
    assert paid["payout_rial"] == paid["net_rial"] > 0
    assert taken["net_rial"] == taken["carried_forward_rial"] == -paid["payout_rial"]
    assert await _payable(env, "hyper-setareh") == taken["carried_forward_rial"]
