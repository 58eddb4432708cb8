"""Settlement windows in the database: open, close, settle (set-based SQL).

Theory of operation. A window's state is its last event (migration 0020). Every function
here runs inside the caller's database transaction and first takes one advisory lock, so
settlement steps never interleave, whichever process runs them.
* `close` assigns every CONFIRMED transaction confirmed before the cut-off and not yet in a
  window (settlement_item, whose key is the transaction, and txn.settlement_window_id, which
  refuses a reversal from then on) and appends CLOSED. Closing a closed window changes
  nothing.
* `settle` nets store credit (settlement/netting.py) and posts the netting transfers, then
  reads every merchant's postings for the window's transactions in one aggregate query,
  builds the positions (settlement/positions.py), posts the payouts (one balanced transfer
  per settlement account) and records positions, payouts and SETTLED. A SETTLED window is
  never settled again: `settle` returns its summary and writes nothing, so re-running pays
  nothing twice. A crash before the commit leaves the window as it was.
`fault(step)` is called between steps: tests kill the process there (settlement/faults.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from settlement import netting
from settlement.positions import COMPONENTS, Position, position
from switch import ledger

_LOCK_KEY = 0x5E771E  # pg_advisory_xact_lock key of every settlement step
OPEN, CLOSED, SETTLED, FAILED = "OPEN", "CLOSED", "SETTLED", "FAILED"


class WindowError(Exception):
    """A refused settlement step (unknown window, wrong state, cut-off in the future)."""


def window_ref(window_id: int) -> str:
    """The `ref` of the ledger transfers a window posts itself (netting, payouts)."""
    return f"settlement:W{window_id}"


@dataclass(frozen=True, slots=True)
class Summary:
    window_id: int
    state: str
    txn_count: int
    payout_count: int
    payout_rial: int
    carried_forward_rial: int
    late_count: int


async def _lock(conn: asyncpg.Connection) -> None:
    await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)


async def state(conn: asyncpg.Connection, window_id: int) -> str | None:
    found: str | None = await conn.fetchval(
        """SELECT state FROM settlement_window_event WHERE window_id = $1
           ORDER BY id DESC LIMIT 1""", window_id)
    return found


async def _event(conn: asyncpg.Connection, window_id: int, new_state: str, at: datetime,
                 detail: dict[str, object]) -> None:
    await conn.execute(
        """INSERT INTO settlement_window_event (window_id, state, at, detail)
           VALUES ($1, $2, $3, $4::jsonb)""",
        window_id, new_state, at, json.dumps(detail, sort_keys=True, default=str))


async def open_window(conn: asyncpg.Connection, cutoff_at: datetime, now: datetime) -> int:
    """The window with this cut-off, created OPEN if there is none."""
    await _lock(conn)
    found: int | None = await conn.fetchval(
        "SELECT id FROM settlement_window WHERE cutoff_at = $1", cutoff_at)
    if found is not None:
        return found
    window_id: int = await conn.fetchval(
        "INSERT INTO settlement_window (cutoff_at) VALUES ($1) RETURNING id", cutoff_at)
    await _event(conn, window_id, OPEN, now, {})
    return window_id


async def close(conn: asyncpg.Connection, cutoff_at: datetime, now: datetime,
                fault: Callable[[str], None] = lambda step: None) -> int:
    """Close the window of `cutoff_at` (opening it first if needed); its id."""
    if cutoff_at > now:
        raise WindowError(f"cut-off {cutoff_at.isoformat()} is in the future")
    window_id = await open_window(conn, cutoff_at, now)
    if await state(conn, window_id) != OPEN:
        return window_id
    later: datetime | None = await conn.fetchval(
        """SELECT max(w.cutoff_at) FROM settlement_window w
           JOIN settlement_window_event e ON e.window_id = w.id AND e.state = 'CLOSED'""")
    if later is not None and later > cutoff_at:
        raise WindowError(f"a window with the later cut-off {later.isoformat()} is already "
                          f"closed; close at or after it")
    row = await conn.fetchrow(
        """WITH picked AS (
               UPDATE txn SET settlement_window_id = $1
               WHERE state = 'CONFIRMED' AND settlement_window_id IS NULL
                 AND confirmed_at < $2
               RETURNING id, confirmed_at),
           items AS (INSERT INTO settlement_item (txn_id, window_id)
                     SELECT id, $1 FROM picked)
           SELECT count(*) AS n, min(confirmed_at) AS first FROM picked""",
        window_id, cutoff_at)
    assert row is not None
    fault("after_assign")
    await _event(conn, window_id, CLOSED, now, {
        "txn_count": row["n"],
        "first_confirmed_at": None if row["first"] is None else row["first"].isoformat()})
    return window_id


# Store credit accepted in payment, per issuer and acceptor: a credit on the issuer's
# credit_issued account under a credit purchase (a refund's debit gives it back).
_CREDIT_OBLIGATIONS = """
SELECT coalesce(a.network_id, m.network_id) AS network_id, a.merchant_id AS issuer,
       x.merchant_id AS acceptor, -sum(e.amount)::bigint AS amount
