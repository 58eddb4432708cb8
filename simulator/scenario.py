"""Scenario files: a terminal's steps with the responses and balances they must produce.

A scenario is TOML (format in docs/simulator.md). `parse` turns it into a `Scenario` or
raises `ScenarioError` naming the fault (the CLI exits 2); `run` drives the steps through a
`Session` and raises `StepFailedError` at the first step whose outcome differs from its
expectation, naming the step and what differed.

Expectations are written so that they survive changes to campaigns and to the balances the
switch starts with: an amount is an expression over what earlier steps reported, e.g.
`club_available = "start.club_available - buy.payable"`, where `start` is a balance inquiry
at the beginning of the scenario and `buy` a purchase whose 0110 reported what was charged.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from protocol.fields import ProcessingCode, ResponseCode
from protocol.values import AdditionalData
from simulator.actions import (
    BALANCE_CODES,
    NO_FAULTS,
    PURCHASE_CODES,
    REFUND_CODES,
    RESULT_NAMES,
    THEN,
    Card,
    Faults,
    Result,
    Session,
    Then,
)
from simulator.terminal import SimulatorError
from switch import demo

ACTIONS: Final = ("sign-on", "echo", "balance", "purchase", "refund", "topup", "confirm",
                  "reversal")
_STEP_KEYS: Final = frozenset({"id", "do", "card", "kind", "amount", "then", "partial", "of",
                               "fault", "expect"})
_FAULTS: Final = ("drop_confirm", "duplicate", "corrupt_mac", "cut_mid_frame")
_TERM: Final = re.compile(r"\s*([+-])\s*(\d+|[A-Za-z_][\w-]*(?:\.[a-z_]+)?)\s*")


class ScenarioError(Exception):
    """The scenario file is unreadable or malformed."""


class StepFailedError(SimulatorError):
    def __init__(self, step: Step, what: str) -> None:
        self.step, self.what = step, what
        super().__init__(f"step {step.number} ({step.label}): {what}")


@dataclass(frozen=True)
class Term:
    sign: int
    literal: int | None = None
    step: str | None = None  # None: the step being checked
    name: str = ""


@dataclass(frozen=True)
class Step:
    number: int
    do: str
    id: str | None = None
    card: str | None = None
    kind: str = "club"
    amount: tuple[Term, ...] = ()
    then: str = "confirm"
    partial: bool = False
    of: str | None = None
    faults: Faults = NO_FAULTS
    codes: tuple[str, ...] = ()
    second_codes: tuple[str, ...] = ()
    amounts: dict[str, tuple[Term, ...]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.id or self.do


@dataclass(frozen=True)
class Scenario:
    name: str
    terminal: str
    cards: dict[str, Card]
    steps: tuple[Step, ...]


# -- parsing (pure) ----------------------------------------------------------------------------


def load(path: Path) -> Scenario:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"{path}: cannot read ({type(exc).__name__})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: not valid TOML ({exc})") from None
    try:
        return parse(data)
    except ScenarioError as exc:
        raise ScenarioError(f"{path}: {exc}") from None


def parse(data: Mapping[str, Any]) -> Scenario:
    unknown = set(data) - {"name", "terminal", "cards", "steps"}
    if unknown:
        raise ScenarioError(f"unknown top-level key(s): {', '.join(sorted(unknown))}")
    terminal = _str(data, "terminal", "scenario")
    cards = {name: _card(name, spec) for name, spec in _table(data, "cards").items()}
    raw_steps = data.get("steps")
    if not isinstance(raw_steps, list) or not raw_steps:
        raise ScenarioError("needs at least one [[steps]]")
    steps: list[Step] = []
    for number, raw in enumerate(raw_steps, 1):
        try:
            steps.append(_step(number, raw, cards, steps))
        except ScenarioError as exc:
            raise ScenarioError(f"step {number}: {exc}") from None
    return Scenario(str(data.get("name", terminal)), terminal, cards, tuple(steps))


def _table(data: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ScenarioError(f"{key} must be a table")
    return value


def _str(data: Mapping[str, Any], key: str, where: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise ScenarioError(f"{where}: {key} must be a non-empty string")
    return value


def _int(data: Mapping[str, Any], key: str, where: str) -> int:
    value = data.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ScenarioError(f"{where}: {key} must be a whole number >= 0")
    return value


def _card(name: str, spec: Any) -> Card:
    where = f"card {name!r}"
    if not isinstance(spec, dict):
        raise ScenarioError(f"{where} must be a table")
    if "demo" in spec:
        return Card(demo.demo_club_pan(_int(spec, "demo", where)), demo.CARD_EXPIRY)
    if "demo_bank" in spec:
        return Card(demo.demo_bank_pan(_int(spec, "demo_bank", where)), demo.CARD_EXPIRY)
    pan, expiry = _str(spec, "pan", where), _str(spec, "expiry", where)
    if not (pan.isdigit() and expiry.isdigit() and len(expiry) == 4):
        raise ScenarioError(f"{where}: pan must be digits and expiry YYMM")
    return Card(pan, expiry)


def _step(number: int, raw: Any, cards: Mapping[str, Card], earlier: list[Step]) -> Step:
    if not isinstance(raw, dict):
        raise ScenarioError("must be a table")
    unknown = set(raw) - _STEP_KEYS
    if unknown:
        raise ScenarioError(f"unknown key(s): {', '.join(sorted(unknown))}")
    do = raw.get("do")
    if do not in ACTIONS:
        raise ScenarioError(f"do must be one of {', '.join(ACTIONS)}")
    ids = {s.id for s in earlier if s.id}
    step_id = raw.get("id")
    if step_id is not None and (not isinstance(step_id, str) or step_id in ids):
        raise ScenarioError("id must be a string not used by an earlier step")
    card = raw.get("card")
    if do in ("balance", "purchase", "refund", "topup") and card not in cards:
        raise ScenarioError(f"card must name one of the [cards] ({', '.join(cards)})")
    of = raw.get("of")
    if do in ("refund", "confirm", "reversal") and of not in ids:
        raise ScenarioError("of must name an earlier step's id")
    kinds = BALANCE_CODES if do == "balance" else PURCHASE_CODES
    kind = raw.get("kind", "club")
    if kind not in kinds:
        raise ScenarioError(f"kind must be one of {', '.join(kinds)}")
    then = raw.get("then", "confirm")
    if then not in THEN:
        raise ScenarioError(f"then must be one of {', '.join(THEN)}")
    amount: tuple[Term, ...] = ()
    if do in ("purchase", "refund", "topup"):
        if "amount" not in raw:
            raise ScenarioError(f"{do} needs an amount")
        if isinstance(raw["amount"], int) and raw["amount"] < 0:
            raise ScenarioError("amount must be a whole number >= 0 or an expression")
        amount = parse_expression(raw["amount"], ids)
        if any(t.literal is None and t.step is None for t in amount):
            raise ScenarioError("amount may name only earlier steps' amounts (STEP.NAME)")
    codes, second, amounts = _expect(raw.get("expect", {}), ids)
    return Step(number=number, do=do, id=step_id, card=card, kind=kind, amount=amount,
                then=then, partial=bool(raw.get("partial", False)), of=of,
                faults=_faults(raw.get("fault")), codes=codes, second_codes=second,
                amounts=amounts)


def _faults(value: Any) -> Faults:
    if value is None:
        return Faults()
    if value not in _FAULTS:
        raise ScenarioError(f"fault must be one of {', '.join(_FAULTS)}")
    return Faults(**{value: True})


def _codes(value: Any, key: str) -> tuple[str, ...]:
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not values:
        raise ScenarioError(f"expect.{key} must be a response code or a list of them")
    for code in values:
        if code not in ResponseCode._value2member_map_:
            raise ScenarioError(f"expect.{key}: {code!r} is not a response code")
    return tuple(values)


def _expect(raw: Any, ids: set[str]
            ) -> tuple[tuple[str, ...], tuple[str, ...], dict[str, tuple[Term, ...]]]:
    if not isinstance(raw, dict):
        raise ScenarioError("expect must be a table")
    codes = _codes(raw["code"], "code") if "code" in raw else ()
    second = _codes(raw["second"], "second") if "second" in raw else ()
    amounts = {}
    for name, value in raw.items():
        if name in ("code", "second"):
            continue
        if name not in RESULT_NAMES:
            raise ScenarioError(f"expect.{name}: not a reported amount "
                                f"({', '.join(RESULT_NAMES)})")
        amounts[name] = parse_expression(value, ids)
    return codes, second, amounts


def parse_expression(value: Any, ids: set[str]) -> tuple[Term, ...]:
    """`1200`, or a string of terms joined by + and -, each a number, `NAME` (this step's
    reported amount) or `STEP.NAME` (an earlier step's)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return (Term(1, literal=value),)
    if not isinstance(value, str) or not value.strip():
        raise ScenarioError(f"{value!r} is neither a number nor an expression")
    text = value.strip()
    text = text if text[0] in "+-" else "+" + text
    terms, position = [], 0
    while position < len(text):
        match = _TERM.match(text, position)
        if match is None:
            raise ScenarioError(f"cannot read {value!r} at {text[position:]!r}")
        sign = 1 if match[1] == "+" else -1
        terms.append(_term(sign, match[2], ids, value))
        position = match.end()
    return tuple(terms)


def _term(sign: int, token: str, ids: set[str], text: str) -> Term:
    if token.isdigit():
        return Term(sign, literal=int(token))
    step, _, name = token.rpartition(".")
    if name not in RESULT_NAMES:
        raise ScenarioError(f"{text!r}: {name!r} is not a reported amount")
    if step and step not in ids:
        raise ScenarioError(f"{text!r}: no earlier step has id {step!r}")
    return Term(sign, step=step or None, name=name)


# -- running -----------------------------------------------------------------------------------


def evaluate(terms: tuple[Term, ...], current: Result, results: Mapping[str, Result]) -> int:
    total = 0
    for term in terms:
        if term.literal is not None:
            total += term.sign * term.literal
            continue
        source = current if term.step is None else results[term.step]
        value = source.amounts.get(term.name)
        if value is None:
            where = "this step" if term.step is None else f"step {term.step!r}"
            raise LookupError(f"{where} reported no {term.name}")
        total += term.sign * value
    return total


def check(step: Step, result: Result, results: Mapping[str, Result]) -> None:
    if step.codes and result.code not in step.codes:
        raise StepFailedError(step, f"response code {result.code}, expected {'/'.join(step.codes)}")
    if step.second_codes and result.second_code not in step.second_codes:
        raise StepFailedError(step, f"second-phase code {result.second_code}, expected "
                               f"{'/'.join(step.second_codes)}")
    for name, terms in step.amounts.items():
        try:
            want = evaluate(terms, result, results)
        except LookupError as exc:
            raise StepFailedError(step, str(exc)) from None
        got = result.amounts.get(name)
        if got != want:
            raise StepFailedError(step, f"{name} is {got}, expected {want}")


async def run_step(session: Session, scenario: Scenario, step: Step,
                   results: Mapping[str, Result]) -> Result:
    card = scenario.cards[step.card] if step.card else None
    if step.do in ("sign-on", "echo"):
        return await session.network(step.do, step.faults)  # type: ignore[arg-type]
    if step.do == "balance":
        assert card is not None
        return await session.balance(step.kind, card, step.faults)
    if step.do in ("confirm", "reversal"):
        earlier = results[step.of or ""]
        if earlier.original is None:
            raise StepFailedError(step, f"step {step.of!r} has no 0100 to name")
        then: Then = "confirm" if step.do == "confirm" else "reverse"
        return await session.advise(earlier.original, earlier.rrn or "", then, step.faults)
    assert card is not None
    data = AdditionalData(partial_approval=True) if step.partial else None
    code = PURCHASE_CODES[step.kind]
    if step.do == "topup":
        code = ProcessingCode.TOP_UP_CLUB
    elif step.do == "refund":
        code = REFUND_CODES[step.kind]
        rrn = results[step.of or ""].rrn
        if rrn is None:
            raise StepFailedError(step, f"step {step.of!r} got no RRN to refund")
        data = AdditionalData(original_rrn=rrn)
    try:
        amount = evaluate(step.amount, Result(), results)
    except LookupError as exc:
        raise StepFailedError(step, f"amount: {exc}") from None
    if amount < 0:
        raise StepFailedError(step, f"amount comes to {amount} rial")
    return await session.authorise(code, amount, card, then=step.then,  # type: ignore[arg-type]
                                   faults=step.faults, data=data)


async def run(scenario: Scenario, session: Session,
              report: Callable[[str], None] = lambda line: None) -> dict[str, Result]:
    """Run every step; raise `StepFailedError` at the first mismatch."""
    results: dict[str, Result] = {}
    for step in scenario.steps:
        result = await run_step(session, scenario, step, results)
        check(step, result, results)
        if step.id:
            results[step.id] = result
        second = f", then {result.second_code}" if result.second_code else ""
        report(f"step {step.number} ({step.label}): {step.do} -> {result.code}{second}: ok")
    return results
