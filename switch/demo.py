"""Demo data: one store network with a café, a hypermarket and a barber, their terminals,
a hundred members with cards and balances, the campaigns of switch/demo_campaigns/ and a
tier policy.

Everything is deterministic, so the simulator can recompute the demo cards' PANs from
their index (`demo_club_pan`) instead of anyone storing them. Seeding twice changes nothing.
"""

from __future__ import annotations

import random
from datetime import UTC, date, datetime
from importlib import resources
from pathlib import Path

import asyncpg

from switch import campaign_store, cards, keys, ledger, points, registry
from switch.campaign_file import load_campaigns
from switch.campaign_spec import CampaignSpec
from switch.keys import KeyStore
from switch.pricing import FeePlan
from switch.registry import MemberProfile
from switch.tiers import Threshold, TierPolicy

NETWORK_CODE = "demo"
CLUB_BIN = "990100"
BANK_BIN = "603799"  # a Shetab BIN (Melli), for linked bank cards
MEMBERS = 100
CARD_EXPIRY = "3012"

MERCHANTS: tuple[tuple[str, str, str, str, FeePlan, bool], ...] = (
    # code, name, trade, 22-digit account, fee plan, Shaparak-fee exempt
    ("cafe-lale", "Café Laleh", "cafe", "0120000000001234567001",
     FeePlan(bp=150, min_rial=1_000, max_rial=50_000), False),
    ("hyper-setareh", "Setareh Hypermarket", "hypermarket", "0170000000007654321002",
     FeePlan(bp=80, fixed_rial=500, max_rial=200_000), True),
    ("barber-sadaf", "Sadaf Barbershop", "barber", "0550000000001112223003",
     FeePlan(bp=200, min_rial=2_000), False),
)
TERMINALS = {"cafe-lale": "CAFE", "hyper-setareh": "HYPR", "barber-sadaf": "BARB"}
TERMINALS_PER_MERCHANT = 2
# What a point of the network, and of the hypermarket (whose campaign grants a point per
# 10,000 rial), is worth in their store credit: 1 % back.
POINTS_VALUE_RIAL = 100

# Tiers at the demo's prices (a coffee at the café ~100,000 rial, a haircut ~400,000, a
# week's groceries at the hypermarket ~2,000,000). Bronze from 0: cards are issued bronze
# (card.tier's default), so the seeded members, who have bought nothing yet, keep it and
# the sweeper takes nothing away. Silver from 15,000,000 a year (a coffee twice a week and
# a haircut a month), gold from 100,000,000 (the weekly groceries). The points are the
# hypermarket's (a point per 10,000 rial, groceries double): 1,500 and 10,000 are the same
# spend at the plain rate, so a member who buys groceries there gets silver on half.
TIER_POLICY = TierPolicy(bronze=Threshold(0), silver=Threshold(15_000_000, 1_500),
                         gold=Threshold(100_000_000, 10_000))

_FIRST = ("Sara", "Ali", "Maryam", "Reza", "Zahra", "Hossein", "Fatemeh", "Mohammad",
          "Narges", "Amir", "Leila", "Mehdi", "Shirin", "Hamid", "Parisa", "Kaveh")
_LAST = ("Ahmadi", "Hosseini", "Karimi", "Rezaei", "Moradi", "Jafari", "Rahimi", "Sadeghi",
         "Ebrahimi", "Kazemi", "Hashemi", "Najafi")
_CITIES = ("Tehran", "Isfahan", "Shiraz", "Tabriz", "Mashhad", "Karaj")
_JOBS = ("teacher", "engineer", "student", "nurse", "shopkeeper", "designer", "retired")


def demo_club_pan(index: int) -> str:
    """The PAN of demo member `index`'s club card (0-based)."""
    return cards.new_club_pan(CLUB_BIN, f"{index:09d}")


def demo_bank_pan(index: int) -> str:
    """The Shetab card linked to demo member `index` (every fifth member has one)."""
    partial = BANK_BIN + f"{index + 500_000:09d}"
    return partial + cards.luhn_check_digit(partial)


