"""The request identity's pure parts (switch/request_identity.py): field 7 resolved to the
nearest instant, and the digest that tells a retransmission from a different request."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest

from protocol import messages as m
from protocol.cardblock import CardData
from protocol.errors import DecodeError
from protocol.fields import NetworkCode
from switch.request_identity import digest, resolve_f7, resolved

ECHO = m.NetworkRequest(network_code=NetworkCode.ECHO, transmission_time="1124131500",
                        stan="000001", ksn=bytes(10))


@pytest.mark.parametrize(("f7", "now", "instant"), [
    ("1124131500", datetime(2026, 11, 24, 13, 16, tzinfo=UTC),
     datetime(2026, 11, 24, 13, 15, tzinfo=UTC)),
    # Across New Year's midnight, both ways: the nearest year wins.
    ("1231235958", datetime(2027, 1, 1, 0, 0, 5, tzinfo=UTC),
     datetime(2026, 12, 31, 23, 59, 58, tzinfo=UTC)),
    ("0101000001", datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC),
     datetime(2027, 1, 1, 0, 0, 1, tzinfo=UTC)),
    # 29 February exists only in a leap year of the three.
    ("0229120000", datetime(2027, 3, 1, tzinfo=UTC), datetime(2028, 2, 29, 12, tzinfo=UTC)),
])
def test_field_7_resolves_to_the_nearest_instant(f7: str, now: datetime,
                                                 instant: datetime) -> None:
    assert resolve_f7(f7, now) == resolved(f7, now) == instant


def test_a_date_that_does_not_exist_is_a_format_error() -> None:
    now = datetime(2026, 11, 24, tzinfo=UTC)
    with pytest.raises(DecodeError) as caught:
        resolve_f7("0230120000", now)
    assert caught.value.field == 7
    assert resolved("0230120000", now) is None


def test_the_digest_ignores_what_a_resend_with_a_new_key_changes() -> None:
    card = CardData("CAFE0001", "", "0000")
    same = dataclasses.replace(ECHO, ksn=bytes(9) + b"\x01", mac=b"\x01" * 8,
                               card_data=bytes(16))
    assert digest(same, card, b"h") == digest(ECHO, card, b"h")
    assert digest(dataclasses.replace(ECHO, stan="000002"), card, b"h") \
        != digest(ECHO, card, b"h")
    assert digest(ECHO, card, b"other card") != digest(ECHO, card, b"h")
    assert digest(ECHO, CardData("CAFE0002", "", "0000"), b"h") != digest(ECHO, card, b"h")
