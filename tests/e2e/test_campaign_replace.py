"""`loyalty admin campaign create --replace` while purchases hold reservations (audit #2):
each reservation is given back in the unit it was made in, whatever the campaign became; a
replace that would change a live budget's unit or put it below what is used is refused with
exit 2 and stores nothing; a replace that lands while a purchase waits on the campaign row
makes that purchase price again. Over TCP, `db check` after each test (the fixture)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from protocol.fields import AmountType, ResponseCode
from switch import demo
from switch.campaign_file import parse_campaigns
from switch.campaign_store import store_campaigns
from tests.e2e.support import blocks, lock_waiters
from tests.e2e.test_pricing import CAFE, NONE, POINTS, add, budget_used

BUDGETED = {"id": "cafe-20", "kind": "percent_discount", "bp": 2_000, "budget_rial": 1_000_000,
            "merchant": CAFE}


def campaign_file(path: Path, **spec: Any) -> str:
    """A campaign file holding one campaign of the demo network."""
    lines = ["[[campaign]]", f'network = "{demo.NETWORK_CODE}"']
    lines += [f"{k} = {v!r}" if isinstance(v, int) else f'{k} = "{v}"' for k, v in spec.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


async def stored(env: Any, campaign_id: str) -> tuple[Any, ...]:
    """What a refused replace must leave as it was: the row and its event count."""
    row = await env.conn.fetchrow(
        """SELECT version, spec, budget_rial, budget_used_rial, budget_used_units,
                  (SELECT count(*) FROM campaign_event e WHERE e.campaign_id = k.id)
           FROM campaign k WHERE id = $1""", campaign_id)
    return tuple(row)


async def test_reservations_are_given_back_after_the_budget_is_replaced_away(
        env, loyalty, tmp_path):
    """Three purchases reserve 10,000 each against a rial budget; the campaign is replaced
    by one without a budget. The confirmed one stays counted; the reversal answers 00 and
    the sweeper voids the one whose hold times out, each giving its rials back."""
    await add(env, **BUDGETED)
    pan = demo.demo_club_pan(2)
    async with await env.client("CAFE0001") as client:
        bought = [await client.purchase(50_000, pan, demo.CARD_EXPIRY) for _ in range(3)]
        assert [blocks(r)[(NONE, AmountType.DISCOUNT.value)] for r, _ in bought] == [10_000] * 3
        kept, reversed_, expiring = bought
        assert (await client.confirm(kept[1], kept[0].message.rrn)).code is ResponseCode.APPROVED
        assert await budget_used(env, "cafe-20") == 30_000
        unbudgeted = {k: v for k, v in BUDGETED.items() if k != "budget_rial"}
        code, out, err = await loyalty("admin", "campaign", "create", "--replace",
                                       campaign_file(tmp_path / "c.toml", **unbudgeted))
        assert (code, err) == (0, "")
        assert "campaign cafe-20 replaced (version 2)" in out
        answer = await client.reverse(reversed_[1], reversed_[0].message.rrn)
        assert answer.code is ResponseCode.APPROVED
        assert await budget_used(env, "cafe-20") == 20_000
        env.clock.advance(seconds=env.settings.hold_timeout_s + 1)
        assert await env.sweep() == 1
    state = await env.conn.fetchval("SELECT state FROM txn WHERE rrn = $1",
                                    expiring[0].message.rrn)
    assert state == "VOIDED"
    assert await env.conn.fetchrow(
        "SELECT budget_used_rial, budget_used_units FROM campaign WHERE id = 'cafe-20'"
    ) == (10_000, 0)


async def test_a_replace_that_changes_a_live_budgets_unit_is_refused(env, loyalty, tmp_path):
    """A purchase holds 10,000 rials of the budget: a points campaign of the same id with
    a points budget is refused, naming the field; once the purchase is reversed nothing is
    live and the same file is stored."""
    await add(env, **BUDGETED)
    points = campaign_file(tmp_path / "p.toml", id="cafe-20", kind="points",
                           rial_per_point=10_000, budget_points=100, merchant=CAFE)
    async with await env.client("CAFE0001") as client:
        response, prepared = await client.purchase(50_000, demo.demo_club_pan(2),
                                                   demo.CARD_EXPIRY)
        before = await stored(env, "cafe-20")
        code, out, err = await loyalty("admin", "campaign", "create", "--replace", points)
        assert (code, out) == (2, "")
        assert err == ("loyalty: campaign 'cafe-20': budget_points: its live reservations "
                       "hold budget_rial; a budget's unit cannot change while they do (store "
                       "a campaign with a new id)\n")
        assert await stored(env, "cafe-20") == before
        assert (await client.reverse(prepared, response.message.rrn)).code \
            is ResponseCode.APPROVED
    code, _, err = await loyalty("admin", "campaign", "create", "--replace", points)
    assert (code, err) == (0, "")
    assert await env.conn.fetchval("SELECT kind FROM campaign WHERE id = 'cafe-20'") == "points"


async def test_a_budget_below_what_is_used_is_refused_at_the_bound(env, loyalty, tmp_path):
    """10,000 rials used: a budget of 9,999 is refused (exit 2, nothing stored, not a
    database error); 10,000 is stored, and the next purchase gets nothing from it."""
    await add(env, **BUDGETED)
    pan = demo.demo_club_pan(2)
    async with await env.client("CAFE0001") as client:
        await client.purchase(50_000, pan, demo.CARD_EXPIRY)
        before = await stored(env, "cafe-20")
        code, out, err = await loyalty("admin", "campaign", "create", "--replace",
                                       campaign_file(tmp_path / "c.toml",
                                                     **{**BUDGETED, "budget_rial": 9_999}))
        assert (code, out, err) == (2, "", "loyalty: campaign 'cafe-20': budget_rial: 9,999 "
                                           "is less than the 10,000 already used\n")
        assert await stored(env, "cafe-20") == before
        code, _, _ = await loyalty("admin", "campaign", "create", "--replace",
                                   campaign_file(tmp_path / "c.toml",
                                                 **{**BUDGETED, "budget_rial": 10_000}))
        assert code == 0
        response, _ = await client.purchase(50_000, pan, demo.CARD_EXPIRY)
        assert blocks(response)[(NONE, AmountType.DISCOUNT.value)] == 0
    assert await budget_used(env, "cafe-20") == 10_000


async def test_a_replace_landing_while_a_purchase_waits_makes_it_price_again(env):
    """The rial-budget discount becomes a points campaign with a points budget while a
    purchase priced on the discount waits for the campaign row: the purchase is priced
    again on the points campaign (no discount; 5 points, counted in points), rather than
    holding its 10,000 rials against the points budget, which is large enough to take them."""
    await add(env, **BUDGETED)
    [points] = parse_campaigns({"campaign": [{
        "network": demo.NETWORK_CODE, "id": "cafe-20", "kind": "points",
        "rial_per_point": 10_000, "budget_points": 1_000_000, "merchant": CAFE}]}, "t.toml")
    async with await env.client("CAFE0001") as client:
        async with env.conn.transaction():
            await env.conn.execute("SELECT 1 FROM campaign WHERE id = 'cafe-20' FOR UPDATE")
            buying = asyncio.create_task(
                client.purchase(50_000, demo.demo_club_pan(2), demo.CARD_EXPIRY))
            while await lock_waiters(env) < 1:  # priced, and waiting for the row
                assert not buying.done(), buying.result()
            await store_campaigns(env.conn, [points], replace=True)
        response, _ = await buying
    assert response.code is ResponseCode.APPROVED
    got = blocks(response)
    assert got[(NONE, AmountType.DISCOUNT.value)] == 0
    assert got[(POINTS, AmountType.POINTS_EARNED.value)] == 5
    assert await env.conn.fetchrow(
        "SELECT budget_used_rial, budget_used_units FROM campaign WHERE id = 'cafe-20'"
    ) == (0, 5)
