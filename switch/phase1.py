"""Phase 1 (0100): price, check and reserve; answer with the amounts and an RRN.

Each kind of request is one function from the checked request to its response. A rule that
refuses raises `Declined`; the caller rolls back what this phase wrote and answers the
decline. Every ledger transfer of a transaction carries its RRN as `ref`.
"""

from __future__ import annotations

from dataclasses import replace

from protocol.cardblock import CardData
from protocol.fields import AccountType, AmountType, ProcessingCode, ResponseCode
from protocol.messages import AuthRequest, AuthResponse, response_to
from protocol.values import AmountBlock
from switch import cardcheck, ledger, store
from switch.context import SHAPARAK_CONFIRM_WINDOW, Ctx
from switch.declines import Decline, Declined
from switch.pricing import Quote, quote_purchase, refund_share

PC = ProcessingCode
_REFUND_OF = {PC.REFUND_CLUB: "club_purchase", PC.REFUND_STORE_CREDIT: "credit_purchase",
              PC.REFUND_SHAPARAK: "bank_purchase"}


async def authorize(ctx: Ctx, req: AuthRequest, card: CardData) -> tuple[AuthResponse, int | None]:
    """The response to an 0100 and the id of the transaction it created (None for inquiries)."""
    pc = req.processing_code
    if ctx.terminal.merchant_status != "active":
        raise Declined(Decline.NOT_PERMITTED_TO_TERMINAL, "merchant not active")
    if pc.is_balance_inquiry:
        return await balance_inquiry(ctx, req, card), None
    if req.amount <= 0:
        raise Declined(Decline.INVALID_AMOUNT)
    if pc is PC.PURCHASE_SHAPARAK:
        return await bank_purchase(ctx, req, card)
    if pc is PC.PURCHASE_CLUB:
        return await club_purchase(ctx, req, card)
    if pc is PC.PURCHASE_STORE_CREDIT:
        return await credit_purchase(ctx, req, card)
    if pc is PC.TOP_UP_CLUB:
        return await topup(ctx, req, card)
    assert pc.is_refund, pc
    return await refund(ctx, req, card)


def quote_blocks(q: Quote, *, psp_fee: bool = False, rewards: bool = False
                 ) -> tuple[AmountBlock, ...]:
    none = AccountType.NONE
    blocks = [AmountBlock(none, AmountType.DISCOUNT, q.discount),
              AmountBlock(none, AmountType.PAYABLE, q.payable),
              AmountBlock(none, AmountType.NETWORK_FEE, q.network_fee)]
    if psp_fee:
        blocks.append(AmountBlock(none, AmountType.PSP_FEE, q.shaparak_fee))
    if rewards:
        blocks += [AmountBlock(AccountType.STORE_CREDIT, AmountType.CASHBACK, q.cashback),
                   AmountBlock(AccountType.POINTS, AmountType.POINTS_EARNED, q.points)]
    return tuple(blocks)


def balance_blocks(account_type: AccountType, b: ledger.Balance) -> tuple[AmountBlock, ...]:
    return (AmountBlock(account_type, AmountType.LEDGER_BALANCE, b.ledger),
            AmountBlock(account_type, AmountType.AVAILABLE_BALANCE, b.available))


def _approved(req: AuthRequest, rrn: str, blocks: tuple[AmountBlock, ...],
              code: ResponseCode = ResponseCode.APPROVED) -> AuthResponse:
    return replace(response_to(req, code), rrn=rrn, approval_code=rrn[-6:], amounts=blocks)


async def _new_txn(ctx: Ctx, req: AuthRequest, kind: str, quote: Quote, *,
                   card_id: int | None, pan_hash: bytes, rrn: str,
                   original_txn_id: int | None = None) -> int:
    window = SHAPARAK_CONFIRM_WINDOW if kind == "bank_purchase" else ctx.hold_timeout
    return await store.insert_txn(ctx.conn, store.NewTxn(
        identity=ctx.identity, transmission_f7=req.transmission_time,
        processing_code=req.processing_code.value, kind=kind, amount_rial=req.amount,
        rrn=rrn, merchant_id=ctx.terminal.merchant_id, card_id=card_id, pan_hash=pan_hash,
        hold_expires_at=ctx.now + window, quote=quote, original_txn_id=original_txn_id),
        ctx.now)


