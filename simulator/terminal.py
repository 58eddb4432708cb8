"""The terminal's side of LSP-8583, without I/O: build signed requests, check responses.

Theory of operation
-------------------
A `Terminal` is the state a POS terminal keeps between messages: its TID, its DUKPT key state
(`protocol.dukpt.TerminalKeys`), a STAN sequence and a clock. Every *new* request takes the
next KSN (so the key counter grows from one distinct request to the next, as the switch's
replay check demands), the next STAN and the clock's current time for field 7; together STAN
and field 7 are the request's identity, which its response echoes. The request is encoded,
MACed under the request-MAC working key (usage 2000) and returned as a `Prepared`: the typed
message, its exact bytes, and the KSN and working keys that protect this one exchange.

A retransmission is the same `Prepared` sent again: identical bytes, identical identity, so
the switch recognises it and answers with the response it already gave.

`verify_response` (or `check_response`, for a message already decoded) accepts a response
only if it is of the type the request calls for, carries a MAC that verifies under the
response-MAC working key (usage 2001) of the request's KSN, and echoes the request's identity,
KSN and amounts. The one exception the profile allows: a `63` whose MAC is 8 zero bytes, sent
when the switch could not derive the key; it is returned with `mac_verified=False`.

Nothing here shows a key, a PAN, or field 53/62 contents in a repr or an error message.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import Any, Final, Generic, NamedTuple, TypeAlias, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from protocol import messages
from protocol.cardblock import SIGN_ON_EXPIRY, TID_BYTES, CardData, encrypt_card_data
from protocol.dukpt import Ksn, TerminalKeys, WorkingKeys
from protocol.errors import DecodeError
from protocol.fields import (
    Mti,
    NetworkCode,
    PosEntryMode,
    ProcessingCode,
    ResponseCode,
    format_transmission_time,
)
from protocol.framing import encode_frame
from protocol.mac import compute_mac, verify_mac
from protocol.values import AdditionalData, OriginalData

Clock: TypeAlias = Callable[[], datetime]
"""Returns the current time as an aware datetime (any zone; field 7 is converted to UTC)."""

Identity: TypeAlias = tuple[str, str]
"""(STAN, field 7): what a response echoes to name its request."""

STAN_MAX: Final = 999_999

Q = TypeVar("Q", bound=messages.Request)
P = TypeVar("P", bound=messages.Response)


def utc_now() -> datetime:
    return datetime.now(UTC)


def local_zone() -> tzinfo:
    """Asia/Tehran for fields 12/13; UTC when the host has no time-zone database."""
    try:
        return ZoneInfo("Asia/Tehran")
    except ZoneInfoNotFoundError:
        return UTC


# ---------------------------------------------------------------------------------------------
# Errors


class SimulatorError(Exception):
    """Base of every error the simulator raises on purpose."""


class ResponseError(SimulatorError):
    """A response the terminal must not trust or cannot pair with its request."""


class MalformedResponseError(ResponseError):
    """The response bytes do not decode."""


class ResponseMacError(ResponseError):
    """The response MAC does not verify under the usage-2001 key of the request's KSN."""


class UnexpectedResponseError(ResponseError):
    """Wrong message type for the request, or an echoed field that differs from the request."""


# ---------------------------------------------------------------------------------------------
# Prepared requests and checked responses


@dataclass(frozen=True, slots=True, repr=False)
class Prepared(Generic[Q, P]):
    """A signed request, ready to send (and to resend byte for byte).

    `raw` is the message without the frame prefix; `frame` adds it. `response_class` is the
    message type the response must have, which also types `Response[P]` for the caller.
    """

    request: Q
    raw: bytes
    ksn: Ksn
    keys: WorkingKeys
    response_class: type[P]

    @property
    def identity(self) -> Identity:
        return (self.request.stan, self.request.transmission_time)

    @property
    def frame(self) -> bytes:
        return encode_frame(self.raw)

    def __repr__(self) -> str:
        # No raw bytes and no request repr: both hold fields 53 and 62.
        stan, time = self.identity
        return f"Prepared({self.request.MTI.value} stan={stan} time={time})"


PreparedNetwork: TypeAlias = Prepared[messages.NetworkRequest, messages.NetworkResponse]
PreparedAuth: TypeAlias = Prepared[messages.AuthRequest, messages.AuthResponse]
PreparedConfirm: TypeAlias = Prepared[messages.ConfirmAdvice, messages.ConfirmResponse]
PreparedReversal: TypeAlias = Prepared[messages.ReversalAdvice, messages.ReversalResponse]


