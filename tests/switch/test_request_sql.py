"""The request functions of migrations/0007 agree with the Python they stand in for: ledger
account keys, units and overdraft flags (ledger.AccountSpec), and the outcome table
(switch/declines.py and protocol.fields.ResponseCode)."""

from __future__ import annotations

from pathlib import Path

import asyncpg

from protocol.fields import ResponseCode
from switch import cards, keys, ledger, registry
from switch.declines import Decline
from switch.pricing import FeePlan
from switch.registry import MemberProfile


async def test_outcome_table_is_every_decline_plus_the_approvals(conn: asyncpg.Connection
                                                                  ) -> None:
    rows = {r["name"]: r["response_code"]
            for r in await conn.fetch("SELECT name, response_code FROM request_outcome")}
    expected = {d.name: d.response_code.value for d in Decline}
    for approval in (ResponseCode.APPROVED, ResponseCode.PARTIAL_APPROVAL):
        expected[approval.name] = approval.value
    assert rows == expected


async def test_sql_accounts_are_the_accounts_ledger_account_id_names(
        conn: asyncpg.Connection, tmp_path: Path) -> None:
    network = await registry.add_network(conn, "net", "Net", "990901")
    merchant = await registry.add_merchant(
        conn, code="shop", name="Shop", trade="shop", network="net",
        sheba=cards.sheba_from_bban("0" * 22), fees=FeePlan())
    member = await registry.add_member(conn, "net", MemberProfile(
        first_name="A", last_name="B", mobile="09350000001"))
    card = (await registry.issue_card(conn, keys.load_or_create(tmp_path / "keys.json"),
                                      member_id=member, expiry="3012")).card_id
    specs = [ledger.card_rial(card), ledger.card_points(card),
             ledger.card_credit(card, merchant_id=merchant),
             ledger.card_credit(card, network_id=network),
             ledger.merchant_payable(merchant), ledger.credit_issued(merchant_id=merchant),
             ledger.credit_issued(network_id=network), ledger.points_issued(network),
             ledger.fee_income(network), ledger.settlement_bank(network),
             ledger.discount_funding(network_id=network)]
    assert {s.kind for s in specs} == set(ledger.Kind)
    for spec in specs:
        sql_id = await conn.fetchval("SELECT ledger_account_ensure($1, $2, $3, $4)",
                                     spec.kind.value, spec.card_id, spec.merchant_id,
                                     spec.network_id)
        assert await ledger.account_id(conn, spec) == sql_id, spec
        row = await conn.fetchrow(
            "SELECT key, unit, debits_must_not_exceed_credits FROM ledger_account WHERE id = $1",
            sql_id)
        assert row is not None
        assert row["key"] == spec.key
        assert row["unit"] == spec.unit.value
        assert row["debits_must_not_exceed_credits"] == (spec.kind in ledger._NO_OVERDRAFT)
        assert await conn.fetchval("SELECT ledger_account_find($1, $2, $3, $4)",
                                   spec.kind.value, spec.card_id, spec.merchant_id,
                                   spec.network_id) == sql_id
