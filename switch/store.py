"""The switch's reads and writes outside the ledger: terminals, cards, the request log and
transactions. Plain functions over a connection; the caller owns the transaction."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from switch.pricing import FeePlan, Quote


@dataclass(frozen=True, slots=True)
class TerminalRecord:
    terminal_id: int
    tid: str
    status: str
    hold_timeout_s: int | None
    merchant_id: int
    merchant_status: str
    merchant_network_id: int | None
    fee_plan: FeePlan
    shaparak_fee_exempt: bool


_TERMINAL_SQL = """
    SELECT t.id, t.tid, t.status, t.hold_timeout_s, m.id AS merchant_id,
           m.status AS merchant_status, m.network_id, m.fee_bp, m.fee_fixed_rial,
           m.fee_min_rial, m.fee_max_rial, m.shaparak_fee_exempt
    FROM terminal t JOIN merchant m ON m.id = t.merchant_id
    JOIN bdk b ON b.id = t.bdk_id AND b.status = 'active'
    WHERE t.bdk_id = $1 AND t.derivation_id = $2"""


async def terminal_by_initial_key_id(conn: asyncpg.Connection, initial_key_id: bytes
                                     ) -> TerminalRecord | None:
    row = await conn.fetchrow(_TERMINAL_SQL, initial_key_id[:4].hex().upper(),
                              initial_key_id[4:].hex().upper())
    if row is None:
        return None
    return TerminalRecord(
        terminal_id=row["id"], tid=row["tid"], status=row["status"],
        hold_timeout_s=row["hold_timeout_s"], merchant_id=row["merchant_id"],
        merchant_status=row["merchant_status"], merchant_network_id=row["network_id"],
        fee_plan=FeePlan(row["fee_bp"], row["fee_fixed_rial"], row["fee_min_rial"],
                         row["fee_max_rial"]),
        shaparak_fee_exempt=row["shaparak_fee_exempt"])


async def advance_counter(conn: asyncpg.Connection, terminal_id: int, counter: int) -> bool:
    """Raise the terminal's accepted KSN counter to `counter`; False if it is not above."""
    done = await conn.fetchval(
        """UPDATE terminal SET ksn_counter_max = $2
           WHERE id = $1 AND ksn_counter_max < $2 RETURNING 1""", terminal_id, counter)
    return done is not None


@dataclass(frozen=True, slots=True)
class Identity:
    terminal_id: int
    stan: str
    transmitted_at: datetime


@dataclass(frozen=True, slots=True)
class StoredResponse:
    digest: bytes
    ksn: bytes
    response: bytes


async def claim(conn: asyncpg.Connection, identity: Identity, mti: str, digest: bytes,
                ksn: bytes) -> StoredResponse | None:
    """Record the request identity, or return what is stored under it. A concurrent claim of
    the same identity waits here until the first transaction ends."""
    inserted = await conn.fetchval(
        """INSERT INTO request_log (terminal_id, stan, transmitted_at, mti, digest, ksn,
                                    response, response_code)
           VALUES ($1, $2, $3, $4, $5, $6, '', '')
           ON CONFLICT (terminal_id, stan, transmitted_at) DO NOTHING RETURNING id""",
        identity.terminal_id, identity.stan, identity.transmitted_at, mti, digest, ksn)
    if inserted is not None:
        return None
    row = await conn.fetchrow(
        """SELECT digest, ksn, response FROM request_log
           WHERE terminal_id = $1 AND stan = $2 AND transmitted_at = $3""",
        identity.terminal_id, identity.stan, identity.transmitted_at)
    assert row is not None
    return StoredResponse(row["digest"], row["ksn"], row["response"])


async def record_response(conn: asyncpg.Connection, identity: Identity, response: bytes,
                          response_code: str, txn_id: int | None) -> None:
    await conn.execute(
        """UPDATE request_log SET response = $4, response_code = $5, txn_id = $6
           WHERE terminal_id = $1 AND stan = $2 AND transmitted_at = $3""",
        identity.terminal_id, identity.stan, identity.transmitted_at, response, response_code,
        txn_id)


@dataclass(frozen=True, slots=True)
class CardRecord:
    card_id: int
    network_id: int
    member_id: int
    expiry: str
    status: str


async def club_bins(conn: asyncpg.Connection) -> frozenset[str]:
    rows = await conn.fetch("SELECT club_bin FROM store_network")
    return frozenset(r[0] for r in rows)


async def club_card(conn: asyncpg.Connection, pan_hash: bytes) -> CardRecord | None:
    row = await conn.fetchrow(
        "SELECT id, network_id, member_id, expiry, status FROM card WHERE pan_hash = $1",
        pan_hash)
    return None if row is None else CardRecord(*row)


async def linked_member_card(conn: asyncpg.Connection, bank_pan_hash: bytes) -> int | None:
    """The active club card of the member who linked this bank card, if any."""
    card_id: int | None = await conn.fetchval(
        """SELECT c.id FROM bank_card b JOIN card c ON c.member_id = b.member_id
           WHERE b.pan_hash = $1 AND c.status = 'active' ORDER BY c.id DESC LIMIT 1""",
        bank_pan_hash)
    return card_id


