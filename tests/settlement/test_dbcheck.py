"""`db check` catches a ledger that no longer agrees with the settlement reports. Runs on a
database of its own, dropped without the teardown check (it is corrupt on purpose)."""

from __future__ import annotations

from datetime import timedelta

import asyncpg

from settlement import runner
from switch import db, dbcheck, ledger
from tests.conftest import create_database, drop_database
from tests.settlement.test_day import CUTOFF_1, SETTINGS, record_day

SETTLEMENT_AGREES = ("settlement agrees with the ledger: settled payables, payouts, "
                     "window membership")


async def test_a_posting_under_a_settled_transaction_is_caught(admin_url: str,
                                                               template_name: str) -> None:
    name = await create_database(admin_url, template_name)
    conn = await asyncpg.connect(db.with_database(admin_url, name))
    try:
        book = await record_day(conn)
        await runner.run(conn, SETTINGS, CUTOFF_1 + timedelta(minutes=5), cutoff_at=CUTOFF_1)
        assert all(o.ok for o in await dbcheck.run_checks(conn))
        # A late fee posted under an RRN that is already settled: nothing would pay it.
        rrn = await conn.fetchval("SELECT rrn FROM txn WHERE merchant_id = $1 LIMIT 1",
                                  book.net.hyper)
        payable = await ledger.account_id(conn, ledger.merchant_payable(book.net.hyper))
        income = await ledger.account_id(conn, ledger.fee_income(book.net.network_id))
        assert (await ledger.transfer(conn, ledger.Unit.IRR, "late_fee",
                                      [(payable, 10), (income, -10)], rrn)).ok
        failed = [o.check.name for o in await dbcheck.run_checks(conn) if not o.ok]
        assert failed == [SETTLEMENT_AGREES]
    finally:
        await conn.close()
        await drop_database(admin_url, name)
