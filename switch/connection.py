"""One terminal connection: read frames, hand them to the handler, write the answers back.

Theory of operation. Each accepted socket gets one task, running `Connection.run`. It reads
the stream in chunks of at most one maximal frame and feeds them to the sans-I/O
`FrameDecoder`. Every whole frame body becomes a request task calling `Handler.handle`, so
a terminal may pipeline: responses are written in the order they complete, and the terminal
matches them by STAN. This module knows nothing of ISO 8583 beyond the length prefix.

Flow control, in one place (`_wait_for_slot`): at most `in_flight_per_connection_max`
requests run at once. At the bound the connection task simply stops calling `read()`; the
StreamReader buffer then fills to its limit (a small multiple of `frame_bytes_max`),
asyncio pauses the transport, the kernel window closes and the terminal blocks. Memory per
connection stays bounded however fast it sends. A request holds its slot until its answer
is drained, so a terminal that never reads its answers also ends up blocked.

Deadlines are `asyncio.timeout` scopes on each read, chosen by state (`_read_deadline`):
- a frame has started: its absolute deadline, `frame_timeout_s` after its first byte (time
  spent paused for backpressure is credited back: that wait is ours, not the sender's);
- nothing in flight and nothing started: `idle_timeout_s` from now (the last request to
  finish reschedules the open read to that, so idleness counts from the last answer);
- otherwise none: a connection with work in flight is not idle.
Each write is drained within `write_timeout_s`.

Ending. EOF, a framing error, a deadline or a handler bug closes the socket at once; the
requests already running are not cancelled (they may be committing to the database) but
their answers are dropped. The task ends when they have finished, so nothing outlives the
connection. Graceful shutdown is different: `stop_reading` stops taking frames, running
requests finish and are answered, then the socket closes; `abort` cancels what remains.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from dataclasses import dataclass
from typing import Protocol

from protocol.errors import FramingError
from protocol.framing import FRAME_BYTES_MAX, PREFIX_BYTES, FrameDecoder, encode_frame
from switch.config import Settings
from switch.metrics import CONNECTIONS_CLOSED, FRAMES_REJECTED, IN_FLIGHT

__all__ = ["Connection", "Handler", "Peer"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Peer:
    """Who is on the other end; safe to log (no card data)."""

    host: str
    port: int
    connection_id: int

    def __str__(self) -> str:
        return f"#{self.connection_id} {self.host}:{self.port}"


class Handler(Protocol):
    async def handle(self, frame: bytes, peer: Peer) -> bytes | None:
        """Process one frame body; return the response body (no length prefix) or None.

        Calls for one connection run concurrently. An exception is a bug: it is logged
        without its message (which might quote payload), counted, and the connection closes.
        """
        ...


class Connection:
    """The state of one connection; `run` is its task. See the module docstring."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        peer: Peer,
        settings: Settings,
        handler: Handler,
    ) -> None:
        self.peer = peer
        self._reader = reader
        self._writer = writer
        self._settings = settings
        self._handler = handler
        self._decoder = FrameDecoder(settings.frame_bytes_max)
        self._requests: set[asyncio.Task[None]] = set()
        self._slot_freed = asyncio.Event()
        self._read_timer: asyncio.Timeout | None = None  # set only while a read is pending
        self._frame_deadline = 0.0  # loop time by which the started frame must be whole
        self._closed = False  # socket closed or closing: answers are dropped from now on
        self._reader_task: asyncio.Task[None] | None = None  # set only while reading
        self._stop_requested = False
        # One maximal frame per read, so the frames decoded from one chunk and not yet
        # dispatched are bounded too.
        self._read_size = settings.frame_bytes_max + PREFIX_BYTES

    async def run(self) -> None:
        try:
            await self._read_phase()
            if self._requests:
                await asyncio.wait(set(self._requests))
        finally:
            await self._close_socket()

    def stop_reading(self) -> None:
        """Graceful shutdown: take no more frames; running requests finish and are answered."""
        if self._stop_requested:
            return
        self._stop_requested = True
        if not self._closed:
            CONNECTIONS_CLOSED.labels("shutdown").inc()
        if self._reader_task is not None:
            # Interrupt a wait on the socket or on a slot; `_read_phase` absorbs this.
            self._reader_task.cancel()

    def abort(self) -> None:
        """Forced end after the shutdown grace: drop the socket, cancel running requests."""
        self._close(None, abort=True)
        for task in self._requests:
            task.cancel()

    # Reading.

    async def _read_phase(self) -> None:
        reader_task = self._reader_task = asyncio.current_task()
        assert reader_task is not None
        try:
            await self._read_frames()
        except asyncio.CancelledError:
            # Only our own stop is absorbed; any other cancellation goes on.
            if not self._stop_requested or reader_task.uncancel() > 0:
                raise
        finally:
            self._reader_task = None

    async def _read_frames(self) -> None:
        while self._accepting():
            chunk = await self._read_chunk()
            if not chunk:
                # The peer is done (or we closed): answers still to come are dropped, but
                # what was already written is flushed.
                self._close(None, abort=False)
                return
            frames = self._decode(chunk)
            for frame in frames:
                await self._wait_for_slot()
                if not self._accepting():
                    return
                self._dispatch(frame)

    def _accepting(self) -> bool:
        return not (self._closed or self._stop_requested)

    async def _read_chunk(self) -> bytes:
        """The next bytes from the socket; b"" once the connection is over."""
        try:
            async with asyncio.timeout_at(self._read_deadline()) as timer:
                self._read_timer = timer
                try:
                    return await self._reader.read(self._read_size)
                finally:
                    self._read_timer = None
        except TimeoutError:
            self._close("frame_timeout" if self._decoder.pending else "idle_timeout")
        except OSError:  # reset by the peer, or a TLS record error
            self._close(None)
        return b""

    def _read_deadline(self) -> float | None:
        if self._decoder.pending:
            return self._frame_deadline
        if self._requests:
            return None
        return asyncio.get_running_loop().time() + self._settings.idle_timeout_s

    def _decode(self, chunk: bytes) -> list[bytes]:
        was_pending = self._decoder.pending
        try:
            frames = self._decoder.feed(chunk)
        except FramingError:
            # The length prefix is out of bounds; the body was never buffered.
            FRAMES_REJECTED.labels("length").inc()
            self._close("framing")
            return []
        if self._decoder.pending and (frames or not was_pending):
            # A new frame started in this chunk: its clock starts now.
            now = asyncio.get_running_loop().time()
            self._frame_deadline = now + self._settings.frame_timeout_s
        return frames

    async def _wait_for_slot(self) -> None:
        """Backpressure: while the connection is at its in-flight bound, do not read."""
        if len(self._requests) < self._settings.in_flight_per_connection_max:
            return
        loop = asyncio.get_running_loop()
        paused_at = loop.time()
        while len(self._requests) >= self._settings.in_flight_per_connection_max:
            self._slot_freed.clear()
            await self._slot_freed.wait()
        # The pause was ours, not the sender's: a frame begun before it gets the time back.
        self._frame_deadline += loop.time() - paused_at

    # Requests.

    def _dispatch(self, frame: bytes) -> None:
        name = f"switch-request-{self.peer.connection_id}"
        task = asyncio.create_task(self._serve(frame), name=name)
        self._requests.add(task)
        IN_FLIGHT.inc()
        # A done callback, so the count and the gauge stay right even if the task is
        # cancelled before it first runs.
        task.add_done_callback(self._request_done)

    def _request_done(self, task: asyncio.Task[None]) -> None:
        self._requests.discard(task)
        IN_FLIGHT.dec()
        self._slot_freed.set()
        timer = self._read_timer
        if not self._requests and timer is not None and timer.when() is None:
            # The pending read has no deadline because work was in flight; now there is
            # none, so the connection is idle from this moment.
            now = asyncio.get_running_loop().time()
            timer.reschedule(now + self._settings.idle_timeout_s)

    async def _serve(self, frame: bytes) -> None:
        try:
            response = await self._handler.handle(frame, self.peer)
            # An empty or oversized answer is a handler bug too. The bound is the
            # protocol's (what a terminal must accept), not our input limit.
            data = None if response is None else encode_frame(response, FRAME_BYTES_MAX)
        except Exception as exc:  # a handler bug must cost one connection, not the server
            self._handler_failed(exc)
            return
        if data is not None:
            await self._write(data)

    async def _write(self, data: bytes) -> None:
        if self._closed or self._writer.is_closing():
            return  # the peer is gone or the connection failed: the answer is dropped
        self._writer.write(data)
        try:
            async with asyncio.timeout(self._settings.write_timeout_s):
                await self._writer.drain()
        except TimeoutError:
            self._close("write_timeout")
        except OSError:
            self._close(None)

    def _handler_failed(self, exc: Exception) -> None:
        # Type and stack only: an exception message may quote the payload.
        stack = "".join(traceback.format_tb(exc.__traceback__))
        log.error("handler_failed", extra={"error": type(exc).__qualname__,
                                           "peer": str(self.peer), "stack": stack})
        self._close("handler_error")

    # Closing.

    def _close(self, reason: str | None, *, abort: bool = True) -> None:
        """Close the socket now; the first call wins. `reason` is given when the switch, not
        the peer, ends the connection. Aborting drops unsent bytes (the peer misbehaved or
        is gone); a graceful close flushes them first."""
        if self._closed:
            return
        self._closed = True
        if reason is not None:
            CONNECTIONS_CLOSED.labels(reason).inc()
            log.info("connection_closed", extra={"peer": str(self.peer), "reason": reason})
        if abort:
            self._writer.transport.abort()
        else:
            self._writer.close()

    async def _close_socket(self) -> None:
        """Flush and close; a peer that will not take the last bytes is cut off."""
        self._close(None, abort=False)
        try:
            async with asyncio.timeout(self._settings.write_timeout_s):
                await self._writer.wait_closed()
        except TimeoutError:
            self._writer.transport.abort()
        except OSError:
            pass  # already lost: nothing left to flush
