"""Typed messages: round trips for every type, presence rules, fields 48/54/90, MAC helpers."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest
from hypothesis import given

from protocol.errors import DecodeError
from protocol.fields import (
    AccountType,
    AmountType,
    Mti,
    NetworkCode,
    PosEntryMode,
    ProcessingCode,
    ResponseCode,
    Sign,
    format_transmission_time,
    transmission_datetime,
)
from protocol.layout import PRESENCE, Presence
from protocol.messages import (
    ZERO_MAC,
    AuthRequest,
    AuthResponse,
    ConfirmAdvice,
    ConfirmResponse,
    NetworkRequest,
    NetworkResponse,
    ReversalAdvice,
    ReversalResponse,
    decode,
    encode,
    mac_input,
    response_to,
    with_mac,
)
from protocol.spec import decode_fields, encode_fields
from protocol.values import AdditionalData, AmountBlock, OriginalData
from tests.protocol.strategies import MESSAGE_STRATEGIES

KSN = bytes.fromhex("1234567890123456000000ff")
AUTH = AuthRequest(
    processing_code=ProcessingCode.PURCHASE_CLUB,
    amount=1_500_000,
    transmission_time="1124131500",
    stan="000123",
    local_time="164500",
    local_date="1124",
    pos_entry_mode=PosEntryMode.CHIP,
    ksn=KSN,
    card_data=bytes(32),
)
ORIGINAL = OriginalData(Mti.AUTH_REQUEST, "000123", "1124131500")
CONFIRM = ConfirmAdvice(
    processing_code=ProcessingCode.PURCHASE_CLUB,
    amount=1_500_000,
    transmission_time="1124131510",
    stan="000124",
    rrn="000000000042",
    ksn=KSN,
    original=ORIGINAL,
)
SIGN_ON = NetworkRequest(
    network_code=NetworkCode.SIGN_ON,
    transmission_time="1124131500",
    stan="000001",
    ksn=KSN,
    card_data=bytes(16),
)


def fields_of(message) -> dict[int, str | bytes]:
    return dict(decode_fields(encode(message)).fields)


def reencode(message, change) -> bytes:
    """`message`'s bytes after `change(fields)` edits its field dictionary."""
    parsed = decode_fields(encode(message))
    fields = dict(parsed.fields)
    change(fields)
    return encode_fields(parsed.mti, fields)


# ---------------------------------------------------------------------------------------------
# Round trips


@pytest.mark.parametrize("mti", sorted(MESSAGE_STRATEGIES))
def test_round_trip(mti):
    @given(MESSAGE_STRATEGIES[mti])
    def check(message):
        raw = encode(message)
        assert raw[:4] == mti.encode()
        decoded = decode(raw)
        assert decoded == message
        assert encode(decoded) == raw

    check()


@pytest.mark.parametrize("mti", sorted(MESSAGE_STRATEGIES))
def test_mac_is_last_field_and_matches_bitmap(mti):
    @given(MESSAGE_STRATEGIES[mti])
    def check(message):
        raw = encode(message)
        numbers = sorted(decode_fields(raw).fields)
        secondary = any(64 < n < 128 for n in numbers)
        assert numbers[-1] == (128 if secondary else 64)
        assert raw[-8:] == message.mac
        assert bool(raw[4] & 0x80) == secondary

    check()


def test_messages_are_frozen_and_slotted():
    with pytest.raises(dataclasses.FrozenInstanceError):
        AUTH.amount = 1  # type: ignore[misc]
    assert not hasattr(AUTH, "__dict__")


def test_mac_field_per_type():
    assert 64 in fields_of(AUTH)
    assert 128 in fields_of(CONFIRM)  # field 90 needs the secondary bitmap
    assert 128 in fields_of(SIGN_ON)  # so does 70


def test_currency_follows_amount():
    assert fields_of(AUTH)[49] == "364"
    fmt_error = AuthResponse(response_code=ResponseCode.FORMAT_ERROR)
    assert 49 not in fields_of(fmt_error)


# ---------------------------------------------------------------------------------------------
# Presence rules, both directions


def test_missing_mandatory_field_on_decode():
    raw = reencode(AUTH, lambda f: f.pop(22))
    with pytest.raises(DecodeError) as info:
        decode(raw)
    assert info.value.field == 22


