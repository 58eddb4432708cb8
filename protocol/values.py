"""Structured field values: field 48 (TLV options), field 54 (amount blocks), field 90.

Each type encodes to and decodes from the field's text. Decoding raises `FieldValueError`
with the offset of the fault inside the field; `protocol.messages` adds the field number and
the message position.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from typing import Final, TypeVar

from protocol.fields import (
    CURRENCY_IRR,
    AccountType,
    AmountType,
    FieldValueError,
    Mti,
    Sign,
    check_transmission_time,
    digits,
    format_amount,
    parse_enum,
)

__all__ = [
    "AMOUNT_BLOCKS_MAX",
    "AMOUNT_BLOCK_SIZE",
    "AdditionalData",
    "AmountBlock",
    "OriginalData",
    "decode_amounts",
    "encode_amounts",
]

# ---------------------------------------------------------------------------------------------
# Field 90


@dataclass(frozen=True, slots=True)
class OriginalData:
    """Field 90: the request a 0220 or 0400 refers to (its MTI, STAN and field 7)."""

    mti: Mti
    stan: str
    transmission_time: str

    def encode(self) -> str:
        digits(self.stan, 6, "original STAN")
        check_transmission_time(self.transmission_time)
        return f"{self.mti.value}{self.stan}{self.transmission_time}{'0' * 22}"

    @classmethod
    def decode(cls, text: str) -> OriginalData:
        if text[20:] != "0" * 22:
            raise FieldValueError("positions 21-42 must be zeros", offset=20)
        try:
            time = check_transmission_time(text[10:20])
        except FieldValueError as exc:
            raise FieldValueError(exc.reason, offset=10) from None
        return cls(parse_enum(Mti, text[:4]), text[4:10], time)


# ---------------------------------------------------------------------------------------------
# Field 54

AMOUNT_BLOCK_SIZE: Final = 20
AMOUNT_BLOCKS_MAX: Final = 12
_BLOCK: Final = re.compile(r"(\d\d)(\d\d)(\d{3})([CD])(\d{12})", re.ASCII)


@dataclass(frozen=True, slots=True)
class AmountBlock:
    """One 20-character block of field 54; the currency is always IRR."""

    account_type: AccountType
    amount_type: AmountType
    amount: int  # rials
    sign: Sign = Sign.CREDIT

    def encode(self) -> str:
        amount = format_amount(self.amount)
        return f"{self.account_type.value}{self.amount_type.value}{CURRENCY_IRR}{self.sign}{amount}"

    @classmethod
    def decode(cls, text: str) -> AmountBlock:
        match = _BLOCK.fullmatch(text)
        if match is None:
            raise FieldValueError("amount block is not NN NN NNN C|D N12")
        account, amount_type, currency, sign, amount = match.groups()
        if currency != CURRENCY_IRR:
            raise FieldValueError(f"currency {currency}, expected {CURRENCY_IRR}", offset=4)
        return cls(
            _parse_at(0, AccountType, account),
            _parse_at(2, AmountType, amount_type),
            int(amount),
            Sign(sign),
        )


E = TypeVar("E", bound=Enum)


def _parse_at(offset: int, cls: type[E], text: str) -> E:
    try:
        return parse_enum(cls, text)
    except FieldValueError as exc:
        raise FieldValueError(exc.reason, offset) from None


def encode_amounts(blocks: tuple[AmountBlock, ...]) -> str:
    if len(blocks) > AMOUNT_BLOCKS_MAX:
        raise FieldValueError(f"{len(blocks)} amount blocks, at most {AMOUNT_BLOCKS_MAX}")
    return "".join(block.encode() for block in blocks)


def decode_amounts(text: str) -> tuple[AmountBlock, ...]:
    if len(text) % AMOUNT_BLOCK_SIZE:
        raise FieldValueError(f"length {len(text)} is not a multiple of {AMOUNT_BLOCK_SIZE}")
    if len(text) > AMOUNT_BLOCK_SIZE * AMOUNT_BLOCKS_MAX:  # the spec's max_len already ensures it
        raise FieldValueError(f"more than {AMOUNT_BLOCKS_MAX} amount blocks")
    blocks = []
    for offset in range(0, len(text), AMOUNT_BLOCK_SIZE):
        try:
            blocks.append(AmountBlock.decode(text[offset : offset + AMOUNT_BLOCK_SIZE]))
        except FieldValueError as exc:
            raise FieldValueError(exc.reason, offset=offset + exc.offset) from None
    return tuple(blocks)


# ---------------------------------------------------------------------------------------------
# Field 48: TAG (2) LEN (3 digits) VALUE, repeated

_TAG_PARTIAL: Final = "PA"
_TAG_ORIGINAL: Final = "OR"
_TAG_ITEMS: Final = "IT"
_TLV_HEADER: Final = 5
_RRN_LENGTH: Final = 12


@dataclass(frozen=True, slots=True, kw_only=True)
class AdditionalData:
    """Field 48. Tags we do not know are kept in `unknown`, in order, but mean nothing."""

    partial_approval: bool | None = None  # PA: 1 allowed, 0 not allowed
    original_rrn: str | None = None  # OR: RRN of the purchase a refund refers to
    item_categories: tuple[str, ...] | None = None  # IT: basket category codes
    unknown: tuple[tuple[str, str], ...] = ()

    def encode(self) -> str:
        items: list[tuple[str, str]] = []
        if self.partial_approval is not None:
            items.append((_TAG_PARTIAL, "1" if self.partial_approval else "0"))
        if self.original_rrn is not None:
            items.append((_TAG_ORIGINAL, _check_rrn(self.original_rrn)))
        if self.item_categories is not None:
            items.append((_TAG_ITEMS, _join_categories(self.item_categories)))
        for tag, value in self.unknown:
            if tag in _KNOWN_TAGS or len(tag) != 2:
                raise FieldValueError(f"{tag!r} cannot be an unknown tag")
            items.append((tag, value))
        return "".join(f"{tag}{len(value):03d}{value}" for tag, value in items)

    @classmethod
    def decode(cls, text: str) -> AdditionalData:
        known: dict[str, object] = {}
        unknown: list[tuple[str, str]] = []
        for offset, tag, value in _split_tlv(text):
            if tag not in _KNOWN_TAGS:
                unknown.append((tag, value))
                continue
            attribute, parse = _KNOWN_TAGS[tag]
            if attribute in known:
                raise FieldValueError(f"tag {tag} repeated", offset)
            try:
                known[attribute] = parse(value)
            except FieldValueError as exc:
                raise FieldValueError(exc.reason, offset + _TLV_HEADER) from None
        return cls(**known, unknown=tuple(unknown))  # type: ignore[arg-type]


def _split_tlv(text: str) -> list[tuple[int, str, str]]:
    """(offset, tag, value) of each element, in order."""
    elements, offset = [], 0
    while offset < len(text):
        header = text[offset : offset + _TLV_HEADER]
        if len(header) < _TLV_HEADER:
            raise FieldValueError("TLV header truncated", offset)
        length = header[2:]
        if not (length.isascii() and length.isdigit()):
            raise FieldValueError(f"TLV length {length!r} is not 3 digits", offset + 2)
        end = offset + _TLV_HEADER + int(length)
        if end > len(text):
            raise FieldValueError(f"TLV {header[:2]!r} value runs past the field", offset)
        elements.append((offset, header[:2], text[offset + _TLV_HEADER : end]))
        offset = end
    return elements


def _parse_partial(value: str) -> bool:
    if value not in ("0", "1"):
        raise FieldValueError(f"PA must be 0 or 1, not {value!r}")
    return value == "1"


def _check_rrn(value: str) -> str:
    if len(value) != _RRN_LENGTH or not re.fullmatch(r"[0-9A-Za-z ]+", value, re.ASCII):
        raise FieldValueError(f"OR must be a {_RRN_LENGTH}-character RRN")
    return value


def _split_categories(value: str) -> tuple[str, ...]:
    categories = tuple(value.split(","))
    _join_categories(categories)
    return categories


def _join_categories(categories: tuple[str, ...]) -> str:
    if not categories or any(not c or "," in c for c in categories):
        raise FieldValueError("IT must be non-empty, comma-separated category codes")
    return ",".join(categories)


_KNOWN_TAGS: Final = {
    _TAG_PARTIAL: ("partial_approval", _parse_partial),
    _TAG_ORIGINAL: ("original_rrn", _check_rrn),
    _TAG_ITEMS: ("item_categories", _split_categories),
}
