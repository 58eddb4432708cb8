"""The double-entry ledger's Python API (the SQL side is migrations/0002_ledger.sql).

Every call takes an open connection and does its work in one round trip through a SQL
function, so callers decide the transaction boundary: one request per transaction today,
many requests per transaction with group commit later. Expected outcomes (not enough funds,
a hold already resolved, a hold that timed out) come back as a `Status`; only programmer
errors (unbalanced entries, unknown accounts) raise.

Amounts are integer rials (unit IRR) or points (unit PTS). An entry's amount is signed:
debit > 0, credit < 0. Accounts that hold what the network owes a cardholder must never go
negative; the database enforces that (see the migrations), this module only reports it.
Only those accounts keep running totals (under a row lock); every other account's balance
is the sum of its entries, so busy accounts such as fee income are never a lock to queue on
(migration 0006).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg


class Unit(enum.StrEnum):
    IRR = "IRR"
    PTS = "PTS"


class Kind(enum.StrEnum):
    CARD_RIAL = "card_rial"              # the network owes the cardholder these rials
    CARD_CREDIT = "card_credit"          # store credit owed by one issuer (store or network)
    CARD_POINTS = "card_points"          # the cardholder's points
    MERCHANT_PAYABLE = "merchant_payable"  # the network owes the merchant
    CREDIT_ISSUED = "credit_issued"      # an issuer's obligation for the credit it granted
    POINTS_ISSUED = "points_issued"      # the other side of points granted
    FEE_INCOME = "fee_income"            # the network's fee income
    SETTLEMENT_BANK = "settlement_bank"  # money in the network's settlement account
    DISCOUNT_FUNDING = "discount_funding"  # discounts paid by the network or a sponsor


# Card balances are what the network owes: a debit may never take them below zero.
_NO_OVERDRAFT = {Kind.CARD_RIAL, Kind.CARD_CREDIT, Kind.CARD_POINTS}
_POINTS = {Kind.CARD_POINTS, Kind.POINTS_ISSUED}


class Status(enum.StrEnum):
    OK = "ok"
    EXCEEDS_CREDITS = "exceeds_credits"    # not enough available balance
    NOT_FOUND = "not_found"
    ALREADY_POSTED = "already_posted"
    ALREADY_VOIDED = "already_voided"
    ALREADY_EXPIRED = "already_expired"
    EXPIRED = "expired"                    # a post after the timeout: the hold expired instead
    NOT_EXPIRED = "not_expired"
    EXCEEDS_PENDING = "exceeds_pending"    # a post larger than the hold


@dataclass(frozen=True, slots=True)
class AccountSpec:
    """Names an account; `account_id` creates it on first use."""

    kind: Kind
    card_id: int | None = None
    merchant_id: int | None = None
    network_id: int | None = None
    sponsor: str | None = None

    @property
    def unit(self) -> Unit:
        return Unit.PTS if self.kind in _POINTS else Unit.IRR

    @property
    def key(self) -> str:
        owner = [
            f"{tag}{value}"
            for tag, value in (("c", self.card_id), ("m", self.merchant_id),
                               ("n", self.network_id), ("s", self.sponsor))
            if value is not None
        ]
        assert owner, f"{self.kind} account needs an owner"
        return f"{self.kind}:{':'.join(owner)}"


def card_rial(card_id: int) -> AccountSpec:
    return AccountSpec(Kind.CARD_RIAL, card_id=card_id)


def card_points(card_id: int) -> AccountSpec:
    return AccountSpec(Kind.CARD_POINTS, card_id=card_id)


def card_credit(card_id: int, *, merchant_id: int | None = None,
                network_id: int | None = None) -> AccountSpec:
    """Store credit on a card, usable where its issuer (one store, or a network) says."""
    assert (merchant_id is None) != (network_id is None), "credit has exactly one issuer"
    return AccountSpec(Kind.CARD_CREDIT, card_id=card_id, merchant_id=merchant_id,
                       network_id=network_id)


def merchant_payable(merchant_id: int) -> AccountSpec:
    return AccountSpec(Kind.MERCHANT_PAYABLE, merchant_id=merchant_id)


def credit_issued(*, merchant_id: int | None = None, network_id: int | None = None) -> AccountSpec:
    assert (merchant_id is None) != (network_id is None), "credit has exactly one issuer"
    return AccountSpec(Kind.CREDIT_ISSUED, merchant_id=merchant_id, network_id=network_id)


def points_issued(network_id: int | None = None, *, sponsor: str | None = None) -> AccountSpec:
    """Points granted by a network, or by a sponsor (a bank) whose campaign funds them."""
    assert (network_id is None) != (sponsor is None), "points have exactly one issuer here"
    return AccountSpec(Kind.POINTS_ISSUED, network_id=network_id, sponsor=sponsor)


def fee_income(network_id: int) -> AccountSpec:
    return AccountSpec(Kind.FEE_INCOME, network_id=network_id)


def settlement_bank(network_id: int) -> AccountSpec:
    return AccountSpec(Kind.SETTLEMENT_BANK, network_id=network_id)


def discount_funding(*, network_id: int | None = None, sponsor: str | None = None) -> AccountSpec:
    assert (network_id is None) != (sponsor is None), "a discount has exactly one funder"
    return AccountSpec(Kind.DISCOUNT_FUNDING, network_id=network_id, sponsor=sponsor)


@dataclass(frozen=True, slots=True)
class Balance:
    debits_pending: int
    debits_posted: int
    credits_pending: int
    credits_posted: int

    @property
    def ledger(self) -> int:
        """Credit-normal balance (what a card account owes its holder)."""
        return self.credits_posted - self.debits_posted

    @property
    def available(self) -> int:
        """Ledger balance less pending debits: what can still be spent."""
        return self.ledger - self.debits_pending


@dataclass(frozen=True, slots=True)
class Result:
    status: Status
    transfer_id: int | None

    @property
    def ok(self) -> bool:
        return self.status is Status.OK


async def account_id(conn: asyncpg.Connection, spec: AccountSpec) -> int:
    """The id of the account `spec` names, created on first use."""
    found: int | None = await conn.fetchval(
        "SELECT id FROM ledger_account WHERE key = $1", spec.key)
    if found is not None:
        return found
    found = await conn.fetchval(
        """INSERT INTO ledger_account (key, kind, unit, card_id, merchant_id, network_id,
                                       sponsor, debits_must_not_exceed_credits)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
           ON CONFLICT (key) DO NOTHING RETURNING id""",
        spec.key, spec.kind.value, spec.unit.value, spec.card_id, spec.merchant_id,
        spec.network_id, spec.sponsor, spec.kind in _NO_OVERDRAFT,
    )
    if found is None:  # created concurrently by another transaction, which has committed
        found = await conn.fetchval("SELECT id FROM ledger_account WHERE key = $1", spec.key)
    assert found is not None
    return found


async def balance(conn: asyncpg.Connection, account: int) -> Balance:
    row = await conn.fetchrow(
        """SELECT debits_pending, debits_posted, credits_pending, credits_posted
           FROM ledger_account_balance($1)""",
        account,
    )
    assert row is not None, f"no ledger account {account}"
    return Balance(**dict(row))


async def transfer(
    conn: asyncpg.Connection, unit: Unit, code: str, entries: Sequence[tuple[int, int]],
    ref: str | None = None,
) -> Result:
    """An immediate transfer of balanced (account id, signed amount) entries."""
    assert sum(amount for _, amount in entries) == 0, "entries must balance"
    row = await conn.fetchrow(
        "SELECT status, transfer_id FROM ledger_transfer_create($1, $2, $3, $4, $5)",
        unit.value, code, ref, [a for a, _ in entries], [m for _, m in entries],
    )
    return _result(row)


async def hold(
    conn: asyncpg.Connection, unit: Unit, code: str, *, debit: int, credit: int, amount: int,
    timeout_at: datetime, ref: str | None = None,
) -> Result:
    """A pending transfer: `amount` leaves `debit`'s available balance until resolved."""
    assert amount > 0
    row = await conn.fetchrow(
        "SELECT status, transfer_id FROM ledger_hold($1, $2, $3, $4, $5, $6, $7)",
        unit.value, code, ref, debit, credit, amount, timeout_at,
    )
    return _result(row)


