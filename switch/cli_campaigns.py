"""`loyalty admin campaign ...`: create campaigns from a file, list, show, pause, resume.

A file is validated whole before the database is opened, and stored in one transaction, so
a bad file or a refused campaign exits 2 and stores nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from switch import campaign_store
from switch.campaign_file import CampaignFileError, dump_spec, load_campaigns
from switch.cli_context import CommandError, Context, print_table


def add_group(groups: Any) -> None:
    parser = groups.add_parser("campaign", help="pricing campaigns: discounts, cashback, "
                               "points, stamps", description="Campaigns (see docs/campaigns.md).")
    sub = parser.add_subparsers(dest="campaign_command", required=True, metavar="ACTION")
    p = _command(sub, "create", cmd_create, "validate a TOML or JSON campaign file and store "
                 "all of its campaigns, or none")
    p.add_argument("file", type=Path)
    p.add_argument("--replace", action="store_true",
                   help="store a new version of campaigns that already exist")
    p = _command(sub, "list", cmd_list, "list campaigns with status and budget")
    p.add_argument("--merchant", help="only this merchant's campaigns (and network-wide ones)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p = _command(sub, "show", cmd_show, "print a stored campaign as a campaign file")
    p.add_argument("campaign_id")
    p.add_argument("--format", choices=("toml", "json"), default="toml")
    for name, handler in (("pause", cmd_pause), ("resume", cmd_resume)):
        p = _command(sub, name, handler, f"{name} a campaign")
        p.add_argument("campaign_id")


def _command(sub: Any, name: str, handler: Any, text: str) -> Any:
    parser = sub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
    parser.set_defaults(handler=handler)
    return parser


async def cmd_create(ctx: Context, args: argparse.Namespace) -> int:
    try:
        specs = load_campaigns(args.file)
    except CampaignFileError as exc:
        raise CommandError(str(exc)) from None
    async with ctx.transaction() as conn:
        outcomes = await campaign_store.store_campaigns(conn, specs, replace=args.replace)
    for outcome in outcomes:
        verb = "created" if outcome.created else "replaced"
        print(f"campaign {outcome.campaign_id} {verb} (version {outcome.version})")
    return 0


async def cmd_list(ctx: Context, args: argparse.Namespace) -> int:
    async with ctx.transaction() as conn:
        if args.merchant is not None and not await conn.fetchval(
                "SELECT 1 FROM merchant WHERE code = $1", args.merchant):
            raise CommandError(f"no merchant {args.merchant!r}")
        rows = await conn.fetch(
            """SELECT c.id, c.kind, n.code AS network, m.code AS merchant, c.status,
                      c.budget_used_rial, c.budget_rial, c.budget_used_units, c.priority,
                      c.version,
                      coalesce(c.spec ->> 'budget_points', c.spec ->> 'budget_entries')
                          AS budget_count
               FROM campaign c JOIN store_network n ON n.id = c.network_id
               LEFT JOIN merchant m ON m.id = c.merchant_id
               WHERE $1::text IS NULL OR m.code = $1 OR (c.merchant_id IS NULL AND
                     c.network_id = (SELECT network_id FROM merchant WHERE code = $1))
               ORDER BY c.priority DESC, c.id""", args.merchant)
    if args.json:
        for row in rows:
            print(json.dumps({k: v for k, v in row.items() if k != "budget_count"},
                             ensure_ascii=False))
        return 0
    print_table(("id", "kind", "scope", "status", "budget used/total", "priority", "version"),
           [(r["id"], r["kind"], f"{r['network']}/{r['merchant'] or '*'}", r["status"],
             _budget(r),
             r["priority"], r["version"]) for r in rows])
    return 0


async def cmd_show(ctx: Context, args: argparse.Namespace) -> int:
    async with ctx.transaction() as conn:
        spec = await campaign_store.fetch_spec(conn, args.campaign_id)
        status = await conn.fetchval("SELECT status FROM campaign WHERE id = $1",
                                     args.campaign_id)
    if args.format == "toml":  # JSON has no comments: `list --json` gives the status
        print(f"# status: {status}")
    print(dump_spec(spec, args.format), end="")
    return 0


async def cmd_pause(ctx: Context, args: argparse.Namespace) -> int:
    return await _set_status(ctx, args.campaign_id, "paused")


async def cmd_resume(ctx: Context, args: argparse.Namespace) -> int:
    return await _set_status(ctx, args.campaign_id, "active")


async def _set_status(ctx: Context, campaign_id: str, status: str) -> int:
    async with ctx.transaction() as conn:
        version = await campaign_store.set_status(conn, campaign_id, status)
    print(f"campaign {campaign_id} is {status} (version {version})")
    return 0



def _budget(row: Any) -> str:
    """Used/total, in rials, or in points or entries for a budget the spec gives in them."""
    if row["budget_count"] is not None:
        unit = "points" if row["kind"] == "points" else "entries"
        return f"{row['budget_used_units']:,}/{int(row['budget_count']):,} {unit}"
    total = "-" if row["budget_rial"] is None else f"{row['budget_rial']:,}"
    return f"{row['budget_used_rial']:,}/{total}"
