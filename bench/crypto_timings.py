"""Micro-benchmarks of the per-message cryptography on the switch (host) side.

All derivations use a counter with 16 bits set, the most a valid counter can have, so the
derivation figures are the worst case per message (16 AES blocks for the transaction key plus
3 for the working keys). A counter with fewer bits set costs proportionally less.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from protocol.cardblock import CardData, decrypt_card_data, encrypt_card_data
from protocol.dukpt import HostKeys, Ksn
from protocol.mac import compute_mac, verify_mac

_BDK_ID = bytes.fromhex("12345678")
_BDK = bytes.fromhex("FEDCBA9876543210F1F1F1F1F1F1F1F1")
_WORST_COUNTER = 0x0000FFFF  # 16 bits set
_MESSAGE = bytes(range(256)) * 2  # about the size of a purchase request


def _per_call_us(iterations: int, call: Callable[[int], object]) -> float:
    start = time.perf_counter()
    for i in range(iterations):
        call(i)
    return (time.perf_counter() - start) / iterations * 1e6


def crypto_timings(iterations: int) -> dict[str, float]:
    """Microseconds per operation, averaged over `iterations` calls of each."""
    if iterations < 1:
        raise ValueError("iterations must be at least 1")

    # Cold: a distinct initial key ID every time, so each call derives the initial key too.
    cold_host = HostKeys({_BDK_ID: _BDK}, cache_size_max=iterations + 1)
    cold = _per_call_us(
        iterations,
        lambda i: cold_host.working_keys(Ksn(_BDK_ID + i.to_bytes(4, "big"), _WORST_COUNTER)),
    )

    warm_host = HostKeys({_BDK_ID: _BDK})
    ksn = Ksn(_BDK_ID + bytes(4), _WORST_COUNTER)
    keys = warm_host.working_keys(ksn)  # primes the cache
    cached = _per_call_us(iterations, lambda _: warm_host.working_keys(ksn))

    blob = encrypt_card_data(keys.data_encrypt, CardData("TERM0001", "6037701689095443", "2712"))
    decrypt = _per_call_us(iterations, lambda _: decrypt_card_data(keys.data_encrypt, blob))

    mac = compute_mac(keys.mac_request, _MESSAGE)
    verify = _per_call_us(iterations, lambda _: verify_mac(keys.mac_request, _MESSAGE, mac))

    return {
        "host_derive_cold_us": cold,
        "host_derive_cached_us": cached,
        "field62_decrypt_us": decrypt,
        "mac_verify_us": verify,
    }


if __name__ == "__main__":
    for name, value in crypto_timings(2000).items():
        print(f"{name:>24}: {value:8.1f}")
