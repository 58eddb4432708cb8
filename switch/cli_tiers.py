"""`loyalty admin tier-policy ...`: set, show and clear a store network's tier policy.

The thresholds are validated whole (switch/tiers.py `TierPolicy`) before the database is
opened; the policy is then stored in one transaction, so a bad argument or an unknown
network exits 2 and stores nothing. Tiers move on the next review (a confirmed purchase or
the sweeper), never when the policy is set (docs/pricing.md, Tiers).
"""

from __future__ import annotations

import argparse
from typing import Any

from switch import registry
from switch.cli_context import CommandError, Context, table_lines, whole_number
from switch.tiers import Threshold, TierPolicy, TierPolicyError

_TIERS = ("bronze", "silver", "gold")
_rial = whole_number("rials")
_points = whole_number("points")


def add_group(groups: Any) -> None:
    parser = groups.add_parser(
        "tier-policy", help="a network's bronze, silver and gold thresholds",
        description="Tier policies: the rolling 12-month spend, or points, that earn each "
                    "tier (see docs/pricing.md).")
    sub = parser.add_subparsers(dest="tier_policy_command", required=True, metavar="ACTION")
    p = _command(sub, "set", cmd_set, "set (or replace) a network's tier policy")
    _network_option(p)
    for tier in _TIERS:
        p.add_argument(f"--{tier}-spend", type=_rial, required=True, metavar="RIAL",
                       help=f"rolling 12-month spend that earns {tier}")
    for tier in _TIERS:
        p.add_argument(f"--{tier}-points", type=_points, metavar="N",
                       help=f"points that earn {tier} instead (omit: by spend only)")
    _network_option(_command(sub, "show", cmd_show, "print a network's tier policy"))
    _network_option(_command(sub, "clear", cmd_clear,
                             "remove a network's tier policy (tiers then stay as they are)"))


def _command(sub: Any, name: str, handler: Any, text: str) -> Any:
    parser = sub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
    parser.set_defaults(handler=handler)
    return parser


def _network_option(parser: Any) -> None:
    parser.add_argument("--network", required=True, metavar="CODE", help="store network code")


def _policy_from(args: argparse.Namespace) -> TierPolicy:
    """The policy the arguments give; a refused threshold names its option."""
    bronze, silver, gold = (Threshold(getattr(args, f"{tier}_spend"),
                                      getattr(args, f"{tier}_points")) for tier in _TIERS)
    try:
        return TierPolicy(bronze=bronze, silver=silver, gold=gold)
    except TierPolicyError as exc:
        raise CommandError(f"--{exc.tier.name.lower()}-{exc.measure}: {exc.problem}") from None


async def cmd_set(ctx: Context, args: argparse.Namespace) -> int:
    policy = _policy_from(args)
    async with ctx.transaction() as conn:
        created = await registry.set_tier_policy(conn, args.network, policy)
    print(f"tier policy of network {args.network} {'set' if created else 'replaced'}")
    _print_policy((policy.bronze, policy.silver, policy.gold))
    return 0


async def cmd_show(ctx: Context, args: argparse.Namespace) -> int:
    async with ctx.transaction() as conn:
        thresholds = await registry.tier_thresholds(conn, args.network)
    if thresholds is None:
        print(f"network {args.network} has no tier policy: its tiers stay as they are")
        return 0
    print(f"tier policy of network {args.network} (rolling 12 months; either column earns "
          "the tier)")
    _print_policy(thresholds)
    return 0


async def cmd_clear(ctx: Context, args: argparse.Namespace) -> int:
    async with ctx.transaction() as conn:
        await registry.clear_tier_policy(conn, args.network)
    print(f"tier policy of network {args.network} cleared: its tiers stay as they are")
    return 0


def _print_policy(thresholds: tuple[Threshold, Threshold, Threshold]) -> None:
    print("\n".join(table_lines(
        ("tier", "spend (rial)", "points"),
        [(tier, f"{t.spend_rial:,}", "-" if t.points is None else f"{t.points:,}")
         for tier, t in zip(_TIERS, thresholds, strict=True)], right=frozenset({1, 2}))))
