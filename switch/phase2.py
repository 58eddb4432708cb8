"""Phase 2: confirm (0220) and reversal (0400) of a transaction from phase 1, and expiry.

State transitions follow the lifecycle: PENDING → CONFIRMED | VOIDED, CONFIRMED → VOIDED
(a reversal before settlement, by exact compensating entries). What each kind posts on
confirm is in `_post`; a reversal after confirm is the mirror of everything posted under
the transaction's RRN, so it can never drift from what confirm did.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

import asyncpg

from protocol.fields import AccountType, ResponseCode
from protocol.messages import (
    ConfirmAdvice,
    ConfirmResponse,
    ReversalAdvice,
    ReversalResponse,
    response_to,
)
from protocol.values import AmountBlock
from switch import ledger, store
from switch.context import Ctx
from switch.declines import Decline, Declined
from switch.phase1 import balance_blocks, credit_balance, quote_blocks


async def confirm(ctx: Ctx, req: ConfirmAdvice, original: store.Identity
                  ) -> tuple[ConfirmResponse, int]:
    txn = await store.txn_by_rrn(ctx.conn, req.rrn)
    if txn is None or txn.terminal_id != ctx.terminal.terminal_id or \
            (txn.stan, txn.transmitted_at) != (original.stan, original.transmitted_at):
        raise Declined(Decline.ORIGINAL_NOT_FOUND)
    _same_amounts(txn, req.processing_code.value, req.amount)
    if txn.state == "VOIDED":
        raise Declined(Decline.TOO_LATE if txn.void_reason == "expired"
                       else Decline.INVALID_TRANSACTION, "transaction is voided")
    if txn.state == "PENDING":
        if ctx.now >= txn.hold_expires_at:
            await expire(ctx.conn, txn, ctx.now)
            return _confirm_response(req, txn, ResponseCode.TOO_LATE, ()), txn.txn_id
        await _post(ctx, txn)
        await store.set_state(ctx.conn, txn.txn_id, "CONFIRMED", ctx.now)
    blocks = quote_blocks(txn.quote, rewards=txn.card_id is not None) \
        if txn.kind != "refund" else ()
    return _confirm_response(req, txn, ResponseCode.APPROVED,
                             blocks + await _balances(ctx, txn)), txn.txn_id


def _same_amounts(txn: store.TxnRecord, processing_code: str, amount: int) -> None:
    if processing_code != txn.processing_code or amount != txn.amount_rial:
        raise Declined(Decline.INVALID_AMOUNT, "field 3 or 4 differs from the original")


def _confirm_response(req: ConfirmAdvice, txn: store.TxnRecord, code: ResponseCode,
                      blocks: tuple[AmountBlock, ...]) -> ConfirmResponse:
    return replace(response_to(req, code), rrn=txn.rrn, amounts=blocks)


async def _balances(ctx: Ctx, txn: store.TxnRecord) -> tuple[AmountBlock, ...]:
    if txn.card_id is None or txn.kind == "bank_purchase":
        return ()
    if txn.kind == "credit_purchase" or (txn.kind == "refund" and
                                          txn.processing_code == "209200"):
        return balance_blocks(AccountType.STORE_CREDIT, await credit_balance(ctx, txn.card_id))
    rial = await ctx.account(ledger.card_rial(txn.card_id))
    return balance_blocks(AccountType.CLUB_RIAL, await ledger.balance(ctx.conn, rial))


async def _post(ctx: Ctx, txn: store.TxnRecord) -> None:
    """Commit what phase 1 reserved, and charge (or, for a refund, give back) the fee."""
    for hold_id in await ledger.pending_holds(ctx.conn, txn.rrn):
        result = await ledger.post(ctx.conn, hold_id, ctx.now)
        assert result.ok, (txn.rrn, result)
    fee = txn.quote.network_fee
    if fee == 0 or txn.kind == "topup":
        return
    payable = await ctx.account(ledger.merchant_payable(txn.merchant_id))
    network_id = await _network_of(ctx, txn.merchant_id)
    income = await ctx.account(ledger.fee_income(network_id))
    sign = -1 if txn.kind == "refund" else 1  # a refund gives the fee share back
    result = await ledger.transfer(ctx.conn, ledger.Unit.IRR, f"{txn.kind}_fee",
                                   [(payable, sign * fee), (income, -sign * fee)], txn.rrn)
    assert result.ok, result


async def _network_of(ctx: Ctx, merchant_id: int) -> int:
    """Fees go to the merchant's network; a standalone merchant's to network 1, the
    operator (documented in the README)."""
    network_id: int | None = await ctx.conn.fetchval(
        "SELECT coalesce(network_id, (SELECT min(id) FROM store_network)) FROM merchant "
        "WHERE id = $1", merchant_id)
    assert network_id is not None
    return network_id


async def expire(conn: asyncpg.Connection, txn: store.TxnRecord, now: datetime) -> None:
    """The hold timed out: release it (and a refund's reservation); VOIDED for good."""
    for hold_id in await ledger.pending_holds(conn, txn.rrn):
        result = await ledger.expire(conn, hold_id, now)
        assert result.ok, result
    await _release_refund(conn, txn)
    await store.set_state(conn, txn.txn_id, "VOIDED", now, "expired")


async def _release_refund(conn: asyncpg.Connection, txn: store.TxnRecord) -> None:
    if txn.kind == "refund":
        assert txn.original_txn_id is not None
        await store.add_refunded(conn, txn.original_txn_id, -txn.amount_rial)


async def reverse(ctx: Ctx, req: ReversalAdvice, original: store.Identity
                  ) -> tuple[ReversalResponse, int | None]:
    txn = await store.txn_by_identity(ctx.conn, original)
    if txn is None:
        # The original never arrived (or is unknown): acknowledge, and remember it so that
        # the original is declined if it comes later.
        await store.remember_reversal(ctx.conn, original)
        return response_to(req, ResponseCode.APPROVED), None
    _same_amounts(txn, req.processing_code.value, req.amount)
    if txn.state == "PENDING":
        for hold_id in await ledger.pending_holds(ctx.conn, txn.rrn):
            result = await ledger.void(ctx.conn, hold_id, ctx.now)
            assert result.ok, result
    elif txn.state == "CONFIRMED":
        await _compensate(ctx, txn)
    if txn.state != "VOIDED":
        await _release_refund(ctx.conn, txn)
        await store.set_state(ctx.conn, txn.txn_id, "VOIDED", ctx.now, "reversal")
    return replace(response_to(req, ResponseCode.APPROVED), rrn=txn.rrn), txn.txn_id


async def _compensate(ctx: Ctx, txn: store.TxnRecord) -> None:
    if txn.settled:
        raise Declined(Decline.INVALID_TRANSACTION, "already settled: refund instead")
    if txn.refunded_rial > 0:
        raise Declined(Decline.INVALID_TRANSACTION, "partly refunded: refund the rest")
    status = await ledger.mirror(ctx.conn, txn.rrn, "reversal")
    if status is ledger.Status.EXCEEDS_CREDITS:
        raise Declined(Decline.INSUFFICIENT_FUNDS, "the card has spent what must come back")
    assert status is ledger.Status.OK, status
