"""The switch's calls into the database (the SQL side is migrations/0007_request_functions.sql).

A request is one call of `switch_handle`, in its own implicit transaction: it locks the
device, finds a stored answer or checks and processes the new request, and stores and
returns its outcome. The argument tuples below are the SQL composite types of the same names
(asyncpg encodes a tuple as a composite, field by field, so their order is the SQL order).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import asyncpg

from protocol.fields import ResponseCode
from switch import ledger
from switch.declines import Decline
from switch.pricing import Quote


class RequestArgs(NamedTuple):
    """switch_request: what every request brings."""

    bdk_id: str  # the device's initial key ID, hex: BDK ID ...
    derivation_id: str  # ... and derivation ID
    mti: str
    stan: str
    transmission_f7: str
    transmitted_at: datetime | None  # None: field 7 names no real date (answered 30)
    digest: bytes
    ksn: bytes
    ksn_counter: int
    fresh: bool  # field 7 is within the accepted clock skew
    now: datetime
    hold_timeout_s: int  # the switch's default; a terminal's own setting wins


class CardArgs(NamedTuple):
    """switch_card: field 62 as the switch read it."""

    tid: str | None
    error: str | None  # why field 62 did not decrypt (a SecurityError kind)
    pan_hash: bytes | None
    pan_bin: str | None
    expiry: str | None
    luhn_ok: bool | None


class AuthArgs(NamedTuple):
    """switch_auth: a 0100's own data and its price."""

    kind: str
    processing_code: str
    amount: int
    partial_ok: bool
    original_rrn: str | None
    refund_of: str | None
    bank_window: timedelta
    basis: str | None  # JSON: what `quote` was priced on; None: not priced yet
    quote: str | None  # JSON: pricing.Quote.to_json()
    pricing: str | None  # JSON: campaign_pricing.pricing_json(); None without campaigns


class AdviceArgs(NamedTuple):
    """switch_advice: a 0220's or 0400's own data."""

    processing_code: str
    amount: int
    rrn: str | None
    original_stan: str
    original_transmitted_at: datetime | None  # None: field 90's field 7 is no real date


class Refused(Exception):  # noqa: N818  (control flow: the call wrote nothing)
    """A refusal (security, clock window, format): the call wrote nothing."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class PriceAgain(Exception):  # noqa: N818  (control flow: the call wrote nothing)
    """The quote was priced on another basis than the database sees; `basis` is the right
    one. The call wrote nothing."""

    def __init__(self, basis: dict[str, Any]) -> None:
        super().__init__("price again")
        self.basis = basis


@dataclass(frozen=True, slots=True)
class Clawback:
    """What a refund takes back of the store credit (rials) and points its purchase earned:
    in the 0110 what it owes if confirmed now, in the 0230 what it took."""

    credit: int
    points: int


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the database decided for a request (request_log.result); with the request, all
    that its response is built from."""

    name: str  # a ResponseCode name; a decline's is its Decline name
    rrn: str | None
    kind: str | None
    quote: Quote | None
    rewards: bool
    approved: int | None
    balances: dict[str, ledger.Balance]
    clawback: Clawback | None = None  # a refund's, when its purchase earned credit or points

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Outcome:
        quote, clawback = data.get("quote"), data.get("clawback")
        return cls(
            name=data["outcome"], rrn=data.get("rrn"), kind=data.get("kind"),
            quote=None if quote is None else Quote.from_json(quote),
            rewards=data.get("rewards", False), approved=data.get("approved"),
            balances={k: ledger.Balance(*v) for k, v in data.get("balances", {}).items()},
            clawback=None if clawback is None else Clawback(**clawback))

    @property
    def decline(self) -> Decline | None:
        return Decline.__members__.get(self.name)

    @property
    def response_code(self) -> ResponseCode:
        decline = self.decline
        return ResponseCode[self.name] if decline is None else decline.response_code


@dataclass(frozen=True, slots=True)
class Answer:
    """`stored`: the identity was seen before; `digest` and `ksn` are the stored request's,
    and its answer is `outcome`, or `response` (bytes) for rows stored before 0007."""

    stored: bool
    outcome: Outcome | None
    digest: bytes | None
    ksn: bytes | None
    response: bytes | None


async def handle(conn: asyncpg.Connection, request: RequestArgs, card: CardArgs | None,
                 auth: AuthArgs | None, advice: AdviceArgs | None) -> Answer:
    """One request's database work (see the module docstring). Raises `Refused` or
    `PriceAgain` when the call wrote nothing; a late decline (`_late_decline`) is answered
    like any decline, but nothing of it is stored."""
    try:
        row = await conn.fetchrow("SELECT * FROM switch_handle($1, $2, $3, $4)",
                                  request, card, auth, advice)
    except asyncpg.RaiseError as exc:
        decline = _late_decline(exc)
        if decline is None:
            raise
        return Answer(False, Outcome.from_json({"outcome": decline.name}), None, None, None)
    assert row is not None
    if row["refused"] is not None:
        raise Refused(row["refused"])
    result = row["result"]
    outcome = None if result is None else json.loads(result)
    if outcome is not None and outcome["outcome"] == "PRICE_AGAIN":
        raise PriceAgain(outcome["basis"])
    return Answer(row["stored"], None if outcome is None else Outcome.from_json(outcome),
                  row["digest"], row["ksn"], row["response"])


def _late_decline(exc: asyncpg.RaiseError) -> Decline | None:
    """A decline the database could tell only after the request wrote: it raised, which
    undid the request (nothing stored, not even the request log), naming the decline in the
    detail as `decline:NAME`. The one case: a refund's reversal whose budgets were granted
    since (migrations/0024_refund_mirror.sql)."""
    detail = exc.detail or ""
    prefix, _, name = detail.partition(":")
    return Decline.__members__.get(name) if prefix == "decline" else None


async def device_is_active(conn: asyncpg.Connection, initial_key_id: bytes) -> bool:
    """Whether the device is registered and active, with an active BDK (read only)."""
    found = await conn.fetchval(
        """SELECT 1 FROM terminal t JOIN bdk b ON b.id = t.bdk_id AND b.status = 'active'
           WHERE t.bdk_id = $1 AND t.derivation_id = $2 AND t.status = 'active'""",
        initial_key_id[:4].hex().upper(), initial_key_id[4:].hex().upper())
    return found is not None


async def sweep(conn: asyncpg.Connection, now: datetime, limit: int) -> int:
    """Void up to `limit` expired PENDING transactions (one transaction); how many."""
    swept: int = await conn.fetchval("SELECT switch_sweep($1, $2)", now, limit)
    return swept


async def expire_lots(conn: asyncpg.Connection, now: datetime, limit: int) -> int:
    """Expire up to `limit` store-credit and points lots due at `now` (one transaction);
    how many (migrations/0014_lot_expiry.sql)."""
    expired: int = await conn.fetchval("SELECT switch_expire_lots($1, $2)", now, limit)
    return expired


async def sweep_tiers(conn: asyncpg.Connection, now: datetime, limit: int,
                      interval: timedelta) -> int:
    """Review the tiers of up to `limit` cards not reviewed within `interval` before `now`
    (one transaction); how many (migrations/0018_tier_review_interval.sql)."""
    reviewed: int = await conn.fetchval("SELECT switch_sweep_tiers($1, $2, $3)",
                                        now, limit, interval)
    return reviewed
