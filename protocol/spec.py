"""The LSP-8583 field table, and the byte-level codec built on pyiso8583.

`FIELDS` is the one declarative description of every field we speak; `SPEC` is the same table
in the dictionary form pyiso8583 wants. pyiso8583 does the byte walking (MTI, bitmaps,
fixed and variable fields, truncation, trailing bytes). It is deliberately lenient in places
a switch must not be, so `decode_fields` adds what it lacks:

- the field set is checked from the bitmaps *before* pyiso8583 runs, because a bit for a field
  outside our table would make it raise `KeyError` and bit 65 would make it read a third bitmap;
- a secondary bitmap must announce a field other than the MAC, and the MAC must be field 64
  without a secondary bitmap and field 128 with one (one encoding per message, so the MAC input
  is unambiguous);
- LL/LLL prefixes must be ASCII digits (`int()` would accept " 12", "+12" or "1_2") and non-zero
  (an empty variable field has no meaning here and would give two encodings of one message);
- `n` values must be ASCII digits, `an` letters, digits and spaces, `ans` printable ASCII
  (pyiso8583 only checks that text decodes as ASCII, control characters included).

Every failure is a `protocol.errors.DecodeError` carrying the field (0 = MTI, 1 = bitmaps) and
the byte position in the message; nothing else escapes. `encode_fields` applies the same value
and field-set checks, so what it produces always decodes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

import iso8583

from protocol.errors import DecodeError

__all__ = [
    "FIELDS",
    "FORMATS",
    "MAC_BYTES",
    "SPEC",
    "FieldFormat",
    "FieldValue",
    "Kind",
    "RawMessage",
    "decode_fields",
    "encode_fields",
    "mac_field_for",
]

MAC_BYTES: Final = 8
MTI_BYTES: Final = 4
BITMAP_BYTES: Final = 8
PRIMARY_MAC: Final = 64
SECONDARY_MAC: Final = 128

FieldValue = str | bytes
"""A field as the codec sees it: `str` for n/an/ans fields, `bytes` for b fields."""


class Kind(StrEnum):
    N = "n"  # ASCII digits
    AN = "an"  # letters, digits and space
    ANS = "ans"  # printable ASCII
    B = "b"  # raw bytes


@dataclass(frozen=True, slots=True)
class FieldFormat:
    number: int
    name: str
    kind: Kind
    max_len: int  # the exact length for a fixed field, the maximum for a variable one
    len_digits: int = 0  # 0 fixed, 2 LLVAR, 3 LLLVAR


N, AN, ANS, B = Kind.N, Kind.AN, Kind.ANS, Kind.B

FIELDS: Final = (
    FieldFormat(3, "processing code", N, 6),
    FieldFormat(4, "amount, transaction", N, 12),
    FieldFormat(7, "transmission date and time", N, 10),
    FieldFormat(11, "STAN", N, 6),
    FieldFormat(12, "local time", N, 6),
    FieldFormat(13, "local date", N, 4),
    FieldFormat(22, "POS entry mode", N, 3),
    FieldFormat(37, "retrieval reference number", AN, 12),
    FieldFormat(38, "approval code", AN, 6),
    FieldFormat(39, "response code", AN, 2),
    FieldFormat(48, "additional data, private", ANS, 999, len_digits=3),
    FieldFormat(49, "currency code, transaction", N, 3),
    FieldFormat(53, "key serial number", B, 12),
    FieldFormat(54, "additional amounts", AN, 240, len_digits=3),
    FieldFormat(62, "encrypted card data", B, 512, len_digits=3),
    FieldFormat(64, "MAC", B, MAC_BYTES),
    FieldFormat(70, "network management code", N, 3),
    FieldFormat(90, "original data elements", N, 42),
    FieldFormat(128, "MAC", B, MAC_BYTES),
)
FORMATS: Final = {f.number: f for f in FIELDS}


def _pyiso_field(f: FieldFormat) -> dict[str, Any]:
    return {
        "data_enc": "b" if f.kind is B else "ascii",
        "len_enc": "ascii",
        "len_type": f.len_digits,
        "max_len": f.max_len,
        "desc": f.name,
    }


SPEC: Final[dict[str, dict[str, Any]]] = {
    "h": {"data_enc": "ascii", "len_enc": "ascii", "len_type": 0, "max_len": 0, "desc": "-"},
    "t": {"data_enc": "ascii", "len_enc": "ascii", "len_type": 0, "max_len": 4, "desc": "MTI"},
    "p": {"data_enc": "b", "len_enc": "ascii", "len_type": 0, "max_len": 8, "desc": "Bitmap"},
    "1": {"data_enc": "b", "len_enc": "ascii", "len_type": 0, "max_len": 8, "desc": "Bitmap 2"},
    **{str(f.number): _pyiso_field(f) for f in FIELDS},
}

_CHARSETS: Final = {
    N: re.compile(rb"[0-9]*"),
    AN: re.compile(rb"[0-9A-Za-z ]*"),
    ANS: re.compile(rb"[\x20-\x7e]*"),
}
_DIGITS: Final = _CHARSETS[N]


@dataclass(frozen=True, slots=True)
class RawMessage:
    """A message split into fields but not yet interpreted."""

    mti: str
    fields: dict[int, FieldValue]
    positions: dict[int, int]  # byte offset of each field (its length prefix, if any)


def mac_field_for(numbers: set[int] | frozenset[int]) -> int:
    """The MAC field a message with these other fields must use."""
    return SECONDARY_MAC if any(64 < n < 128 for n in numbers) else PRIMARY_MAC


# ---------------------------------------------------------------------------------------------
# Checks shared by encode and decode


def _check_field_set(numbers: set[int], position: int | None) -> None:
    for n in sorted(numbers):
        if n not in FORMATS:
            raise DecodeError("field not defined by LSP-8583", field=n, position=position)
    mac = mac_field_for(numbers)
    other_mac = PRIMARY_MAC + SECONDARY_MAC - mac
    if mac not in numbers:
        raise DecodeError("MAC field missing", field=mac, position=position)
    if other_mac in numbers:
        raise DecodeError(
            "MAC in the wrong field for this bitmap", field=other_mac, position=position
        )


def _check_value(fmt: FieldFormat, data: bytes, position: int | None) -> None:
    if fmt.len_digits:
        if not data:
            raise DecodeError("variable field of length 0", field=fmt.number, position=position)
    elif len(data) != fmt.max_len:  # only reachable from encode: pyiso8583 checks decode
        raise DecodeError(
            f"length {len(data)}, expected {fmt.max_len}", field=fmt.number, position=position
        )
    if len(data) > fmt.max_len:
        raise DecodeError(
            f"length {len(data)} above {fmt.max_len}", field=fmt.number, position=position
        )
    charset = _CHARSETS.get(fmt.kind)
    if charset is not None and not charset.fullmatch(data):
        raise DecodeError(f"not {fmt.kind} data", field=fmt.number, position=position)


# ---------------------------------------------------------------------------------------------
# Decode


def _bitmap_fields(bitmap: bytes, offset: int) -> set[int]:
    return {
        offset + i * 8 + bit + 1
        for i, byte in enumerate(bitmap)
        for bit in range(8)
        if byte & (0x80 >> bit)
    }


def _scan_header(raw: bytes) -> tuple[str, set[int]]:
    """Check the MTI and bitmaps ourselves before pyiso8583 sees the message."""
    mti = raw[:MTI_BYTES]
    if len(mti) != MTI_BYTES or not _DIGITS.fullmatch(mti):
        raise DecodeError("MTI is not 4 ASCII digits", field=0, position=0)
    primary = raw[MTI_BYTES : MTI_BYTES + BITMAP_BYTES]
    if len(primary) != BITMAP_BYTES:
        raise DecodeError("primary bitmap truncated", field=1, position=MTI_BYTES)
    numbers = _bitmap_fields(primary, 0)
    secondary_at = MTI_BYTES + BITMAP_BYTES
    if 1 in numbers:
        numbers.discard(1)
        secondary = raw[secondary_at : secondary_at + BITMAP_BYTES]
        if len(secondary) != BITMAP_BYTES:
            raise DecodeError("secondary bitmap truncated", field=1, position=secondary_at)
        more = _bitmap_fields(secondary, 64)
        if not more - {SECONDARY_MAC}:
            raise DecodeError("secondary bitmap announces no field", field=1, position=secondary_at)
        numbers |= more
    _check_field_set(numbers, MTI_BYTES)
    return mti.decode("ascii"), numbers


_PSEUDO_FIELDS: Final = {"h": 0, "t": 0, "p": 1}  # pyiso8583's names for header, MTI, bitmap


def _field_number(key: str) -> int:
    return _PSEUDO_FIELDS[key] if key in _PSEUDO_FIELDS else int(key)


def decode_fields(raw: bytes | bytearray | memoryview) -> RawMessage:
    """Split `raw` (one frame body) into fields; raise `DecodeError` if malformed."""
    raw = bytes(raw)
    mti, numbers = _scan_header(raw)
    try:
        _, doc_enc = iso8583.decode(raw, SPEC)
    except iso8583.DecodeError as exc:
        raise DecodeError(exc.msg, field=_field_number(exc.field), position=exc.pos) from None
    position = MTI_BYTES + BITMAP_BYTES * (2 if "1" in doc_enc else 1)
    fields: dict[int, FieldValue] = {}
    positions: dict[int, int] = {}
    for n in sorted(numbers):
        fmt, prefix, data = FORMATS[n], doc_enc[str(n)]["len"], doc_enc[str(n)]["data"]
        if not _DIGITS.fullmatch(prefix):
            raise DecodeError("length prefix is not ASCII digits", field=n, position=position)
        _check_value(fmt, data, position)
        fields[n] = data if fmt.kind is B else data.decode("ascii")
        positions[n] = position
        position += len(prefix) + len(data)
    return RawMessage(mti, fields, positions)


# ---------------------------------------------------------------------------------------------
# Encode


def _as_bytes(fmt: FieldFormat, value: FieldValue) -> bytes:
    if fmt.kind is B:
        assert isinstance(value, bytes), f"field {fmt.number} takes bytes"
        return value
    assert isinstance(value, str), f"field {fmt.number} takes str"
    try:
        return value.encode("ascii")
    except UnicodeEncodeError:
        raise DecodeError(f"not {fmt.kind} data", field=fmt.number) from None


def encode_fields(mti: str, fields: Mapping[int, FieldValue]) -> bytes:
    """Build a message from field values; raise `DecodeError` for any it could not decode."""
    if len(mti) != MTI_BYTES or not mti.isascii() or not mti.isdigit():
        raise DecodeError("MTI is not 4 ASCII digits", field=0)
    _check_field_set(set(fields), None)
    doc: dict[str, str] = {"t": mti}
    for n, value in fields.items():
        fmt = FORMATS[n]
        data = _as_bytes(fmt, value)
        _check_value(fmt, data, None)
        doc[str(n)] = data.hex() if fmt.kind is B else data.decode("ascii")
    try:
        raw, _ = iso8583.encode(doc, SPEC)
    except iso8583.EncodeError as exc:  # our checks above should make this unreachable
        raise DecodeError(exc.msg, field=_field_number(exc.field)) from None
    return bytes(raw)