FROM settlement_item i
JOIN txn x ON x.id = i.txn_id AND x.kind IN ('credit_purchase', 'refund')
JOIN ledger_transfer t ON t.ref = x.rrn::text AND t.kind IN ('single', 'post')
                      AND t.code IN ('credit_purchase', 'refund')
JOIN ledger_entry e ON e.transfer_id = t.id
JOIN ledger_account a ON a.id = e.account_id AND a.kind = 'credit_issued'
JOIN merchant m ON m.id = x.merchant_id
WHERE i.window_id = $1 AND a.merchant_id IS DISTINCT FROM x.merchant_id
GROUP BY 1, 2, 3
ORDER BY 1, 2 NULLS FIRST, 3
"""

# Every posting on a merchant payable under the window's transactions or its own netting,
# signed as the merchant sees it; and each merchant's transaction count.
_POSTINGS = """
WITH refs AS (
    SELECT x.rrn::text AS ref FROM settlement_item i JOIN txn x ON x.id = i.txn_id
    WHERE i.window_id = $1
    UNION ALL SELECT $2)
SELECT a.merchant_id, t.code, (-sum(e.amount))::bigint AS amount
FROM refs JOIN ledger_transfer t ON t.ref = refs.ref AND t.kind IN ('single', 'post')
JOIN ledger_entry e ON e.transfer_id = t.id
JOIN ledger_account a ON a.id = e.account_id AND a.kind = 'merchant_payable'
GROUP BY a.merchant_id, t.code
"""
_COUNTS = """
SELECT x.merchant_id, count(*) AS n FROM settlement_item i JOIN txn x ON x.id = i.txn_id
WHERE i.window_id = $1 GROUP BY x.merchant_id
"""
# What each merchant carried out of the window it was last settled in.
_CARRIED = """
SELECT DISTINCT ON (p.merchant_id) p.merchant_id, p.carried_forward_rial
FROM settlement_position p
JOIN settlement_window_event e ON e.window_id = p.window_id AND e.state = 'SETTLED'
ORDER BY p.merchant_id, e.id DESC
"""


async def _post_netting(conn: asyncpg.Connection, window_id: int) -> int:
    rows = await conn.fetch(_CREDIT_OBLIGATIONS, window_id)
    obligations = [
        netting.Obligation(netting.Party(r["network_id"], r["issuer"]),
                           netting.Party(r["network_id"], r["acceptor"]), r["amount"])
        for r in rows]
    positions = netting.net_positions(obligations)
    for party, net in positions.items():
        await conn.execute(
            """INSERT INTO settlement_credit_position (window_id, network_id, merchant_id,
                                                       net_rial) VALUES ($1, $2, $3, $4)""",
            window_id, party.network_id, party.merchant_id, net)
    by_network: dict[int, dict[netting.Party, int]] = {}
    for party, net in positions.items():
        by_network.setdefault(party.network_id, {})[party] = net
    seq = 0
    for network_id in sorted(by_network):
        for move in netting.settle(by_network[network_id]):
            seq += 1
            payer = await _party_account(conn, move.payer)
            payee = await _party_account(conn, move.payee)
            result = await ledger.transfer(
                conn, ledger.Unit.IRR, "credit_netting",
                [(payer, move.amount_rial), (payee, -move.amount_rial)], window_ref(window_id))
            assert result.ok, result  # neither account refuses a debit
            await conn.execute(
                """INSERT INTO settlement_credit_transfer (window_id, seq, network_id,
                       from_merchant_id, to_merchant_id, amount_rial, transfer_id)
                   VALUES ($1, $2, $3, $4, $5, $6, $7)""",
                window_id, seq, network_id, move.payer.merchant_id, move.payee.merchant_id,
                move.amount_rial, result.transfer_id)
    return seq


async def _party_account(conn: asyncpg.Connection, party: netting.Party) -> int:
    """A store settles on its payable; the network on its credit_issued account (which the
    redemption had credited: the network's cost of the credit it granted comes back)."""
    if party.merchant_id is not None:
        spec = ledger.merchant_payable(party.merchant_id)
    else:
        spec = ledger.credit_issued(network_id=party.network_id)
    return await ledger.account_id(conn, spec)


async def _positions(conn: asyncpg.Connection, window_id: int) -> list[Position]:
    sums: dict[int, list[tuple[str, int]]] = {}
    for r in await conn.fetch(_POSTINGS, window_id, window_ref(window_id)):
        sums.setdefault(r["merchant_id"], []).append((r["code"], r["amount"]))
    counts = {r["merchant_id"]: r["n"] for r in await conn.fetch(_COUNTS, window_id)}
    carried = {r["merchant_id"]: r["carried_forward_rial"] for r in await conn.fetch(_CARRIED)}
    merchants = sorted(set(sums) | set(counts) | {m for m, v in carried.items() if v})
    return [position(m, counts.get(m, 0), sums.get(m, []), carried.get(m, 0))
            for m in merchants]


async def _record_positions(conn: asyncpg.Connection, window_id: int,
                            positions: Sequence[Position]) -> None:
    await conn.copy_records_to_table(
        "settlement_position",
        columns=["window_id", "merchant_id", "txn_count",
                 *[f"{c}_rial" for c in COMPONENTS],
                 "brought_forward_rial", "net_rial", "payout_rial", "carried_forward_rial"],
        records=[(window_id, p.merchant_id, p.txn_count, *[p.components[c] for c in COMPONENTS],
                  p.brought_forward_rial, p.net_rial, p.payout_rial, p.carried_forward_rial)
                 for p in positions])


async def _post_payouts(conn: asyncpg.Connection, window_id: int) -> None:
    """One balanced transfer per settlement account: the payables it pays, and the bank."""
    await conn.execute(
        """WITH due AS (
               SELECT p.merchant_id, p.payout_rial, m.sheba, m.name,
                      coalesce(m.network_id, (SELECT min(id) FROM store_network)) AS bank_network
               FROM settlement_position p JOIN merchant m ON m.id = p.merchant_id
               WHERE p.window_id = $1 AND p.payout_rial > 0),
           posted AS (
               SELECT bank_network, (SELECT transfer_id FROM ledger_transfer_create(
                   'IRR', 'payout', $2,
                   array_agg(ledger_account_ensure('merchant_payable', NULL, merchant_id, NULL)
                             ORDER BY merchant_id)
                       || ledger_account_ensure('settlement_bank', NULL, NULL, bank_network),
                   array_agg(payout_rial ORDER BY merchant_id) || -sum(payout_rial)::bigint))
                   AS transfer_id
               FROM due GROUP BY bank_network)
           INSERT INTO settlement_payout (window_id, merchant_id, reference, sheba, name,
                                          amount_rial, transfer_id)
           SELECT $1, d.merchant_id, $3 || lpad(d.merchant_id::text, 9, '0'), d.sheba, d.name,
                  d.payout_rial, posted.transfer_id
           FROM due d JOIN posted USING (bank_network)""",
        window_id, window_ref(window_id), f"W{window_id:09d}M")


async def settle(conn: asyncpg.Connection, window_id: int, now: datetime,
                 late_before: datetime | None = None,
                 fault: Callable[[str], None] = lambda step: None) -> tuple[Summary, bool]:
    """Settle a CLOSED (or FAILED) window; a SETTLED one only reports its summary.

    Returns the summary and whether this call settled the window (False for a re-run, so
    the caller counts each window's metrics once, as its money moves once).
    `late_before`: transactions confirmed before it are paid after their due time (the
    caller computes it from the calendar); they are counted in the summary, and paid.
    """
    await _lock(conn)
    current = await state(conn, window_id)
    if current is None:
        raise WindowError(f"no settlement window {window_id}")
    if current == SETTLED:
        return await summary(conn, window_id), False
    if current == OPEN:
        raise WindowError(f"window {window_id} is OPEN: close it first")
    transfers = await _post_netting(conn, window_id)
    fault("after_netting")
    positions = await _positions(conn, window_id)
    await _record_positions(conn, window_id, positions)
    await _post_payouts(conn, window_id)
    fault("after_payouts")
    late = 0
    if late_before is not None:
        late = await conn.fetchval(
            """SELECT count(*) FROM settlement_item i JOIN txn x ON x.id = i.txn_id
               WHERE i.window_id = $1 AND x.confirmed_at < $2""", window_id, late_before)
    await _event(conn, window_id, SETTLED, now,
                 {"late_count": late, "credit_transfers": transfers})
    return await summary(conn, window_id), True


async def fail(conn: asyncpg.Connection, window_id: int, now: datetime, reason: str) -> None:
    """Record that a run of this window failed (in its own transaction: the run's is gone)."""
    await _lock(conn)
    if await state(conn, window_id) in (CLOSED, FAILED):
        await _event(conn, window_id, FAILED, now, {"reason": reason[:500]})


async def summary(conn: asyncpg.Connection, window_id: int) -> Summary:
    row = await conn.fetchrow(
        """SELECT (SELECT count(*) FROM settlement_item WHERE window_id = $1) AS txns,
                  (SELECT count(*) FROM settlement_payout WHERE window_id = $1) AS payouts,
                  (SELECT coalesce(sum(amount_rial), 0) FROM settlement_payout
                   WHERE window_id = $1)::bigint AS paid,
                  (SELECT coalesce(sum(carried_forward_rial), 0) FROM settlement_position
                   WHERE window_id = $1)::bigint AS carried,
                  (SELECT coalesce((detail->>'late_count')::bigint, 0)
                   FROM settlement_window_event
                   WHERE window_id = $1 AND state = 'SETTLED') AS late""", window_id)
    assert row is not None
    found = await state(conn, window_id)
    if found is None:
        raise WindowError(f"no settlement window {window_id}")
    return Summary(window_id, found, row["txns"], row["payouts"], row["paid"],
                   row["carried"], row["late"] or 0)
