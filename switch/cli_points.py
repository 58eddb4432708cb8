"""`loyalty admin points-value set/show` and `loyalty admin card redeem-points`: points are
spent as store credit of their issuer (switch/points.py).

Arguments are checked before the database is opened, and each command runs in one
transaction, so a bad argument or a refused redemption exits 2 and stores nothing.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any

from switch import campaign_pricing, jalali, points
from switch.cli_context import Context, print_table


def _positive(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


def _issuer_options(p: Any, required: bool, default: str) -> None:
    issuer = p.add_mutually_exclusive_group(required=required)
    issuer.add_argument("--merchant", metavar="CODE", help="points a merchant funded")
    issuer.add_argument("--network", metavar="CODE",
                        help=f"points a store network funded{default}")


def _issuer(args: argparse.Namespace) -> points.Issuer | None:
    if args.merchant is not None:
        return points.Issuer("merchant", args.merchant)
    return None if args.network is None else points.Issuer("network", args.network)


def add_value_group(groups: Any) -> None:
    text = "what a point of an issuer (merchant or network) is worth in store credit"
    parser = groups.add_parser("points-value", help=text, description=text[0].upper()
                               + text[1:] + " (see docs/pricing.md).")
    sub = parser.add_subparsers(dest="points_value_command", required=True, metavar="ACTION")
    text = "set an issuer's points value, whole rials per point"
    p = sub.add_parser("set", help=text, description=text[0].upper() + text[1:] + ".")
    p.set_defaults(handler=cmd_value_set)
    _issuer_options(p, required=True, default="")
    p.add_argument("--rial-per-point", type=_positive, required=True, metavar="N")
    text = "list every issuer's points value"
    p = sub.add_parser("show", help=text, description=text[0].upper() + text[1:] + ".")
    p.set_defaults(handler=cmd_value_show)


def add_card_redeem(card_commands: Any) -> None:
    text = ("convert part of a card's points into store credit of their issuer, at its "
            "points value")
    p = card_commands.add_parser("redeem-points", help=text,
                                 description=text[0].upper() + text[1:] + ".")
    p.set_defaults(handler=cmd_redeem)
    p.add_argument("--card", type=_positive, required=True, metavar="ID", dest="card_id")
    p.add_argument("--points", type=_positive, required=True, metavar="P")
    _issuer_options(p, required=False, default=" (default: the card's network)")
    p.add_argument("--request-id", metavar="ID",
                   help="makes a retry safe: the same ID redeems once (1 to 64 characters)")


async def cmd_value_set(ctx: Context, args: argparse.Namespace) -> int:
    issuer = _issuer(args)
    assert issuer is not None  # the group is required
    async with ctx.transaction() as conn:
        await points.set_value(conn, issuer, args.rial_per_point,
                               ctx.settings.points_value_max_rial, datetime.now(UTC))
    print(f"a point of {issuer} is worth {args.rial_per_point:,} rial")
    return 0


async def cmd_value_show(ctx: Context, args: argparse.Namespace) -> int:
    async with ctx.transaction() as conn:
        rows = await points.values(conn)
    print_table(("issuer", "code", "rial/point", "set on"),
                [(i.kind, i.code, f"{value:,}", _date(at)) for i, value, at in rows])
    return 0


async def cmd_redeem(ctx: Context, args: argparse.Namespace) -> int:
    now = datetime.now(UTC)
    async with ctx.transaction() as conn:
        done = await points.redeem(conn, args.card_id, args.points, _issuer(args),
                                   request_id=args.request_id, now=now,
                                   max_rial=ctx.settings.points_redeem_max_rial)
        lots = await points.credit_lots(conn, done.redemption_id)
        left = await points.redeemable(conn, args.card_id, done.issuer, now)
    verb = "was already redeemed" if done.repeated else "redeemed"
    print(f"card {args.card_id}: {done.points:,} points of {done.issuer} {verb} for "
          f"{done.rial:,} rial of its store credit ({done.rial_per_point:,} rial a point; "
          f"redemption {done.redemption_id})")
    for rial, expires_at in lots:
        print(f"  {rial:>14,} rial  " + ("never expires" if expires_at is None
                                          else f"expires {_date(expires_at)}"))
    print(f"points of {done.issuer} left to redeem: {left:,}")
    return 0


def _date(at: datetime) -> str:
    local = campaign_pricing.local_time(at)
    return f"{jalali.to_jalali(local.date())} {local:%H:%M}"
