"""`loyalty`: the one command-line entry point (serve, db, admin, demo, run).

Exit status: 0 success; 1 an operation failed (database unreachable, an invariant violated);
2 a bad argument, setting or key file: nothing was written.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import uvloop

from settlement import cli as cli_settle
from simulator import cli as simulator_cli
from switch import cli_admin, cli_db, logs
from switch.cli_context import CommandError, Context
from switch.config import ConfigError, load_settings
from switch.db import DatabaseUnavailableError
from switch.keys import KeyFileError
from switch.migrate import MigrationError
from switch.registry import RegistryError

Handler = Callable[[Context, argparse.Namespace], Coroutine[Any, Any, int]]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loyalty",
        description="The loyalty switch: terminals, ledger, settlement and tools.",
        epilog="`loyalty sim ARGS` runs the terminal simulator, the same as `sim ARGS`.",
    )
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help="TOML settings file (also LOYALTY_CONFIG)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser(
        "run", help="the main job: database, demo data, the switch, demo traffic",
        description="Start (or reuse) the database, apply migrations, load the demo data if "
                    "it is not there yet, prove the ledger's invariants, start the switch, "
                    "drive a short burst of demo traffic through it, and keep serving.")
    run.add_argument("--once", action="store_true",
                     help="stop after the burst (and a final db check) instead of serving")
    run.set_defaults(handler=cli_db.cmd_run)
    serve = commands.add_parser(
        "serve", help="run the switch (terminal port and metrics) until SIGTERM/SIGINT",
        description="Run the switch: migrate, release expired holds, listen for terminals, "
                    "serve Prometheus metrics; SIGTERM or SIGINT stops it gracefully.")
    serve.set_defaults(handler=cli_db.cmd_serve)
    cli_db.add_commands(commands)
    cli_admin.add_commands(commands)
    cli_settle.add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["sim"]:  # `loyalty sim ...` is `sim ...`
        return simulator_cli.main(arguments[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings(config_file=args.config)
    except ConfigError as exc:
        print(f"loyalty: bad configuration: {exc}", file=sys.stderr)
        return 2
    handler: Handler = args.handler
    # Undone on return, so `main` called in-process (tests) leaves no handler behind.
    with logs.configured(settings.log_level):
        try:
            return uvloop.run(handler(Context(settings), args))
        except (CommandError, RegistryError, KeyFileError) as exc:
            print(f"loyalty: {exc}", file=sys.stderr)
            return 2
        except (DatabaseUnavailableError, MigrationError) as exc:
            print(f"loyalty: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 130


if __name__ == "__main__":
    sys.exit(main())
