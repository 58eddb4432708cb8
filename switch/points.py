"""Points are spent as store credit: each issuer's points value, and redemption.

An issuer is a merchant or a store network: whoever funded the points (its points_issued
account) and whose store credit they become. Redemption converts any part of one issuer's
points on a card into that issuer's credit, at its value in whole rials per point, in one
database call (`switch_redeem_points`, migrations/0026_points_redeem.sql, which says how the
lots are drawn and how long the credit lasts). The member then spends the credit with a
009200 purchase, like any store credit.

Functions validate their arguments and raise `RegistryError` naming what is wrong; callers
run them in a transaction, so a refusal writes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import asyncpg

from switch.registry import RegistryError

REQUEST_ID_MAX = 64  # characters (points_redemption.request_id's CHECK)


@dataclass(frozen=True, slots=True)
class Issuer:
    """A merchant or a store network, by its code."""

    kind: Literal["merchant", "network"]
    code: str

    def __str__(self) -> str:
        return f"{self.kind} {self.code}"


@dataclass(frozen=True, slots=True)
class Redemption:
    redemption_id: int
    issuer: Issuer
    points: int
    rial: int
    rial_per_point: int
    repeated: bool  # stored before under the same request id: nothing new was posted


async def _issuer_ids(conn: asyncpg.Connection, issuer: Issuer) -> tuple[int | None, int | None]:
    """(merchant id, network id) of `issuer`, exactly one of them set."""
    table = "merchant" if issuer.kind == "merchant" else "store_network"
    found: int | None = await conn.fetchval(f"SELECT id FROM {table} WHERE code = $1",
                                            issuer.code)
    if found is None:
        raise RegistryError(f"no {issuer.kind} {issuer.code!r}")
    return (found, None) if issuer.kind == "merchant" else (None, found)


async def set_value(conn: asyncpg.Connection, issuer: Issuer, rial_per_point: int,
                    max_rial: int, now: datetime) -> None:
    """Set what one point of `issuer` is worth, 1 to `max_rial` (points_value_max_rial)."""
    if not 1 <= rial_per_point <= max_rial:
        raise RegistryError(f"--rial-per-point {rial_per_point:,}: must be 1 to {max_rial:,} "
                            "(points_value_max_rial)")
    merchant_id, network_id = await _issuer_ids(conn, issuer)
    conflict = "merchant_id" if merchant_id is not None else "network_id"
    await conn.execute(
        f"""INSERT INTO points_value (merchant_id, network_id, rial_per_point, updated_at)
            VALUES ($1, $2, $3, $4) ON CONFLICT ({conflict}) DO UPDATE
            SET rial_per_point = EXCLUDED.rial_per_point, updated_at = EXCLUDED.updated_at""",
        merchant_id, network_id, rial_per_point, now)


async def values(conn: asyncpg.Connection) -> list[tuple[Issuer, int, datetime]]:
    """Every issuer's points value: (issuer, rials per point, when it was set)."""
    rows = await conn.fetch(
        """SELECT CASE WHEN v.merchant_id IS NULL THEN 'network' ELSE 'merchant' END AS kind,
                  coalesce(m.code, n.code) AS code, v.rial_per_point, v.updated_at
           FROM points_value v LEFT JOIN merchant m ON m.id = v.merchant_id
           LEFT JOIN store_network n ON n.id = v.network_id ORDER BY kind DESC, code""")
    return [(Issuer(r["kind"], r["code"]), r["rial_per_point"], r["updated_at"]) for r in rows]


async def redeem(conn: asyncpg.Connection, card_id: int, points: int, issuer: Issuer | None,
                 *, request_id: str | None, now: datetime, max_rial: int) -> Redemption:
    """Convert `points` of `issuer`'s points on the card (default: the card's network's)
    into its store credit, at most `max_rial` (points_redeem_max_rial) of it. With a
    `request_id`, a retry of the same redemption is answered as stored, not posted again."""
    if points <= 0:
        raise RegistryError(f"--points {points}: must be a positive number of points")
    if request_id is not None and not (
            0 < len(request_id) <= REQUEST_ID_MAX and request_id.isascii()
            and request_id.isprintable()):
        raise RegistryError(f"--request-id: 1 to {REQUEST_ID_MAX} printable ASCII characters")
    card = await conn.fetchrow(
        """SELECT c.status, n.code FROM card c JOIN store_network n ON n.id = c.network_id
           WHERE c.id = $1""", card_id)
    if card is None:
        raise RegistryError(f"no card with id {card_id}")
    if card["status"] != "active":
        raise RegistryError(f"card {card_id} is {card['status']}")
    issuer = issuer or Issuer("network", card["code"])
    merchant_id, network_id = await _issuer_ids(conn, issuer)
    row = await conn.fetchrow(
        "SELECT * FROM switch_redeem_points($1, $2, $3, $4, $5, $6, $7)",
        card_id, merchant_id, network_id, points, request_id, now, max_rial)
    assert row is not None
    status = row["status"]
    if status in ("ok", "repeated"):
        return Redemption(row["redemption_id"], issuer, row["points"], row["rial"],
                          row["rial_per_point"], repeated=status == "repeated")
    raise RegistryError(_refusal(status, row, points, issuer, card_id, request_id, max_rial))


def _refusal(status: str, row: asyncpg.Record, points: int, issuer: Issuer, card_id: int,
             request_id: str | None, max_rial: int) -> str:
    if status == "no_value":
        return f"no points value is set for {issuer} (admin points-value set)"
    if status == "not_enough":
        return (f"--points {points:,}: card {card_id} has {row['points']:,} points of {issuer} "
                "that can be redeemed")
    if status == "too_much":
        return (f"--points {points:,}: worth {points * row['rial_per_point']:,} rial, above "
                f"the {max_rial:,} one redemption may credit (points_redeem_max_rial)")
    assert status == "conflict", status
    return f"--request-id {request_id!r} was used for another redemption"


async def redeemable(conn: asyncpg.Connection, card_id: int, issuer: Issuer,
                     now: datetime) -> int:
    """The points of `issuer` on the card that can be redeemed at `now`."""
    merchant_id, network_id = await _issuer_ids(conn, issuer)
    found: int = await conn.fetchval(
        """SELECT coalesce(sum(l.remaining) FILTER (WHERE l.ours), 0)::bigint
           FROM card c, switch_points_lots(
               ledger_account_find('card_points', c.id, NULL, NULL), c.network_id,
               ledger_account_find('points_issued', NULL, $2, $3), $4) l
           WHERE c.id = $1""", card_id, merchant_id, network_id, now)
    return found


async def credit_lots(conn: asyncpg.Connection, redemption_id: int
                      ) -> list[tuple[int, datetime | None]]:
    """The store-credit lots a redemption opened: (rials, expiry or None), soonest first."""
    rows = await conn.fetch(
        """SELECT l.amount, l.expires_at FROM ledger_lot l
           JOIN ledger_transfer t ON t.id = l.transfer_id
           WHERE t.ref = 'redeem:' || $1::bigint AND t.unit = 'IRR'
           ORDER BY l.expires_at NULLS LAST, l.id""", redemption_id)
    return [(r["amount"], r["expires_at"]) for r in rows]