async def _hold(ctx: Ctx, code: str, debit: ledger.AccountSpec, credit: ledger.AccountSpec,
                amount: int, rrn: str) -> None:
    debit_id = await ctx.account(debit)
    credit_id = await ctx.account(credit)
    result = await ledger.hold(ctx.conn, debit.unit, code, debit=debit_id, credit=credit_id,
                               amount=amount, timeout_at=ctx.now + ctx.hold_timeout, ref=rrn)
    if result.status is ledger.Status.EXCEEDS_CREDITS:
        raise Declined(Decline.INSUFFICIENT_FUNDS)
    assert result.ok, result


async def _balance(ctx: Ctx, spec: ledger.AccountSpec) -> ledger.Balance:
    return await ledger.balance(ctx.conn, await ctx.account(spec))


async def bank_purchase(ctx: Ctx, req: AuthRequest, card: CardData
                        ) -> tuple[AuthResponse, int]:
    """Price a Shetab purchase before the terminal runs it at the bank: nothing to hold."""
    bank = await cardcheck.bank_card(ctx, card)
    quote = quote_purchase(req.amount, ctx.terminal.fee_plan, ctx.shaparak_rule,
                           ctx.terminal.shaparak_fee_exempt)
    rrn = await store.next_rrn(ctx.conn)
    txn_id = await _new_txn(ctx, req, "bank_purchase", quote, card_id=bank.rewards_card_id,
                            pan_hash=bank.pan_hash, rrn=rrn)
    blocks = quote_blocks(quote, psp_fee=True, rewards=bank.rewards_card_id is not None)
    return _approved(req, rrn, blocks), txn_id


async def club_purchase(ctx: Ctx, req: AuthRequest, card: CardData
                        ) -> tuple[AuthResponse, int]:
    club = await cardcheck.club_card(ctx, card)
    quote = quote_purchase(req.amount, ctx.terminal.fee_plan, None)
    rrn = await store.next_rrn(ctx.conn)
    rial = ledger.card_rial(club.record.card_id)
    await _hold(ctx, "club_purchase", rial, ledger.merchant_payable(ctx.terminal.merchant_id),
                quote.payable, rrn)
    txn_id = await _new_txn(ctx, req, "club_purchase", quote, card_id=club.record.card_id,
                            pan_hash=club.pan_hash, rrn=rrn)
    blocks = quote_blocks(quote) + balance_blocks(AccountType.CLUB_RIAL, await _balance(ctx, rial))
    return _approved(req, rrn, blocks), txn_id


def credit_sources(ctx: Ctx, card_id: int) -> list[tuple[ledger.AccountSpec, ledger.AccountSpec]]:
    """(card credit, issuer) pairs usable at this merchant, in the order they are spent:
    the merchant's own credit first, then its store network's."""
    merchant_id, network_id = ctx.terminal.merchant_id, ctx.terminal.merchant_network_id
    sources = [(ledger.card_credit(card_id, merchant_id=merchant_id),
                ledger.credit_issued(merchant_id=merchant_id))]
    if network_id is not None:
        sources.append((ledger.card_credit(card_id, network_id=network_id),
                        ledger.credit_issued(network_id=network_id)))
    return sources


async def credit_balance(ctx: Ctx, card_id: int) -> ledger.Balance:
    parts = [await _balance(ctx, spec) for spec, _ in credit_sources(ctx, card_id)]
    return ledger.Balance(*(sum(getattr(p, f) for p in parts) for f in (
        "debits_pending", "debits_posted", "credits_pending", "credits_posted")))


