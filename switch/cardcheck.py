"""Card checks of a request, in the profile's order: Luhn, club or bank card, known card,
status, expiry, and whether the card may be used at this merchant."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from protocol.cardblock import CardData
from switch import store
from switch.cards import luhn_is_valid
from switch.context import Ctx
from switch.declines import Decline, Declined


@dataclass(frozen=True, slots=True)
class ClubCard:
    record: store.CardRecord
    pan_hash: bytes


@dataclass(frozen=True, slots=True)
class BankCard:
    pan_hash: bytes
    rewards_card_id: int | None  # the linked member's club card, if any


def expiry_passed(expiry_yymm: str, now: datetime) -> bool:
    """A card is valid through the last day of its expiry month."""
    return int(expiry_yymm) < (now.year % 100) * 100 + now.month


async def club_card(ctx: Ctx, card: CardData) -> ClubCard:
    """The active, unexpired club card of this network named by `card`, or a decline."""
    if not luhn_is_valid(card.pan):
        raise Declined(Decline.INVALID_CARD_NUMBER)
    pan_hash = ctx.pan_hash(card.pan)
    record = await store.club_card(ctx.conn, pan_hash)
    if record is None:
        is_club_bin = await ctx.conn.fetchval(
            "SELECT 1 FROM store_network WHERE club_bin = $1", card.pan[:6])
        raise Declined(Decline.INVALID_CARD_NUMBER if is_club_bin
                       else Decline.NOT_PERMITTED_TO_CARD, "not a club card")
    if record.status == "blocked":
        raise Declined(Decline.RESTRICTED_CARD)
    if record.status == "expired" or expiry_passed(record.expiry, ctx.now):
        raise Declined(Decline.EXPIRED_CARD)
    if card.expiry != record.expiry:
        raise Declined(Decline.INVALID_CARD_NUMBER, "expiry does not match the card")
    if ctx.terminal.merchant_network_id != record.network_id:
        raise Declined(Decline.NOT_PERMITTED_TO_TERMINAL, "card of another network")
    return ClubCard(record, pan_hash)


async def bank_card(ctx: Ctx, card: CardData) -> BankCard:
    """A Shetab card: Luhn, not one of our club cards, not expired."""
    if not luhn_is_valid(card.pan):
        raise Declined(Decline.INVALID_CARD_NUMBER)
    is_club_bin = await ctx.conn.fetchval(
        "SELECT 1 FROM store_network WHERE club_bin = $1", card.pan[:6])
    if is_club_bin:
        raise Declined(Decline.NOT_PERMITTED_TO_CARD, "a club card cannot pay over Shaparak")
    if expiry_passed(card.expiry, ctx.now):
        raise Declined(Decline.EXPIRED_CARD)
    pan_hash = ctx.pan_hash(card.pan)
    return BankCard(pan_hash, await store.linked_member_card(ctx.conn, pan_hash))
