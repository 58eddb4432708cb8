"""The sweeper's round at the bounds of its batch settings, on a real Postgres: each job
runs in batches of its own setting (`lot_expiry_batch_max`, `tier_review_batch_max`; holds,
which need purchases, are in tests/e2e/test_lifecycle.py). A round ends on the first batch
that comes back short of its bound, so exactly N due takes a second batch that finds
nothing, and N + 1 a second batch of one. Every bound differs from the others, so a job run
with another job's bound fails here."""

from __future__ import annotations

from datetime import datetime

import asyncpg
import pytest

from switch import ledger
from switch.ledger import Unit
from switch.sweeper import sweep_all
from tests.conftest import sweep_limits
from tests.switch.test_ledger import T0, new_card
from tests.switch.test_tier_sweep import NOW, gold_card, network, tier

HOLDS, LOTS, TIERS = 2, 3, 4  # the bounds, one per job
LIMITS = {"hold_sweep_batch_max": HOLDS, "lot_expiry_batch_max": LOTS,
          "tier_review_batch_max": TIERS}


def rounds(bound: int) -> list[tuple[int, list[tuple[int, int]]]]:
    """(how many are due, the batches a round takes: (bound, done) each) around `bound`."""
    return [(bound - 1, [(bound, bound - 1)]),
            (bound, [(bound, bound), (bound, 0)]),
            (bound + 1, [(bound, bound), (bound, 1)])]


async def due_lots(conn: asyncpg.Connection, count: int, due_at: datetime) -> int:
    """A new card's network store-credit account holding `count` lots of 100 rials, all
    due at `due_at`."""
    card = await new_card(conn)
    network_id: int = await conn.fetchval("SELECT network_id FROM card WHERE id = $1", card)
    credit = await ledger.account_id(conn, ledger.card_credit(card, network_id=network_id))
    issued = await ledger.account_id(conn, ledger.credit_issued(network_id=network_id))
    for _ in range(count):
        grant = [(issued, 100), (credit, -100)]
        assert (await ledger.transfer(conn, Unit.IRR, "cashback", grant)).ok
    await conn.execute("UPDATE ledger_lot SET expires_at = $2 WHERE account_id = $1",
                       credit, due_at)
    return credit


@pytest.mark.parametrize(("due", "batches"), rounds(LOTS))
async def test_lots_expire_in_batches_of_lot_expiry_batch_max(conn, pool, sweep_batches, due,
                                                               batches):
    credit = await due_lots(conn, due, T0)
    await sweep_all(pool, T0, sweep_limits(**LIMITS))
    assert sweep_batches == {"holds": [(HOLDS, 0)], "lots": batches, "tiers": [(TIERS, 0)]}
    assert (await ledger.balance(conn, credit)).ledger == 0
    open_lots = await conn.fetchval(
        "SELECT count(*) FROM ledger_lot WHERE account_id = $1 AND remaining > 0", credit)
    assert open_lots == 0


@pytest.mark.parametrize(("due", "batches"), rounds(TIERS))
async def test_tiers_are_reviewed_in_batches_of_tier_review_batch_max(conn, pool, sweep_batches,
                                                                      due, batches):
    network_id = await network(conn, "bound", "990108", 1_000_000)
    cards = [await gold_card(conn, network_id, n) for n in range(40, 40 + due)]
    await sweep_all(pool, NOW, sweep_limits(**LIMITS))
    assert sweep_batches == {"holds": [(HOLDS, 0)], "lots": [(LOTS, 0)], "tiers": batches}
    assert [await tier(conn, c) for c in cards] == ["silver"] * due
