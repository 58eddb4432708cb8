"""The window's files: byte-identical on every export, and laid out as documented."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import asyncpg
import pytest

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


ALEF, BE, SHADDA, ZWNJ = "\u0627", "\u0628", "\u0651", "\u200c"  # 2, 2, 2 and 3 bytes


@pytest.mark.parametrize(("name", "width", "fitted"), [
    ("Hyper Star", 35, "Hyper Star" + " " * 25),
    (ALEF * 17 + "x", 35, ALEF * 17 + "x"),               # exactly 35 bytes: kept whole
    (ALEF * 18, 35, ALEF * 17 + " "),                     # 36 bytes: the 18th letter goes
    (ALEF * 17 + ZWNJ + BE, 35, ALEF * 17 + " "),         # the 3-byte joiner does not fit
    (ALEF * 16 + ZWNJ + BE, 35, ALEF * 16 + "   "),       # it fits, but ends the name: cut
    (ALEF * 16 + BE + SHADDA, 35, ALEF * 16 + "   "),     # no letter without its mark
    (ALEF * 15 + BE + SHADDA, 35, ALEF * 15 + BE + SHADDA + " "),  # 34 bytes: all fits
    ("Hyper\r\nStar", 12, "Hyper  Star "),                # a line break would split a record
    ("آب", 3, "آ "),
])
def test_a_name_fits_its_byte_width(name: str, width: int, fitted: str) -> None:
    out = files.fit_utf8(name, width)
    assert out == fitted
    assert len(out.encode("utf-8")) == width


# Persian names at the 35-byte bound of the batch's name field (a Persian letter or digit
# is two bytes of UTF-8, a ZWNJ three): 19 characters in exactly 35 bytes; and 61 bytes,
# cut inside a word (its 18th character would end at byte 36).
HYPER = "هایپر استار تهران ۱"
BARBER = "آرایشگاه مردانه علی‌آقا شعبه ونک"


async def test_persian_names_keep_the_batch_byte_exact(conn: asyncpg.Connection,
                                                       tmp_path: Path) -> None:
    await record_day(conn)
    names = {"hyper": HYPER, "barber": BARBER}
    for code, name in names.items():
        await conn.execute("UPDATE merchant SET name = $1 WHERE code = $2", name, code)
    summary = await runner.run(conn, SETTINGS, CUTOFF_1 + timedelta(minutes=5),
                               cutoff_at=CUTOFF_1)
    first = await files.export(conn, summary.window_id, tmp_path / "a")
    second = await files.export(conn, summary.window_id, tmp_path / "b")
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]
    w = summary.window_id
    raw = (tmp_path / "a" / f"payouts-W{w}.txt").read_bytes()
    records = raw.split(b"\r\n")
    assert records[-1] == b"" and [len(r) for r in records[:-1]] == [100] * 4
    # The name is the last 35 bytes of a detail record, each a whole UTF-8 string.
    fields = [r[65:].decode("utf-8") for r in records[1:3]]
    assert len(HYPER) == 19 and fields[0] == HYPER  # 35 bytes: no padding, nothing cut
    assert fields[1] == "آرایشگاه مردانه عل "  # 34 bytes and a space
    csv_text = (tmp_path / "a" / f"payouts-W{w}.csv").read_text(encoding="utf-8")
    assert BARBER in csv_text and HYPER in csv_text  # the CSV keeps whole names
