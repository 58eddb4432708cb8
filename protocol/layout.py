"""Which fields each message type carries, and how each field's value is typed.

Two tables, read by `protocol.messages` for every message type alike:
- `FIELD_CODECS`: for each field, the message attribute it fills and how its text becomes a
  typed value and back (the attribute names are the same in every message class);
- `PRESENCE`: for each MTI, how each field may appear; a field not listed must be absent.
`check_presence` applies `PRESENCE` to a set of present fields, for encode and decode alike.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final

from protocol.errors import DecodeError
from protocol.fields import (
    FieldValueError,
    Mti,
    NetworkCode,
    PosEntryMode,
    ProcessingCode,
    ResponseCode,
    check_local_date,
    check_local_time,
    check_transmission_time,
    digits,
    format_amount,
    parse_enum,
)
from protocol.spec import PRIMARY_MAC, SECONDARY_MAC, FieldValue
from protocol.values import AdditionalData, OriginalData, decode_amounts, encode_amounts

__all__ = [
    "AMOUNT_FIELD",
    "CURRENCY_FIELD",
    "FIELD_CODECS",
    "MAC_FIELDS",
    "PRESENCE",
    "FieldCodec",
    "FieldValueError",
    "Presence",
    "check_presence",
]

# ---------------------------------------------------------------------------------------------
# Field codecs


@dataclass(frozen=True, slots=True)
class FieldCodec:
    attribute: str
    parse: Callable[[Any], Any]  # field value (str or bytes) -> typed value
    format: Callable[[Any], FieldValue]  # typed value -> field value


def _enum_codec(attribute: str, cls: type[Enum]) -> FieldCodec:
    return FieldCodec(attribute, lambda text: parse_enum(cls, text), lambda value: value.value)


def _text_codec(attribute: str, check: Callable[[str], str]) -> FieldCodec:
    return FieldCodec(attribute, check, check)


def _as_is(value: Any) -> Any:
    return value


FIELD_CODECS: Final[dict[int, FieldCodec]] = {
    3: _enum_codec("processing_code", ProcessingCode),
    4: FieldCodec("amount", int, format_amount),
    7: _text_codec("transmission_time", check_transmission_time),
    11: _text_codec("stan", lambda text: digits(text, 6, "STAN")),
    12: _text_codec("local_time", check_local_time),
    13: _text_codec("local_date", check_local_date),
    22: _enum_codec("pos_entry_mode", PosEntryMode),
    37: FieldCodec("rrn", _as_is, _as_is),  # length and charset: protocol.spec
    38: FieldCodec("approval_code", _as_is, _as_is),
    39: _enum_codec("response_code", ResponseCode),
    48: FieldCodec("additional_data", AdditionalData.decode, AdditionalData.encode),
    53: FieldCodec("ksn", _as_is, _as_is),
    54: FieldCodec("amounts", decode_amounts, encode_amounts),
    62: FieldCodec("card_data", _as_is, _as_is),
    70: _enum_codec("network_code", NetworkCode),
    90: FieldCodec("original", OriginalData.decode, OriginalData.encode),
}
AMOUNT_FIELD: Final = 4
CURRENCY_FIELD: Final = 49  # no attribute: always IRR, present exactly when field 4 is
MAC_FIELDS: Final = (PRIMARY_MAC, SECONDARY_MAC)


# ---------------------------------------------------------------------------------------------
# Which fields each message carries


class Presence(Enum):
    MANDATORY = "M"
    CONDITIONAL = "C"  # may be present
    ECHOED = "E"  # copied from the request: mandatory, except in a format-error response
    RESULT = "R"  # response data: absent from a format-error or security-violation response
    SIGN_ON = "S"  # mandatory in a sign-on, absent in other network messages
    WITH_AMOUNT = "A"  # present exactly when field 4 is


M, C, E, R, S, A = Presence  # the table below reads like the one in the profile

PRESENCE: Final[dict[Mti, dict[int, Presence]]] = {
    Mti.NETWORK_REQUEST: {7: M, 11: M, 53: M, 62: S, 70: M},
    Mti.AUTH_REQUEST: {3: M, 4: M, 7: M, 11: M, 12: M, 13: M, 22: M, 48: C, 49: A, 53: M, 62: M},
    Mti.CONFIRM_ADVICE: {3: M, 4: M, 7: M, 11: M, 37: M, 49: A, 53: M, 90: M},
    Mti.REVERSAL_ADVICE: {3: M, 4: M, 7: M, 11: M, 37: C, 49: A, 53: M, 90: M},
    Mti.NETWORK_RESPONSE: {7: E, 11: E, 39: M, 53: E, 70: E},
    Mti.AUTH_RESPONSE: {3: E, 4: E, 7: E, 11: E, 37: C, 38: R, 39: M, 49: A, 53: E, 54: R},
    Mti.CONFIRM_RESPONSE: {3: E, 4: E, 7: E, 11: E, 37: E, 39: M, 49: A, 53: E, 54: R},
    Mti.REVERSAL_RESPONSE: {3: E, 4: E, 7: E, 11: E, 37: C, 39: M, 49: A, 53: E},
}

_NO_RESULT_DATA: Final = (ResponseCode.FORMAT_ERROR, ResponseCode.SECURITY_VIOLATION)


def _field_rule(
    presence: Presence,
    present: set[int],
    response_code: ResponseCode | None,
    network_code: NetworkCode | None,
) -> bool | None:
    """True: the field must be present; False: it must be absent; None: either."""
    if presence is M:
        return True
    if presence is E:
        return None if response_code is ResponseCode.FORMAT_ERROR else True
    if presence is R:
        return False if response_code in _NO_RESULT_DATA else None
    if presence is S:
        return network_code is NetworkCode.SIGN_ON
    if presence is A:
        return AMOUNT_FIELD in present
    return None


def check_presence(
    mti: Mti,
    present: set[int],
    response_code: ResponseCode | None,
    network_code: NetworkCode | None,
) -> None:
    table = PRESENCE[mti]
    for n in sorted(present - set(table) - set(MAC_FIELDS)):
        raise DecodeError(f"field not allowed in {mti.value}", field=n)
    for n, presence in table.items():
        rule = _field_rule(presence, present, response_code, network_code)
        if rule is True and n not in present:
            raise DecodeError(f"mandatory field missing from {mti.value}", field=n)
        if rule is False and n in present:
            raise DecodeError(f"field not allowed in this {mti.value}", field=n)
