"""`loyalty admin ...` and `loyalty demo`: the registry, keys and card operations.

Each command runs in one database transaction after validating its arguments, so a bad
argument or a refused operation exits 2 and writes nothing.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

from protocol.cardblock import mask_pan
from protocol.dukpt import derive_initial_key
from simulator import profile
from switch import (
    cli_campaigns,
    cli_points,
    cli_pricing,
    cli_profile,
    cli_tiers,
    demo,
    keys,
    ledger,
    registry,
)
from switch.cli_context import CommandError, Context, whole_number
from switch.cli_context import print_table as _table
from switch.pricing import FeePlan
from switch.registry import MemberProfile


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from None


_rial = whole_number("rials")


def add_commands(commands: Any) -> None:
    seed = commands.add_parser("demo", help="load the demo network, merchants and members",
                               description="Load the demo data (idempotent).")
    seed.set_defaults(handler=cmd_demo)
    admin = commands.add_parser("admin", help="networks, merchants, terminals, keys, members, "
                                "cards, campaigns, tier policies, points values",
                                description="Registry administration.")
    groups = admin.add_subparsers(dest="admin_group", required=True, metavar="OBJECT")
    for add in (_network, _merchant, _bdk, _terminal, _member, _card, _bank_card, _topup,
                cli_campaigns.add_group, cli_tiers.add_group, cli_pricing.add_quote,
                cli_points.add_value_group):
        add(groups)


def _command(group: Any, name: str, handler: Callable[..., Any], text: str) -> Any:
    parser = group.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
    parser.set_defaults(handler=handler)
    return parser


def _subgroup(groups: Any, name: str, text: str) -> Any:
    parser = groups.add_parser(name, help=text, description=text)
    return parser.add_subparsers(dest=f"{name}_command", required=True, metavar="ACTION")


def _network(groups: Any) -> None:
    sub = _subgroup(groups, "network", "Store networks (a club with its card BIN).")
    p = _command(sub, "add", cmd_network_add, "add a store network")
    p.add_argument("code")
    p.add_argument("--name", required=True)
    p.add_argument("--bin", required=True, dest="club_bin", help="six-digit club card BIN")
    _command(sub, "list", cmd_network_list, "list store networks")


def _merchant(groups: Any) -> None:
    sub = _subgroup(groups, "merchant", "Merchants (stores) and their fee plans.")
    p = _command(sub, "add", cmd_merchant_add, "add a merchant")
    p.add_argument("code")
    p.add_argument("--name", required=True)
    p.add_argument("--trade", required=True, help="e.g. cafe, hypermarket, barber")
    p.add_argument("--sheba", required=True, help="settlement account, IR + 24 digits")
    p.add_argument("--network", help="store network code (omit for a standalone store)")
    p.add_argument("--fee-bp", type=int, default=0, help="network fee, basis points")
    p.add_argument("--fee-fixed", type=_rial, default=0, help="network fee, fixed rials")
    p.add_argument("--fee-min", type=_rial, default=0, help="minimum fee, rials")
    p.add_argument("--fee-max", type=_rial, default=None, help="maximum fee, rials")
    p.add_argument("--shaparak-exempt", action="store_true",
                   help="no Shaparak fee (bakeries, supermarkets)")
    _command(sub, "list", cmd_merchant_list, "list merchants")
    p = _command(sub, "set-status", cmd_merchant_status, "suspend, reactivate or close")
    p.add_argument("code")
    p.add_argument("status", choices=("active", "suspended", "closed"))


def _bdk(groups: Any) -> None:
    sub = _subgroup(groups, "bdk", "Base derivation keys (material in the key file only).")
    p = _command(sub, "generate", cmd_bdk_generate, "generate a BDK into the key file")
    p.add_argument("--id", dest="bdk_id", help="8 hex digits (random when omitted)")
    p.add_argument("--label", default="")
    _command(sub, "list", cmd_bdk_list, "list BDK IDs and their status")


def _terminal(groups: Any) -> None:
    sub = _subgroup(groups, "terminal", "POS terminals and their DUKPT initial keys.")
    p = _command(sub, "add", cmd_terminal_add,
                 "add a terminal and print its initial key once, for injection")
    p.add_argument("tid", help="8 characters, 0-9 A-Z")
    p.add_argument("--merchant", required=True)
    p.add_argument("--bdk", required=True, dest="bdk_id")
    p.add_argument("--hold-timeout-s", type=int, default=None)
    p.add_argument("--profile", type=Path, metavar="FILE",
                   help="write a simulator profile (mode 0600) instead of printing the key")
    _switch_option(p)
    p = _command(sub, "profile", cli_profile.cmd_terminal_profile,
                 "write simulator profiles (TID, initial key, current KSN counter; mode 0600)")
    p.add_argument("tids", nargs="+", metavar="TID")
    out = p.add_mutually_exclusive_group(required=True)
    out.add_argument("--out", type=Path, metavar="FILE", help="the profile file (one TID)")
    out.add_argument("--out-dir", type=Path, metavar="DIR", help="DIR/TID.json for each TID")
    _switch_option(p)
    _command(sub, "list", cmd_terminal_list, "list terminals")
    p = _command(sub, "set-status", cmd_terminal_status, "suspend, reactivate or retire")
    p.add_argument("tid")
    p.add_argument("status", choices=("active", "suspended", "retired"))


def _switch_option(p: Any) -> None:
    p.add_argument("--switch", metavar="HOST:PORT",
                   help="the address the profile names (default: listen_host:listen_port)")


def _member(groups: Any) -> None:
    sub = _subgroup(groups, "member", "Club members and their profiles.")
    p = _command(sub, "add", cmd_member_add, "add a member")
    p.add_argument("--network", required=True)
    p.add_argument("--first-name", required=True)
    p.add_argument("--last-name", required=True)
    p.add_argument("--mobile", required=True, help="09xxxxxxxxx")
    p.add_argument("--birth-date", type=_date)
    p.add_argument("--gender", choices=("female", "male", "unspecified"), default="unspecified")
    p.add_argument("--city", default="")
    p.add_argument("--occupation", default="")
    p.add_argument("--tag", action="append", default=[], dest="tags")
    p = _command(sub, "list", cmd_member_list, "list members")
    p.add_argument("--network")


def _card(groups: Any) -> None:
    sub = _subgroup(groups, "card", "Club cards: issue, block, unblock, renew, list, history, "
                    "redeem points.")
    p = _command(sub, "issue", cmd_card_issue, "issue a club card; the PAN is shown once")
    p.add_argument("--member", type=int, required=True, dest="member_id")
    p.add_argument("--expiry", required=True, help="YYMM")
    for name, handler, text in (("block", cmd_card_block, "block a card"),
                                ("unblock", cmd_card_unblock, "unblock a card")):
        p = _command(sub, name, handler, text)
        p.add_argument("card_id", type=int)
    p = _command(sub, "renew", cmd_card_renew, "issue a replacement and block the old card")
    p.add_argument("card_id", type=int)
    p.add_argument("--expiry", required=True, help="YYMM")
    p = _command(sub, "list", cmd_card_list, "list cards with balances")
    p.add_argument("--member", type=int, dest="member_id")
    cli_pricing.add_card_history(sub)
    cli_points.add_card_redeem(sub)


def _bank_card(groups: Any) -> None:
    sub = _subgroup(groups, "bank-card", "Shetab bank cards linked to members.")
    p = _command(sub, "link", cmd_bank_card_link, "link a member's bank card")
    p.add_argument("--member", type=int, required=True, dest="member_id")
    p.add_argument("--pan", required=True)


def _topup(groups: Any) -> None:
    p = groups.add_parser("topup", help="credit a card's rial account (internet top-up)",
                          description="Credit a card's rial account from the settlement "
                                      "account (money received online).")
    p.add_argument("card_id", type=int)
    p.add_argument("amount", type=_rial, help="rials")
    p.add_argument("--ref", help="payment reference")
    p.set_defaults(handler=cmd_topup)


async def cmd_demo(ctx: Context, args: argparse.Namespace) -> int:
    store = ctx.keys(create=True)
    async with ctx.transaction() as conn:
        print(await demo.seed(conn, store, ctx.settings.key_file))
    return 0


async def cmd_network_add(ctx: Context, args: argparse.Namespace) -> int:
    async with ctx.transaction() as conn:
        network_id = await registry.add_network(conn, args.code, args.name, args.club_bin)
    print(f"network {args.code} added (id {network_id})")
    return 0


async def cmd_network_list(ctx: Context, args: argparse.Namespace) -> int:
    async with ctx.transaction() as conn:
        rows = await conn.fetch(
            "SELECT code, club_bin, status, name FROM store_network ORDER BY id")
    _table(("code", "bin", "status", "name"), [tuple(r) for r in rows])
    return 0


async def cmd_merchant_add(ctx: Context, args: argparse.Namespace) -> int:
    fees = FeePlan(bp=args.fee_bp, fixed_rial=args.fee_fixed, min_rial=args.fee_min,
                   max_rial=args.fee_max)
    async with ctx.transaction() as conn:
        merchant_id = await registry.add_merchant(
            conn, code=args.code, name=args.name, trade=args.trade, sheba=args.sheba,
            network=args.network, fees=fees, shaparak_fee_exempt=args.shaparak_exempt)
    print(f"merchant {args.code} added (id {merchant_id})")
    return 0


async def cmd_merchant_list(ctx: Context, args: argparse.Namespace) -> int:
    async with ctx.transaction() as conn:
        rows = await conn.fetch(
            """SELECT m.code, coalesce(n.code, '-'), m.trade, m.status, m.fee_bp,
                      m.fee_fixed_rial, m.fee_min_rial, coalesce(m.fee_max_rial::text, '-'),
                      m.sheba, m.name
               FROM merchant m LEFT JOIN store_network n ON n.id = m.network_id ORDER BY m.id""")
    _table(("code", "network", "trade", "status", "fee_bp", "fixed", "min", "max", "sheba",
            "name"), [tuple(r) for r in rows])
    return 0


async def cmd_merchant_status(ctx: Context, args: argparse.Namespace) -> int:
    async with ctx.transaction() as conn:
        await registry.set_status(conn, "merchant", "code", args.code, args.status,
                                  ("active", "suspended", "closed"))
    print(f"merchant {args.code} is {args.status}")
    return 0


async def cmd_bdk_generate(ctx: Context, args: argparse.Namespace) -> int:
    if args.bdk_id is not None and not _is_hex8(args.bdk_id):
        raise CommandError(f"BDK ID {args.bdk_id!r}: 8 upper-case hex digits")
    async with ctx.transaction() as conn:
        if args.bdk_id and await conn.fetchval("SELECT 1 FROM bdk WHERE id = $1", args.bdk_id):
            raise CommandError(f"BDK {args.bdk_id} is already registered")
        bdk_id = keys.add_bdk(ctx.settings.key_file, args.bdk_id)
        await registry.register_bdk(conn, bdk_id, args.label)
    print(f"BDK {bdk_id} generated into {ctx.settings.key_file}")
    return 0


def _is_hex8(text: str) -> bool:
    return len(text) == 8 and all(c in "0123456789ABCDEF" for c in text)


async def cmd_bdk_list(ctx: Context, args: argparse.Namespace) -> int:
    store = ctx.keys(create=True)
    async with ctx.transaction() as conn:
        rows = await conn.fetch("SELECT id, status, label FROM bdk ORDER BY created_at")
    _table(("bdk_id", "status", "in key file", "label"),
           [(r["id"], r["status"], "yes" if r["id"] in store.bdks else "NO", r["label"])
            for r in rows])
    return 0


async def cmd_terminal_add(ctx: Context, args: argparse.Namespace) -> int:
    address = cli_profile.switch_address(ctx, args)
    if args.profile is not None:
        cli_profile.check_target(args.profile, new=True)
    store = ctx.keys()
    bdk = store.bdk(args.bdk_id)
    async with ctx.transaction() as conn:
        new = await registry.add_terminal(conn, tid=args.tid, merchant=args.merchant,
                                          bdk_id=args.bdk_id, hold_timeout_s=args.hold_timeout_s)
    initial_key = derive_initial_key(bdk, bytes.fromhex(new.initial_key_id))
    print(f"terminal {new.tid} added")
    print(f"initial key ID: {new.initial_key_id}")
    if args.profile is not None:
        host, port = address
        profile.save(args.profile, profile.Profile(new.tid, bytes.fromhex(new.initial_key_id),
                                                   initial_key, host, port))
        print(f"initial key written to the profile {args.profile} (mode 0600)")
        return 0
    print(f"initial key:    {initial_key.hex().upper()}   (shown once: inject it now)")
    return 0


async def cmd_terminal_list(ctx: Context, args: argparse.Namespace) -> int:
    async with ctx.transaction() as conn:
        rows = await conn.fetch(
            """SELECT t.tid, m.code, t.status, t.bdk_id || t.derivation_id,
                      coalesce(t.hold_timeout_s::text, 'default'), t.ksn_counter_max
               FROM terminal t JOIN merchant m ON m.id = t.merchant_id ORDER BY t.id""")
    _table(("tid", "merchant", "status", "initial key id", "hold timeout", "ksn counter"),
           [tuple(r) for r in rows])
    return 0


async def cmd_terminal_status(ctx: Context, args: argparse.Namespace) -> int:
    async with ctx.transaction() as conn:
        await registry.set_status(conn, "terminal", "tid", args.tid, args.status,
                                  ("active", "suspended", "retired"))
    print(f"terminal {args.tid} is {args.status}")
    return 0


async def cmd_member_add(ctx: Context, args: argparse.Namespace) -> int:
    profile = MemberProfile(
        first_name=args.first_name, last_name=args.last_name, mobile=args.mobile,
        birth_date=args.birth_date, gender=args.gender, city=args.city,
        occupation=args.occupation, tags=tuple(args.tags))
    async with ctx.transaction() as conn:
        member_id = await registry.add_member(conn, args.network, profile)
    print(f"member {member_id} added")
    return 0


async def cmd_member_list(ctx: Context, args: argparse.Namespace) -> int:
    async with ctx.transaction() as conn:
        rows = await conn.fetch(
            """SELECT m.id, n.code, m.first_name || ' ' || m.last_name, m.mobile,
                      coalesce(m.birth_date::text, '-'), m.city, array_to_string(m.tags, ',')
               FROM member m JOIN store_network n ON n.id = m.network_id
               WHERE $1::text IS NULL OR n.code = $1 ORDER BY m.id""", args.network)
    _table(("id", "network", "name", "mobile", "birth date", "city", "tags"),
           [tuple(r) for r in rows])
    return 0


async def cmd_card_issue(ctx: Context, args: argparse.Namespace) -> int:
    store = ctx.keys(create=True)
    async with ctx.transaction() as conn:
        card = await registry.issue_card(conn, store, member_id=args.member_id,
                                         expiry=args.expiry)
    print(f"card {card.card_id} issued, expiry {card.expiry}")
    print(f"PAN: {card.pan}   (shown once: print it on the card now)")
    return 0


async def cmd_card_block(ctx: Context, args: argparse.Namespace) -> int:
    return await _card_status(ctx, args.card_id, "blocked", from_status="active")


async def cmd_card_unblock(ctx: Context, args: argparse.Namespace) -> int:
    return await _card_status(ctx, args.card_id, "active", from_status="blocked")


async def _card_status(ctx: Context, card_id: int, status: str, from_status: str) -> int:
    async with ctx.transaction() as conn:
        current = await conn.fetchval("SELECT status FROM card WHERE id = $1", card_id)
        if current is None:
            raise CommandError(f"no card with id {card_id}")
        if current != from_status:
            raise CommandError(f"card {card_id} is {current}, not {from_status}")
        await conn.execute("UPDATE card SET status = $1 WHERE id = $2", status, card_id)
    print(f"card {card_id} is {status}")
    return 0


async def cmd_card_renew(ctx: Context, args: argparse.Namespace) -> int:
    store = ctx.keys(create=True)
    async with ctx.transaction() as conn:
        card = await registry.renew_card(conn, store, args.card_id, args.expiry)
    print(f"card {card.card_id} issued to replace card {args.card_id} (now blocked)")
    print(f"PAN: {card.pan}   (shown once: print it on the card now)")
    return 0


async def cmd_card_list(ctx: Context, args: argparse.Namespace) -> int:
    async with ctx.transaction() as conn:
        rows = await conn.fetch(
            """SELECT c.id, c.member_id, c.pan_bin, c.pan_last4, c.expiry, c.status, c.tier,
                      a.credits_posted - a.debits_posted AS ledger,
                      a.credits_posted - a.debits_posted - a.debits_pending AS available
               FROM card c LEFT JOIN ledger_account a ON a.card_id = c.id AND a.kind = $2
               WHERE $1::bigint IS NULL OR c.member_id = $1 ORDER BY c.id""",
            args.member_id, ledger.Kind.CARD_RIAL.value)
    _table(("card", "member", "pan", "expiry", "status", "tier", "rial ledger", "available"),
           [(r["id"], r["member_id"], mask_pan(r["pan_bin"] + "000000" + r["pan_last4"]),
             r["expiry"], r["status"], r["tier"], r["ledger"] or 0, r["available"] or 0)
            for r in rows])
    return 0


async def cmd_bank_card_link(ctx: Context, args: argparse.Namespace) -> int:
    store = ctx.keys(create=True)
    async with ctx.transaction() as conn:
        bank_card_id = await registry.link_bank_card(conn, store, args.member_id, args.pan)
    print(f"bank card {mask_pan(args.pan)} linked to member {args.member_id} "
          f"(id {bank_card_id})")
    return 0


async def cmd_topup(ctx: Context, args: argparse.Namespace) -> int:
    async with ctx.transaction() as conn:
        transfer_id = await registry.credit_card_online(conn, args.card_id, args.amount, args.ref)
        account = await ledger.account_id(conn, ledger.card_rial(args.card_id))
        after = await ledger.balance(conn, account)
    print(f"card {args.card_id} credited {args.amount:,} rial (transfer {transfer_id}); "
          f"available {after.available:,} rial")
    return 0

