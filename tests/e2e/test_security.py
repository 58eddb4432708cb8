"""The security chain of profile §8 end to end: KSN, MAC, counter, field 62, TID.

Every refusal here must change nothing: no request_log, txn, ledger or reversal_memo row and
no move of the terminal's accepted KSN counter, so that the untampered request is still
accepted afterwards. A 63 carries a MAC under the response key (usage 2001) of the KSN it
echoes when the switch can derive that key, and 8 zero bytes when it cannot.
"""

from __future__ import annotations

import dataclasses
import secrets

from protocol import messages
from protocol.cardblock import CardData
from protocol.dukpt import HostKeys, Ksn, derive_initial_key
from protocol.errors import DecodeError, SecurityError
from protocol.fields import ProcessingCode, ResponseCode
from protocol.mac import verify_mac
from simulator.client import NoResponse, TerminalClient
from simulator.terminal import Prepared, Terminal, verify_response
from switch import demo, keys
from tests.e2e.conftest import Env
from tests.e2e.support import (
    all_balances,
    connect,
    counts,
    decode_response,
    field_offset,
    flip_bit,
    ksn_counter,
    make_terminal,
    remac,
    resign,
)

PC = ProcessingCode
RC = ResponseCode
EXP = demo.CARD_EXPIRY
PAN = demo.demo_club_pan(1)
REQUEST_MTIS = (b"0100", b"0220", b"0400", b"0800")


def host_keys(env: Env) -> HostKeys:
    return HostKeys(keys.load(env.key_file).bdks_by_raw_id())


def assert_refusal_mac(env: Env, raw: bytes) -> None:
    """A 63 is MACed under the response key of the KSN it echoes, or carries zeros when no
    key can be derived for that KSN."""
    response = decode_response(raw)
    assert response.ksn is not None
    try:
        working = host_keys(env).working_keys(Ksn.from_bytes(response.ksn))
    except SecurityError:
        assert response.mac == messages.ZERO_MAC
        return
    assert verify_mac(working.mac_response, messages.mac_input(raw), response.mac)
    # ... and never under the request key: a response cannot pass for a request.
    assert not verify_mac(working.mac_request, messages.mac_input(raw), response.mac)


def assert_bare_refusal(response: messages.Response) -> None:
    """No MAC-protected data beyond the echoed fields (profile §3)."""
    assert response.response_code is RC.SECURITY_VIOLATION
    assert getattr(response, "rrn", None) is None
    assert getattr(response, "approval_code", None) is None
    assert getattr(response, "amounts", ()) == ()


def tampered(prepared: Prepared, raw: bytes) -> Prepared:  # type: ignore[type-arg]
    return dataclasses.replace(prepared, raw=raw)


async def expect_refused(env: Env, client: TerminalClient, body: bytes) -> RC | None:
    """Send `body`; the code of the answer (30 or 63), or None when the switch rightly
    answers nothing (no request MTI to answer in kind)."""
    try:
        messages.decode(body)
        decodes = True
    except DecodeError:
        decodes = False
    await client.send_message_bytes(body)
    if not decodes and body[:4] not in REQUEST_MTIS:
        return None
    raw = await client.next_unmatched_frame(timeout_s=5)
    response = decode_response(raw)
    if decodes:
        assert_bare_refusal(response)
        assert_refusal_mac(env, raw)
    else:
        assert response.response_code is RC.FORMAT_ERROR
    return response.response_code


async def test_every_single_bit_flip_of_a_signed_0100_is_refused_and_writes_nothing(
        env: Env) -> None:
    terminal = make_terminal(env, "CAFE0001")
    async with await connect(env, terminal) as client:
        prepared = terminal.auth(PC.PURCHASE_CLUB, 12_345, PAN, EXP)
        rows, before = await counts(env), await all_balances(env)
        seen: dict[RC | None, int] = {}
        for offset in range(len(prepared.raw)):
            for bit in range(8):
                code = await expect_refused(env, client, flip_bit(prepared.raw, offset, bit))
                seen[code] = seen.get(code, 0) + 1
        assert set(seen) <= {RC.SECURITY_VIOLATION, RC.FORMAT_ERROR, None}
        assert seen.get(RC.SECURITY_VIOLATION, 0) > 100, seen
        assert await counts(env) == rows
        assert await all_balances(env) == before
        assert await ksn_counter(env, "CAFE0001") == 0
        # Nothing else was sent back: the next frame is the answer to the untouched request,
        # which is still good (no flip consumed its counter or its identity).
        await client.send_message_bytes(prepared.raw)
        approved = verify_response(prepared, await client.next_unmatched_frame(5))
        assert approved.code is RC.APPROVED
        assert seen.get(None, 0) <= 4 * 8, "only flips of the MTI may go unanswered"


