"""Length-prefixed framing: `LEN || MSG`, LEN a 2-byte big-endian count of the MSG bytes.

Theory of operation: `FrameDecoder` is a sans-I/O state machine. The caller feeds it whatever
bytes the transport delivered, in chunks of any size, and gets back the frames those bytes
completed. Between calls it holds at most one unfinished frame: first the (up to 2) prefix
bytes, then the body. The prefix is checked the moment its second byte arrives, so a hostile
length is refused before a single body byte is kept. After a `FramingError` the stream has no
trustworthy frame boundary any more; the decoder stays failed and the connection must close.

`pending` tells the owner whether a frame has started but not finished, which is what a
per-frame deadline needs: start the clock when it turns true, stop it when it turns false.
"""

from __future__ import annotations

from protocol.errors import FramingError

__all__ = ["FRAME_BYTES_MAX", "PREFIX_BYTES", "FrameDecoder", "encode_frame"]

FRAME_BYTES_MAX = 2048
"""Largest MSG a frame may carry; a prefix of 0 or above this is a framing error."""

PREFIX_BYTES = 2


def _check_length(length: int, frame_bytes_max: int, position: int) -> None:
    if length == 0:
        raise FramingError("frame length is 0", position=position)
    if length > frame_bytes_max:
        raise FramingError(f"frame length {length} exceeds {frame_bytes_max}", position=position)


def encode_frame(msg: bytes, frame_bytes_max: int = FRAME_BYTES_MAX) -> bytes:
    """Prefix `msg` with its length. An empty or oversized message raises `FramingError`."""
    _check_length(len(msg), frame_bytes_max, 0)
    return len(msg).to_bytes(PREFIX_BYTES, "big") + msg


class FrameDecoder:
    """Split a byte stream into frames; see the module docstring."""

    __slots__ = ("_body_length", "_buffer", "_failed", "_offset", "frame_bytes_max")

    def __init__(self, frame_bytes_max: int = FRAME_BYTES_MAX) -> None:
        assert 0 < frame_bytes_max < 1 << (8 * PREFIX_BYTES), "limit must fit the prefix"
        self.frame_bytes_max = frame_bytes_max
        self._buffer = bytearray()
        # None while reading the prefix; the announced body length while reading the body.
        self._body_length: int | None = None
        self._offset = 0  # stream position of the next byte to be fed, for error reports
        self._failed: FramingError | None = None

    @property
    def pending(self) -> bool:
        """True while a frame has started (at least one prefix byte) but is not complete."""
        return self._body_length is not None or bool(self._buffer)

    @property
    def buffered(self) -> int:
        """Bytes held for the unfinished frame; never more than `frame_bytes_max`."""
        return len(self._buffer)

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Consume `data`; return every frame body it completed, in order."""
        if self._failed is not None:
            raise self._failed
        frames: list[bytes] = []
        view = memoryview(data)
        try:
            while view:
                if self._body_length is None:
                    view = self._read_prefix(view)
                else:
                    view = self._read_body(view, frames)
        except FramingError as exc:
            self._failed = exc
            raise
        return frames

    def _read_prefix(self, view: memoryview) -> memoryview:
        take = PREFIX_BYTES - len(self._buffer)
        self._buffer += view[:take]
        consumed = min(take, len(view))
        self._offset += consumed
        if len(self._buffer) == PREFIX_BYTES:
            length = int.from_bytes(self._buffer, "big")
            self._buffer.clear()
            _check_length(length, self.frame_bytes_max, self._offset - PREFIX_BYTES)
            self._body_length = length
        return view[consumed:]

    def _read_body(self, view: memoryview, frames: list[bytes]) -> memoryview:
        assert self._body_length is not None
        take = min(self._body_length - len(self._buffer), len(view))
        if not self._buffer and take == self._body_length:
            frames.append(bytes(view[:take]))  # whole body in this chunk: no copy via buffer
        else:
            self._buffer += view[:take]
            if len(self._buffer) == self._body_length:
                frames.append(bytes(self._buffer))
                self._buffer.clear()
        self._offset += take
        if not self._buffer:
            self._body_length = None
        return view[take:]
