"""`loyalty admin points-value set/show` and `loyalty admin card redeem-points`, in process,
against a fresh database: what they print, their settings at their bounds, and refusals
that exit 2 and store nothing."""

import re

import pytest

from tests.switch.test_cli import _find, _setup_merchant
from tests.switch.test_cli_campaigns import _query

# Every row a points command may write.
TABLES = ("points_value", "points_redemption", "ledger_account", "ledger_transfer",
          "ledger_entry", "ledger_lot")


def _state(db_url: str) -> list[object]:
    return [_query(db_url, f"SELECT * FROM {t} ORDER BY id") for t in TABLES]


def _refused(cli, *argv: str) -> str:
    """Run a command that must be refused with exit 2; its one-line message."""
    try:
        code, out, err = cli(*argv)
    except SystemExit as exc:  # argparse refuses before our code runs
        code, out, err = exc.code, "", "argparse"
    assert (code, out) == (2, "")
    assert len(err.strip().splitlines()) == 1
    return str(err)


@pytest.fixture
def card(cli, db_url) -> tuple[int, str]:
    """Card 1 of the mall network, with 100 of the network's points (never expiring)."""
    _setup_merchant(cli)
    cli("admin", "member", "add", "--network", "mall", "--first-name", "A", "--last-name", "B",
        "--mobile", "09121234567")
    code, out, _ = cli("admin", "card", "issue", "--member", "1", "--expiry", "3012")
    assert code == 0
    _query(db_url, """SELECT switch_transfer('PTS', 'points', 'grant',
                        ledger_account_ensure('points_issued', NULL, NULL, 1),
                        ledger_account_ensure('card_points', 1, NULL, NULL), 100)""")
    return 1, _find(r"PAN: (\d+)", out)


def test_points_value_set_and_show(cli, db_url, monkeypatch):
    _setup_merchant(cli)
    assert cli("admin", "points-value", "set", "--network", "mall", "--rial-per-point",
               "50") == (0, "a point of network mall is worth 50 rial\n", "")
    assert cli("admin", "points-value", "set", "--merchant", "cafe", "--rial-per-point",
               "1200")[0] == 0
    assert cli("admin", "points-value", "set", "--network", "mall", "--rial-per-point",
               "60")[0] == 0  # a new value replaces the old
    code, out, _ = cli("admin", "points-value", "show")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["issuer", "code", "rial/point", "set", "on"]
    assert [line.split()[:3] for line in lines[1:]] == [["network", "mall", "60"],
                                                        ["merchant", "cafe", "1,200"]]
    # points_value_max_rial at its bound: accepted, one more refused.
    monkeypatch.setenv("LOYALTY_POINTS_VALUE_MAX_RIAL", "70")
    assert cli("admin", "points-value", "set", "--network", "mall", "--rial-per-point",
               "70")[0] == 0
    before = _state(db_url)
    assert "must be 1 to 70 (points_value_max_rial)" in _refused(
        cli, "admin", "points-value", "set", "--network", "mall", "--rial-per-point", "71")
    assert "no merchant 'nowhere'" in _refused(
        cli, "admin", "points-value", "set", "--merchant", "nowhere", "--rial-per-point", "5")
    for bad in (("--network", "mall", "--rial-per-point", "0"),
                ("--network", "mall", "--rial-per-point", "2.5"),
                ("--rial-per-point", "5"),
                ("--network", "mall", "--merchant", "cafe", "--rial-per-point", "5")):
        _refused(cli, "admin", "points-value", "set", *bad)
    assert _state(db_url) == before


def test_redeem_points_prints_the_credit_and_is_safe_to_retry(cli, db_url, card):
    card_id, pan = card
    before = _state(db_url)
    assert "no points value is set for network mall" in _refused(
        cli, "admin", "card", "redeem-points", "--card", str(card_id), "--points", "10")
    assert _state(db_url) == before
    cli("admin", "points-value", "set", "--network", "mall", "--rial-per-point", "50")
    argv = ("admin", "card", "redeem-points", "--card", str(card_id), "--points", "30",
            "--request-id", "call-7")
    code, out, err = cli(*argv)
    assert (code, err) == (0, "")
    assert [re.sub(r" +", " ", line) for line in out.splitlines()] == [
        f"card {card_id}: 30 points of network mall redeemed for 1,500 rial of its store "
        "credit (50 rial a point; redemption 1)",
        " 1,500 rial never expires",
        "points of network mall left to redeem: 70"]
    rows = _state(db_url)
    code, out, _ = cli(*argv)
    assert code == 0
    assert out.startswith(f"card {card_id}: 30 points of network mall was already redeemed")
    assert _state(db_url) == rows
    _, out, _ = cli("admin", "card", "history", pan)
    assert [line.split()[-2:] for line in out.splitlines() if "points_redeem" in line] == [
        ["+0", "-30"], ["+1,500", "+0"]]


def test_redeem_points_refusals_exit_2_and_store_nothing(cli, db_url, card, monkeypatch):
    card_id, _ = card
    cli("admin", "points-value", "set", "--network", "mall", "--rial-per-point", "50")
    cli("admin", "card", "redeem-points", "--card", "1", "--points", "5", "--request-id", "r1")
    # points_redeem_max_rial at its bound: 40 points of 50 rial make 2,000.
    monkeypatch.setenv("LOYALTY_POINTS_REDEEM_MAX_RIAL", "2000")
    before = _state(db_url)
    redeem = ("admin", "card", "redeem-points", "--card")
    for argv, message in [
        ((*redeem, "1", "--points", "41"),
         "--points 41: worth 2,050 rial, above the 2,000 one redemption may credit "
         "(points_redeem_max_rial)"),
        ((*redeem, "1", "--points", "96"),
         f"--points 96: card {card_id} has 95 points of network mall that can be redeemed"),
        ((*redeem, "1", "--points", "6", "--request-id", "r1"),
         "--request-id 'r1' was used for another redemption"),
        ((*redeem, "1", "--points", "1", "--request-id", "x" * 65),
         "--request-id: 1 to 64 printable ASCII characters"),
        ((*redeem, "1", "--points", "1", "--merchant", "cafe"),
         "no points value is set for merchant cafe"),
        ((*redeem, "99", "--points", "1"), "no card with id 99"),
    ]:
        assert message in _refused(cli, *argv)
    for bad in (("1", "--points", "0"), ("1", "--points", "-3"), ("x", "--points", "1"),
                ("1",), ("1", "--points", "1", "--merchant", "cafe", "--network", "mall")):
        _refused(cli, *redeem, *bad)
    assert _state(db_url) == before
    assert cli(*redeem, "1", "--points", "40")[0] == 0
    assert cli("admin", "card", "block", "1")[0] == 0
    before = _state(db_url)
    assert "card 1 is blocked" in _refused(cli, *redeem, "1", "--points", "1")
    assert _state(db_url) == before