async def post(
    conn: asyncpg.Connection, pending_id: int, now: datetime, amount: int | None = None,
) -> Result:
    """Post all (amount None) or part of a hold; the rest is released."""
    return await _resolve(conn, pending_id, "post", amount, now)


async def void(conn: asyncpg.Connection, pending_id: int, now: datetime) -> Result:
    return await _resolve(conn, pending_id, "void", None, now)


async def expire(conn: asyncpg.Connection, pending_id: int, now: datetime) -> Result:
    return await _resolve(conn, pending_id, "expire", None, now)


async def expire_due(conn: asyncpg.Connection, now: datetime, limit: int) -> list[int]:
    """Expire up to `limit` holds past their timeout; returns their ids. Safe to run in
    several processes at once (rows being resolved elsewhere are skipped)."""
    assert limit > 0
    rows = await conn.fetch("SELECT * FROM ledger_expire_due($1, $2)", now, limit)
    return [r[0] for r in rows]


async def _resolve(
    conn: asyncpg.Connection, pending_id: int, action: str, amount: int | None, now: datetime,
) -> Result:
    row = await conn.fetchrow(
        "SELECT status, transfer_id FROM ledger_resolve($1, $2, $3, $4)",
        pending_id, action, amount, now,
    )
    return _result(row)


def _result(row: asyncpg.Record | None) -> Result:
    assert row is not None
    return Result(Status(row["status"]), row["transfer_id"])

