"""`loyalty admin terminal profile` (and `terminal add --profile`): simulator profile files.

A profile carries a terminal's initial key, so it is written only to a file (mode 0600, by
simulator.profile.save) and never printed; the KSN counter starts from the one the switch
last accepted from the terminal, so the simulator's next request is not taken for a replay.
`--out-dir` makes its folder when it is missing (the documented `--out-dir profiles` works
on a fresh checkout), but only once every terminal is found and every key derived.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from protocol.dukpt import derive_initial_key
from simulator import profile
from switch.cli_context import CommandError, Context


def switch_address(ctx: Context, args: argparse.Namespace) -> tuple[str, int]:
    """Where a profile says the switch is: --switch, else the configured listener."""
    if args.switch is None:
        host = ctx.settings.listen_host
        return ("127.0.0.1" if host in ("0.0.0.0", "::", "") else host,  # noqa: S104
                ctx.settings.listen_port)
    host, sep, port = args.switch.rpartition(":")
    if not (sep and host and port.isdigit() and 1 <= int(port) <= 65535):
        raise CommandError(f"--switch {args.switch!r}: want HOST:PORT")
    return host, int(port)


def check_target(path: Path, *, new: bool) -> None:
    if new and path.exists():
        raise CommandError(f"profile {path} already exists (it holds another terminal's "
                           "state); choose another file")
    if not path.parent.is_dir():
        raise CommandError(f"folder {path.parent} does not exist")


async def cmd_terminal_profile(ctx: Context, args: argparse.Namespace) -> int:
    address = switch_address(ctx, args)
    if args.out is not None and len(args.tids) != 1:
        raise CommandError("--out takes one TID; use --out-dir for several")
    targets = ([args.out] if args.out is not None
               else [args.out_dir / f"{tid}.json" for tid in args.tids])
    for path in targets:
        # --out-dir may name a folder still to make (after every check, below).
        if args.out is not None or args.out_dir.exists():
            check_target(path, new=False)
    store = ctx.keys()
    async with ctx.transaction() as conn:
        rows = {r["tid"]: r for r in await conn.fetch(
            """SELECT tid, status, bdk_id, derivation_id, ksn_counter_max FROM terminal
               WHERE tid = any($1::text[])""", args.tids)}
    missing = [tid for tid in args.tids if tid not in rows]
    if missing:
        raise CommandError(f"no terminal {', '.join(missing)}")
    made = []
    for tid, path in zip(args.tids, targets, strict=True):
        r = rows[tid]
        ik_id = bytes.fromhex(r["bdk_id"] + r["derivation_id"])
        made.append((path, profile.Profile(
            tid, ik_id, derive_initial_key(store.bdk(r["bdk_id"]), ik_id), *address,
            ksn_counter=r["ksn_counter_max"])))
    if args.out_dir is not None:
        args.out_dir.mkdir(parents=True, exist_ok=True)
    for path, made_profile in made:  # every key derived before the first file is written
        profile.save(path, made_profile)
        print(f"profile of {made_profile.tid} written to {path} (mode 0600; KSN counter "
              f"{made_profile.ksn_counter})")
    return 0
