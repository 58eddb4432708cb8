"""Phase 2: confirm (0220) and reversal (0400) of a transaction from phase 1.

State transitions follow the lifecycle: PENDING → CONFIRMED | VOIDED, CONFIRMED → VOIDED
(a reversal before settlement, by exact compensating entries). They happen in the database
(`switch_confirm`, `switch_reverse` and, for hold expiry, `switch_expire_txn` in
migrations/0007_request_functions.sql): what each kind posts on confirm is in
`switch_post_txn`, and a reversal after confirm is the mirror of everything posted under
the transaction's RRN, so it can never drift from what confirm did. This module names the
original and builds the responses from the outcome.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from protocol.fields import ResponseCode
from protocol.messages import (
    ConfirmAdvice,
    ConfirmResponse,
    ReversalAdvice,
    ReversalResponse,
    response_to,
)
from switch.phase1 import clawback_blocks, quote_blocks, reported_balances
from switch.store import AdviceArgs, Outcome


def advice_args(req: ConfirmAdvice | ReversalAdvice, original_at: datetime | None
                ) -> AdviceArgs:
    """A 0220 names its transaction by RRN and field 90; a 0400 by field 90 (field 37, when
    present, is informative). `original_at` is field 90's field 7 resolved (None when it
    names no real date: answered 30 at its place in the check order)."""
    return AdviceArgs(processing_code=req.processing_code.value, amount=req.amount,
                      rrn=req.rrn if isinstance(req, ConfirmAdvice) else None,
                      original_stan=req.original.stan, original_transmitted_at=original_at)


def confirm_response(req: ConfirmAdvice, o: Outcome) -> ConfirmResponse:
    response = response_to(req, o.response_code)
    if o.response_code is not ResponseCode.APPROVED:
        return response
    assert o.quote is not None
    blocks = (clawback_blocks(o.clawback) if o.kind == "refund"
              else quote_blocks(o.quote, rewards=o.rewards))
    return replace(response, rrn=o.rrn, amounts=blocks + reported_balances(o))


def reversal_response(req: ReversalAdvice, o: Outcome) -> ReversalResponse:
    response = response_to(req, o.response_code)
    if o.rrn is None:  # declined, or the original is unknown (the field 37 echo stays)
        return response
    return replace(response, rrn=o.rrn)
