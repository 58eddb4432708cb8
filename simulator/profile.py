"""Terminal profile files: what a simulated terminal keeps between runs.

Theory of operation
-------------------
A profile is the provisioning a real terminal gets at injection (TID, initial key ID,
initial key) plus the state it must never lose: the last KSN counter and STAN it used, and
the 0100 it has not yet confirmed or reversed (`pending`). The switch refuses a counter that
is not above the last one it accepted, so the counter is written back to the file
(atomically, mode 0600) after every request is built and before it is sent: a crash can waste
a counter value but never reuse one.

`loyalty admin terminal profile TID --out FILE` writes the file; the simulator reads and
advances it. The key is only ever in this file: no repr, message or transcript shows it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

from protocol.cardblock import TID_BYTES
from protocol.fields import ProcessingCode
from simulator.terminal import Clock, Original, Terminal, utc_now

INITIAL_KEY_BYTES: Final = 16
INITIAL_KEY_ID_BYTES: Final = 8
COUNTER_MAX: Final = 2**32 - 1


class ProfileError(Exception):
    """A profile file that is missing, unreadable or malformed; the message names the fault."""


@dataclass(frozen=True, slots=True)
class Pending:
    """A 0100 the terminal received an RRN for and has neither confirmed nor reversed."""

    original: Original
    rrn: str


@dataclass(frozen=True, slots=True)
class Profile:
    tid: str
    initial_key_id: bytes
    initial_key: bytes = field(repr=False)
    host: str = "127.0.0.1"
    port: int = 8583
    ksn_counter: int = 0
    last_stan: int = 0
    pending: Pending | None = None

    def terminal(self, clock: Clock = utc_now) -> Terminal:
        return Terminal.from_profile(self.tid, self.initial_key, self.initial_key_id,
                                     self.ksn_counter, clock=clock, last_stan=self.last_stan)

    def advanced(self, terminal: Terminal) -> Profile:
        """This profile with the terminal's counter and STAN sequence as they are now."""
        return replace(self, ksn_counter=terminal.keys.counter, last_stan=terminal.last_stan)

    def to_json(self) -> dict[str, Any]:
        pending = None
        if self.pending is not None:
            o = self.pending.original
            pending = {"processing_code": o.processing_code.value, "amount": o.amount,
                       "stan": o.stan, "transmission_time": o.transmission_time,
                       "rrn": self.pending.rrn}
        return {"tid": self.tid, "initial_key_id": self.initial_key_id.hex().upper(),
                "initial_key": self.initial_key.hex().upper(),
                "switch": {"host": self.host, "port": self.port},
                "ksn_counter": self.ksn_counter, "last_stan": self.last_stan,
                "pending": pending}


def load(path: Path) -> Profile:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ProfileError(f"profile {path} does not exist (write one with `loyalty admin "
                           "terminal profile TID --out FILE`)") from None
    except (OSError, ValueError) as exc:
        raise ProfileError(f"profile {path} is not readable JSON ({type(exc).__name__})"
                           ) from None
    try:
        return _parse(data)
    except ProfileError as exc:
        raise ProfileError(f"profile {path}: {exc}") from None


def _parse(data: Any) -> Profile:
    if not isinstance(data, dict):
        raise ProfileError("not a JSON object")
    tid = _get(data, "tid", str)
    if len(tid) != TID_BYTES or not (tid.isascii() and tid.isalnum()):
        raise ProfileError(f"tid must be {TID_BYTES} letters or digits")
    switch = _get(data, "switch", dict)
    port = _get(switch, "port", int)
    if not 1 <= port <= 65535:
        raise ProfileError("switch.port must be 1..65535")
    counter = _get(data, "ksn_counter", int)
    if not 0 <= counter <= COUNTER_MAX:
        raise ProfileError(f"ksn_counter must be 0..{COUNTER_MAX}")
    last_stan = _get(data, "last_stan", int)
    if not 0 <= last_stan <= 999_999:
        raise ProfileError("last_stan must be 0..999999")
    return Profile(
        tid=tid,
        initial_key_id=_hex(data, "initial_key_id", INITIAL_KEY_ID_BYTES),
        initial_key=_hex(data, "initial_key", INITIAL_KEY_BYTES),
        host=_get(switch, "host", str), port=port, ksn_counter=counter, last_stan=last_stan,
        pending=_pending(data.get("pending")))


def _pending(data: Any) -> Pending | None:
    if data is None:
        return None
    if not isinstance(data, dict):
        raise ProfileError("pending must be an object or null")
    try:
        code = ProcessingCode(_get(data, "processing_code", str))
    except ValueError:
        raise ProfileError("pending.processing_code is not a processing code") from None
    original = Original(code, _get(data, "amount", int), _get(data, "stan", str),
                        _get(data, "transmission_time", str))
    return Pending(original, _get(data, "rrn", str))


def _get(data: dict[str, Any], key: str, kind: type[Any]) -> Any:
    value = data.get(key)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ProfileError(f"{key} is missing or not a {kind.__name__}")
    return value


def _hex(data: dict[str, Any], key: str, size: int) -> bytes:
    # The message names the field only: the value may be the key.
    text = _get(data, key, str)
    try:
        value = bytes.fromhex(text)
    except ValueError:
        raise ProfileError(f"{key} is not hexadecimal") from None
    if len(value) != size:
        raise ProfileError(f"{key} must be {size * 2} hex digits")
    return value


def save(path: Path, profile: Profile) -> None:
    """Write `profile` atomically, owner-only, and flush it to disk before returning."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = json.dumps(profile.to_json(), indent=2) + "\n"
    tmp = path.with_name(path.name + ".tmp")
    # A leftover .tmp (a crash, or a link someone planted) is removed, never written
    # through: the key goes only into a file made here, owner-only from its first byte.
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(body)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class ProfileFile:
    """A profile and the file it lives in: `checkpoint` writes the terminal's counter back."""

    def __init__(self, path: Path, clock: Clock = utc_now) -> None:
        self.path = path
        self.profile = load(path)
        self.terminal = self.profile.terminal(clock)

    def checkpoint(self) -> None:
        """Save the terminal's counter and STAN (call after building, before sending)."""
        self._save(self.profile.advanced(self.terminal))

    def remember(self, pending: Pending | None) -> None:
        """Store (or clear) the 0100 awaiting its confirm or reversal."""
        self._save(replace(self.profile.advanced(self.terminal), pending=pending))

    def _save(self, profile: Profile) -> None:
        if profile != self.profile:
            save(self.path, profile)
            self.profile = profile
