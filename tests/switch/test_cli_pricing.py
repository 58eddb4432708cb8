"""`loyalty admin quote` and `loyalty admin card history` on the demo data, in process: the
breakdown, nothing changed by a quote, PANs never printed whole, bad input refused (exit 2).
Quotes with campaigns are in tests/e2e/test_pricing.py."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import asyncpg
import pytest

from switch import demo, keys
from switch.cli import main
from switch.cli_pricing import history_lines, quote_lines
from switch.pricing import Quote

TABLES = ("txn", "request_log", "ledger_transfer", "ledger_entry", "ledger_lot",
          "ledger_account")


@pytest.fixture
def demo_cli(db_url, tmp_path, monkeypatch, capsys):
    key_file = tmp_path / "keys.json"
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("LOYALTY_KEY_FILE", str(key_file))

    async def seed() -> None:
        conn = await asyncpg.connect(db_url)
        try:
            async with conn.transaction():
                await demo.seed(conn, keys.load_or_create(key_file), key_file)
        finally:
            await conn.close()
    asyncio.run(seed())

    def run(*argv: str) -> tuple[int, str, str]:
        try:
            code = main(list(argv))
        except SystemExit as exc:  # argparse refused an argument
            code = int(exc.code or 0)
        out = capsys.readouterr()
        return code, out.out, out.err
    return run


def _snapshot(db_url: str) -> dict[str, object]:
    async def read() -> dict[str, object]:
        conn = await asyncpg.connect(db_url)
        try:
            counts = {t: await conn.fetchval(f"SELECT count(*) FROM {t}") for t in TABLES}
            totals = await conn.fetch(
                "SELECT id, debits_pending, debits_posted, credits_pending, credits_posted "
                "FROM ledger_account ORDER BY id")
            return {**counts, "totals": [tuple(r) for r in totals]}
        finally:
            await conn.close()
    return asyncio.run(read())


def test_quote_at_the_demo_cafe_changes_nothing(demo_cli, db_url):
    pan = demo.demo_club_pan(3)
    before = _snapshot(db_url)
    code, out, err = demo_cli("admin", "quote", "--terminal", "CAFE0001", "--card", pan,
                              "--amount", "200000", "--at", "2026-03-21T10:00")
    assert code == 0, err
    assert _snapshot(db_url) == before
    assert "1405/01/01 10:00 Tehran" in out  # Nowruz 1405, as the merchant reads it
    assert "payable                  200,000 rial" in out
    assert "network fee                3,000 rial" in out  # the café's 1.5 %
    assert "stamps                     1 of 10  cafe-lale-stamps" in out  # the first visit
    assert "rules fired       cafe-lale-stamps" in out
    assert pan not in out + err and f"{pan[:6]}******{pan[-4:]}" in out


def test_quote_at_the_demo_hypermarket_stacks_the_bank_the_cashback_and_points(demo_cli):
    """Member 0 linked a Melli card: Melli's 10 % (its cap 200,000), then the hypermarket's
    2 % cashback and its points, doubled for groceries (5411)."""
    code, out, err = demo_cli("admin", "quote", "--terminal", "HYPR0001", "--card",
                              demo.demo_club_pan(0), "--amount", "1000000",
                              "--categories", "5411", "--at", "2026-03-21T10:00")
    assert code == 0, err
    assert "-100,000 rial  bank-melli-10 (sponsor melli)" in out
    assert "payable                  900,000 rial" in out
    assert "network fee                7,700 rial" in out  # 0.8 % + 500
    assert "18,000 rial  hyper-setareh-cashback (merchant, expires 1405/01/31 10:00)" in out
    assert "180 pts   hyper-setareh-points (merchant" in out


def test_quote_of_a_bank_purchase_charges_shaparak(demo_cli):
    code, out, _ = demo_cli("admin", "quote", "--terminal", "BARB0001",
                            "--bank-pan", demo.demo_bank_pan(5), "--amount", "100000")
    assert code == 0
    assert "Shaparak fee               1,200 rial" in out
    assert "network fee                2,000 rial" in out  # the barber's 2 %, minimum 2,000


@pytest.mark.parametrize(("argv", "message"), [
    (("--terminal", "NOPE0001", "--card", demo.demo_club_pan(1), "--amount", "10"),
     "no terminal 'NOPE0001'"),
    (("--terminal", "CAFE0001", "--card", demo.demo_club_pan(demo.MEMBERS), "--amount", "10"),
     "no club card 990100******"),
    (("--terminal", "CAFE0001", "--card", "1234", "--amount", "10"),
     "a card number is 16 to 19 digits"),
    (("--terminal", "CAFE0001", "--card", demo.demo_club_pan(1), "--amount", "0"),
     "is not a positive whole number of rials"),
    (("--terminal", "CAFE0001", "--card", demo.demo_club_pan(1), "--amount", "10",
      "--at", "yesterday"), "is not an ISO 8601 time"),
])
def test_quote_refuses_bad_input_with_exit_2(demo_cli, db_url, argv, message):
    before = _snapshot(db_url)
    code, _, err = demo_cli("admin", "quote", *argv)
    assert code == 2
    assert message in err
    assert _snapshot(db_url) == before


def test_card_history_lists_demo_grants_masked(demo_cli):
    pan = demo.demo_club_pan(0)  # member 0 holds café credit, network credit and points
    code, out, err = demo_cli("admin", "card", "history", pan)
    assert code == 0, err
    assert pan not in out
    assert out.count("gift_credit") == 2
    assert out.count("demo_points") == 1
    code, _, err = demo_cli("admin", "card", "history", demo.demo_club_pan(demo.MEMBERS))
    assert code == 2
    assert "no club card" in err


def test_quote_lines_name_each_rule_and_funder():
    quote = Quote(amount=100_000, discount=15_000, payable=85_000, network_fee=1_275,
                  shaparak_fee=1_200, cashback=850, points=8)
    grants = [
        {"rule": "melli", "effect": "discount", "funder": "sponsor", "sponsor": "melli",
         "amount": 10_000, "expires_at": None},
        {"rule": "own", "effect": "discount", "funder": "merchant", "sponsor": None,
         "amount": 5_000, "expires_at": None},
        {"rule": "back", "effect": "cashback", "funder": "network", "sponsor": None,
         "amount": 850, "expires_at": "2026-04-20T10:00:00+03:30"},
        {"rule": "pts", "effect": "points", "funder": "network", "sponsor": None,
         "amount": 8, "expires_at": None},
    ]
    lines = quote_lines(quote, {"grants": grants, "fired": ["melli", "own", "back", "pts"],
                                "stamps": [{"rule": "coffee", "stamps": 0, "every": 5,
                                            "free_rial": 60_000}], "lottery": 0})
    text = "\n".join(lines)
    assert "-10,000 rial  melli (sponsor melli)" in text
    assert "-5,000 rial  own (merchant)" in text
    assert "850 rial  back (network, expires 1405/01/31 10:00)" in text
    assert "8 pts   pts (network)" in text
    assert "this visit free up to 60,000 rial" in text
    assert lines[-1] == "rules fired       melli, own, back, pts"


def test_history_lines_show_jalali_dates_and_signed_amounts():
    rows = [{"ref": "000000000007", "code": "cashback", "kind": "card_credit", "delta": 850,
             "at": datetime(2026, 3, 21, 6, 30, tzinfo=UTC), "merchant": "Café Laleh",
             "fired": '["back"]'},
            {"ref": "lot:3", "code": "lot_expiry", "kind": "card_points", "delta": -8,
             "at": datetime(2026, 3, 22, 6, 30, tzinfo=UTC), "merchant": None, "fired": None}]
    lines = history_lines(rows)
    assert lines[1].startswith("1405/01/01  Café Laleh")
    assert "+850      +0  back" in lines[1]
    assert lines[2].rstrip().endswith("+0      -8")
    assert history_lines([])[-1] == "(nothing earned or spent yet)"


def test_history_lines_never_cut_a_code_merchant_or_reference():
    """The columns are as wide as their widest cell: a clawback's code (17 characters, cut
    to `cashback_clawbac` when the column was 16 wide), a long merchant name and a lot
    reference all print whole, and the amounts stay aligned under their headers."""
    rows = [{"ref": "000000000042", "code": "cashback_clawback", "kind": "card_credit",
             "delta": -1_109, "at": datetime(2026, 3, 21, 6, 30, tzinfo=UTC),
             "merchant": "Setareh Hypermarket, Vanak Branch", "fired": None},
            {"ref": "lot:12345678901234", "code": "top_up_bonus_clawback",
             "kind": "card_points", "delta": -1_234_567,
             "at": datetime(2026, 3, 22, 6, 30, tzinfo=UTC), "merchant": None, "fired": None}]
    lines = history_lines(rows)
    assert "Setareh Hypermarket, Vanak Branch  000000000042" in lines[1]
    assert " cashback_clawback " in lines[1]
    assert "lot:12345678901234  top_up_bonus_clawback" in lines[2]
    assert lines[0].endswith("credit      points  rules")
    assert len(lines[1]) == len(lines[2]) == len(lines[0]) - len("  rules")
    assert lines[1].endswith("-1,109          +0")
    assert lines[2].endswith("+0  -1,234,567")

