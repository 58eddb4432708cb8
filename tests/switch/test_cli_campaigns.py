"""`loyalty admin campaign ...` against a real database: good paths, refusals that store
nothing, and the guards of migration 0011 (versions, events, consistency, append-only)."""

import asyncio
import json
import tomllib

import asyncpg
import pytest

from switch import campaign_store, db, demo
from switch.campaign_file import parse_campaigns, rules_from_stored
from switch.registry import RegistryError
from tests.conftest import create_database, drop_database
from tests.switch.test_cli import _setup_merchant
from tests.switch.test_dbcheck import add_campaign, failed_checks

CAMPAIGN_HISTORY = "every campaign's event history ends at its version and status"

CAFE_FILE = """
[[campaign]]
id = "mall-friday"
kind = "percent_discount"
network = "mall"
priority = 10
funder = "network"
co_funders = [{ funder = "sponsor:melli", bp = 5_000 }]
bp = 1_000
cap_rial = 200_000
budget_rial = 5_000_000
when = { weekdays = ["friday"] }

[[campaign]]
id = "cafe-stamps"
kind = "stamp_card"
network = "mall"
merchant = "cafe"
priority = 100
every = 10
free_up_to_rial = 150_000

[[campaign]]
id = "mall-points"
kind = "points"
network = "mall"
rial_per_point = 10_000
budget_points = 2_000_000
"""


def _query(db_url: str, sql: str, *args):
    async def run() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(db_url)
        try:
            return await conn.fetch(sql, *args)
        finally:
            await conn.close()
    return asyncio.run(run())


def _state(db_url: str) -> list[tuple[object, ...]]:
    return [tuple(r) for r in _query(
        db_url, """SELECT 'c', id, status, version, spec::text FROM campaign
                   UNION ALL SELECT 'e', campaign_id, event, version, detail::text
                   FROM campaign_event ORDER BY 1, 2, 4, 3""")]


@pytest.fixture
def mall(cli, tmp_path):
    _setup_merchant(cli)
    path = tmp_path / "mall.toml"
    path.write_text(CAFE_FILE, encoding="utf-8")
    return path


def test_create_list_show_pause_resume(cli, db_url, mall, tmp_path):
    code, out, err = cli("admin", "campaign", "create", str(mall))
    assert (code, err) == (0, "")
    assert out.splitlines() == ["campaign mall-friday created (version 1)",
                                "campaign cafe-stamps created (version 1)",
                                "campaign mall-points created (version 1)"]
    code, out, _ = cli("admin", "campaign", "list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["id", "kind", "scope", "status", "budget", "used/total",
                                "priority", "version"]
    assert lines[1].split() == ["cafe-stamps", "stamp_card", "mall/cafe", "active", "0/-",
                                "100", "1"]
    assert lines[2].split() == ["mall-friday", "percent_discount", "mall/*", "active",
                                "0/5,000,000", "10", "1"]
    assert lines[3].split() == ["mall-points", "points", "mall/*", "active", "0/2,000,000",
                                "points", "0", "1"]
    code, out, _ = cli("admin", "campaign", "list", "--merchant", "cafe", "--json")
    assert [json.loads(line)["id"] for line in out.splitlines()] == [
        "cafe-stamps", "mall-friday", "mall-points"]

    code, out, _ = cli("admin", "campaign", "show", "mall-friday")
    assert code == 0
    assert out.startswith("# status: active\n")
    shown = tomllib.loads(out)["campaign"][0]
    assert shown["co_funders"] == [{"funder": "sponsor:melli", "bp": 5000}]
    assert "network_id" not in shown  # what `show` prints can be fed back to `create`
    code, out, _ = cli("admin", "campaign", "show", "cafe-stamps", "--format", "json")
    assert json.loads(out)["campaign"][0]["every"] == 10

    assert cli("admin", "campaign", "pause", "cafe-stamps")[1] == \
        "campaign cafe-stamps is paused (version 2)\n"
    assert "paused" in cli("admin", "campaign", "list")[1].splitlines()[1]
    assert cli("admin", "campaign", "resume", "cafe-stamps")[1] == \
        "campaign cafe-stamps is active (version 3)\n"
    events = _query(db_url, "SELECT event, version FROM campaign_event "
                            "WHERE campaign_id = 'cafe-stamps' ORDER BY id")
    assert [tuple(e) for e in events] == [("created", 1), ("paused", 2), ("resumed", 3)]