@dataclass(frozen=True, slots=True, repr=False)
class Response(Generic[P]):
    """A response that passed `check_response`. `mac_verified` is False only for a `63`
    carrying the all-zero MAC (the switch could not derive the key)."""

    message: P
    raw: bytes
    mac_verified: bool = True

    @property
    def code(self) -> ResponseCode:
        return self.message.response_code

    def __repr__(self) -> str:
        verified = "" if self.mac_verified else " unverified"
        return (
            f"Response({self.message.MTI.value} code={self.code.value} "
            f"stan={self.message.stan}{verified})"
        )


class Original(NamedTuple):
    """What a 0220 or 0400 needs of its 0100: a terminal can keep this across restarts."""

    processing_code: ProcessingCode
    amount: int
    stan: str
    transmission_time: str

    @classmethod
    def of(cls, prepared: PreparedAuth) -> Original:
        request = prepared.request
        return cls(request.processing_code, request.amount, *prepared.identity)


# Fields a response echoes from its request; compared whenever both carry them.
_ECHOED: Final = ("processing_code", "amount", "transmission_time", "stan", "ksn", "rrn")


def check_response(
    prepared: Prepared[Any, P], raw: bytes, message: messages.Message
) -> Response[P]:
    """Accept `message` (decoded from `raw`) as the response to `prepared`, or raise a
    `ResponseError`; see the module docstring for the rules."""
    request = prepared.request
    if not isinstance(message, prepared.response_class):
        raise UnexpectedResponseError(f"{message.MTI.value} in answer to {request.MTI.value}")
    try:
        mac_data = messages.mac_input(raw)
    except DecodeError as exc:
        raise MalformedResponseError(str(exc)) from None
    verified = verify_mac(prepared.keys.mac_response, mac_data, message.mac)
    unkeyed_refusal = (
        message.response_code is ResponseCode.SECURITY_VIOLATION
        and message.mac == messages.ZERO_MAC
    )
    if not (verified or unkeyed_refusal):
        raise ResponseMacError(f"{message.MTI.value} stan={message.stan}: MAC does not verify")
    for attribute in _ECHOED:
        sent = getattr(request, attribute, None)
        echoed = getattr(message, attribute, None)
        if sent is not None and echoed is not None and sent != echoed:
            # Name the field only: the values may be a KSN.
            raise UnexpectedResponseError(f"{message.MTI.value} does not echo {attribute}")
    return Response(message=message, raw=raw, mac_verified=verified)


def verify_response(prepared: Prepared[Any, P], raw: bytes) -> Response[P]:
    """Decode `raw` (one frame body) and `check_response` it against `prepared`."""
    try:
        message = messages.decode(raw)
    except DecodeError as exc:
        raise MalformedResponseError(str(exc)) from None
    return check_response(prepared, raw, message)


# ---------------------------------------------------------------------------------------------
# The terminal


class StanSequence:
    """STANs 000001..999999, wrapping back to 000001 (000000 is never used)."""

    __slots__ = ("last",)

    def __init__(self, last: int = 0) -> None:
        if not 0 <= last <= STAN_MAX:
            raise ValueError(f"last STAN must be 0..{STAN_MAX}")
        self.last = last

    def next(self) -> str:
        self.last = self.last % STAN_MAX + 1
        return f"{self.last:06d}"


class _Stamp(NamedTuple):
    """What every new request takes: a fresh KSN and its keys, a STAN, the time."""

    ksn: Ksn
    keys: WorkingKeys
    stan: str
    now: datetime

    @property
    def transmission_time(self) -> str:
        return format_transmission_time(self.now)


