"""The simulator's commands as one terminal runs them: sign-on, echo, purchases, balance,
refund, top-up, confirm and reversal, each with optional injected faults.

Theory of operation
-------------------
A `Session` is one terminal (its `Terminal` and a `Keeper` that persists its counter) and a
connection to the switch, opened on first use and again after a fault cut it. Every request
goes through `Session.exchange`: build it (the KSN counter advances), checkpoint the counter,
apply the faults meant for this request, send it with the existing `TerminalClient`, and
append the request and its response to the transcript. A command returns a `Result`: the
response codes and every amount the switch reported under a stable name, which is what the
scenario runner compares.

Faults (`Faults`) apply to the first request of a command, except `delay_s`, which applies
to its last (the confirm of a two-phase purchase), and `drop_confirm`, which leaves the 0100
pending so that the hold must expire by itself.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Literal, NamedTuple, Protocol, TypeVar

from protocol import messages
from protocol.cardblock import CardData
from protocol.fields import AccountType, AmountType, ProcessingCode, ResponseCode
from protocol.values import AdditionalData, AmountBlock
from simulator.client import ConnectionClosed, NoResponse, TerminalClient
from simulator.profile import Pending
from simulator.terminal import Original, Prepared, SimulatorError, Terminal
from simulator.transcript import price_breakdown, render_message, signed

PC = ProcessingCode
P = TypeVar("P", bound=messages.Response)

PURCHASE_CODES: Final = {"club": PC.PURCHASE_CLUB, "credit": PC.PURCHASE_STORE_CREDIT,
                         "bank": PC.PURCHASE_SHAPARAK}
REFUND_CODES: Final = {"club": PC.REFUND_CLUB, "credit": PC.REFUND_STORE_CREDIT,
                       "bank": PC.REFUND_SHAPARAK}
BALANCE_CODES: Final = {"club": PC.BALANCE_INQUIRY_CLUB,
                        "credit": PC.BALANCE_INQUIRY_STORE_CREDIT, "all": PC.BALANCE_INQUIRY}
THEN: Final = ("confirm", "reverse", "none")
Then = Literal["confirm", "reverse", "none"]

# Field 54 blocks by the name a scenario uses for them.
AMOUNT_NAMES: Final = {
    (AccountType.NONE, AmountType.DISCOUNT): "discount",
    (AccountType.NONE, AmountType.PAYABLE): "payable",
    (AccountType.NONE, AmountType.NETWORK_FEE): "network_fee",
    (AccountType.NONE, AmountType.PSP_FEE): "psp_fee",
    (AccountType.STORE_CREDIT, AmountType.CASHBACK): "cashback",
    (AccountType.POINTS, AmountType.POINTS_EARNED): "points_earned",
    (AccountType.STORE_CREDIT, AmountType.APPROVED): "approved",
    (AccountType.CLUB_RIAL, AmountType.LEDGER_BALANCE): "club_ledger",
    (AccountType.CLUB_RIAL, AmountType.AVAILABLE_BALANCE): "club_available",
    (AccountType.STORE_CREDIT, AmountType.LEDGER_BALANCE): "credit_ledger",
    (AccountType.STORE_CREDIT, AmountType.AVAILABLE_BALANCE): "credit_available",
    (AccountType.POINTS, AmountType.LEDGER_BALANCE): "points_ledger",
    (AccountType.POINTS, AmountType.AVAILABLE_BALANCE): "points_available",
}
RESULT_NAMES: Final = ("amount", *AMOUNT_NAMES.values())


class Card(NamedTuple):
    pan: str
    expiry: str


@dataclass(frozen=True)
class Faults:
    drop_confirm: bool = False
    duplicate: bool = False
    delay_s: float = 0.0
    corrupt_mac: bool = False
    cut_mid_frame: bool = False

    def first_only(self) -> Faults:
        """The faults that apply to a command's first request."""
        return Faults(duplicate=self.duplicate, corrupt_mac=self.corrupt_mac,
                      cut_mid_frame=self.cut_mid_frame)


NO_FAULTS: Final = Faults()


class MismatchError(SimulatorError):
    """The switch answered, but not as the protocol promises (e.g. a duplicate differed)."""


@dataclass
class Result:
    """What a command did. `code` is the first response's code (None when the connection was
    cut); `second_code` the 0230's or 0410's when a second phase was sent."""

    code: str | None = None
    second_code: str | None = None
    rrn: str | None = None
    amounts: dict[str, int] = field(default_factory=dict)
    original: Original | None = None
    notes: list[str] = field(default_factory=list)

    def take(self, blocks: tuple[AmountBlock, ...]) -> None:
        for block in blocks:
            name = AMOUNT_NAMES.get((block.account_type, block.amount_type))
            if name is not None:
                self.amounts[name] = signed(block)


class Keeper(Protocol):
    """Where a terminal's state lives between runs (a profile file, or nowhere)."""

    def checkpoint(self) -> None: ...

    def remember(self, pending: Pending | None) -> None: ...


class NoKeeper:
    def checkpoint(self) -> None:
        pass

    def remember(self, pending: Pending | None) -> None:
        pass


