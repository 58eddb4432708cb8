"""The stacked campaigns of the switch bench, and what they granted in a run.

`seed_campaigns` stores bench/campaigns.toml (its per-merchant campaigns repeated for every
bench merchant) through the same code as `loyalty admin campaign create`, and gives the
bench network a tier policy, so confirms also review tiers. `grant_summary` reads back what
the confirmed purchases were granted and what phase 2 posted, so a campaign run whose rules
never fired shows as such instead of passing for a measurement of campaigns.
"""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from switch import campaign_store
from switch.campaign_file import parse_campaigns

CAMPAIGN_FILE = Path(__file__).with_name("campaigns.toml")
TEMPLATE_MERCHANT = "m0"  # the file's per-merchant campaigns name it, ids end in "-m0"
BASKET = ("5411",)  # field 48 IT on every 0100 of a campaign run: groceries, double points
# Rolling 12-month spend that earns bronze, silver, gold: a bench card is silver after one
# purchase and gold after about ten, so the tier rule fires even in a short, wide run.
TIER_SPEND_RIAL = (0, 10_000, 100_000)
# Ledger codes phase 2 posts grants under (migration 0013): discounts funded by the
# network or a sponsor, store credit, points. A merchant's own discount posts nothing.
POSTED_CODES = ("discount", "cashback", "points")


def campaign_data(merchants: Sequence[str]) -> dict[str, Any]:
    """The campaign file's data with its per-merchant campaigns repeated for `merchants`."""
    data = tomllib.loads(CAMPAIGN_FILE.read_text(encoding="utf-8"))
    campaigns: list[dict[str, Any]] = []
    for item in data["campaign"]:
        if item.get("merchant") != TEMPLATE_MERCHANT:
            campaigns.append(item)
            continue
        stem = item["id"].removesuffix(f"-{TEMPLATE_MERCHANT}")
        campaigns.extend({**item, "id": f"{stem}-{code}", "merchant": code}
                         for code in merchants)
    return {"campaign": campaigns}


async def seed_campaigns(conn: asyncpg.Connection, network: str,
                         merchants: Sequence[str]) -> int:
    """Store the stacked campaigns and the network's tier policy; returns how many campaigns."""
    specs = parse_campaigns(campaign_data(merchants), CAMPAIGN_FILE.name)
    await campaign_store.store_campaigns(conn, specs)
    bronze, silver, gold = TIER_SPEND_RIAL
    await conn.execute(
        """INSERT INTO tier_policy (network_id, bronze_spend_rial, silver_spend_rial,
                                    gold_spend_rial)
           SELECT id, $2, $3, $4 FROM store_network WHERE code = $1""",
        network, bronze, silver, gold)
    return len(specs)


@dataclass(frozen=True)
class GrantSummary:
    campaigns: int  # active campaigns
    confirmed: int  # confirmed purchases
    granted: int  # of which at least one campaign granted something
    by_campaign: list[tuple[str, str, int, int]]  # campaign (merchant suffix cut), effect, n, sum
    posted: dict[str, tuple[int, int]]  # ledger code -> (transfers, sum)
    tiers: dict[str, int]  # card tier -> cards

    @property
    def discount_rial(self) -> int:
        return sum(total for _, effect, _, total in self.by_campaign if effect == "discount")

    def text(self) -> str:
        lines = [f"campaigns: {self.campaigns} active; {self.granted} of {self.confirmed} "
                 f"confirmed purchases granted something; discounts {self.discount_rial:,} "
                 "rial in all"]
        for campaign, effect, count, total in self.by_campaign:
            unit = "points" if effect == "points" else "rial"
            lines.append(f"  {campaign} ({effect}): {count} grants, {total:,} {unit}")
        posted = ", ".join(f"{code} {n} ({total:,})" for code, (n, total) in self.posted.items())
        lines.append(f"  posted in phase 2 (ledger transfers): {posted}")
        tiers = ", ".join(f"{tier} {n}" for tier, n in self.tiers.items())
        lines.append(f"  cards by tier after the run: {tiers}")
        return "\n".join(lines)


async def grant_summary(conn: asyncpg.Connection) -> GrantSummary:
    # Sums are cast to bigint: a numeric arrives as a Decimal, which prints 520000 as 5.2E+5.
    confirmed = "t.state = 'CONFIRMED'"
    rows = await conn.fetch(
        f"""SELECT regexp_replace(g.rule_id, '-m[0-9]+$', '') AS campaign, g.effect,
                   count(*) AS n, sum(g.amount)::bigint AS total
            FROM txn_grant g JOIN txn t ON t.id = g.txn_id WHERE {confirmed}
            GROUP BY 1, 2 ORDER BY 1, 2""")
    counts = await conn.fetchrow(
        f"""SELECT count(*) AS confirmed,
                   count(*) FILTER (WHERE EXISTS (SELECT 1 FROM txn_grant g
                                                  WHERE g.txn_id = t.id)) AS granted
            FROM txn t WHERE {confirmed}""")
    assert counts is not None
    posted = await conn.fetch(
        """SELECT code, count(*) AS n, sum(amount)::bigint AS total FROM ledger_transfer
           WHERE code = ANY($1::text[]) GROUP BY code ORDER BY code""", list(POSTED_CODES))
    tiers = await conn.fetch("SELECT tier, count(*) AS n FROM card GROUP BY tier ORDER BY tier")
    return GrantSummary(
        campaigns=await conn.fetchval("SELECT count(*) FROM campaign WHERE status = 'active'"),
        confirmed=counts["confirmed"], granted=counts["granted"],
        by_campaign=[(r["campaign"], r["effect"], r["n"], r["total"]) for r in rows],
        posted={r["code"]: (r["n"], r["total"]) for r in posted},
        tiers={r["tier"]: r["n"] for r in tiers})
