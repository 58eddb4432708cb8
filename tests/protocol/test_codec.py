"""The byte-level codec (`protocol.spec`): every malformation is a DecodeError at the right place.

Messages here are assembled by hand, byte by byte, so that they can be wrong in ways our
encoder refuses to produce.
"""

from __future__ import annotations

import iso8583
import pytest

from protocol.errors import DecodeError
from protocol.messages import decode
from protocol.spec import FIELDS, FORMATS, SPEC, Kind, decode_fields, encode_fields

MAC = b"\xaa" * 8
KSN = b"\x11" * 12


def bitmap(numbers) -> bytes:
    numbers = set(numbers)
    if any(n > 64 for n in numbers):
        numbers.add(1)
    bits = bytearray(16 if 1 in numbers else 8)
    for n in numbers:
        bits[(n - 1) // 8] |= 0x80 >> ((n - 1) % 8)
    return bytes(bits)


def assemble(parts: dict[int, bytes], mti: bytes = b"0800", bits: bytes | None = None) -> bytes:
    """A message from already-encoded parts (length prefixes included), in field order."""
    head = mti + (bits if bits is not None else bitmap(parts))
    return head + b"".join(parts[n] for n in sorted(parts))


def echo_parts() -> dict[int, bytes]:
    return {7: b"1124131500", 11: b"000001", 53: KSN, 70: b"301", 128: MAC}


def auth_parts() -> dict[int, bytes]:
    return {
        3: b"009100",
        4: b"000001500000",
        7: b"1124131500",
        11: b"000123",
        12: b"164500",
        13: b"1124",
        22: b"051",
        48: b"012PA0011IT001X",
        49: b"364",
        53: KSN,
        62: b"016" + bytes(16),
        64: MAC,
    }


def test_assembled_messages_are_valid():
    assert decode(assemble(echo_parts()))
    assert decode(assemble(auth_parts(), b"0100"))


def test_spec_is_derived_from_the_field_table():
    assert set(SPEC) - {"h", "t", "p", "1"} == {str(f.number) for f in FIELDS}
    for f in FIELDS:
        entry = SPEC[str(f.number)]
        assert entry["max_len"] == f.max_len
        assert entry["len_type"] == f.len_digits
        assert (entry["data_enc"] == "b") == (f.kind is Kind.B)


def test_positions_point_at_each_field():
    raw = assemble(auth_parts(), b"0100")
    parsed = decode_fields(raw)
    assert parsed.positions[3] == 12
    for n, position in parsed.positions.items():
        value = parsed.fields[n]
        width = FORMATS[n].len_digits
        data = value if isinstance(value, bytes) else value.encode()
        assert raw[position + width : position + width + len(data)] == data


# ---------------------------------------------------------------------------------------------
# Truncation and extra bytes


def test_every_truncation_is_a_decode_error():
    for raw in (assemble(auth_parts(), b"0100"), assemble(echo_parts())):
        for end in range(len(raw)):
            with pytest.raises(DecodeError):
                decode(raw[:end])


def test_extra_trailing_bytes():
    raw = assemble(echo_parts())
    with pytest.raises(DecodeError, match="Extra data") as info:
        decode(raw + b"\x00")
    assert info.value.position == len(raw)


def test_empty_input():
    with pytest.raises(DecodeError) as info:
        decode(b"")
    assert info.value.field == 0


# ---------------------------------------------------------------------------------------------
# MTI and bitmaps


@pytest.mark.parametrize("mti", [b"08a0", b"\xff800", b"080"])
def test_mti_must_be_four_digits(mti):
    with pytest.raises(DecodeError) as info:
        decode(mti + assemble(echo_parts())[4:])
    assert info.value.field == 0


def test_field_outside_the_spec():
    parts = echo_parts() | {2: b"16" + b"4" * 16}
    with pytest.raises(DecodeError, match="not defined") as info:
        decode(assemble(parts))
    assert info.value.field == 2


def test_bit_65_would_mean_a_third_bitmap():
    parts = echo_parts() | {65: b"\x00" * 8}
    with pytest.raises(DecodeError) as info:
        decode(assemble(parts))
    assert info.value.field == 65


def test_secondary_bitmap_without_secondary_fields():
    parts = auth_parts()
    parts.pop(64)
    parts[128] = MAC
    with pytest.raises(DecodeError, match="announces no field") as info:
        decode(assemble(parts, b"0100"))
    assert (info.value.field, info.value.position) == (1, 12)


def test_all_zero_secondary_bitmap():
    raw = assemble(auth_parts(), b"0100")
    bits = bytearray(raw[4:12])
    bits[0] |= 0x80
    with pytest.raises(DecodeError, match="announces no field"):
        decode(raw[:4] + bits + bytes(8) + raw[12:])


def test_mac_in_the_wrong_field():
    parts = echo_parts()
    parts[64] = parts.pop(128)
    with pytest.raises(DecodeError, match="MAC") as info:
        decode(assemble(parts))
    assert info.value.field == 128
    parts = auth_parts()
    parts[128] = parts.pop(64)
    parts[70] = b"301"
    with pytest.raises(DecodeError):
        decode(assemble(parts, b"0100"))


def test_mac_missing():
    parts = auth_parts()
    parts.pop(64)
    with pytest.raises(DecodeError, match="MAC field missing") as info:
        decode(assemble(parts, b"0100"))
    assert info.value.field == 64


def test_both_macs():
    parts = echo_parts() | {64: MAC}
    with pytest.raises(DecodeError) as info:
        decode(assemble(parts))
    assert info.value.field == 64


# ---------------------------------------------------------------------------------------------
# Field contents


@pytest.mark.parametrize(
    ("field", "value"),
    [
        (3, b"00910A"),
        (4, b"00000150000 "),
        (4, b"-00001500000"),
        (11, b"00012\xb3"),  # not ASCII at all
        (49, b"3 4"),
        (22, b"05\x00"),
    ],
)
def test_non_digit_numerics(field, value):
    parts = auth_parts() | {field: value}
    raw = assemble(parts, b"0100")
    with pytest.raises(DecodeError) as info:
        decode(raw)
    assert info.value.field == field


@pytest.mark.parametrize(
    ("field", "value"),
    [
        (48, b"012PA0011IT001\x07"),  # control character in ans
        (48, b"012PA0011IT001\xe9"),  # not ASCII
    ],
)
def test_text_fields_reject_non_printable(field, value):
    with pytest.raises(DecodeError) as info:
        decode(assemble(auth_parts() | {field: value}, b"0100"))
    assert info.value.field == field


def test_an_field_rejects_punctuation():
    response = {
        3: b"009100",
        4: b"000001500000",
        7: b"1124131500",
        11: b"000123",
        37: b"0000000000-1",
        39: b"00",
        49: b"364",
        53: KSN,
        64: MAC,
    }
    assert decode(assemble(response | {37: b"0000000000 1"}, b"0110"))
    with pytest.raises(DecodeError) as info:
        decode(assemble(response, b"0110"))
    assert info.value.field == 37


@pytest.mark.parametrize(
    "value",
    [
        b" 12PA0011IT001X",  # prefix with a space: int() would accept it
        b"+12PA0011IT001X",
        b"0_9PA0011IT0",  # int() accepts underscores too
        b"01aPA0011IT001X",
    ],
)
def test_length_prefix_must_be_digits(value):
    with pytest.raises(DecodeError) as info:
        decode(assemble(auth_parts() | {48: value}, b"0100"))
    assert info.value.field == 48


@pytest.mark.parametrize(
    "value",
    [
        b"013PA0011IT001X",  # one byte longer than what follows: steals field 49
        b"011PA0011IT001X",  # one byte short: leaves junk
        b"999PA0011",  # longer than the message
    ],
)
def test_wrong_variable_lengths(value):
    with pytest.raises(DecodeError):
        decode(assemble(auth_parts() | {48: value}, b"0100"))


def test_variable_length_above_maximum():
    parts = auth_parts() | {62: b"513" + bytes(513)}
    with pytest.raises(DecodeError, match="larger than maximum") as info:
        decode(assemble(parts, b"0100"))
    assert info.value.field == 62


def test_field_54_over_240_characters():
    parts = {
        3: b"009100",
        4: b"000001500000",
        7: b"1124131500",
        11: b"000123",
        39: b"00",
        49: b"364",
        53: KSN,
        54: b"260" + b"9395364C000000000001" * 13,
        64: MAC,
    }
    with pytest.raises(DecodeError) as info:
        decode(assemble(parts, b"0110"))
    assert info.value.field == 54


def test_zero_length_variable_field():
    with pytest.raises(DecodeError, match="length 0") as info:
        decode(assemble(auth_parts() | {48: b"000"}, b"0100"))
    assert info.value.field == 48


# ---------------------------------------------------------------------------------------------
# Encode side


def test_encode_fields_round_trips():
    raw = assemble(auth_parts(), b"0100")
    parsed = decode_fields(raw)
    assert encode_fields(parsed.mti, parsed.fields) == raw


def test_encode_matches_pyiso8583():
    parsed = decode_fields(assemble(echo_parts()))
    doc = {k: v.hex() if isinstance(v, bytes) else v for k, v in parsed.fields.items()}
    expected, _ = iso8583.encode({"t": "0800", **{str(k): v for k, v in doc.items()}}, SPEC)
    assert encode_fields("0800", parsed.fields) == bytes(expected)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({11: "12345"}, 11),  # fixed length
        ({11: "12345a"}, 11),  # digits
        ({11: "12345١"}, 11),  # an Arabic-Indic digit is a digit to str.isdigit
        ({48: "x" * 1000}, 48),  # maximum
        ({48: ""}, 48),  # empty
        ({2: "4111"}, 2),  # not in the spec
    ],
)
def test_encode_fields_refuses_bad_values(fields, field):
    base: dict[int, str | bytes] = {7: "1124131500", 11: "000001", 53: KSN, 70: "301", 128: MAC}
    with pytest.raises(DecodeError) as info:
        encode_fields("0800", base | fields)
    assert info.value.field == field


def test_encode_fields_refuses_bad_mti_and_missing_mac():
    with pytest.raises(DecodeError):
        encode_fields("08x0", {7: "1124131500", 64: MAC})
    with pytest.raises(DecodeError) as info:
        encode_fields("0800", {7: "1124131500"})
    assert info.value.field == 64
