"""The request path's own upgrade case: answers a switch stored before migration 0007 (as
response bytes, not as an outcome) are still given to retransmissions."""

from __future__ import annotations

import dataclasses

from protocol import messages
from protocol.cardblock import CardData
from protocol.fields import ResponseCode
from switch import demo
from tests.e2e.conftest import Env
from tests.e2e.support import connect, counts, make_terminal, resign

EXP = demo.CARD_EXPIRY


async def test_a_response_stored_as_bytes_before_0007_is_replayed(env: Env) -> None:
    terminal = make_terminal(env, "CAFE0001")
    async with await connect(env, terminal) as client:
        first, prepared = await client.purchase(12_000, demo.demo_club_pan(1), EXP)
        assert first.code is ResponseCode.APPROVED
        # What a switch before 0007 stored: the response bytes and no outcome.
        await env.conn.execute(
            """UPDATE request_log SET response = $1, result = NULL
               WHERE stan = $2 AND mti = '0100'""", first.raw, prepared.request.stan)
        rows = await counts(env)
        assert (await client.retransmit(prepared)).raw == first.raw
        resent = resign(terminal, prepared, CardData("CAFE0001", demo.demo_club_pan(1), EXP))
        second = await client.send(resent)  # checked against the MAC for its new KSN
        assert dataclasses.replace(second.message, ksn=None, mac=messages.ZERO_MAC) == \
            dataclasses.replace(first.message, ksn=None, mac=messages.ZERO_MAC)
        other = resign(terminal, prepared, CardData("CAFE0001", demo.demo_club_pan(2), EXP))
        assert (await client.send(other)).code is ResponseCode.DUPLICATE_TRANSMISSION
        assert await counts(env) == rows
