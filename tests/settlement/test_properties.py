"""Properties on a real database: random days of transactions settled window after window.
For every window, payouts + fees + what is carried forward (less what was brought) make the
sales (money the merchants earned before fees); every transaction confirmed before a cut-off
is in exactly one window, the first whose cut-off follows it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from settlement import runner
from switch import dbcheck
from switch.config import Settings
from tests.settlement.support import Book, Network, make_network, tehran

SETTINGS = Settings()


@dataclass(frozen=True)
class Op:
    kind: str       # club | bank | topup | refund (of the last club purchase)
    shop: int       # 0 café, 1 hypermarket, 2 barber
    amount: int
    fee_bp: int
    discount: int


ops = st.builds(Op, st.sampled_from(["club", "club", "bank", "topup", "refund"]),
                st.integers(0, 2), st.integers(1, 500_000), st.integers(0, 500),
                st.integers(0, 20_000))


class World:
    def __init__(self, book: Book, net: Network) -> None:
        self.book, self.net = book, net
        self.clock = tehran(2026, 11, 24, 8)
        self.last_club: dict[int, tuple[int, int, int]] = {}  # shop -> (txn, amount, fee)


async def _apply(world: World, op: Op, at: datetime) -> tuple[int, int]:
    """Record `op`; returns (what it earns the merchant before fees, the net fee)."""
    shop = (world.net.cafe, world.net.hyper, world.net.barber)[op.shop]
    fee = op.amount * op.fee_bp // 10_000
    if op.kind == "club":
        txn = await world.book.club_purchase(shop, op.amount, fee, at, discount=op.discount)
        world.last_club[op.shop] = (txn, op.amount, fee)
        return op.amount + op.discount, fee
    if op.kind == "bank":
        await world.book.bank_purchase(shop, op.amount, fee, at, discount=op.discount,
                                       sponsor="bank-x")
        return op.discount, fee
    if op.kind == "topup":
        await world.book.topup(shop, op.amount, at)
        return -op.amount, 0
    if op.shop not in world.last_club:
        return 0, 0
    original, paid, original_fee = world.last_club.pop(op.shop)
    amount = min(op.amount, paid)
    fee_back = original_fee * amount // paid
    await world.book.refund(original, amount, fee_back, at)
    return -amount, -fee_back


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(days=st.lists(st.tuples(st.lists(ops, max_size=8), st.lists(ops, max_size=2)),
                     min_size=1, max_size=3))
async def test_windows_account_for_every_rial_and_every_transaction(
        conn: asyncpg.Connection, days: list[tuple[list[Op], list[Op]]]) -> None:
    example = conn.transaction()  # each example leaves the database as it found it
    await example.start()
    try:
        net = await make_network(conn, funded_rial=10**12)
        world = World(Book(conn, net), net)
        late_sales = late_fees = 0  # recorded after a cut-off: the next window's
        for before, after in days:
            sales, fees = late_sales, late_fees
            for op in before:
                world.clock += timedelta(minutes=1)
                earned, fee = await _apply(world, op, world.clock)
                sales, fees = sales + earned, fees + fee
            cutoff = world.clock + timedelta(seconds=30)
            late_sales = late_fees = 0
            for op in after:
                world.clock += timedelta(minutes=1)
                earned, fee = await _apply(world, op, world.clock)
                late_sales, late_fees = late_sales + earned, late_fees + fee
            world.clock = max(world.clock, cutoff) + timedelta(minutes=1)
            summary = await runner.run(conn, SETTINGS, world.clock, cutoff_at=cutoff)
            row = await conn.fetchrow(
                """SELECT coalesce(sum(payout_rial), 0) AS paid,
                          coalesce(sum(carried_forward_rial), 0) AS carried,
                          coalesce(sum(brought_forward_rial), 0) AS brought,
                          coalesce(-sum(fees_rial), 0) AS fees
                   FROM settlement_position WHERE window_id = $1""", summary.window_id)
            assert row is not None
            assert row["fees"] == fees
            assert row["paid"] + row["fees"] + row["carried"] - row["brought"] == sales
            assert summary.payout_rial == row["paid"]
        # Every transaction before the last cut-off is in exactly one window: the first
        # whose cut-off is after its confirmation.
        wrong = await conn.fetch(
            """SELECT x.id FROM txn x
               LEFT JOIN settlement_item i ON i.txn_id = x.id
               LEFT JOIN settlement_window w ON w.id = i.window_id
               WHERE x.confirmed_at < (SELECT max(cutoff_at) FROM settlement_window)
                 AND (w.id IS NULL OR w.id IS DISTINCT FROM (
                       SELECT id FROM settlement_window WHERE cutoff_at > x.confirmed_at
                       ORDER BY cutoff_at LIMIT 1))""")
        assert wrong == []
        for check in dbcheck.CHECKS:  # db check inside the example's transaction
            assert await conn.fetch(check.violations_sql) == [], check.name
    finally:
        await example.rollback()
