"""Readable transcripts of exchanges: every field by number and name, field 54 decoded, and
the price breakdown of a purchase.

Only what is safe to show on a screen or in a CI log is rendered: the KSN by its counter
alone, field 62 as what the terminal put in it with the PAN masked (603799******1234), the MAC
as present or not. No key, no full PAN, no ciphertext.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import fields
from typing import Any, Final

from protocol import messages
from protocol.cardblock import CardData, mask_pan
from protocol.dukpt import Ksn
from protocol.fields import AccountType, AmountType, Sign
from protocol.layout import FIELD_CODECS
from protocol.values import AmountBlock

_FIELD_NUMBERS: Final = {codec.attribute: number for number, codec in FIELD_CODECS.items()}

_NAMES: Final = {
    "processing_code": "processing code", "amount": "amount", "transmission_time":
    "transmission time", "stan": "STAN", "local_time": "local time", "local_date":
    "local date", "pos_entry_mode": "POS entry mode", "rrn": "RRN", "approval_code":
    "approval code", "response_code": "response code", "additional_data": "additional data",
    "ksn": "KSN", "amounts": "amounts", "card_data": "card data", "network_code":
    "network code", "original": "original data",
}

_MTI_NAMES: Final = {
    "0800": "network request", "0810": "network response", "0100": "authorisation request",
    "0110": "authorisation response", "0220": "confirm advice", "0230": "confirm response",
    "0400": "reversal advice", "0410": "reversal response",
}

AMOUNT_LABELS: Final = {
    AmountType.LEDGER_BALANCE: "ledger balance", AmountType.AVAILABLE_BALANCE:
    "available balance", AmountType.APPROVED: "approved amount", AmountType.DISCOUNT:
    "discount", AmountType.PAYABLE: "payable", AmountType.NETWORK_FEE: "network fee",
    AmountType.PSP_FEE: "Shaparak fee", AmountType.CASHBACK: "cashback",
    AmountType.POINTS_EARNED: "points earned",
}
ACCOUNT_LABELS: Final = {
    AccountType.NONE: "", AccountType.CLUB_RIAL: "club rial", AccountType.STORE_CREDIT:
    "store credit", AccountType.POINTS: "points",
}
# The price breakdown, in the order a receipt would print it.
PRICE_ORDER: Final = (AmountType.DISCOUNT, AmountType.PAYABLE, AmountType.NETWORK_FEE,
                      AmountType.PSP_FEE, AmountType.CASHBACK, AmountType.POINTS_EARNED)


def signed(block: AmountBlock) -> int:
    return -block.amount if block.sign is Sign.DEBIT else block.amount


def _unit(block: AmountBlock) -> str:
    return "points" if block.account_type is AccountType.POINTS else "rial"


def render_block(block: AmountBlock) -> str:
    account = ACCOUNT_LABELS[block.account_type]
    label = AMOUNT_LABELS[block.amount_type] + (f" ({account})" if account else "")
    return f"{label}: {signed(block):,} {_unit(block)}"


def _value(attribute: str, value: Any, card: CardData | None) -> str | list[str]:
    if attribute == "ksn":
        return f"counter {Ksn.from_bytes(value).counter}" if len(value) == 12 else "(invalid)"
    if attribute == "card_data":
        if card is None:
            return f"encrypted, {len(value)} bytes"
        pan = mask_pan(card.pan) if card.pan else "none"
        return f"encrypted: TID {card.tid}, PAN {pan}, expiry {card.expiry}"
    if attribute == "amounts":
        return [render_block(block) for block in value]
    if attribute == "amount":
        return f"{value:,} rial"
    if attribute == "mac":
        return "all zeros" if value == messages.ZERO_MAC else "present"
    if attribute in ("processing_code", "response_code", "network_code"):
        meaning = getattr(value, "meaning", None)
        label = value.name.lower().replace("_", " ")
        return f"{value.value} {meaning if isinstance(meaning, str) else label}"
    if attribute == "original":
        return f"{value.mti.value} STAN {value.stan} at {value.transmission_time}"
    if attribute == "additional_data":
        return _additional(value)
    if hasattr(value, "value"):
        return str(value.value)
    return str(value)


def _additional(data: Any) -> str:
    parts = []
    if data.partial_approval is not None:
        parts.append(f"partial approval {'allowed' if data.partial_approval else 'refused'}")
    if data.original_rrn is not None:
        parts.append(f"refund of RRN {data.original_rrn}")
    if data.item_categories:
        parts.append("item categories " + ",".join(data.item_categories))
    return "; ".join(parts) or "(empty)"


def render_message(direction: str, message: messages.Message,
                   card: CardData | None = None) -> list[str]:
    """`direction` is '>>' (sent) or '<<' (received)."""
    mti = message.MTI.value
    lines = [f"{direction} {mti} {_MTI_NAMES.get(mti, '')}"]
    present = [f.name for f in fields(message) if getattr(message, f.name) not in (None, ())]
    # In field-number order; the MAC (64 or 128) is always last.
    for attribute in sorted(present, key=lambda a: _FIELD_NUMBERS.get(a, 999)):
        number = str(_FIELD_NUMBERS.get(attribute, ""))
        name = _NAMES.get(attribute, "MAC")
        shown = _value(attribute, getattr(message, attribute), card)
        if isinstance(shown, list):
            lines.append(f"   {number:>3} {name}:")
            lines.extend(f"         {line}" for line in shown)
        else:
            lines.append(f"   {number:>3} {name:<18} {shown}")
    return lines


def price_breakdown(amount: int, blocks: Iterable[AmountBlock]) -> str | None:
    """One line with the purchase's price, or None when the response carries no price."""
    by_type = {b.amount_type: b for b in blocks if b.account_type in
               (AccountType.NONE, AccountType.STORE_CREDIT, AccountType.POINTS)}
    parts = [f"{AMOUNT_LABELS[t]} {signed(by_type[t]):,}" for t in PRICE_ORDER if t in by_type]
    if AmountType.PAYABLE not in by_type:
        return None
    return f"price: amount {amount:,}; " + "; ".join(parts) + " (rial; points earned in points)"
