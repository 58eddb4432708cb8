"""AES DUKPT key management (ANSI X9.24-3-2017), restricted to AES-128 keys.

Theory of operation
-------------------
The host holds Base Derivation Keys (BDKs) indexed by a 4-byte BDK ID. Each terminal receives,
at provisioning, an *initial key* = AES(BDK, derivation data naming the 8-byte initial key ID).
Every message carries a 12-byte KSN: the initial key ID and a 32-bit transaction counter.

A counter selects a *transaction key* by walking a tree: starting from the initial key, one
AES derivation per set bit of the counter, most significant bit first, each step keyed by the
previous result and naming the partial counter built so far. The standard limits a counter to
16 set bits, so a transaction key costs at most 16 AES blocks, and the last usable counter is
0xFFFF0000. Terminals therefore skip counters with more than 16 bits set, which is why replay
checks must be "strictly above the highest accepted", never "previous + 1".

From the transaction key, one more derivation per *key usage* yields the working keys that
actually protect a message: 2000 for the request MAC, 2001 for the response MAC and 3000 for
encrypting field 62. Distinct usages give unrelated keys, so a response MAC can never be
replayed as a request MAC.

Each derivation is a single AES-ECB block: the 16-byte derivation data below is encrypted
under the parent key, and for an AES-128 output that one block is the derived key.

Key bytes never appear in reprs or exception messages: the switch logs exceptions and objects.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from protocol.errors import DecodeError, SecurityError

KEY_BYTES = 16
KSN_BYTES = 12
INITIAL_KEY_ID_BYTES = 8
BDK_ID_BYTES = 4

COUNTER_MAX = 0xFFFF0000  # the last counter with at most 16 bits set below 2**32
COUNTER_BITS_MAX = 16

# Internal key usages: the tree's own derivations, never a key that protects data.
USAGE_KEY_DERIVATION = 0x8000
USAGE_INITIAL_KEY = 0x8001

_DERIVATION_VERSION = 0x01
_KEY_BLOCK_COUNTER = 0x01  # one 128-bit block of output suffices for an AES-128 key
_ALGORITHM_AES128 = 0x0002
_KEY_LENGTH_BITS = 128

_KSN_FIELD = 53


class KeyUsage(IntEnum):
    """Key usage indicators of the working keys the protocol uses (X9.24-3, table 2)."""

    PIN_ENCRYPT = 0x1000
    MAC_GENERATE = 0x2000
    MAC_VERIFY = 0x2001
    DATA_ENCRYPT = 0x3000
    DATA_DECRYPT = 0x3001


@dataclass(frozen=True, slots=True, repr=False)
class Ksn:
    """A key serial number: the 8-byte initial key ID and the 32-bit transaction counter.

    Parsing accepts any counter; whether it is usable is decided at derivation time
    (`counter_is_valid`), so a bad counter is a security failure, not a decode failure.
    """

    initial_key_id: bytes
    counter: int

    def __post_init__(self) -> None:
        if len(self.initial_key_id) != INITIAL_KEY_ID_BYTES:
            raise ValueError("initial key ID must be 8 bytes")
        if not 0 <= self.counter <= 0xFFFFFFFF:
            raise ValueError("KSN counter must fit in 32 bits")

    @classmethod
    def from_bytes(cls, data: bytes) -> Ksn:
        if len(data) != KSN_BYTES:
            raise DecodeError(f"KSN must be {KSN_BYTES} bytes, got {len(data)}", field=_KSN_FIELD)
        return cls(bytes(data[:INITIAL_KEY_ID_BYTES]), int.from_bytes(data[8:], "big"))

    def to_bytes(self) -> bytes:
        return self.initial_key_id + self.counter.to_bytes(4, "big")

    @property
    def bdk_id(self) -> bytes:
        return self.initial_key_id[:BDK_ID_BYTES]

    @property
    def derivation_id(self) -> bytes:
        return self.initial_key_id[BDK_ID_BYTES:]

    def __repr__(self) -> str:
        # The profile forbids field 53 contents in logs; a KSN names a device and its usage.
        return "Ksn(<redacted>)"


def counter_is_valid(counter: int) -> bool:
    """True when `counter` is one a terminal may use: 1..0xFFFF0000 with at most 16 bits set."""
    return 1 <= counter <= COUNTER_MAX and counter.bit_count() <= COUNTER_BITS_MAX


def _aes_block(key: bytes, block: bytes) -> bytes:
    encryptor = Cipher(algorithms.AES(key), modes.ECB()).encryptor()  # noqa: S305 - one block
    return encryptor.update(block) + encryptor.finalize()


def _derivation_data(usage: int, context: bytes) -> bytes:
    """The 16-byte block of X9.24-3 §6.3.2 for an AES-128 output key."""
    assert len(context) == 8
    header = bytes((_DERIVATION_VERSION, _KEY_BLOCK_COUNTER))
    header += usage.to_bytes(2, "big") + _ALGORITHM_AES128.to_bytes(2, "big")
    return header + _KEY_LENGTH_BITS.to_bytes(2, "big") + context


def _check_key(key: bytes, what: str) -> None:
    if len(key) != KEY_BYTES:
        raise ValueError(f"{what} must be {KEY_BYTES} bytes (AES-128)")


def derive_initial_key(bdk: bytes, initial_key_id: bytes) -> bytes:
    """The terminal's initial key, derived from the BDK and the 8-byte initial key ID."""
    _check_key(bdk, "BDK")
    if len(initial_key_id) != INITIAL_KEY_ID_BYTES:
        raise ValueError("initial key ID must be 8 bytes")
    return _aes_block(bdk, _derivation_data(USAGE_INITIAL_KEY, initial_key_id))


