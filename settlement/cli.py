"""`loyalty settle ...`: close, run, show and export windows; holidays; the scheduler.

Bad arguments and refused steps exit 2 having written nothing (each step is one database
transaction); a failed run exits 1 and is recorded as FAILED.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client import start_http_server

from settlement import files, holidays, metrics, scheduler, windows
from settlement.faults import fault
from switch import migrate
from switch.cli_context import CommandError, Context
from switch.jalali import JalaliDate


def _instant(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 date-time") from None
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} needs a UTC offset (e.g. +03:30 or Z)")
    return value


def _jalali(text: str) -> JalaliDate:
    try:
        year, month, day = (int(part) for part in text.split("/"))
        return JalaliDate(year, month, day)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a Jalali date YYYY/MM/DD ({exc})") from None


def _out_dir(text: str) -> Path:
    """A folder for the files: existing, or makeable (its nearest existing ancestor is a
    folder). Checked before anything runs, so `run --out` never settles and then fails."""
    path = Path(text)
    found = next(p for p in (path, *path.parents) if p.exists() or p == p.parent)
    if not found.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r}: {found} is not a folder")
    return path


def _window_id(text: str) -> int:
    if not text.isdigit() or int(text) == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a window id")
    return int(text)


def add_commands(commands: Any) -> None:
    group = commands.add_parser("settle", help="settlement windows, payouts, holidays",
                                description="Settlement: pay merchants within 24 working "
                                            "hours (docs/settlement.md).")
    sub = group.add_subparsers(dest="settle_command", required=True, metavar="ACTION")
    p = sub.add_parser("close", help="close the window of a cut-off (assign transactions)")
    p.add_argument("--cutoff", type=_instant, help="ISO 8601 with offset; default now")
    p.set_defaults(handler=cmd_close)
    p = sub.add_parser("run", help="settle a closed window, or close and settle a cut-off")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--window", type=_window_id)
    which.add_argument("--cutoff", type=_instant, help="ISO 8601 with offset")
    p.add_argument("--out", type=_out_dir, help="also export the files into this folder")
    p.set_defaults(handler=cmd_run)
    p = sub.add_parser("show", help="list windows, or show one window")
    p.add_argument("window", type=_window_id, nargs="?")
    p.set_defaults(handler=cmd_show)
    p = sub.add_parser("export", help="write a settled window's files")
    p.add_argument("window", type=_window_id)
    p.add_argument("--out", type=_out_dir, required=True)
    p.set_defaults(handler=cmd_export)
    p = sub.add_parser("schedule", help="settle at every cut-off; metrics on their own port")
    p.add_argument("--out", type=_out_dir, help="export each window's files into this folder")
    p.add_argument("--windows", type=_window_id, help="stop after this many windows")
    p.set_defaults(handler=cmd_schedule)
    hol = sub.add_parser("holiday", help="the holiday table").add_subparsers(
        dest="holiday_command", required=True, metavar="ACTION")
    p = hol.add_parser("add", help="add a holiday (Jalali date)")
    p.add_argument("day", type=_jalali, help="YYYY/MM/DD, Jalali")
    p.add_argument("--name", required=True)
    p.set_defaults(handler=cmd_holiday_add)
    p = hol.add_parser("list", help="list holidays")
    p.add_argument("--year", type=int, help="Jalali year")
    p.set_defaults(handler=cmd_holiday_list)


@contextlib.contextmanager
def _refused() -> Iterator[None]:
    """A refused step is a CommandError: exit status 2, its transaction rolled back."""
    try:
        yield
    except (windows.WindowError, holidays.HolidayError, scheduler.ScheduleError) as exc:
        raise CommandError(str(exc)) from None


def _print_summary(s: windows.Summary) -> None:
    print(f"window {s.window_id} {s.state}: {s.txn_count} transaction(s), {s.payout_count} "
          f"payout(s) {s.payout_rial:,} rial, carried forward {s.carried_forward_rial:,} "
          f"rial, paid late {s.late_count}")


async def cmd_close(ctx: Context, args: argparse.Namespace) -> int:
    now = datetime.now(UTC)
    async with ctx.transaction() as conn:
        with _refused():
            window_id = await windows.close(conn, args.cutoff or now, now, fault)
        count = await conn.fetchval(
            "SELECT count(*) FROM settlement_item WHERE window_id = $1", window_id)
    print(f"window {window_id} CLOSED: {count} transaction(s)")
    return 0


async def cmd_run(ctx: Context, args: argparse.Namespace) -> int:
    async with ctx.connection() as conn:
        await migrate.migrate(conn)
        with _refused():
            summary = await scheduler.settle_and_export(
                conn, ctx.settings, datetime.now(UTC), cutoff_at=args.cutoff,
                window_id=args.window, out_dir=args.out)
    _print_summary(summary)
    return 0


async def cmd_show(ctx: Context, args: argparse.Namespace) -> int:
    async with ctx.transaction() as conn:
        if args.window is None:
            for r in await conn.fetch(
                    """SELECT w.id, w.cutoff_at, (SELECT state FROM settlement_window_event e
                       WHERE e.window_id = w.id ORDER BY e.id DESC LIMIT 1) AS state
                       FROM settlement_window w ORDER BY w.cutoff_at"""):
                print(f"{r['id']:>6}  {files.jalali_time(r['cutoff_at'])}  {r['state']}")
            return 0
        with _refused():
            summary = await windows.summary(conn, args.window)
        _print_summary(summary)
        for r in await conn.fetch(
                """SELECT state, at, detail FROM settlement_window_event WHERE window_id = $1
                   ORDER BY id""", args.window):
            print(f"  {files.jalali_time(r['at'])}  {r['state']:<8} {r['detail']}")
        for r in await conn.fetch(
                """SELECT m.code, p.net_rial, p.payout_rial, p.carried_forward_rial
                   FROM settlement_position p JOIN merchant m ON m.id = p.merchant_id
                   WHERE p.window_id = $1 ORDER BY m.code""", args.window):
            print(f"  {r['code']:<24} net {r['net_rial']:>16,}  paid {r['payout_rial']:>16,}"
                  f"  carried {r['carried_forward_rial']:>16,}")
    return 0


async def cmd_export(ctx: Context, args: argparse.Namespace) -> int:
    async with ctx.transaction() as conn:
        with _refused():
            written = await files.export(conn, args.window, args.out, fault)
    for path in written:
        print(path)
    return 0


async def cmd_schedule(ctx: Context, args: argparse.Namespace) -> int:
    settings = ctx.settings
    async with ctx.connection() as conn:
        await migrate.migrate(conn)
        start_http_server(settings.settlement_metrics_port, settings.settlement_metrics_host,
                          registry=metrics.REGISTRY)
        print(f"settlement scheduler: cut-offs {settings.settlement_cutoffs} (Tehran); "
              f"metrics on http://{settings.settlement_metrics_host}:"
              f"{settings.settlement_metrics_port}/metrics", flush=True)
        with _refused():
            done = await scheduler.run_schedule(conn, settings, scheduler.SystemClock(),
                                                out_dir=args.out, windows_max=args.windows)
    for summary in done:
        _print_summary(summary)
    return 0


async def cmd_holiday_add(ctx: Context, args: argparse.Namespace) -> int:
    async with ctx.transaction() as conn:
        with _refused():
            await holidays.add(conn, args.day, args.name)
    print(f"holiday {args.day} ({args.day.to_gregorian()}) added: {args.name}")
    return 0


async def cmd_holiday_list(ctx: Context, args: argparse.Namespace) -> int:
    async with ctx.transaction() as conn:
        for r in await holidays.listing(conn, args.year):
            print(f"{r['jalali']}  {r['day']}  {r['source']:<8} {r['name']}")
    return 0
