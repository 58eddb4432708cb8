"""`loyalty settle ...` in process: good paths, and refused input that exits 2 and writes
nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from switch.cli import main
from tests.settlement.test_day import CUTOFF_1, record_day

Cli = Callable[..., tuple[int, str, str]]
TABLES = ("settlement_holiday", "settlement_window", "settlement_window_event",
          "settlement_item", "settlement_position", "settlement_payout", "ledger_transfer")


@pytest.fixture
def cli(db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Cli:
    monkeypatch.setenv("DATABASE_URL", db_url)

    def run(*argv: str) -> tuple[int, str, str]:
        try:
            code = main(list(argv))
        except SystemExit as exc:  # argparse refuses with exit status 2
            code = int(exc.code or 0)
        out = capsys.readouterr()
        return code, out.out, out.err
    return run


def _db(db_url: str, work: Callable[[asyncpg.Connection], object]) -> object:
    async def go() -> object:
        conn = await asyncpg.connect(db_url)
        try:
            return await work(conn)  # type: ignore[misc]
        finally:
            await conn.close()
    return asyncio.run(go())


def _counts(db_url: str) -> object:
    async def count(conn: asyncpg.Connection) -> dict[str, int]:
        return {t: await conn.fetchval(f"SELECT count(*) FROM {t}") for t in TABLES}
    return _db(db_url, count)


def test_holidays(cli: Cli, db_url: str) -> None:
    code, out, _ = cli("settle", "holiday", "list", "--year", "1405")
    assert code == 0
    assert "1405/01/01  2026-03-21  seed     Nowruz" in out
    assert len(out.splitlines()) == 10  # the ten fixed-date holidays of 1405
    assert cli("settle", "holiday", "add", "1405/02/25", "--name", "Eid al-Adha")[0] == 0
    code, out, _ = cli("settle", "holiday", "list", "--year", "1405")
    assert "1405/02/25  2026-05-15  operator Eid al-Adha" in out


@pytest.mark.parametrize(("argv", "message"), [
    (("settle", "holiday", "add", "1405/01/01", "--name", "again"), "already a holiday"),
    (("settle", "holiday", "add", "1405/13/01", "--name", "x"), "not a Jalali date"),
    (("settle", "holiday", "add", "1405/05/05", "--name", ""), "1 to 200 characters"),
    (("settle", "close", "--cutoff", "2026-11-24T10:00"), "needs a UTC offset"),
    (("settle", "close", "--cutoff", "tomorrow"), "not an ISO 8601"),
    (("settle", "close", "--cutoff", "2999-01-01T00:00Z"), "in the future"),
    (("settle", "run", "--window", "99"), "no settlement window 99"),
    (("settle", "run", "--window", "0"), "not a window id"),
    (("settle", "export", "7", "--out", "/tmp/never"), "not SETTLED"),
    (("settle", "show", "12"), "no settlement window 12"),
    (("settle", "export", "1", "--out", __file__), "is not a folder"),
    (("settle", "run", "--cutoff", "2026-11-24T10:00Z", "--out", f"{__file__}/out"),
     "is not a folder"),
])
def test_bad_input_exits_2_and_writes_nothing(cli: Cli, db_url: str, argv: tuple[str, ...],
                                              message: str) -> None:
    cli("db", "migrate")
    before = _counts(db_url)
    code, _, err = cli(*argv)
    assert code == 2
    assert message in err
    assert _counts(db_url) == before


def test_a_bad_setting_exits_2(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOYALTY_SETTLEMENT_THURSDAY", "sometimes")
    code, _, err = cli("settle", "show")
    assert code == 2
    assert "settlement_thursday" in err
    monkeypatch.setenv("LOYALTY_SETTLEMENT_THURSDAY", "none")
    monkeypatch.setenv("LOYALTY_SETTLEMENT_CUTOFFS", "10:00,25:00")
    code, _, err = cli("settle", "show")
    assert (code, "settlement_cutoffs" in err) == (2, True)


def test_close_run_show_export(cli: Cli, db_url: str, tmp_path: Path) -> None:
    _db(db_url, record_day)
    code, out, _ = cli("settle", "close", "--cutoff", CUTOFF_1.isoformat())
    assert (code, out) == (0, "window 1 CLOSED: 9 transaction(s)\n")
    code, out, _ = cli("settle", "show")
    assert (code, out) == (0, "     1  1405/09/03 14:00:00  CLOSED\n")
    code, out, _ = cli("settle", "run", "--window", "1")
    assert code == 0
    assert out.startswith("window 1 SETTLED: 9 transaction(s), 2 payout(s) 2,682,800 rial, "
                          "carried forward -151,370 rial")
    code, out, _ = cli("settle", "show", "1")
    assert code == 0
    assert "cafe                     net         -151,370" in out
    code, out, _ = cli("settle", "export", "1", "--out", str(tmp_path))
    assert code == 0
    assert len(out.splitlines()) == 6
    # Closing a later cut-off first, then an earlier one, is refused.
    later = datetime.now(UTC) - timedelta(minutes=1)
    assert cli("settle", "close", "--cutoff", later.isoformat())[0] == 0
    code, _, err = cli("settle", "close", "--cutoff", (CUTOFF_1 + timedelta(hours=1)).isoformat())
    assert (code, "already closed" in err) == (2, True)
