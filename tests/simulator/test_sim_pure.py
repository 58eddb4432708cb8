"""The simulator's pure parts: scenario parsing and expressions, the load mix, percentiles,
profiles on disk, and transcripts (field names, masked PAN, no key material)."""

from __future__ import annotations

import json
import os
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.cardblock import CardData
from protocol.fields import ProcessingCode
from simulator import profile as profiles
from simulator.actions import Result
from simulator.load import LoadReport, parse_mix, percentile
from simulator.scenario import (
    ScenarioError,
    Term,
    evaluate,
    parse,
    parse_expression,
)
from simulator.terminal import Original
from simulator.transcript import price_breakdown, render_message
from switch import demo

IK = bytes(range(16))
IK_ID = bytes.fromhex("0123456789ABCDEF")


def scenario(*steps: dict[str, Any], cards: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"terminal": "CAFE0001", "cards": cards or {"c": {"demo": 1}},
            "steps": list(steps)}


# -- scenarios ---------------------------------------------------------------------------------


def test_a_scenario_parses_with_references_and_expressions() -> None:
    parsed = parse(scenario(
        {"id": "start", "do": "balance", "card": "c", "kind": "club"},
        {"id": "buy", "do": "purchase", "card": "c", "amount": 1000,
         "expect": {"code": ["00", "10"], "second": "00", "payable": "amount - discount"}},
        {"do": "refund", "of": "buy", "card": "c", "amount": "buy.payable"},
        {"do": "balance", "card": "c", "kind": "club",
         "expect": {"club_available": "start.club_available - buy.payable + 20"}}))
    assert [s.do for s in parsed.steps] == ["balance", "purchase", "refund", "balance"]
    assert parsed.cards["c"].pan == demo.demo_club_pan(1)
    buy = parsed.steps[1]
    assert buy.codes == ("00", "10") and buy.second_codes == ("00",)
    assert buy.amounts["payable"] == (Term(1, name="amount"), Term(-1, name="discount"))
    assert parsed.steps[2].amount == (Term(1, step="buy", name="payable"),)


@pytest.mark.parametrize(("data", "message"), [
    ({"steps": []}, "terminal must be"),
    (scenario(), "at least one [[steps]]"),
    ({**scenario({"do": "echo"}), "extra": 1}, "unknown top-level key(s): extra"),
    (scenario({"do": "dance"}), "step 1: do must be one of"),
    (scenario({"do": "echo", "colour": "red"}), "step 1: unknown key(s): colour"),
    (scenario({"do": "balance", "card": "nobody"}), "card must name one of"),
    (scenario({"do": "purchase", "card": "c"}), "purchase needs an amount"),
    (scenario({"do": "purchase", "card": "c", "amount": -5}), "amount must be"),
    (scenario({"do": "purchase", "card": "c", "amount": "payable"}), "may name only earlier"),
    (scenario({"do": "purchase", "card": "c", "amount": 5, "kind": "gold"}), "kind must be"),
    (scenario({"do": "purchase", "card": "c", "amount": 5, "then": "dance"}), "then must be"),
    (scenario({"do": "refund", "card": "c", "amount": 5, "of": "later"}), "of must name"),
    (scenario({"do": "echo", "expect": {"code": "99"}}), "'99' is not a response code"),
    (scenario({"do": "echo", "expect": {"colour": 1}}), "expect.colour: not a reported"),
    (scenario({"do": "echo", "expect": {"payable": "x.payable"}}), "no earlier step has id"),
    (scenario({"do": "echo", "expect": {"payable": "1 * 2"}}), "cannot read"),
    (scenario({"do": "echo", "fault": "meteor"}), "fault must be one of"),
    (scenario({"do": "echo", "id": "a"}, {"do": "echo", "id": "a"}), "step 2: id must be"),
    (scenario({"do": "echo"}, cards={"c": {"pan": "12ab", "expiry": "3012"}}), "pan must be"),
    (scenario({"do": "echo"}, cards={"c": {"demo": -1}}), "demo must be a whole number"),
])
def test_a_malformed_scenario_is_refused_naming_the_fault(data: dict[str, Any],
                                                          message: str) -> None:
    with pytest.raises(ScenarioError) as caught:
        parse(data)
    assert message in str(caught.value)


@given(st.lists(st.tuples(st.sampled_from("+-"), st.integers(0, 10**9)), min_size=1,
                max_size=8))
def test_expressions_of_numbers_evaluate_like_python(terms: list[tuple[str, int]]) -> None:
    text = " ".join(f"{sign} {value}" for sign, value in terms)
    expected = sum(value if sign == "+" else -value for sign, value in terms)
    assert evaluate(parse_expression(text, set()), Result(), {}) == expected


def test_expressions_read_this_and_earlier_steps() -> None:
    terms = parse_expression("start.club_available - payable + 7", {"start"})
    current = Result(amounts={"payable": 100})
    results = {"start": Result(amounts={"club_available": 1_000})}
    assert evaluate(terms, current, results) == 907
    with pytest.raises(LookupError, match="reported no payable"):
        evaluate(terms, Result(), results)


