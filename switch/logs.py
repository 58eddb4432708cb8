"""Structured logs: one JSON object per line on stderr, configured once at process start.

Theory of operation. `configure` installs one handler on the root logger with the
`JsonFormatter`, at the level from the settings (`log_level`). A line holds `ts` (UTC,
ISO 8601, milliseconds), `level`, `logger`, `event` (the log call's message: a snake_case
event name such as `request_declined`) and the record's `extra` fields, e.g.

    {"ts": "2026-03-01T09:30:00.123Z", "level": "info", "logger": "switch.processor",
     "event": "request_declined", "reason": "INSUFFICIENT_FUNDS", "rrn": "...", "stan": ...}

Card data is never passed to a log call: at most a masked PAN (`protocol.cardblock.mask_pan`,
`603799******1234`). As a last defence the formatter masks every card number that passes the
Luhn check (`mask_pans`) in every value it writes (a number so masked becomes a string,
keeping the line valid JSON), so a PAN that slipped into a message, a field or an exception
text still leaves the process masked. A card number is 13 to 19 digits written as one run,
or as people write it: groups joined by single spaces or hyphens (`6037 9912 3456 7893`,
`6037-9912-3456-7893`), of four digits each but the last (1 to 4), or Amex's 4-6-5 and
Diners' 4-6-4. A group is never split, so numbers grouped otherwise stay readable: an RRN
and a STAN (`123456789012 000123`), a date (`1405-09-03`), amounts (`250000 3750`). A grouped
card number is masked without its separators (`603799******7893`), and found even with
another group joined on (`6037 9912 3456 7893 1405`, a PAN and a year); card numbers that
share groups are masked as one run. Keys, KSNs and field 62 are
never logged; the mask cannot recognise those, so it is no excuse to pass them.

The handler looks up `sys.stderr` at every write, so a test that swaps stderr (pytest's
capture) does not leave it writing to a closed stream. `configure` replaces only a handler
it installed itself, so calling it twice keeps other handlers, such as pytest's, in place.
The CLI uses `configured`, which undoes its `configure` when the command ends: `main`
called in-process (as tests do) leaves the root logger's handlers and level as it found
them, so what one test runs cannot change what a later one sees.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, TextIO

from switch.cards import luhn_is_valid

LEVELS = ("debug", "info", "warning", "error")
# Runs of digits that could be a card number (ISO/IEC 7812: 13 to 19 digits), not part of a
# longer digit run.
_CANDIDATE = re.compile(r"(?<![0-9])[0-9]{13,19}(?![0-9])")
# Digit groups joined by single spaces or hyphens: a card number may be some of its groups.
_CHAIN = re.compile(r"(?<![0-9])[0-9]+(?:[ -][0-9]+)+(?![0-9])")
_SEPARATOR = re.compile(r"[ -]")
_GROUPED_LAYOUTS = ((4, 6, 4), (4, 6, 5))  # Diners, Amex; besides groups of four
_GROUPS_MAX = 5  # 4-4-4-4-3, the longest layout
# What a LogRecord carries by itself; every other attribute came from `extra=`.
RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName"}


def mask_pans(text: str) -> str:
    """`text` with every Luhn-valid card number (13-19 digits, one run or grouped: see the
    module docstring) masked to its first 6 and last 4 digits."""
    return _CANDIDATE.sub(_mask_match, _CHAIN.sub(_mask_chain, text))


def _masked(digits: str) -> str:
    return digits[:6] + "*" * (len(digits) - 10) + digits[-4:]


def _mask_match(match: re.Match[str]) -> str:
    digits = match.group()
    return _masked(digits) if luhn_is_valid(digits) else digits


def _is_card_layout(groups: list[str]) -> bool:
    sizes = tuple(len(g) for g in groups)
    if not 13 <= sum(sizes) <= 19:
        return False
    fours = all(size == 4 for size in sizes[:-1]) and sizes[-1] <= 4
    return fours or sizes in _GROUPED_LAYOUTS


def _grouped_cards(groups: list[str]) -> list[tuple[int, int]]:
    """Every run of consecutive groups that is a Luhn-valid card layout, as (first, end)
    group indexes, overlapping ones included."""
    return [(i, end) for i in range(len(groups) - 1)
            for end in range(i + 2, min(len(groups), i + _GROUPS_MAX) + 1)
            if _is_card_layout(groups[i:end]) and luhn_is_valid("".join(groups[i:end]))]


def _mask_chain(match: re.Match[str]) -> str:
    # Groups and separators alternate in `parts`: group k is parts[2k].
    parts = re.split(f"({_SEPARATOR.pattern})", match.group())
    spans: list[list[int]] = []
    # Overlapping card numbers are masked as one: a group joined on before a PAN may make a
    # card number of its own with the PAN's first groups, and must not expose its last ones.
    for first, end in _grouped_cards(parts[0::2]):
        if spans and first < spans[-1][1]:
            spans[-1][1] = max(spans[-1][1], end)
        else:
            spans.append([first, end])
    for first, end in reversed(spans):
        parts[2 * first:2 * end - 1] = [_masked("".join(parts[2 * first:2 * end - 1:2]))]
    return "".join(parts)


def find_pans(text: str, length: int = 16) -> list[str]:
    """The Luhn-valid card numbers of exactly `length` digits in `text`, written as one run
    or grouped (the test suite's log scan); the digits of each, in order."""
    found = [(m.start(), m.group()) for m in _CANDIDATE.finditer(text)
             if len(m.group()) == length and luhn_is_valid(m.group())]
    for m in _CHAIN.finditer(text):
        groups = _SEPARATOR.split(m.group())
        found += [(m.start(), digits) for first, end in _grouped_cards(groups)
                  if len(digits := "".join(groups[first:end])) == length]
    return [digits for _, digits in sorted(found)]


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


@contextlib.contextmanager
def configured(level: str) -> Iterator[None]:
    """`configure(level)` for the length of the block; afterwards the root logger has the
    handlers and level it had before (an earlier `configure`'s handler back in place)."""
    global _installed
    root = logging.getLogger()
    level_before, previous = root.level, _installed
    attached = previous is not None and previous in root.handlers
    configure(level)
    try:
        yield
    finally:
        if _installed is not None:
            root.removeHandler(_installed)
        if attached and previous is not None:
            root.addHandler(previous)  # the one this block's configure replaced
        _installed = previous
        root.setLevel(level_before)