async def test_flips_in_mac_field_62_and_ksn_are_63_and_change_nothing(env: Env) -> None:
    terminal = make_terminal(env, "CAFE0001")
    async with await connect(env, terminal) as client:
        prepared = terminal.auth(PC.PURCHASE_CLUB, 50_000, PAN, EXP)
        raw = prepared.raw
        ksn_at, card_at = field_offset(raw, 53), field_offset(raw, 62)
        rows, before = await counts(env), await all_balances(env)

        bad_mac = await client.send(tampered(prepared, flip_bit(raw, len(raw) - 1, 7)))
        assert bad_mac.mac_verified, "the key was derivable: the 63 is MACed"
        assert_bare_refusal(bad_mac.message)

        for where in (card_at, card_at + 17, ksn_at + 11, ksn_at + 7, ksn_at + 2):
            body = flip_bit(raw, where, 3)
            assert await expect_refused(env, client, body) is RC.SECURITY_VIOLATION

        # Field 62 tampered behind a valid MAC (as if the attacker had the MAC key): the
        # switch gets as far as decrypting, then refuses and undoes the counter it took.
        for where in (card_at, card_at + 5, card_at + 16, card_at + 31):
            body = remac(flip_bit(raw, where, 0), prepared.keys.mac_request)
            refused = await client.send(tampered(prepared, body))
            assert refused.code is RC.SECURITY_VIOLATION and refused.mac_verified

        assert await counts(env) == rows
        assert await all_balances(env) == before
        assert await ksn_counter(env, "CAFE0001") == 0
        approved = await client.send(prepared)
        assert approved.code is RC.APPROVED
        assert await ksn_counter(env, "CAFE0001") == prepared.ksn.counter


async def test_unknown_device_gets_a_macced_63_and_unknown_bdk_a_zero_mac(env: Env) -> None:
    store = keys.load(env.key_file)
    ik_id = bytes.fromhex(env.ik_ids["CAFE0001"])
    unregistered = ik_id[:4] + bytes.fromhex("00ABCDEF")
    stranger = Terminal.from_profile(
        "CAFE0001", derive_initial_key(store.bdk(ik_id[:4].hex().upper()), unregistered),
        unregistered, clock=env.clock)
    unknown_bdk = secrets.token_bytes(4) + ik_id[4:]
    while unknown_bdk[:4].hex().upper() in store.bdks:
        unknown_bdk = secrets.token_bytes(4) + ik_id[4:]
    forger = Terminal.from_profile("CAFE0001", secrets.token_bytes(16), unknown_bdk,
                                   clock=env.clock)
    rows = await counts(env)
    async with await connect(env, stranger) as client:
        signed_on = await client.send(stranger.sign_on())
        assert_bare_refusal(signed_on.message)
        assert signed_on.mac_verified
        purchase = await client.send(stranger.auth(PC.PURCHASE_CLUB, 1_000, PAN, EXP))
        assert_bare_refusal(purchase.message)
        assert purchase.mac_verified
    async with await connect(env, forger) as client:
        response = await client.send(forger.auth(PC.PURCHASE_CLUB, 1_000, PAN, EXP))
        assert_bare_refusal(response.message)
        assert not response.mac_verified
        assert response.message.mac == messages.ZERO_MAC
    assert await counts(env) == rows


async def test_replayed_old_bytes_get_the_stored_response_and_no_second_effect(
        env: Env) -> None:
    terminal = make_terminal(env, "CAFE0001")
    async with await connect(env, terminal) as client:
        start = await env.card_balance(1)
        old = terminal.auth(PC.PURCHASE_CLUB, 30_000, PAN, EXP)
        first = await client.send(old)
        assert first.code is RC.APPROVED
        newer, _ = await client.purchase(20_000, PAN, EXP)
        assert newer.code is RC.APPROVED
        rows, balances = await counts(env), await all_balances(env)
        assert await ksn_counter(env, "CAFE0001") == 2

        replayed = await client.retransmit(old)
        assert replayed.raw == first.raw
        assert await counts(env) == rows and await all_balances(env) == balances
        assert await ksn_counter(env, "CAFE0001") == 2
        assert (await env.card_balance(1)).available == start.available - 50_000


async def test_same_request_under_a_new_ksn_gets_the_same_answer_signed_for_that_ksn(
        env: Env) -> None:
    terminal = make_terminal(env, "CAFE0001")
    async with await connect(env, terminal) as client:
        first_prepared = terminal.auth(PC.PURCHASE_CLUB, 30_000, PAN, EXP)
        first = await client.send(first_prepared)
        rows, balances = await counts(env), await all_balances(env)
        again = resign(terminal, first_prepared, CardData("CAFE0001", PAN, EXP))
        second = await client.send(again)  # check_response verifies the MAC for the new KSN
        assert second.code is RC.APPROVED
        assert second.raw != first.raw
        assert dataclasses.replace(second.message, ksn=None, mac=messages.ZERO_MAC) == \
            dataclasses.replace(first.message, ksn=None, mac=messages.ZERO_MAC)
        assert await counts(env) == rows and await all_balances(env) == balances
        # The same identity with another card is a different request: 94.
        other_card = resign(terminal, first_prepared,
                            CardData("CAFE0001", demo.demo_club_pan(2), EXP))
        assert (await client.send(other_card)).code is RC.DUPLICATE_TRANSMISSION


