"""The switch's per-request log lines carry the RRN wherever one exists: the debug line of
every answered request, and the decline line (docs/operations.md, the event table)."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from protocol.cardblock import mask_pan
from protocol.fields import ResponseCode
from switch import demo
from tests.e2e.conftest import Env

RC = ResponseCode
EXP = demo.CARD_EXPIRY


def _events(caplog: pytest.LogCaptureFixture, event: str) -> list[dict[str, Any]]:
    return [vars(r) for r in caplog.records if r.getMessage() == event]


async def test_answered_lines_carry_the_rrn_of_approved_requests(
        env: Env, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="switch.processor"):
        async with await env.client("CAFE0001") as client:
            response, prepared = await client.purchase(40_000, demo.demo_club_pan(1), EXP)
            rrn = response.message.rrn
            assert response.code is RC.APPROVED and rrn is not None
            assert (await client.confirm(prepared, rrn)).code is RC.APPROVED
    answered = _events(caplog, "request_answered")
    assert [(a["mti"], a["response_code"], a["rrn"]) for a in answered] == [
        ("0100", "00", rrn), ("0220", "00", rrn)]


async def test_decline_lines_carry_the_rrn_where_one_exists(
        env: Env, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="switch.processor"):
        async with await env.client("CAFE0001") as client:
            # A declined 0100 makes no transaction, so there is no RRN to log.
            start = await env.card_balance(1)
            too_much, _ = await client.purchase(start.available + 1, demo.demo_club_pan(1), EXP)
            assert too_much.code is RC.INSUFFICIENT_FUNDS
            # A 0220 after the reversal is declined; its RRN is the one it names.
            response, prepared = await client.purchase(40_000, demo.demo_club_pan(1), EXP)
            rrn = response.message.rrn
            assert rrn is not None
            assert (await client.reverse(prepared, rrn)).code is RC.APPROVED
            assert (await client.confirm(prepared, rrn)).code is RC.INVALID_TRANSACTION
    declined = _events(caplog, "request_declined")
    assert [(d["mti"], d["rrn"]) for d in declined] == [("0100", None), ("0220", rrn)]
    assert declined[0]["pan"] == mask_pan(demo.demo_club_pan(1))
    answered = _events(caplog, "request_answered")
    assert [(a["mti"], a["response_code"], a["rrn"]) for a in answered] == [
        ("0100", "51", None), ("0100", "00", rrn), ("0400", "00", rrn), ("0220", "12", rrn)]
