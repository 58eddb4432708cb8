"""An asyncio LSP-8583 client for one terminal: many requests in flight on one connection.

Theory of operation
-------------------
`simulator.terminal.Terminal` builds and signs requests; this module only moves bytes and
pairs each response with its request. One reader task owns the receiving half: it feeds what
arrives to a `FrameDecoder`, decodes each frame and hands it to the waiter registered under the
same identity (field 11 STAN, field 7). A sender registers its identity *before* writing, so a
response can never arrive ahead of its waiter; because pairing is by identity, any number of
requests may be in flight and their responses may come back in any order.

Several waits may share one registration: a retransmission sent while the first copy is still
unanswered waits for the same response, and an advice (0220/0400) repeated after a timeout
keeps its registration across attempts, so a late answer to an earlier copy still counts.
Registrations are removed when their last waiter leaves, so abandoned requests do not pile up.

Frames that pair with nothing (undecodable, without an identity, or nobody waiting) go to a
bounded queue read by `next_unmatched_frame`: the raw path for fault tests, together with
`write_bytes` and `send_message_bytes`. When the connection ends, whichever side ended it,
every waiter wakes with `ConnectionClosed`; nothing waits forever.

Nothing here logs. Errors name a request by MTI, STAN and field 7 only (see `Prepared`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from ssl import SSLContext
from typing import Any, Final, TypeAlias, TypeVar

from protocol import messages
from protocol.errors import DecodeError, FramingError
from protocol.fields import PosEntryMode, ProcessingCode
from protocol.framing import FrameDecoder, encode_frame
from protocol.messages import AuthResponse, ConfirmResponse, NetworkResponse, ReversalResponse
from protocol.values import AdditionalData
from simulator.terminal import (
    Identity,
    Prepared,
    PreparedAuth,
    Response,
    SimulatorError,
    Terminal,
    check_response,
)

P = TypeVar("P", bound=messages.Response)

UNMATCHED_MAX: Final = 1_000
"""Unpaired frames kept for `next_unmatched_frame`; beyond it the oldest is dropped."""

_READ_BYTES: Final = 64 * 1024

_Arrival: TypeAlias = tuple[bytes, messages.Message]
"""A frame body and its decoded message. A waiter's future resolves to one, or to None when
the connection has ended (a result, not an exception, so no exception goes unretrieved)."""


class ConnectionClosed(SimulatorError):  # noqa: N818 - the name the switch's tests use
    """The connection ended (closed by either side, reset, or broken framing)."""


class NoResponse(SimulatorError):  # noqa: N818 - the name the switch's tests use
    """Nothing arrived in time. `prepared` is the unanswered request (reverse it if it was a
    0100); None when the wait was `next_unmatched_frame`."""

    def __init__(self, prepared: Prepared[Any, Any] | None, attempts: int = 1) -> None:
        self.prepared = prepared
        self.attempts = attempts
        what = "an unmatched frame" if prepared is None else f"a response to {prepared!r}"
        super().__init__(f"no {what} after {attempts} attempt(s)")


@dataclass(eq=False, slots=True)
class _Registration:
    future: asyncio.Future[_Arrival | None]
    waiters: int = 0


class TerminalClient:
    """One connection of one terminal. Use as
    `async with await TerminalClient(terminal).connect(host, port) as client: ...`.

    `timeout_s` is the default wait for one response; `advice_attempts` how many times
    `confirm`, `reverse` and `send_advice` send the same 0220/0400 before giving up.
    """

    def __init__(
        self, terminal: Terminal, *, timeout_s: float = 10.0, advice_attempts: int = 3
    ) -> None:
        if advice_attempts < 1:
            raise ValueError("advice_attempts must be at least 1")
        self.terminal = terminal
        self.timeout_s = timeout_s
        self.advice_attempts = advice_attempts
        self.unmatched_dropped = 0
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._registrations: dict[Identity, _Registration] = {}
        self._unmatched: asyncio.Queue[bytes | None] = asyncio.Queue(UNMATCHED_MAX)
        self._closed_reason: str | None = None

    def __repr__(self) -> str:
        return f"TerminalClient(tid={self.terminal.tid!r}, in_flight={self.in_flight})"

    @property
    def in_flight(self) -> int:
        """Identities awaiting a response."""
        return len(self._registrations)

    @property
    def closed(self) -> bool:
        return self._closed_reason is not None

    # -- connection --------------------------------------------------------------------------

    async def connect(self, host: str, port: int, ssl: SSLContext | None = None) -> TerminalClient:
        if self._writer is not None or self.closed:
            raise RuntimeError("a TerminalClient connects once")
        reader, self._writer = await asyncio.open_connection(host, port, ssl=ssl)
        self._reader_task = asyncio.create_task(self._read_loop(reader))
        return self

    async def close(self) -> None:
        """Close the connection; pending requests fail with `ConnectionClosed`."""
        self._shut("closed by the client")
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await self._writer.wait_closed()
        task = self._reader_task
        if task is not None:
            task.cancel()
            await asyncio.wait({task})
            error = None if task.cancelled() else task.exception()
            if error is not None:
                raise error  # a bug in the reader: surface it rather than lose it

    async def __aenter__(self) -> TerminalClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        decoder = FrameDecoder()
        reason = "closed by the switch"
        try:
            while data := await reader.read(_READ_BYTES):
                for frame in decoder.feed(data):
                    self._dispatch(frame)
        except FramingError:
            reason = "the switch sent a bad frame length"
        except OSError as exc:  # resets, TLS failures (ssl.SSLError is an OSError)
            reason = f"connection lost ({type(exc).__name__})"
        finally:
            self._shut(reason)
            if self._writer is not None:
                self._writer.close()

    def _dispatch(self, frame: bytes) -> None:
        try:
            message: messages.Message | None = messages.decode(frame)
        except DecodeError:
            message = None
        registration = None
        if message is not None and message.stan is not None and message.transmission_time:
            identity = (message.stan, message.transmission_time)
            registration = self._registrations.pop(identity, None)
        if registration is None or message is None:
            self._park(frame)
        else:
            registration.future.set_result((frame, message))

    def _park(self, frame: bytes | None) -> None:
        if self._unmatched.full():
            self._unmatched.get_nowait()
            self.unmatched_dropped += 1
        self._unmatched.put_nowait(frame)

    def _shut(self, reason: str) -> None:
        """Record that the connection ended and wake every waiter; idempotent."""
        if self._closed_reason is not None:
            return
        self._closed_reason = reason
        for registration in self._registrations.values():
            registration.future.set_result(None)
        self._registrations.clear()
        self._park(None)  # wakes `next_unmatched_frame`

    def _check_open(self) -> asyncio.StreamWriter:
        if self._closed_reason is not None:
            raise ConnectionClosed(self._closed_reason)
        if self._writer is None:
            raise ConnectionClosed("not connected")
        return self._writer

    async def _write(self, data: bytes) -> None:
        writer = self._check_open()
        try:
            writer.write(data)  # queues all of `data` at once: concurrent frames never interleave
            await writer.drain()
        except OSError as exc:
            raise ConnectionClosed(f"write failed ({type(exc).__name__})") from None

    @contextlib.contextmanager
    def _registered(self, identity: Identity) -> Iterator[asyncio.Future[_Arrival | None]]:
        """Wait on `identity` for the duration of the block, sharing any existing wait."""
        self._check_open()
        registration = self._registrations.get(identity)
        if registration is None:
            future = asyncio.get_running_loop().create_future()
            registration = self._registrations[identity] = _Registration(future)
        registration.waiters += 1
        try:
            yield registration.future
        finally:
            registration.waiters -= 1
            if registration.waiters == 0 and self._registrations.get(identity) is registration:
                del self._registrations[identity]

    def _arrival(self, future: asyncio.Future[_Arrival | None]) -> _Arrival:
        arrival = future.result()
        if arrival is None:
            raise ConnectionClosed(self._closed_reason or "closed")
        return arrival

    # -- sending -----------------------------------------------------------------------------

    async def send(self, prepared: Prepared[Any, P], timeout_s: float | None = None) -> Response[P]:
        """Send `prepared` once and return its checked response (`NoResponse` on timeout)."""
        return await self.send_advice(prepared, attempts=1, timeout_s=timeout_s)

    async def retransmit(
        self, prepared: Prepared[Any, P], timeout_s: float | None = None
    ) -> Response[P]:
        """Send the exact bytes of an earlier request again and await the response."""
        return await self.send(prepared, timeout_s)

    async def send_advice(
        self,
        prepared: Prepared[Any, P],
        *,
        attempts: int | None = None,
        timeout_s: float | None = None,
    ) -> Response[P]:
        """Send the same bytes up to `attempts` times, each followed by a wait of `timeout_s`,
        until a response arrives: what a terminal does with a 0220 or 0400."""
        attempts = self.advice_attempts if attempts is None else attempts
        timeout = self.timeout_s if timeout_s is None else timeout_s
        with self._registered(prepared.identity) as future:
            for _ in range(attempts):
                await self._write(prepared.frame)
                done, _pending = await asyncio.wait({future}, timeout=timeout)
                if done:
                    return check_response(prepared, *self._arrival(future))
        raise NoResponse(prepared, attempts)

    async def send_many(
        self, batch: Sequence[Prepared[Any, P]], timeout_s: float | None = None
    ) -> list[Response[P]]:
        """Pipeline `batch`: write every request at once, then collect the responses, which
        may arrive in any order, within one timeout. Results are in `batch` order."""
        if not batch:
            return []
        with contextlib.ExitStack() as stack:
            futures = [stack.enter_context(self._registered(p.identity)) for p in batch]
            await self._write(b"".join(prepared.frame for prepared in batch))
            timeout = self.timeout_s if timeout_s is None else timeout_s
            done, _pending = await asyncio.wait(set(futures), timeout=timeout)
            responses = []
            for prepared, future in zip(batch, futures, strict=True):
                if future not in done:
                    raise NoResponse(prepared)
                responses.append(check_response(prepared, *self._arrival(future)))
        return responses

    # -- raw access for fault tests ----------------------------------------------------------

    async def write_bytes(self, data: bytes) -> None:
        """Write `data` exactly as given, adding no length prefix (bad prefixes, split or
        concatenated frames). Any answer arrives through `next_unmatched_frame`."""
        await self._write(data)

    async def write_and_half_close(self, data: bytes) -> None:
        """Write `data` as given, then end the sending half of the connection (a cut in the
        middle of a frame when `data` is one). The switch sees the end of the stream; that it
        closed its side shows as `ConnectionClosed` from `next_unmatched_frame`."""
        writer = self._check_open()
        await self._write(data)
        if writer.can_write_eof():
            writer.write_eof()

    async def send_message_bytes(self, message: bytes) -> None:
        """Add the 2-byte length prefix to `message` and write it, without waiting for an
        answer; read that with `next_unmatched_frame` (or `send` it as a `Prepared`)."""
        await self._write(encode_frame(message))

    async def next_unmatched_frame(self, timeout_s: float | None = None) -> bytes:
        """The next frame body, prefix removed, that paired with no waiting request."""
        timeout = self.timeout_s if timeout_s is None else timeout_s
        try:
            frame = await asyncio.wait_for(self._unmatched.get(), timeout)
        except TimeoutError:
            raise NoResponse(None) from None
        if frame is None:
            self._unmatched.put_nowait(None)  # keep the end visible to the next reader
            raise ConnectionClosed(self._closed_reason or "closed")
        return frame

    # -- the terminal's transactions ---------------------------------------------------------

    async def sign_on(self) -> Response[NetworkResponse]:
        return await self.send(self.terminal.sign_on())

    async def sign_off(self) -> Response[NetworkResponse]:
        return await self.send(self.terminal.sign_off())

    async def echo(self) -> Response[NetworkResponse]:
        return await self.send(self.terminal.echo())

    async def purchase(
        self,
        amount: int,
        pan: str,
        expiry: str,
        *,
        processing_code: ProcessingCode = ProcessingCode.PURCHASE_CLUB,
        additional_data: AdditionalData | None = None,
        pos_entry_mode: PosEntryMode = PosEntryMode.CHIP,
    ) -> tuple[Response[AuthResponse], PreparedAuth]:
        """Phase 1: the 0110, and the 0100 that `confirm` or `reverse` will name. On
        `NoResponse`, the exception's `prepared` is the 0100 to reverse."""
        prepared = self.terminal.auth(
            processing_code,
            amount,
            pan,
            expiry,
            additional_data=additional_data,
            pos_entry_mode=pos_entry_mode,
        )
        return await self.send(prepared), prepared

    async def refund(
        self,
        original_rrn: str,
        amount: int,
        pan: str,
        expiry: str,
        *,
        processing_code: ProcessingCode = ProcessingCode.REFUND_CLUB,
    ) -> tuple[Response[AuthResponse], PreparedAuth]:
        """A refund of the confirmed purchase `original_rrn` (field 48 tag OR)."""
        refund_of = AdditionalData(original_rrn=original_rrn)
        return await self.purchase(
            amount, pan, expiry, processing_code=processing_code, additional_data=refund_of
        )

    async def topup(
        self, amount: int, pan: str, expiry: str
    ) -> tuple[Response[AuthResponse], PreparedAuth]:
        return await self.purchase(amount, pan, expiry, processing_code=ProcessingCode.TOP_UP_CLUB)

    async def balance(
        self,
        pan: str,
        expiry: str,
        *,
        processing_code: ProcessingCode = ProcessingCode.BALANCE_INQUIRY_CLUB,
    ) -> Response[AuthResponse]:
        """A balance inquiry: single phase, amount 0."""
        response, _ = await self.purchase(0, pan, expiry, processing_code=processing_code)
        return response

    async def confirm(
        self,
        original: PreparedAuth,
        rrn: str,
        *,
        processing_code: ProcessingCode | None = None,
        amount: int | None = None,
        attempts: int | None = None,
        timeout_s: float | None = None,
    ) -> Response[ConfirmResponse]:
        """Phase 2: a 0220 for `original`, repeated until a 0230 arrives (see `send_advice`).
        `processing_code` and `amount` override the original's, for negative tests."""
        prepared = self.terminal.confirm(
            original, rrn, processing_code=processing_code, amount=amount
        )
        return await self.send_advice(prepared, attempts=attempts, timeout_s=timeout_s)

    async def reverse(
        self,
        original: PreparedAuth,
        rrn: str | None = None,
        *,
        processing_code: ProcessingCode | None = None,
        amount: int | None = None,
        attempts: int | None = None,
        timeout_s: float | None = None,
    ) -> Response[ReversalResponse]:
        """A 0400 for `original` (`rrn` when its 0110 arrived), repeated until a 0410 arrives."""
        prepared = self.terminal.reverse(
            original, rrn, processing_code=processing_code, amount=amount
        )
        return await self.send_advice(prepared, attempts=attempts, timeout_s=timeout_s)
