"""What every step of processing one request needs, gathered once."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import asyncpg

from switch import ledger
from switch.config import Settings
from switch.pricing import ShaparakFeeRule
from switch.store import Identity, TerminalRecord

# A Shaparak purchase's money moves at the bank; its confirm is accepted this long after
# the 0100 even when the terminal's hold timeout has passed.
SHAPARAK_CONFIRM_WINDOW = timedelta(hours=24)


@dataclass(frozen=True, slots=True)
class Ctx:
    conn: asyncpg.Connection
    settings: Settings
    terminal: TerminalRecord
    identity: Identity
    now: datetime
    pan_hash: Callable[[str], bytes]
    accounts: ledger.AccountIds
    # Account ids this request used; the processor adds them to `accounts` once committed.
    used_accounts: dict[str, int] = field(default_factory=dict)

    async def account(self, spec: ledger.AccountSpec) -> int:
        found = self.accounts.get(spec.key) or self.used_accounts.get(spec.key)
        if found is None:
            found = await ledger.account_id(self.conn, spec)
            self.used_accounts[spec.key] = found
        return found

    @property
    def hold_timeout(self) -> timedelta:
        seconds = self.terminal.hold_timeout_s or self.settings.hold_timeout_s
        return timedelta(seconds=seconds)

    @property
    def shaparak_rule(self) -> ShaparakFeeRule:
        s = self.settings
        return ShaparakFeeRule(s.shaparak_fee_fixed_rial, s.shaparak_fee_threshold_rial,
                               s.shaparak_fee_bp, s.shaparak_fee_cap_rial)
