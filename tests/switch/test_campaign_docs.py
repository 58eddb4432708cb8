"""docs/campaigns.md stays true: its example file loads and shows every kind, and the error
messages it quotes are the ones the loader gives."""

import re
import tomllib

import pytest

from switch.campaign_file import CampaignFileError, parse_campaigns
from switch.campaign_spec import KINDS
from tests.conftest import ROOT

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