async def credit_purchase(ctx: Ctx, req: AuthRequest, card: CardData
                          ) -> tuple[AuthResponse, int]:
    """Spend store credit; with PA=1, approve what the credit covers (response 10)."""
    club = await cardcheck.club_card(ctx, card)
    card_id = club.record.card_id
    available = (await credit_balance(ctx, card_id)).available
    partial_ok = bool(req.additional_data and req.additional_data.partial_approval)
    approved = req.amount if available >= req.amount or not partial_ok else available
    if approved <= 0 or approved > available:
        raise Declined(Decline.INSUFFICIENT_FUNDS)
    quote = quote_purchase(approved, ctx.terminal.fee_plan, None)
    rrn = await store.next_rrn(ctx.conn)
    remaining = quote.payable
    for credit, issuer in credit_sources(ctx, card_id):
        take = min(remaining, (await _balance(ctx, credit)).available)
        if take > 0:
            await _hold(ctx, "credit_purchase", credit, issuer, take, rrn)
            remaining -= take
    assert remaining == 0, "available balance was read under the same locks"
    txn_id = await _new_txn(ctx, req, "credit_purchase", quote, card_id=card_id,
                            pan_hash=club.pan_hash, rrn=rrn)
    blocks = quote_blocks(quote) + balance_blocks(AccountType.STORE_CREDIT,
                                                  await credit_balance(ctx, card_id))
    if approved < req.amount:
        blocks = (AmountBlock(AccountType.STORE_CREDIT, AmountType.APPROVED, approved), *blocks)
        return _approved(req, rrn, blocks, ResponseCode.PARTIAL_APPROVAL), txn_id
    return _approved(req, rrn, blocks), txn_id


async def topup(ctx: Ctx, req: AuthRequest, card: CardData) -> tuple[AuthResponse, int]:
    """The customer pays the merchant; the card is credited on confirm (the merchant then
    owes the network what it collected)."""
    club = await cardcheck.club_card(ctx, card)
    card_id = club.record.card_id
    rrn = await store.next_rrn(ctx.conn)
    rial = ledger.card_rial(card_id)
    await _hold(ctx, "topup", ledger.merchant_payable(ctx.terminal.merchant_id), rial,
                req.amount, rrn)
    quote = Quote(amount=req.amount, discount=0, payable=req.amount, network_fee=0,
                  shaparak_fee=0)
    txn_id = await _new_txn(ctx, req, "topup", quote, card_id=card_id, pan_hash=club.pan_hash,
                            rrn=rrn)
    blocks = balance_blocks(AccountType.CLUB_RIAL, await _balance(ctx, rial))
    return _approved(req, rrn, blocks), txn_id


async def balance_inquiry(ctx: Ctx, req: AuthRequest, card: CardData) -> AuthResponse:
    club = await cardcheck.club_card(ctx, card)
    card_id = club.record.card_id
    pc = req.processing_code
    blocks: tuple[AmountBlock, ...] = ()
    if pc in (PC.BALANCE_INQUIRY, PC.BALANCE_INQUIRY_CLUB):
        blocks += balance_blocks(AccountType.CLUB_RIAL,
                                 await _balance(ctx, ledger.card_rial(card_id)))
    if pc in (PC.BALANCE_INQUIRY, PC.BALANCE_INQUIRY_STORE_CREDIT):
        blocks += balance_blocks(AccountType.STORE_CREDIT, await credit_balance(ctx, card_id))
    if pc is PC.BALANCE_INQUIRY:
        blocks += balance_blocks(AccountType.POINTS,
                                 await _balance(ctx, ledger.card_points(card_id)))
    return replace(response_to(req, ResponseCode.APPROVED), amounts=blocks)


