"""Kill the settlement process with SIGKILL at each fault point, run it again, and get the
same result: the hand-computed positions, one payout transfer, identical files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from settlement import files
from tests import logscan
from tests.conftest import ROOT
from tests.settlement.test_day import CUTOFF_1, record_day


def _settle(db_url: str, out: Path, fault: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOYALTY_")}
    env["DATABASE_URL"] = db_url
    if fault:
        env["LOYALTY_SETTLE_FAULT"] = fault
    return logscan.run_logged(
        [sys.executable, "-m", "switch.cli", "settle", "run", "--cutoff",
         CUTOFF_1.isoformat(), "--out", str(out)],
        name="loyalty-settle", env=env, cwd=ROOT, timeout=120)


@pytest.mark.parametrize("step", ["after_assign", "after_netting", "after_payouts",
                                  "after_commit", "mid_export"])
async def test_killed_mid_run_then_rerun_gives_the_same_result(
        db_url: str, conn: asyncpg.Connection, tmp_path: Path, step: str) -> None:
    await record_day(conn)
    out = tmp_path / "out"
    killed = _settle(db_url, out, step)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    settled = await conn.fetchval(
        "SELECT count(*) FROM settlement_window_event WHERE state = 'SETTLED'")
    # Inside the transaction nothing survives; after the commit the window is settled.
    assert settled == (1 if step in ("after_commit", "mid_export") else 0)
    rerun = _settle(db_url, out, None)
    assert rerun.returncode == 0, rerun.stderr
    # (A killed transaction may have drawn window id 1 from the sequence: ids are not reused.)
    window_id = await conn.fetchval("SELECT id FROM settlement_window")
    assert (f"window {window_id} SETTLED: 9 transaction(s), 2 payout(s) 2,682,800 rial"
            in rerun.stdout)
    assert await conn.fetchval(
        "SELECT count(*) FROM ledger_transfer WHERE code = 'payout'") == 1
    assert await conn.fetchval(
        "SELECT count(*) FROM ledger_transfer WHERE code = 'credit_netting'") == 2
    rows = await conn.fetch("SELECT merchant_id, net_rial FROM settlement_position ORDER BY 1")
    assert [r["net_rial"] for r in rows] == [-151_370, 1_884_800, 798_000]
    again = await files.export(conn, window_id, tmp_path / "again")
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in again)
    for path in again:
        assert (out / path.name).read_bytes() == path.read_bytes()
