"""A member's state is read under a lock on the member (audit #8): the member's club card
and linked bank card buying at once, on the stamp card's free visit, get it once. Over TCP
from two terminals; `db check` after (the fixture)."""

from __future__ import annotations

import asyncio

from protocol.fields import AmountType, ProcessingCode, ResponseCode
from switch import demo
from tests.e2e.conftest import Env
from tests.e2e.support import blocks, lock_waiters
from tests.e2e.test_pricing import CAFE, NONE, add

MEMBER = 5  # a demo member with a linked bank card


async def warm_connections(env: Env, count: int) -> None:
    """`count` pool connections of the switch that know the request call's types: asyncpg
    reads them on a connection's first call, which can take seconds (JIT on a busy
    machine), longer than a purchase may wait for the row (db_statement_timeout_s)."""
    assert env.switch.pool is not None
    held = [await env.switch.pool.acquire() for _ in range(count)]
    try:
        for conn in held:
            await conn.prepare("SELECT * FROM switch_handle($1, $2, $3, $4)")
    finally:
        for conn in held:
            await env.switch.pool.release(conn)


async def test_club_card_and_linked_bank_card_at_once_get_the_free_visit_once(env):
    """Every 2nd visit free. After one visit both cards buy at once; the test holds the
    stamp card's row (its budget is reserved under that lock, after the member's state is
    read), so both purchases are priced and waiting before either is written. Exactly one
    gets the free visit; the other is priced again on the member's new visit count."""
    await add(env, id="cafe-stamps", kind="stamp_card", every=2, free_up_to_rial=50_000,
              budget_rial=1_000_000, merchant=CAFE)
    await warm_connections(env, 2)
    club, bank = await env.client("CAFE0001"), await env.client("CAFE0002")
    async with club, bank:
        first, prepared = await club.purchase(10_000, demo.demo_club_pan(MEMBER),
                                              demo.CARD_EXPIRY)
        assert blocks(first)[(NONE, AmountType.DISCOUNT.value)] == 0
        await club.confirm(prepared, first.message.rrn)
        async with env.conn.transaction():
            await env.conn.execute("SELECT 1 FROM campaign WHERE id = 'cafe-stamps' FOR UPDATE")
            buying = asyncio.gather(
                club.purchase(20_000, demo.demo_club_pan(MEMBER), demo.CARD_EXPIRY),
                bank.purchase(20_000, demo.demo_bank_pan(MEMBER), demo.CARD_EXPIRY,
                              processing_code=ProcessingCode.PURCHASE_SHAPARAK))
            while await lock_waiters(env) < 2:
                assert not buying.done(), buying.result()
        answers = [response for response, _ in await buying]
    assert [a.code for a in answers] == [ResponseCode.APPROVED] * 2, answers
    assert sorted(blocks(a)[(NONE, AmountType.DISCOUNT.value)] for a in answers) == [0, 20_000]
    visits = await env.conn.fetchval(
        "SELECT count(*) FROM txn WHERE card_id = $1", await env.card_id(MEMBER))
    assert visits == 3
