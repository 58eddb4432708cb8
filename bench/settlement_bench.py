"""Settlement benchmark: 1,000,000 confirmed transactions across 1,000 merchants, settled.

Generates, in a database of its own (`loyalty_settlement_bench` on the configured or embedded
server, dropped first), a store network with 1,000 merchants, a terminal and a funded club
card each, and N confirmed transactions with the postings the switch writes for them (a
hold, its post and the fee, under the transaction's RRN): 90 % club purchases, 5 % refunds,
5 % cash top-ups. Everything is generated set-based (generate_series), then one window is
closed and settled (one database transaction) and its files exported. Prints the time of
each stage. Not a test; the goal is settling 1,000,000 transactions in under 60 s.

    .venv/bin/python -m bench.settlement_bench [--transactions 1000000] [--merchants 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

from settlement import files, runner
from switch import db, migrate
from switch.config import load_settings
from tests.conftest import drop_database

DATABASE = "loyalty_settlement_bench"
BASE = datetime(2026, 11, 24, 4, 30, tzinfo=UTC)  # 08:00 Tehran, a Tuesday

_REGISTRY = """
INSERT INTO store_network (id, code, name, club_bin) VALUES (1, 'bench', 'Bench', '990900');
INSERT INTO bdk (id, label) VALUES ('0000BEEF', 'bench');
INSERT INTO merchant (id, network_id, code, name, trade, sheba, fee_bp)
SELECT g, 1, 'm' || g, 'Merchant ' || g, 'shop',
       'IR' || lpad((98 - (lpad(g::text, 22, '0') || '182700')::numeric % 97)::text, 2, '0')
            || lpad(g::text, 22, '0'), 150
FROM generate_series(1, $1) g;
INSERT INTO terminal (id, tid, merchant_id, bdk_id, derivation_id)
SELECT g, 'B' || lpad(g::text, 7, '0'), g, '0000BEEF', upper(lpad(to_hex(g), 8, '0'))
FROM generate_series(1, $1) g;
INSERT INTO member (id, network_id, first_name, last_name, mobile)
VALUES (1, 1, 'Bench', 'Member', '09120000000');
INSERT INTO card (id, network_id, member_id, pan_hash, pan_bin, pan_last4, expiry)
SELECT g, 1, 1, sha256(g::text::bytea), '990900', lpad((g % 10000)::text, 4, '0'), '3012'
FROM generate_series(1, $1) g;
INSERT INTO ledger_account (id, key, kind, unit, card_id, merchant_id, network_id,
                            debits_must_not_exceed_credits)
SELECT g, 'merchant_payable:m' || g, 'merchant_payable', 'IRR', NULL::bigint, g::bigint,
       NULL::bigint, false
FROM generate_series(1, $1) g
UNION ALL
SELECT $1 + g, 'card_rial:c' || g, 'card_rial', 'IRR', g, NULL, NULL, true
FROM generate_series(1, $1) g
UNION ALL SELECT 2 * $1 + 1, 'fee_income:n1', 'fee_income', 'IRR', NULL, NULL, 1, false
UNION ALL SELECT 2 * $1 + 2, 'settlement_bank:n1', 'settlement_bank', 'IRR', NULL, NULL, 1, false;
"""

# Transaction g at merchant m = 1 + g % M with card m: kind by (g / M) % 20 (0 refund, 1 top-up,
# else a club purchase); fee 1.5 % of a purchase, given back in full on a refund.
_TXNS = """
CREATE TEMP TABLE gen AS
SELECT g, 1 + g % $2 AS m,
       CASE (g / $2) % 20 WHEN 0 THEN 'refund' WHEN 1 THEN 'topup' ELSE 'club_purchase' END
           AS kind,
       (10000 + (g * 7919) % 990000)::bigint AS amount,
       $3::timestamptz + g * interval '40 ms' AS at
FROM generate_series(1::bigint, $1) g;
INSERT INTO txn (id, terminal_id, stan, transmission_f7, transmitted_at, processing_code, kind,
                 amount_rial, rrn, state, card_id, merchant_id, created_at, confirmed_at)
SELECT g, m, lpad((g % 1000000)::text, 6, '0'), to_char(at AT TIME ZONE 'UTC', 'MMDDHH24MISS'),
       at, '000000', kind, amount, lpad(g::text, 12, '0'), 'CONFIRMED', m, m, at, at
FROM gen;
"""

# Three transfers per transaction: the hold (posted), its post, the fee (none for top-ups).
_LEDGER = """
CREATE TEMP TABLE flow AS
SELECT g, lpad(g::text, 12, '0') AS ref, kind, amount, at,
       CASE kind WHEN 'club_purchase' THEN $2 + m ELSE m END AS debit,
       CASE kind WHEN 'club_purchase' THEN m ELSE $2 + m END AS credit,
       CASE kind WHEN 'club_purchase' THEN amount * 150 / 10000
                 WHEN 'refund' THEN -(amount * 150 / 10000) ELSE 0 END AS fee
FROM gen;
INSERT INTO ledger_transfer (id, unit, kind, code, ref, amount, pending_id, timeout_at, status,
                             created_at)
SELECT 3 * g - 2, 'IRR', 'pending', kind, ref, amount, NULL, at + interval '2 min', 'posted', at
FROM flow
UNION ALL
SELECT 3 * g - 1, 'IRR', 'post', kind, ref, amount, 3 * g - 2, NULL, NULL, at FROM flow
UNION ALL
SELECT 3 * g, 'IRR', 'single', CASE kind WHEN 'refund' THEN 'refund_fee' ELSE kind || '_fee' END,
       ref, abs(fee), NULL, NULL, NULL, at FROM flow WHERE fee <> 0;
