"""`loyalty db ...` and `loyalty run`."""

from __future__ import annotations

import argparse
from typing import Any

from simulator import burst
from switch import db, dbcheck, demo, migrate
from switch.cli_context import Context
from switch.service import Switch


def add_commands(commands: Any) -> None:
    group = commands.add_parser("db", help="database: up, migrate, status, check, url, stop",
                                description="Manage the database.")
    sub = group.add_subparsers(dest="db_command", required=True, metavar="DB_COMMAND")
    for name, handler, text in (
        ("up", cmd_up, "start the embedded Postgres if needed and apply migrations"),
        ("migrate", cmd_migrate, "apply pending migrations (serialised by an advisory lock)"),
        ("status", cmd_status, "list migrations and whether each is applied"),
        ("check", cmd_check, "prove the ledger invariants; exit 1 on any violation"),
        ("url", cmd_url, "print the database URL in use"),
        ("stop", cmd_stop, "stop the embedded Postgres (no effect with DATABASE_URL)"),
    ):
        p = sub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        p.set_defaults(handler=handler)


async def cmd_up(ctx: Context, args: argparse.Namespace) -> int:
    return await cmd_migrate(ctx, args)


async def cmd_migrate(ctx: Context, args: argparse.Namespace) -> int:
    async with ctx.connection() as conn:
        applied = await migrate.migrate(conn)
    for name in applied:
        print(f"applied {name}")
    print(f"database ready ({len(applied)} migration(s) applied now)")
    return 0


async def cmd_status(ctx: Context, args: argparse.Namespace) -> int:
    async with ctx.connection() as conn:
        for name, state in await migrate.status(conn):
            print(f"{state:8} {name}")
    return 0


async def cmd_check(ctx: Context, args: argparse.Namespace) -> int:
    async with ctx.connection() as conn:
        outcomes = await dbcheck.run_checks(conn)
    print(dbcheck.report(outcomes))
    return 0 if all(o.ok for o in outcomes) else 1


async def cmd_url(ctx: Context, args: argparse.Namespace) -> int:
    print(await ctx.url())
    return 0


async def cmd_stop(ctx: Context, args: argparse.Namespace) -> int:
    if ctx.settings.database_url is not None:
        print("DATABASE_URL is set: nothing to stop")
        return 0
    stopped = db.stop_embedded(ctx.settings.data_dir)
    print("embedded Postgres stopped" if stopped else "embedded Postgres was not running")
    return 0


async def cmd_run(ctx: Context, args: argparse.Namespace) -> int:
    """The main job: database, demo data, the switch, a burst of demo traffic, keep serving."""
    print(f"database: {await ctx.url()}")
    await cmd_migrate(ctx, args)
    keys = ctx.keys(create=True)
    async with ctx.transaction() as conn:
        summary = await demo.seed(conn, keys, ctx.settings.key_file)
    print(summary)
    if await cmd_check(ctx, args) != 0:
        return 1
    switch = Switch(ctx.settings, database_url=await ctx.url(), serve_metrics=True)
    await switch.start()
    settings = ctx.settings
    print(f"switch listening on {settings.listen_host}:{switch.port}; metrics on "
          f"http://{settings.metrics_host}:{switch.metrics_port}/metrics")
    async with ctx.connection() as conn:
        terminals = await burst.demo_terminals(conn, ctx.keys(), burst.BURST_TERMINAL_SUFFIX)
    print(f"demo traffic: {burst.BURST_SECONDS:g} s of two-phase purchases from "
          f"{', '.join(t.tid for t in terminals)}", flush=True)
    report = await burst.run_burst(settings.listen_host, switch.port, terminals)
    print(report.text(), flush=True)
    if args.once:
        await switch.stop()
        return await cmd_check(ctx, args)
    print(f"serving terminals on {settings.listen_host}:{switch.port}, metrics on "
          f"http://{settings.metrics_host}:{switch.metrics_port}/metrics; stop with Ctrl-C "
          "or SIGTERM", flush=True)
    await switch.serve_until_signalled()
    return 0


async def cmd_serve(ctx: Context, args: argparse.Namespace) -> int:
    switch = Switch(ctx.settings, database_url=await ctx.url(), serve_metrics=True)
    await switch.start()
    settings = ctx.settings
    print(f"switch listening on {settings.listen_host}:{switch.port}; metrics on "
          f"http://{settings.metrics_host}:{switch.metrics_port}/metrics", flush=True)
    await switch.serve_until_signalled()
    return 0
