"""Tiers end to end: the policy an operator sets with `loyalty admin tier-policy` (the real
entry point, on the running switch's database) is the one the confirm-time review applies
to purchases made over TCP; a cleared policy leaves tiers as they are; the demo's own policy
keeps the seeded members bronze. `db check` runs after each test (the fixture)."""

from __future__ import annotations

from protocol.fields import AmountType
from switch import demo
from tests.e2e.support import blocks
from tests.e2e.test_pricing import NONE, add

SET = ("admin", "tier-policy", "set", "--network", demo.NETWORK_CODE)


async def test_the_policy_the_command_sets_moves_tiers_on_confirm(env, loyalty):
    """Silver from 100,000 rials in 12 months, gold from 250,000: a confirmed 150,000
    purchase makes the bronze card silver and 120,000 more gold, after which a gold-only
    rule prices its purchases. Raising the bar takes it down one step per review; once the
    policy is cleared, a review leaves the tier as it is."""
    code, out, _ = await loyalty(*SET, "--bronze-spend", "0", "--silver-spend", "100000",
                                 "--gold-spend", "250000", "--gold-points", "50")
    assert (code, out.splitlines()[0]) == (0, "tier policy of network demo replaced")
    await add(env, id="gold-10", kind="percent_discount", bp=1_000, tiers=["gold"])
    card_id, pan = await env.card_id(7), demo.demo_club_pan(7)

    async def tier() -> str:
        value: str = await env.conn.fetchval("SELECT tier FROM card WHERE id = $1", card_id)
        return value

    async def buy(amount: int) -> int:
        """Purchase and confirm; the discount the purchase got."""
        response, prepared = await client.purchase(amount, pan, demo.CARD_EXPIRY)
        await client.confirm(prepared, response.message.rrn)
        return blocks(response)[(NONE, AmountType.DISCOUNT.value)]

    assert await tier() == "bronze"
    client = await env.client("CAFE0002")
    async with client:
        for amount, discount, after in ((150_000, 0, "silver"), (120_000, 0, "gold"),
                                        (100_000, 10_000, "gold")):
            assert await buy(amount) == discount
            assert await tier() == after
        assert (await loyalty(*SET, "--bronze-spend", "0", "--silver-spend", "1000000000",
                              "--gold-spend", "1000000000"))[0] == 0
        assert await buy(10_000) == 1_000  # priced gold, reviewed after: one step down
        assert await tier() == "silver"
        assert await loyalty("admin", "tier-policy", "clear", "--network", "demo") == \
            (0, "tier policy of network demo cleared: its tiers stay as they are\n", "")
        assert await buy(10_000) == 0  # silver now: the gold rule no longer applies
        assert await tier() == "silver"


async def test_the_demo_policy_keeps_the_seeded_members_bronze(env):
    """The switch's first sweep, at start, reviewed every demo card under the demo's policy
    (bronze from 0 rials) and took nothing away."""
    rows = await env.conn.fetch("SELECT tier, tier_swept_at IS NOT NULL AS swept FROM card")
    assert len(rows) == demo.MEMBERS
    assert {(r["tier"], r["swept"]) for r in rows} == {("bronze", True)}
