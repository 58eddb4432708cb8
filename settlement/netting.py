"""Multilateral netting of store credit inside a store network. Pure: no I/O.

Store credit that one party issued and another accepted in payment is an obligation of
the issuer to the acceptor. A party is a store (`merchant_id`) or the store network itself
(`merchant_id` None: credit the network granted). Netting replaces all obligations of a
window by one net position per party (positive: it is owed money), and the positions of a
network always sum to zero. The transfers that settle them come from a greedy match: the
largest debtor pays the largest creditor as much as both allow, until nobody is left. Each
transfer leaves at least one of its two parties at zero, and the last leaves both, so n
parties with a non-zero position need at most n - 1 transfers. That is the bound we
guarantee (finding the true minimum is NP-hard; n - 1 is reached whenever no subgroup of
positions sums to zero).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True, order=True)
class Party:
    network_id: int
    merchant_id: int | None  # None: the store network itself

    def sort_key(self) -> tuple[int, int]:
        return self.network_id, -1 if self.merchant_id is None else self.merchant_id


@dataclass(frozen=True, slots=True)
class Obligation:
    debtor: Party
    creditor: Party
    amount_rial: int  # may be negative: a refund of credit gives value back


@dataclass(frozen=True, slots=True)
class Transfer:
    payer: Party
    payee: Party
    amount_rial: int


def net_positions(obligations: Iterable[Obligation]) -> dict[Party, int]:
    """Each party's net position (owed to it minus owed by it); zero positions omitted."""
    net: dict[Party, int] = {}
    for ob in obligations:
        if ob.debtor == ob.creditor or ob.amount_rial == 0:
            continue
        net[ob.debtor] = net.get(ob.debtor, 0) - ob.amount_rial
        net[ob.creditor] = net.get(ob.creditor, 0) + ob.amount_rial
    return {party: value for party, value in sorted(net.items(), key=lambda i: i[0].sort_key())
            if value != 0}


def settle(positions: Mapping[Party, int]) -> list[Transfer]:
    """Transfers that bring every position to zero (at most n - 1 for n parties).

    Ties are broken by party order, so the same positions always give the same transfers.
    """
    if sum(positions.values()) != 0:
        raise ValueError("net positions must sum to zero")
    debtors = {p: -v for p, v in positions.items() if v < 0}
    creditors = {p: v for p, v in positions.items() if v > 0}
    transfers: list[Transfer] = []
    while debtors:
        payer = max(debtors, key=lambda p: (debtors[p], _rank(p)))
        payee = max(creditors, key=lambda p: (creditors[p], _rank(p)))
        amount = min(debtors[payer], creditors[payee])
        transfers.append(Transfer(payer, payee, amount))
        for side, party in ((debtors, payer), (creditors, payee)):
            side[party] -= amount
            if side[party] == 0:
                del side[party]
    return transfers


def _rank(party: Party) -> tuple[int, int]:
    # Larger rank wins a tie in max(): the lowest network, then the lowest merchant.
    network, merchant = party.sort_key()
    return -network, -merchant
