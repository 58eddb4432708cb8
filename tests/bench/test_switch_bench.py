"""The switch bench's campaign run, kept from rotting: the stacked campaigns of
bench/campaigns.toml are stored, a short load over TCP fires them, and phase 2 posts what
they granted. No timing is asserted; `db check` runs on the database afterwards."""

from __future__ import annotations

from pathlib import Path

import asyncpg

from bench import switch_bench
from bench.bench_campaigns import BASKET, POSTED_CODES, grant_summary, seed_campaigns
from simulator.burst import demo_terminals
from simulator.load import run_load
from switch import keys
from switch.config import load_settings
from switch.service import Switch


async def test_a_short_campaign_load_posts_every_kind_of_grant(db_url: str,
                                                               tmp_path: Path) -> None:
    key_file = tmp_path / "keys.json"
    conn = await asyncpg.connect(db_url)
    try:
        async with conn.transaction():
            await switch_bench.seed(conn, key_file, terminals=2)
            stored = await seed_campaigns(conn, switch_bench.NETWORK,
                                          switch_bench.merchant_codes(2))
        settings = load_settings(environ={}, key_file=key_file, listen_port=0, metrics_port=0,
                                 db_pool_size_min=1, db_pool_size_max=4,
                                 hold_sweep_interval_s=3600)
        switch = Switch(settings, database_url=db_url)
        await switch.start()
        try:
            terminals = await demo_terminals(conn, keys.load(key_file))
            report = await run_load(terminals, "127.0.0.1", switch.port,
                                    switch_bench.load_config(1.0, BASKET),
                                    switch_bench.BenchCards())
        finally:
            await switch.stop()
        summary = await grant_summary(conn)
        # The basket is groceries (5411): every points grant is double a point per 1,000,
        # rounded down (integer division of positive bigints truncates).
        wrong_points = await conn.fetchval(
            """SELECT count(*) FROM txn_grant g JOIN txn t ON t.id = g.txn_id
               WHERE g.effect = 'points'
                 AND g.amount <> (t.quote->>'payable')::bigint * 2 / 1000""")
    finally:
        await conn.close()
    assert stored == summary.campaigns == 5  # two network-wide, three of merchant m0
    assert report.outcomes["completed"] > 0 and report.outcomes["error"] == 0
    assert summary.confirmed == report.outcomes["completed"]
    fired = {(campaign, effect) for campaign, effect, _, _ in summary.by_campaign}
    assert {("bench-network-10", "discount"), ("bench-cashback", "cashback"),
            ("bench-points", "points")} <= fired
    assert set(summary.posted) == set(POSTED_CODES)
    assert summary.discount_rial > 0
    assert all(type(total) is int for *_, total in summary.by_campaign)  # not Decimal
    assert wrong_points == 0
