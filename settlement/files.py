"""A settled window's files: payouts (CSV and fixed-width bank batch), a statement per
merchant and the network summary.

Every file is built from the database rows of the window alone, in a fixed order, with no
clock reading, so the same window always gives byte-identical files. Each file is written
to a temporary name and renamed into place: a crash mid-export leaves the previous file or
none, never half of one. Dates are Jalali, Tehran time. Layouts: docs/settlement.md.

The bank batch is fixed width in bytes, not characters: a bank's parser cuts records and
fields at byte offsets, and a Persian letter is two bytes of UTF-8 (a ZWNJ three). The
merchant name, the one field that is not ASCII, is cut to its byte width on a character
boundary (`fit_utf8`) and padded with spaces to exactly that width.
"""

from __future__ import annotations

import csv
import io
import os
import unicodedata
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path

import asyncpg

from settlement.calendar import TEHRAN
from settlement.positions import COMPONENTS
from settlement.windows import SETTLED, WindowError, state, window_ref
from switch.jalali import to_jalali

RECORD_BYTES = 100  # every fixed-width record, before the CRLF, in bytes of UTF-8
NAME_BYTES = 35
_JOINERS = "\u200c\u200d"  # ZWNJ, ZWJ: meaningless at the end of a cut name


def jalali_time(instant: datetime) -> str:
    local = instant.astimezone(TEHRAN)
    return f"{to_jalali(local.date())} {local:%H:%M:%S}"


def _pad(record: str) -> str:
    size = len(record.encode("utf-8"))
    assert size <= RECORD_BYTES, record
    return record + " " * (RECORD_BYTES - size) + "\r\n"


def _is_mark(char: str) -> bool:
    return unicodedata.category(char) in ("Mn", "Me")  # drawn on the letter before it


def fit_utf8(text: str, width: int) -> str:
    """`text` in exactly `width` bytes of UTF-8: cut on a character boundary, padded with
    spaces. A line break or other control character becomes a space (it would split the
    record); a cut never leaves a letter without its marks (a shadda, a hamza above) nor
    ends on a joiner."""
    text = "".join(" " if unicodedata.category(c) in ("Cc", "Zl", "Zp") else c for c in text)
    size = 0
    for i, char in enumerate(text):
        size += len(char.encode("utf-8"))
        if size > width:
            kept = text[:i]
            if _is_mark(char):  # the letter's marks do not all fit: drop the letter too
                while kept and _is_mark(kept[-1]):
                    kept = kept[:-1]
                kept = kept[:-1]
            text = kept.rstrip(_JOINERS)
            break
    return text + " " * (width - len(text.encode("utf-8")))


def payout_csv(payouts: Sequence[asyncpg.Record], cutoff: str) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["reference", "sheba", "amount_rial", "name", "merchant", "cutoff"])
    for p in payouts:
        writer.writerow([p["reference"], p["sheba"], p["amount_rial"], p["name"], p["code"],
                         cutoff])
    return out.getvalue()


def payout_batch(window_id: int, cutoff_at: datetime,
                 payouts: Sequence[asyncpg.Record]) -> str:
    """Header, one detail record per payout, trailer (docs/settlement.md)."""
    total = sum(p["amount_rial"] for p in payouts)
    day = to_jalali(cutoff_at.astimezone(TEHRAN).date())
    lines = [_pad(f"H{window_ref(window_id):<20}{day.year:04d}{day.month:02d}{day.day:02d}"
                  f"{len(payouts):08d}{total:018d}")]
    for p in payouts:
        lines.append(_pad(f"D{p['sheba']}{p['amount_rial']:018d}{p['reference']:<20}"
                          f"{fit_utf8(p['name'], NAME_BYTES)}"))
    lines.append(_pad(f"T{len(payouts):08d}{total:018d}"))
    return "".join(lines)


def statement(window_id: int, cutoff: str, pos: asyncpg.Record,
              txns: Sequence[asyncpg.Record]) -> str:
    lines = [f"Statement of {pos['name']} ({pos['code']}), settlement window {window_id}",
             f"Sheba: {pos['sheba']}", f"Cut-off: {cutoff} (Tehran)", "",
             f"{'brought forward':<20}{pos['brought_forward_rial']:>20,}"]
    lines += [f"{c.replace('_', ' '):<20}{pos[f'{c}_rial']:>20,}" for c in COMPONENTS]
    lines += [f"{'net':<20}{pos['net_rial']:>20,}",
              f"{'paid':<20}{pos['payout_rial']:>20,}",
              f"{'carried forward':<20}{pos['carried_forward_rial']:>20,}", "",
              f"Transactions ({len(txns)}):"]
    lines += [f"{t['rrn']}  {jalali_time(t['confirmed_at'])}  {t['kind']:<16}"
              f"{t['amount_rial']:>16,}" for t in txns]
    return "\n".join(lines) + "\n"


