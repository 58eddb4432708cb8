"""The window's files: byte-identical on every export, and laid out as documented."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import asyncpg

from settlement import files, runner
from tests.settlement.support import sheba
from tests.settlement.test_day import CUTOFF_1, SETTINGS, record_day


async def test_files_are_byte_identical_and_laid_out(conn: asyncpg.Connection,
                                                     tmp_path: Path) -> None:
    await record_day(conn)
    summary = await runner.run(conn, SETTINGS, CUTOFF_1 + timedelta(minutes=5),
                               cutoff_at=CUTOFF_1)
    first = await files.export(conn, summary.window_id, tmp_path / "a")
    second = await files.export(conn, summary.window_id, tmp_path / "b")
    assert [p.name for p in first] == [p.name for p in second]
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]
    names = sorted(p.name for p in first)
    w = summary.window_id
    assert names == [f"payouts-W{w}.csv", f"payouts-W{w}.txt", f"statement-W{w}-barber.txt",
                     f"statement-W{w}-cafe.txt", f"statement-W{w}-hyper.txt",
                     f"summary-W{w}.txt"]
    out = tmp_path / "a"
    # Merchants 2 (hypermarket) and 3 (barber) are paid; cut-off 1405/09/03 14:00 Tehran.
    assert (out / f"payouts-W{w}.csv").read_text() == (
        "reference,sheba,amount_rial,name,merchant,cutoff\n"
        f"W{w:09d}M000000002,{sheba(2)},1884800,Hyper Star,hyper,1405/09/03 14:00:00\n"
        f"W{w:09d}M000000003,{sheba(3)},798000,Barber Ali,barber,1405/09/03 14:00:00\n")
    batch = (out / f"payouts-W{w}.txt").read_bytes().split(b"\r\n")
    assert batch[-1] == b""
    assert [len(line) for line in batch[:-1]] == [100] * 4
    assert batch[0] == (f"H{'settlement:W' + str(w):<20}14050903" + "00000002"
                        + f"{2_682_800:018d}").ljust(100).encode()
    assert batch[1] == (f"D{sheba(2)}{1_884_800:018d}W{w:09d}M000000002"
                        + "Hyper Star".ljust(35)).encode()
    assert batch[3] == ("T00000002" + f"{2_682_800:018d}").ljust(100).encode()
    cafe = (out / f"statement-W{w}-cafe.txt").read_text()
    assert "carried forward" + "-151,370".rjust(25) in cafe
    assert "Transactions (4):" in cafe
    summary_text = (out / f"summary-W{w}.txt").read_text()
    assert "tehran: network -> hyper 150,000" in summary_text
    assert "tehran: cafe -> hyper 50,000" in summary_text
