"""`sim`: a simulated POS terminal on the command line (see docs/simulator.md).

Exit status: 0 the switch answered (whatever its response code), the scenario passed, or
the load run completed at least one transaction; 1 no answer, a response the terminal must
reject, a scenario step that did not match, or a load run that completed no transaction
(every terminal failed to connect, or nothing completed); 2 a bad argument, profile or
scenario file (nothing was sent).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Final, TextIO

import uvloop

from protocol.fields import ProcessingCode
from protocol.values import AdditionalData
from simulator import load as load_mode
from simulator import profile as profiles
from simulator import scenario as scenarios
from simulator.actions import (
    BALANCE_CODES,
    PURCHASE_CODES,
    REFUND_CODES,
    THEN,
    Card,
    Faults,
    Result,
    Session,
    Then,
)
from simulator.client import ConnectionClosed, NoResponse
from simulator.terminal import Clock, SimulatorError, utc_now
from switch import demo

SCENARIO_PACKAGE: Final = "simulator.scenarios"


class UsageError(Exception):
    """A bad argument found after parsing (exit 2)."""


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be above 0")
    return value


def _non_negative(text: str) -> float:
    return 0.0 if text.strip() in ("0", "0.0") else _positive(text)


def _connect_timeout(text: str) -> float:
    value = _positive(text)
    if value > load_mode.CONNECT_TIMEOUT_S_MAX:
        raise argparse.ArgumentTypeError(
            f"{text!r} must be at most {load_mode.CONNECT_TIMEOUT_S_MAX:g}")
    return value


def _count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1")
    return int(text)


def _rial(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of rials")
    return int(text)


def _switch(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: want HOST:PORT")
    return host, int(port)


def _mix(text: str) -> load_mode.Mix:
    try:
        return load_mode.parse_mix(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sim", description="A simulated POS terminal for "
                                     "the loyalty switch: commands, scenarios, load.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, text in (("sign-on", "sign the terminal on (0800/001)"),
                       ("echo", "echo test (0800/301)")):
        _terminal_options(commands.add_parser(name, help=text, description=text))
    _transactions(commands)
    _scenario(commands)
    _load(commands)
    return parser


def _terminal_options(p: argparse.ArgumentParser, faults: bool = True) -> None:
    p.add_argument("--profile", type=Path, required=True, metavar="FILE",
                   help="terminal profile (written by `loyalty admin terminal profile`)")
    p.add_argument("--switch", type=_switch, metavar="HOST:PORT",
                   help="override the profile's switch address")
    p.add_argument("--quiet", action="store_true", help="no transcript")
    p.add_argument("--timeout-s", type=_positive, default=10.0,
                   help="wait for each response (default 10)")
    if not faults:
        return
    g = p.add_argument_group("faults")
    g.add_argument("--duplicate", action="store_true",
                   help="send the (first) request twice; the responses must be identical")
    g.add_argument("--delay-s", type=_non_negative, default=0.0,
                   help="wait this long before sending the last request (the confirm)")
    g.add_argument("--corrupt-mac", action="store_true",
                   help="flip one bit of the request's MAC (expect 63, nothing changes)")
    g.add_argument("--cut-mid-frame", action="store_true",
                   help="send half of the request's frame, then end the connection")


def _card_options(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--pan", help="card number (with --expiry)")
    g.add_argument("--demo-card", type=int, metavar="N", help="demo member N's club card")
    g.add_argument("--demo-bank-card", type=int, metavar="N",
                   help="the Shetab card linked to demo member N (N a multiple of 5)")
    p.add_argument("--expiry", metavar="YYMM", help="card expiry, with --pan")


def _transactions(commands: Any) -> None:
    p = commands.add_parser("purchase", help="a two-phase purchase (0100, then 0220)")
    p.add_argument("--kind", choices=tuple(PURCHASE_CODES), default="club")
    p.add_argument("--amount", type=_rial, required=True, help="rials")
    p.add_argument("--partial", action="store_true",
                   help="allow a partial approval (store credit)")
    _then(p)
    p.add_argument("--drop-confirm", action="store_true",
                   help="send no confirm: the hold must expire by itself")
    p = commands.add_parser("balance", help="balance inquiry (single phase)")
    p.add_argument("--kind", choices=tuple(BALANCE_CODES), default="all")
    _card_options(p)
    _terminal_options(p)
    p = commands.add_parser("refund", help="refund a confirmed purchase, named by its RRN")
    p.add_argument("--rrn", required=True, help="the purchase's RRN")
    p.add_argument("--kind", choices=tuple(REFUND_CODES), default="club")
    p.add_argument("--amount", type=_rial, required=True, help="rials to refund")
    _then(p)
    p = commands.add_parser("topup", help="top up the club card's rial account")
    p.add_argument("--amount", type=_rial, required=True, help="rials")
    _then(p)
    for name, text in (("confirm", "confirm the profile's pending 0100 (0220)"),
                       ("reversal", "reverse the profile's pending 0100 (0400)")):
        _terminal_options(commands.add_parser(name, help=text, description=text))


def _then(p: argparse.ArgumentParser) -> None:
    p.add_argument("--then", choices=THEN, default="confirm",
                   help="after approval: confirm (default), reverse, or none (keep the "
                        "0100 pending in the profile for `sim confirm` / `sim reversal`)")
    _card_options(p)
    _terminal_options(p)


def _scenario(commands: Any) -> None:
    p = commands.add_parser(
        "scenario", help="run scenario files; exit 1 at the first mismatch",
        description="Run TOML scenario files (a path, or the name of a shipped scenario; "
                    "--list shows those) against a live switch.")
    p.add_argument("files", nargs="*", metavar="FILE")
    p.add_argument("--list", action="store_true", help="list the shipped scenarios")
    p.add_argument("--all", action="store_true", help="run every shipped scenario")
    p.add_argument("--profiles", type=Path, default=Path("profiles"), metavar="DIR",
                   help="where TID.json profiles are (default ./profiles)")
    p.add_argument("--switch", type=_switch, metavar="HOST:PORT",
                   help="override the profiles' switch address")
    p.add_argument("-v", "--verbose", action="store_true", help="print every transcript")
    p.add_argument("--timeout-s", type=_positive, default=10.0)


def _load(commands: Any) -> None:
    p = commands.add_parser(
        "load", help="drive many terminals; report rate, latency and response codes",
        description="Complete two-phase purchases from N terminals (one profile each) for S "
                    "seconds, closed loop or at a target rate.")
    p.add_argument("--terminals", type=_count, required=True, metavar="N")
    p.add_argument("--seconds", type=_positive, required=True, metavar="S")
    p.add_argument("--rate", type=_positive, metavar="R",
                   help="target transactions/s in total (open loop); omit for closed loop")
    p.add_argument("--mix", type=_mix, default=load_mode.DEFAULT_MIX,
                   help="kinds and weights, e.g. bank=1,club=2,credit=1 (cards: the demo "
                        "members')")
    p.add_argument("--in-flight-max", type=_count, default=16, metavar="N",
                   help="open loop: transactions in flight per terminal before a start is "
                        "skipped (default 16)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--profiles", type=Path, default=Path("profiles"), metavar="DIR")
    p.add_argument("--switch", type=_switch, metavar="HOST:PORT")
    p.add_argument("--timeout-s", type=_positive, default=10.0)
    p.add_argument("--connect-timeout-s", type=_connect_timeout,
                   default=load_mode.CONNECT_TIMEOUT_S, metavar="S",
                   help="wait for each terminal's connection before counting it failed "
                        f"(default {load_mode.CONNECT_TIMEOUT_S:g}, at most "
                        f"{load_mode.CONNECT_TIMEOUT_S_MAX:g})")


# -- running -----------------------------------------------------------------------------------


@dataclass
class Io:
    out: TextIO
    err: TextIO
    clock: Clock

    def say(self, line: str) -> None:
        print(line, file=self.out, flush=True)


def card_of(args: argparse.Namespace) -> Card:
    if args.pan is not None:
        if not args.pan.isdigit() or args.expiry is None or not (
                args.expiry.isdigit() and len(args.expiry) == 4):
            raise UsageError("--pan needs digits and --expiry YYMM")
        return Card(args.pan, args.expiry)
    if args.expiry is not None:
        raise UsageError("--expiry goes with --pan only")
    if args.demo_card is not None:
        if not 0 <= args.demo_card < demo.MEMBERS:
            raise UsageError(f"--demo-card must be 0..{demo.MEMBERS - 1}")
        return Card(demo.demo_club_pan(args.demo_card), demo.CARD_EXPIRY)
    if not 0 <= args.demo_bank_card < demo.MEMBERS or args.demo_bank_card % 5:
        raise UsageError("--demo-bank-card must be a multiple of 5 below "
                         f"{demo.MEMBERS} (the members with a linked bank card)")
    return Card(demo.demo_bank_pan(args.demo_bank_card), demo.CARD_EXPIRY)


def faults_of(args: argparse.Namespace) -> Faults:
    return Faults(drop_confirm=getattr(args, "drop_confirm", False), duplicate=args.duplicate,
                  delay_s=args.delay_s, corrupt_mac=args.corrupt_mac,
                  cut_mid_frame=args.cut_mid_frame)


async def cmd_terminal(args: argparse.Namespace, io: Io) -> int:
    """One command of one terminal, from its profile."""
    keeper = profiles.ProfileFile(args.profile, io.clock)
    card = card_of(args) if args.command not in ("sign-on", "echo", "confirm",
                                                 "reversal") else None
    pending = keeper.profile.pending
    if args.command in ("confirm", "reversal") and pending is None:
        raise UsageError(f"profile {args.profile} has no pending 0100 (send one with "
                         "`sim purchase --then none`)")
    host, port = args.switch or (keeper.profile.host, keeper.profile.port)
    emit = (lambda line: None) if args.quiet else io.say
    session = Session(keeper.terminal, host, port, keeper=keeper, emit=emit,
                      timeout_s=args.timeout_s)
    try:
        result = await _dispatch(session, args, card, pending, faults_of(args))
    finally:
        await session.close()
    _summary(result, io)
    return 0


async def _dispatch(session: Session, args: argparse.Namespace, card: Card | None,
                    pending: profiles.Pending | None, faults: Faults) -> Result:
    command = args.command
    if command in ("sign-on", "echo"):
        return await session.network(command, faults)
    if command in ("confirm", "reversal"):
        assert pending is not None
        then: Then = "confirm" if command == "confirm" else "reverse"
        return await session.advise(pending.original, pending.rrn, then, faults)
    assert card is not None
    if command == "balance":
        return await session.balance(args.kind, card, faults)
    data = None
    code = ProcessingCode.TOP_UP_CLUB
    if command == "purchase":
        code = PURCHASE_CODES[args.kind]
        data = AdditionalData(partial_approval=True) if args.partial else None
    elif command == "refund":
        code = REFUND_CODES[args.kind]
        try:
            data = AdditionalData(original_rrn=args.rrn)
            data.encode()
        except ValueError:
            raise UsageError(f"--rrn {args.rrn!r} is not an RRN (12 characters)") from None
    return await session.authorise(code, args.amount, card, then=args.then, faults=faults,
                                   data=data)


def _summary(result: Result, io: Io) -> None:
    parts = [f"response {result.code}" if result.code else "no response"]
    if result.second_code:
        parts.append(f"second phase {result.second_code}")
    if result.rrn:
        parts.append(f"RRN {result.rrn}")
    parts += result.notes
    io.say("result: " + "; ".join(parts))


def shipped_scenarios() -> dict[str, Any]:
    folder = resources.files(SCENARIO_PACKAGE)
    return {entry.name.removesuffix(".toml"): entry for entry in folder.iterdir()
            if entry.name.endswith(".toml")}


async def cmd_scenario(args: argparse.Namespace, io: Io) -> int:
    shipped = shipped_scenarios()
    if args.list:
        for name in sorted(shipped):
            io.say(name)
        return 0
    names = sorted(shipped) if args.all else args.files
    if not names:
        raise UsageError("name scenario files, or use --all or --list")
    loaded = [_load_scenario(name, shipped) for name in names]  # all checked before any runs
    for name, scenario in zip(names, loaded, strict=True):
        io.say(f"scenario {name}: {scenario.name}")
        keeper = profiles.ProfileFile(args.profiles / f"{scenario.terminal}.json", io.clock)
        host, port = args.switch or (keeper.profile.host, keeper.profile.port)
        session = Session(keeper.terminal, host, port, keeper=keeper,
                          emit=io.say if args.verbose else None, timeout_s=args.timeout_s)
        try:
            await scenarios.run(scenario, session, io.say)
        except scenarios.StepFailedError as exc:
            io.say(f"FAILED: scenario {name}, {exc}")
            return 1
        finally:
            await session.close()
        io.say(f"scenario {name}: passed")
    return 0


def _load_scenario(name: str, shipped: dict[str, Any]) -> scenarios.Scenario:
    path = Path(name)
    if not path.exists() and name in shipped:
        with resources.as_file(shipped[name]) as real:
            return scenarios.load(real)
    return scenarios.load(path)


async def cmd_load(args: argparse.Namespace, io: Io) -> int:
    files = sorted(args.profiles.glob("*.json"))
    if len(files) < args.terminals:
        raise UsageError(f"--terminals {args.terminals}: {args.profiles} has only "
                         f"{len(files)} profile(s); each terminal needs its own")
    keepers = [profiles.ProfileFile(path, io.clock) for path in files[:args.terminals]]
    host, port = args.switch or (keepers[0].profile.host, keepers[0].profile.port)
    config = load_mode.LoadConfig(seconds=args.seconds, rate_per_s=args.rate, mix=args.mix,
                                  in_flight_per_terminal_max=args.in_flight_max,
                                  timeout_s=args.timeout_s,
                                  connect_timeout_s=args.connect_timeout_s)
    try:
        report = await load_mode.run_load([k.terminal for k in keepers], host, port, config,
                                          progress=progress_printer(io.err))
    finally:
        for keeper in keepers:
            keeper.checkpoint()
    if io.err.isatty():
        print(file=io.err)
    io.say(json.dumps(report.to_json(), indent=2) if args.json else report.text())
    return _load_status(report, io)


def _load_status(report: load_mode.LoadReport, io: Io) -> int:
    """1 when the run completed no transaction (every connection failed, or nothing the
    switch answered completed), so a script or CI job sees a load that did not happen."""
    if report.outcomes["completed"]:
        return 0
    why = ("no terminal could connect" if report.connect_failed == report.terminals
           else f"{report.started} started, none completed")
    print(f"sim: load: no transaction completed ({why})", file=io.err)
    return 1


def progress_printer(stream: TextIO) -> Callable[[load_mode.LoadReport, float], None]:
    """A line redrawn in place on a terminal; a plain line each time otherwise."""
    tty = stream.isatty()

    def show(report: load_mode.LoadReport, elapsed_s: float) -> None:
        line = report.progress_line(elapsed_s)
        stream.write(f"\r{line}" if tty else line + "\n")
        stream.flush()

    return show


HANDLERS: Final = {"scenario": cmd_scenario, "load": cmd_load}


async def run(argv: Sequence[str] | None = None, *, out: TextIO | None = None,
              err: TextIO | None = None, clock: Clock = utc_now) -> int:
    """The whole command; returns the exit status (for tests and `main`)."""
    io = Io(out or sys.stdout, err or sys.stderr, clock)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    handler = HANDLERS.get(args.command, cmd_terminal)
    try:
        return await handler(args, io)
    except (UsageError, profiles.ProfileError, scenarios.ScenarioError) as exc:
        print(f"sim: {exc}", file=io.err)
        return 2
    except (NoResponse, ConnectionClosed, SimulatorError, OSError) as exc:
        print(f"sim: {type(exc).__name__}: {exc}", file=io.err)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return uvloop.run(run(argv))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