async def reversal_remembered(conn: asyncpg.Connection, identity: Identity) -> bool:
    found = await conn.fetchval(
        """SELECT 1 FROM reversal_memo
           WHERE terminal_id = $1 AND stan = $2 AND transmitted_at = $3""",
        identity.terminal_id, identity.stan, identity.transmitted_at)
    return found is not None


async def remember_reversal(conn: asyncpg.Connection, identity: Identity) -> None:
    await conn.execute(
        """INSERT INTO reversal_memo (terminal_id, stan, transmitted_at) VALUES ($1, $2, $3)
           ON CONFLICT DO NOTHING""",
        identity.terminal_id, identity.stan, identity.transmitted_at)


async def next_rrn(conn: asyncpg.Connection) -> str:
    value: int = await conn.fetchval("SELECT nextval('rrn_seq')")
    return f"{value:012d}"


@dataclass(frozen=True, slots=True)
class NewTxn:
    identity: Identity
    transmission_f7: str
    processing_code: str
    kind: str
    amount_rial: int
    rrn: str
    merchant_id: int
    card_id: int | None
    pan_hash: bytes | None
    hold_expires_at: datetime
    quote: Quote
    original_txn_id: int | None = None


async def insert_txn(conn: asyncpg.Connection, t: NewTxn, now: datetime) -> int:
    txn_id: int = await conn.fetchval(
        """INSERT INTO txn (terminal_id, stan, transmission_f7, transmitted_at, processing_code,
                            kind, amount_rial, rrn, approval_code, state, card_id, pan_hash,
                            merchant_id, hold_expires_at, quote, original_txn_id, created_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $16, 'PENDING', $9, $10, $11,
                   $12, $13, $14, $15)
           RETURNING id""",
        t.identity.terminal_id, t.identity.stan, t.transmission_f7, t.identity.transmitted_at,
        t.processing_code, t.kind, t.amount_rial, t.rrn, t.card_id, t.pan_hash, t.merchant_id,
        t.hold_expires_at, json.dumps(t.quote.to_json()), t.original_txn_id, now,
        t.rrn[-6:])  # the approval code: unique enough for a receipt, derived from the RRN
    return txn_id


@dataclass(frozen=True, slots=True)
class TxnRecord:
    txn_id: int
    terminal_id: int
    stan: str
    transmitted_at: datetime
    processing_code: str
    kind: str
    amount_rial: int
    rrn: str
    approval_code: str
    state: str
    void_reason: str | None
    card_id: int | None
    pan_hash: bytes | None
    merchant_id: int
    hold_expires_at: datetime
    quote: Quote
    original_txn_id: int | None
    refunded_rial: int
    settled: bool


_TXN_COLUMNS = """id, terminal_id, stan, transmitted_at, processing_code, kind, amount_rial,
    rrn, approval_code, state, void_reason, card_id, pan_hash, merchant_id, hold_expires_at,
    quote, original_txn_id, refunded_rial, settlement_window_id IS NOT NULL AS settled"""


def _txn(row: asyncpg.Record | None) -> TxnRecord | None:
    if row is None:
        return None
    values = dict(row)
    values["quote"] = Quote.from_json(json.loads(values["quote"]))
    values["txn_id"] = values.pop("id")
    return TxnRecord(**values)


async def txn_by_rrn(conn: asyncpg.Connection, rrn: str) -> TxnRecord | None:
    """The transaction with this RRN, locked for the rest of the database transaction."""
    return _txn(await conn.fetchrow(
        f"SELECT {_TXN_COLUMNS} FROM txn WHERE rrn = $1 FOR UPDATE", rrn))


async def txn_by_identity(conn: asyncpg.Connection, identity: Identity) -> TxnRecord | None:
    return _txn(await conn.fetchrow(
        f"""SELECT {_TXN_COLUMNS} FROM txn
            WHERE terminal_id = $1 AND stan = $2 AND transmitted_at = $3 FOR UPDATE""",
        identity.terminal_id, identity.stan, identity.transmitted_at))


async def txn_by_id(conn: asyncpg.Connection, txn_id: int) -> TxnRecord | None:
    return _txn(await conn.fetchrow(
        f"SELECT {_TXN_COLUMNS} FROM txn WHERE id = $1 FOR UPDATE", txn_id))


async def set_state(conn: asyncpg.Connection, txn_id: int, state: str, now: datetime,
                    void_reason: str | None = None) -> None:
    if state == "CONFIRMED":
        await conn.execute(
            "UPDATE txn SET state = 'CONFIRMED', confirmed_at = $2 WHERE id = $1", txn_id, now)
    else:
        assert state == "VOIDED"
        assert void_reason in ("reversal", "expired")
        await conn.execute(
            "UPDATE txn SET state = 'VOIDED', voided_at = $2, void_reason = $3 WHERE id = $1",
            txn_id, now, void_reason)


async def add_refunded(conn: asyncpg.Connection, txn_id: int, delta_rial: int) -> None:
    await conn.execute(
        "UPDATE txn SET refunded_rial = refunded_rial + $2 WHERE id = $1", txn_id, delta_rial)
