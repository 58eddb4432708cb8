"""`loyalty admin quote` and `loyalty admin card history`: pricing seen from the operator's
desk.

`quote` prices a hypothetical purchase exactly as the request path would (the same basis
from the database, the same engine) in a read-only transaction, so it changes nothing.
`card history` lists what a card earned and spent in store credit and points, per
transaction. PANs are taken on the command line, used only through their keyed hash, and
printed masked.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from protocol.cardblock import mask_pan
from protocol.fields import ProcessingCode
from switch import campaign_pricing, jalali, phase1
from switch.campaign_cache import RuleCache
from switch.cli_context import CommandError, Context, table_lines
from switch.config import Settings
from switch.context import shaparak_rule
from switch.pricing import Quote
from switch.rules import Rule

PC = ProcessingCode
_CLUB_CODES = {"club": PC.PURCHASE_CLUB, "credit": PC.PURCHASE_STORE_CREDIT,
               "topup": PC.TOP_UP_CLUB}
_RULES_READ_MAX = 10_000


def _rial(text: str) -> int:
    if not text.isdigit() or int(text) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number of rials")
    return int(text)


def _moment(text: str) -> datetime:
    """ISO 8601; without an offset it is Tehran wall-clock time (the merchant's)."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=campaign_pricing.TEHRAN)


def _pan(text: str) -> str:
    if not (text.isascii() and text.isdigit() and 16 <= len(text) <= 19):
        raise argparse.ArgumentTypeError("a card number is 16 to 19 digits")
    return text


def add_quote(groups: Any) -> None:
    text = "price a hypothetical purchase and print the breakdown (changes nothing)"
    p = groups.add_parser("quote", help=text, description=text[0].upper() + text[1:] + ".")
    p.set_defaults(handler=cmd_quote)
    p.add_argument("--terminal", required=True, help="TID of the terminal")
    card = p.add_mutually_exclusive_group(required=True)
    card.add_argument("--card", type=_pan, help="club card PAN")
    card.add_argument("--bank-pan", type=_pan, help="Shetab card PAN (a bank purchase)")
    p.add_argument("--amount", type=_rial, required=True, help="rials, before discounts")
    p.add_argument("--code", choices=sorted(_CLUB_CODES), default="club",
                   help="with --card: pay from the club rial account (default), with store "
                        "credit, or a top-up")
    p.add_argument("--at", type=_moment, default=None,
                   help="when (ISO 8601; no offset: Tehran time); default now")
    p.add_argument("--categories", nargs="+", default=(), metavar="CODE",
                   help="basket category codes, as field 48 IT sends them")


def add_card_history(card_commands: Any) -> None:
    text = "list the store credit and points a card earned and spent, per transaction"
    p = card_commands.add_parser("history", help=text,
                                 description=text[0].upper() + text[1:] + ".")
    p.set_defaults(handler=cmd_card_history)
    p.add_argument("pan", type=_pan, help="the club card's number (printed masked)")


async def cmd_quote(ctx: Context, args: argparse.Namespace) -> int:
    pan = args.card or args.bank_pan
    code = PC.PURCHASE_SHAPARAK if args.bank_pan else _CLUB_CODES[args.code]
    now = args.at or datetime.now(UTC)
    purchase = Purchase(terminal=args.terminal, pan_hash=ctx.keys().pan_hash(pan),
                        bank_bin=pan[:6] if args.bank_pan else None, code=code,
                        amount=args.amount, now=now, categories=tuple(args.categories))
    async with ctx.connection() as conn:
        found = await price_quote(conn, ctx.settings, purchase)
    if isinstance(found, str):
        raise CommandError(f"no terminal {args.terminal!r}" if found == "no terminal"
                           else f"no club card {mask_pan(pan)}")
    quote, breakdown = found
    local = campaign_pricing.local_time(now)
    print(f"quote at terminal {args.terminal} for card {mask_pan(pan)}, "
          f"{jalali.to_jalali(local.date())} {local:%H:%M} Tehran")
    print("\n".join(quote_lines(quote, breakdown)))
    return 0


@dataclass(frozen=True, slots=True)
class Purchase:
    """A hypothetical purchase to quote."""

    terminal: str
    pan_hash: bytes
    bank_bin: str | None  # a Shetab card's BIN: a bank purchase; None: a club card
    code: ProcessingCode
    amount: int
    now: datetime
    categories: tuple[str, ...] = ()


async def price_quote(conn: asyncpg.Connection, settings: Settings, purchase: Purchase
                      ) -> tuple[Quote, dict[str, Any] | None] | str:
    """Price `purchase` as the request path would, in a read-only transaction: the quote and
    the engine's breakdown (None without campaigns), or "no terminal" / "no card"."""
    async with conn.transaction(readonly=True):
        row = await conn.fetchrow(
            "SELECT * FROM switch_quote_basis($1, $2, $3, $4, $5)", purchase.terminal,
            purchase.pan_hash, purchase.bank_bin is not None, purchase.amount, purchase.now)
        assert row is not None
        if row["basis"] is None:
            return "no terminal"
        if not row["card_found"]:
            return "no card"
        basis = json.loads(row["basis"])
        rules: list[Rule] = []
        if campaign_pricing.has_campaigns(basis):
            rules = await RuleCache(_RULES_READ_MAX).rules(conn, basis["campaigns"])
    shaparak = shaparak_rule(settings)
    if not campaign_pricing.has_campaigns(basis):
        if purchase.code is PC.TOP_UP_CLUB:  # credited whole, as phase 1 does
            return Quote(amount=purchase.amount, discount=0, payable=purchase.amount,
                         network_fee=0, shaparak_fee=0), None
        return phase1.price(phase1.kind_of(purchase.code), basis, shaparak), None
    request = campaign_pricing.Request(code=purchase.code, now=purchase.now,
                                       categories=purchase.categories,
                                       bank_bin=purchase.bank_bin)
    return campaign_pricing.price(basis, rules, request, shaparak,
                                  settings.points_expiry_days)


def quote_lines(quote: Quote, breakdown: dict[str, Any] | None) -> list[str]:
    """The breakdown of a quote as `loyalty admin quote` prints it."""
    grants = [] if breakdown is None else breakdown["grants"]
    lines = [f"amount            {quote.amount:>14,} rial"]
    for g in grants:
        if g["effect"] == "discount":
            lines.append(f"  discount        {-g['amount']:>14,} rial  {g['rule']} "
                         f"({_funder(g)})")
    lines += [f"discount          {-quote.discount:>14,} rial",
              f"payable           {quote.payable:>14,} rial",
              f"network fee       {quote.network_fee:>14,} rial  (merchant pays)",
              f"Shaparak fee      {quote.shaparak_fee:>14,} rial  (merchant pays)"]
    labels = {"cashback": "cashback", "top_up_bonus": "top-up bonus", "points": "points",
              "lottery": "lottery entries"}
    for g in grants:
        if g["effect"] != "discount":
            unit = {"points": "pts", "lottery": ""}.get(g["effect"], "rial")
            expiry = f", expires {_jalali_time(g['expires_at'])}" if g["expires_at"] else ""
            lines.append(f"{labels[g['effect']]:<18}{g['amount']:>14,} {unit:<4}  "
                         f"{g['rule']} ({_funder(g)}{expiry})")
    for s in [] if breakdown is None else breakdown["stamps"]:
        lines.append(f"stamps            {s['stamps']:>10} of {s['every']}  {s['rule']}"
                     + (f", this visit free up to {s['free_rial']:,} rial"
                        if s["free_rial"] else ""))
    fired = [] if breakdown is None else breakdown["fired"]
    lines.append("rules fired       " + (", ".join(fired) if fired else "none"))
    return lines


def _funder(grant: dict[str, Any]) -> str:
    return f"sponsor {grant['sponsor']}" if grant["funder"] == "sponsor" else grant["funder"]


def _jalali_time(iso: str) -> str:
    local = campaign_pricing.local_time(datetime.fromisoformat(iso))
    return f"{jalali.to_jalali(local.date())} {local:%H:%M}"


HISTORY_SQL = """
SELECT t.ref, t.code, a.kind, (-sum(e.amount))::bigint AS delta, min(t.id) AS first,
       coalesce(x.created_at, min(t.created_at)) AS at, m.name AS merchant,
       x.pricing->'fired' AS fired
FROM ledger_entry e
JOIN ledger_transfer t ON t.id = e.transfer_id AND t.kind IN ('single', 'post')
JOIN ledger_account a ON a.id = e.account_id
LEFT JOIN txn x ON x.rrn = t.ref
LEFT JOIN merchant m ON m.id = x.merchant_id
WHERE a.card_id = $1 AND a.kind IN ('card_credit', 'card_points')
GROUP BY coalesce(t.ref, t.id::text), t.ref, t.code, a.kind, x.created_at, m.name, x.pricing
ORDER BY first
"""


async def cmd_card_history(ctx: Context, args: argparse.Namespace) -> int:
    store = ctx.keys()
    async with ctx.connection() as conn, conn.transaction(readonly=True):
        card_id = await conn.fetchval("SELECT id FROM card WHERE pan_hash = $1",
                                      store.pan_hash(args.pan))
        if card_id is None:
            raise CommandError(f"no club card {mask_pan(args.pan)}")
        rows = await conn.fetch(HISTORY_SQL, card_id)
    print(f"history of card {mask_pan(args.pan)}: store credit (rial) and points")
    print("\n".join(history_lines([dict(r) for r in rows])))
    return 0


def history_lines(rows: Sequence[dict[str, Any]]) -> list[str]:
    """One line per transaction and balance kind, oldest first (`card history`), in columns
    as wide as their widest cell, so no merchant, reference or code is ever cut."""
    table = []
    for r in rows:
        credit = r["delta"] if r["kind"] == "card_credit" else 0
        points = r["delta"] if r["kind"] == "card_points" else 0
        fired = ", ".join(json.loads(r["fired"])) if r["fired"] else ""
        at = campaign_pricing.local_time(r["at"]).date()
        table.append((jalali.to_jalali(at), r["merchant"] or "-", r["ref"] or "-", r["code"],
                      f"{credit:+,}", f"{points:+,}", fired))
    lines = table_lines(("date", "merchant", "reference", "what", "credit", "points", "rules"),
                        table, right=frozenset({4, 5}))
    if not table:
        lines.append("(nothing earned or spent yet)")
    return lines
