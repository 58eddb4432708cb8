"""The ledger against an in-memory model, over random sequences of operations.

A Hypothesis state machine opens card accounts beside a bank and a shop, makes multi-entry
transfers, spends from cards, places holds and posts them (in full, in part, nothing or too
much), voids and expires them, sweeps with `expire_due`, and moves an injected clock. Every
status the ledger returns must be the one the model predicts, and after every step every
account's balance must equal the model's and `db check` must pass.

Amounts are often drawn at the edge of what the debited account has left (one under,
exactly, one over), and the clock moves in whole minutes as timeouts do, so the boundaries
come up often. Each example gets a fresh database of its own, since the model starts from an
empty ledger. LEDGER_MODEL_EXAMPLES=500 runs longer.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import asyncpg
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)

from switch import db, dbcheck, ledger
from switch.ledger import Status, Unit
from tests.conftest import create_database, drop_database
from tests.switch.test_ledger import card_account, other_account

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)
MAX_ACCOUNTS = 6  # few accounts, many operations on each
T = TypeVar("T")

amounts = st.integers(1, 1_000)


@dataclass
class Account:
    no_overdraft: bool
    debits_pending: int = 0
    debits_posted: int = 0
    credits_pending: int = 0
    credits_posted: int = 0

    def balance(self) -> ledger.Balance:
        return ledger.Balance(debits_pending=self.debits_pending,
                              debits_posted=self.debits_posted,
                              credits_pending=self.credits_pending,
                              credits_posted=self.credits_posted)

    @property
    def available(self) -> int:
        return self.credits_posted - self.debits_posted - self.debits_pending

    def can_take(self, net_debit: int) -> bool:
        return not self.no_overdraft or net_debit <= self.available


@dataclass
class Hold:
    debit: Account
    credit: Account
    amount: int
    timeout_at: datetime
    status: str = "pending"

    def resolve(self, status: str, posted: int = 0) -> None:
        """Release the hold, moving `posted` of it into the posted totals."""
        self.debit.debits_pending -= self.amount
        self.credit.credits_pending -= self.amount
        self.debit.debits_posted += posted
        self.credit.credits_posted += posted
        self.status = status


class LedgerMachine(RuleBasedStateMachine):
    cards = Bundle("cards")
    accounts = Bundle("accounts")
    holds = Bundle("holds")

    def __init__(self, admin_url: str, template: str) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.admin_url = admin_url
        self.database = self.run(create_database(admin_url, template))
        self.conn = self.run(asyncpg.connect(db.with_database(admin_url, self.database)))
        self.now = T0
        self.model: dict[int, Account] = {}
        self.holds_made: dict[int, Hold] = {}

    def run(self, step: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(step)

    def teardown(self) -> None:
        try:
            self.run(self.conn.close())
            self.run(drop_database(self.admin_url, self.database))
        finally:
            self.loop.close()

    def amount_for(self, account: int) -> st.SearchStrategy[int]:
        """Any amount, or one at the edge of what `account` has left to spend."""
        left = self.model[account].available
        return amounts | st.sampled_from([max(1, left + d) for d in (-1, 0, 1)])

    # --- Accounts and immediate transfers -------------------------------------------------

    def new_card(self, funding: int) -> int:
        """A card account, topped up with `funding` from the bank."""
        card = self.run(card_account(self.conn))
        self.model[card] = Account(no_overdraft=True)
        if funding:
            self.move([(self.named_account("bank"), funding), (card, -funding)])
        return card

    def named_account(self, name: str) -> int:
        account = self.run(other_account(self.conn, name))  # the same name: the same account
        self.model.setdefault(account, Account(no_overdraft=False))
        return account

    def move(self, entries: list[tuple[int, int]]) -> None:
        """An immediate transfer, which must be declined exactly when a card's net debit
        exceeds what it has left, and then change nothing."""
        net = Counter[int]()
        for account, amount in entries:
            net[account] += amount
        fits = all(self.model[account].can_take(debit) for account, debit in net.items())
        result = self.run(ledger.transfer(self.conn, Unit.IRR, "test", entries))
        assert result.status is (Status.OK if fits else Status.EXCEEDS_CREDITS)
        if fits:
            for account, amount in entries:
                if amount > 0:
                    self.model[account].debits_posted += amount
                else:
                    self.model[account].credits_posted -= amount

    @initialize(target=accounts)
    def open_bank(self) -> int:
        return self.named_account("bank")

    @initialize(target=accounts)
    def open_shop(self) -> int:
        return self.named_account("shop")

    @initialize(targets=(cards, accounts), funding=amounts)
    def open_first_card(self, funding: int) -> int:
        return self.new_card(funding)

    @precondition(lambda self: len(self.model) < MAX_ACCOUNTS)
    @rule(targets=(cards, accounts), funding=st.integers(0, 1_000))
    def open_card(self, funding: int) -> int:
        return self.new_card(funding)

    @rule(legs=st.lists(st.tuples(accounts, accounts, amounts), min_size=1, max_size=3))
    def transfer(self, legs: list[tuple[int, int, int]]) -> None:
        """Each leg (from, to, amount) debits `from` and credits `to`."""
        self.move([entry for source, to, amount in legs
                   for entry in ((source, amount), (to, -amount))])

    @rule(card=cards, to=accounts, data=st.data())
    def spend(self, card: int, to: int, data: st.DataObject) -> None:
        amount = data.draw(self.amount_for(card), label="amount")
        self.move([(card, amount), (to, -amount)])

    # --- Holds ----------------------------------------------------------------------------

    def place_hold(self, debit: int, credit: int, amount: int, minutes: int) -> Any:
        """A hold, which must be declined exactly when a card has less than `amount` left."""
        timeout_at = self.now + minutes * MINUTE
        if debit == credit:
            with pytest.raises(asyncpg.RaiseError, match="two accounts"):
                self.run(ledger.hold(self.conn, Unit.IRR, "test", debit=debit, credit=credit,
                                     amount=amount, timeout_at=timeout_at))
            return multiple()
        fits = self.model[debit].can_take(amount)
        result = self.run(ledger.hold(self.conn, Unit.IRR, "test", debit=debit, credit=credit,
                                      amount=amount, timeout_at=timeout_at))
        assert result.status is (Status.OK if fits else Status.EXCEEDS_CREDITS)
        if not fits:
            return multiple()
        assert result.transfer_id is not None
        self.holds_made[result.transfer_id] = Hold(
            self.model[debit], self.model[credit], amount, timeout_at)
        self.model[debit].debits_pending += amount
        self.model[credit].credits_pending += amount
        return result.transfer_id

    @rule(target=holds, debit=accounts, credit=accounts, amount=amounts,
          minutes=st.integers(1, 3))
    def hold(self, debit: int, credit: int, amount: int, minutes: int) -> Any:
        return self.place_hold(debit, credit, amount, minutes)

    @rule(target=holds, card=cards, shop=accounts, minutes=st.integers(1, 3), data=st.data())
    def authorize(self, card: int, shop: int, minutes: int, data: st.DataObject) -> Any:
        """A hold on a card, often of exactly what it has left or one more."""
        amount = data.draw(self.amount_for(card), label="amount")
        return self.place_hold(card, shop, amount, minutes)

    @rule(pending=holds, how=st.sampled_from(["all", "part", "nothing", "more"]),
          extra=amounts)
    def post(self, pending: int, how: str, extra: int) -> None:
        held = self.holds_made[pending]
        amount = {"all": None, "part": 1 + extra % held.amount,  # from 1 to all of it
                  "nothing": 0, "more": held.amount + extra}[how]
        expected = self.expected_post(held, amount)
        assert self.run(ledger.post(self.conn, pending, self.now, amount)).status is expected

    def expected_post(self, held: Hold, amount: int | None) -> Status:
        if held.status != "pending":
            return Status(f"already_{held.status}")
        if self.now >= held.timeout_at:
            held.resolve("expired")
            return Status.EXPIRED
        posted = held.amount if amount is None else amount
        if not 0 < posted <= held.amount:
            return Status.EXCEEDS_PENDING
        held.resolve("posted", posted)
        return Status.OK

    @rule(pending=holds)
    def void(self, pending: int) -> None:
        held = self.holds_made[pending]
        if held.status != "pending":
            expected = Status(f"already_{held.status}")
        else:
            held.resolve("voided")
            expected = Status.OK
        assert self.run(ledger.void(self.conn, pending, self.now)).status is expected

    @rule(pending=holds)
    def expire(self, pending: int) -> None:
        held = self.holds_made[pending]
        if held.status != "pending":
            expected = Status(f"already_{held.status}")
        elif self.now < held.timeout_at:
            expected = Status.NOT_EXPIRED
        else:
            held.resolve("expired")
            expected = Status.OK
        assert self.run(ledger.expire(self.conn, pending, self.now)).status is expected

    @precondition(lambda self: self.holds_made)
    @rule(limit=st.integers(1, 3))
    def expire_due(self, limit: int) -> None:
        """The oldest `limit` holds past their timeout (ties by id) expire."""
        due = sorted((held.timeout_at, pending) for pending, held in self.holds_made.items()
                     if held.status == "pending" and held.timeout_at <= self.now)
        expected = [pending for _, pending in due[:limit]]
        for pending in expected:
            self.holds_made[pending].resolve("expired")
        assert self.run(ledger.expire_due(self.conn, self.now, limit)) == expected

    @precondition(lambda self: self.holds_made)
    @rule()
    def tick(self) -> None:
        self.now += MINUTE

    # --- After every step -----------------------------------------------------------------

    @invariant()
    def balances_match_the_model(self) -> None:
        for account, model in self.model.items():
            actual = self.run(ledger.balance(self.conn, account))
            assert actual == model.balance(), f"account {account}"
            assert actual.ledger == model.credits_posted - model.debits_posted
            assert actual.available == model.available
            assert actual.available >= 0 or not model.no_overdraft

    @invariant()
    def db_check_passes(self) -> None:
        outcomes = self.run(dbcheck.run_checks(self.conn))
        assert all(o.ok for o in outcomes), dbcheck.report(outcomes)


def test_ledger_matches_its_model(admin_url: str, template_name: str) -> None:
    run_state_machine_as_test(
        lambda: LedgerMachine(admin_url, template_name),  # type: ignore[arg-type]
        settings=settings(max_examples=int(os.environ.get("LEDGER_MODEL_EXAMPLES", "25")),
                          stateful_step_count=30, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow]))
