"""Registry operations behind the admin CLI: networks (and their tier policies), merchants,
terminals, members, cards.

Each function validates its arguments before touching the database and raises
`RegistryError` with a message meant for the operator; the CLI runs each command in one
transaction, so a refused command writes nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date

import asyncpg

from switch import cards, ledger
from switch.keys import KeyStore
from switch.pricing import FeePlan
from switch.tiers import Threshold, TierPolicy

_CODE = re.compile(r"^[a-z0-9][a-z0-9-]{1,31}$")
_TID = re.compile(r"^[0-9A-Z]{8}$")
_HEX8 = re.compile(r"^[0-9A-F]{8}$")
_MOBILE = re.compile(r"^09[0-9]{9}$")


class RegistryError(Exception):
    """A refused admin command; the message names what is wrong."""


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise RegistryError(message)


async def _id_of(conn: asyncpg.Connection, table: str, column: str, value: object) -> int:
    found = await conn.fetchval(f"SELECT id FROM {table} WHERE {column} = $1", value)
    _require(found is not None, f"no {table.replace('_', ' ')} with {column} {value!r}")
    assert isinstance(found, int)
    return found


async def add_network(conn: asyncpg.Connection, code: str, name: str, club_bin: str) -> int:
    _require(bool(_CODE.match(code)), f"network code {code!r}: 2-32 of a-z, 0-9, '-'")
    _require(len(club_bin) == 6 and club_bin.isdigit(), f"club BIN {club_bin!r}: six digits")
    _require(0 < len(name) <= 200, "network name: 1 to 200 characters")
    taken = await conn.fetchval(
        "SELECT code FROM store_network WHERE code = $1 OR club_bin = $2", code, club_bin)
    _require(taken is None, f"network code or BIN already used (by {taken!r})")
    network_id: int = await conn.fetchval(
        "INSERT INTO store_network (code, name, club_bin) VALUES ($1, $2, $3) RETURNING id",
        code, name, club_bin)
    return network_id


async def add_merchant(
    conn: asyncpg.Connection, *, code: str, name: str, trade: str, sheba: str,
    network: str | None, fees: FeePlan, shaparak_fee_exempt: bool = False,
) -> int:
    _require(bool(_CODE.match(code)), f"merchant code {code!r}: 2-32 of a-z, 0-9, '-'")
    _require(0 < len(name) <= 200, "merchant name: 1 to 200 characters")
    _require(0 < len(trade) <= 64, "trade: 1 to 64 characters")
    _require(cards.sheba_is_valid(sheba), f"Sheba {sheba!r} is not a valid IR IBAN (mod 97)")
    problem = fees.problem()
    _require(problem is None, str(problem))
    network_id = None if network is None else await _id_of(conn, "store_network", "code", network)
    _require(await conn.fetchval("SELECT 1 FROM merchant WHERE code = $1", code) is None,
             f"merchant code {code!r} already used")
    merchant_id: int = await conn.fetchval(
        """INSERT INTO merchant (network_id, code, name, trade, sheba, fee_bp, fee_fixed_rial,
                                 fee_min_rial, fee_max_rial, shaparak_fee_exempt)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id""",
        network_id, code, name, trade, sheba, fees.bp, fees.fixed_rial, fees.min_rial,
        fees.max_rial, shaparak_fee_exempt)
    return merchant_id


async def set_tier_policy(conn: asyncpg.Connection, network: str, policy: TierPolicy) -> bool:
    """Make `policy` the network's tier policy, all of it (points not given are cleared);
    True if the network had none before."""
    network_id = await _id_of(conn, "store_network", "code", network)
    steps = (policy.bronze, policy.silver, policy.gold)
    had = await conn.fetchval(
        "SELECT 1 FROM tier_policy WHERE network_id = $1 FOR UPDATE", network_id)
    await conn.execute(
        """INSERT INTO tier_policy (network_id, bronze_spend_rial, silver_spend_rial,
                                    gold_spend_rial, bronze_points, silver_points, gold_points)
           VALUES ($1, $2, $3, $4, $5, $6, $7)
           ON CONFLICT (network_id) DO UPDATE SET
               bronze_spend_rial = EXCLUDED.bronze_spend_rial,
               silver_spend_rial = EXCLUDED.silver_spend_rial,
               gold_spend_rial = EXCLUDED.gold_spend_rial,
               bronze_points = EXCLUDED.bronze_points, silver_points = EXCLUDED.silver_points,
               gold_points = EXCLUDED.gold_points""",
        network_id, *(t.spend_rial for t in steps), *(t.points for t in steps))
    return had is None


async def tier_thresholds(conn: asyncpg.Connection, network: str
                          ) -> tuple[Threshold, Threshold, Threshold] | None:
    """The network's bronze, silver and gold thresholds as stored (not re-validated: a row
    inserted by hand may break the points order, and is still shown), or None."""
    network_id = await _id_of(conn, "store_network", "code", network)
    row = await conn.fetchrow("SELECT * FROM tier_policy WHERE network_id = $1", network_id)
    if row is None:
        return None
    bronze, silver, gold = (Threshold(row[f"{name}_spend_rial"], row[f"{name}_points"])
                            for name in ("bronze", "silver", "gold"))
    return bronze, silver, gold


async def clear_tier_policy(conn: asyncpg.Connection, network: str) -> None:
    """Remove the network's tier policy: its tiers then stay as they are."""
    network_id = await _id_of(conn, "store_network", "code", network)
    removed = await conn.fetchval(
        "DELETE FROM tier_policy WHERE network_id = $1 RETURNING 1", network_id)
    _require(removed is not None, f"network {network!r} has no tier policy")


