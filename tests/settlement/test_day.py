"""A hand-computed day of a café, a hypermarket and a barber in one store network, settled
in two windows. Every expected rial below is worked out by hand in the comments."""

from __future__ import annotations

from datetime import timedelta

import asyncpg

from settlement import metrics, runner, windows
from switch import ledger
from switch.config import Settings
from tests.settlement.support import Book, make_network, tehran

SETTINGS = Settings()
# Tuesday 1405/09/03 (2026-11-24), cut-offs at 14:00 Tehran, then Wednesday's 14:00.
CUTOFF_1 = tehran(2026, 11, 24, 14)
CUTOFF_2 = tehran(2026, 11, 25, 14)


async def _positions(conn: asyncpg.Connection, window_id: int) -> dict[str, tuple[int, ...]]:
    rows = await conn.fetch(
        """SELECT m.code, p.sales_rial, p.refunds_rial, p.fees_rial, p.discounts_rial,
                  p.topups_rial, p.credit_netting_rial, p.brought_forward_rial, p.net_rial,
                  p.payout_rial, p.carried_forward_rial
           FROM settlement_position p JOIN merchant m ON m.id = p.merchant_id
           WHERE p.window_id = $1""", window_id)
    return {r["code"]: tuple(r)[1:] for r in rows}


async def _payable(conn: asyncpg.Connection, merchant: int) -> int:
    """What the network owes the merchant, from the ledger (credit-normal)."""
    account = await ledger.account_id(conn, ledger.merchant_payable(merchant))
    return (await ledger.balance(conn, account)).ledger


async def record_day(conn: asyncpg.Connection) -> Book:
    net = await make_network(conn)
    book = Book(conn, net)
    cafe, hyper, barber = net.cafe, net.hyper, net.barber
    # Café: a plain sale (fee 1.5 % of 250,000 = 3,750); a sale with a network-funded
    # discount of 12,000 on 120,000 (the card pays 108,000, fee 1,620); 500,000 cash
    # collected for a top-up; a bank-card sale of 400,000 (its money moves at the bank)
    # with fee 6,000 and a 40,000 discount funded by a sponsor bank.
    await book.club_purchase(cafe, 250_000, 3_750, tehran(2026, 11, 24, 8, 30))
    await book.club_purchase(cafe, 108_000, 1_620, tehran(2026, 11, 24, 9), discount=12_000)
    await book.topup(cafe, 500_000, tehran(2026, 11, 24, 9, 15))
    await book.bank_purchase(cafe, 400_000, 6_000, tehran(2026, 11, 24, 9, 30),
                             discount=40_000, sponsor="bank-melli")
    # Hypermarket: 2,000,000 (fee 16,000), of which 300,000 is refunded (its fee share
    # 2,400 comes back); 150,000 paid with network credit (fee 1,200) and 50,000 with
    # credit the café issued (fee 400).
    sale = await book.club_purchase(hyper, 2_000_000, 16_000, tehran(2026, 11, 24, 10))
    await book.refund(sale, 300_000, 2_400, tehran(2026, 11, 24, 11))
    await book.grant_credit(150_000)
    await book.grant_credit(50_000, issuer_merchant=cafe)
    await book.credit_purchase(hyper, 150_000, 1_200, tehran(2026, 11, 24, 12))
    await book.credit_purchase(hyper, 50_000, 400, tehran(2026, 11, 24, 12, 30),
                               issuer_merchant=cafe)
    # Barber: 800,000 (fixed fee 2,000); a second cut after the cut-off (next window).
    await book.club_purchase(barber, 800_000, 2_000, tehran(2026, 11, 24, 13))
    await book.club_purchase(barber, 90_000, 2_000, tehran(2026, 11, 24, 14, 30))
    return book


