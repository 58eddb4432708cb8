"""Field 62: layout, method-2 padding, CBC vectors, round trip, and uniform failure."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.cardblock import (
    CardData,
    aes_cbc_decrypt,
    aes_cbc_encrypt,
    decrypt_card_data,
    encrypt_card_data,
    mask_pan,
    pad_method2,
    unpad_method2,
)
from protocol.dukpt import KeyUsage, Ksn, derive_transaction_key, derive_working_key
from protocol.errors import SecurityError

INITIAL_KEY = bytes.fromhex("1273671EA26AC29AFA4D1084127652A1")
KSN_1 = Ksn.from_bytes(bytes.fromhex("123456789012345600000001"))
KEY = bytes.fromhex("A35C412EFD41FDB98B69797C02DCD08F")  # the published usage-3000 key
OTHER_KEY = bytes(range(16))
PAN = "6037701689095443"
CARD = CardData("TERM0001", PAN, "2712")

keys16 = st.binary(min_size=16, max_size=16)
tids = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=8, max_size=8)
pans = st.integers(12, 19).flatmap(
    lambda n: st.text(st.sampled_from("0123456789"), min_size=n, max_size=n)
)
expiries = st.builds(lambda yy, mm: f"{yy:02d}{mm:02d}", st.integers(0, 99), st.integers(1, 12))
cards = st.one_of(
    st.builds(CardData, tids, pans, expiries),
    st.builds(lambda tid: CardData(tid, "", "0000"), tids),
)


def _raises_bad_padding(key: bytes, blob: bytes) -> SecurityError:
    with pytest.raises(SecurityError) as caught:
        decrypt_card_data(key, blob)
    assert caught.value.kind == "bad_padding"
    assert str(caught.value) == "bad_padding"  # no detail, so nothing decrypted can leak
    return caught.value


# --- primitives and published vectors -------------------------------------------------------


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        (
            KeyUsage.DATA_ENCRYPT,
            "E5AFA5B408A3310E3D779C8A9A2AE29448BD5B4232582090DB703AF647205A79",
        ),
        (
            KeyUsage.DATA_DECRYPT,
            "84904DFC6B5201A4F1FE2EAA49E70B8C01838EF53030790FF785D630AB3916B4",
        ),
    ],
)
def test_cbc_vectors_with_zero_padding(usage: KeyUsage, expected: str) -> None:
    key = derive_working_key(derive_transaction_key(INITIAL_KEY, KSN_1), usage, KSN_1)
    plaintext = b"4012345678909D987".ljust(32, b"\x00")  # the vectors pad with zeros, not method 2
    assert aes_cbc_encrypt(key, plaintext) == bytes.fromhex(expected)
    assert aes_cbc_decrypt(key, bytes.fromhex(expected)) == plaintext


@pytest.mark.parametrize(
    ("data", "padded"),
    [
        (b"", b"\x80" + bytes(15)),
        (b"A" * 14, b"A" * 14 + b"\x80\x00"),
        (b"A" * 15, b"A" * 15 + b"\x80"),
        (b"A" * 16, b"A" * 16 + b"\x80" + bytes(15)),  # a whole extra block
        (b"A" * 17, b"A" * 17 + b"\x80" + bytes(14)),
    ],
)
def test_method2_padding(data: bytes, padded: bytes) -> None:
    assert pad_method2(data) == padded
    assert unpad_method2(padded) == data


@pytest.mark.parametrize(
    "padded",
    [
        bytes(16),  # no mark at all
        b"A" * 15 + b"\x81",  # wrong mark
        b"A" * 15 + b"\x01",  # PKCS#7-style
        b"\x80" + bytes(31),  # mark more than one block from the end
    ],
)
def test_method2_bad_padding(padded: bytes) -> None:
    assert unpad_method2(padded) is None


# --- layout -----------------------------------------------------------------------------------


def test_encrypted_layout_for_a_purchase() -> None:
    blob = encrypt_card_data(KEY, CARD)
    assert len(blob) == 32
    assert aes_cbc_decrypt(KEY, blob) == b"TERM000116" + PAN.encode() + b"2712\x80\x00"


def test_encrypted_layout_for_a_sign_on() -> None:
    blob = encrypt_card_data(KEY, CardData("TERM0001", "", "0000"))
    assert aes_cbc_decrypt(KEY, blob) == b"TERM0001000000\x80\x00"


def test_eighteen_digit_pan_gains_a_whole_padding_block() -> None:
    blob = encrypt_card_data(KEY, CardData("TERM0001", "6" * 18, "2712"))  # 32 bytes of data
    assert len(blob) == 48
    assert aes_cbc_decrypt(KEY, blob)[32:] == b"\x80" + bytes(15)


@given(key=keys16, card=cards)
def test_round_trip(key: bytes, card: CardData) -> None:
    blob = encrypt_card_data(key, card)
    plaintext_length = 8 + 2 + len(card.pan) + 4
    assert len(blob) == (plaintext_length // 16 + 1) * 16
    assert decrypt_card_data(key, blob) == card


# --- failures are uniform SecurityErrors --------------------------------------------------------


@pytest.mark.parametrize("length", [0, 1, 15, 17, 31, 528])
def test_wrong_length(length: int) -> None:
    _raises_bad_padding(KEY, bytes(length))


def test_truncated_blob() -> None:
    blob = encrypt_card_data(KEY, CARD)
    _raises_bad_padding(KEY, blob[:16])
    _raises_bad_padding(KEY, blob[:-1])


@given(card=cards, key=keys16)
def test_wrong_key(card: CardData, key: bytes) -> None:
    if key != KEY:
        _raises_bad_padding(key, encrypt_card_data(KEY, card))


@pytest.mark.parametrize(
    "plaintext",
    [
        b"TERM000118" + b"6" * 18 + b"2712",  # 32 bytes, so left unpadded: no mark
        b"TERM000117" + PAN.encode() + b"2712",  # PANLEN too long
        b"TERM000115" + PAN.encode() + b"2712",  # PANLEN too short
        b"TERM0001xx" + PAN.encode() + b"2712",  # PANLEN not digits
        b"TERM000116" + b"603770168909544X" + b"2712",  # PAN not digits
        b"TERM000116" + PAN.encode() + b"2713",  # month 13
        b"TERM000116" + PAN.encode() + b"27 2",  # expiry not digits
        b"TERM000110" + b"6037701689" + b"2712",  # PAN too short
        b"TERM0001000000" + b"12",  # trailing bytes after expiry
        b"TERM0001001212",  # sign-on layout with a real expiry
        b"TERM\xff001" + b"00" + b"0000",  # non-ASCII TID, otherwise a valid sign-on
        b"TERM\n001" + b"00" + b"0000",  # control character in TID
        b"TERM0001",  # too short for PANLEN
        b"",
    ],
)
def test_malformed_plaintext(plaintext: bytes) -> None:
    padded = plaintext if len(plaintext) == 32 else pad_method2(plaintext)
    error = _raises_bad_padding(KEY, aes_cbc_encrypt(KEY, padded))
    assert error.__cause__ is None
    assert error.__context__ is None


@given(key=keys16, blob=st.binary(max_size=600))
def test_arbitrary_input_raises_only_security_error(key: bytes, blob: bytes) -> None:
    outcome: object
    try:
        outcome = decrypt_card_data(key, blob)
    except SecurityError as error:
        outcome = error.kind
    assert outcome == "bad_padding" or isinstance(outcome, CardData)


# --- CardData and masking -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pan", "masked"),
    [
        ("6037991234561234", "603799******1234"),
        ("603799123456", "603799**3456"),
        ("6037991234567890123", "603799*********0123"),
        ("", ""),
        ("12345", "*****"),  # not a PAN: masked whole
    ],
)
def test_mask_pan(pan: str, masked: str) -> None:
    assert mask_pan(pan) == masked


def test_card_data_repr_masks_pan_and_hides_expiry() -> None:
    for shown in (repr(CARD), str(CARD), f"{CARD}"):
        assert PAN not in shown
        assert "603770******5443" in shown
        assert "2712" not in shown
        assert "TERM0001" in shown


@pytest.mark.parametrize(
    ("tid", "pan", "expiry"),
    [
        ("TERM001", PAN, "2712"),  # TID too short
        ("TERM\t001", PAN, "2712"),  # control character in TID
        ("TERMİ001", PAN, "2712"),  # non-ASCII TID
        ("TERM0001", "60377016890", "2712"),  # PAN 11 digits
        ("TERM0001", "6" * 20, "2712"),  # PAN 20 digits
        ("TERM0001", "٦٠٣٧٧٠١٦٨٩٠٩٥٤٤٣", "2712"),  # Arabic-Indic digits
        ("TERM0001", PAN, "271"),  # expiry too short
        ("TERM0001", PAN, "2700"),  # month 00
        ("TERM0001", "", "2712"),  # sign-on must say 0000
    ],
)
def test_card_data_validation(tid: str, pan: str, expiry: str) -> None:
    with pytest.raises(ValueError, match="must") as caught:
        CardData(tid, pan, expiry)
    assert not pan or pan not in str(caught.value)