def test_forbidden_field_on_decode_names_it_with_position():
    raw = reencode(CONFIRM, lambda f: f.update({48: "PA0011"}))
    with pytest.raises(DecodeError) as info:
        decode(raw)
    assert info.value.field == 48
    assert info.value.position == decode_fields(raw).positions[48]


def test_sign_on_needs_card_data_and_others_refuse_it():
    with pytest.raises(DecodeError) as info:
        encode(dataclasses.replace(SIGN_ON, card_data=None))
    assert info.value.field == 62
    echo = dataclasses.replace(SIGN_ON, network_code=NetworkCode.ECHO)
    with pytest.raises(DecodeError) as info:
        encode(echo)
    assert info.value.field == 62
    raw = reencode(SIGN_ON, lambda f: f.update({70: "301"}))
    with pytest.raises(DecodeError, match="not allowed"):
        decode(raw)


def test_response_must_echo_unless_format_error():
    with pytest.raises(DecodeError) as info:
        encode(AuthResponse(response_code=ResponseCode.APPROVED))
    assert info.value.field == 3
    assert decode(encode(NetworkResponse(response_code=ResponseCode.FORMAT_ERROR)))


def test_security_violation_response_carries_no_result_data():
    response = dataclasses.replace(
        response_to(AUTH, ResponseCode.SECURITY_VIOLATION), approval_code="ABC123"
    )
    with pytest.raises(DecodeError) as info:
        encode(response)
    assert info.value.field == 38
    raw = reencode(
        dataclasses.replace(response, response_code=ResponseCode.APPROVED),
        lambda f: f.update({39: "63"}),
    )
    with pytest.raises(DecodeError) as info:
        decode(raw)
    assert info.value.field == 38


def test_currency_rules():
    with pytest.raises(DecodeError, match="currency") as info:
        decode(reencode(AUTH, lambda f: f.update({49: "840"})))
    assert info.value.field == 49
    with pytest.raises(DecodeError) as info:
        decode(reencode(AUTH, lambda f: f.pop(49)))
    assert info.value.field == 49


def test_unknown_mti():
    raw = encode(AUTH)
    with pytest.raises(DecodeError) as info:
        decode(b"0200" + raw[4:])
    assert (info.value.field, info.value.position) == (0, 0)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        (3, "990000"),  # unknown processing code
        (22, "999"),  # unknown entry mode
        (7, "1324131500"),  # month 13
        (7, "0230131500"),  # 30 February
        (7, "1124241500"),  # hour 24
        (12, "166000"),
        (13, "0000"),
    ],
)
def test_meaningless_values_rejected(field, value):
    raw = reencode(AUTH, lambda f: f.update({field: value}))
    with pytest.raises(DecodeError) as info:
        decode(raw)
    assert info.value.field == field
    assert info.value.position == decode_fields(raw).positions[field]


def test_unknown_response_and_network_codes():
    response = response_to(SIGN_ON, ResponseCode.APPROVED)
    with pytest.raises(DecodeError) as info:
        decode(reencode(response, lambda f: f.update({39: "99"})))
    assert info.value.field == 39
    with pytest.raises(DecodeError) as info:
        decode(reencode(response, lambda f: f.update({70: "999"})))
    assert info.value.field == 70


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"stan": "123"}, 11),
        ({"amount": -1}, 4),
        ({"amount": 10**12}, 4),
        ({"transmission_time": "1124131560"}, 7),
        ({"mac": b"short"}, 64),
        ({"card_data": b""}, 62),
        ({"card_data": bytes(513)}, 62),
        ({"additional_data": AdditionalData()}, 48),
    ],
)
def test_encode_refuses_what_decode_would(change, field):
    with pytest.raises(DecodeError) as info:
        encode(dataclasses.replace(AUTH, **change))
    assert info.value.field == field


def test_presence_table_lists_mac_nowhere_and_mandatory_fields_everywhere():
    for table in PRESENCE.values():
        assert not {64, 128} & set(table)
        assert table[7] in (Presence.MANDATORY, Presence.ECHOED)
        assert table[11] in (Presence.MANDATORY, Presence.ECHOED)


# ---------------------------------------------------------------------------------------------
# Field 48