class Terminal:
    """One terminal's identity and key state; every method returns a signed `Prepared`."""

    __slots__ = ("_clock", "_stans", "keys", "local_zone", "tid")

    def __init__(
        self,
        tid: str,
        keys: TerminalKeys,
        *,
        clock: Clock = utc_now,
        last_stan: int = 0,
        zone: tzinfo | None = None,
    ) -> None:
        if len(tid) != TID_BYTES or not (tid.isascii() and tid.isprintable()):
            raise ValueError(f"TID must be {TID_BYTES} printable ASCII characters")
        self.tid = tid
        self.keys = keys
        self.local_zone = local_zone() if zone is None else zone
        self._clock = clock
        self._stans = StanSequence(last_stan)

    @classmethod
    def from_profile(
        cls,
        tid: str,
        initial_key: bytes,
        initial_key_id: bytes,
        counter: int = 0,
        *,
        clock: Clock = utc_now,
        last_stan: int = 0,
    ) -> Terminal:
        """A terminal from provisioning data: `counter` is the last KSN counter it used."""
        keys = TerminalKeys(initial_key, initial_key_id, counter)
        return cls(tid, keys, clock=clock, last_stan=last_stan)

    @property
    def last_stan(self) -> int:
        return self._stans.last

    def __repr__(self) -> str:
        return f"Terminal(tid={self.tid!r})"

    def _stamp(self) -> _Stamp:
        now = self._clock()
        if now.tzinfo is None:
            raise ValueError("the clock must return an aware datetime")
        ksn, keys = self.keys.next_ksn()
        return _Stamp(ksn, keys, self._stans.next(), now)

    # -- network management (0800) ---------------------------------------------------------

    def sign_on(self) -> PreparedNetwork:
        """0800/001, with field 62 carrying the TID (no PAN, expiry 0000)."""
        return self._network(NetworkCode.SIGN_ON)

    def sign_off(self) -> PreparedNetwork:
        return self._network(NetworkCode.SIGN_OFF)

    def echo(self) -> PreparedNetwork:
        return self._network(NetworkCode.ECHO)

    def _network(self, code: NetworkCode) -> PreparedNetwork:
        stamp = self._stamp()
        card_data = None
        if code is NetworkCode.SIGN_ON:
            card = CardData(self.tid, "", SIGN_ON_EXPIRY)
            card_data = encrypt_card_data(stamp.keys.data_encrypt, card)
        request = messages.NetworkRequest(
            network_code=code,
            transmission_time=stamp.transmission_time,
            stan=stamp.stan,
            ksn=stamp.ksn.to_bytes(),
            card_data=card_data,
        )
        return _sign(request, stamp, messages.NetworkResponse)

    # -- phase 1 (0100) --------------------------------------------------------------------

    def auth(
        self,
        processing_code: ProcessingCode,
        amount: int,
        pan: str,
        expiry: str,
        *,
        additional_data: AdditionalData | None = None,
        pos_entry_mode: PosEntryMode = PosEntryMode.CHIP,
        card_tid: str | None = None,
    ) -> PreparedAuth:
        """0100. Field 62 is encrypted under the usage-3000 key of this request's own KSN.
        `card_tid` puts another TID into field 62, for the switch's TID-mismatch check."""
        card = CardData(self.tid if card_tid is None else card_tid, pan, expiry)  # checks first
        stamp = self._stamp()
        local = stamp.now.astimezone(self.local_zone)
        request = messages.AuthRequest(
            processing_code=processing_code,
            amount=amount,
            transmission_time=stamp.transmission_time,
            stan=stamp.stan,
            local_time=local.strftime("%H%M%S"),
            local_date=local.strftime("%m%d"),
            pos_entry_mode=pos_entry_mode,
            ksn=stamp.ksn.to_bytes(),
            card_data=encrypt_card_data(stamp.keys.data_encrypt, card),
            additional_data=additional_data,
        )
        return _sign(request, stamp, messages.AuthResponse)

    # -- phase 2 (0220) and reversal (0400) ------------------------------------------------

    def confirm(
        self,
        original: PreparedAuth | Original,
        rrn: str,
        *,
        processing_code: ProcessingCode | None = None,
        amount: int | None = None,
    ) -> PreparedConfirm:
        """0220 for `original`: new STAN and field 7, 37 and 90 naming the 0100. Fields 3 and
        4 are the original's unless overridden (a negative test: the switch answers 13)."""
        ref = original if isinstance(original, Original) else Original.of(original)
        stamp = self._stamp()
        request = messages.ConfirmAdvice(
            processing_code=processing_code or ref.processing_code,
            amount=ref.amount if amount is None else amount,
            transmission_time=stamp.transmission_time,
            stan=stamp.stan,
            rrn=rrn,
            ksn=stamp.ksn.to_bytes(),
            original=OriginalData(Mti.AUTH_REQUEST, ref.stan, ref.transmission_time),
        )
        return _sign(request, stamp, messages.ConfirmResponse)

    def reverse(
        self,
        original: PreparedAuth | Original,
        rrn: str | None,
        *,
        processing_code: ProcessingCode | None = None,
        amount: int | None = None,
    ) -> PreparedReversal:
        """0400 for `original`; `rrn` is None when no 0110 arrived."""
        ref = original if isinstance(original, Original) else Original.of(original)
        stamp = self._stamp()
        request = messages.ReversalAdvice(
            processing_code=processing_code or ref.processing_code,
            amount=ref.amount if amount is None else amount,
            transmission_time=stamp.transmission_time,
            stan=stamp.stan,
            ksn=stamp.ksn.to_bytes(),
            original=OriginalData(Mti.AUTH_REQUEST, ref.stan, ref.transmission_time),
            rrn=rrn,
        )
        return _sign(request, stamp, messages.ReversalResponse)


def _sign(request: Q, stamp: _Stamp, response_class: type[P]) -> Prepared[Q, P]:
    """Encode `request`, MAC it under the usage-2000 key, and bundle what the exchange needs."""
    unsigned = messages.encode(request)
    mac = compute_mac(stamp.keys.mac_request, messages.mac_input(unsigned))
    return Prepared(
        request=dataclasses.replace(request, mac=mac),
        raw=messages.with_mac(unsigned, mac),
        ksn=stamp.ksn,
        keys=stamp.keys,
        response_class=response_class,
    )
