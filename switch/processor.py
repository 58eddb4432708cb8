"""Processing one request: the security chain, idempotency, and the transaction around it.

Theory of operation. `handle` takes one frame body and returns one response body:
1. decode (a malformed message: 30, unsigned, nothing read from the database);
2. KSN → BDK and working keys; terminal registered and active; MAC (all: 63);
3. in one database transaction, under a per-terminal lock that keeps a terminal's requests
   in arrival order within this process:
   a. claim the identity (terminal, STAN, field 7): a retransmission gets the stored
      response; a different request under a used identity gets 94;
   b. field 7 within `clock_skew_max_s` of our clock (97), KSN counter above the last
      accepted (63, replay), field 62 decrypts (63), its TID is the terminal's (63);
   c. the business step, in a savepoint: a `Declined` rolls back just that part;
   d. the signed response is stored under the identity, then the transaction commits,
      and only then is the response returned to be written to the socket.
Refusals in 2 and 3b roll back everything and store nothing: they change nothing. A lost
database answers 91 (safe to retry); deadlocks are retried `db_retries_max` times.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import asyncpg

from protocol import messages as m
from protocol.cardblock import CardData, decrypt_card_data
from protocol.dukpt import HostKeys, Ksn, WorkingKeys
from protocol.errors import DecodeError, SecurityError
from protocol.fields import FieldValueError, Mti, ResponseCode
from protocol.layout import FIELD_CODECS
from protocol.mac import compute_mac, verify_mac
from protocol.spec import decode_fields
from switch import ledger, metrics, phase1, phase2, store
from switch.config import Settings
from switch.context import Ctx
from switch.declines import Declined

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
# What "the database is not there" looks like: the socket (OSError, timeouts), the
# connection (class 08, a backend terminated or a statement cancelled: class 57, a pooled
# connection found dead: InternalClientError), or a database that was dropped (3D000) or
# closed to connections (55000) when the pool reconnects.
_DB_LOST = (OSError, TimeoutError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
            asyncpg.InternalClientError, asyncpg.exceptions.OperatorInterventionError,
            asyncpg.InvalidCatalogNameError, asyncpg.ObjectNotInPrerequisiteStateError,
            asyncpg.exceptions.InsufficientResourcesError)
_DB_RETRY = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)
_PHASE = {Mti.AUTH_REQUEST: "request", Mti.CONFIRM_ADVICE: "confirm",
          Mti.REVERSAL_ADVICE: "reversal", Mti.NETWORK_REQUEST: "network"}
_ResponseClass = (type[m.NetworkResponse] | type[m.AuthResponse] | type[m.ConfirmResponse]
                  | type[m.ReversalResponse])
_RESPONSE_FOR: dict[Mti, _ResponseClass] = {
    Mti.NETWORK_REQUEST: m.NetworkResponse, Mti.AUTH_REQUEST: m.AuthResponse,
    Mti.CONFIRM_ADVICE: m.ConfirmResponse, Mti.REVERSAL_ADVICE: m.ReversalResponse}


def utc_now() -> datetime:
    return datetime.now(UTC)


def resolve_f7(mmddhhmmss: str, now: datetime) -> datetime:
    """Field 7 has no year: take the instant nearest to `now` (the year before, this year or
    the next), so a request sent just before New Year's midnight resolves right."""
    candidates = []
    for year in (now.year - 1, now.year, now.year + 1):
        with contextlib.suppress(ValueError):  # 29 February in a common year
            candidates.append(datetime.strptime(f"{year}{mmddhhmmss}", "%Y%m%d%H%M%S")
                              .replace(tzinfo=UTC))
    if not candidates:
        raise DecodeError("transmission time is not a real date", field=7)
    return min(candidates, key=lambda c: abs(c - now))


