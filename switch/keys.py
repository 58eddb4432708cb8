"""The key file: BDKs by ID and the PAN-hashing key. Never stored in the database.

The file is JSON, created with mode 0600: {"pan_hash_key": hex, "bdks": {BDK_ID: hex}}.
A BDK ID is 4 bytes shown as 8 upper-case hex digits; it is the first half of every
terminal's initial key ID, so the switch finds a terminal's BDK from the KSN alone.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

BDK_BYTES = 16
PAN_HASH_KEY_BYTES = 32


class KeyFileError(Exception):
    pass


@dataclass(frozen=True)
class KeyStore:
    pan_hash_key: bytes = field(repr=False)
    bdks: dict[str, bytes] = field(repr=False)

    def bdk(self, bdk_id: str) -> bytes:
        try:
            return self.bdks[bdk_id]
        except KeyError:
            raise KeyFileError(f"BDK {bdk_id} is not in the key file") from None

    def bdks_by_raw_id(self) -> dict[bytes, bytes]:
        return {bytes.fromhex(k): v for k, v in self.bdks.items()}

    def pan_hash(self, pan: str) -> bytes:
        """Keyed hash for look-ups: HMAC-SHA256 under a key separate from every BDK."""
        return hmac.new(self.pan_hash_key, pan.encode("ascii"), hashlib.sha256).digest()


def load(path: Path) -> KeyStore:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        store = KeyStore(
            pan_hash_key=bytes.fromhex(data["pan_hash_key"]),
            bdks={k: bytes.fromhex(v) for k, v in data["bdks"].items()},
        )
    except FileNotFoundError:
        raise KeyFileError(f"key file {path} does not exist (run `loyalty admin bdk generate`)")\
            from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise KeyFileError(f"key file {path} is unreadable or malformed ({type(exc).__name__})")\
            from None
    if len(store.pan_hash_key) != PAN_HASH_KEY_BYTES or any(
        len(v) != BDK_BYTES or len(k) != 8 for k, v in store.bdks.items()
    ):
        raise KeyFileError(f"key file {path} has keys of the wrong length")
    return store


def load_or_create(path: Path) -> KeyStore:
    if path.exists():
        return load(path)
    store = KeyStore(pan_hash_key=secrets.token_bytes(PAN_HASH_KEY_BYTES), bdks={})
    save(path, store)
    return store


def save(path: Path, store: KeyStore) -> None:
    """Write atomically with owner-only permissions."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = json.dumps(
        {"pan_hash_key": store.pan_hash_key.hex(),
         "bdks": {k: v.hex() for k, v in sorted(store.bdks.items())}},
        indent=2,
    )
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(body)
    os.replace(tmp, path)


def add_bdk(path: Path, bdk_id: str | None = None) -> str:
    """Generate a new random BDK into the key file; returns its ID."""
    store = load_or_create(path)
    if bdk_id is None:
        bdk_id = secrets.token_hex(4).upper()
        while bdk_id in store.bdks:
            bdk_id = secrets.token_hex(4).upper()
    elif bdk_id in store.bdks:
        raise KeyFileError(f"BDK {bdk_id} already exists")
    bdks = dict(store.bdks)
    bdks[bdk_id] = secrets.token_bytes(BDK_BYTES)
    save(path, KeyStore(pan_hash_key=store.pan_hash_key, bdks=bdks))
    return bdk_id
