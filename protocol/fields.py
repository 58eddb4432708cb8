"""Typed values of the simple LSP-8583 fields: codes as enums, times as checked strings.

The codec layer (`protocol.spec`) has already checked lengths and character sets, so the
parsers here only check meaning: that a code is one we define, that a date and time can exist.
They raise `FieldValueError`, which `protocol.messages` turns into a `DecodeError` naming the
field and the byte position. Structured values (fields 48, 54, 90) are in `protocol.values`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import Enum, StrEnum
from typing import Final, TypeVar

from protocol.errors import DecodeError

__all__ = [
    "AMOUNT_MAX",
    "CURRENCY_IRR",
    "AccountType",
    "AmountType",
    "FieldValueError",
    "Mti",
    "NetworkCode",
    "PosEntryMode",
    "ProcessingCode",
    "ResponseCode",
    "Sign",
    "check_local_date",
    "check_local_time",
    "check_transmission_time",
    "digits",
    "format_amount",
    "format_transmission_time",
    "parse_enum",
    "transmission_datetime",
]

CURRENCY_IRR: Final = "364"
AMOUNT_MAX: Final = 10**12 - 1  # n12


class FieldValueError(ValueError):
    """A field whose bytes are well formed but whose value is not; `offset` is within the field."""

    def __init__(self, reason: str, offset: int = 0):
        super().__init__(reason)
        self.reason = reason
        self.offset = offset


class Mti(StrEnum):
    NETWORK_REQUEST = "0800"
    NETWORK_RESPONSE = "0810"
    AUTH_REQUEST = "0100"
    AUTH_RESPONSE = "0110"
    CONFIRM_ADVICE = "0220"
    CONFIRM_RESPONSE = "0230"
    REVERSAL_ADVICE = "0400"
    REVERSAL_RESPONSE = "0410"


class ProcessingCode(StrEnum):
    PURCHASE_SHAPARAK = "000000"
    PURCHASE_CLUB = "009100"
    PURCHASE_STORE_CREDIT = "009200"
    REFUND_CLUB = "209100"
    REFUND_STORE_CREDIT = "209200"
    REFUND_SHAPARAK = "200000"
    TOP_UP_CLUB = "219100"
    BALANCE_INQUIRY = "310000"
    BALANCE_INQUIRY_CLUB = "319100"
    BALANCE_INQUIRY_STORE_CREDIT = "319200"

    @property
    def is_refund(self) -> bool:
        return self.value.startswith("20")

    @property
    def is_balance_inquiry(self) -> bool:
        """Balance inquiries are single phase: 0100/0110 only."""
        return self.value.startswith("31")


class ResponseCode(StrEnum):
    APPROVED = "00"
    DO_NOT_HONOUR = "05"
    PARTIAL_APPROVAL = "10"
    INVALID_TRANSACTION = "12"
    INVALID_AMOUNT = "13"
    INVALID_CARD_NUMBER = "14"
    ORIGINAL_NOT_FOUND = "25"
    FORMAT_ERROR = "30"
    INSUFFICIENT_FUNDS = "51"
    EXPIRED_CARD = "54"
    NOT_PERMITTED_TO_CARD = "57"
    NOT_PERMITTED_TO_TERMINAL = "58"
    RESTRICTED_CARD = "62"
    SECURITY_VIOLATION = "63"
    TOO_LATE = "68"
    SWITCH_UNAVAILABLE = "91"
    DUPLICATE_TRANSMISSION = "94"
    SYSTEM_MALFUNCTION = "96"
    TIME_OUT_OF_WINDOW = "97"

    @property
    def meaning(self) -> str:
        return _RESPONSE_MEANINGS[self]

    @property
    def is_approval(self) -> bool:
        return self in (ResponseCode.APPROVED, ResponseCode.PARTIAL_APPROVAL)


_RESPONSE_MEANINGS: Final = {
    ResponseCode.APPROVED: "approved",
    ResponseCode.DO_NOT_HONOUR: "do not honour: a rule declined it",
    ResponseCode.PARTIAL_APPROVAL: "partial approval: field 54 type 57 is the approved amount",
    ResponseCode.INVALID_TRANSACTION: "invalid transaction: not allowed in this state",
    ResponseCode.INVALID_AMOUNT: "invalid amount",
    ResponseCode.INVALID_CARD_NUMBER: "invalid card number: fails Luhn or unknown card",
    ResponseCode.ORIGINAL_NOT_FOUND: "original not found",
    ResponseCode.FORMAT_ERROR: "format error: undecodable, missing or malformed field",
    ResponseCode.INSUFFICIENT_FUNDS: "insufficient funds",
    ResponseCode.EXPIRED_CARD: "expired card",
    ResponseCode.NOT_PERMITTED_TO_CARD: "transaction not permitted to this card",
    ResponseCode.NOT_PERMITTED_TO_TERMINAL: "transaction not permitted to this terminal",
    ResponseCode.RESTRICTED_CARD: "restricted (blocked) card",
    ResponseCode.SECURITY_VIOLATION: "security violation: MAC, decryption, replay or TID",
    ResponseCode.TOO_LATE: "too late: the hold expired before the confirm",
    ResponseCode.SWITCH_UNAVAILABLE: "switch temporarily unable; retry the same request",
    ResponseCode.DUPLICATE_TRANSMISSION: "a different request reused an identity",
    ResponseCode.SYSTEM_MALFUNCTION: "system malfunction",
    ResponseCode.TIME_OUT_OF_WINDOW: "transmission time outside the accepted window",
}


class NetworkCode(StrEnum):
    SIGN_ON = "001"
    SIGN_OFF = "002"
    ECHO = "301"


class PosEntryMode(StrEnum):
    KEYED = "012"
    MAGNETIC_STRIPE = "021"
    CHIP = "051"
    CONTACTLESS = "071"


class AccountType(StrEnum):
    NONE = "00"
    CLUB_RIAL = "91"
    STORE_CREDIT = "92"
    POINTS = "93"


class AmountType(StrEnum):
    LEDGER_BALANCE = "01"
    AVAILABLE_BALANCE = "02"
    APPROVED = "57"
    DISCOUNT = "90"
    PAYABLE = "91"
    NETWORK_FEE = "92"
    PSP_FEE = "93"
    CASHBACK = "94"
    POINTS_EARNED = "95"


class Sign(StrEnum):
    CREDIT = "C"
    DEBIT = "D"


E = TypeVar("E", bound=Enum)


def parse_enum(cls: type[E], text: str) -> E:
    try:
        return cls(text)
    except ValueError:
        raise FieldValueError(f"unknown {cls.__name__} {text!r}") from None


def format_amount(amount: int) -> str:
    if not 0 <= amount <= AMOUNT_MAX:
        raise FieldValueError(f"amount {amount} outside 0..{AMOUNT_MAX}")
    return f"{amount:012d}"


def digits(text: str, size: int, what: str) -> str:
    if len(text) != size or not text.isascii() or not text.isdigit():
        raise FieldValueError(f"{what} must be {size} digits")
    return text


# ---------------------------------------------------------------------------------------------
# Times: fields 7, 12, 13. Field 7 has no year, so it stays a string; see transmission_datetime.

_DAYS_IN_MONTH: Final = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)  # Feb 29 may exist


def _check_mmdd(text: str) -> None:
    month, day = int(text[:2]), int(text[2:4])
    if not (1 <= month <= 12 and 1 <= day <= _DAYS_IN_MONTH[month - 1]):
        raise FieldValueError(f"no such date {text[:4]!r}")


def _check_hhmmss(text: str) -> None:
    if not (int(text[:2]) < 24 and int(text[2:4]) < 60 and int(text[4:6]) < 60):
        raise FieldValueError(f"no such time {text!r}")


def check_transmission_time(text: str) -> str:
    digits(text, 10, "transmission time")
    _check_mmdd(text[:4])
    _check_hhmmss(text[4:])
    return text


def check_local_time(text: str) -> str:
    _check_hhmmss(digits(text, 6, "local time"))
    return text


def check_local_date(text: str) -> str:
    _check_mmdd(digits(text, 4, "local date"))
    return text


def format_transmission_time(moment: datetime) -> str:
    """Field 7 (MMDDhhmmss, UTC) for an aware datetime."""
    return moment.astimezone(UTC).strftime("%m%d%H%M%S")


def transmission_datetime(value: str, reference: datetime) -> datetime:
    """The UTC instant field 7 names, in the year that puts it closest to aware `reference`.

    Field 7 has no year; a terminal's clock is near the switch's, so the nearest candidate
    is right even across New Year. Raises `DecodeError` (field 7) for a malformed value or
    a 29 February that no nearby year has.
    """
    assert reference.tzinfo is not None, "reference must be an aware datetime"
    try:
        check_transmission_time(value)
    except FieldValueError as exc:
        raise DecodeError(exc.reason, field=7) from None
    reference = reference.astimezone(UTC)
    month, day, hour, minute, second = (int(value[i : i + 2]) for i in range(0, 10, 2))
    candidates = []
    for year in (reference.year - 1, reference.year, reference.year + 1):
        try:
            candidates.append(datetime(year, month, day, hour, minute, second, tzinfo=UTC))
        except ValueError:  # 29 February of a common year
            continue
    if not candidates:
        raise DecodeError(f"no year near {reference.year} has {value[:4]}", field=7)
    return min(candidates, key=lambda moment: abs(moment - reference))
