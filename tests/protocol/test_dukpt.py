"""AES DUKPT: the published X9.24-3 vectors, KSN handling, counter advance, host key cache."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import dukpt
from protocol.dukpt import (
    COUNTER_MAX,
    HostKeys,
    KeyUsage,
    Ksn,
    TerminalKeys,
    counter_is_valid,
    derive_initial_key,
    derive_transaction_key,
    derive_working_key,
    next_valid_counter,
)
from protocol.errors import DecodeError, SecurityError

BDK = bytes.fromhex("FEDCBA9876543210F1F1F1F1F1F1F1F1")
IK_ID = bytes.fromhex("1234567890123456")
INITIAL_KEY = bytes.fromhex("1273671EA26AC29AFA4D1084127652A1")

TRANSACTION_KEYS = {
    0x00000001: "4F21B565BAD9835E112B6465635EAE44",
    0x00000002: "2F34D68DE10F68D38091A73B9E7C437C",
    0x00000008: "718EE6CF0B27E53D5F7AF99C4D8146A2",
    0xFFFF0000: "F6BA59389BD14A9855BE9727E7C52E3C",
    0x0001FFFE: "E21E8C8D347F8561A2BE752DAA85A111",
    0x00020000: "F7AE9025468A25D37B7249CFFED224C8",
}
WORKING_KEYS_COUNTER_1 = {
    KeyUsage.PIN_ENCRYPT: "AF8CB133A78F8DC2D1359F18527593FB",
    KeyUsage.MAC_GENERATE: "A2DC23DE6FDE0824A2BC321E08E4B8B7",
    KeyUsage.DATA_ENCRYPT: "A35C412EFD41FDB98B69797C02DCD08F",
}
PIN_KEY_COUNTER_2 = "D30BDC73EC9714B000BEC66BDB7B6D09"

bdks = st.binary(min_size=16, max_size=16)
initial_key_ids = st.binary(min_size=8, max_size=8)
valid_counters = st.integers(1, COUNTER_MAX).filter(counter_is_valid)
# Exactly 16 bits set: the counters right before a skip, where bugs would hide.
full_counters = st.sets(st.integers(0, 31), min_size=16, max_size=16).map(
    lambda bits: sum(1 << b for b in bits)
).filter(lambda c: c <= COUNTER_MAX)


# --- published vectors -----------------------------------------------------------------------


def test_derivation_data_matches_published_layout() -> None:
    assert dukpt._derivation_data(0x8001, IK_ID) == bytes.fromhex(
        "0101" "8001" "0002" "0080" "1234567890123456"
    )
    assert dukpt._derivation_data(0x8000, IK_ID[4:] + bytes.fromhex("00000001")) == bytes.fromhex(
        "0101" "8000" "0002" "0080" "90123456" "00000001"
    )


def test_initial_key_vector() -> None:
    assert derive_initial_key(BDK, IK_ID) == INITIAL_KEY


@pytest.mark.parametrize(("counter", "expected"), TRANSACTION_KEYS.items())
def test_transaction_key_vectors(counter: int, expected: str) -> None:
    assert derive_transaction_key(INITIAL_KEY, Ksn(IK_ID, counter)) == bytes.fromhex(expected)


@pytest.mark.parametrize(("usage", "expected"), WORKING_KEYS_COUNTER_1.items())
def test_working_key_vectors_counter_1(usage: KeyUsage, expected: str) -> None:
    ksn = Ksn(IK_ID, 1)
    transaction_key = derive_transaction_key(INITIAL_KEY, ksn)
    assert derive_working_key(transaction_key, usage, ksn) == bytes.fromhex(expected)


def test_pin_key_vector_counter_2() -> None:
    ksn = Ksn(IK_ID, 2)
    transaction_key = derive_transaction_key(INITIAL_KEY, ksn)
    assert derive_working_key(transaction_key, KeyUsage.PIN_ENCRYPT, ksn) == bytes.fromhex(
        PIN_KEY_COUNTER_2
    )


def test_host_working_keys_match_vectors() -> None:
    keys = HostKeys({IK_ID[:4]: BDK}).working_keys(
        Ksn.from_bytes(bytes.fromhex("123456789012345600000001"))
    )
    assert keys.mac_request == bytes.fromhex(WORKING_KEYS_COUNTER_1[KeyUsage.MAC_GENERATE])
    assert keys.data_encrypt == bytes.fromhex(WORKING_KEYS_COUNTER_1[KeyUsage.DATA_ENCRYPT])
    assert len({keys.mac_request, keys.mac_response, keys.data_encrypt}) == 3


def test_working_key_rejects_internal_usage() -> None:
    ksn = Ksn(IK_ID, 1)
    with pytest.raises(ValueError, match="KeyUsage"):
        derive_working_key(INITIAL_KEY, dukpt.USAGE_KEY_DERIVATION, ksn)  # type: ignore[arg-type]


# --- KSN -------------------------------------------------------------------------------------


def test_ksn_round_trip_and_parts() -> None:
    raw = bytes.fromhex("1234567890123456FFFF0000")
    ksn = Ksn.from_bytes(raw)
    assert ksn.initial_key_id == IK_ID
    assert ksn.counter == 0xFFFF0000
    assert ksn.bdk_id == bytes.fromhex("12345678")
    assert ksn.derivation_id == bytes.fromhex("90123456")
    assert ksn.to_bytes() == raw


@pytest.mark.parametrize("length", [0, 8, 11, 13, 24])
def test_ksn_wrong_length_is_decode_error_on_field_53(length: int) -> None:
    with pytest.raises(DecodeError) as caught:
        Ksn.from_bytes(bytes(length))
    assert caught.value.field == 53


def test_ksn_parses_invalid_counter_but_derivation_rejects_it() -> None:
    ksn = Ksn.from_bytes(IK_ID + bytes(4))
    assert ksn.counter == 0
    with pytest.raises(SecurityError) as caught:
        derive_transaction_key(INITIAL_KEY, ksn)
    assert caught.value.kind == "ksn_invalid"


def test_ksn_repr_hides_contents() -> None:
    assert "1234" not in repr(Ksn(IK_ID, 0x1234))


# --- counter validity and advance -------------------------------------------------------------


@pytest.mark.parametrize(
    ("counter", "valid"),
    [
        (0, False),
        (1, True),
        (0x0000FFFF, True),  # exactly 16 bits
        (0x0001FFFF, False),  # 17 bits
        (0xFFFE8000, True),  # 16 bits, just below the top
        (0xFFFF0000, True),  # the last usable counter
        (0xFFFF0001, False),
        (0x80000000, True),
        (0xFFFFFFFF, False),
        (0x100000000, False),
    ],
)
def test_counter_is_valid(counter: int, valid: bool) -> None:
    assert counter_is_valid(counter) is valid


@pytest.mark.parametrize("counter", [0, 0x0001FFFF, 0xFFFF0001, 0xFFFFFFFF])
def test_invalid_counter_is_rejected(counter: int) -> None:
    with pytest.raises(SecurityError) as caught:
        derive_transaction_key(INITIAL_KEY, Ksn(IK_ID, counter))
    assert caught.value.kind == "ksn_invalid"


def _next_valid_by_scan(counter: int) -> int | None:
    candidate = counter + 1
    while candidate <= COUNTER_MAX:
        if counter_is_valid(candidate):
            return candidate
        candidate += 1
    return None


@settings(max_examples=60, deadline=None)
@given(st.one_of(full_counters, valid_counters, st.just(0)))
def test_next_valid_counter_matches_a_plain_scan(counter: int) -> None:
    assert next_valid_counter(counter) == _next_valid_by_scan(counter)


@pytest.mark.parametrize(
    ("start", "expected"),
    [
        (0, 1),
        (1, 2),
        (0x0000FFFE, 0x0000FFFF),  # 16 bits set: used, not skipped
        (0x0000FFFF, 0x00010000),  # 0x10000 has one bit; no skip needed
        (0x0001FFFE, 0x00020000),  # 0x1FFFF has 17 bits: skipped (the published pair)
        (0xFFFE8000, 0xFFFF0000),  # skips 32767 values near the top
    ],
)
def test_terminal_advances_to_next_valid_counter(start: int, expected: int) -> None:
    terminal = TerminalKeys(INITIAL_KEY, IK_ID, counter=start)
    ksn, _ = terminal.next_ksn()
    assert ksn.counter == expected
    assert terminal.counter == expected


def test_terminal_sequence_is_strictly_increasing_and_valid() -> None:
    terminal = TerminalKeys(INITIAL_KEY, IK_ID, counter=0x00FFF000)
    counters = [terminal.next_ksn()[0].counter for _ in range(50)]
    assert counters == sorted(set(counters))
    assert all(counter_is_valid(c) for c in counters)


def test_terminal_exhausts_after_last_counter() -> None:
    terminal = TerminalKeys(INITIAL_KEY, IK_ID, counter=0xFFFE8000)
    ksn, keys = terminal.next_ksn()
    assert ksn.counter == COUNTER_MAX
    expected_tk = bytes.fromhex(TRANSACTION_KEYS[COUNTER_MAX])
    assert keys.mac_request == derive_working_key(expected_tk, KeyUsage.MAC_GENERATE, ksn)
    for _ in range(2):  # stays exhausted; the counter does not move
        with pytest.raises(SecurityError) as caught:
            terminal.next_ksn()
        assert caught.value.kind == "ksn_exhausted"
    assert terminal.counter == COUNTER_MAX


def test_terminal_first_message_matches_vectors() -> None:
    terminal = TerminalKeys.provision(BDK, IK_ID)
    ksn, keys = terminal.next_ksn()
    assert ksn.to_bytes() == bytes.fromhex("123456789012345600000001")
    assert keys.mac_request == bytes.fromhex(WORKING_KEYS_COUNTER_1[KeyUsage.MAC_GENERATE])
    assert keys.data_encrypt == bytes.fromhex(WORKING_KEYS_COUNTER_1[KeyUsage.DATA_ENCRYPT])


def test_terminal_rejects_invalid_start_counter() -> None:
    with pytest.raises(ValueError, match="counter"):
        TerminalKeys(INITIAL_KEY, IK_ID, counter=0x0001FFFF)


# --- host / terminal agreement and the host cache ----------------------------------------------


@settings(max_examples=50, deadline=None)
@given(bdk=bdks, ik_id=initial_key_ids, start=st.one_of(st.just(0), valid_counters))
def test_host_and_terminal_agree(bdk: bytes, ik_id: bytes, start: int) -> None:
    if start == COUNTER_MAX:
        start = 0
    terminal = TerminalKeys(derive_initial_key(bdk, ik_id), ik_id, counter=start)
    ksn, terminal_keys = terminal.next_ksn()
    host = HostKeys({ik_id[:4]: bdk})
    host_keys = host.working_keys(Ksn.from_bytes(ksn.to_bytes()))
    assert host_keys == terminal_keys
    assert len({host_keys.mac_request, host_keys.mac_response, host_keys.data_encrypt}) == 3


def test_host_unknown_bdk() -> None:
    host = HostKeys({bytes.fromhex("AAAAAAAA"): BDK})
    with pytest.raises(SecurityError) as caught:
        host.working_keys(Ksn(IK_ID, 1))
    assert caught.value.kind == "unknown_bdk"
    assert host.cache_size == 0


def test_host_invalid_counter_leaves_cache_alone() -> None:
    host = HostKeys({IK_ID[:4]: BDK})
    with pytest.raises(SecurityError) as caught:
        host.working_keys(Ksn(IK_ID, 0x0001FFFF))
    assert caught.value.kind == "ksn_invalid"
    assert host.cache_size == 0


def _ik_id(n: int) -> bytes:
    return IK_ID[:4] + n.to_bytes(4, "big")


def test_host_cache_is_bounded_and_least_recently_used(monkeypatch: pytest.MonkeyPatch) -> None:
    derived: list[bytes] = []
    real = dukpt.derive_initial_key

    def counting(bdk: bytes, initial_key_id: bytes) -> bytes:
        derived.append(initial_key_id)
        return real(bdk, initial_key_id)

    monkeypatch.setattr(dukpt, "derive_initial_key", counting)
    host = HostKeys({IK_ID[:4]: BDK}, cache_size_max=3)
    for n in (1, 2, 3):
        host.working_keys(Ksn(_ik_id(n), 1))
    assert host.cache_size == 3  # at the limit: nothing evicted yet
    host.working_keys(Ksn(_ik_id(1), 2))  # hit; 1 becomes most recent
    assert derived == [_ik_id(1), _ik_id(2), _ik_id(3)]
    host.working_keys(Ksn(_ik_id(4), 1))  # over the limit: evicts 2, the least recent
    assert host.cache_size == 3
    derived.clear()
    host.working_keys(Ksn(_ik_id(1), 3))
    host.working_keys(Ksn(_ik_id(3), 3))
    assert derived == []  # 1 and 3 survived
    host.working_keys(Ksn(_ik_id(2), 3))
    assert derived == [_ik_id(2)]  # 2 had been evicted
    assert host.cache_size == 3


@pytest.mark.parametrize(
    ("bdk_map", "size"),
    [({IK_ID[:4]: BDK[:15]}, 10), ({IK_ID[:3]: BDK}, 10), ({IK_ID[:4]: BDK}, 0)],
)
def test_host_rejects_bad_configuration(bdk_map: dict[bytes, bytes], size: int) -> None:
    with pytest.raises(ValueError, match=r"BDK|cache_size_max") as caught:
        HostKeys(bdk_map, cache_size_max=size)
    assert BDK.hex() not in str(caught.value).lower()


# --- nothing leaks key material -----------------------------------------------------------------


def test_reprs_hide_keys() -> None:
    terminal = TerminalKeys.provision(BDK, IK_ID)
    _, keys = terminal.next_ksn()
    host = HostKeys({IK_ID[:4]: BDK})
    host.working_keys(Ksn(IK_ID, 1))
    secrets = [BDK, INITIAL_KEY, keys.mac_request, keys.mac_response, keys.data_encrypt]
    for shown in (repr(terminal), repr(keys), str(keys), repr(host)):
        for secret in secrets:
            assert secret.hex() not in shown.lower()
            assert repr(secret) not in shown
