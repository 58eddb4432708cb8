"""The typed errors that `protocol/` raises, and the response code each maps to.

Two families, because the switch treats them differently:
- `DecodeError`: the bytes are not a well-formed LSP-8583 message (response code 30).
  `FramingError` is the special case at the length prefix, where the only safe reaction
  is to close the connection.
- `SecurityError`: the message is well formed but fails a cryptographic or key-state
  check (response code 63).
Nothing else may escape a decode: callers catch `ProtocolError` and nothing broader.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Base of every error raised on purpose by `protocol/`."""

    response_code: str = "96"


class DecodeError(ProtocolError):
    """Malformed input: carries the field number (0 = MTI, 1 = bitmaps) and byte position."""

    response_code = "30"

    def __init__(self, reason: str, *, field: int | None = None, position: int | None = None):
        self.reason = reason
        self.field = field
        self.position = position
        where = []
        if field is not None:
            where.append(f"field {field}")
        if position is not None:
            where.append(f"byte {position}")
        super().__init__(f"{reason} ({', '.join(where)})" if where else reason)


class FramingError(DecodeError):
    """The 2-byte length prefix is out of bounds: the connection must be closed."""


class SecurityError(ProtocolError):
    """A MAC, decryption, padding or key-state failure. `kind` names it for metrics."""

    response_code = "63"

    def __init__(self, kind: str, detail: str = ""):
        self.kind = kind
        super().__init__(f"{kind}: {detail}" if detail else kind)
