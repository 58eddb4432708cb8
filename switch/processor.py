"""Processing one request: the security chain, idempotency, and the database call around it.

Theory of operation. `handle` takes one frame body and returns one response body:
1. decode (a malformed message: 30, unsigned, nothing read from the database);
2. KSN → BDK and working keys (63); MAC (63, after a read that tells an unknown or inactive
   device, also 63, from a bad MAC); field 62 is decrypted and the request priced here,
   without the database (campaign rules it names are parsed once per version and cached,
   docs/pricing.md);
3. one database call (`store.handle`, migrations/0007), in one implicit transaction, under a
   per-terminal lock that keeps a terminal's requests in arrival order within this process:
   a. the device is locked, and refused if unknown, inactive or its BDK retired (63);
   b. the identity (terminal, STAN, field 7) is looked up: a retransmission gets the
      stored outcome; a different request under a used identity gets 94 (field 7's instant
      and the request's digest come from `request_identity`, computed before the call);
   c. field 7 within `clock_skew_max_s` of our clock (97), KSN counter above the last
      accepted (63, replay), field 62 decrypts (63), its TID is the terminal's (63);
   d. the business step; an expected decline is decided before anything is written;
   e. the outcome is stored under the identity, the call commits and returns it;
4. the response is built from the request and the outcome alone (so a stored outcome
   rebuilds the identical bytes), signed, and only then returned to be written.
Refusals in 2 and 3a-c roll back everything and store nothing: they change nothing. A lost
database answers 91 (safe to retry); deadlocks are retried `db_retries_max` times.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple, cast

import asyncpg

from protocol import messages as m
from protocol.cardblock import CardData, decrypt_card_data, mask_pan
from protocol.dukpt import HostKeys, Ksn, WorkingKeys
from protocol.errors import DecodeError, SecurityError
from protocol.fields import FieldValueError, Mti, ResponseCode
from protocol.layout import FIELD_CODECS
from protocol.mac import compute_mac, verify_mac
from protocol.spec import decode_fields
from switch import campaign_pricing, cardcheck, metrics, phase1, phase2, request_identity, store
from switch.campaign_cache import RuleCache
from switch.config import Settings
from switch.context import shaparak_rule

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


class _Reply(NamedTuple):
    """A response as written to the socket, its code (for the metrics) and its RRN (for the
    log; field 37, given by the switch or echoed from the request)."""

    raw: bytes
    code: ResponseCode
    rrn: str | None


def _reply(response: m.Response, keys: WorkingKeys | None) -> _Reply:
    return _Reply(sign(response, keys), response.response_code, getattr(response, "rrn", None))


def _refusal(request: m.Request, code: ResponseCode, keys: WorkingKeys | None) -> _Reply:
    return _reply(m.response_to(request, code), keys)


# Refusals by the database call that are not security violations (63).
_REFUSAL_CODES = {"time_window": ResponseCode.TIME_OUT_OF_WINDOW,
                  "format_error": ResponseCode.FORMAT_ERROR}
# How often one request may be priced again: each time the database saw another basis than
# the call was priced on (first purchase of a device, a changed fee plan, a partial
# approval, a refund; with campaigns in scope always once, for the member's state), and each
# time 0027's budget re-check found a reserved budget taken meanwhile (a 40001: not one of
# the database retries; with the "price again" that then states the remainders, one
# pricing). The last pricing takes every campaign budget as spent
# (campaign_pricing.without_budgets): a budget running out under concurrent purchases then
# cannot keep the price from settling, and the purchase is approved without those grants
# rather than answered 91. What can still end in 91 is a basis that changes otherwise
# beyond the last pricing: a campaign replaced, or the card's daily amounts or member state
# moved by the same card's purchases on other terminals.
_PRICINGS_MAX = 4
_FEE_PLANS_MAX = 100_000
_RULES_CACHED_MAX = 10_000  # parsed campaign rules (id, version) kept by the processor


def _budget_taken(exc: Exception, call: _Call) -> bool:
    """Whether `exc` is migration 0027's budget re-check (switch_take_budgets): the only
    40001 on the request path (it runs at read committed), raised for a priced 0100 whose
    budget another purchase took after the early check."""
    return (isinstance(exc, asyncpg.SerializationError) and call.auth is not None
            and call.auth.basis is not None)


class _PriceUnsettled(Exception):  # noqa: N818  (answered 91: safe to retry)
    pass


@dataclasses.dataclass(frozen=True, slots=True)
class _Call:
    """The arguments of one `store.handle` call."""

    request: store.RequestArgs
    card: store.CardArgs | None
    auth: store.AuthArgs | None
    advice: store.AdviceArgs | None


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
        self._shaparak = shaparak_rule(settings)
        self._skew = timedelta(seconds=settings.clock_skew_max_s)
        # The fee plan the database last stated for each device (by initial key ID): a
        # purchase is priced on it, and the database confirms it or states the new one.
        self._fee_plans: dict[bytes, dict[str, Any]] = {}
        self._rules = RuleCache(_RULES_CACHED_MAX)

    async def handle(self, frame: bytes, peer: object = None) -> bytes | None:
        started = time.perf_counter()
        try:
            request = m.decode(frame)
        except DecodeError as exc:
            log.info("format_error", extra={"reason": exc.reason, "field": exc.field})
            return self._format_error(frame)
        if not isinstance(request, m.Request):
            metrics.FRAMES_REJECTED.labels("not_a_request").inc()
            return None
        raw, code, rrn = await self._answer(request, frame)
        pc = getattr(request, "processing_code", None)
        metrics.count_message(request.MTI.value, pc.value if pc else "", code.value)
        duration_s = time.perf_counter() - started
        metrics.observe_latency(_PHASE[request.MTI], duration_s)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("request_answered", extra={
                "mti": request.MTI.value, "processing_code": pc.value if pc else None,
                "response_code": code.value, "stan": request.stan, "rrn": rrn,
                "duration_ms": round(duration_s * 1000, 3)})
        return raw

    def _format_error(self, frame: bytes) -> bytes | None:
        """A `30` of the request's response type, echoing the fields that did decode (so a
        pipelining terminal can still match it); nothing when even the MTI is unreadable."""
        try:
            mti = Mti(frame[:4].decode("ascii"))
            cls = _RESPONSE_FOR[mti]
        except (ValueError, KeyError, UnicodeDecodeError):
            metrics.FRAMES_REJECTED.labels("undecodable").inc()
            return None
        # Counted under the request's MTI, as every other answer is.
        metrics.count_message(mti.value, "", ResponseCode.FORMAT_ERROR.value)
        try:
            return m.encode(cls(response_code=ResponseCode.FORMAT_ERROR,
                                **_decodable_echo(frame, cls)))
        except DecodeError:  # the echoed fields do not go together: echo none
            return m.encode(cls(response_code=ResponseCode.FORMAT_ERROR))

    async def _answer(self, request: m.Request, frame: bytes) -> _Reply:
        ksn = Ksn.from_bytes(request.ksn)
        try:
            keys = self._host_keys.working_keys(ksn)
        except SecurityError as exc:
            return self._security(request, exc.kind, None)
        try:
            return await self._answer_with_database(request, frame, ksn, keys)
        except (*_DB_LOST, *_DB_RETRY, _PriceUnsettled) as exc:
            kind = ("retries_exhausted" if isinstance(exc, _DB_RETRY) else
                    "price_unsettled" if isinstance(exc, _PriceUnsettled) else "unavailable")
            log.warning("database_error", extra={"kind": kind, "error": type(exc).__name__,
                                                 "stan": request.stan})
            metrics.count_db_error(kind)
            return _refusal(request, ResponseCode.SWITCH_UNAVAILABLE, keys)
        except asyncpg.PostgresError:
            # A constraint refused a write the code thought valid: a bug, and the database
            # kept its invariants. Answer 96 and keep serving the other requests.
            log.exception("database_refused_write", extra={"stan": request.stan})
            metrics.count_db_error("refused_write")
            return _refusal(request, ResponseCode.SYSTEM_MALFUNCTION, keys)

    def _security(self, request: m.Request, kind: str, keys: WorkingKeys | None) -> _Reply:
        metrics.count_security_failure(kind)
        log.info("security_failure", extra={"kind": kind, "mti": request.MTI.value,
                                            "stan": request.stan})
        return _refusal(request, ResponseCode.SECURITY_VIOLATION, keys)

    async def _bad_mac(self, request: m.Request, ksn: Ksn, keys: WorkingKeys) -> _Reply:
        """63 either way; a read tells an unknown or inactive device (checked first in the
        profile's order) from a bad MAC, for the metrics and the log."""
        async with self._pool.acquire(timeout=self._settings.db_connect_timeout_s) as conn:
            active = await store.device_is_active(cast(asyncpg.Connection, conn),
                                                  ksn.initial_key_id)
        return self._security(request, "bad_mac" if active else "unknown_device", keys)

    async def _answer_with_database(self, request: m.Request, frame: bytes, ksn: Ksn,
                                    keys: WorkingKeys) -> _Reply:
        if not verify_mac(keys.mac_request, m.mac_input(frame), request.mac):
            return await self._bad_mac(request, ksn, keys)
        card, card_error = self._decrypt(request, keys)
        pan_hash = self._pan_hash(card.pan) if card and card.pan else b""
        digest = request_identity.digest(request, card, pan_hash)
        timeout = self._settings.db_connect_timeout_s
        # One device per initial key ID: its requests queue here, in arrival order, before
        # they take a pool connection, so a burst from one terminal cannot drain the pool.
        async with self._terminal_locks.hold(ksn.initial_key_id), \
                metrics.pool_connection(self._pool, timeout) as proxy:
            call = self._call(request, ksn, card, card_error, pan_hash, digest)
            try:
                answer = await self._call_with_retries(cast(asyncpg.Connection, proxy),
                                                       request, ksn, call)
            except store.Refused as refused:
                return self._refused(request, refused.reason, keys)
        if answer.stored:
            return self._replay(request, answer, keys, digest)
        assert answer.outcome is not None
        decline = answer.outcome.decline
        if decline is not None:
            log.info("request_declined", extra={
                "reason": decline.name, "mti": request.MTI.value, "stan": request.stan,
                # A declined 0100 has no RRN; a declined advice has the one it names.
                "rrn": answer.outcome.rrn or getattr(request, "rrn", None),
                "pan": mask_pan(card.pan) if card and card.pan else None})
        return _reply(self._build(request, answer.outcome), keys)

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

    def _call(self, request: m.Request, ksn: Ksn, card: CardData | None,
              card_error: SecurityError | None, pan_hash: bytes, digest: bytes) -> _Call:
        now = self._clock()
        transmitted_at = request_identity.resolved(request.transmission_time, now)
        args = store.RequestArgs(
            bdk_id=ksn.bdk_id.hex().upper(), derivation_id=ksn.derivation_id.hex().upper(),
            mti=request.MTI.value, stan=request.stan,
            transmission_f7=request.transmission_time, transmitted_at=transmitted_at,
            digest=digest, ksn=request.ksn, ksn_counter=ksn.counter,
            fresh=transmitted_at is not None and abs(transmitted_at - now) <= self._skew,
            now=now, hold_timeout_s=self._settings.hold_timeout_s)
        auth = advice = None
        if isinstance(request, m.AuthRequest):
            auth = phase1.auth_args(request, self._shaparak,
                                    self._fee_plans.get(ksn.initial_key_id))
        elif isinstance(request, (m.ConfirmAdvice, m.ReversalAdvice)):
            advice = phase2.advice_args(
                request, request_identity.resolved(request.original.transmission_time, now))
        return _Call(args, cardcheck.card_args(card, card_error, pan_hash), auth, advice)

    async def _call_with_retries(self, conn: asyncpg.Connection, request: m.Request,
                                 ksn: Ksn, call: _Call) -> store.Answer:
        retries = pricings = 0
        rerun = False  # the call runs again as priced, after 0027's budget re-check (40001)
        while True:
            try:
                return await store.handle(conn, call.request, call.card, call.auth,
                                          call.advice)
            except store.PriceAgain as again:
                assert isinstance(request, m.AuthRequest) and call.auth is not None
                if call.auth.kind in phase1.PURCHASES:
                    self._remember_fee_plan(ksn.initial_key_id, again.basis)
                if rerun:  # the remainders the 40001 could not take: counted with it
                    pricings -= 1
                basis, rerun = again.basis, False
            except _DB_RETRY as exc:
                if not _budget_taken(exc, call):
                    retries += 1
                    if retries > self._settings.db_retries_max:
                        raise
                    continue
                # Run it again as priced: the early check then states the fresh remainders.
                assert call.auth is not None and call.auth.basis is not None
                basis, rerun = json.loads(call.auth.basis), True
            pricings += 1
            if pricings > _PRICINGS_MAX:
                raise _PriceUnsettled from None
            assert isinstance(request, m.AuthRequest) and call.auth is not None
            if pricings == _PRICINGS_MAX:  # the last pricing: every budget as spent
                basis, rerun = campaign_pricing.without_budgets(basis), False
            if not rerun:
                call = dataclasses.replace(call, auth=await self._priced(
                    conn, request, call, basis))

    async def _priced(self, conn: asyncpg.Connection, request: m.AuthRequest, call: _Call,
                      basis: dict[str, Any]) -> store.AuthArgs:
        """The 0100's arguments priced on `basis`, with the campaigns it names."""
        assert call.auth is not None
        if not campaign_pricing.has_campaigns(basis):
            return phase1.auth_args(request, self._shaparak, None, basis)
        campaigns = phase1.Campaigns(
            rules=await self._rules.rules(conn, basis["campaigns"]), now=call.request.now,
            points_expiry_days=self._settings.points_expiry_days)
        bank_bin = call.card.pan_bin if call.card and call.auth.kind == "bank_purchase" else None
        return phase1.auth_args(request, self._shaparak, None, basis, campaigns, bank_bin)

    def _remember_fee_plan(self, initial_key_id: bytes, basis: dict[str, Any]) -> None:
        if len(self._fee_plans) >= _FEE_PLANS_MAX:
            self._fee_plans.clear()  # rare; cheaper than LRU bookkeeping on every hit
        self._fee_plans[initial_key_id] = {k: basis[k] for k in phase1.FEE_PLAN_KEYS}

    def _refused(self, request: m.Request, reason: str, keys: WorkingKeys) -> _Reply:
        code = _REFUSAL_CODES.get(reason)
        if code is None:
            return self._security(request, reason, keys)
        log.info("request_refused", extra={"reason": reason, "stan": request.stan})
        return _refusal(request, code, keys)

    @staticmethod
    def _build(request: m.Request, outcome: store.Outcome) -> m.Response:
        """The response to `request` given its outcome: a pure function of the two."""
        if isinstance(request, m.AuthRequest):
            return phase1.respond(request, outcome)
        if isinstance(request, m.ConfirmAdvice):
            return phase2.confirm_response(request, outcome)
        if isinstance(request, m.ReversalAdvice):
            return phase2.reversal_response(request, outcome)
        return m.response_to(request, outcome.response_code)

    def _replay(self, request: m.Request, stored: store.Answer, keys: WorkingKeys,
                digest: bytes) -> _Reply:
        if stored.digest != digest:
            return _refusal(request, ResponseCode.DUPLICATE_TRANSMISSION, keys)
        if stored.outcome is not None:
            # The same answer rebuilt: byte for byte under the same KSN (the response echoes
            # only fields the digest covers, and the KSN), signed for its own KSN otherwise.
            return _reply(self._build(request, stored.outcome), keys)
        assert stored.response is not None  # stored as bytes, before migration 0007
        previous = cast(m.Response, m.decode(stored.response))
        if stored.ksn == request.ksn:
            return _Reply(stored.response, previous.response_code,
                          getattr(previous, "rrn", None))
        return _reply(dataclasses.replace(previous, ksn=request.ksn), keys)
