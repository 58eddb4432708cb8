"""The terminal simulator against a tiny fake switch over real TCP on 127.0.0.1.

The fake switch is a protocol-level stand-in, not the real switch: it derives keys with
`protocol.dukpt.HostKeys` from the BDK, records what each request carried (MAC verdict under
the host's usage-2000 key, decrypted field 62, KSN counter) and answers with responses MACed
under the usage-2001 key. A per-test policy makes it drop, hold (to reorder), mis-sign or hang
up, so every client behaviour is driven by an event, never by a sleep.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pytest

from protocol import messages
from protocol.cardblock import CardData, decrypt_card_data
from protocol.dukpt import HostKeys, Ksn, TerminalKeys
from protocol.fields import Mti, ProcessingCode, ResponseCode
from protocol.framing import FrameDecoder, encode_frame
from protocol.mac import compute_mac, verify_mac
from protocol.values import OriginalData
from simulator import terminal as terminal_module
from simulator.client import ConnectionClosed, NoResponse, TerminalClient
from simulator.terminal import (
    Response,
    ResponseMacError,
    StanSequence,
    Terminal,
    UnexpectedResponseError,
    verify_response,
)

BDK = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
BDK_ID = bytes.fromhex("0A0B0C0D")
INITIAL_KEY_ID = BDK_ID + bytes.fromhex("00000042")
TID = "TERM0001"
PAN = "6037991234567893"  # a made-up test card
EXPIRY = "2812"
NOW = datetime(2024, 11, 24, 13, 15, 0, tzinfo=UTC)
SHORT_S = 0.05  # a wait meant to expire: the switch was told to stay silent

Action = Literal["answer", "drop", "close", "hold", "wrong_key", "zero_mac_63", "zero_mac_00"]


@dataclass(frozen=True)
class Received:
    raw: bytes
    request: messages.Request
    mac_ok: bool
    card: CardData | None
    counter: int


class FakeSwitch:
    """Answers every request with 00 (an RRN for a 0110) unless `policy` says otherwise.
    Held requests are answered, newest first, by the next request that is answered."""

    def __init__(self) -> None:
        self.hosts = HostKeys({BDK_ID: BDK})
        self.received: list[Received] = []
        self.policy: Callable[[Received], Action] = lambda _: "answer"
        self.port = 0
        self._arrived = asyncio.Condition()
        self._rrns = itertools.count(1)
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def wait_for(self, count: int) -> None:
        async with asyncio.timeout(5), self._arrived:
            await self._arrived.wait_for(lambda: len(self.received) >= count)

    def of_type(self, mti: Mti) -> list[Received]:
        return [r for r in self.received if r.request.MTI is mti]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = FrameDecoder()
        held: list[Received] = []  # answered, newest first, with the next answer
        try:
            while data := await reader.read(4096):
                for frame in decoder.feed(data):
                    received = await self._record(frame)
                    action = self.policy(received)
                    if action == "close":
                        return
                    if action == "hold":
                        held.append(received)
                    if action in ("drop", "hold"):
                        continue
                    answers = [self._answer(received, action)]
                    answers += [self._answer(h, "answer") for h in reversed(held)]
                    held.clear()
                    writer.write(b"".join(encode_frame(answer) for answer in answers))
        finally:
            writer.close()

    async def _record(self, frame: bytes) -> Received:
        request = messages.decode(frame)
        assert isinstance(request, messages.Request)
        ksn = Ksn.from_bytes(request.ksn)
        keys = self.hosts.working_keys(ksn)
        mac_ok = verify_mac(keys.mac_request, messages.mac_input(frame), request.mac)
        blob = getattr(request, "card_data", None)
        card = None if blob is None else decrypt_card_data(keys.data_encrypt, blob)
        received = Received(frame, request, mac_ok, card, ksn.counter)
        async with self._arrived:
            self.received.append(received)
            self._arrived.notify_all()
        return received

    def _answer(self, received: Received, action: Action) -> bytes:
        request = received.request
        code = ResponseCode.SECURITY_VIOLATION if action == "zero_mac_63" else ResponseCode.APPROVED
        response = messages.response_to(request, code)
        if isinstance(response, messages.AuthResponse) and code is ResponseCode.APPROVED:
            response = dataclasses.replace(response, rrn=f"{next(self._rrns):012d}")
        raw = messages.encode(response)
        keys = self.hosts.working_keys(Ksn.from_bytes(request.ksn))
        if action in ("zero_mac_63", "zero_mac_00"):
            return messages.with_mac(raw, messages.ZERO_MAC)
        key = keys.mac_request if action == "wrong_key" else keys.mac_response
        return messages.with_mac(raw, compute_mac(key, messages.mac_input(raw)))


def make_terminal(clock: Callable[[], datetime] = lambda: NOW, last_stan: int = 0) -> Terminal:
    keys = TerminalKeys.provision(BDK, INITIAL_KEY_ID)
    return Terminal(TID, keys, clock=clock, last_stan=last_stan)


@pytest.fixture
async def switch() -> AsyncIterator[FakeSwitch]:
    fake = FakeSwitch()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def client(switch: FakeSwitch) -> AsyncIterator[TerminalClient]:
    async with await TerminalClient(make_terminal(), timeout_s=5).connect(
        "127.0.0.1", switch.port
    ) as connected:
        yield connected


def drop_where(mti: Mti, first: int | None = None) -> Callable[[Received], Action]:
    """A policy that drops the first `first` requests of type `mti` (all if None)."""
    seen = itertools.count(1)

    def policy(received: Received) -> Action:
        if received.request.MTI is not mti:
            return "answer"
        return "drop" if first is None or next(seen) <= first else "answer"

    return policy


# --- what the client sends --------------------------------------------------------------------


async def test_every_request_mac_verifies_under_the_host_derived_2000_key(client, switch):
    assert (await client.sign_on()).code is ResponseCode.APPROVED
    await client.echo()
    response, prepared = await client.purchase(150_000, PAN, EXPIRY)
    assert response.mac_verified and response.message.rrn is not None
    await client.confirm(prepared, response.message.rrn)
    await client.reverse(prepared, response.message.rrn)
    await client.sign_off()
    sent = [r.request.MTI.value for r in switch.received]
    assert sent == ["0800", "0800", "0100", "0220", "0400", "0800"]
    assert all(r.mac_ok for r in switch.received)


async def test_field_62_decrypts_to_the_tid_pan_and_expiry(client, switch):
    await client.sign_on()
    await client.purchase(10_000, PAN, EXPIRY)
    other_tid = client.terminal.auth(
        ProcessingCode.PURCHASE_CLUB, 1, PAN, EXPIRY, card_tid="OTHER001"
    )
    await client.send(other_tid)
    sign_on, purchase, mismatched = (r.card for r in switch.received)
    assert sign_on == CardData(TID, "", "0000")
    assert purchase == CardData(TID, PAN, EXPIRY)
    assert mismatched is not None and mismatched.tid == "OTHER001"


async def test_ksn_counter_grows_and_a_retransmission_repeats_the_bytes(client, switch):
    prepared = client.terminal.auth(ProcessingCode.PURCHASE_CLUB, 5_000, PAN, EXPIRY)
    await client.send(prepared)
    await client.retransmit(prepared)
    await client.echo()
    await client.balance(PAN, EXPIRY)
    first, again, *later = switch.received
    assert again.raw == first.raw == prepared.raw
    counters = [first.counter, *(r.counter for r in later)]
    assert counters == sorted(set(counters)) and len(counters) == 3


def test_a_terminal_from_provisioning_data_continues_its_counter():
    hosts = HostKeys({BDK_ID: BDK})
    initial_key = hosts.initial_key(INITIAL_KEY_ID)
    terminal = Terminal.from_profile(TID, initial_key, INITIAL_KEY_ID, counter=7)
    prepared = terminal.sign_on()
    assert Ksn.from_bytes(prepared.request.ksn).counter == prepared.ksn.counter == 8
    keys = hosts.working_keys(prepared.ksn)
    assert verify_mac(keys.mac_request, messages.mac_input(prepared.raw), prepared.request.mac)


def test_confirm_and_reverse_name_the_original_0100():
    terminal = make_terminal()
    auth = terminal.auth(ProcessingCode.PURCHASE_CLUB, 5_000, PAN, EXPIRY)
    confirm = terminal.confirm(auth, "000000000001").request
    assert confirm.original == OriginalData(Mti.AUTH_REQUEST, *auth.identity)
    assert (confirm.processing_code, confirm.amount) == (ProcessingCode.PURCHASE_CLUB, 5_000)
    assert confirm.rrn == "000000000001" and confirm.stan != auth.request.stan
    assert terminal.confirm(auth, "000000000001", amount=1).request.amount == 1  # for a 13
    reversal = terminal.reverse(auth, None).request
    assert reversal.rrn is None and reversal.original == confirm.original


def test_stan_wraps_from_999999_to_000001():
    terminal = make_terminal(last_stan=999_998)
    assert [terminal.echo().request.stan for _ in range(3)] == ["999999", "000001", "000002"]
    assert StanSequence().next() == "000001"


def test_field_7_and_local_time_come_from_the_injected_clock():
    times = iter([NOW, NOW + timedelta(hours=8), NOW.astimezone(ZoneInfo("Asia/Tehran"))])
    terminal = make_terminal(clock=lambda: next(times))
    afternoon = terminal.auth(ProcessingCode.PURCHASE_CLUB, 1, PAN, EXPIRY).request
    assert afternoon.transmission_time == "1124131500"
    assert (afternoon.local_time, afternoon.local_date) == ("164500", "1124")  # UTC+03:30
    past_midnight_in_tehran = terminal.auth(ProcessingCode.PURCHASE_CLUB, 1, PAN, EXPIRY).request
    assert past_midnight_in_tehran.transmission_time == "1124211500"
    assert past_midnight_in_tehran.local_date == "1125"
    assert terminal.echo().request.transmission_time == "1124131500"  # aware in +03:30: UTC


def test_local_time_falls_back_to_utc_without_tzdata(monkeypatch):
    def missing(key: str) -> ZoneInfo:
        raise ZoneInfoNotFoundError(key)

    monkeypatch.setattr(terminal_module, "ZoneInfo", missing)
    assert terminal_module.local_zone() is UTC
    request = make_terminal().auth(ProcessingCode.PURCHASE_CLUB, 1, PAN, EXPIRY).request
    assert request.local_time == "131500"


def test_reprs_show_no_key_pan_or_ksn():
    terminal = make_terminal()
    prepared = terminal.auth(ProcessingCode.PURCHASE_CLUB, 1, PAN, EXPIRY)
    shown = " ".join(map(repr, (terminal, terminal.keys, prepared, NoResponse(prepared))))
    for secret in (PAN, prepared.ksn.to_bytes().hex(), prepared.keys.mac_request.hex()):
        assert secret.lower() not in shown.lower()
    assert "TERM0001" in shown and prepared.request.stan in shown


# --- what the client accepts ------------------------------------------------------------------


async def test_pipelined_responses_are_matched_out_of_order(client, switch):
    switch.policy = lambda r: "hold" if len(switch.received) < 3 else "answer"
    batch = [client.terminal.echo() for _ in range(3)]
    responses = await client.send_many(batch)
    assert [r.message.stan for r in responses] == [p.request.stan for p in batch]
    concurrent = [client.terminal.echo() for _ in range(3)]
    switch.policy = lambda r: "hold" if len(switch.received) < 6 else "answer"
    answers = await asyncio.gather(*(client.send(p) for p in concurrent))
    assert [a.message.stan for a in answers] == [p.request.stan for p in concurrent]
    assert client.in_flight == 0


async def test_a_response_with_a_wrong_mac_is_refused(client, switch):
    switch.policy = lambda r: "wrong_key"  # the request's 2000 key: a response must use 2001
    with pytest.raises(ResponseMacError):
        await client.echo()
    switch.policy = lambda r: "zero_mac_00"
    with pytest.raises(ResponseMacError):
        await client.echo()


async def test_a_63_with_an_all_zero_mac_is_returned_unverified(client, switch):
    switch.policy = lambda r: "zero_mac_63"
    response = await client.echo()
    assert response.code is ResponseCode.SECURITY_VIOLATION and not response.mac_verified


def test_a_response_that_does_not_echo_its_request_is_refused():
    terminal = make_terminal()
    prepared, other = terminal.echo(), terminal.sign_off()
    response = dataclasses.replace(
        messages.response_to(prepared.request, ResponseCode.APPROVED), stan="999999"
    )
    raw = messages.encode(response)
    signed = messages.with_mac(
        raw, compute_mac(prepared.keys.mac_response, messages.mac_input(raw))
    )
    with pytest.raises(UnexpectedResponseError):
        verify_response(prepared, signed)
    with pytest.raises(ResponseMacError):  # another exchange's key
        verify_response(other, signed)


async def test_raw_frames_nobody_waits_for_are_readable(client, switch):
    prepared = client.terminal.echo()
    await client.send_message_bytes(prepared.raw)
    frame = await client.next_unmatched_frame()
    response: Response[messages.NetworkResponse] = verify_response(prepared, frame)
    assert response.code is ResponseCode.APPROVED


# --- failures: silence and hang-ups -------------------------------------------------------


async def test_switch_closing_fails_every_pending_request(client, switch):
    switch.policy = lambda r: "close" if len(switch.received) == 3 else "hold"
    pending = [client.send(client.terminal.echo()) for _ in range(3)]
    outcomes = await asyncio.gather(*pending, return_exceptions=True)
    assert [type(o) for o in outcomes] == [ConnectionClosed] * 3
    with pytest.raises(ConnectionClosed):
        await client.echo()
    with pytest.raises(ConnectionClosed):
        await client.next_unmatched_frame()
    assert client.closed and client.in_flight == 0


async def test_send_without_an_answer_raises_no_response(client, switch):
    switch.policy = lambda r: "drop"
    prepared = client.terminal.auth(ProcessingCode.PURCHASE_CLUB, 1, PAN, EXPIRY)
    with pytest.raises(NoResponse) as caught:
        await client.send(prepared, timeout_s=SHORT_S)
    assert caught.value.prepared is prepared and client.in_flight == 0


async def test_confirm_repeats_the_same_0220_until_a_0230_arrives(client, switch):
    response, prepared = await client.purchase(20_000, PAN, EXPIRY)
    assert response.message.rrn is not None
    switch.policy = drop_where(Mti.CONFIRM_ADVICE, first=2)
    confirmed = await client.confirm(prepared, response.message.rrn, attempts=3, timeout_s=0.2)
    assert confirmed.code is ResponseCode.APPROVED
    copies = {r.raw for r in switch.of_type(Mti.CONFIRM_ADVICE)}
    assert len(switch.of_type(Mti.CONFIRM_ADVICE)) == 3 and len(copies) == 1


async def test_the_answer_to_a_repeated_advice_pairs_once_and_the_duplicate_is_raw(client, switch):
    response, prepared = await client.purchase(20_000, PAN, EXPIRY)
    assert response.message.rrn is not None
    advice = client.terminal.confirm(prepared, response.message.rrn)
    copies = itertools.count(1)
    switch.policy = lambda r: "hold" if next(copies) == 1 else "answer"  # answer both at once
    confirmed = await client.send_advice(advice, attempts=2, timeout_s=SHORT_S)
    assert confirmed.code is ResponseCode.APPROVED
    duplicate = await client.next_unmatched_frame()
    assert verify_response(advice, duplicate).code is ResponseCode.APPROVED
    assert [r.raw for r in switch.of_type(Mti.CONFIRM_ADVICE)] == [advice.raw] * 2


async def test_confirm_gives_up_after_bounded_retries(client, switch):
    response, prepared = await client.purchase(20_000, PAN, EXPIRY)
    assert response.message.rrn is not None
    switch.policy = drop_where(Mti.CONFIRM_ADVICE)
    with pytest.raises(NoResponse) as caught:
        await client.confirm(prepared, response.message.rrn, attempts=3, timeout_s=SHORT_S)
    assert caught.value.attempts == 3
    await switch.wait_for(1 + 3)
    assert len({r.raw for r in switch.of_type(Mti.CONFIRM_ADVICE)}) == 1
    assert len(switch.of_type(Mti.CONFIRM_ADVICE)) == 3 and client.in_flight == 0