async def set_status(conn: asyncpg.Connection, table: str, key_column: str, key: object,
                     status: str, allowed: tuple[str, ...]) -> None:
    _require(status in allowed, f"status {status!r}: one of {', '.join(allowed)}")
    row_id = await _id_of(conn, table, key_column, key)
    await conn.execute(f"UPDATE {table} SET status = $1 WHERE id = $2", status, row_id)


async def register_bdk(conn: asyncpg.Connection, bdk_id: str, label: str) -> None:
    _require(bool(_HEX8.match(bdk_id)), f"BDK ID {bdk_id!r}: 8 upper-case hex digits")
    await conn.execute("INSERT INTO bdk (id, label) VALUES ($1, $2)", bdk_id, label)


@dataclass(frozen=True)
class NewTerminal:
    terminal_id: int
    tid: str
    initial_key_id: str  # 16 hex digits: BDK ID || derivation ID


async def add_terminal(
    conn: asyncpg.Connection, *, tid: str, merchant: str, bdk_id: str,
    hold_timeout_s: int | None,
) -> NewTerminal:
    _require(bool(_TID.match(tid)), f"TID {tid!r}: exactly 8 of 0-9, A-Z")
    _require(hold_timeout_s is None or 1 <= hold_timeout_s <= 86_400,
             "hold timeout: 1 to 86400 seconds")
    merchant_id = await _id_of(conn, "merchant", "code", merchant)
    status = await conn.fetchval("SELECT status FROM bdk WHERE id = $1", bdk_id)
    _require(status == "active", f"BDK {bdk_id!r} is not registered and active")
    _require(await conn.fetchval("SELECT 1 FROM terminal WHERE tid = $1", tid) is None,
             f"TID {tid!r} already used")
    # The derivation ID numbers devices under one BDK: the next free one.
    derivation: int = await conn.fetchval(
        """SELECT coalesce(max(('x' || derivation_id)::bit(32)::bigint), 0) + 1
           FROM terminal WHERE bdk_id = $1""", bdk_id)
    _require(derivation <= 0xFFFFFFFF, f"BDK {bdk_id} has no derivation IDs left")
    derivation_id = f"{derivation:08X}"
    terminal_id: int = await conn.fetchval(
        """INSERT INTO terminal (tid, merchant_id, bdk_id, derivation_id, hold_timeout_s)
           VALUES ($1, $2, $3, $4, $5) RETURNING id""",
        tid, merchant_id, bdk_id, derivation_id, hold_timeout_s)
    return NewTerminal(terminal_id, tid, bdk_id + derivation_id)


@dataclass(frozen=True)
class MemberProfile:
    first_name: str
    last_name: str
    mobile: str
    birth_date: date | None = None
    gender: str = "unspecified"
    city: str = ""
    occupation: str = ""
    tags: tuple[str, ...] = ()

    def validate(self) -> None:
        _require(0 < len(self.first_name) <= 100 and 0 < len(self.last_name) <= 100,
                 "first and last name: 1 to 100 characters each")
        _require(bool(_MOBILE.match(self.mobile)), f"mobile {self.mobile!r}: 09 and 9 digits")
        _require(self.gender in ("female", "male", "unspecified"),
                 f"gender {self.gender!r}: female, male or unspecified")
        _require(all(0 < len(t) <= 32 for t in self.tags), "tags: 1 to 32 characters each")


async def add_member(conn: asyncpg.Connection, network: str, profile: MemberProfile) -> int:
    profile.validate()
    network_id = await _id_of(conn, "store_network", "code", network)
    taken = await conn.fetchval(
        "SELECT 1 FROM member WHERE network_id = $1 AND mobile = $2", network_id, profile.mobile)
    _require(taken is None, f"mobile {profile.mobile} already belongs to a member")
    member_id: int = await conn.fetchval(
        """INSERT INTO member (network_id, first_name, last_name, mobile, birth_date, gender,
                               city, occupation, tags)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id""",
        network_id, profile.first_name, profile.last_name, profile.mobile, profile.birth_date,
        profile.gender, profile.city, profile.occupation, list(profile.tags))
    return member_id


