"""`db check` on real ledgers: it passes on a ledger with activity of every kind, and on a
hand-corrupted one it fails naming exactly the invariants broken, in the library and through
`loyalty db check` (exit status 1).

Corruption tests use a database of their own, dropped without the `db check` that the
`db_url` fixture runs at teardown.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import asyncpg
import pytest

from switch import db, dbcheck, ledger
from switch.cli import main
from tests.conftest import create_database, drop_database
from tests.switch.test_ledger import T0, TIMEOUT, card_account, hold, other_account

SUMS_TO_ZERO = "every transfer's entries sum to zero"
RUNNING_TOTALS_MATCH = "every running total equals the sum of its account's entries"
HOLD_STATUS_MATCHES = "no hold is resolved twice, and each hold's status matches its resolution"
LEDGER_BALANCES = "the ledger as a whole balances, per unit"
LOTS_MATCH = "every store-credit and points account's open lots sum to its ledger balance"
BUDGET_MATCHES = ("every campaign's used budget is what its live transactions reserved, less "
                  "what live refunds took back")
DAILY_MATCHES = "every card's daily amount per rule is what its live transactions reserved"
GRANTS_MATCH = "every priced transaction's discount is the sum of its discount grants"
CLAWBACK_WITHIN_GRANT = "no grant is taken back by live refunds beyond what it granted"
CLAWBACK_POSTED = "every confirmed refund's clawback postings are what it recorded as taken"
LOT_DRAWS_MATCH = \
    "every lot's draws, less what was given back, are what it lost, within its amount"
LOT_UNDO_WITHIN = \
    "no lot movement is undone beyond what it moved, nor given back to another lot"
LOT_ENTRIES_MATCH = "every store-credit and points entry moved its account's lots by its amount"
LOT_REVERSAL_UNDONE = "no lot movement of a reversed transaction still stands"
POINTS_LOT_ISSUER = "every points lot is drawn only by debits that credit its issuer"
REFUND_FEES_MATCH = \
    "no purchase's fee is given back beyond it, and a refunded whole gives it all back"
REFUND_ISSUERS_MATCH = ("no issuer gets back more store credit than a purchase drew from it, "
                        "and a refunded whole gives each all of it")
LOT_DRAW_CHECKS = frozenset({LOT_DRAWS_MATCH, LOT_UNDO_WITHIN, LOT_ENTRIES_MATCH})
PRICING_CHECKS = frozenset({LOTS_MATCH, BUDGET_MATCHES, DAILY_MATCHES, GRANTS_MATCH})
DISCOUNT_FUNDING_RETURNED = ("every fully refunded purchase leaves each funder's discount "
                             "funding for it at zero")
CLAWBACK_CHECKS = frozenset({CLAWBACK_WITHIN_GRANT, CLAWBACK_POSTED})
REDEMPTIONS_POSTED = ("every points redemption took its points from the card and gave its "
                      "credit to it")


@dataclass(frozen=True)
class Activity:
    card: int
    purchase: int  # an immediate transfer
    pending: int  # a hold not yet resolved


async def make_activity(conn: asyncpg.Connection) -> Activity:
    """A top-up, a purchase, and holds posted in part, voided, expired and still pending."""
    card = await card_account(conn, funded=1_000)
    shop = await other_account(conn, "shop")
    purchase = await ledger.transfer(conn, ledger.Unit.IRR, "purchase",
                                     [(card, 400), (shop, -400)])
    assert purchase.transfer_id is not None
    posted, voided, expired, pending = [await hold(conn, card, shop, 100) for _ in range(4)]
    assert (await ledger.post(conn, posted, T0, 60)).ok
    assert (await ledger.void(conn, voided, T0)).ok
    assert (await ledger.expire(conn, expired, T0 + TIMEOUT)).ok
    return Activity(card, purchase.transfer_id, pending)


@contextlib.asynccontextmanager
async def connected(url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(url)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def scratch(admin_url, template_name) -> AsyncIterator[tuple[str, Activity]]:
    """A database with ledger activity, to be corrupted: (its URL, the activity)."""
    name = await create_database(admin_url, template_name)
    url = db.with_database(admin_url, name)
    try:
        async with connected(url) as conn:
            activity = await make_activity(conn)
        yield url, activity
    finally:
        await drop_database(admin_url, name)


async def failed_checks(conn: asyncpg.Connection) -> set[str]:
    return {o.check.name for o in await dbcheck.run_checks(conn) if not o.ok}


async def add_campaign(conn: asyncpg.Connection, budget_rial: int | None = None) -> None:
    """Campaign 'c1' of a new network 'campaign-net', written directly (as any writer could)."""
    network_id = await conn.fetchval(
        "INSERT INTO store_network (code, name, club_bin) VALUES ('campaign-net', 'N', '990499') "
        "RETURNING id")
    spec = {"id": "c1", "kind": "fixed_discount", "priority": 0, "network_id": network_id,
            "merchant_id": None, "budget_rial": budget_rial}
    await conn.execute(
        "INSERT INTO campaign (id, network_id, kind, priority, spec, budget_rial) "
        "VALUES ('c1', $1, 'fixed_discount', 0, $2::jsonb, $3)", network_id, json.dumps(spec),
        budget_rial)


async def test_check_passes_on_a_ledger_with_activity(conn):
    await make_activity(conn)
    await add_campaign(conn)
    outcomes = await dbcheck.run_checks(conn)
    assert [o.check.name for o in outcomes if not o.ok] == []
    # The campaign checks examine rows only campaigns create (tests/e2e/test_pricing.py),
    # the clawback checks rows only refunds of priced purchases (tests/e2e/test_clawback.py,
    # tests/e2e/test_refund_mirror.py), the lot and refund fee checks rows only store credit
    # and refunds write (tests/e2e/test_lot_restore.py), the redemption check redemptions
    # (tests/e2e/test_points_redeem.py), the refund issuer check refunds of store-credit
    # purchases (tests/e2e/test_refund_issuers.py), the reversed lots check reversals and
    # the points lot issuer check points debits (tests/e2e/test_lot_reversal.py).
    assert all(o.examined > 0 for o in outcomes if o.check.name not in
               PRICING_CHECKS | CLAWBACK_CHECKS | LOT_DRAW_CHECKS
               | {REFUND_FEES_MATCH, REDEMPTIONS_POSTED, REFUND_ISSUERS_MATCH,
                  DISCOUNT_FUNDING_RETURNED, LOT_REVERSAL_UNDONE,
                  POINTS_LOT_ISSUER}), \
        dbcheck.report(outcomes)
    assert dbcheck.report(outcomes).endswith(
        f"{len(dbcheck.CHECKS)} invariants hold, 0 violated")


# --- Corruptions by hand ----------------------------------------------------------------------

async def bump_an_entry(conn: asyncpg.Connection, activity: Activity) -> None:
    """Change the card's entry in the purchase, past the append-only trigger (which takes
    a superuser)."""
    async with conn.transaction():
        await conn.execute("SET LOCAL session_replication_role = replica")
        await conn.execute("""UPDATE ledger_entry SET amount = amount + 1
                              WHERE transfer_id = $1 AND account_id = $2""",
                           activity.purchase, activity.card)


async def bump_a_total(conn: asyncpg.Connection, activity: Activity) -> None:
    await conn.execute("UPDATE ledger_account SET credits_posted = credits_posted + 1 "
                       "WHERE id = $1", activity.card)


async def mark_a_hold_posted(conn: asyncpg.Connection, activity: Activity) -> None:
    """A status change the trigger allows, with no post transfer behind it."""
    await conn.execute("UPDATE ledger_transfer SET status = 'posted' WHERE id = $1",
                       activity.pending)


Corruption = Callable[[asyncpg.Connection, Activity], Awaitable[None]]


@pytest.mark.parametrize(("corrupt", "broken"), [
    pytest.param(bump_an_entry, {SUMS_TO_ZERO, RUNNING_TOTALS_MATCH, LEDGER_BALANCES},
                 id="entry-amount"),
    pytest.param(bump_a_total, {RUNNING_TOTALS_MATCH}, id="card-total"),
    pytest.param(mark_a_hold_posted, {HOLD_STATUS_MATCHES, RUNNING_TOTALS_MATCH},
                 id="hold-status"),
])
async def test_check_names_what_a_corruption_breaks(scratch, corrupt: Corruption,
                                                    broken: set[str]):
    url, activity = scratch
    async with connected(url) as conn:
        assert await failed_checks(conn) == set()
        await corrupt(conn, activity)
        assert await failed_checks(conn) == broken


def test_cli_db_check_exits_1_on_a_corrupted_ledger(scratch, monkeypatch, capsys):
    url, activity = scratch
    monkeypatch.setenv("DATABASE_URL", url)
    assert main(["db", "check"]) == 0
    assert "0 violated" in capsys.readouterr().out

    async def corrupt() -> None:
        async with connected(url) as conn:
            await bump_an_entry(conn, activity)
    asyncio.run(corrupt())

    assert main(["db", "check"]) == 1
    out = capsys.readouterr().out
    for broken in (SUMS_TO_ZERO, RUNNING_TOTALS_MATCH, LEDGER_BALANCES):
        assert f"FAIL {broken}" in out
    assert out.endswith("3 violated\n")
