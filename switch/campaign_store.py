"""Campaigns in the database (table `campaign`, migration 0011): store, pause, resume, read.

`store_campaigns` is the one way campaigns get in (the admin CLI and the demo seeding both
use it): it resolves each campaign's network, merchant and terminals to the registry, fills
in their ids, and inserts every campaign or, with `replace`, updates it (a new version).
It checks everything before writing anything; the caller's transaction makes the whole file
land or nothing. A replace must keep a budget true to the reservations that live purchases
hold against it (same unit, no less than used; see `_check_budget`). Refusals raise
`RegistryError`. The database itself bumps versions and
appends `campaign_event` rows (see the migration), so no writer can skip the audit trail.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import asyncpg

from switch.campaign_file import spec_from_stored
from switch.campaign_spec import CampaignSpec
from switch.registry import RegistryError

STATUSES = ("active", "paused")


@dataclass(frozen=True, slots=True)
class StoreOutcome:
    campaign_id: str
    created: bool  # False: replaced
    version: int


async def store_campaigns(conn: asyncpg.Connection, specs: list[CampaignSpec], *,
                          replace: bool = False) -> list[StoreOutcome]:
    resolved = [await _resolve(conn, spec) for spec in specs]
    # Locked in id order, as the request path locks campaign rows, until the caller's
    # transaction ends: no purchase reserves against a budget between the check and the write.
    existing = {r["id"]: r for r in await conn.fetch(
        """SELECT id, budget_used_rial, budget_used_units, ARRAY(
                      SELECT DISTINCT v.budget_unit FROM txn_reservation v
                      JOIN txn x ON x.id = v.txn_id AND x.state <> 'VOIDED'
                      WHERE v.rule_id = k.id AND v.budget) AS live_units
           FROM campaign k WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE""",
        [s.id for s in resolved])}
    if existing and not replace:
        first = next(s.id for s in resolved if s.id in existing)
        raise RegistryError(f"campaign {first!r} already exists "
                            "(--replace stores a new version of it)")
    for spec in resolved:
        if spec.id in existing:
            _check_budget(spec, existing[spec.id])
    return [await _write(conn, spec, spec.id in existing) for spec in resolved]


def _check_budget(spec: CampaignSpec, stored: asyncpg.Record) -> None:
    """A replacing spec's budget must still count what the campaign's live reservations
    hold: in the same unit (a void gives each back in the unit it was reserved in, and a
    budget's remainder adds up one unit), and no less than is used."""
    if spec.budget is None:
        return  # no budget: nothing left to count; live reservations are still given back
    field = f"budget_{spec.limit_unit}"
    other = sorted(set(stored["live_units"]) - {spec.limit_unit})
    if other:
        raise RegistryError(
            f"campaign {spec.id!r}: {field}: its live reservations hold budget_{other[0]}; "
            "a budget's unit cannot change while they do (store a campaign with a new id)")
    used = stored["budget_used_rial" if spec.limit_unit == "rial" else "budget_used_units"]
    if spec.budget < used:
        raise RegistryError(f"campaign {spec.id!r}: {field}: {spec.budget:,} is less than "
                            f"the {used:,} already used")


async def _resolve(conn: asyncpg.Connection, spec: CampaignSpec) -> CampaignSpec:
    """The spec with its network's and merchant's ids; refused if they do not exist or the
    merchant or a terminal is not in the campaign's network (or merchant)."""
    where = f"campaign {spec.id!r}"
    network_id = await conn.fetchval("SELECT id FROM store_network WHERE code = $1",
                                     spec.network)
    if network_id is None:
        raise RegistryError(f"{where}: network: no store network {spec.network!r}")
    merchant_id = None
    if spec.merchant is not None:
        row = await conn.fetchrow("SELECT id, network_id FROM merchant WHERE code = $1",
                                  spec.merchant)
        if row is None:
            raise RegistryError(f"{where}: merchant: no merchant {spec.merchant!r}")
        if row["network_id"] != network_id:
            raise RegistryError(f"{where}: merchant: {spec.merchant!r} is not in network "
                                f"{spec.network!r}")
        merchant_id = row["id"]
    await _check_terminals(conn, spec, where, network_id, merchant_id)
    return spec.model_copy(update={"network_id": network_id, "merchant_id": merchant_id})


async def _check_terminals(conn: asyncpg.Connection, spec: CampaignSpec, where: str,
                           network_id: int, merchant_id: int | None) -> None:
    if not spec.terminals:
        return
    found = {r["tid"]: r for r in await conn.fetch(
        """SELECT t.tid, t.merchant_id, m.network_id FROM terminal t
           JOIN merchant m ON m.id = t.merchant_id WHERE t.tid = ANY($1::text[])""",
        spec.terminals)}
    for tid in spec.terminals:
        row = found.get(tid)
        if row is None:
            raise RegistryError(f"{where}: terminals: no terminal {tid!r}")
        if row["network_id"] != network_id or merchant_id not in (None, row["merchant_id"]):
            raise RegistryError(f"{where}: terminals: {tid!r} is not in the campaign's scope")


async def _write(conn: asyncpg.Connection, spec: CampaignSpec, exists: bool) -> StoreOutcome:
    data = spec.model_dump(mode="json")
    args = (spec.id, spec.network_id, spec.merchant_id, spec.kind, spec.priority,
            json.dumps(data), data.get("budget_rial"))
    if exists:
        version = await conn.fetchval(
            """UPDATE campaign SET network_id = $2, merchant_id = $3, kind = $4, priority = $5,
                      spec = $6::jsonb, budget_rial = $7
               WHERE id = $1 RETURNING version""", *args)
    else:
        try:
            version = await conn.fetchval(
                """INSERT INTO campaign (id, network_id, merchant_id, kind, priority, spec,
                                         budget_rial)
                   VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7) RETURNING version""", *args)
        except asyncpg.UniqueViolationError:  # stored by someone else since we looked
            raise RegistryError(f"campaign {spec.id!r} already exists") from None
    return StoreOutcome(spec.id, not exists, int(version))


async def set_status(conn: asyncpg.Connection, campaign_id: str, status: str) -> int:
    """Pause or resume; refused if the campaign is missing or already in `status`. Returns
    the new version."""
    assert status in STATUSES
    current = await conn.fetchval("SELECT status FROM campaign WHERE id = $1 FOR UPDATE",
                                  campaign_id)
    if current is None:
        raise RegistryError(f"no campaign {campaign_id!r}")
    if current == status:
        raise RegistryError(f"campaign {campaign_id!r} is already {status}")
    version = await conn.fetchval(
        "UPDATE campaign SET status = $2 WHERE id = $1 RETURNING version", campaign_id, status)
    return int(version)


async def fetch_spec(conn: asyncpg.Connection, campaign_id: str) -> CampaignSpec:
    stored = await conn.fetchval("SELECT spec FROM campaign WHERE id = $1", campaign_id)
    if stored is None:
        raise RegistryError(f"no campaign {campaign_id!r}")
    return spec_from_stored(stored)