def with_field48(text: str) -> bytes:
    return reencode(AUTH, lambda f: f.update({48: text}))


def test_additional_data_round_trip_and_unknown_tags_kept():
    data = AdditionalData(
        partial_approval=True, original_rrn="000000000042", item_categories=("5411", "58")
    )
    assert fields_of(dataclasses.replace(AUTH, additional_data=data))[48] == (
        "PA0011OR012000000000042IT0075411,58"
    )
    decoded = decode(with_field48("ZZ003abcPA0010"))
    assert isinstance(decoded, AuthRequest)
    assert decoded.additional_data == AdditionalData(
        partial_approval=False, unknown=(("ZZ", "abc"),)
    )


@pytest.mark.parametrize(
    ("text", "offset"),
    [
        ("PA0", 0),  # header truncated
        ("PA0x11", 2),  # length not digits
        ("PA005111", 0),  # value runs past the field
        ("PA0012", 5),  # PA is 0 or 1
        ("PA0011PA0011", 6),  # repeated tag
        ("OR003abc", 5),  # RRN must be 12 characters
        ("IT0045,,1", 5),  # empty category
    ],
)
def test_tlv_errors(text, offset):
    raw = with_field48(text)
    with pytest.raises(DecodeError) as info:
        decode(raw)
    assert info.value.field == 48
    assert info.value.position == decode_fields(raw).positions[48] + 3 + offset


def test_tlv_refuses_unknown_tag_that_shadows_a_known_one():
    with pytest.raises(DecodeError):
        encode(dataclasses.replace(AUTH, additional_data=AdditionalData(unknown=(("PA", "1"),))))


# ---------------------------------------------------------------------------------------------
# Field 54

APPROVED = dataclasses.replace(
    response_to(AUTH, ResponseCode.APPROVED), rrn="000000000042", approval_code="A00001"
)


def test_amount_blocks_encode_as_20_characters():
    blocks = (
        AmountBlock(AccountType.CLUB_RIAL, AmountType.DISCOUNT, 150_000),
        AmountBlock(AccountType.CLUB_RIAL, AmountType.AVAILABLE_BALANCE, 7, Sign.DEBIT),
    )
    text = fields_of(dataclasses.replace(APPROVED, amounts=blocks))[54]
    assert text == "9190364C000000150000" + "9102364D000000000007"


@pytest.mark.parametrize(
    ("text", "offset"),
    [
        ("9190364C00000015000", 0),  # not a multiple of 20
        ("9190840C000000150000", 4),  # currency
        ("9990364C000000150000", 0),  # account type
        ("9199364C000000150000", 2),  # amount type
        ("9190364X000000150000", 0),  # sign
        ("9190364C00000015000A", 0),  # amount not digits
        ("9190364C000000150000" + "9190364C0000001500 0", 20),
    ],
)
def test_amount_block_errors(text, offset):
    raw = reencode(APPROVED, lambda f: f.update({54: text}))
    with pytest.raises(DecodeError) as info:
        decode(raw)
    assert info.value.field == 54
    assert info.value.position == decode_fields(raw).positions[54] + 3 + offset


def test_at_most_12_amount_blocks():
    block = AmountBlock(AccountType.POINTS, AmountType.POINTS_EARNED, 1)
    assert decode(encode(dataclasses.replace(APPROVED, amounts=(block,) * 12)))
    with pytest.raises(DecodeError) as info:
        encode(dataclasses.replace(APPROVED, amounts=(block,) * 13))
    assert info.value.field == 54


# ---------------------------------------------------------------------------------------------
# Field 90


def test_original_data_layout():
    assert fields_of(CONFIRM)[90] == "0100" + "000123" + "1124131500" + "0" * 22


@pytest.mark.parametrize(
    "text",
    [
        "0100" + "000123" + "1124131500" + "0" * 21 + "1",  # not zeros
        "0200" + "000123" + "1124131500" + "0" * 22,  # unknown MTI
        "0100" + "000123" + "1199131500" + "0" * 22,  # bad time
    ],
)
def test_original_data_errors(text):
    with pytest.raises(DecodeError) as info:
        decode(reencode(CONFIRM, lambda f: f.update({90: text})))
    assert info.value.field == 90