async def refund(ctx: Ctx, req: AuthRequest, card: CardData) -> tuple[AuthResponse, int]:
    """Give back (part of) a confirmed purchase made with the same card at this merchant.
    The amount is reserved against the original now and given back on confirm."""
    original = await _refundable_original(ctx, req)
    if original.kind == "bank_purchase":
        card_hash = (await cardcheck.bank_card(ctx, card)).pan_hash
        card_id = original.card_id
    else:
        club = await cardcheck.club_card(ctx, card)
        card_hash, card_id = club.pan_hash, club.record.card_id
    if card_hash != original.pan_hash:
        raise Declined(Decline.INVALID_TRANSACTION, "not the card of the original purchase")
    rrn = await store.next_rrn(ctx.conn)
    for debit, credit, amount in await refund_legs(ctx, original, req.amount):
        await _hold(ctx, "refund", debit, credit, amount, rrn)
    await store.add_refunded(ctx.conn, original.txn_id, req.amount)
    # The network gives back its fee in proportion; `network_fee` of a refund's quote is
    # that share, posted on confirm.
    fee_back = refund_share(original.quote.network_fee, original.refunded_rial, req.amount,
                            original.quote.payable)
    quote = Quote(amount=req.amount, discount=0, payable=req.amount, network_fee=fee_back,
                  shaparak_fee=0)
    txn_id = await _new_txn(ctx, req, "refund", quote, card_id=card_id, pan_hash=card_hash,
                            rrn=rrn, original_txn_id=original.txn_id)
    return _approved(req, rrn, ()), txn_id


async def _refundable_original(ctx: Ctx, req: AuthRequest) -> store.TxnRecord:
    rrn = req.additional_data.original_rrn if req.additional_data else None
    if rrn is None:
        raise Declined(Decline.INVALID_TRANSACTION, "refund without field 48 tag OR")
    original = await store.txn_by_rrn(ctx.conn, rrn)
    if original is None or original.merchant_id != ctx.terminal.merchant_id:
        raise Declined(Decline.ORIGINAL_NOT_FOUND)
    if original.kind != _REFUND_OF[req.processing_code] or original.state != "CONFIRMED":
        raise Declined(Decline.INVALID_TRANSACTION, "original is not a confirmed purchase")
    if req.amount > original.quote.payable - original.refunded_rial:
        raise Declined(Decline.INVALID_AMOUNT, "more than what is left to refund")
    return original


async def refund_legs(ctx: Ctx, original: store.TxnRecord, amount: int
                      ) -> list[tuple[ledger.AccountSpec, ledger.AccountSpec, int]]:
    """(debit, credit, amount) holds that give `amount` back. Club rials come back from the
    merchant's payable. Store credit goes back to the issuers it came from, filling the
    original's spending order: the refunded range [refunded, refunded + amount) of the
    original is split where each issuer's part ends, so the parts sum to the amount."""
    merchant = ledger.merchant_payable(original.merchant_id)
    if original.kind == "bank_purchase":
        return []  # the money goes back at the bank; only fees are mirrored on confirm
    assert original.card_id is not None
    if original.kind == "club_purchase":
        return [(merchant, ledger.card_rial(original.card_id), amount)]
    legs = []
    start, end, offset = original.refunded_rial, original.refunded_rial + amount, 0
    for account_id, part in await ledger.posted_holds(ctx.conn, original.rrn):
        spec = await _spec_of(ctx, account_id)
        share = max(0, min(end, offset + part) - max(start, offset))
        if share:
            issuer = ledger.credit_issued(merchant_id=spec.merchant_id,
                                          network_id=spec.network_id)
            legs.append((issuer, spec, share))
        offset += part
    return legs


async def _spec_of(ctx: Ctx, account_id: int) -> ledger.AccountSpec:
    row = await ctx.conn.fetchrow(
        "SELECT kind, card_id, merchant_id, network_id FROM ledger_account WHERE id = $1",
        account_id)
    assert row is not None
    return ledger.AccountSpec(ledger.Kind(row["kind"]), row["card_id"], row["merchant_id"],
                              row["network_id"])