def derive_transaction_key(initial_key: bytes, ksn: Ksn) -> bytes:
    """The transaction (derivation) key for `ksn`, walking one step per set bit of its counter.

    Takes the whole KSN, not only the counter: every step's derivation data also names the
    derivation ID (the right half of the initial key ID).
    """
    _check_key(initial_key, "initial key")
    if not counter_is_valid(ksn.counter):
        raise SecurityError("ksn_invalid")
    key = initial_key
    partial = 0
    for bit in range(31, -1, -1):
        mask = 1 << bit
        if ksn.counter & mask:
            partial |= mask
            context = ksn.derivation_id + partial.to_bytes(4, "big")
            key = _aes_block(key, _derivation_data(USAGE_KEY_DERIVATION, context))
    return key


def derive_working_key(transaction_key: bytes, usage: KeyUsage, ksn: Ksn) -> bytes:
    """The AES-128 working key for `usage` under the transaction key of `ksn`."""
    _check_key(transaction_key, "transaction key")
    context = ksn.derivation_id + ksn.counter.to_bytes(4, "big")
    return _aes_block(transaction_key, _derivation_data(KeyUsage(usage), context))


@dataclass(frozen=True, slots=True)
class WorkingKeys:
    """The three working keys protecting one request/response exchange under one KSN."""

    mac_request: bytes = field(repr=False)  # usage 2000: MAC of the request
    mac_response: bytes = field(repr=False)  # usage 2001: MAC of the response
    data_encrypt: bytes = field(repr=False)  # usage 3000: field 62 of the request


def _working_keys(initial_key: bytes, ksn: Ksn) -> WorkingKeys:
    transaction_key = derive_transaction_key(initial_key, ksn)
    return WorkingKeys(
        mac_request=derive_working_key(transaction_key, KeyUsage.MAC_GENERATE, ksn),
        mac_response=derive_working_key(transaction_key, KeyUsage.MAC_VERIFY, ksn),
        data_encrypt=derive_working_key(transaction_key, KeyUsage.DATA_ENCRYPT, ksn),
    )


def next_valid_counter(counter: int) -> int | None:
    """The smallest valid counter above `counter`, or None when the key space is used up.

    As X9.24-3 does, when a candidate has more than 16 bits set we add its lowest set bit:
    every value between it and that sum keeps all its set bits (and so is invalid too), and the
    sum clears the lowest run of ones. At most 32 steps, however near the top we are.
    """
    candidate = counter + 1
    while candidate.bit_count() > COUNTER_BITS_MAX:
        candidate += candidate & -candidate
    return candidate if candidate <= COUNTER_MAX else None