# -- load --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "cycle"), [
    ("club=1", ("club",)),
    ("bank=1,club=2,credit=1", ("bank", "club", "credit", "club")),
    ("club=3, credit=0, bank=1", ("club", "bank", "club", "club")),
])
def test_mix_cycles_interleave_the_weights(text: str, cycle: tuple[str, ...]) -> None:
    assert parse_mix(text).sequence() == cycle


@pytest.mark.parametrize("text", ["", "club", "club=x", "gold=1", "club=1,club=2",
                                  "club=0", "club=-1"])
def test_a_bad_mix_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="mix"):
        parse_mix(text)


@pytest.mark.parametrize(("values", "q", "expected"), [
    ([], 50, None), ([3.0], 99, 3.0), ([1.0, 2.0, 3.0, 4.0], 50, 2.0),
    ([1.0, 2.0, 3.0, 4.0], 95, 4.0), (list(map(float, range(1, 101))), 99, 99.0),
])
def test_percentile_is_nearest_rank(values: list[float], q: float,
                                    expected: float | None) -> None:
    assert percentile(values, q) == expected


@given(st.lists(st.floats(0, 10), min_size=1), st.integers(1, 100))
def test_percentile_is_one_of_the_values_and_monotone(values: list[float], q: int) -> None:
    p = percentile(values, q)
    assert p in values
    assert p <= (percentile(values, min(q + 1, 100)) or 0)


def test_an_empty_report_is_well_formed() -> None:
    data = LoadReport(2, "closed", None).to_json()
    assert data["transactions"]["started"] == 0
    assert data["latency_ms"]["request"] == {"count": 0, "p50": None, "p95": None, "p99": None}
    assert "p50 -" in LoadReport(2, "closed", None).text()


# -- profiles ----------------------------------------------------------------------------------


def test_a_profile_round_trips_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    pending = profiles.Pending(Original(ProcessingCode.PURCHASE_CLUB, 500, "000007",
                                        "1124120000"), "000000000042")
    made = profiles.Profile("CAFE0001", IK_ID, IK, "10.0.0.1", 8583, 41, 7, pending)
    profiles.save(path, made)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert profiles.load(path) == made
    assert IK.hex() not in repr(made).lower()


def test_a_leftover_tmp_link_never_receives_the_key(tmp_path: Path) -> None:
    """A .tmp left behind (or planted) as a link is replaced, not written through."""
    spy = tmp_path / "elsewhere.txt"
    spy.write_text("untouched")
    spy.chmod(0o644)
    path = tmp_path / "p.json"
    (tmp_path / "p.json.tmp").symlink_to(spy)
    profiles.save(path, profiles.Profile("CAFE0001", IK_ID, IK))
    assert spy.read_text() == "untouched"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and not path.is_symlink()
    assert profiles.load(path).initial_key == IK


def test_a_profile_file_advances_its_counter_durably(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    profiles.save(path, profiles.Profile("CAFE0001", IK_ID, IK, ksn_counter=10))
    keeper = profiles.ProfileFile(path)
    keeper.terminal.echo()
    keeper.checkpoint()
    assert profiles.load(path).ksn_counter > 10
    assert profiles.load(path).last_stan == 1


@pytest.mark.parametrize(("change", "message"), [
    ({"tid": "CAFE"}, "tid must be 8"),
    ({"initial_key": "zz"}, "initial_key is not hexadecimal"),
    ({"initial_key": "00" * 15}, "initial_key must be 32 hex digits"),
    ({"ksn_counter": -1}, "ksn_counter must be"),
    ({"ksn_counter": True}, "ksn_counter is missing"),
    ({"switch": {"host": "h", "port": 0}}, "switch.port must be"),
    ({"pending": {"processing_code": "999999"}}, "not a processing code"),
])
def test_a_bad_profile_names_the_fault_and_never_the_key(tmp_path: Path,
                                                          change: dict[str, Any],
                                                          message: str) -> None:
    data = profiles.Profile("CAFE0001", IK_ID, IK).to_json() | change
    path = tmp_path / "p.json"
    path.write_text(json.dumps(data))
    with pytest.raises(profiles.ProfileError) as caught:
        profiles.load(path)
    assert message in str(caught.value) and IK.hex().upper() not in str(caught.value)


# -- transcripts -------------------------------------------------------------------------------


def test_a_transcript_names_fields_masks_the_pan_and_shows_no_key_material() -> None:
    terminal = profiles.Profile("CAFE0001", IK_ID, IK).terminal(
        lambda: datetime(2026, 11, 24, 12, 0, tzinfo=UTC))
    pan = demo.demo_club_pan(4)
    prepared = terminal.auth(ProcessingCode.PURCHASE_CLUB, 120_000, pan, "3012")
    text = "\n".join(render_message(">>", prepared.request, CardData("CAFE0001", pan, "3012")))
    assert "3 processing code    009100" in text and "4 amount             120,000 rial" in text
    assert f"PAN {pan[:6]}******{pan[-4:]}" in text and pan not in text
    assert "53 KSN                counter 1" in text
    for secret in (prepared.request.ksn.hex(), prepared.request.card_data.hex(),
                   prepared.request.mac.hex(), IK_ID.hex()):
        assert secret.lower() not in text.lower() and secret.upper() not in text


def test_price_breakdown_needs_a_payable() -> None:
    assert price_breakdown(100, ()) is None