INSERT INTO ledger_entry (transfer_id, account_id, amount)
SELECT 3 * g - 2, debit, amount FROM flow
UNION ALL SELECT 3 * g - 2, credit, -amount FROM flow
UNION ALL SELECT 3 * g - 1, debit, amount FROM flow
UNION ALL SELECT 3 * g - 1, credit, -amount FROM flow
UNION ALL SELECT 3 * g, m_payable, fee FROM (
    SELECT g, fee, CASE kind WHEN 'club_purchase' THEN credit ELSE debit END AS m_payable
    FROM flow WHERE fee <> 0) f
UNION ALL SELECT 3 * g, $2 * 2 + 1, -fee FROM flow WHERE fee <> 0;
"""

# Fund every card generously, then set the card accounts' running totals from their entries.
_FUNDING = """
INSERT INTO ledger_transfer (id, unit, kind, code, ref, amount)
SELECT 3 * $1 + c, 'IRR', 'single', 'topup_online', NULL, 1000000000000
FROM generate_series(1, $2) c;
INSERT INTO ledger_entry (transfer_id, account_id, amount)
SELECT 3 * $1 + c, 2 * $2 + 2, 1000000000000 FROM generate_series(1, $2) c
UNION ALL SELECT 3 * $1 + c, $2 + c, -1000000000000 FROM generate_series(1, $2) c;
UPDATE ledger_account a
SET debits_posted = s.debits, credits_posted = s.credits
FROM (SELECT e.account_id,
             coalesce(sum(e.amount) FILTER (WHERE e.amount > 0), 0) AS debits,
             coalesce(-sum(e.amount) FILTER (WHERE e.amount < 0), 0) AS credits
      FROM ledger_entry e JOIN ledger_transfer t ON t.id = e.transfer_id
      WHERE t.kind IN ('single', 'post') AND e.account_id BETWEEN $2 + 1 AND 2 * $2
      GROUP BY e.account_id) s
WHERE a.id = s.account_id;
SELECT setval(pg_get_serial_sequence('ledger_transfer', 'id'), 3 * $1 + $2);
SELECT setval(pg_get_serial_sequence('ledger_account', 'id'), 2 * $2 + 2);
SELECT setval(pg_get_serial_sequence('txn', 'id'), $1);
"""


async def _script(conn: asyncpg.Connection, sql: str, *numbers: int) -> None:
    """Run a script; $1, $2, ... are whole numbers, written in as literals ($3: BASE)."""
    values = [str(int(n)) for n in numbers] + [f"'{BASE.isoformat()}'"]
    for n, value in reversed(list(enumerate(values, start=1))):
        sql = sql.replace(f"${n}", value)
    await conn.execute(sql)


_STEPS = {"after_assign": "close: assign transactions", "after_netting": "net store credit",
          "after_payouts": "positions, payouts, postings", "after_commit": "record and commit"}


class Stages:
    def __init__(self) -> None:
        self.last = time.perf_counter()
        self.lines: list[str] = []

    def mark(self, name: str) -> None:
        name = _STEPS.get(name, name)
        now = time.perf_counter()
        self.lines.append(f"  {name:<34}{now - self.last:8.2f} s")
        print(self.lines[-1], flush=True)
        self.last = now


async def main_async(transactions: int, merchants: int, export: bool) -> None:
    settings = load_settings()
    admin_url = settings.database_url or db.embedded_server_url(settings.data_dir, "postgres")
    await drop_database(admin_url, DATABASE)  # a fresh database every run
    await db.ensure_database(admin_url, DATABASE)
    conn = await asyncpg.connect(db.with_database(admin_url, DATABASE))
    try:
        await migrate.migrate(conn)
        print(f"{transactions:,} transactions, {merchants:,} merchants")
        stages = Stages()
        async with conn.transaction():
            await _script(conn, _REGISTRY, merchants)
            await _script(conn, _TXNS, transactions, merchants)
            stages.mark("generate registry and txn rows")
            await _script(conn, _LEDGER, transactions, merchants)
            await _script(conn, _FUNDING, transactions, merchants)
            stages.mark("generate ledger postings")
        await conn.execute("ANALYZE")
        stages.mark("analyze")
        print("settle (close and settle: one database transaction):")
        started = time.perf_counter()
        cutoff = BASE + timedelta(days=1)
        summary = await runner.run(conn, settings, cutoff + timedelta(minutes=1),
                                   cutoff_at=cutoff, fault=stages.mark)
        total = time.perf_counter() - started
        print(f"settled: {summary.txn_count:,} transactions, {summary.payout_count:,} payouts, "
              f"{summary.payout_rial:,} rial, carried {summary.carried_forward_rial:,} rial")
        print(f"settle total: {total:.2f} s")
        if export:
            with tempfile.TemporaryDirectory() as tmp:
                written = await files.export(conn, summary.window_id, Path(tmp))
                stages.mark(f"export {len(written)} files")
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--transactions", type=int, default=1_000_000)
    parser.add_argument("--merchants", type=int, default=1_000)
    parser.add_argument("--no-export", action="store_true", help="skip writing the files")
    args = parser.parse_args()
    asyncio.run(main_async(args.transactions, args.merchants, not args.no_export))


if __name__ == "__main__":
    main()