def network_summary(window_id: int, cutoff: str, positions: Sequence[asyncpg.Record],
                    moves: Sequence[asyncpg.Record]) -> str:
    lines = [f"Settlement window {window_id}, cut-off {cutoff} (Tehran)", ""]
    networks = sorted({p["network"] for p in positions})
    for network in networks:
        rows = [p for p in positions if p["network"] == network]
        lines.append(f"Network {network}: {len(rows)} merchant(s), "
                     f"{sum(p['txn_count'] for p in rows)} transaction(s)")
        for column in ("brought_forward", *COMPONENTS, "net", "payout", "carried_forward"):
            total = sum(p[f"{column}_rial"] for p in rows)
            lines.append(f"  {column.replace('_', ' '):<20}{total:>20,}")
        lines.append("")
    lines.append(f"Store-credit netting transfers ({len(moves)}):")
    lines += [f"  {m['network']}: {m['payer'] or 'network'} -> {m['payee'] or 'network'} "
              f"{m['amount_rial']:,}" for m in moves]
    return "\n".join(lines) + "\n"


def _write(path: Path, text: str, fault: Callable[[str], None]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    data = text.encode("utf-8")
    with tmp.open("wb") as fh:
        fh.write(data[: len(data) // 2])
        fault("mid_export")
        fh.write(data[len(data) // 2:])
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


async def export(conn: asyncpg.Connection, window_id: int, out_dir: Path,
                 fault: Callable[[str], None] = lambda step: None) -> list[Path]:
    """Write the window's files into `out_dir`; their paths, in writing order."""
    if await state(conn, window_id) != SETTLED:
        raise WindowError(f"window {window_id} is not SETTLED: nothing to export")
    cutoff_at: datetime = await conn.fetchval(
        "SELECT cutoff_at FROM settlement_window WHERE id = $1", window_id)
    cutoff = jalali_time(cutoff_at)
    payouts = await conn.fetch(
        """SELECT p.reference, p.sheba, p.amount_rial, p.name, m.code
           FROM settlement_payout p JOIN merchant m ON m.id = p.merchant_id
           WHERE p.window_id = $1 ORDER BY p.reference""", window_id)
    positions = await conn.fetch(
        """SELECT p.*, m.code, m.name, m.sheba, coalesce(n.code, '-') AS network
           FROM settlement_position p JOIN merchant m ON m.id = p.merchant_id
           LEFT JOIN store_network n ON n.id = m.network_id
           WHERE p.window_id = $1 ORDER BY m.code""", window_id)
    moves = await conn.fetch(
        """SELECT n.code AS network, f.code AS payer, t.code AS payee, c.amount_rial
           FROM settlement_credit_transfer c JOIN store_network n ON n.id = c.network_id
           LEFT JOIN merchant f ON f.id = c.from_merchant_id
           LEFT JOIN merchant t ON t.id = c.to_merchant_id
           WHERE c.window_id = $1 ORDER BY c.seq""", window_id)
    files = {f"payouts-W{window_id}.csv": payout_csv(payouts, cutoff),
             f"payouts-W{window_id}.txt": payout_batch(window_id, cutoff_at, payouts),
             f"summary-W{window_id}.txt": network_summary(window_id, cutoff, positions, moves)}
    txns = await conn.fetch(
        """SELECT x.merchant_id, x.rrn, x.kind, x.amount_rial, x.confirmed_at
           FROM settlement_item i JOIN txn x ON x.id = i.txn_id
           WHERE i.window_id = $1 ORDER BY x.merchant_id, x.confirmed_at, x.rrn""", window_id)
    by_merchant: dict[int, list[asyncpg.Record]] = {}
    for t in txns:
        by_merchant.setdefault(t["merchant_id"], []).append(t)
    for pos in positions:
        files[f"statement-W{window_id}-{pos['code']}.txt"] = statement(
            window_id, cutoff, pos, by_merchant.get(pos["merchant_id"], []))
    return write_all(out_dir, files, fault)


def write_all(out_dir: Path, files: dict[str, str], fault: Callable[[str], None]) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in files.items():
        _write(out_dir / name, text, fault)
        written.append(out_dir / name)
    return written