@dataclass(frozen=True)
class IssuedCard:
    card_id: int
    pan: str  # shown once to the operator; never stored
    expiry: str


async def issue_card(
    conn: asyncpg.Connection, keys: KeyStore, *, member_id: int, expiry: str,
    pan: str | None = None, replaces_id: int | None = None,
) -> IssuedCard:
    """Issue a club card in the member's network BIN range (random PAN unless given)."""
    _require(cards.is_valid_expiry(expiry), f"expiry {expiry!r}: YYMM")
    row = await conn.fetchrow(
        """SELECT m.network_id, n.club_bin FROM member m
           JOIN store_network n ON n.id = m.network_id WHERE m.id = $1""", member_id)
    _require(row is not None, f"no member with id {member_id}")
    assert row is not None
    if pan is None:
        pan = await _unused_pan(conn, keys, row["club_bin"])
    _require(cards.luhn_is_valid(pan) and len(pan) == cards.PAN_DIGITS,
             "PAN must be 16 digits with a valid Luhn check digit")
    _require(pan.startswith(row["club_bin"]), "PAN is outside the network's club BIN")
    card_id: int = await conn.fetchval(
        """INSERT INTO card (network_id, member_id, pan_hash, pan_bin, pan_last4, expiry,
                             replaces_id)
           VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id""",
        row["network_id"], member_id, keys.pan_hash(pan), pan[:6], pan[-4:], expiry, replaces_id)
    return IssuedCard(card_id, pan, expiry)


async def _unused_pan(conn: asyncpg.Connection, keys: KeyStore, club_bin: str) -> str:
    for _ in range(100):  # a collision in 10^9 numbers is rare; 100 misses means a full range
        pan = cards.new_club_pan(club_bin)
        used = await conn.fetchval("SELECT 1 FROM card WHERE pan_hash = $1", keys.pan_hash(pan))
        if used is None:
            return pan
    raise RegistryError(f"no free PAN found in BIN {club_bin}")


async def renew_card(conn: asyncpg.Connection, keys: KeyStore, card_id: int, expiry: str
                     ) -> IssuedCard:
    """A new card for the same member; the old one is blocked. Balances stay on the old
    card's accounts until moved by the operator (see the README)."""
    member_id = await conn.fetchval("SELECT member_id FROM card WHERE id = $1", card_id)
    _require(member_id is not None, f"no card with id {card_id}")
    issued = await issue_card(conn, keys, member_id=member_id, expiry=expiry, replaces_id=card_id)
    await conn.execute("UPDATE card SET status = 'blocked' WHERE id = $1", card_id)
    return issued


async def link_bank_card(conn: asyncpg.Connection, keys: KeyStore, member_id: int, pan: str
                         ) -> int:
    _require(len(pan) == cards.PAN_DIGITS and cards.luhn_is_valid(pan),
             "bank card PAN must be 16 digits with a valid Luhn check digit")
    _require(await conn.fetchval("SELECT 1 FROM member WHERE id = $1", member_id) is not None,
             f"no member with id {member_id}")
    club = await conn.fetchval("SELECT 1 FROM store_network WHERE club_bin = $1", pan[:6])
    _require(club is None, "that PAN is a club card, not a bank card")
    taken = await conn.fetchval("SELECT 1 FROM bank_card WHERE pan_hash = $1", keys.pan_hash(pan))
    _require(taken is None, "that bank card is already linked to a member")
    bank_card_id: int = await conn.fetchval(
        """INSERT INTO bank_card (member_id, pan_hash, pan_bin, pan_last4)
           VALUES ($1, $2, $3, $4) RETURNING id""",
        member_id, keys.pan_hash(pan), pan[:6], pan[-4:])
    return bank_card_id


async def credit_card_online(conn: asyncpg.Connection, card_id: int, amount_rial: int,
                             ref: str | None = None) -> int:
    """An internet top-up: money arrived in the settlement account for this card."""
    _require(amount_rial > 0, "amount must be a positive number of rials")
    _require(amount_rial <= 10**12 - 1, "amount above 999,999,999,999 rials")
    row = await conn.fetchrow(
        "SELECT network_id, status FROM card WHERE id = $1", card_id)
    _require(row is not None, f"no card with id {card_id}")
    assert row is not None
    _require(row["status"] == "active", f"card {card_id} is {row['status']}")
    bank = await ledger.account_id(conn, ledger.settlement_bank(row["network_id"]))
    rial = await ledger.account_id(conn, ledger.card_rial(card_id))
    result = await ledger.transfer(
        conn, ledger.Unit.IRR, "topup_online", [(bank, amount_rial), (rial, -amount_rial)], ref)
    assert result.ok and result.transfer_id is not None
    return result.transfer_id