async def seed(conn: asyncpg.Connection, store: KeyStore, key_file: Path) -> str:
    if await conn.fetchval("SELECT 1 FROM store_network WHERE code = $1", NETWORK_CODE):
        # A database seeded before campaigns existed gets them. Not so the tier policy: one
        # the operator cleared (`admin tier-policy clear`) must stay cleared.
        added = await seed_campaigns(conn)
        return f"demo data already present; {added} campaigns added" if added else \
            "demo data already present"
    bdk_id = keys.add_bdk(key_file)
    store = keys.load(key_file)
    await registry.register_bdk(conn, bdk_id, "demo")
    network_id = await registry.add_network(conn, NETWORK_CODE, "Demo Shopping Centre", CLUB_BIN)
    await registry.set_tier_policy(conn, NETWORK_CODE, TIER_POLICY)
    merchant_ids = {}
    for code, name, trade, bban, fees, exempt in MERCHANTS:
        merchant_ids[code] = await registry.add_merchant(
            conn, code=code, name=name, trade=trade, sheba=cards.sheba_from_bban(bban),
            network=NETWORK_CODE, fees=fees, shaparak_fee_exempt=exempt)
        for n in range(1, TERMINALS_PER_MERCHANT + 1):
            await registry.add_terminal(conn, tid=f"{TERMINALS[code]}{n:04d}", merchant=code,
                                        bdk_id=bdk_id, hold_timeout_s=None)
    rng = random.Random(8583)  # noqa: S311  (demo data is deterministic on purpose)
    for index in range(MEMBERS):
        await _seed_member(conn, store, rng, index, network_id, merchant_ids)
    campaigns = await seed_campaigns(conn)
    for issuer in (points.Issuer("network", NETWORK_CODE),
                   points.Issuer("merchant", "hyper-setareh")):
        await points.set_value(conn, issuer, POINTS_VALUE_RIAL, POINTS_VALUE_RIAL,
                               datetime.now(UTC))
    return (f"demo data: network {NETWORK_CODE!r}, {len(MERCHANTS)} merchants, "
            f"{len(MERCHANTS) * TERMINALS_PER_MERCHANT} terminals, {MEMBERS} members with cards, "
            f"{campaigns} campaigns, a tier policy")


def demo_campaigns() -> list[CampaignSpec]:
    """The campaigns of every file in switch/demo_campaigns/, in file name order."""
    specs: list[CampaignSpec] = []
    folder = resources.files("switch") / "demo_campaigns"
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".toml"):
            with resources.as_file(entry) as path:
                specs.extend(load_campaigns(path))
    return specs


async def seed_campaigns(conn: asyncpg.Connection) -> int:
    """Store the demo campaigns not stored yet (as `loyalty admin campaign create` would);
    returns how many were stored."""
    existing = {r["id"] for r in await conn.fetch("SELECT id FROM campaign")}
    missing = [spec for spec in demo_campaigns() if spec.id not in existing]
    await campaign_store.store_campaigns(conn, missing)
    return len(missing)


async def _seed_member(conn: asyncpg.Connection, store: KeyStore, rng: random.Random,
                       index: int, network_id: int, merchant_ids: dict[str, int]) -> None:
    profile = MemberProfile(
        first_name=rng.choice(_FIRST), last_name=rng.choice(_LAST),
        mobile=f"0912{index:07d}",
        birth_date=date(rng.randint(1960, 2005), rng.randint(1, 12), rng.randint(1, 28)),
        gender=rng.choice(("female", "male", "unspecified")),
        city=rng.choice(_CITIES), occupation=rng.choice(_JOBS),
        tags=tuple(rng.sample(("coffee", "family", "vip", "student", "weekend"), 2)))
    member_id = await registry.add_member(conn, NETWORK_CODE, profile)
    card = await registry.issue_card(conn, store, member_id=member_id, expiry=CARD_EXPIRY,
                                     pan=demo_club_pan(index))
    await registry.credit_card_online(conn, card.card_id, rng.randrange(5, 51) * 100_000,
                                      ref=f"demo-topup-{index}")
    if index % 5 == 0:
        await registry.link_bank_card(conn, store, member_id, demo_bank_pan(index))
    if index % 3 == 0:  # café gift credit, spendable only at the café
        await _grant_credit(conn, card.card_id, rng.randrange(1, 11) * 10_000,
                            merchant_id=merchant_ids["cafe-lale"])
    if index % 4 == 0:  # network credit, spendable at every store of the network
        await _grant_credit(conn, card.card_id, rng.randrange(1, 6) * 50_000,
                            network_id=network_id)
    if index % 2 == 0:
        issuer = await ledger.account_id(conn, ledger.points_issued(network_id))
        points = await ledger.account_id(conn, ledger.card_points(card.card_id))
        amount = rng.randrange(1, 50) * 10
        result = await ledger.transfer(conn, ledger.Unit.PTS, "demo_points",
                                       [(issuer, amount), (points, -amount)])
        assert result.ok


async def _grant_credit(conn: asyncpg.Connection, card_id: int, amount: int, *,
                        merchant_id: int | None = None, network_id: int | None = None) -> None:
    issued = await ledger.account_id(
        conn, ledger.credit_issued(merchant_id=merchant_id, network_id=network_id))
    credit = await ledger.account_id(
        conn, ledger.card_credit(card_id, merchant_id=merchant_id, network_id=network_id))
    result = await ledger.transfer(conn, ledger.Unit.IRR, "gift_credit",
                                   [(issued, amount), (credit, -amount)])
    assert result.ok
