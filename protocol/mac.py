"""Message authentication: AES-CMAC (NIST SP 800-38B, RFC 4493) truncated to 8 bytes.

The MAC covers the message from the MTI up to, not including, the MAC field, and is keyed by
a DUKPT working key: usage 2000 for a request, 2001 for its response (see `protocol.dukpt`).
Truncating CMAC to its leftmost 64 bits is what SP 800-38B allows and what fields 64/128
(b 8) carry. Verification compares in constant time so the switch's response timing reveals
nothing about how many leading MAC bytes an attacker guessed right.
"""

from __future__ import annotations

import hmac

from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.cmac import CMAC

MAC_BYTES = 8


def aes_cmac(key: bytes, data: bytes) -> bytes:
    """The full 16-byte AES-CMAC of `data` under `key`."""
    mac = CMAC(algorithms.AES(key))
    mac.update(data)
    return mac.finalize()


def compute_mac(key: bytes, data: bytes) -> bytes:
    """The protocol MAC: the leftmost `MAC_BYTES` bytes of AES-CMAC."""
    return aes_cmac(key, data)[:MAC_BYTES]


def verify_mac(key: bytes, data: bytes, mac: bytes) -> bool:
    """True when `mac` is the protocol MAC of `data`; a MAC of the wrong length is just false."""
    return hmac.compare_digest(compute_mac(key, data), mac)
