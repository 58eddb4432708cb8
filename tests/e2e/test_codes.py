"""Every processing code of the profile (§4) and every response code the switch can give
(§6), end to end over TCP against the real switch and database, each with its ledger effect.

Demo data used (see switch/demo.py): café CAFE0001 (fee 1.5 %, min 1,000, max 50,000;
pays the Shaparak fee), hypermarket HYPR0001 (0.8 % + 500, max 200,000; Shaparak-fee
exempt). Member i's club card is `demo_club_pan(i)`; members 0, 5, 10… have a linked Shetab
card `demo_bank_pan(i)`; 0, 3, 6… have café gift credit; 0, 4, 8… network credit; even ones
points. A decline must change no balance: `all_balances` snapshots every account.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from protocol.cardblock import CardData
from protocol.fields import Mti, ProcessingCode, ResponseCode
from protocol.messages import ZERO_MAC, AuthResponse
from protocol.values import AdditionalData
from simulator.client import NoResponse
from switch import cards, demo, keys, registry
from tests.e2e.conftest import Env
from tests.e2e.support import (
    all_balances,
    blocks,
    cafe_credit,
    connect,
    counts,
    decode_response,
    fee_income,
    ksn_counter,
    make_terminal,
    network_credit,
    payable,
    raw_exchange,
    resign,
    txn_rows,
    without_field,
)

PC = ProcessingCode
RC = ResponseCode
EXP = demo.CARD_EXPIRY
club = demo.demo_club_pan
bank = demo.demo_bank_pan
BANK_EXPIRY = "3106"


def assert_blocks(actual: dict[tuple[str, str], int],
                  expected: dict[tuple[str, str], int]) -> None:
    """Every expected block is present with its amount (others may follow)."""
    assert {k: actual.get(k) for k in expected} == expected, actual


# -- 000000: bank purchase over Shaparak ------------------------------------------------------


@pytest.mark.parametrize(("tid", "merchant", "card_pan", "amount", "fee", "psp_fee",
                          "rewards"), [
    # café: 1.5 % clamped to [1,000, 50,000]; Shaparak: 1,200 below 6,000,000, else 2 bp
    ("CAFE0001", "cafe-lale", bank(0), 1_000_000, 15_000, 1_200, True),
    ("CAFE0001", "cafe-lale", bank(1), 10_000_000, 50_000, 2_000, False),
    ("CAFE0001", "cafe-lale", bank(5), 50_000, 1_000, 1_200, True),
    # hypermarket: 0.8 % + 500, exempt from the Shaparak fee
    ("HYPR0001", "hyper-setareh", bank(0), 1_000_000, 8_500, 0, True),
])
async def test_000000_bank_purchase_priced_then_fee_posted_on_confirm(
        env: Env, tid: str, merchant: str, card_pan: str, amount: int, fee: int,
        psp_fee: int, rewards: bool) -> None:
    async with await env.client(tid) as client:
        payable_before, income_before = await payable(env, merchant), await fee_income(env)
        before = await all_balances(env)
        response, prepared = await client.purchase(amount, card_pan, BANK_EXPIRY,
                                                   processing_code=PC.PURCHASE_SHAPARAK)
        assert response.code is RC.APPROVED
        assert response.message.rrn is not None and response.message.approval_code
        expected = {("00", "90"): 0, ("00", "91"): amount, ("00", "92"): fee,
                    ("00", "93"): psp_fee}
        if rewards:  # a linked member's card earns (no campaign yet: zero)
            expected |= {("92", "94"): 0, ("93", "95"): 0}
        assert blocks(response) == expected
        assert await all_balances(env) == before, "phase 1 of a bank purchase holds nothing"

        confirmed = await client.confirm(prepared, response.message.rrn)
        assert confirmed.code is RC.APPROVED
        assert_blocks(blocks(confirmed), {("00", "91"): amount, ("00", "92"): fee})
        assert await payable(env, merchant) == payable_before - fee
        assert await fee_income(env) == income_before + fee


# -- 009100: club purchase ---------------------------------------------------------------------


async def test_009100_club_purchase_holds_then_posts(env: Env) -> None:
    async with await env.client("CAFE0001") as client:
        start = await env.card_balance(1)
        payable_before, income_before = await payable(env, "cafe-lale"), await fee_income(env)
        response, prepared = await client.purchase(50_000, club(1), EXP)
        assert response.code is RC.APPROVED
        assert blocks(response) == {
            ("00", "90"): 0, ("00", "91"): 50_000, ("00", "92"): 1_000,
            ("91", "01"): start.ledger, ("91", "02"): start.available - 50_000}
        held = await env.card_balance(1)
        assert (held.ledger, held.available) == (start.ledger, start.available - 50_000)
        assert await payable(env, "cafe-lale") == payable_before

        confirmed = await client.confirm(prepared, response.message.rrn or "")
        assert confirmed.code is RC.APPROVED
        assert_blocks(blocks(confirmed), {("00", "91"): 50_000, ("00", "92"): 1_000,
                                          ("91", "01"): start.ledger - 50_000,
                                          ("91", "02"): start.ledger - 50_000})
        after = await env.card_balance(1)
        assert (after.ledger, after.available) == (start.ledger - 50_000,
                                                   start.ledger - 50_000)
        assert await payable(env, "cafe-lale") == payable_before + 50_000 - 1_000
        assert await fee_income(env) == income_before + 1_000


# -- 009200: store-credit purchase -------------------------------------------------------------


async def test_009200_store_credit_purchase_full(env: Env) -> None:
    credit = (await cafe_credit(env, 3)).available  # member 3: café credit only
    assert credit > 0
    spend = credit // 2
    async with await env.client("CAFE0001") as client:
        income_before = await fee_income(env)
        response, prepared = await client.purchase(spend, club(3), EXP,
                                                   processing_code=PC.PURCHASE_STORE_CREDIT)
        assert response.code is RC.APPROVED
        fee = max(1_000, (spend * 150 + 5_000) // 10_000)
        assert blocks(response) == {
            ("00", "90"): 0, ("00", "91"): spend, ("00", "92"): fee,
            ("92", "01"): credit, ("92", "02"): credit - spend}
        held = await cafe_credit(env, 3)
        assert (held.ledger, held.available) == (credit, credit - spend)
        confirmed = await client.confirm(prepared, response.message.rrn or "")
        assert confirmed.code is RC.APPROVED
        after = await cafe_credit(env, 3)
        assert (after.ledger, after.available) == (credit - spend, credit - spend)
        assert await fee_income(env) == income_before + fee


async def test_009200_partial_approval_with_pa_spends_all_credit_and_answers_10(env: Env) -> None:
    # Member 12: café credit and network credit, both usable at the café.
    cafe = (await cafe_credit(env, 12)).available
    network = (await network_credit(env, 12)).available
    assert cafe > 0 and network > 0
    total = cafe + network
    async with await env.client("CAFE0001") as client:
        response, prepared = await client.purchase(
            total + 10_000, club(12), EXP, processing_code=PC.PURCHASE_STORE_CREDIT,
            additional_data=AdditionalData(partial_approval=True))
        assert response.code is RC.PARTIAL_APPROVAL
        got = blocks(response)
        assert got[("92", "57")] == total
        assert_blocks(got, {("00", "91"): total, ("92", "01"): total, ("92", "02"): 0})
        assert (await cafe_credit(env, 12)).available == 0
        assert (await network_credit(env, 12)).available == 0
        # The 0220 repeats the 0100's fields 3 and 4 (the amount asked for).
        confirmed = await client.confirm(prepared, response.message.rrn or "")
        assert confirmed.code is RC.APPROVED
        assert (await cafe_credit(env, 12)).ledger == 0
        assert (await network_credit(env, 12)).ledger == 0


async def test_009200_more_than_the_credit_without_pa_is_51(env: Env) -> None:
    credit = (await cafe_credit(env, 3)).available
    async with await env.client("CAFE0001") as client:
        before, rows = await all_balances(env), await counts(env)
        for extra in (None, AdditionalData(partial_approval=False)):
            response, _ = await client.purchase(credit + 1, club(3), EXP,
                                                processing_code=PC.PURCHASE_STORE_CREDIT,
                                                additional_data=extra)
            assert response.code is RC.INSUFFICIENT_FUNDS
            assert response.message.rrn is None and not response.message.amounts
        assert await all_balances(env) == before
        assert (await counts(env))["txn"] == rows["txn"]


async def test_009200_credit_of_another_store_is_not_spendable_even_with_pa(env: Env) -> None:
    # Member 3's only credit is the café's: nothing is usable at the hypermarket.
    async with await env.client("HYPR0001") as client:
        before = await all_balances(env)
        response, _ = await client.purchase(
            10_000, club(3), EXP, processing_code=PC.PURCHASE_STORE_CREDIT,
            additional_data=AdditionalData(partial_approval=True))
        assert response.code is RC.INSUFFICIENT_FUNDS
        assert await all_balances(env) == before


# -- 219100: top-up ----------------------------------------------------------------------------


async def test_219100_topup_is_credited_on_confirm_only(env: Env) -> None:
    async with await env.client("CAFE0001") as client:
        start = await env.card_balance(1)
        payable_before = await payable(env, "cafe-lale")
        response, prepared = await client.topup(200_000, club(1), EXP)
        assert response.code is RC.APPROVED
        assert blocks(response) == {("91", "01"): start.ledger, ("91", "02"): start.available}
        pending = await env.card_balance(1)
        assert (pending.ledger, pending.available) == (start.ledger, start.available)
        confirmed = await client.confirm(prepared, response.message.rrn or "")
        assert confirmed.code is RC.APPROVED
        after = await env.card_balance(1)
        assert (after.ledger, after.available) == (start.ledger + 200_000,
                                                   start.available + 200_000)
        # The merchant collected the cash: it now owes the network the top-up, no fee.
        assert await payable(env, "cafe-lale") == payable_before - 200_000


async def test_219100_reversed_topup_credits_nothing(env: Env) -> None:
    async with await env.client("CAFE0001") as client:
        before = await all_balances(env)
        response, prepared = await client.topup(200_000, club(1), EXP)
        assert response.code is RC.APPROVED
        assert (await client.reverse(prepared, response.message.rrn)).code is RC.APPROVED
        assert await all_balances(env) == before


# -- 31xx00: balance inquiries -----------------------------------------------------------------


async def test_balance_inquiries_answer_the_right_field_54_blocks(env: Env) -> None:
    rial = await env.card_balance(0)
    points = await env.card_balance(0, "points")
    cafe, network = await cafe_credit(env, 0), await network_credit(env, 0)
    assert rial.ledger > 0 and points.ledger > 0 and cafe.ledger > 0 and network.ledger > 0
    rial_blocks = {("91", "01"): rial.ledger, ("91", "02"): rial.available}
    points_blocks = {("93", "01"): points.ledger, ("93", "02"): points.available}
    before, rows = await all_balances(env), await counts(env)
    async with await env.client("CAFE0001") as client:
        credit_blocks = {("92", "01"): cafe.ledger + network.ledger,
                         ("92", "02"): cafe.available + network.available}
        everything = await client.balance(club(0), EXP, processing_code=PC.BALANCE_INQUIRY)
        assert everything.code is RC.APPROVED
        assert blocks(everything) == rial_blocks | credit_blocks | points_blocks
        only_rial = await client.balance(club(0), EXP)
        assert blocks(only_rial) == rial_blocks
        only_credit = await client.balance(club(0), EXP,
                                           processing_code=PC.BALANCE_INQUIRY_STORE_CREDIT)
        assert blocks(only_credit) == credit_blocks
    async with await env.client("HYPR0001") as client:
        # At the hypermarket the café's credit is not spendable, so it is not shown.
        only_credit = await client.balance(club(0), EXP,
                                           processing_code=PC.BALANCE_INQUIRY_STORE_CREDIT)
        assert blocks(only_credit) == {("92", "01"): network.ledger,
                                       ("92", "02"): network.available}
    assert await all_balances(env) == before
    assert (await counts(env))["txn"] == rows["txn"], "an inquiry creates no transaction"


async def test_balance_inquiry_shows_a_pending_hold(env: Env) -> None:
    async with await env.client("CAFE0001") as client:
        start = await env.card_balance(1)
        response, _ = await client.purchase(70_000, club(1), EXP)
        assert response.code is RC.APPROVED
        inquiry = await client.balance(club(1), EXP)
        assert blocks(inquiry) == {("91", "01"): start.ledger,
                                   ("91", "02"): start.available - 70_000}


# -- refunds: 209100, 209200, 200000 -----------------------------------------------------------


async def _confirmed(client, amount: int, pan: str, expiry: str = EXP,
                     pc: ProcessingCode = PC.PURCHASE_CLUB) -> str:
    response, prepared = await client.purchase(amount, pan, expiry, processing_code=pc)
    assert response.code is RC.APPROVED, response
    rrn = response.message.rrn
    assert (await client.confirm(prepared, rrn)).code is RC.APPROVED
    return str(rrn)


async def test_209100_partial_then_rest_then_beyond(env: Env) -> None:
    async with await env.client("CAFE0001") as client:
        start = await env.card_balance(1)
        payable_start, income_start = await payable(env, "cafe-lale"), await fee_income(env)
        rrn = await _confirmed(client, 100_000, club(1))  # fee 1,500
        assert await payable(env, "cafe-lale") == payable_start + 100_000 - 1_500

        response, refund = await client.refund(rrn, 30_000, club(1), EXP)
        assert response.code is RC.APPROVED
        pending = await env.card_balance(1)
        assert pending.available == start.available - 100_000, "credited on confirm only"
        assert (await client.confirm(refund, response.message.rrn or "")).code is RC.APPROVED
        assert (await env.card_balance(1)).ledger == start.ledger - 70_000
        # The fee comes back in proportion: 30 % of 1,500.
        assert await fee_income(env) == income_start + 1_500 - 450
        assert await payable(env, "cafe-lale") == payable_start + 70_000 - 1_050

        before = await all_balances(env)
        beyond, _ = await client.refund(rrn, 70_001, club(1), EXP)
        assert beyond.code is RC.INVALID_AMOUNT
        assert await all_balances(env) == before

        response, refund = await client.refund(rrn, 70_000, club(1), EXP)
        assert response.code is RC.APPROVED
        assert (await client.confirm(refund, response.message.rrn or "")).code is RC.APPROVED
        end = await env.card_balance(1)
        assert (end.ledger, end.available) == (start.ledger, start.available)
        assert await fee_income(env) == income_start
        assert await payable(env, "cafe-lale") == payable_start

        nothing_left, _ = await client.refund(rrn, 1, club(1), EXP)
        assert nothing_left.code is RC.INVALID_AMOUNT


async def test_209200_refund_gives_credit_back_to_its_issuers_in_spending_order(
        env: Env) -> None:
    cafe0, net0 = (await cafe_credit(env, 12)).ledger, (await network_credit(env, 12)).ledger
    spend = cafe0 + net0 // 2  # all the café credit first, then half of the network's
    async with await env.client("CAFE0001") as client:
        income_start = await fee_income(env)
        rrn = await _confirmed(client, spend, club(12), pc=PC.PURCHASE_STORE_CREDIT)
        assert (await cafe_credit(env, 12)).ledger == 0
        assert (await network_credit(env, 12)).ledger == net0 - net0 // 2

        # Refund the café part and one rial more: the café's credit comes back whole,
        # the network's gets one rial.
        first = cafe0 + 1
        response, refund = await client.refund(rrn, first, club(12), EXP,
                                               processing_code=PC.REFUND_STORE_CREDIT)
        assert response.code is RC.APPROVED
        assert (await client.confirm(refund, response.message.rrn or "")).code is RC.APPROVED
        assert (await cafe_credit(env, 12)).ledger == cafe0
        assert (await network_credit(env, 12)).ledger == net0 - net0 // 2 + 1

        response, refund = await client.refund(rrn, spend - first, club(12), EXP,
                                               processing_code=PC.REFUND_STORE_CREDIT)
        assert response.code is RC.APPROVED
        assert (await client.confirm(refund, response.message.rrn or "")).code is RC.APPROVED
        assert (await cafe_credit(env, 12)).ledger == cafe0
        assert (await network_credit(env, 12)).ledger == net0
        assert await fee_income(env) == income_start


async def test_200000_bank_refund_gives_back_the_fee_share(env: Env) -> None:
    async with await env.client("CAFE0001") as client:
        payable_start, income_start = await payable(env, "cafe-lale"), await fee_income(env)
        rrn = await _confirmed(client, 1_000_000, bank(0), BANK_EXPIRY, PC.PURCHASE_SHAPARAK)
        assert await fee_income(env) == income_start + 15_000
        cards_before = await env.card_balance(0)

        response, refund = await client.refund(rrn, 400_000, bank(0), BANK_EXPIRY,
                                               processing_code=PC.REFUND_SHAPARAK)
        assert response.code is RC.APPROVED
        assert (await client.confirm(refund, response.message.rrn or "")).code is RC.APPROVED
        assert await fee_income(env) == income_start + 15_000 - 6_000
        assert await payable(env, "cafe-lale") == payable_start - 15_000 + 6_000
        assert await env.card_balance(0) == cards_before, "the money goes back at the bank"

        other_card, _ = await client.refund(rrn, 1_000, bank(5), BANK_EXPIRY,
                                            processing_code=PC.REFUND_SHAPARAK)
        assert other_card.code is RC.INVALID_TRANSACTION
        beyond, _ = await client.refund(rrn, 600_001, bank(0), BANK_EXPIRY,
                                        processing_code=PC.REFUND_SHAPARAK)
        assert beyond.code is RC.INVALID_AMOUNT


async def test_refund_naming_an_unknown_rrn_is_25_and_without_or_is_12(env: Env) -> None:
    async with await env.client("CAFE0001") as client:
        before = await all_balances(env)
        unknown, _ = await client.refund("999999999999", 1_000, club(1), EXP)
        assert unknown.code is RC.ORIGINAL_NOT_FOUND
        no_or, _ = await client.purchase(1_000, club(1), EXP, processing_code=PC.REFUND_CLUB)
        assert no_or.code is RC.INVALID_TRANSACTION
        assert await all_balances(env) == before


async def test_refund_with_the_wrong_processing_code_for_the_original_is_12(env: Env) -> None:
    async with await env.client("CAFE0001") as client:
        rrn = await _confirmed(client, 10_000, club(1))
        before = await all_balances(env)
        wrong, _ = await client.refund(rrn, 1_000, club(1), EXP,
                                       processing_code=PC.REFUND_STORE_CREDIT)
        assert wrong.code is RC.INVALID_TRANSACTION
        assert await all_balances(env) == before


# -- response codes ----------------------------------------------------------------------------


@pytest.mark.skip(reason="no rule declines with 05 yet: Decline.DO_NOT_HONOUR is defined in "
                         "switch/declines.py but never raised anywhere in switch/")
async def test_05_do_not_honour() -> None:
    raise AssertionError("unreachable")


async def test_12_confirm_after_reversal(env: Env) -> None:
    async with await env.client("CAFE0001") as client:
        start = await env.card_balance(1)
        response, prepared = await client.purchase(40_000, club(1), EXP)
        rrn = response.message.rrn or ""
        assert (await client.reverse(prepared, rrn)).code is RC.APPROVED
        confirmed = await client.confirm(prepared, rrn)
        assert confirmed.code is RC.INVALID_TRANSACTION
        assert await env.card_balance(1) == start


async def test_12_original_arriving_after_its_reversal(env: Env) -> None:
    terminal = make_terminal(env, "CAFE0001")
    async with await connect(env, terminal) as client:
        start, rows = await env.card_balance(1), await counts(env)
        original = terminal.auth(PC.PURCHASE_CLUB, 40_000, club(1), EXP)
        reversal = await client.send(terminal.reverse(original, None))
        assert reversal.code is RC.APPROVED
        assert reversal.message.rrn is None
        # The original comes late, re-sent by the terminal under a fresh KSN (a copy under
        # its old KSN, below the reversal's, is a counter replay: see test_lifecycle).
        late = await client.send(resign(terminal, original, CardData("CAFE0001", club(1), EXP)))
        assert late.code is RC.INVALID_TRANSACTION
        assert late.message.rrn is None
        assert await env.card_balance(1) == start
        assert (await counts(env))["txn"] == rows["txn"]


async def test_12_refund_of_a_purchase_not_yet_confirmed(env: Env) -> None:
    async with await env.client("CAFE0001") as client:
        response, _ = await client.purchase(40_000, club(1), EXP)
        before = await all_balances(env)
        refund, _ = await client.refund(response.message.rrn or "", 10_000, club(1), EXP)
        assert refund.code is RC.INVALID_TRANSACTION
        assert await all_balances(env) == before


async def test_13_confirm_or_reversal_whose_field_3_or_4_differs(env: Env) -> None:
    async with await env.client("CAFE0001") as client:
        start = await env.card_balance(1)
        response, prepared = await client.purchase(40_000, club(1), EXP)
        rrn = response.message.rrn or ""
        held = await all_balances(env)
        for kwargs in ({"amount": 40_001}, {"processing_code": PC.PURCHASE_STORE_CREDIT}):
            assert (await client.confirm(prepared, rrn, **kwargs)).code is RC.INVALID_AMOUNT
            assert (await client.reverse(prepared, rrn, **kwargs)).code is RC.INVALID_AMOUNT
        assert await all_balances(env) == held, "the hold stays as it was"
        assert (await client.confirm(prepared, rrn)).code is RC.APPROVED
        assert (await env.card_balance(1)).ledger == start.ledger - 40_000


async def test_13_zero_amount_purchase(env: Env) -> None:
    async with await env.client("CAFE0001") as client:
        before = await all_balances(env)
        response, _ = await client.purchase(0, club(1), EXP)
        assert response.code is RC.INVALID_AMOUNT
        assert await all_balances(env) == before


async def test_14_luhn_failure_unknown_club_card_and_wrong_expiry(env: Env) -> None:
    good = club(1)
    bad_luhn = good[:-1] + str((int(good[-1]) + 1) % 10)
    unknown = cards.new_club_pan(demo.CLUB_BIN, "999999999")
    bank_bad_luhn = bank(1)[:-1] + str((int(bank(1)[-1]) + 1) % 10)
    async with await env.client("CAFE0001") as client:
        before, rows = await all_balances(env), await counts(env)
        for pan, expiry, pc in ((bad_luhn, EXP, PC.PURCHASE_CLUB),
                                (unknown, EXP, PC.PURCHASE_CLUB),
                                (unknown, EXP, PC.BALANCE_INQUIRY),
                                (good, "2912", PC.PURCHASE_CLUB),
                                (bank_bad_luhn, BANK_EXPIRY, PC.PURCHASE_SHAPARAK)):
            response, _ = await client.purchase(1_000, pan, expiry, processing_code=pc)
            assert response.code is RC.INVALID_CARD_NUMBER, (pan[-4:], expiry, pc)
        assert await all_balances(env) == before
        assert (await counts(env))["txn"] == rows["txn"]


async def test_25_confirm_naming_an_unknown_rrn(env: Env) -> None:
    async with await env.client("CAFE0001") as client:
        _, prepared = await client.purchase(40_000, club(1), EXP)
        held = await all_balances(env)
        unknown = await client.confirm(prepared, "999999999999")
        assert unknown.code is RC.ORIGINAL_NOT_FOUND
        assert await all_balances(env) == held


async def test_30_garbage_after_a_valid_mti_and_a_missing_mandatory_field(env: Env) -> None:
    terminal = make_terminal(env, "CAFE0001")
    async with await connect(env, terminal) as client:
        rows = await counts(env)
        answer = await raw_exchange(client, b"0100" + bytes(range(7, 47)))
        garbage = decode_response(answer)
        assert isinstance(garbage, AuthResponse)
        assert garbage.response_code is RC.FORMAT_ERROR
        assert garbage.mac == ZERO_MAC

        # Field 22 left out, MAC correct: decodes byte-wise, breaks the presence rules.
        prepared = terminal.auth(PC.PURCHASE_CLUB, 1_000, club(1), EXP)
        answer = await raw_exchange(client, without_field(prepared, 22))
        missing = decode_response(answer)
        assert missing.MTI is Mti.AUTH_RESPONSE
        assert missing.response_code is RC.FORMAT_ERROR

        # A malformed field: letters in the amount.
        raw = bytearray(prepared.raw)
        at = raw.index(b"%012d" % 1_000)
        raw[at:at + 3] = b"ABC"
        malformed = decode_response(await raw_exchange(client, bytes(raw)))
        assert malformed.response_code is RC.FORMAT_ERROR

        assert await counts(env) == rows, "a format error writes nothing"
        assert await ksn_counter(env, "CAFE0001") == 0
        assert (await client.echo()).code is RC.APPROVED, "the connection still serves"


async def test_30_body_without_a_known_mti_writes_nothing_and_the_connection_serves_on(
        env: Env) -> None:
    # The switch answers nothing here today (there is no response MTI to answer an unknown
    # MTI in kind; see the report). Whatever it does, it must write nothing and keep serving,
    # and anything it sends back must be a 30.
    async with await env.client("CAFE0001") as client:
        rows = await counts(env)
        await client.send_message_bytes(b"\xff" * 40)
        await client.send_message_bytes(b"9999" + bytes(36))
        assert (await client.echo()).code is RC.APPROVED
        assert await counts(env) == {**rows, "request_log": rows["request_log"] + 1}
        while True:
            try:
                frame = await client.next_unmatched_frame(timeout_s=0.1)
            except NoResponse:
                break
            assert decode_response(frame).response_code is RC.FORMAT_ERROR


async def test_30_response_echoes_the_fields_that_decoded(env: Env) -> None:
    terminal = make_terminal(env, "CAFE0001")
    async with await connect(env, terminal) as client:
        prepared = terminal.auth(PC.PURCHASE_CLUB, 1_000, club(1), EXP)
        missing = decode_response(await raw_exchange(client, without_field(prepared, 22)))
        assert missing.response_code is RC.FORMAT_ERROR
        # docs/protocol.md, interpretation 1: a 30 "echoes only what could be decoded";
        # profile §1: responses are matched by field 11 and field 7.
        assert (missing.stan, missing.transmission_time) == prepared.identity
        assert missing.ksn == prepared.request.ksn


async def test_51_club_purchase_beyond_the_balance(env: Env) -> None:
    async with await env.client("CAFE0001") as client:
        start = await env.card_balance(1)
        before = await all_balances(env)
        response, _ = await client.purchase(start.available + 1, club(1), EXP)
        assert response.code is RC.INSUFFICIENT_FUNDS
        assert await all_balances(env) == before
        exact, _ = await client.purchase(start.available, club(1), EXP)
        assert exact.code is RC.APPROVED
        assert (await env.card_balance(1)).available == 0


async def test_54_expired_club_card_and_expired_bank_card(env: Env) -> None:
    card_id = await env.card_id(1)
    member_id = await env.conn.fetchval("SELECT member_id FROM card WHERE id = $1", card_id)
    expired_pan = cards.new_club_pan(demo.CLUB_BIN, "900000001")
    issued = await registry.issue_card(env.conn, keys.load(env.key_file), member_id=member_id,
                                       expiry="2001", pan=expired_pan)
    assert issued.expiry == "2001"
    async with await env.client("CAFE0001") as client:
        before = await all_balances(env)
        response, _ = await client.purchase(1_000, expired_pan, "2001")
        assert response.code is RC.EXPIRED_CARD
        response, _ = await client.purchase(1_000, bank(1), "2001",
                                            processing_code=PC.PURCHASE_SHAPARAK)
        assert response.code is RC.EXPIRED_CARD
        assert await all_balances(env) == before


async def test_57_club_card_over_shaparak_and_bank_card_as_club_card(env: Env) -> None:
    async with await env.client("CAFE0001") as client:
        before, rows = await all_balances(env), await counts(env)
        response, _ = await client.purchase(1_000, club(1), EXP,
                                            processing_code=PC.PURCHASE_SHAPARAK)
        assert response.code is RC.NOT_PERMITTED_TO_CARD
        response, _ = await client.purchase(1_000, bank(0), BANK_EXPIRY)
        assert response.code is RC.NOT_PERMITTED_TO_CARD
        assert await all_balances(env) == before
        assert (await counts(env))["txn"] == rows["txn"]


async def test_58_suspended_merchant(env: Env) -> None:
    await env.conn.execute("UPDATE merchant SET status = 'suspended' WHERE code = 'barber-sadaf'")
    async with await env.client("BARB0001") as client:
        before = await all_balances(env)
        for pc, pan, expiry in ((PC.PURCHASE_CLUB, club(1), EXP),
                                (PC.PURCHASE_SHAPARAK, bank(0), BANK_EXPIRY),
                                (PC.TOP_UP_CLUB, club(1), EXP)):
            response, _ = await client.purchase(1_000, pan, expiry, processing_code=pc)
            assert response.code is RC.NOT_PERMITTED_TO_TERMINAL, pc
        assert await all_balances(env) == before
    async with await env.client("CAFE0001") as client:  # other merchants are unaffected
        response, _ = await client.purchase(1_000, club(1), EXP)
        assert response.code is RC.APPROVED


async def test_58_closed_merchant(env: Env) -> None:
    await env.conn.execute("UPDATE merchant SET status = 'closed' WHERE code = 'hyper-setareh'")
    async with await env.client("HYPR0001") as client:
        before = await all_balances(env)
        response, _ = await client.purchase(1_000, club(1), EXP)
        assert response.code is RC.NOT_PERMITTED_TO_TERMINAL
        assert await all_balances(env) == before


async def test_58_balance_inquiry_at_a_suspended_merchant(env: Env) -> None:
    await env.conn.execute("UPDATE merchant SET status = 'suspended' WHERE code = 'barber-sadaf'")
    async with await env.client("BARB0001") as client:
        response = await client.balance(club(1), EXP)
        assert response.code is RC.NOT_PERMITTED_TO_TERMINAL


async def test_58_club_card_of_another_store_network(env: Env) -> None:
    await registry.add_network(env.conn, "other-net", "Another Network", "990200")
    member_id = await registry.add_member(
        env.conn, "other-net", registry.MemberProfile("Nima", "Tehrani", "09350000001"))
    other_pan = cards.new_club_pan("990200", "000000001")
    await registry.issue_card(env.conn, keys.load(env.key_file), member_id=member_id,
                              expiry=EXP, pan=other_pan)
    async with await env.client("CAFE0001") as client:
        before = await all_balances(env)
        for pc in (PC.PURCHASE_CLUB, PC.BALANCE_INQUIRY_CLUB):
            response, _ = await client.purchase(1_000, other_pan, EXP, processing_code=pc)
            assert response.code is RC.NOT_PERMITTED_TO_TERMINAL, pc
        assert await all_balances(env) == before


async def test_62_blocked_card(env: Env) -> None:
    await env.conn.execute("UPDATE card SET status = 'blocked' WHERE id = $1",
                           await env.card_id(2))
    async with await env.client("CAFE0001") as client:
        before = await all_balances(env)
        for pc in (PC.PURCHASE_CLUB, PC.TOP_UP_CLUB, PC.BALANCE_INQUIRY_CLUB):
            response, _ = await client.purchase(1_000, club(2), EXP, processing_code=pc)
            assert response.code is RC.RESTRICTED_CARD, pc
        assert await all_balances(env) == before


async def test_68_confirm_after_the_hold_expired(env: Env) -> None:
    async with await env.client("CAFE0001") as client:
        start = await env.card_balance(1)
        response, prepared = await client.purchase(40_000, club(1), EXP)
        rrn = response.message.rrn or ""
        env.clock.advance(seconds=env.settings.hold_timeout_s + 1)
        late = await client.confirm(prepared, rrn)
        assert late.code is RC.TOO_LATE
        assert await env.card_balance(1) == start
        assert [(t["state"], t["void_reason"]) for t in await txn_rows(env)] == [
            ("VOIDED", "expired")]
        again = await client.confirm(prepared, rrn)  # a new 0220 for the same purchase
        assert again.code is RC.TOO_LATE
        assert await env.card_balance(1) == start


async def test_68_per_terminal_hold_timeout(env: Env) -> None:
    await env.conn.execute("UPDATE terminal SET hold_timeout_s = 30 WHERE tid = 'CAFE0001'")
    async with await env.client("CAFE0001") as client:
        start = await env.card_balance(1)
        response, prepared = await client.purchase(40_000, club(1), EXP)
        env.clock.advance(seconds=31)
        assert (await client.confirm(prepared, response.message.rrn or "")).code is RC.TOO_LATE
        assert await env.card_balance(1) == start


async def test_94_same_identity_different_amount(env: Env) -> None:
    terminal = make_terminal(env, "CAFE0001")
    async with await connect(env, terminal) as client:
        start = await env.card_balance(1)
        first = terminal.auth(PC.PURCHASE_CLUB, 10_000, club(1), EXP)
        approved = await client.send(first)
        assert approved.code is RC.APPROVED
        held, rows = await all_balances(env), await counts(env)
        card = CardData("CAFE0001", club(1), EXP)
        other = resign(terminal, first, card, amount=20_000)
        assert other.identity == first.identity
        duplicate = await client.send(other)
        assert duplicate.code is RC.DUPLICATE_TRANSMISSION
        assert duplicate.message.rrn is None
        assert await all_balances(env) == held
        assert (await counts(env))["txn"] == rows["txn"]
        # The first request keeps its answer and its hold.
        assert (await client.retransmit(first)).raw == approved.raw
        assert (await env.card_balance(1)).available == start.available - 10_000


async def test_97_transmission_time_outside_the_window(env: Env) -> None:
    offset = [0.0]
    terminal = make_terminal(env, "CAFE0001",
                             clock=lambda: env.clock() + timedelta(seconds=offset[0]))
    async with await connect(env, terminal) as client:
        before, rows = await all_balances(env), await counts(env)
        for skew in (301, -301, 3_600):
            offset[0] = skew
            response, _ = await client.purchase(1_000, club(1), EXP)
            assert response.code is RC.TIME_OUT_OF_WINDOW, skew
        assert await all_balances(env) == before
        assert await counts(env) == rows, "a 97 is refused before anything is written"
        assert await ksn_counter(env, "CAFE0001") == 0
        for skew in (300, -300):
            offset[0] = skew
            response, _ = await client.purchase(1_000, club(1), EXP)
            assert response.code is RC.APPROVED, skew
