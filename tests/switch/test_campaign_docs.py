"""docs/campaigns.md stays true: its example file loads and shows every kind, the error
messages it quotes are the ones the loader gives, its steps of combining rules are the
engine's, and its rounding examples are what the engine gives."""

import re
import tomllib

import pytest

from switch import engine
from switch.campaign_file import CampaignFileError, parse_campaigns
from switch.campaign_spec import KINDS
from switch.rules import Multiplier, Points
from tests.conftest import ROOT
from tests.switch.campaign_cases import price

DOC = (ROOT / "docs" / "campaigns.md").read_text(encoding="utf-8")


def test_the_example_file_loads_and_shows_every_kind():
    [block] = re.findall(r"```toml\n(.*?)```", DOC, re.DOTALL)
    specs = parse_campaigns(tomllib.loads(block), "example.toml")
    assert {s.kind for s in specs} == set(KINDS)
    for spec in specs:
        spec.to_rule()


@pytest.mark.parametrize(("source", "campaigns"), [
    ("cafe.toml", [{"id": "cafe-stamps", "kind": "stamp_card", "network": "demo", "every": 1,
                    "free_up_to_rial": 150_000}]),
    ("prices.json", [{"id": f"c{n}", "kind": "fixed_discount", "network": "demo",
                      "amount_rial": 1} for n in (1, 2)] + [{"kind": "fixed_discount"}]),
    ("hyper.toml", [{"id": "hyper-points", "kind": "points", "network": "demo",
                     "rial_per_point": 1, "multipliers": [{"category": "a", "bp": 1},
                                                          {"category": "b", "bp": "2"}]}]),
])
def test_the_quoted_messages_are_given(source, campaigns):
    with pytest.raises(CampaignFileError) as exc:
        parse_campaigns({"campaign": campaigns}, source)
    assert f"\n{exc.value}\n" in DOC


def _section(title: str) -> str:
    return DOC.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_the_documented_steps_of_combining_are_the_engines():
    """The numbered steps of "How rules combine" and of switch/engine.py's docstring name the
    same steps in the same order, so neither can gain, lose or move one alone."""
    documented = re.findall(r"^(\d+)\. \*\*(\w+)\.?\*\*", _section("How rules combine"),
                            re.MULTILINE)
    assert engine.__doc__ is not None
    coded = re.findall(r"^(\d+)\. (\w+)", engine.__doc__, re.MULTILINE)
    assert len(coded) >= 7
    assert documented == coded


def test_the_points_rounding_examples_are_what_the_engine_gives():
    rows = re.findall(r"^\| ([\d,]+) \| ([\d,]+) \| ([\d,]+) \| ([\d,]+) \|$",
                      _section("Rounding"), re.MULTILINE)
    assert len(rows) >= 4
    for paid, per_point, multiplier, points in ([int(x.replace(",", "")) for x in row]
                                                 for row in rows):
        rule = Points(id="pts", rial_per_point=per_point,
                      multipliers=(Multiplier("basket", multiplier),))
        assert price([rule], amount=paid, categories=("basket",)).points == points, paid