def request_digest(request: m.Request, card: CardData | None, pan_hash: bytes) -> bytes:
    """What makes two requests under one identity the same request: every field but the
    KSN, the MAC and the ciphertext (which change when a terminal re-sends with a new key),
    plus the card inside the ciphertext, by its keyed hash."""
    content = [(f.name, getattr(request, f.name)) for f in dataclasses.fields(request)
               if f.name not in ("ksn", "mac", "card_data")]
    card_part = b"" if card is None else card.tid.encode() + pan_hash + card.expiry.encode()
    return hashlib.sha256(repr((request.MTI.value, content)).encode() + card_part).digest()


_ECHO_FIELDS = (3, 4, 7, 11, 37, 53, 70)


def _decodable_echo(frame: bytes, cls: type[m.Message]) -> dict[str, Any]:
    """The echoed fields of a message that failed to decode whole, as far as each parses."""
    try:
        parsed = decode_fields(frame)
    except DecodeError:
        return {}
    allowed = {f.name for f in dataclasses.fields(cls)}
    echoed = {}
    for n in _ECHO_FIELDS:
        codec = FIELD_CODECS.get(n)
        if n in parsed.fields and codec is not None and codec.attribute in allowed:
            with contextlib.suppress(FieldValueError):
                echoed[codec.attribute] = codec.parse(parsed.fields[n])
    return echoed


class _Refused(Exception):  # noqa: N818  (control flow: roll back and answer this)
    def __init__(self, response: bytes, kind: str) -> None:
        self.response = response
        self.kind = kind


