"""Structured logs: one JSON object per line on stderr, configured once at process start.

Theory of operation. `configure` installs one handler on the root logger with the
`JsonFormatter`, at the level from the settings (`log_level`). A line holds `ts` (UTC,
ISO 8601, milliseconds), `level`, `logger`, `event` (the log call's message: a snake_case
event name such as `request_declined`) and the record's `extra` fields, e.g.

    {"ts": "2026-03-01T09:30:00.123Z", "level": "info", "logger": "switch.processor",
     "event": "request_declined", "reason": "INSUFFICIENT_FUNDS", "rrn": "...", "stan": ...}

Card data is never passed to a log call: at most a masked PAN (`protocol.cardblock.mask_pan`,
`603799******1234`). As a last defence the formatter masks every run of 13 to 19 digits that
passes the Luhn check (`mask_pans`) in every value it writes (a number so masked becomes a
string, keeping the line valid JSON), so a PAN that slipped into a message, a field or an
exception text still leaves the process masked. Keys, KSNs and field 62 are
never logged; the mask cannot recognise those, so it is no excuse to pass them.

The handler looks up `sys.stderr` at every write, so a test that swaps stderr (pytest's
capture) does not leave it writing to a closed stream. `configure` replaces only a handler
it installed itself, so calling it twice (tests calling the CLI in-process) keeps other
handlers, such as pytest's, in place.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from switch.cards import luhn_is_valid

LEVELS = ("debug", "info", "warning", "error")
# Runs of digits that could be a card number (ISO/IEC 7812: 13 to 19 digits), not part of a
# longer digit run.
_CANDIDATE = re.compile(r"(?<![0-9])[0-9]{13,19}(?![0-9])")
# What a LogRecord carries by itself; every other attribute came from `extra=`.
RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName"}


def mask_pans(text: str) -> str:
    """`text` with every Luhn-valid run of 13-19 digits masked to its first 6 and last 4."""
    return _CANDIDATE.sub(_mask_match, text)


def _mask_match(match: re.Match[str]) -> str:
    digits = match.group()
    if not luhn_is_valid(digits):
        return digits
    return digits[:6] + "*" * (len(digits) - 10) + digits[-4:]


def find_pans(text: str, length: int = 16) -> list[str]:
    """The Luhn-valid runs of exactly `length` digits in `text` (the test suite's log scan)."""
    found = []
    for match in _CANDIDATE.finditer(text):
        digits = match.group()
        if len(digits) == length and luhn_is_valid(digits):
            found.append(digits)
    return found


def _scrubbed(value: Any) -> Any:
    """`value` with card numbers masked, keeping JSON types where nothing was masked (a
    masked number becomes a string, so the line stays valid JSON)."""
    if isinstance(value, str):
        return mask_pans(value)
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        text = str(value)
        masked = mask_pans(text)
        return value if masked == text else masked
    if isinstance(value, dict):
        return {mask_pans(str(k)): _scrubbed(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_scrubbed(v) for v in value]
    return mask_pans(str(value))


class JsonFormatter(logging.Formatter):
    """One JSON object per record. Every value goes through `mask_pans`, and the finished
    line once more (a JSON escape could join digits into a new run; inside a string, where
    masking keeps the line valid)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in RECORD_ATTRIBUTES and key not in line:
                line[key] = value
        if record.exc_info is not None:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return mask_pans(json.dumps(_scrubbed(line), ensure_ascii=False))


class _StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever `sys.stderr` is at the time of the write."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass  # always sys.stderr


_installed: logging.Handler | None = None


def configure(level: str) -> None:
    """Log JSON lines at `level` (one of LEVELS) and above to stderr, from the root logger."""
    global _installed
    root = logging.getLogger()
    if _installed is not None:
        root.removeHandler(_installed)
    handler = _StderrHandler()
    handler.setFormatter(JsonFormatter())
    root.addHandler(handler)
    root.setLevel(level.upper())
    _installed = handler