def test_replace_stores_a_new_version(cli, db_url, mall):
    assert cli("admin", "campaign", "create", str(mall))[0] == 0
    mall.write_text(CAFE_FILE.replace("every = 10", "every = 8"), encoding="utf-8")
    code, out, _ = cli("admin", "campaign", "create", str(mall), "--replace")
    assert code == 0
    assert "campaign cafe-stamps replaced (version 2)" in out
    assert "campaign mall-friday replaced (version 1)" in out  # same spec: no new version
    [row] = _query(db_url, "SELECT spec, version FROM campaign WHERE id = 'cafe-stamps'")
    assert json.loads(row["spec"])["every"] == 8
    [event] = _query(db_url, "SELECT detail FROM campaign_event WHERE event = 'updated'")
    assert json.loads(event["detail"])["previous_spec"]["every"] == 10
    [rule] = rules_from_stored(_query(db_url, "SELECT spec FROM campaign WHERE id = $1",
                                      "cafe-stamps"))
    assert rule.every == 8  # type: ignore[attr-defined]
    assert rule.merchant_ids and rule.network_id


BAD = {
    "bad file": ("every = 10", "every = 1", "mall.toml: campaign 'cafe-stamps': every: "
                 "must be at least 2"),
    "no network": ('network = "mall"\nmerchant', 'network = "nowhere"\nmerchant',
                   "campaign 'cafe-stamps': network: no store network 'nowhere'"),
    "no merchant": ('merchant = "cafe"', 'merchant = "tea"',
                    "campaign 'cafe-stamps': merchant: no merchant 'tea'"),
    "no terminal": ('merchant = "cafe"', 'merchant = "cafe"\nterminals = ["ZZZZ0001"]',
                    "campaign 'cafe-stamps': terminals: no terminal 'ZZZZ0001'"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_file_stores_nothing(cli, db_url, mall, case):
    old, new, message = BAD[case]
    assert old in CAFE_FILE
    mall.write_text(CAFE_FILE.replace(old, new), encoding="utf-8")
    before = _state(db_url)
    code, out, err = cli("admin", "campaign", "create", str(mall))
    assert code == 2
    assert message in err
    assert out == ""
    assert _state(db_url) == before == []  # the good first campaign was not stored either


def test_merchant_of_another_network_is_refused(cli, db_url, mall):
    assert cli("admin", "network", "add", "other", "--name", "O", "--bin", "990300")[0] == 0
    mall.write_text(CAFE_FILE.replace('network = "mall"\nmerchant', 'network = "other"\n'
                                      'merchant'), encoding="utf-8")
    code, _, err = cli("admin", "campaign", "create", str(mall))
    assert code == 2
    assert "merchant: 'cafe' is not in network 'other'" in err
    assert _state(db_url) == []


@pytest.mark.parametrize(("argv", "message"), [
    (("create", "{mall}"), "campaign 'mall-friday' already exists"),
    (("create", "/nonexistent/x.toml"), "x.toml: cannot be read"),
    (("show", "nope"), "no campaign 'nope'"),
    (("pause", "nope"), "no campaign 'nope'"),
    (("resume", "cafe-stamps"), "campaign 'cafe-stamps' is already active"),
    (("list", "--merchant", "tea"), "no merchant 'tea'"),
])
def test_refused_commands_write_nothing(cli, db_url, mall, argv, message):
    assert cli("admin", "campaign", "create", str(mall))[0] == 0
    before = _state(db_url)
    code, _, err = cli("admin", "campaign", *(a.format(mall=mall) for a in argv))
    assert code == 2
    assert message in err
    assert _state(db_url) == before


def test_pause_twice_is_refused(cli, db_url, mall):
    assert cli("admin", "campaign", "create", str(mall))[0] == 0
    assert cli("admin", "campaign", "pause", "mall-friday")[0] == 0
    before = _state(db_url)
    code, _, err = cli("admin", "campaign", "pause", "mall-friday")
    assert (code, err) == (2, "loyalty: campaign 'mall-friday' is already paused\n")
    assert _state(db_url) == before


async def test_database_guards(conn):
    with pytest.raises(asyncpg.CheckViolationError):  # the columns must copy the spec
        await conn.execute(
            "INSERT INTO campaign (id, network_id, kind, priority, spec) VALUES "
            "('c2', 1, 'lottery', 0, '{\"id\": \"c2\", \"kind\": \"points\"}')")
    await add_campaign(conn, budget_rial=100)
    await conn.execute("UPDATE campaign SET budget_used_rial = 100 WHERE id = 'c1'")
    assert await conn.fetchval("SELECT version FROM campaign") == 1  # usage: same version
    with pytest.raises(asyncpg.CheckViolationError):
        await conn.execute("UPDATE campaign SET budget_used_rial = 101 WHERE id = 'c1'")
    with pytest.raises(asyncpg.CheckViolationError):
        await conn.execute("UPDATE campaign SET budget_rial = 99 WHERE id = 'c1'")
    await conn.execute("UPDATE campaign SET status = 'paused', version = 7")
    assert await conn.fetchval("SELECT version FROM campaign") == 2  # the trigger counts
    for sql in ("UPDATE campaign_event SET event = 'updated'", "DELETE FROM campaign_event",
                "DELETE FROM campaign"):
        with pytest.raises(asyncpg.RaiseError):
            await conn.execute(sql)
    events = await conn.fetch("SELECT event, version FROM campaign_event ORDER BY id")
    assert [tuple(e) for e in events] == [("created", 1), ("paused", 2)]
    # Usage set by hand has no reservations behind it: `db check` (at teardown) would say so.
    await conn.execute("UPDATE campaign SET budget_used_rial = 0")


def test_demo_seeds_its_campaigns_once(cli, db_url):
    assert cli("demo")[0] == 0
    rows = _query(db_url, "SELECT spec FROM campaign ORDER BY id")
    assert sorted(r.id for r in rules_from_stored(rows)) == \
        sorted(s.id for s in demo.demo_campaigns())
    before = _state(db_url)
    assert cli("demo")[1].strip() == "demo data already present"
    assert _state(db_url) == before


async def test_db_check_finds_a_change_that_left_no_event(admin_url, template_name):
    name = await create_database(admin_url, template_name)
    conn = await asyncpg.connect(db.with_database(admin_url, name))
    try:
        await add_campaign(conn)
        await conn.execute("UPDATE campaign SET status = 'paused'")
        assert await failed_checks(conn) == set()
        await conn.execute("ALTER TABLE campaign DISABLE TRIGGER campaign_log")
        await conn.execute("UPDATE campaign SET status = 'active'")
        assert await failed_checks(conn) == {CAMPAIGN_HISTORY}
    finally:
        await conn.close()
        await drop_database(admin_url, name)


async def test_a_campaign_stored_meanwhile_is_refused(db_url, conn):
    """Two writers create the same id: the second waits on the first's row, then is refused
    with a message (not a database error)."""
    await add_campaign(conn)  # network 'campaign-net'
    [spec] = parse_campaigns({"campaign": [{"id": "twin", "kind": "lottery",
                                            "network": "campaign-net",
                                            "rial_per_entry": 1}]}, "t.toml")
    other = await asyncpg.connect(db_url)
    try:
        async with conn.transaction():
            await campaign_store.store_campaigns(conn, [spec])

            async def second() -> None:
                async with other.transaction():
                    await campaign_store.store_campaigns(other, [spec])
            task = asyncio.create_task(second())
            while not await conn.fetchval(  # the second writer waits on our row lock
                    "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1",
                    other.get_server_pid()):
                assert not task.done(), task.exception()
        with pytest.raises(RegistryError, match=r"campaign 'twin' already exists$"):
            await task
    finally:
        await other.close()
    assert await conn.fetchval("SELECT count(*) FROM campaign_event WHERE campaign_id = 'twin'"
                               ) == 1