class KeyedLocks:
    """One FIFO lock per key, kept only while someone holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[bytes, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: bytes) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._locks)


def sign(response: m.Response, keys: WorkingKeys | None) -> bytes:
    """Encode; MAC under the response key (usage 2001), or 8 zero bytes without keys."""
    raw = m.encode(response)
    return raw if keys is None else m.with_mac(raw, compute_mac(keys.mac_response,
                                                                m.mac_input(raw)))


def _refusal(request: m.Request, code: ResponseCode, keys: WorkingKeys | None) -> bytes:
    return sign(m.response_to(request, code), keys)


class Processor:
    """The switch's request handler (see the module docstring)."""

    def __init__(self, pool: asyncpg.Pool, settings: Settings, host_keys: HostKeys,
                 pan_hash: Callable[[str], bytes], clock: Clock = utc_now) -> None:
        self._pool = pool
        self._settings = settings
        self._host_keys = host_keys
        self._pan_hash = pan_hash
        self._clock = clock
        self._terminal_locks = KeyedLocks()
        self._accounts = ledger.AccountIds()

    async def handle(self, frame: bytes, peer: object = None) -> bytes | None:
        started = time.perf_counter()
        try:
            request = m.decode(frame)
        except DecodeError as exc:
            log.info("format error: %s", exc)
            return self._format_error(frame)
        if not isinstance(request, m.Request):
            metrics.FRAMES_REJECTED.labels("not_a_request").inc()
            return None
        raw = await self._answer(request, frame)
        code = cast(m.Response, m.decode(raw)).response_code
        pc = getattr(request, "processing_code", None)
        metrics.MESSAGES.labels(request.MTI.value, pc.value if pc else "", code.value).inc()
        metrics.PHASE_LATENCY.labels(_PHASE[request.MTI]).observe(time.perf_counter() - started)
        return raw

    def _format_error(self, frame: bytes) -> bytes | None:
        """A `30` of the request's response type, echoing the fields that did decode (so a
        pipelining terminal can still match it); nothing when even the MTI is unreadable."""
        try:
            cls = _RESPONSE_FOR[Mti(frame[:4].decode("ascii"))]
        except (ValueError, KeyError, UnicodeDecodeError):
            metrics.FRAMES_REJECTED.labels("undecodable").inc()
            return None
        metrics.MESSAGES.labels(cls.MTI.value, "", ResponseCode.FORMAT_ERROR.value).inc()
        try:
            return m.encode(cls(response_code=ResponseCode.FORMAT_ERROR,
                                **_decodable_echo(frame, cls)))
        except DecodeError:  # the echoed fields do not go together: echo none
            return m.encode(cls(response_code=ResponseCode.FORMAT_ERROR))

    async def _answer(self, request: m.Request, frame: bytes) -> bytes:
        ksn = Ksn.from_bytes(request.ksn)
        try:
            keys = self._host_keys.working_keys(ksn)
        except SecurityError as exc:
            return self._security(request, exc.kind, None)
        try:
            return await self._answer_with_database(request, frame, ksn, keys)
        except DecodeError as exc:  # a field that decodes but means nothing (30 February)
            log.info("format error: %s", exc)
            return _refusal(request, ResponseCode.FORMAT_ERROR, keys)
        except (*_DB_LOST, *_DB_RETRY) as exc:
            log.warning("database unavailable: %s", type(exc).__name__)
            metrics.DB_ERRORS.inc()
            return _refusal(request, ResponseCode.SWITCH_UNAVAILABLE, keys)
        except asyncpg.PostgresError:
            # A constraint refused a write the code thought valid: a bug, and the database
            # kept its invariants. Answer 96 and keep serving the other requests.
            log.exception("database refused a write")
            return _refusal(request, ResponseCode.SYSTEM_MALFUNCTION, keys)

    def _security(self, request: m.Request, kind: str, keys: WorkingKeys | None) -> bytes:
        metrics.SECURITY_FAILURES.labels(kind).inc()
        log.info("security violation: %s", kind)
        return _refusal(request, ResponseCode.SECURITY_VIOLATION, keys)

    async def _answer_with_database(self, request: m.Request, frame: bytes, ksn: Ksn,
                                    keys: WorkingKeys) -> bytes:
        timeout = self._settings.db_connect_timeout_s
        # One device per initial key ID: its requests queue here, in arrival order, before
        # they take a pool connection, so a burst from one terminal cannot drain the pool.
        async with self._terminal_locks.hold(ksn.initial_key_id), \
                self._pool.acquire(timeout=timeout) as proxy:
            conn = cast(asyncpg.Connection, proxy)
            terminal = await store.terminal_by_initial_key_id(conn, ksn.initial_key_id)
            if terminal is None or terminal.status != "active":
                return self._security(request, "unknown_device", keys)
            if not verify_mac(keys.mac_request, m.mac_input(frame), request.mac):
                return self._security(request, "bad_mac", keys)
            card, card_error = self._decrypt(request, keys)
            return await self._transact_with_retries(conn, request, terminal, ksn, keys,
                                                     card, card_error)

    async def _transact_with_retries(
        self, conn: asyncpg.Connection, request: m.Request, terminal: store.TerminalRecord,
        ksn: Ksn, keys: WorkingKeys, card: CardData | None, card_error: SecurityError | None,
    ) -> bytes:
        for attempt in range(self._settings.db_retries_max + 1):
            try:
                return await self._transact(conn, request, terminal, ksn, keys, card,
                                            card_error)
            except _Refused as refused:
                if refused.kind:
                    self._security(request, refused.kind, None)
                return refused.response
            except _DB_RETRY:
                if attempt == self._settings.db_retries_max:
                    raise
        raise AssertionError("unreachable")

    def _decrypt(self, request: m.Request, keys: WorkingKeys
                 ) -> tuple[CardData | None, SecurityError | None]:
        """Decrypt now (pure), but report a failure at its place in the chain."""
        blob = getattr(request, "card_data", None)
        if blob is None:
            return None, None
        try:
            return decrypt_card_data(keys.data_encrypt, blob), None
        except SecurityError as exc:
            return None, exc

    async def _transact(self, conn: asyncpg.Connection, request: m.Request,
                        terminal: store.TerminalRecord, ksn: Ksn, keys: WorkingKeys,
                        card: CardData | None, card_error: SecurityError | None) -> bytes:
        now = self._clock()
        identity = store.Identity(terminal.terminal_id, request.stan,
                                  resolve_f7(request.transmission_time, now))
        pan_hash = self._pan_hash(card.pan) if card and card.pan else b""
        digest = request_digest(request, card, pan_hash)
        async with conn.transaction():
            stored = await store.claim(conn, identity, request.MTI.value, digest, request.ksn)
            if stored is not None:
                return self._replay(request, stored, keys, digest)
            self._refuse_unless_fresh(request, identity, now, keys)
            if isinstance(request, m.AuthRequest) and \
                    await store.reversal_remembered(conn, identity):
                # The original of an earlier reversal, arriving late: its counter is below
                # the reversal's, so it must be recognised before the replay check.
                raw = sign(m.response_to(request, ResponseCode.INVALID_TRANSACTION), keys)
                await store.record_response(conn, identity, raw,
                                            ResponseCode.INVALID_TRANSACTION.value, None)
                return raw
            if not await store.advance_counter(conn, terminal.terminal_id, ksn.counter):
                raise _Refused(_refusal(request, ResponseCode.SECURITY_VIOLATION, keys),
                               "replay")
            if card_error is not None:
                raise _Refused(_refusal(request, ResponseCode.SECURITY_VIOLATION, keys),
                               card_error.kind)
            if card is not None and card.tid != terminal.tid:
                raise _Refused(_refusal(request, ResponseCode.SECURITY_VIOLATION, keys),
                               "tid_mismatch")
            ctx = Ctx(conn, self._settings, terminal, identity, now, self._pan_hash,
                      self._accounts)
            response, txn_id = await self._business(ctx, request, card)
            raw = sign(response, keys)
            await store.record_response(conn, identity, raw, response.response_code.value,
                                        txn_id)
        self._accounts.add_committed(ctx.used_accounts)
        return raw

    def _refuse_unless_fresh(self, request: m.Request, identity: store.Identity,
                             now: datetime, keys: WorkingKeys) -> None:
        skew = timedelta(seconds=self._settings.clock_skew_max_s)
        if abs(identity.transmitted_at - now) > skew:
            raise _Refused(_refusal(request, ResponseCode.TIME_OUT_OF_WINDOW, keys), "")

    def _replay(self, request: m.Request, stored: store.StoredResponse, keys: WorkingKeys,
                digest: bytes) -> bytes:
        if stored.digest != digest:
            return _refusal(request, ResponseCode.DUPLICATE_TRANSMISSION, keys)
        if stored.ksn == request.ksn:
            return stored.response
        # The same request re-sent under a new KSN: the same answer, signed for that KSN.
        previous = cast(m.Response, m.decode(stored.response))
        return sign(dataclasses.replace(previous, ksn=request.ksn), keys)

    async def _business(self, ctx: Ctx, request: m.Request, card: CardData | None
                        ) -> tuple[m.Response, int | None]:
        try:
            async with ctx.conn.transaction():  # a savepoint: a decline undoes this part only
                return await self._dispatch(ctx, request, card)
        except Declined as declined:
            log.info("declined: %s", declined)
            ctx.used_accounts.clear()  # the savepoint may have undone an account it created
            return m.response_to(request, declined.reason.response_code), None

    async def _dispatch(self, ctx: Ctx, request: m.Request, card: CardData | None
                        ) -> tuple[m.Response, int | None]:
        if isinstance(request, m.NetworkRequest):
            return m.response_to(request, ResponseCode.APPROVED), None
        if isinstance(request, m.AuthRequest):
            assert card is not None
            return await phase1.authorize(ctx, request, card)
        original = store.Identity(ctx.terminal.terminal_id, request.original.stan,
                                  resolve_f7(request.original.transmission_time, ctx.now))
        if isinstance(request, m.ConfirmAdvice):
            return await phase2.confirm(ctx, request, original)
        return await phase2.reverse(ctx, request, original)