class TerminalKeys:
    """Terminal-side key state: the initial key and the last counter used (0 = none yet).

    Unlike a production PIN pad, which keeps only the intermediate keys and erases the initial
    key for forward secrecy, this keeps the initial key: it serves the simulator and tests.
    """

    __slots__ = ("_counter", "_initial_key", "initial_key_id")

    def __init__(self, initial_key: bytes, initial_key_id: bytes, counter: int = 0) -> None:
        _check_key(initial_key, "initial key")
        if len(initial_key_id) != INITIAL_KEY_ID_BYTES:
            raise ValueError("initial key ID must be 8 bytes")
        if not (counter == 0 or counter_is_valid(counter)):
            raise ValueError("starting counter is not a valid DUKPT counter")
        self._initial_key = initial_key
        self.initial_key_id = initial_key_id
        self._counter = counter

    @classmethod
    def provision(cls, bdk: bytes, initial_key_id: bytes) -> TerminalKeys:
        """A fresh terminal, as the key-injection facility would create it."""
        return cls(derive_initial_key(bdk, initial_key_id), initial_key_id)

    @property
    def counter(self) -> int:
        """The counter of the last KSN handed out (0 before the first)."""
        return self._counter

    def next_ksn(self) -> tuple[Ksn, WorkingKeys]:
        """Advance to the next valid counter; return its KSN and working keys."""
        counter = next_valid_counter(self._counter)
        if counter is None:
            raise SecurityError("ksn_exhausted")
        self._counter = counter
        ksn = Ksn(self.initial_key_id, counter)
        return ksn, _working_keys(self._initial_key, ksn)

    def __repr__(self) -> str:
        return "TerminalKeys(<redacted>)"


class HostKeys:
    """Host-side derivation: BDKs by BDK ID, plus an LRU cache of initial keys.

    Caching the initial key saves one AES block per message and, more usefully, the BDK
    look-up; the cache is bounded so a flood of invented initial key IDs cannot grow memory.
    Not thread-safe: it is meant for one event loop.
    """

    __slots__ = ("_bdks", "_cache", "cache_size_max")

    def __init__(self, bdks: Mapping[bytes, bytes], cache_size_max: int = 10_000) -> None:
        if cache_size_max < 1:
            raise ValueError("cache_size_max must be at least 1")
        for bdk_id, bdk in bdks.items():
            if len(bdk_id) != BDK_ID_BYTES:
                raise ValueError("every BDK ID must be 4 bytes")
            _check_key(bdk, "BDK")
        self._bdks = dict(bdks)
        self.cache_size_max = cache_size_max
        self._cache: OrderedDict[bytes, bytes] = OrderedDict()

    def initial_key(self, initial_key_id: bytes) -> bytes:
        """The initial key for `initial_key_id`, from the cache or derived from its BDK."""
        key = self._cache.get(initial_key_id)
        if key is not None:
            self._cache.move_to_end(initial_key_id)
            return key
        bdk = self._bdks.get(initial_key_id[:BDK_ID_BYTES])
        if bdk is None:
            raise SecurityError("unknown_bdk")
        key = derive_initial_key(bdk, initial_key_id)
        self._cache[initial_key_id] = key
        if len(self._cache) > self.cache_size_max:
            self._cache.popitem(last=False)
        return key

    def working_keys(self, ksn: Ksn) -> WorkingKeys:
        """The working keys for the message that carries `ksn`."""
        if not counter_is_valid(ksn.counter):
            # Checked before the cache is touched: an invalid KSN must not evict real entries.
            raise SecurityError("ksn_invalid")
        return _working_keys(self.initial_key(ksn.initial_key_id), ksn)

    @property
    def cache_size(self) -> int:
        return len(self._cache)

    def __repr__(self) -> str:
        return f"HostKeys(bdks={len(self._bdks)}, cached={len(self._cache)})"