async def test_a_day_of_three_shops(conn: asyncpg.Connection) -> None:
    book = await record_day(conn)
    net = book.net
    now = CUTOFF_1 + timedelta(minutes=5)
    first = await runner.run(conn, SETTINGS, now, cutoff_at=CUTOFF_1)
    # 9 transactions before the cut-off: 4 at the café, 4 at the hypermarket, 1 barber (the
    # barber's 14:30 cut is after it).
    assert (first.state, first.txn_count) == ("SETTLED", 9)
    got = await _positions(conn, first.window_id)
    # Columns: sales, refunds, fees, discounts, top-ups, netting, b/f, net, paid, carried.
    # café: 250,000+108,000; fees 3,750+1,620+6,000; discounts 12,000+40,000; owes
    # 50,000 for its credit spent at the hypermarket:
    # 358,000 - 11,370 + 52,000 - 500,000 - 50,000 = -151,370, carried forward.
    assert got["cafe"] == (358_000, 0, -11_370, 52_000, -500_000, -50_000, 0,
                           -151_370, 0, -151_370)
    # hypermarket: 2,000,000 - 300,000 - (16,000 - 2,400 + 1,200 + 400) + 200,000 of credit
    # accepted (150,000 from the network, 50,000 from the café) = 1,884,800.
    assert got["hyper"] == (2_000_000, -300_000, -15_200, 0, 0, 200_000, 0,
                            1_884_800, 1_884_800, 0)
    # barber: 800,000 - 2,000.
    assert got["barber"] == (800_000, 0, -2_000, 0, 0, 0, 0, 798_000, 798_000, 0)
    assert (first.payout_count, first.payout_rial, first.carried_forward_rial) == (
        2, 2_682_800, -151_370)
    # Netting: the network owes the hypermarket 150,000, the café 50,000: two transfers.
    moves = await conn.fetch(
        """SELECT from_merchant_id, to_merchant_id, amount_rial FROM settlement_credit_transfer
           WHERE window_id = $1 ORDER BY seq""", first.window_id)
    assert [tuple(m) for m in moves] == [(None, net.hyper, 150_000), (net.cafe, net.hyper, 50_000)]
    # The ledger says what the reports say: the café's payable is its carried debt, the
    # others' are settled; the barber's late cut is still owed to it (88,000).
    assert await _payable(conn, net.cafe) == -151_370
    assert await _payable(conn, net.hyper) == 0
    assert await _payable(conn, net.barber) == 88_000

    # Next day: the café sells 200,000 (fee 3,000): -151,370 + 197,000 = 45,630 is paid.
    await book.club_purchase(net.cafe, 200_000, 3_000, tehran(2026, 11, 25, 9))
    second = await runner.run(conn, SETTINGS, CUTOFF_2 + timedelta(minutes=5),
                              cutoff_at=CUTOFF_2)
    got = await _positions(conn, second.window_id)
    assert got["cafe"] == (200_000, 0, -3_000, 0, 0, 0, -151_370, 45_630, 45_630, 0)
    assert got["barber"] == (90_000, 0, -2_000, 0, 0, 0, 0, 88_000, 88_000, 0)
    assert "hyper" not in got
    assert (second.txn_count, second.payout_rial) == (2, 133_630)
    for merchant in (net.cafe, net.hyper, net.barber):
        assert await _payable(conn, merchant) == 0
    # The settlement account paid out everything; fees stayed with the network.
    bank = await ledger.account_id(conn, ledger.settlement_bank(net.network_id))
    payouts = await conn.fetchval(
        """SELECT -sum(e.amount) FROM ledger_entry e JOIN ledger_transfer t ON t.id = e.transfer_id
           WHERE e.account_id = $1 AND t.code = 'payout'""", bank)
    assert payouts == 2_682_800 + 133_630
    assert bank is not None


async def test_rerunning_a_window_changes_nothing(conn: asyncpg.Connection) -> None:
    await record_day(conn)
    now = CUTOFF_1 + timedelta(minutes=5)
    first = await runner.run(conn, SETTINGS, now, cutoff_at=CUTOFF_1)
    transfers = await conn.fetchval("SELECT count(*) FROM ledger_transfer")
    again = await runner.run(conn, SETTINGS, now + timedelta(hours=1), cutoff_at=CUTOFF_1)
    by_id = await runner.run(conn, SETTINGS, now, window_id=first.window_id)
    assert first == again == by_id
    assert await conn.fetchval("SELECT count(*) FROM ledger_transfer") == transfers
    states = await conn.fetch("SELECT state FROM settlement_window_event ORDER BY id")
    assert [r["state"] for r in states] == ["OPEN", "CLOSED", "SETTLED"]


def _settlement_counters() -> dict[str, float]:
    """Every settlement counter and the duration histogram's count, as scraped."""
    names = ["loyalty_settlement_transactions_total", "loyalty_settlement_payouts_total",
             "loyalty_settlement_paid_rial_total", "loyalty_settlement_late_transactions_total",
             "loyalty_settlement_window_duration_seconds_count"]
    found = {n: metrics.REGISTRY.get_sample_value(n) or 0.0 for n in names}
    found["settled_windows"] = metrics.REGISTRY.get_sample_value(
        "loyalty_settlement_windows_total", {"outcome": "SETTLED"}) or 0.0
    return found


async def test_rerunning_a_window_counts_it_once(conn: asyncpg.Connection) -> None:
    await record_day(conn)
    now = CUTOFF_1 + timedelta(minutes=5)
    before = _settlement_counters()
    first = await runner.run(conn, SETTINGS, now, cutoff_at=CUTOFF_1)
    after_first = _settlement_counters()
    # The first run counts the window's 9 transactions, 2 payouts (the café carries a debt
    # forward) and their rials.
    assert {k: after_first[k] - before[k] for k in before} == {
        "loyalty_settlement_transactions_total": 9, "loyalty_settlement_payouts_total": 2,
        "loyalty_settlement_paid_rial_total": first.payout_rial,
        "loyalty_settlement_late_transactions_total": 0,
        "loyalty_settlement_window_duration_seconds_count": 1, "settled_windows": 1}
    # Re-runs by cut-off and by id settle nothing new, so they count nothing.
    await runner.run(conn, SETTINGS, now + timedelta(hours=1), cutoff_at=CUTOFF_1)
    await runner.run(conn, SETTINGS, now, window_id=first.window_id)
    assert _settlement_counters() == after_first


async def test_a_transaction_goes_into_one_window_only(
        conn: asyncpg.Connection) -> None:
    book = await record_day(conn)
    first = await runner.run(conn, SETTINGS, CUTOFF_1, cutoff_at=CUTOFF_1)
    txn_id = await conn.fetchval("SELECT min(txn_id) FROM settlement_item")
    # The unique key refuses a second window for the same transaction, whoever writes.
    try:
        await conn.execute("INSERT INTO settlement_item VALUES ($1, $2)", txn_id,
                           first.window_id + 1)
    except asyncpg.UniqueViolationError:
        pass
    else:
        raise AssertionError("a transaction went into two windows")
    assert book.net.cafe
    assert await windows.state(conn, first.window_id) == "SETTLED"
