"""Positions and netting, table-driven and with Hypothesis."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from settlement.netting import Obligation, Party, Transfer, net_positions, settle
from settlement.positions import COMPONENTS, component, position

NET = 1
A, B, C = Party(NET, 1), Party(NET, 2), Party(NET, 3)
NETWORK = Party(NET, None)


@pytest.mark.parametrize(("code", "expected"), [
    ("club_purchase", "sales"), ("refund", "refunds"), ("club_purchase_fee", "fees"),
    ("refund_fee", "fees"), ("bank_purchase_fee", "fees"), ("discount", "discounts"),
    ("topup", "topups"), ("credit_netting", "credit_netting"), ("cashback_clawback", "other"),
    ("discount_clawback", "discounts"),
])
def test_components(code: str, expected: str) -> None:
    assert component(code) == expected


def test_a_position_pays_a_credit_and_carries_a_debt() -> None:
    paid = position(1, 3, [("club_purchase", 1000), ("club_purchase_fee", -15)], -200)
    assert (paid.net_rial, paid.payout_rial, paid.carried_forward_rial) == (785, 785, 0)
    owed = position(1, 1, [("topup", -500), ("club_purchase", 100)], 0)
    assert (owed.net_rial, owed.payout_rial, owed.carried_forward_rial) == (-400, 0, -400)
    with pytest.raises(ValueError, match="debt"):
        position(1, 0, [], 5)


@settings(max_examples=300)
@given(st.lists(st.tuples(st.sampled_from(["club_purchase", "refund", "club_purchase_fee",
                                           "refund_fee", "discount", "topup", "other"]),
                          st.integers(-10**9, 10**9))),
       st.integers(-10**9, 0))
def test_payouts_plus_fees_plus_carried_forward_make_the_sales(
        rows: list[tuple[str, int]], brought: int) -> None:
    p = position(7, len(rows), rows, brought)
    parts = p.components
    assert set(parts) == set(COMPONENTS)
    assert p.payout_rial >= 0 >= p.carried_forward_rial
    assert p.payout_rial * p.carried_forward_rial == 0
    # What was paid, less what is carried, is everything the merchant earned and owed.
    assert (p.payout_rial + p.carried_forward_rial - parts["fees"] ==
            brought + parts["sales"] + parts["refunds"] + parts["discounts"]
            + parts["topups"] + parts["credit_netting"] + parts["other"])
    assert sum(amount for _, amount in rows) + brought == p.net_rial


@pytest.mark.parametrize(("obligations", "positions", "transfers"), [
    ([], {}, []),
    ([Obligation(A, B, 100)], {A: -100, B: 100}, [Transfer(A, B, 100)]),
    # A owes B, B owes C the same: one transfer A -> C.
    ([Obligation(A, B, 100), Obligation(B, C, 100)], {A: -100, C: 100},
     [Transfer(A, C, 100)]),
    # A cycle nets to nothing.
    ([Obligation(A, B, 50), Obligation(B, C, 50), Obligation(C, A, 50)], {}, []),
    # The network's credit at two stores, one store's own credit at home (ignored).
    ([Obligation(NETWORK, A, 70), Obligation(NETWORK, B, 30), Obligation(C, C, 99)],
     {NETWORK: -100, A: 70, B: 30},
     [Transfer(NETWORK, A, 70), Transfer(NETWORK, B, 30)]),
    # A refund of credit gives value back (a negative obligation).
    ([Obligation(A, B, 80), Obligation(A, B, -30)], {A: -50, B: 50}, [Transfer(A, B, 50)]),
])
def test_netting_table(obligations: list[Obligation], positions: dict[Party, int],
                       transfers: list[Transfer]) -> None:
    assert net_positions(obligations) == positions
    assert settle(positions) == transfers


def test_unbalanced_positions_are_refused() -> None:
    with pytest.raises(ValueError, match="sum to zero"):
        settle({A: 5})


parties = st.builds(Party, st.just(NET), st.one_of(st.none(), st.integers(1, 12)))
obligations = st.lists(st.builds(Obligation, parties, parties, st.integers(-10**6, 10**7)),
                       max_size=40)


@settings(max_examples=500)
@given(obligations)
def test_netting_sums_to_zero_and_settles_in_at_most_n_minus_one_transfers(
        obs: list[Obligation]) -> None:
    positions = net_positions(obs)
    assert sum(positions.values()) == 0
    assert 0 not in positions.values()
    transfers = settle(positions)
    assert len(transfers) <= max(len(positions) - 1, 0)
    left = dict(positions)
    for t in transfers:
        assert t.amount_rial > 0 and t.payer != t.payee
        assert positions[t.payer] < 0 < positions[t.payee]  # debtors pay, creditors receive
        left[t.payer] += t.amount_rial
        left[t.payee] -= t.amount_rial
    assert set(left.values()) <= {0}
    assert settle(positions) == transfers  # deterministic
