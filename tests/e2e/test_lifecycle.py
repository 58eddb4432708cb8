"""The two-phase lifecycle end to end (profile §3): confirm, reversal, hold expiry, the
Shaparak confirm window, pipelining, concurrent duplicates and restarts.

Time moves only by `env.clock.advance`; the sweeper is run by the test (`env.sweep`) with the
same injected clock, never by waiting for its interval.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from protocol.cardblock import CardData
from protocol.fields import ProcessingCode, ResponseCode
from simulator.client import TerminalClient
from simulator.terminal import PreparedAuth, verify_response
from switch import demo
from switch.service import Switch
from switch.sweeper import sweep_all
from tests.conftest import sweep_limits
from tests.e2e.conftest import Env
from tests.e2e.support import (
    all_balances,
    blocks,
    cafe_credit,
    connect,
    counts,
    make_terminal,
    net_balances,
    net_under_ref,
    network_credit,
    resign,
    txn_rows,
)

PC = ProcessingCode
RC = ResponseCode
EXP = demo.CARD_EXPIRY
club = demo.demo_club_pan
bank = demo.demo_bank_pan
BANK_EXPIRY = "3106"


async def approved(client: TerminalClient, amount: int, pan: str, expiry: str = EXP,
                   pc: ProcessingCode = PC.PURCHASE_CLUB, **kw: Any
                   ) -> tuple[str, PreparedAuth]:
    response, prepared = await client.purchase(amount, pan, expiry, processing_code=pc, **kw)
    assert response.code.is_approval, response
    assert response.message.rrn is not None
    return response.message.rrn, prepared


async def test_confirm_repeated_gives_the_same_0230_and_one_effect(env: Env) -> None:
    terminal = make_terminal(env, "CAFE0001")
    async with await connect(env, terminal) as client:
        start = await env.card_balance(1)
        rrn, prepared = await approved(client, 60_000, club(1))
        advice = terminal.confirm(prepared, rrn)
        first = await client.send(advice)
        assert first.code is RC.APPROVED
        rows, balances = await counts(env), await all_balances(env)
        for _ in range(5):  # the terminal repeats its 0220 until it hears a 0230
            assert (await client.retransmit(advice)).raw == first.raw
        for _ in range(3):  # or sends a fresh 0220 for the same RRN
            again = await client.confirm(prepared, rrn)
            assert again.code is RC.APPROVED and again.message.rrn == rrn
            assert blocks(again) == blocks(first)
        # Long after the hold timeout a confirmed transaction still confirms (nothing to do).
        env.clock.advance(seconds=10 * env.settings.hold_timeout_s)
        late = await client.confirm(prepared, rrn)
        assert late.code is RC.APPROVED and blocks(late) == blocks(first)
        assert await all_balances(env) == balances
        assert (await counts(env))["ledger_transfer"] == rows["ledger_transfer"]
        assert (await env.card_balance(1)).ledger == start.ledger - 60_000


async def test_confirm_after_reversal_is_12_and_reversal_repeats_are_harmless(env: Env) -> None:
    terminal = make_terminal(env, "CAFE0001")
    async with await connect(env, terminal) as client:
        start = await env.card_balance(1)
        rrn, prepared = await approved(client, 60_000, club(1))
        advice = terminal.reverse(prepared, rrn)
        reversed_ = await client.send(advice)
        assert reversed_.code is RC.APPROVED and reversed_.message.rrn == rrn
        assert await env.card_balance(1) == start
        assert (await client.retransmit(advice)).raw == reversed_.raw
        assert (await client.reverse(prepared, rrn)).code is RC.APPROVED
        assert (await client.confirm(prepared, rrn)).code is RC.INVALID_TRANSACTION
        assert await env.card_balance(1) == start
        assert [(t["state"], t["void_reason"]) for t in await txn_rows(env)] == [
            ("VOIDED", "reversal")]


async def _club(env: Env, client: TerminalClient) -> tuple[str, PreparedAuth]:
    return await approved(client, 80_000, club(1))


async def _credit(env: Env, client: TerminalClient) -> tuple[str, PreparedAuth]:
    # Spends all of member 12's café credit and part of the network's: two holds.
    amount = (await cafe_credit(env, 12)).ledger + (await network_credit(env, 12)).ledger // 2
    return await approved(client, amount, club(12), pc=PC.PURCHASE_STORE_CREDIT)


async def _bank(env: Env, client: TerminalClient) -> tuple[str, PreparedAuth]:
    return await approved(client, 2_000_000, bank(0), BANK_EXPIRY, PC.PURCHASE_SHAPARAK)


async def _topup(env: Env, client: TerminalClient) -> tuple[str, PreparedAuth]:
    return await approved(client, 150_000, club(1), pc=PC.TOP_UP_CLUB)


Purchase = Callable[[Env, TerminalClient], Awaitable[tuple[str, PreparedAuth]]]


@pytest.mark.parametrize("make", [_club, _credit, _bank, _topup],
                         ids=["club", "store-credit", "bank", "topup"])
async def test_reversal_after_confirm_restores_every_balance_exactly(
        env: Env, make: Purchase) -> None:
    terminal = make_terminal(env, "CAFE0001")
    async with await connect(env, terminal) as client:
        start = await net_balances(env)
        rrn, prepared = await make(env, client)
        assert (await client.confirm(prepared, rrn)).code is RC.APPROVED
        assert await net_balances(env) != start
        advice = terminal.reverse(prepared, rrn)
        reversal = await client.send(advice)
        assert reversal.code is RC.APPROVED and reversal.message.rrn == rrn
        assert await net_balances(env) == start
        assert await net_under_ref(env, rrn) == {}, "the mirror nets every account to zero"
        rows = await counts(env)
        # Repeated: the same bytes, and a fresh 0400 for the same original.
        assert (await client.retransmit(advice)).raw == reversal.raw
        assert (await client.reverse(prepared, rrn)).code is RC.APPROVED
        assert (await counts(env))["ledger_transfer"] == rows["ledger_transfer"]
        assert await net_balances(env) == start
        assert (await client.confirm(prepared, rrn)).code is RC.INVALID_TRANSACTION


async def test_reversal_of_a_confirmed_refund_restores_the_refundable_amount(env: Env) -> None:
    async with await env.client("CAFE0001") as client:
        rrn, purchase = await approved(client, 100_000, club(1))
        assert (await client.confirm(purchase, rrn)).code is RC.APPROVED
        after_purchase = await net_balances(env)
        refund_rrn, refund = await _refund(client, rrn, 100_000)
        assert (await client.confirm(refund, refund_rrn)).code is RC.APPROVED
        assert (await client.reverse(refund, refund_rrn)).code is RC.APPROVED
        assert await net_balances(env) == after_purchase
        # Nothing is refunded any more: the whole amount can be refunded again.
        again_rrn, again = await _refund(client, rrn, 100_000)
        assert (await client.confirm(again, again_rrn)).code is RC.APPROVED


async def _refund(client: TerminalClient, rrn: str, amount: int) -> tuple[str, PreparedAuth]:
    response, prepared = await client.refund(rrn, amount, club(1), EXP)
    assert response.code is RC.APPROVED, response
    return response.message.rrn or "", prepared


async def test_reversal_after_a_partial_refund_is_12(env: Env) -> None:
    async with await env.client("CAFE0001") as client:
        rrn, purchase = await approved(client, 100_000, club(1))
        assert (await client.confirm(purchase, rrn)).code is RC.APPROVED
        refund_rrn, refund = await _refund(client, rrn, 10_000)
        assert (await client.confirm(refund, refund_rrn)).code is RC.APPROVED
        balances = await all_balances(env)
        assert (await client.reverse(purchase, rrn)).code is RC.INVALID_TRANSACTION
        assert await all_balances(env) == balances


async def test_reversal_of_a_confirmed_topup_already_spent_is_51(env: Env) -> None:
    async with await env.client("CAFE0001") as client:
        start = await env.card_balance(1)
        rrn, topup = await approved(client, 150_000, club(1), pc=PC.TOP_UP_CLUB)
        assert (await client.confirm(topup, rrn)).code is RC.APPROVED
        spend_rrn, spend = await approved(client, start.available + 100_000, club(1))
        assert (await client.confirm(spend, spend_rrn)).code is RC.APPROVED
        balances = await all_balances(env)
        assert (await client.reverse(topup, rrn)).code is RC.INSUFFICIENT_FUNDS
        assert await all_balances(env) == balances


async def test_expired_refund_releases_its_reservation(env: Env) -> None:
    async with await env.client("CAFE0001") as client:
        rrn, purchase = await approved(client, 100_000, club(1))
        assert (await client.confirm(purchase, rrn)).code is RC.APPROVED
        balances = await all_balances(env)
        refund_rrn, refund = await _refund(client, rrn, 100_000)
        assert (await _refund_code(client, rrn, 1)) is RC.INVALID_AMOUNT, "all reserved"
        env.clock.advance(seconds=env.settings.hold_timeout_s)
        assert await env.sweep() == 1
        assert await all_balances(env) == balances
        assert (await client.confirm(refund, refund_rrn)).code is RC.TOO_LATE
        again_rrn, again = await _refund(client, rrn, 100_000)
        assert (await client.confirm(again, again_rrn)).code is RC.APPROVED


async def _refund_code(client: TerminalClient, rrn: str, amount: int) -> RC:
    response, _ = await client.refund(rrn, amount, club(1), EXP)
    return response.code


async def test_concurrent_purchases_on_one_card_from_many_terminals_never_overdraw(
        env: Env) -> None:
    start = await env.card_balance(1)
    share = start.available // 3 + 1  # at most two of these fit
    tids = ["CAFE0001", "CAFE0002", "HYPR0001", "HYPR0002", "BARB0001", "BARB0002"]
    clients = [await env.client(tid) for tid in tids]
    try:
        results = await asyncio.gather(*(c.purchase(share, club(1), EXP) for c in clients))
        codes = sorted(r.code.value for r, _ in results)
        assert codes == ["00", "00", "51", "51", "51", "51"]
        confirms = [c.confirm(p, r.message.rrn or "") for c, (r, p) in
                    zip(clients, results, strict=True) if r.code is RC.APPROVED]
        assert all(c.code is RC.APPROVED for c in await asyncio.gather(*confirms))
    finally:
        for client in clients:
            await client.close()
    after = await env.card_balance(1)
    assert after.ledger == start.ledger - 2 * share
    assert after.available == after.ledger >= 0


async def test_reversal_after_settlement_is_12_and_a_refund_still_works(env: Env) -> None:
    async with await env.client("CAFE0001") as client:
        start = await env.card_balance(1)
        rrn, purchase = await approved(client, 100_000, club(1))
        assert (await client.confirm(purchase, rrn)).code is RC.APPROVED
        # The settlement batch has taken it (done here as the batch would: by marking it).
        await env.conn.execute("UPDATE txn SET settlement_window_id = 1 WHERE rrn = $1", rrn)
        balances = await all_balances(env)
        assert (await client.reverse(purchase, rrn)).code is RC.INVALID_TRANSACTION
        assert await all_balances(env) == balances
        refund_rrn, refund = await _refund(client, rrn, 100_000)
        assert (await client.confirm(refund, refund_rrn)).code is RC.APPROVED
        assert (await env.card_balance(1)).ledger == start.ledger


async def test_reversal_before_original_then_the_original_holds_nothing(env: Env) -> None:
    terminal = make_terminal(env, "CAFE0001")
    async with await connect(env, terminal) as client:
        start, rows = await all_balances(env), await counts(env)
        original = terminal.auth(PC.PURCHASE_CLUB, 40_000, club(1), EXP)
        # The 0100 is lost on the way; the terminal times out and reverses it.
        reversal = await client.send(terminal.reverse(original, None))
        assert reversal.code is RC.APPROVED and reversal.message.rrn is None
        assert await env.count("reversal_memo") == rows["reversal_memo"] + 1

        # The lost 0100 turns up as sent. Its KSN counter is below the reversal's, yet it is
        # the remembered original, recognised by its identity before the counter check: 12.
        late = await client.send(original)
        assert late.code is RC.INVALID_TRANSACTION and late.message.rrn is None
        # Re-sent under a fresh KSN it is the same request: the same answer.
        resent = await client.send(resign(terminal, original, CardData("CAFE0001", club(1), EXP)))
        assert resent.code is RC.INVALID_TRANSACTION and resent.message.rrn is None
        assert await all_balances(env) == start
        assert (await counts(env))["txn"] == rows["txn"]


async def test_hold_expiry_by_the_sweeper_then_confirm_is_68(env: Env) -> None:
    async with await env.client("CAFE0001") as client:
        start = await env.card_balance(1)
        rrn, prepared = await approved(client, 90_000, club(1))
        env.clock.advance(seconds=env.settings.hold_timeout_s - 1)
        assert await env.sweep() == 0, "not yet due"
        assert (await env.card_balance(1)).available == start.available - 90_000
        env.clock.advance(seconds=2)
        assert await env.sweep() == 1
        assert await env.sweep() == 0
        after = await env.card_balance(1)
        assert (after.ledger, after.available) == (start.ledger, start.available)
        assert [(t["state"], t["void_reason"]) for t in await txn_rows(env)] == [
            ("VOIDED", "expired")]
        assert (await client.confirm(prepared, rrn)).code is RC.TOO_LATE
        assert await env.card_balance(1) == after
        # A reversal of an expired transaction is acknowledged and does nothing.
        assert (await client.reverse(prepared, rrn)).code is RC.APPROVED
        assert await env.card_balance(1) == after


async def test_holds_expire_in_batches_of_hold_sweep_batch_max(env: Env, sweep_batches) -> None:
    """At `hold_sweep_batch_max` 2: two due holds take a second batch that finds nothing,
    three a second batch of one (tests/switch/test_sweeper.py does lots and tiers)."""
    assert env.switch.pool is not None
    limits = sweep_limits(hold_sweep_batch_max=2)
    async with await env.client("CAFE0001") as client:
        for due, batches in ((2, [(2, 2), (2, 0)]), (3, [(2, 2), (2, 1)])):
            for card in range(1, due + 1):
                await approved(client, 10_000, club(card))
            env.clock.advance(seconds=env.settings.hold_timeout_s + 1)
            sweep_batches["holds"].clear()
            assert await sweep_all(env.switch.pool, env.clock(), limits) == due
            assert sweep_batches["holds"] == batches
    assert {t["state"] for t in await txn_rows(env)} == {"VOIDED"}


async def test_shaparak_confirm_after_the_hold_timeout_but_within_24_hours(env: Env) -> None:
    async with await env.client("CAFE0001") as client:
        income = await net_balances(env)
        rrn, prepared = await approved(client, 1_000_000, bank(0), BANK_EXPIRY,
                                       PC.PURCHASE_SHAPARAK)
        env.clock.advance(hours=23, minutes=59)
        assert await env.sweep() == 0, "a bank purchase holds nothing that expires at 120 s"
        confirmed = await client.confirm(prepared, rrn)
        assert confirmed.code is RC.APPROVED
        assert await net_balances(env) != income


async def test_shaparak_confirm_after_24_hours_is_68(env: Env) -> None:
    async with await env.client("CAFE0001") as client:
        start = await net_balances(env)
        rrn, prepared = await approved(client, 1_000_000, bank(0), BANK_EXPIRY,
                                       PC.PURCHASE_SHAPARAK)
        env.clock.advance(hours=24, seconds=1)
        assert (await client.confirm(prepared, rrn)).code is RC.TOO_LATE
        assert await net_balances(env) == start
        assert [t["state"] for t in await txn_rows(env)] == ["VOIDED"]


async def test_pipelined_requests_on_one_connection_are_all_answered_and_matched(
        env: Env) -> None:
    terminal = make_terminal(env, "CAFE0001")
    async with await connect(env, terminal) as client:
        before = {i: await env.card_balance(i) for i in range(1, 11)}
        batch = [terminal.auth(PC.PURCHASE_CLUB, 1_000 * i, club(i), EXP) for i in range(1, 11)]
        batch.append(terminal.auth(PC.BALANCE_INQUIRY, 0, club(0), EXP))
        batch.append(terminal.auth(PC.PURCHASE_CLUB, 10**11, club(11), EXP))  # 51
        responses = await client.send_many(batch)  # each checked against its own request
        assert [r.message.stan for r in responses] == [p.request.stan for p in batch]
        assert [r.code for r in responses] == [RC.APPROVED] * 11 + [RC.INSUFFICIENT_FUNDS]
        rrns = [r.message.rrn for r in responses[:10]]
        assert len(set(rrns)) == 10
        confirms = [terminal.confirm(p, r.message.rrn or "") for p, r in
                    zip(batch[:10], responses[:10], strict=True)]
        confirmed = await client.send_many(confirms)
        assert all(c.code is RC.APPROVED for c in confirmed)
        for i in range(1, 11):
            assert (await env.card_balance(i)).ledger == before[i].ledger - 1_000 * i


async def test_100_concurrent_copies_of_one_0100_make_one_hold_and_identical_answers(
        env: Env) -> None:
    # Two switch processes on one database, five connections each, ten copies in flight on
    # each connection: the identity claim must hold across connections and processes.
    second = Switch(env.settings, clock=env.clock, database_url=env.url)
    await second.start()
    try:
        terminal = make_terminal(env, "CAFE0001")
        prepared = terminal.auth(PC.PURCHASE_CLUB, 77_000, club(1), EXP)
        start, rows = await env.card_balance(1), await counts(env)
        clients = [await connect(env, terminal, port=switch.port)
                   for switch in (env.switch, second) for _ in range(5)]

        async def copies(client: TerminalClient, n: int) -> list[bytes]:
            await client.write_bytes(prepared.frame * n)
            return [await client.next_unmatched_frame(10) for _ in range(n)]

        try:
            answers = [raw for batch in await asyncio.gather(*(copies(c, 10) for c in clients))
                       for raw in batch]
        finally:
            for client in clients:
                await client.close()
        assert len(answers) == 100
        assert len(set(answers)) == 1, "every copy gets the same bytes"
        response = verify_response(prepared, answers[0])
        assert response.code is RC.APPROVED
        after = await counts(env)
        assert after["txn"] == rows["txn"] + 1
        assert after["request_log"] == rows["request_log"] + 1
        assert after["ledger_transfer"] == rows["ledger_transfer"] + 1, "one hold"
        assert (await env.card_balance(1)).available == start.available - 77_000
    finally:
        await second.stop()


async def test_retransmission_after_a_switch_restart_gets_the_identical_response(
        env: Env) -> None:
    terminal = make_terminal(env, "CAFE0001")
    start = await env.card_balance(1)
    async with await connect(env, terminal) as client:
        first, prepared = await client.purchase(45_000, club(1), EXP)
        assert first.code is RC.APPROVED
        advice = terminal.confirm(prepared, first.message.rrn or "")
    await env.switch.stop()
    restarted = Switch(env.settings, clock=env.clock, database_url=env.url)
    await restarted.start()
    try:
        rows = await counts(env)
        async with await connect(env, terminal, port=restarted.port) as client:
            again = await client.retransmit(prepared)
            assert again.raw == first.raw
            assert await counts(env) == rows
            confirmed = await client.send(advice)
            assert confirmed.code is RC.APPROVED
        await restarted.stop()
        restarted = Switch(env.settings, clock=env.clock, database_url=env.url)
        await restarted.start()
        async with await connect(env, terminal, port=restarted.port) as client:
            assert (await client.retransmit(advice)).raw == confirmed.raw
            assert (await client.retransmit(prepared)).raw == first.raw
        assert (await env.card_balance(1)).ledger == start.ledger - 45_000
    finally:
        await restarted.stop()


async def test_a_request_in_flight_at_shutdown_is_answered_and_its_retransmission_too(
        env: Env) -> None:
    """Stop the switch while a request is inside its transaction (blocked on a lock we
    hold): the graceful stop lets it finish and answers it before closing; a new switch on
    the same database gives the same bytes to its retransmission."""
    terminal = make_terminal(env, "CAFE0001")
    card_id = await env.card_id(1)
    blocker = await asyncpg.connect(env.url)
    restarted: Switch | None = None
    try:
        client = await connect(env, terminal)
        async with client:
            tx = blocker.transaction()
            await tx.start()
            await blocker.execute("SELECT 1 FROM ledger_account WHERE card_id = $1 "
                                  "AND kind = 'card_rial' FOR UPDATE", card_id)
            prepared = terminal.auth(PC.PURCHASE_CLUB, 33_000, club(1), EXP)
            pending = asyncio.create_task(client.send(prepared))
            await wait_for_lock_waiter(env.conn)
            stopping = asyncio.create_task(env.switch.stop())
            await asyncio.sleep(0)  # let the shutdown begin while the request waits
            await tx.rollback()
            answer = await pending
            await stopping
            assert answer.code is RC.APPROVED
        restarted = Switch(env.settings, clock=env.clock, database_url=env.url)
        await restarted.start()
        async with await connect(env, terminal, port=restarted.port) as client:
            assert (await client.retransmit(prepared)).raw == answer.raw
    finally:
        await blocker.close()
        if restarted is not None:
            await restarted.stop()


async def wait_for_lock_waiter(conn: asyncpg.Connection, timeout_s: float = 10) -> None:
    """Until some session of this database waits for a lock (nothing to await: poll)."""
    deadline = time.monotonic() + timeout_s
    while not await conn.fetchval(
            """SELECT count(*) FROM pg_stat_activity
               WHERE datname = current_database() AND wait_event_type = 'Lock'"""):
        assert time.monotonic() < deadline, "the request never reached the lock"
        await asyncio.sleep(0.01)


async def test_holds_that_expired_while_no_switch_ran_are_released_at_start(env: Env) -> None:
    async with await env.client("CAFE0001") as client:
        start = await env.card_balance(1)
        rrn, prepared = await approved(client, 64_000, club(1))
    await env.switch.stop()
    env.clock.advance(seconds=env.settings.hold_timeout_s + 1)
    restarted = Switch(env.settings, clock=env.clock, database_url=env.url)
    await restarted.start()  # sweeps before it listens
    try:
        after = await env.card_balance(1)
        assert (after.ledger, after.available) == (start.ledger, start.available)
        assert [(t["state"], t["void_reason"]) for t in await txn_rows(env)] == [
            ("VOIDED", "expired")]
        terminal = make_terminal(env, "CAFE0001", counter=prepared.ksn.counter,
                                 last_stan=int(prepared.request.stan))
        async with await connect(env, terminal, port=restarted.port) as client:
            assert (await client.confirm(prepared, rrn)).code is RC.TOO_LATE
    finally:
        await restarted.stop()