class Session:
    """One terminal's commands over one (re-opened when cut) connection to the switch."""

    def __init__(self, terminal: Terminal, host: str, port: int, *,
                 keeper: Keeper | None = None, emit: Callable[[str], None] | None = None,
                 timeout_s: float = 10.0) -> None:
        self.terminal = terminal
        self.host, self.port = host, port
        self.keeper: Keeper = keeper or NoKeeper()
        self.emit = emit or (lambda line: None)
        self.timeout_s = timeout_s
        self._client: TerminalClient | None = None

    async def client(self) -> TerminalClient:
        if self._client is None or self._client.closed:
            client = TerminalClient(self.terminal, timeout_s=self.timeout_s)
            self._client = await client.connect(self.host, self.port)
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def exchange(self, build: Callable[[Terminal], Prepared[Any, P]], *,
                       faults: Faults = NO_FAULTS, card: CardData | None = None,
                       result: Result) -> messages.Response | None:
        """Build, checkpoint, send (with `faults`) and transcribe one request. Returns the
        response message, or None when the fault cut the connection."""
        client = await self.client()
        prepared = build(self.terminal)
        self.keeper.checkpoint()
        for line in render_message(">>", prepared.request, card):
            self.emit(line)
        if faults.delay_s > 0:
            self.emit(f"   (fault: waiting {faults.delay_s:g} s before sending)")
            await asyncio.sleep(faults.delay_s)
        if faults.cut_mid_frame:
            await self._cut(client, prepared, result)
            return None
        if faults.corrupt_mac:
            prepared = dataclasses.replace(prepared, raw=_flip_last_bit(prepared.raw))
            self.emit("   (fault: one bit of the MAC flipped)")
        response = await client.send(prepared)
        if faults.duplicate:
            again = await client.retransmit(prepared)
            same = again.raw == response.raw
            note = "duplicate: identical response" if same else "duplicate: responses DIFFER"
            self.emit(f"   (fault: sent twice; {note})")
            result.notes.append(note)
            if not same:
                raise MismatchError(f"the duplicate {prepared.request.MTI.value} got a "
                                    "different response")
        for line in render_message("<<", response.message):
            self.emit(line)
        return response.message

    async def _cut(self, client: TerminalClient, prepared: Prepared[Any, Any],
                   result: Result) -> None:
        frame = prepared.frame
        half = len(frame) // 2
        await client.write_and_half_close(frame[:half])
        try:
            await client.next_unmatched_frame(self.timeout_s)
            outcome = "the switch answered a half frame (unexpected)"
        except ConnectionClosed:
            outcome = "the switch closed the connection"
        except NoResponse:
            outcome = "the switch kept the connection open"
        note = f"cut: sent {half} of {len(frame)} bytes; {outcome}"
        self.emit(f"   (fault: {note})")
        result.notes.append(note)
        await self.close()

    # -- commands ----------------------------------------------------------------------------

    async def network(self, kind: Literal["sign-on", "echo"], faults: Faults = NO_FAULTS
                      ) -> Result:
        result = Result()
        build = (lambda t: t.sign_on()) if kind == "sign-on" else (lambda t: t.echo())
        card = CardData(self.terminal.tid, "", "0000") if kind == "sign-on" else None
        response = await self.exchange(build, faults=faults, card=card, result=result)
        if response is not None:
            result.code = response.response_code.value
        return result

    async def balance(self, account: str, card: Card, faults: Faults = NO_FAULTS) -> Result:
        return await self.authorise(BALANCE_CODES[account], 0, card, then="none",
                                    faults=faults)

    async def authorise(self, code: ProcessingCode, amount: int, card: Card, *,
                        then: Then = "confirm", faults: Faults = NO_FAULTS,
                        data: AdditionalData | None = None) -> Result:
        """A 0100 and, when approved and `then` says so, its 0220 or 0400."""
        result = Result(amounts={"amount": amount})
        two_phase = not code.is_balance_inquiry and then != "none" and not faults.drop_confirm
        first = faults.first_only() if two_phase else dataclasses.replace(
            faults.first_only(), delay_s=faults.delay_s)
        shown = CardData(self.terminal.tid, card.pan, card.expiry)
        response = await self.exchange(
            lambda t: t.auth(code, amount, card.pan, card.expiry, additional_data=data),
            faults=first, card=shown, result=result)
        if not isinstance(response, messages.AuthResponse):
            return result
        result.code, result.rrn = response.response_code.value, response.rrn
        result.take(response.amounts)
        assert response.stan is not None and response.transmission_time is not None
        result.original = Original(code, amount, response.stan, response.transmission_time)
        breakdown = price_breakdown(amount, response.amounts)
        if breakdown:
            self.emit(breakdown)
        if code.is_balance_inquiry or not response.response_code.is_approval:
            return result
        if faults.drop_confirm:
            self.emit("   (fault: confirm dropped; the hold stays until it expires)")
        if not two_phase:
            self.keeper.remember(Pending(result.original, response.rrn or ""))
            return result
        second = await self.advise(result.original, response.rrn or "", then,
                                   Faults(delay_s=faults.delay_s))
        result.second_code = second.code
        result.amounts.update(second.amounts)
        return result

    async def advise(self, original: Original, rrn: str, then: Then,
                     faults: Faults = NO_FAULTS) -> Result:
        """The 0220 (`then` confirm) or 0400 (reverse) of `original`."""
        result = Result(rrn=rrn, original=original)

        def build(t: Terminal) -> Prepared[Any, Any]:
            if then == "confirm":
                return t.confirm(original, rrn)
            return t.reverse(original, rrn or None)

        response = await self.exchange(build, faults=faults, result=result)
        if response is not None:
            result.code = response.response_code.value
            if isinstance(response, messages.ConfirmResponse):
                result.take(response.amounts)
            self.keeper.remember(None)
        return result


def _flip_last_bit(raw: bytes) -> bytes:
    """The MAC is the last 8 bytes of every message: flipping a bit there breaks only it."""
    return raw[:-1] + bytes([raw[-1] ^ 0x01])


def approved(code: str | None) -> bool:
    return code is not None and ResponseCode(code).is_approval