async def test_ksn_rollback_on_a_new_request_is_a_63_replay(env: Env) -> None:
    terminal = make_terminal(env, "CAFE0001")
    async with await connect(env, terminal) as client:
        for _ in range(3):
            response, _ = await client.purchase(1_000, PAN, EXP)
            assert response.code is RC.APPROVED
        assert await ksn_counter(env, "CAFE0001") == 3
        rows, balances = await counts(env), await all_balances(env)
        # A cloned or reset terminal: counters 1, 2 and 3 again, with fresh STANs.
        for counter in (0, 1, 2):
            clone = make_terminal(env, "CAFE0001", counter=counter, last_stan=100 + counter)
            async with await connect(env, clone) as clone_client:
                response, _ = await clone_client.purchase(1_000, PAN, EXP)
                assert response.code is RC.SECURITY_VIOLATION, counter
                assert response.mac_verified
                assert_bare_refusal(response.message)
        assert await counts(env) == rows and await all_balances(env) == balances
        assert await ksn_counter(env, "CAFE0001") == 3
        response, _ = await client.purchase(1_000, PAN, EXP)
        assert response.code is RC.APPROVED, "the real terminal carries on"


async def test_tid_mismatch_is_63_and_a_retransmission_of_it_too(env: Env) -> None:
    terminal = make_terminal(env, "CAFE0001")
    async with await connect(env, terminal) as client:
        rows, balances = await counts(env), await all_balances(env)
        for other in ("CAFE0002", "HYPR0001", "XXXXXXXX"):
            prepared = terminal.auth(PC.PURCHASE_CLUB, 1_000, PAN, EXP, card_tid=other)
            response = await client.send(prepared)
            assert response.code is RC.SECURITY_VIOLATION and response.mac_verified
            assert (await client.retransmit(prepared)).code is RC.SECURITY_VIOLATION
        # A sign-on whose field 62 names another TID, under CAFE0001's keys.
        impostor = Terminal("CAFE0002", terminal.keys, clock=env.clock,
                            last_stan=terminal.last_stan)
        assert (await client.send(impostor.sign_on())).code is RC.SECURITY_VIOLATION
        assert await counts(env) == rows and await all_balances(env) == balances
        assert await ksn_counter(env, "CAFE0001") == 0


async def test_sign_on_with_the_right_tid(env: Env) -> None:
    async with await env.client("HYPR0002") as client:
        response = await client.sign_on()
        assert response.code is RC.APPROVED and response.mac_verified
        assert await ksn_counter(env, "HYPR0002") == 1
        assert (await client.echo()).code is RC.APPROVED
        assert (await client.sign_off()).code is RC.APPROVED


async def test_suspended_or_retired_terminal_is_63(env: Env) -> None:
    async with await env.client("CAFE0001") as client:
        assert (await client.sign_on()).code is RC.APPROVED
        for status in ("suspended", "retired"):
            await env.conn.execute("UPDATE terminal SET status = $1 WHERE tid = 'CAFE0001'",
                                   status)
            rows, balances = await counts(env), await all_balances(env)
            response, _ = await client.purchase(1_000, PAN, EXP)
            assert response.code is RC.SECURITY_VIOLATION and response.mac_verified
            assert (await client.sign_on()).code is RC.SECURITY_VIOLATION
            assert await counts(env) == rows and await all_balances(env) == balances
            assert await ksn_counter(env, "CAFE0001") == 1
        await env.conn.execute("UPDATE terminal SET status = 'active' WHERE tid = 'CAFE0001'")
        response, _ = await client.purchase(1_000, PAN, EXP)
        assert response.code is RC.APPROVED


async def test_invalid_counter_gets_a_zero_mac_63(env: Env) -> None:
    # A counter with more than 16 bits set names no DUKPT key: nothing can be derived.
    terminal = make_terminal(env, "CAFE0001")
    async with await connect(env, terminal) as client:
        prepared = terminal.auth(PC.PURCHASE_CLUB, 1_000, PAN, EXP)
        ksn_at = field_offset(prepared.raw, 53)
        body = bytearray(prepared.raw)
        body[ksn_at + 8:ksn_at + 12] = (0x0001FFFF).to_bytes(4, "big")
        await client.send_message_bytes(bytes(body))
        raw = await client.next_unmatched_frame(5)
        response = decode_response(raw)
        assert_bare_refusal(response)
        assert response.mac == messages.ZERO_MAC
        try:
            await client.next_unmatched_frame(0.1)
            raise AssertionError("one request, one answer")
        except NoResponse:
            pass