# ---------------------------------------------------------------------------------------------
# Responses, MAC helpers, field 7


def test_response_to_echoes_request_fields():
    response = response_to(AUTH, ResponseCode.APPROVED)
    assert isinstance(response, AuthResponse)
    assert (response.processing_code, response.amount, response.stan) == (
        AUTH.processing_code,
        AUTH.amount,
        AUTH.stan,
    )
    assert (response.transmission_time, response.ksn, response.rrn) == (
        AUTH.transmission_time,
        AUTH.ksn,
        None,
    )
    assert response.mac == ZERO_MAC
    assert response_to(CONFIRM, ResponseCode.APPROVED).rrn == CONFIRM.rrn
    network = response_to(SIGN_ON, ResponseCode.APPROVED)
    assert isinstance(network, NetworkResponse)
    assert network.network_code is NetworkCode.SIGN_ON
    reversal = ReversalAdvice(
        processing_code=ProcessingCode.PURCHASE_CLUB,
        amount=1,
        transmission_time="1124131500",
        stan="000125",
        ksn=KSN,
        original=ORIGINAL,
    )
    assert isinstance(response_to(reversal, ResponseCode.APPROVED), ReversalResponse)
    assert isinstance(response_to(CONFIRM, ResponseCode.TOO_LATE), ConfirmResponse)
    for request in (AUTH, CONFIRM, SIGN_ON, reversal):
        assert decode(encode(response_to(request, ResponseCode.DO_NOT_HONOUR)))


def test_mac_input_and_with_mac():
    raw = encode(AUTH)
    assert mac_input(raw) == raw[:-8]
    signed = with_mac(raw, b"\x01" * 8)
    assert signed[:-8] == raw[:-8]
    decoded = decode(signed)
    assert decoded.mac == b"\x01" * 8
    assert mac_input(signed) == mac_input(raw)  # the MAC never covers itself
    secondary = encode(CONFIRM)
    assert mac_input(secondary) == secondary[:-8]


def test_mac_input_checks_the_mac_bit():
    raw = bytearray(encode(AUTH))
    raw[11] &= 0xFE  # clear bit 64
    with pytest.raises(DecodeError) as info:
        mac_input(bytes(raw))
    assert info.value.field == 64
    with pytest.raises(DecodeError):
        mac_input(b"0100")


def test_transmission_datetime_picks_the_nearest_year():
    reference = datetime(2027, 1, 1, 0, 0, 5, tzinfo=UTC)
    assert transmission_datetime("1231235959", reference) == datetime(
        2026, 12, 31, 23, 59, 59, tzinfo=UTC
    )
    assert transmission_datetime("0101000010", reference) == datetime(
        2027, 1, 1, 0, 0, 10, tzinfo=UTC
    )
    leap = datetime(2028, 3, 1, tzinfo=UTC)
    assert transmission_datetime("0229120000", leap).year == 2028


def test_transmission_datetime_errors():
    reference = datetime(2026, 6, 1, tzinfo=UTC)
    with pytest.raises(DecodeError) as info:
        transmission_datetime("0229120000", reference)  # 2025-2027 have no 29 February
    assert info.value.field == 7
    with pytest.raises(DecodeError):
        transmission_datetime("1324000000", reference)


def test_format_transmission_time():
    moment = datetime(2026, 11, 24, 13, 15, 0, tzinfo=UTC)
    assert format_transmission_time(moment) == "1124131500"
    assert transmission_datetime(format_transmission_time(moment), moment) == moment


def test_response_code_meanings_and_helpers():
    assert all(code.meaning for code in ResponseCode)
    assert ResponseCode.PARTIAL_APPROVAL.is_approval
    assert not ResponseCode.SECURITY_VIOLATION.is_approval
    assert ProcessingCode.REFUND_CLUB.is_refund
    assert ProcessingCode.BALANCE_INQUIRY_CLUB.is_balance_inquiry
    assert not ProcessingCode.PURCHASE_CLUB.is_balance_inquiry
    assert {c.value for c in ResponseCode} == {
        "00", "10", "05", "12", "13", "14", "25", "30", "51", "54",
        "57", "58", "62", "63", "68", "91", "94", "96", "97",
    }  # fmt: skip
