"""Typed LSP-8583 messages: one frozen class per message type, `encode` and `decode`.

Theory of operation. Tables drive everything, so that the code below is the same for every
message type: `protocol.layout.FIELD_CODECS` (field to attribute and typed value),
`protocol.layout.PRESENCE` (which fields each MTI carries) and `MESSAGE_CLASSES` (which class
each MTI decodes to).
`decode` runs `protocol.spec.decode_fields` (bytes to field values), parses each value with
its codec, then checks the presence rules; `encode` does the reverse and checks the same
rules first, so a message that would not decode is never sent. Every failure, on either
side, is a `DecodeError` naming the field.

The MAC is the message's last field: 64 when no field above 64 is present, else 128.
`encode` writes whatever 8 bytes `mac` holds (zeros by default); to sign, encode, compute the
MAC over `mac_input(raw)` and splice it in with `with_mac`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Final, TypeAlias, overload

from protocol.errors import DecodeError
from protocol.fields import (
    CURRENCY_IRR,
    Mti,
    NetworkCode,
    PosEntryMode,
    ProcessingCode,
    ResponseCode,
)
from protocol.layout import (
    AMOUNT_FIELD,
    CURRENCY_FIELD,
    FIELD_CODECS,
    MAC_FIELDS,
    PRESENCE,
    FieldValueError,
    check_presence,
)
from protocol.spec import (
    BITMAP_BYTES,
    FORMATS,
    MAC_BYTES,
    MTI_BYTES,
    PRIMARY_MAC,
    SECONDARY_MAC,
    FieldValue,
    decode_fields,
    encode_fields,
    mac_field_for,
)
from protocol.values import AdditionalData, AmountBlock, OriginalData

__all__ = [
    "MESSAGE_CLASSES",
    "ZERO_MAC",
    "AuthRequest",
    "AuthResponse",
    "ConfirmAdvice",
    "ConfirmResponse",
    "Message",
    "NetworkRequest",
    "NetworkResponse",
    "Request",
    "Response",
    "ReversalAdvice",
    "ReversalResponse",
    "decode",
    "encode",
    "mac_input",
    "response_to",
    "with_mac",
]

ZERO_MAC: Final = bytes(MAC_BYTES)


# ---------------------------------------------------------------------------------------------
# Message classes. Attribute names come from FIELD_CODECS; `mac` is field 64 or 128.
# In responses the echoed fields default to None only because a format-error response may
# lack them; `response_to` fills them from the request.


@dataclass(frozen=True, slots=True, kw_only=True)
class NetworkRequest:
    MTI: ClassVar[Mti] = Mti.NETWORK_REQUEST
    network_code: NetworkCode
    transmission_time: str
    stan: str
    ksn: bytes
    card_data: bytes | None = None  # sign-on only
    mac: bytes = ZERO_MAC


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthRequest:
    MTI: ClassVar[Mti] = Mti.AUTH_REQUEST
    processing_code: ProcessingCode
    amount: int
    transmission_time: str
    stan: str
    local_time: str
    local_date: str
    pos_entry_mode: PosEntryMode
    ksn: bytes
    card_data: bytes
    additional_data: AdditionalData | None = None
    mac: bytes = ZERO_MAC


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfirmAdvice:
    MTI: ClassVar[Mti] = Mti.CONFIRM_ADVICE
    processing_code: ProcessingCode
    amount: int
    transmission_time: str
    stan: str
    rrn: str
    ksn: bytes
    original: OriginalData
    mac: bytes = ZERO_MAC


@dataclass(frozen=True, slots=True, kw_only=True)
class ReversalAdvice:
    MTI: ClassVar[Mti] = Mti.REVERSAL_ADVICE
    processing_code: ProcessingCode
    amount: int
    transmission_time: str
    stan: str
    ksn: bytes
    original: OriginalData
    rrn: str | None = None  # when the terminal received the 0110
    mac: bytes = ZERO_MAC


@dataclass(frozen=True, slots=True, kw_only=True)
class NetworkResponse:
    MTI: ClassVar[Mti] = Mti.NETWORK_RESPONSE
    response_code: ResponseCode
    network_code: NetworkCode | None = None
    transmission_time: str | None = None
    stan: str | None = None
    ksn: bytes | None = None
    mac: bytes = ZERO_MAC


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthResponse:
    MTI: ClassVar[Mti] = Mti.AUTH_RESPONSE
    response_code: ResponseCode
    processing_code: ProcessingCode | None = None
    amount: int | None = None
    transmission_time: str | None = None
    stan: str | None = None
    ksn: bytes | None = None
    rrn: str | None = None
    approval_code: str | None = None
    amounts: tuple[AmountBlock, ...] = ()
    mac: bytes = ZERO_MAC


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfirmResponse:
    MTI: ClassVar[Mti] = Mti.CONFIRM_RESPONSE
    response_code: ResponseCode
    processing_code: ProcessingCode | None = None
    amount: int | None = None
    transmission_time: str | None = None
    stan: str | None = None
    ksn: bytes | None = None
    rrn: str | None = None
    amounts: tuple[AmountBlock, ...] = ()
    mac: bytes = ZERO_MAC


@dataclass(frozen=True, slots=True, kw_only=True)
class ReversalResponse:
    MTI: ClassVar[Mti] = Mti.REVERSAL_RESPONSE
    response_code: ResponseCode
    processing_code: ProcessingCode | None = None
    amount: int | None = None
    transmission_time: str | None = None
    stan: str | None = None
    ksn: bytes | None = None
    rrn: str | None = None
    mac: bytes = ZERO_MAC


Request: TypeAlias = NetworkRequest | AuthRequest | ConfirmAdvice | ReversalAdvice
Response: TypeAlias = NetworkResponse | AuthResponse | ConfirmResponse | ReversalResponse
Message: TypeAlias = Request | Response

MESSAGE_CLASSES: Final[dict[Mti, type[Message]]] = {
    cls.MTI: cls
    for cls in (
        NetworkRequest,
        AuthRequest,
        ConfirmAdvice,
        ReversalAdvice,
        NetworkResponse,
        AuthResponse,
        ConfirmResponse,
        ReversalResponse,
    )
}


def _attributes(mti: Mti) -> list[tuple[int, str]]:
    """(field, attribute) pairs of a message type, in field order, MAC excluded."""
    return [(n, FIELD_CODECS[n].attribute) for n in sorted(PRESENCE[mti]) if n in FIELD_CODECS]


_ATTRIBUTES: Final = {mti: _attributes(mti) for mti in Mti}

for _mti, _cls in MESSAGE_CLASSES.items():  # the classes and the tables must agree
    assert {f.name for f in dataclasses.fields(_cls)} == {
        attribute for _, attribute in _ATTRIBUTES[_mti]
    } | {"mac"}, _cls


# ---------------------------------------------------------------------------------------------
# Encode and decode


def encode(message: Message) -> bytes:
    """The bytes of `message` (without the frame prefix). Raises `DecodeError` naming the field
    if the message breaks a rule that `decode` would enforce."""
    mti = message.MTI
    fields: dict[int, FieldValue] = {}
    for n, attribute in _ATTRIBUTES[mti]:
        value = getattr(message, attribute)
        if value is None or value == ():
            continue
        try:
            fields[n] = FIELD_CODECS[n].format(value)
        except FieldValueError as exc:
            raise DecodeError(exc.reason, field=n) from None
    if AMOUNT_FIELD in fields:
        fields[CURRENCY_FIELD] = CURRENCY_IRR
    check_presence(
        mti,
        set(fields),
        getattr(message, "response_code", None),
        getattr(message, "network_code", None),
    )
    fields[mac_field_for(set(fields))] = message.mac
    return encode_fields(mti.value, fields)


def decode(raw: bytes | bytearray | memoryview) -> Message:
    """The message in `raw` (one frame body). Raises `DecodeError` and nothing else."""
    parsed = decode_fields(raw)
    try:
        mti = Mti(parsed.mti)
    except ValueError:
        raise DecodeError(f"unknown MTI {parsed.mti}", field=0, position=0) from None
    values: dict[str, Any] = {}
    for n, value in parsed.fields.items():
        position = parsed.positions[n]
        if n in MAC_FIELDS:
            values["mac"] = value
        elif n not in PRESENCE[mti]:
            raise DecodeError(f"field not allowed in {mti.value}", field=n, position=position)
        elif n == CURRENCY_FIELD:
            if value != CURRENCY_IRR:
                raise DecodeError(f"currency must be {CURRENCY_IRR}", field=n, position=position)
        else:
            values[FIELD_CODECS[n].attribute] = _parse(n, value, position)
    try:
        check_presence(
            mti, set(parsed.fields), values.get("response_code"), values.get("network_code")
        )
    except DecodeError as exc:
        raise DecodeError(
            exc.reason, field=exc.field, position=parsed.positions.get(exc.field or 0)
        ) from None
    return MESSAGE_CLASSES[mti](**values)


def _parse(n: int, value: FieldValue, position: int) -> Any:
    try:
        return FIELD_CODECS[n].parse(value)
    except FieldValueError as exc:
        start = position + FORMATS[n].len_digits
        raise DecodeError(exc.reason, field=n, position=start + exc.offset) from None


def mac_input(raw: bytes) -> bytes:
    """The bytes a MAC covers: the message up to, not including, its MAC field.

    The bitmap already has the MAC bit set (as `encode` writes it); this is checked.
    """
    has_secondary = len(raw) > MTI_BYTES and raw[MTI_BYTES] & 0x80
    last_bitmap_byte = MTI_BYTES + BITMAP_BYTES * (2 if has_secondary else 1) - 1
    if len(raw) < last_bitmap_byte + 1 + MAC_BYTES:
        raise DecodeError("message too short to carry a MAC", position=len(raw))
    if not raw[last_bitmap_byte] & 0x01:
        mac_field = SECONDARY_MAC if has_secondary else PRIMARY_MAC
        raise DecodeError("MAC bit not set", field=mac_field, position=last_bitmap_byte)
    return bytes(raw[:-MAC_BYTES])


def with_mac(raw: bytes, mac: bytes) -> bytes:
    """`raw` with its trailing MAC replaced by `mac`."""
    assert len(mac) == MAC_BYTES, "a MAC is 8 bytes"
    return mac_input(raw) + mac


# ---------------------------------------------------------------------------------------------
# Responses

_RESPONSE_CLASSES: Final[dict[type[Request], type[Response]]] = {
    NetworkRequest: NetworkResponse,
    AuthRequest: AuthResponse,
    ConfirmAdvice: ConfirmResponse,
    ReversalAdvice: ReversalResponse,
}


@overload
def response_to(request: NetworkRequest, response_code: ResponseCode) -> NetworkResponse: ...
@overload
def response_to(request: AuthRequest, response_code: ResponseCode) -> AuthResponse: ...
@overload
def response_to(request: ConfirmAdvice, response_code: ResponseCode) -> ConfirmResponse: ...
@overload
def response_to(request: ReversalAdvice, response_code: ResponseCode) -> ReversalResponse: ...
def response_to(request: Request, response_code: ResponseCode) -> Response:
    """The response skeleton: `response_code` plus every field the response echoes (3, 4, 7,
    11, 37, 53, 70 where the request has them; 49 follows 4). Add the rest, such as the RRN,
    approval code or amounts, with `dataclasses.replace`."""
    cls = _RESPONSE_CLASSES[type(request)]
    echoed = {
        attribute: getattr(request, attribute)
        for _, attribute in _ATTRIBUTES[cls.MTI]
        if getattr(request, attribute, None) is not None
    }
    return cls(response_code=response_code, **echoed)
