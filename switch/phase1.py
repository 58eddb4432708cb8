"""Phase 1 (0100): what the database needs to price, check and reserve, and the 0110.

The checks and ledger work happen in the database, in one call (`switch_authorize` in
migrations/0007_request_functions.sql); this module prices the request (pure functions of
switch/pricing.py, on a basis the database confirms) and builds the response from the
outcome, so that a stored outcome always rebuilds the same response.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from datetime import datetime
from typing import Any

from protocol.fields import AccountType, AmountType, ProcessingCode, ResponseCode, Sign
from protocol.messages import AuthRequest, AuthResponse, response_to
from protocol.values import AmountBlock
from switch import campaign_pricing, ledger
from switch.context import SHAPARAK_CONFIRM_WINDOW
from switch.pricing import FeePlan, Quote, ShaparakFeeRule, quote_purchase, refund_share
from switch.rules import Rule
from switch.store import AuthArgs, Clawback, Outcome

PC = ProcessingCode
_KIND = {PC.PURCHASE_SHAPARAK: "bank_purchase", PC.PURCHASE_CLUB: "club_purchase",
         PC.PURCHASE_STORE_CREDIT: "credit_purchase", PC.TOP_UP_CLUB: "topup",
         PC.REFUND_CLUB: "refund", PC.REFUND_STORE_CREDIT: "refund",
         PC.REFUND_SHAPARAK: "refund", PC.BALANCE_INQUIRY: "inquiry",
         PC.BALANCE_INQUIRY_CLUB: "inquiry", PC.BALANCE_INQUIRY_STORE_CREDIT: "inquiry"}
_REFUND_OF = {PC.REFUND_CLUB: "club_purchase", PC.REFUND_STORE_CREDIT: "credit_purchase",
              PC.REFUND_SHAPARAK: "bank_purchase"}
# Purchases are priced on the merchant's fee plan; the switch remembers the last one it
# was told per device and the database confirms it (see `auth_args`).
PURCHASES = frozenset({"bank_purchase", "club_purchase", "credit_purchase"})
FEE_PLAN_KEYS = ("fee_bp", "fee_fixed_rial", "fee_min_rial", "fee_max_rial",
                 "shaparak_fee_exempt")


def kind_of(pc: ProcessingCode) -> str:
    return _KIND[pc]


def price(kind: str, basis: Mapping[str, Any], shaparak: ShaparakFeeRule) -> Quote:
    """The quote for a request of `kind` priced on `basis` (as the database states it)."""
    amount = basis["amount"]
    if kind == "refund":
        # The network gives back its fee in proportion (floor; the last refund takes the
        # remainder). This is the 0110's provisional share: the confirm reckons the share
        # again against the refunds standing then (migration 0021) and posts that.
        fee_back = refund_share(basis["original_fee"], basis["refunded"], amount,
                                basis["original_payable"])
        return Quote(amount=amount, discount=0, payable=amount, network_fee=fee_back,
                     shaparak_fee=0)
    plan = FeePlan(basis["fee_bp"], basis["fee_fixed_rial"], basis["fee_min_rial"],
                   basis["fee_max_rial"])
    if kind == "bank_purchase":
        return quote_purchase(amount, plan, shaparak, basis["shaparak_fee_exempt"])
    return quote_purchase(amount, plan, None)


@dataclass(frozen=True, slots=True)
class Campaigns:
    """What pricing with campaigns needs beyond the basis: the rules the basis names (parsed,
    from the processor's cache), the switch's clock and how long points last."""

    rules: Sequence[Rule]
    now: datetime
    points_expiry_days: int


def auth_args(req: AuthRequest, shaparak: ShaparakFeeRule, fee_plan: Mapping[str, Any] | None,
              basis: Mapping[str, Any] | None = None, campaigns: Campaigns | None = None,
              bank_bin: str | None = None) -> AuthArgs:
    """The 0100's arguments, priced on `basis` if given, else on a guess: a purchase of the
    whole amount on the device's last known `fee_plan`. Without a guess the database
    answers with the basis (store.PriceAgain) and the caller prices again. A basis that
    names campaigns is priced by the engine with `campaigns` (required then)."""
    pc = req.processing_code
    kind = kind_of(pc)
    data = req.additional_data
    if basis is None and kind in PURCHASES and fee_plan is not None:
        basis = {**fee_plan, "amount": req.amount}
    quote: Quote | None = None
    breakdown: dict[str, Any] | None = None
    if basis is not None and campaign_pricing.has_campaigns(basis):
        assert campaigns is not None, "a basis with campaigns is priced with their rules"
        request = campaign_pricing.Request(
            code=pc, now=campaigns.now, bank_bin=bank_bin,
            categories=(data.item_categories or ()) if data else ())
        quote, breakdown = campaign_pricing.price(basis, campaigns.rules, request, shaparak,
                                                  campaigns.points_expiry_days)
    elif kind == "topup":  # the whole amount is credited; nothing to price on
        quote = Quote(amount=req.amount, discount=0, payable=req.amount, network_fee=0,
                      shaparak_fee=0)
    elif basis is not None:
        quote = price(kind, basis, shaparak)
    return AuthArgs(
        kind=kind, processing_code=pc.value, amount=req.amount,
        partial_ok=bool(data and data.partial_approval),
        original_rrn=data.original_rrn if data else None, refund_of=_REFUND_OF.get(pc),
        bank_window=SHAPARAK_CONFIRM_WINDOW,
        basis=None if basis is None else json.dumps(basis),
        quote=None if quote is None else _quote_json(quote),
        pricing=None if breakdown is None else json.dumps(breakdown))


_QUOTE_FIELDS = tuple(f.name for f in fields(Quote))


def _quote_json(q: Quote) -> str:
    """Quote.to_json as JSON text, without dataclasses.asdict's deep copy (10 us a call)."""
    return json.dumps({name: getattr(q, name) for name in _QUOTE_FIELDS})


# The 0110, built from the request and the outcome alone.

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


def clawback_blocks(c: Clawback | None) -> tuple[AmountBlock, ...]:
    """A refund's 94 and 95 with sign D: the store credit and points it takes back of what
    its purchase earned (none when the purchase earned neither)."""
    if c is None:
        return ()
    return (AmountBlock(AccountType.STORE_CREDIT, AmountType.CASHBACK, c.credit, Sign.DEBIT),
            AmountBlock(AccountType.POINTS, AmountType.POINTS_EARNED, c.points, Sign.DEBIT))


def _earns(q: Quote) -> bool:
    """Whether a club purchase's 0110 shows the cashback and points blocks: when it earns
    any (a campaign granted them); a purchase without campaigns keeps its 0110 as before."""
    return q.cashback > 0 or q.points > 0


def balance_blocks(account_type: AccountType, b: ledger.Balance) -> tuple[AmountBlock, ...]:
    return (AmountBlock(account_type, AmountType.LEDGER_BALANCE, b.ledger),
            AmountBlock(account_type, AmountType.AVAILABLE_BALANCE, b.available))


# Which balance the database reported for which account type of field 54.
BALANCE_ACCOUNTS = (("rial", AccountType.CLUB_RIAL), ("credit", AccountType.STORE_CREDIT),
                    ("points", AccountType.POINTS))


def reported_balances(o: Outcome, names: tuple[str, ...] = ("rial", "credit", "points")
                      ) -> tuple[AmountBlock, ...]:
    blocks: tuple[AmountBlock, ...] = ()
    for name, account_type in BALANCE_ACCOUNTS:
        if name in names and name in o.balances:
            blocks += balance_blocks(account_type, o.balances[name])
    return blocks


_INQUIRY_SHOWS = {PC.BALANCE_INQUIRY: ("rial", "credit", "points"),
                  PC.BALANCE_INQUIRY_CLUB: ("rial",),
                  PC.BALANCE_INQUIRY_STORE_CREDIT: ("credit",)}


def respond(req: AuthRequest, o: Outcome) -> AuthResponse:
    response = response_to(req, o.response_code)
    if o.response_code not in (ResponseCode.APPROVED, ResponseCode.PARTIAL_APPROVAL):
        return response
    if req.processing_code.is_balance_inquiry:
        return replace(response, amounts=reported_balances(
            o, _INQUIRY_SHOWS[req.processing_code]))
    assert o.rrn is not None
    return replace(response, rrn=o.rrn, approval_code=o.rrn[-6:], amounts=_approved_blocks(o))


def _approved_blocks(o: Outcome) -> tuple[AmountBlock, ...]:
    if o.kind == "bank_purchase":
        assert o.quote is not None
        return quote_blocks(o.quote, psp_fee=True, rewards=o.rewards)
    blocks: tuple[AmountBlock, ...] = ()
    if o.approved is not None:  # a partial approval names what it approved
        blocks += (AmountBlock(AccountType.STORE_CREDIT, AmountType.APPROVED, o.approved),)
    if o.quote is not None and o.kind in ("club_purchase", "credit_purchase"):
        blocks += quote_blocks(o.quote, rewards=_earns(o.quote))
    elif o.quote is not None and o.kind == "topup" and o.quote.cashback:
        blocks += (AmountBlock(AccountType.STORE_CREDIT, AmountType.CASHBACK,
                               o.quote.cashback),)
    elif o.kind == "refund":
        blocks += clawback_blocks(o.clawback)
    return blocks + reported_balances(o)
