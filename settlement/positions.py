"""A merchant's position in a window, from its ledger postings. Pure: no I/O.

Every posting on a merchant's payable account made under the RRN of a transaction in the
window (or by the window's own netting) is put in one component by its transfer code, signed
as the merchant sees it (credits to the payable, what the network owes, are positive):

| component | transfer codes | sign |
|---|---|---|
| sales | club_purchase | + |
| refunds | refund | - |
| fees | *_fee (a refund's fee comes back: +) | - |
| discounts | discount (funded by the network or a sponsor); a refund's discount_clawback | +/- |
| topups | topup (cash the merchant collected for the network) | - |
| credit_netting | credit_netting (store credit accepted less credit owed) | +/- |
| other | anything else, so that new postings are never lost | +/- |

net = brought forward + the components. A positive net is paid out; a negative one is
carried forward into the merchant's next position (brought forward there), never lost.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

COMPONENTS = ("sales", "refunds", "fees", "discounts", "topups", "credit_netting", "other")
_BY_CODE = {"club_purchase": "sales", "refund": "refunds", "discount": "discounts",
            "discount_clawback": "discounts", "topup": "topups",
            "credit_netting": "credit_netting"}


def component(code: str) -> str:
    """The position component a transfer code belongs to."""
    if code.endswith("_fee"):
        return "fees"
    return _BY_CODE.get(code, "other")


@dataclass(frozen=True, slots=True)
class Position:
    merchant_id: int
    txn_count: int
    components: Mapping[str, int]
    brought_forward_rial: int

    @property
    def net_rial(self) -> int:
        return self.brought_forward_rial + sum(self.components.values())

    @property
    def payout_rial(self) -> int:
        return max(self.net_rial, 0)

    @property
    def carried_forward_rial(self) -> int:
        return min(self.net_rial, 0)


def position(merchant_id: int, txn_count: int, sums_by_code: Iterable[tuple[str, int]],
             brought_forward_rial: int) -> Position:
    """A position from (transfer code, merchant-signed sum) rows and what was carried."""
    if brought_forward_rial > 0:
        raise ValueError("only a debt is carried forward; a credit is always paid")
    parts = dict.fromkeys(COMPONENTS, 0)
    for code, amount in sums_by_code:
        parts[component(code)] += amount
    return Position(merchant_id, txn_count, parts, brought_forward_rial)
