"""Card checks of a request, in the profile's order: Luhn, club or bank card, known card,
status, expiry, and whether the card may be used at this merchant.

Only Luhn needs no database; it is computed here and the rest is checked, in that order,
in the same database call that uses the card (`switch_club_card` and `switch_bank_card` in
migrations/0007_request_functions.sql). A card is valid through the last day of its expiry
month (`switch_expiry_passed`).
"""

from __future__ import annotations

from protocol.cardblock import CardData
from protocol.errors import SecurityError
from switch.cards import luhn_is_valid
from switch.store import CardArgs


def card_args(card: CardData | None, error: SecurityError | None, pan_hash: bytes
              ) -> CardArgs | None:
    """Field 62 as the database call takes it: None when the request has none; the error
    kind when it did not decrypt (refused at its place in the check order). `pan_hash` is
    the PAN's keyed hash (empty without a PAN: a sign-on carries the terminal ID only)."""
    if error is not None:
        return CardArgs(tid=None, error=error.kind, pan_hash=None, pan_bin=None, expiry=None,
                        luhn_ok=None)
    if card is None:
        return None
    return CardArgs(tid=card.tid, error=None, pan_hash=pan_hash or None, pan_bin=card.pan[:6],
                    expiry=card.expiry, luhn_ok=luhn_is_valid(card.pan))
