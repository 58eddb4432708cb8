"""`loyalty admin tier-policy set|show|clear` through the real entry point, against a fresh
database: the round trip, every refused argument (exit 2, one line naming it, nothing
changed), the bigint bound, and the demo's policy."""

import asyncio

import asyncpg
import pytest

from switch import demo
from switch.tiers import THRESHOLD_MAX
from tests.switch.test_cli import _setup_merchant

SET = ("admin", "tier-policy", "set", "--network", "mall")
SPENDS = ("--bronze-spend", "0", "--silver-spend", "2000000", "--gold-spend", "9000000")


def _policies(db_url: str) -> list[tuple[object, ...]]:
    async def read() -> list[tuple[object, ...]]:
        conn = await asyncpg.connect(db_url)
        try:
            rows = await conn.fetch(
                """SELECT n.code, bronze_spend_rial, silver_spend_rial, gold_spend_rial,
                          bronze_points, silver_points, gold_points
                   FROM tier_policy p JOIN store_network n ON n.id = p.network_id
                   ORDER BY n.code""")
            return [tuple(r) for r in rows]
        finally:
            await conn.close()
    return asyncio.run(read())


def test_set_show_replace_clear(cli, db_url):
    _setup_merchant(cli)
    assert cli("admin", "tier-policy", "show", "--network", "mall") == \
        (0, "network mall has no tier policy: its tiers stay as they are\n", "")

    code, out, _ = cli(*SET, *SPENDS, "--silver-points", "200", "--gold-points", "1000")
    assert code == 0
    assert out.startswith("tier policy of network mall set\n")
    assert _policies(db_url) == [("mall", 0, 2_000_000, 9_000_000, None, 200, 1_000)]
    code, out, _ = cli("admin", "tier-policy", "show", "--network", "mall")
    assert code == 0
    assert out.splitlines()[1:] == ["tier    spend (rial)  points",
                                    "bronze             0       -",
                                    "silver     2,000,000     200",
                                    "gold       9,000,000   1,000"]

    # `set` replaces the whole policy: points not given again are gone.
    code, out, _ = cli(*SET, "--bronze-spend", "5", "--silver-spend", "5", "--gold-spend", "6")
    assert (code, out.splitlines()[0]) == (0, "tier policy of network mall replaced")
    assert _policies(db_url) == [("mall", 5, 5, 6, None, None, None)]

    code, out, _ = cli("admin", "tier-policy", "clear", "--network", "mall")
    assert (code, out) == (0, "tier policy of network mall cleared: its tiers stay as they are\n")
    assert _policies(db_url) == []
    code, _, err = cli("admin", "tier-policy", "clear", "--network", "mall")
    assert (code, err) == (2, "loyalty: network 'mall' has no tier policy\n")


def test_thresholds_up_to_the_bigint_bound(cli, db_url):
    _setup_merchant(cli)
    top = str(THRESHOLD_MAX)
    assert cli(*SET, "--bronze-spend", top, "--silver-spend", top, "--gold-spend", top,
               "--gold-points", top)[0] == 0
    assert _policies(db_url) == [("mall", *(THRESHOLD_MAX,) * 3, None, None, THRESHOLD_MAX)]
    code, _, err = cli(*SET, "--bronze-spend", top, "--silver-spend", top,
                       "--gold-spend", str(THRESHOLD_MAX + 1))
    assert code == 2
    assert err.startswith("loyalty: --gold-spend: 9223372036854775808 is not between 0 and")


@pytest.mark.parametrize(("argv", "named"), [
    ((*SET, "--bronze-spend", "x", "--silver-spend", "1", "--gold-spend", "2"),
     "argument --bronze-spend: 'x' is not a whole number of rials"),
    ((*SET, "--bronze-spend", "0", "--silver-spend", "-5", "--gold-spend", "2"),
     "argument --silver-spend"),
    ((*SET, "--bronze-spend", "0", "--silver-spend", "1", "--gold-spend", "12.5"),
     "argument --gold-spend: '12.5' is not a whole number of rials"),
    ((*SET, "--bronze-spend", "0", "--silver-spend", "1"),
     "the following arguments are required: --gold-spend"),
    ((*SET, *SPENDS, "--silver-points", "1e3"),
     "argument --silver-points: '1e3' is not a whole number of points"),
    ((*SET, "--bronze-spend", "3", "--silver-spend", "2", "--gold-spend", "9"),
     "loyalty: --silver-spend: 2 is below bronze's 3 (thresholds must not decrease to gold)"),
    ((*SET, "--bronze-spend", "0", "--silver-spend", "2000", "--gold-spend", "1999"),
     "loyalty: --gold-spend: 1,999 is below silver's 2,000"),
    ((*SET, *SPENDS, "--silver-points", "10", "--gold-points", "9"),
     "loyalty: --gold-points: 9 is below silver's 10"),
    ((*SET, *SPENDS, "--bronze-points", "10", "--gold-points", "9"),  # silver by spend only
     "loyalty: --gold-points: 9 is below bronze's 10"),
    (("admin", "tier-policy", "set", "--network", "nowhere", *SPENDS),
     "loyalty: no store network with code 'nowhere'"),
    (("admin", "tier-policy", "show", "--network", "nowhere"),
     "loyalty: no store network with code 'nowhere'"),
    (("admin", "tier-policy", "clear", "--network", "nowhere"),
     "loyalty: no store network with code 'nowhere'"),
    (("admin", "tier-policy", "clear"), "the following arguments are required: --network"),
])
def test_bad_input_exits_2_names_the_argument_and_changes_nothing(cli, db_url, capsys, argv,
                                                                  named):
    _setup_merchant(cli)
    assert cli(*SET, *SPENDS, "--gold-points", "700")[0] == 0
    before = _policies(db_url)
    try:
        code, _, err = cli(*argv)
    except SystemExit as exc:  # argparse refuses before our code runs (usage, then the error)
        code, err = exc.code, capsys.readouterr().err
    assert code == 2
    assert named in err
    if err.startswith("loyalty: "):
        assert err.count("\n") == 1
    assert _policies(db_url) == before


def test_the_demo_seeds_its_policy_once(cli, db_url):
    assert cli("demo")[0] == 0
    bronze, silver, gold = demo.TIER_POLICY.bronze, demo.TIER_POLICY.silver, demo.TIER_POLICY.gold
    assert _policies(db_url) == [
        ("demo", bronze.spend_rial, silver.spend_rial, gold.spend_rial,
         bronze.points, silver.points, gold.points)]
    assert (bronze.spend_rial, silver.spend_rial, gold.spend_rial) == \
        (0, 15_000_000, 100_000_000)  # bronze at 0: the seeded members keep their bronze
    code, out, _ = cli("admin", "tier-policy", "show", "--network", "demo")
    assert code == 0
    assert "silver    15,000,000   1,500" in out
    # A policy the operator cleared stays cleared when the demo is loaded again.
    assert cli("admin", "tier-policy", "clear", "--network", "demo")[0] == 0
    assert cli("demo")[1].strip() == "demo data already present"
    assert _policies(db_url) == []
