"""What identifies a request for idempotency (docs/protocol.md): the instant its field 7
names, and the digest that tells a retransmission from a different request.

The identity is (terminal, STAN, field 7). Field 7 has no year, so it is resolved to the
instant nearest the switch's clock. Under one identity, a request whose digest matches the
stored one gets the stored answer; any other is answered 94. The digest covers every field
but those a terminal changes when it re-sends with a new key (KSN, MAC, field 62's
ciphertext), plus the card inside field 62, by the PAN's keyed hash: never the PAN itself.
Both are pure: the processor computes them before its one database call.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
from datetime import UTC, datetime

from protocol import messages as m
from protocol.cardblock import CardData
from protocol.errors import DecodeError


def resolve_f7(mmddhhmmss: str, now: datetime) -> datetime:
    """Field 7 has no year: take the instant nearest to `now` (the year before, this year or
    the next), so a request sent just before New Year's midnight resolves right."""
    # Decoding has checked the digits make a possible MMDDhhmmss (strptime costs 7 us).
    month, day, hour, minute, second = (int(mmddhhmmss[i:i + 2]) for i in range(0, 10, 2))
    candidates = []
    for year in (now.year - 1, now.year, now.year + 1):
        with contextlib.suppress(ValueError):  # 29 February in a common year
            candidates.append(datetime(year, month, day, hour, minute, second, tzinfo=UTC))
    if not candidates:
        raise DecodeError("transmission time is not a real date", field=7)
    return min(candidates, key=lambda c: abs(c - now))


def resolved(mmddhhmmss: str, now: datetime) -> datetime | None:
    """`resolve_f7`, or None for a date that does not exist near `now` (the database call
    answers that 30 at its place in the check order)."""
    try:
        return resolve_f7(mmddhhmmss, now)
    except DecodeError:
        return None


def digest(request: m.Request, card: CardData | None, pan_hash: bytes) -> bytes:
    """What makes two requests under one identity the same request: every field but the
    KSN, the MAC and the ciphertext (which change when a terminal re-sends with a new key),
    plus the card inside the ciphertext, by its keyed hash."""
    content = [(name, getattr(request, name)) for name in _DIGESTED_FIELDS[type(request)]]
    card_part = b"" if card is None else card.tid.encode() + pan_hash + card.expiry.encode()
    return hashlib.sha256(repr((request.MTI.value, content)).encode() + card_part).digest()


_DIGESTED_FIELDS = {cls: tuple(f.name for f in dataclasses.fields(cls)
                                if f.name not in ("ksn", "mac", "card_data"))
                    for cls in (m.NetworkRequest, m.AuthRequest, m.ConfirmAdvice,
                                m.ReversalAdvice)}
