"""AES-CMAC: RFC 4493 and X9.24-3 message vectors, truncation, tamper and key-usage checks."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.dukpt import HostKeys, KeyUsage, Ksn, derive_transaction_key, derive_working_key
from protocol.mac import MAC_BYTES, aes_cmac, compute_mac, verify_mac

RFC4493_KEY = bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c")
RFC4493_VECTORS = [
    ("", "bb1d6929e95937287fa37d129b756746"),
    ("6bc1bee22e409f96e93d7e117393172a", "070a16b46b4d4144f79bdd9dd04a287c"),
]

BDK = bytes.fromhex("FEDCBA9876543210F1F1F1F1F1F1F1F1")
INITIAL_KEY = bytes.fromhex("1273671EA26AC29AFA4D1084127652A1")
KSN_1 = Ksn.from_bytes(bytes.fromhex("123456789012345600000001"))
MESSAGE = b"4012345678909D987"
REQUEST_CMAC = bytes.fromhex("A2EB5C1C35809E58404E873C3C411E31")
RESPONSE_CMAC = bytes.fromhex("DD4E1895FD9BF53D8DAF25568ABF551D")

keys16 = st.binary(min_size=16, max_size=16)


def _working_key(usage: KeyUsage) -> bytes:
    return derive_working_key(derive_transaction_key(INITIAL_KEY, KSN_1), usage, KSN_1)


@pytest.mark.parametrize(("message", "expected"), RFC4493_VECTORS)
def test_rfc4493_vectors(message: str, expected: str) -> None:
    assert aes_cmac(RFC4493_KEY, bytes.fromhex(message)) == bytes.fromhex(expected)
    assert compute_mac(RFC4493_KEY, bytes.fromhex(message)) == bytes.fromhex(expected)[:8]


@pytest.mark.parametrize(
    ("usage", "expected"),
    [(KeyUsage.MAC_GENERATE, REQUEST_CMAC), (KeyUsage.MAC_VERIFY, RESPONSE_CMAC)],
)
def test_dukpt_message_cmac_vectors(usage: KeyUsage, expected: bytes) -> None:
    key = _working_key(usage)
    assert aes_cmac(key, MESSAGE) == expected
    assert compute_mac(key, MESSAGE) == expected[:MAC_BYTES]
    assert verify_mac(key, MESSAGE, expected[:MAC_BYTES])


def test_host_keys_produce_the_published_macs() -> None:
    keys = HostKeys({KSN_1.bdk_id: BDK}).working_keys(KSN_1)
    assert compute_mac(keys.mac_request, MESSAGE) == REQUEST_CMAC[:MAC_BYTES]
    assert compute_mac(keys.mac_response, MESSAGE) == RESPONSE_CMAC[:MAC_BYTES]


@pytest.mark.parametrize("mac", [b"", REQUEST_CMAC[:7], REQUEST_CMAC[:9], REQUEST_CMAC])
def test_mac_of_wrong_length_is_rejected(mac: bytes) -> None:
    assert not verify_mac(_working_key(KeyUsage.MAC_GENERATE), MESSAGE, mac)


def test_response_mac_never_verifies_as_request_mac() -> None:
    response_mac = compute_mac(_working_key(KeyUsage.MAC_VERIFY), MESSAGE)
    assert verify_mac(_working_key(KeyUsage.MAC_VERIFY), MESSAGE, response_mac)
    assert not verify_mac(_working_key(KeyUsage.MAC_GENERATE), MESSAGE, response_mac)


@given(
    bdk=keys16,
    counter=st.integers(1, 0xFFFF),
    data=st.binary(max_size=300),
)
def test_usages_never_cross_verify(bdk: bytes, counter: int, data: bytes) -> None:
    ksn = Ksn(KSN_1.initial_key_id, counter)
    keys = HostKeys({ksn.bdk_id: bdk}).working_keys(ksn)
    assert not verify_mac(keys.mac_request, data, compute_mac(keys.mac_response, data))
    assert not verify_mac(keys.mac_response, data, compute_mac(keys.mac_request, data))


@given(key=keys16, data=st.binary(min_size=1, max_size=300), bit=st.integers(min_value=0))
def test_any_flipped_data_bit_fails_verification(key: bytes, data: bytes, bit: int) -> None:
    mac = compute_mac(key, data)
    assert verify_mac(key, data, mac)
    bit %= len(data) * 8
    tampered = bytearray(data)
    tampered[bit // 8] ^= 1 << (bit % 8)
    assert not verify_mac(key, bytes(tampered), mac)


@given(key=keys16, data=st.binary(max_size=100), bit=st.integers(0, MAC_BYTES * 8 - 1))
def test_any_flipped_mac_bit_fails_verification(key: bytes, data: bytes, bit: int) -> None:
    mac = bytearray(compute_mac(key, data))
    mac[bit // 8] ^= 1 << (bit % 8)
    assert not verify_mac(key, data, bytes(mac))


@given(key=keys16, other=keys16, data=st.binary(max_size=100))
def test_wrong_key_fails_verification(key: bytes, other: bytes, data: bytes) -> None:
    if key != other:
        assert not verify_mac(other, data, compute_mac(key, data))
