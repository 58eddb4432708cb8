"""The admin CLI, in process, against a fresh database: good paths and refused input."""

import argparse
import asyncio
import json
import re

import asyncpg
import pytest

from protocol.dukpt import derive_initial_key
from switch import cards
from switch.cli import build_parser, main

TABLES = ("store_network", "merchant", "bdk", "terminal", "member", "card", "bank_card",
          "ledger_account", "ledger_transfer", "ledger_entry")
SHEBA = "IR820540102680020817909002"


def _find(pattern: str, text: str) -> str:
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not in output"
    return match[1]


def _counts(db_url: str) -> dict[str, int]:
    async def count() -> dict[str, int]:
        conn = await asyncpg.connect(db_url)
        try:
            return {t: await conn.fetchval(f"SELECT count(*) FROM {t}") for t in TABLES}
        finally:
            await conn.close()
    return asyncio.run(count())


def _setup_merchant(cli) -> str:
    code, out, _ = cli("admin", "bdk", "generate", "--label", "test")
    assert code == 0
    bdk_id = _find(r"BDK ([0-9A-F]{8})", out)
    assert cli("admin", "network", "add", "mall", "--name", "Mall", "--bin", "990200")[0] == 0
    assert cli("admin", "merchant", "add", "cafe", "--name", "Cafe", "--trade", "cafe",
               "--sheba", SHEBA, "--network", "mall", "--fee-bp", "150")[0] == 0
    return bdk_id


def test_registry_flow(cli, db_url):
    bdk_id = _setup_merchant(cli)
    code, out, _ = cli("admin", "terminal", "add", "CAFE0001", "--merchant", "cafe",
                       "--bdk", bdk_id)
    assert code == 0
    ik_id = _find(r"initial key ID: ([0-9A-F]{16})", out)
    printed_key = _find(r"initial key: +([0-9A-F]{32})", out)
    bdk = bytes.fromhex(json.loads(cli.key_file.read_text())["bdks"][bdk_id])
    assert bytes.fromhex(printed_key) == derive_initial_key(bdk, bytes.fromhex(ik_id))
    assert ik_id.startswith(bdk_id)

    code, out, _ = cli("admin", "member", "add", "--network", "mall", "--first-name", "Sara",
                       "--last-name", "Ahmadi", "--mobile", "09121234567", "--tag", "vip")
    assert code == 0
    member_id = _find(r"member (\d+)", out)
    code, out, _ = cli("admin", "card", "issue", "--member", member_id, "--expiry", "3012")
    assert code == 0
    pan = _find(r"PAN: (\d{16})", out)
    card_id = _find(r"card (\d+) issued", out)
    assert pan.startswith("990200")
    assert cards.luhn_is_valid(pan)

    assert cli("admin", "topup", card_id, "250000")[0] == 0
    code, out, _ = cli("admin", "card", "list")
    assert pan not in out  # listings show the masked PAN only
    assert f"990200******{pan[-4:]}" in out
    assert "250000" in out

    assert cli("admin", "card", "block", card_id)[0] == 0
    assert cli("admin", "card", "block", card_id)[0] == 2  # already blocked
    assert cli("admin", "card", "unblock", card_id)[0] == 0
    code, out, _ = cli("admin", "card", "renew", card_id, "--expiry", "3112")
    assert code == 0
    assert _find(r"PAN: (\d{16})", out) != pan
    assert cli("admin", "bank-card", "link", "--member", member_id,
               "--pan", "6037701689095443")[0] == 0


@pytest.mark.parametrize("argv", [
    ("admin", "network", "add", "mall2", "--name", "M", "--bin", "99020"),        # short BIN
    ("admin", "network", "add", "mall", "--name", "M", "--bin", "990201"),        # dup code
    ("admin", "network", "add", "Bad Code", "--name", "M", "--bin", "990201"),
    ("admin", "merchant", "add", "shop", "--name", "S", "--trade", "t", "--sheba",
     "IR012345678901234567890123"),                                               # bad Sheba
    ("admin", "merchant", "add", "shop", "--name", "S", "--trade", "t", "--sheba", SHEBA,
     "--network", "nowhere"),                                                     # no network
    ("admin", "merchant", "add", "shop", "--name", "S", "--trade", "t", "--sheba", SHEBA,
     "--fee-bp", "10001"),
    ("admin", "merchant", "add", "shop", "--name", "S", "--trade", "t", "--sheba", SHEBA,
     "--fee-min", "10", "--fee-max", "5"),
    ("admin", "merchant", "add", "cafe", "--name", "S", "--trade", "t", "--sheba", SHEBA),
    ("admin", "terminal", "add", "cafe01", "--merchant", "cafe", "--bdk", "00000000"),
    ("admin", "terminal", "add", "CAFE0001", "--merchant", "nobody", "--bdk", "00000000"),
    ("admin", "terminal", "add", "CAFE0001", "--merchant", "cafe", "--bdk", "0000000Z"),
    ("admin", "member", "add", "--network", "mall", "--first-name", "A", "--last-name", "B",
     "--mobile", "12345"),
    ("admin", "member", "add", "--network", "mall", "--first-name", "A", "--last-name", "B",
     "--mobile", "09121234567", "--birth-date", "1990-13-01"),
    ("admin", "card", "issue", "--member", "999", "--expiry", "3012"),
    ("admin", "card", "issue", "--member", "1", "--expiry", "3013"),
    ("admin", "card", "block", "999"),
    ("admin", "topup", "999", "1000"),
    ("admin", "topup", "1", "-5"),
    ("admin", "topup", "1", "12.5"),
    ("admin", "bank-card", "link", "--member", "1", "--pan", "6219861034529008"),  # Luhn
    ("admin", "bdk", "generate", "--id", "xyz"),
    ("admin", "frobnicate"),
    ("serve-everything",),
])
def test_bad_input_exits_2_and_writes_nothing(cli, db_url, argv):
    _setup_merchant(cli)
    before = _counts(db_url)
    try:
        code, _, err = cli(*argv)
    except SystemExit as exc:  # argparse refuses before our code runs
        code, err = exc.code, "argparse"
    assert code == 2
    assert err
    assert _counts(db_url) == before


def test_club_card_cannot_be_linked_as_bank_card(cli, db_url):
    _setup_merchant(cli)
    cli("admin", "member", "add", "--network", "mall", "--first-name", "A", "--last-name", "B",
        "--mobile", "09121234567")
    club_pan = cards.new_club_pan("990200")
    before = _counts(db_url)
    code, _, err = cli("admin", "bank-card", "link", "--member", "1", "--pan", club_pan)
    assert code == 2
    assert "club card" in err
    assert club_pan not in err
    assert _counts(db_url) == before


def test_demo_is_idempotent_and_checks_clean(cli, db_url):
    code, out, _ = cli("demo")
    assert code == 0
    assert "100 members" in out
    after_first = _counts(db_url)
    assert cli("demo")[1].strip() == "demo data already present"
    assert _counts(db_url) == after_first
    code, out, _ = cli("db", "check")
    assert code == 0
    assert "0 violated" in out


def _all_commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()):
    yield prefix
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _all_commands(sub, (*prefix, name))


def test_every_command_has_help(capsys):
    commands = list(_all_commands(build_parser()))
    assert len(commands) > 25
    for argv in commands:
        with pytest.raises(SystemExit) as exc:
            main([*argv, "--help"])
        assert exc.value.code == 0
        assert "usage: loyalty" in capsys.readouterr().out
