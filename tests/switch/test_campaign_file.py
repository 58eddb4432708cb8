"""Campaign files: every kind and condition parsed into its rule, every refusal named, the
stored form round-tripped. Pure: no database."""

import json
from datetime import datetime, time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.fields import ProcessingCode
from switch import demo, rules
from switch.campaign_file import (
    CampaignFileError,
    dump_spec,
    load_campaigns,
    parse_campaigns,
    rules_from_stored,
    spec_from_stored,
)
from switch.campaign_spec import EXPIRY_DAYS_MAX, INT_MAX
from switch.jalali import Weekday
from switch.tiers import Tier

BASE = {"network": "demo"}


def one(**fields) -> rules.Rule:
    [spec] = parse_campaigns({"campaign": [{"id": "c1", **BASE, **fields}]}, "t.toml")
    return spec.to_rule()


def refusal(**fields) -> str:
    with pytest.raises(CampaignFileError) as exc:
        parse_campaigns({"campaign": [{**BASE, **fields}]}, "t.toml")
    return str(exc.value)


def test_every_kind_becomes_its_rule():
    assert one(kind="percent_discount", bp=1000, cap_rial=5) == rules.PercentDiscount(
        id="c1", bp=1000, cap_rial=5)
    assert one(kind="fixed_discount", amount_rial=7) == rules.FixedDiscount(id="c1",
                                                                            amount_rial=7)
    assert one(kind="first_purchases", steps_bp=[6000, 5000], per_merchant=False) == \
        rules.FirstPurchases(id="c1", steps_bp=(6000, 5000), per_merchant=False)
    assert one(kind="stamp_card", every=10, free_up_to_rial=150_000) == rules.StampCard(
        id="c1", every=10, free_up_to_rial=150_000)
    assert one(kind="cashback", bp=200, expiry_days=30, budget_rial=9) == rules.Cashback(
        id="c1", bp=200, expiry_days=30, budget=9)
    assert one(kind="top_up_bonus", bp=500, expiry_days=90, funder="network") == \
        rules.TopUpBonus(id="c1", bp=500, expiry_days=90, funder=rules.NETWORK)
    assert one(kind="points", rial_per_point=10_000, budget_points=5, daily_limit_points=2,
               multipliers=[{"category": "5411", "bp": 20_000}]) == rules.Points(
        id="c1", rial_per_point=10_000, budget=5, daily_limit=2,
        multipliers=(rules.Multiplier("5411", 20_000),))
    assert one(kind="lottery", rial_per_entry=1_000_000, max_entries=3,
               budget_entries=100) == rules.Lottery(id="c1", rial_per_entry=1_000_000,
                                                    max_entries=3, budget=100)


def test_shared_conditions_in_human_units():
    rule = one(
        kind="percent_discount", bp=1000, priority=5, exclusive=True, funder="network",
        co_funders=[{"funder": "sponsor:melli", "bp": 4000}],
        valid_from="1405-01-01", valid_until="1405-01-14 08:30", codes=["000000"],
        terminals=["CAFE0001"], tiers=["gold", "silver"], bin_prefixes=["603799"],
        min_purchase_rial=100_000, daily_limit_rial=50_000,
        when={"weekdays": ["friday", "thursday"], "hours": [{"start": "22:00", "end": "02:00"}],
              "dates": [{"start": "12-25", "end": "01-13"},
                        {"start": "1404-12-29", "end": "1405-01-02"}],
              "birthday": {"days_before": 3}})
    assert rule == rules.PercentDiscount(
        id="c1", bp=1000, priority=5, exclusive=True, funder=rules.NETWORK,
        co_funders=(rules.Share(rules.sponsor("melli"), 4000),),
        valid_from=datetime(2026, 3, 21), valid_until=datetime(2026, 4, 3, 8, 30),
        codes=frozenset({ProcessingCode.PURCHASE_SHAPARAK}), terminal_ids=frozenset({"CAFE0001"}),
        tiers=frozenset({Tier.GOLD, Tier.SILVER}), bin_prefixes=("603799",),
        min_purchase_rial=100_000, daily_limit=50_000,
        when=rules.When(weekdays=frozenset({Weekday.FRIDAY, Weekday.THURSDAY}),
                        hours=(rules.Hours(time(22), time(2)),),
                        dates=(rules.DateSpan((12, 25), (1, 13)),
                               rules.DateSpan((12, 29), (1, 2), 1404)),
                        birthday=rules.BirthdayWindow(3, 6)))


@pytest.mark.parametrize(("fields", "message"), [
    ({"id": "cafe-stamps", "kind": "stamp_card", "every": 1, "free_up_to_rial": 5},
     "t.toml: campaign 'cafe-stamps': every: must be at least 2"),
    ({"kind": "stamp_card", "every": 3, "free_up_to_rial": 5},
     "t.toml: campaign #1: id: missing"),
    ({"id": "x1", "kind": "stamp_card", "every": 3, "free_up_to_rial": 5, "colour": "red"},
     "t.toml: campaign 'x1': colour: unknown field"),
    ({"id": "x1", "kind": "voucher"},
     "t.toml: campaign 'x1': kind: must be one of percent_discount, fixed_discount, "
     "first_purchases, stamp_card, cashback, top_up_bonus, points, lottery"),
    ({"id": "x1"}, "t.toml: campaign 'x1': kind: must be one of"),
    ({"id": "x1", "kind": "percent_discount", "bp": 10_001},
     "t.toml: campaign 'x1': bp: must be 1 to 10000"),
    ({"id": "x1", "kind": "percent_discount", "bp": "10"},
     "t.toml: campaign 'x1': bp: input should be a valid integer"),
    ({"id": "x1", "kind": "percent_discount", "bp": 100, "cap_rial": -1},
     "t.toml: campaign 'x1': cap_rial: cap must not be negative"),
    ({"id": "x1", "kind": "fixed_discount", "amount_rial": 0},
     "t.toml: campaign 'x1': amount_rial: amount must be positive"),
    ({"id": "x1", "kind": "first_purchases", "steps_bp": []},
     "t.toml: campaign 'x1': steps_bp: the ladder needs at least one step"),
    ({"id": "x1", "kind": "stamp_card", "every": 3, "free_up_to_rial": 0},
     "t.toml: campaign 'x1': free_up_to_rial: free value must be positive"),
    ({"id": "x1", "kind": "cashback", "bp": 100, "expiry_days": 0},
     "t.toml: campaign 'x1': expiry_days: credit must be valid at least one day"),
    ({"id": "x1", "kind": "cashback", "bp": 100, "expiry_days": 5, "funder": "sponsor:melli"},
     "t.toml: campaign 'x1': funder: store credit is issued by the merchant or the network"),
    ({"id": "x1", "kind": "cashback", "bp": 100, "expiry_days": 5,
      "co_funders": [{"funder": "network", "bp": 10}]},
     "t.toml: campaign 'x1': co_funders: credit, points and entries have exactly one funder"),
    ({"id": "x1", "kind": "fixed_discount", "amount_rial": 5,
      "co_funders": [{"funder": "merchant", "bp": 10}]},
     "t.toml: campaign 'x1': co_funders: a funder may appear once"),
    ({"id": "x1", "kind": "fixed_discount", "amount_rial": 5,
      "co_funders": [{"funder": "network", "bp": 6000}, {"funder": "sponsor:a", "bp": 4000}]},
     "t.toml: campaign 'x1': co_funders: co-funder shares are positive"),
    ({"id": "x1", "kind": "fixed_discount", "amount_rial": 5,
      "co_funders": [{"funder": "network", "bp": 0}]},
     "t.toml: campaign 'x1': co_funders.0.bp: input should be greater than 0"),
    ({"id": "x1", "kind": "fixed_discount", "amount_rial": 5, "funder": "bank"},
     "t.toml: campaign 'x1': funder: must be \"merchant\", \"network\" or \"sponsor:CODE\""),
    ({"id": "x1", "kind": "points", "rial_per_point": 0},
     "t.toml: campaign 'x1': rial_per_point: rial per point must be positive"),
    ({"id": "x1", "kind": "points", "rial_per_point": 5,
      "multipliers": [{"category": "a", "bp": 1}, {"category": "a", "bp": 2}]},
     "t.toml: campaign 'x1': multipliers: a category may have one multiplier"),
    ({"id": "x1", "kind": "points", "rial_per_point": 5,
      "multipliers": [{"category": "a", "bp": 1_000_001}]},
     "t.toml: campaign 'x1': multipliers: are 0 to 1000000 bp"),
    ({"id": "x1", "kind": "points", "rial_per_point": 5, "budget_rial": 5},
     "t.toml: campaign 'x1': budget_rial: unknown field"),
    ({"id": "x1", "kind": "lottery", "rial_per_entry": 0},
     "t.toml: campaign 'x1': rial_per_entry: rial per entry must be positive"),
    ({"id": "x1", "kind": "lottery", "rial_per_entry": 5, "max_entries": 0},
     "t.toml: campaign 'x1': max_entries: max entries > 0"),
    ({"id": "x1", "kind": "lottery", "rial_per_entry": 5, "budget_entries": -1},
     "t.toml: campaign 'x1': budget_entries: input should be greater than or equal to 0"),
    ({"id": "x1", "kind": "fixed_discount", "amount_rial": 5, "valid_from": "1405-02-01",
      "valid_until": "1405-01-01"},
     "t.toml: campaign 'x1': valid_from: must precede valid_until"),
    ({"id": "x1", "kind": "fixed_discount", "amount_rial": 5, "valid_from": "1405-12-30"},
     "t.toml: campaign 'x1': valid_from: no day 30 in Esfand 1405"),
    ({"id": "x1", "kind": "fixed_discount", "amount_rial": 5, "valid_from": "21 March"},
     "t.toml: campaign 'x1': valid_from: must be a Jalali date"),
    ({"id": "x1", "kind": "fixed_discount", "amount_rial": 5, "codes": ["310000"]},
     "t.toml: campaign 'x1': codes: must be some of ['000000', '009100', '009200']"),
    ({"id": "x1", "kind": "top_up_bonus", "bp": 5, "expiry_days": 1, "codes": ["000000"]},
     "t.toml: campaign 'x1': codes: must be some of ['219100']"),
    ({"id": "x1", "kind": "fixed_discount", "amount_rial": 5, "codes": ["123456"]},
     "t.toml: campaign 'x1': codes.0: not a processing code"),
    ({"id": "x1", "kind": "fixed_discount", "amount_rial": 5, "bin_prefixes": ["60379x"]},
     "t.toml: campaign 'x1': bin_prefixes.0: string should match pattern"),
    ({"id": "x1", "kind": "fixed_discount", "amount_rial": 5, "tiers": ["platinum"]},
     "t.toml: campaign 'x1': tiers.0: input should be 'member', 'bronze', 'silver' or 'gold'"),
    ({"id": "x1", "kind": "fixed_discount", "amount_rial": 5, "min_purchase_rial": -1},
     "t.toml: campaign 'x1': min_purchase_rial: input should be greater than or equal to 0"),
    ({"id": "x1", "kind": "fixed_discount", "amount_rial": 5, "exclusive": 1},
     "t.toml: campaign 'x1': exclusive: input should be a valid boolean"),
    ({"id": "x1", "kind": "fixed_discount", "amount_rial": 5, "network_id": 1},
     "t.toml: campaign 'x1': network_id: set by the switch when the campaign is stored"),
    ({"id": "x1", "kind": "fixed_discount", "amount_rial": 5, "merchant": "Cafe Lale"},
     "t.toml: campaign 'x1': merchant: string should match pattern"),
    ({"id": "x1", "kind": "fixed_discount", "amount_rial": 5,
      "when": {"hours": [{"start": "24:00", "end": "08:00"}]}},
     "t.toml: campaign 'x1': when.hours.0.start: must be a time \"HH:MM\""),
    ({"id": "x1", "kind": "fixed_discount", "amount_rial": 5,
      "when": {"weekdays": ["jomeh"]}},
     "t.toml: campaign 'x1': when.weekdays.0: input should be 'saturday'"),
    ({"id": "x1", "kind": "fixed_discount", "amount_rial": 5,
      "when": {"dates": [{"start": "07-31", "end": "08-02"}]}},
     "t.toml: campaign 'x1': when.dates: no Jalali day 7/31"),
    ({"id": "x1", "kind": "fixed_discount", "amount_rial": 5,
      "when": {"dates": [{"start": "1405-12-25", "end": "01-13"}]}},
     "t.toml: campaign 'x1': when.dates: start and end both name a year, or neither does"),
    ({"id": "x1", "kind": "fixed_discount", "amount_rial": 5,
      "when": {"dates": [{"start": "1405-12-25", "end": "1405-01-13"}]}},
     "t.toml: campaign 'x1': when.dates: end must fall in 1406"),
    ({"id": "x1", "kind": "fixed_discount", "amount_rial": 5,
      "when": {"birthday": {"days_after": 91}}},
     "t.toml: campaign 'x1': when.birthday.days_after: input should be less than or equal "
     "to 90"),
])
def test_refusals_name_campaign_and_field(fields, message):
    assert refusal(**fields).startswith(message)


def test_file_level_refusals(tmp_path: Path):
    def load(name: str, text: str) -> str:
        (tmp_path / name).write_text(text, encoding="utf-8")
        with pytest.raises(CampaignFileError) as exc:
            load_campaigns(tmp_path / name)
        return str(exc.value)

    assert load("a.yaml", "") == "a.yaml: a campaign file ends in .toml or .json"
    assert load("a.toml", "[[campaign]\n").startswith("a.toml: not valid TOML")
    assert load("a.json", "{").startswith("a.json: not valid JSON")
    assert load("a.toml", "x = 1\n").startswith("a.toml: must hold only a list 'campaign'")
    assert load("a.json", '{"campaign": []}') == \
        "a.json: 'campaign' must be a non-empty list"
    assert load("a.json", '{"campaign": [1]}').startswith("a.json: campaign #1: ")
    twice = '[[campaign]]\nid = "d1"\nkind = "fixed_discount"\nnetwork = "n1"\namount_rial = 1\n'
    assert load("b.toml", twice * 2) == "b.toml: campaign 'd1': id: appears twice in the file"
    with pytest.raises(CampaignFileError, match=r"missing\.toml: cannot be read"):
        load_campaigns(tmp_path / "missing.toml")


def test_toml_and_json_files_agree(tmp_path: Path):
    [spec] = parse_campaigns({"campaign": [{"id": "c1", "kind": "cashback", **BASE,
                                            "bp": 300, "expiry_days": 30,
                                            "valid_from": "1405-01-01 09:15"}]}, "x")
    for fmt in ("toml", "json"):
        path = tmp_path / f"c.{fmt}"
        path.write_text(dump_spec(spec, fmt), encoding="utf-8")
        assert load_campaigns(path) == [spec]


def test_demo_files_load_and_cover_every_trade():
    specs = demo.demo_campaigns()
    merchants = {s.merchant for s in specs}
    assert {code for code, *_ in demo.MERCHANTS} <= merchants
    kinds = {s.kind for s in specs}
    assert {"stamp_card", "cashback", "points", "first_purchases", "percent_discount",
            "top_up_bonus"} <= kinds
    [bank] = [s for s in specs if s.bin_prefixes]
    assert demo.demo_bank_pan(0).startswith(bank.bin_prefixes[0])
    assert bank.funder == "sponsor:melli"
    assert len({s.id for s in specs}) == len(specs)


# --- the stored form -----------------------------------------------------------------------

_rial = st.integers(0, 10**12)
_ids = st.from_regex(r"[a-z0-9][a-z0-9-]{1,20}", fullmatch=True)
_bp = st.integers(1, 10_000)
_expiry = st.integers(1, 3650)
_funding = {  # discounts only: a sponsor funder and co-funders
    "funder": st.sampled_from(["merchant", "network", "sponsor:melli"]),
    "co_funders": st.lists(st.fixed_dictionaries({
        "funder": st.sampled_from(["sponsor:a", "sponsor:b"]), "bp": st.integers(1, 4999)}),
        max_size=2, unique_by=lambda share: share["funder"]),
    "codes": st.lists(st.sampled_from(["000000", "009100", "009200"]), min_size=1, unique=True),
}
_kinds = st.one_of(
    st.fixed_dictionaries({"kind": st.just("percent_discount"), "bp": _bp},
                          optional={"cap_rial": _rial, "budget_rial": _rial, **_funding}),
    st.fixed_dictionaries({"kind": st.just("fixed_discount"),
                           "amount_rial": st.integers(1, 10**9)},
                          optional={"daily_limit_rial": _rial, **_funding}),
    st.fixed_dictionaries({"kind": st.just("first_purchases"),
                           "steps_bp": st.lists(_bp, min_size=1, max_size=4)},
                          optional={"per_merchant": st.booleans()}),
    st.fixed_dictionaries({"kind": st.just("stamp_card"), "every": st.integers(2, 20),
                           "free_up_to_rial": st.integers(1, 10**7)}),
    st.fixed_dictionaries({"kind": st.sampled_from(["cashback", "top_up_bonus"]), "bp": _bp,
                           "expiry_days": _expiry},
                          optional={"funder": st.sampled_from(["merchant", "network"])}),
    st.fixed_dictionaries({"kind": st.just("points"), "rial_per_point": st.integers(1, 10**6)},
                          optional={"budget_points": _rial, "multipliers": st.lists(
                              st.fixed_dictionaries({"category": st.sampled_from(
                                  ["5411", "5812", "5732"]), "bp": st.integers(0, 10**6)}),
                              max_size=3, unique_by=lambda m: m["category"])}),
    st.fixed_dictionaries({"kind": st.just("lottery"), "rial_per_entry": st.integers(1, 10**9)},
                          optional={"max_entries": st.integers(1, 100)}),
)
_jalali_days = st.builds(lambda y, m, d: f"{y}-{m:02d}-{d:02d}", st.integers(1400, 1420),
                         st.integers(1, 12), st.integers(1, 29))
_shared = st.fixed_dictionaries({"id": _ids, "network": _ids}, optional={
    "merchant": _ids, "priority": st.integers(-1000, 1000), "exclusive": st.booleans(),
    "terminals": st.lists(st.from_regex(r"[0-9A-Z]{8}", fullmatch=True), max_size=2),
    "valid_from": _jalali_days,
    "valid_until": st.builds(lambda h: f"1421-01-01 {h:02d}:15", st.integers(0, 23)),
    "tiers": st.lists(st.sampled_from(["gold", "silver"]), unique=True),
    "bin_prefixes": st.lists(st.from_regex(r"[0-9]{6}", fullmatch=True), max_size=2),
    "min_purchase_rial": _rial,
    "when": st.fixed_dictionaries({}, optional={
        "weekdays": st.lists(st.sampled_from(["friday", "saturday"]), unique=True),
        "hours": st.lists(st.builds(lambda a, b: {"start": f"{a:02d}:00", "end": f"{b:02d}:30"},
                                    st.integers(0, 23), st.integers(0, 23)), max_size=2),
        "birthday": st.fixed_dictionaries({}, optional={"days_after": st.integers(0, 90)}),
        "dates": st.lists(st.one_of(
            st.just({"start": "12-25", "end": "01-13"}),
            st.builds(lambda y, m: {"start": f"{y}-{m:02d}-01", "end": f"{y}-{m:02d}-29"},
                      st.integers(1400, 1420), st.integers(1, 12))), max_size=2)}),
})


@settings(max_examples=150)
@given(shared=_shared, kind=_kinds, network_id=st.integers(1, 10**6),
       merchant_id=st.none() | st.integers(1, 10**6))
def test_stored_form_round_trips(shared, kind, network_id, merchant_id):
    [spec] = parse_campaigns({"campaign": [{**shared, **kind}]}, "h.toml")
    spec = spec.model_copy(update={"network_id": network_id, "merchant_id": merchant_id})
    stored = json.loads(json.dumps(spec.model_dump(mode="json")))  # as jsonb gives it back
    again = spec_from_stored(stored)
    assert again == spec
    assert again.to_rule() == spec.to_rule()
    assert spec_from_stored(json.dumps(stored)).to_rule() == spec.to_rule()
    assert rules_from_stored([{"spec": stored}, stored]) == [spec.to_rule()] * 2
    rule = spec.to_rule()
    assert rule.network_id == network_id
    assert rule.merchant_ids == frozenset(() if merchant_id is None else (merchant_id,))


@pytest.mark.parametrize(("field", "top"), [
    ("budget_rial", INT_MAX), ("amount_rial", INT_MAX), ("min_purchase_rial", INT_MAX)])
def test_amounts_are_bounded_by_the_database(field, top):
    fields = {"kind": "fixed_discount", "amount_rial": 5, field: top}
    assert one(**fields)  # the largest bigint is accepted
    message = refusal(**{**fields, "id": "x1", field: top + 1})
    assert message == f"t.toml: campaign 'x1': {field}: input should be less than or " \
                      f"equal to {INT_MAX}"


def test_credit_expiry_is_bounded():
    rule = one(kind="cashback", bp=1, expiry_days=EXPIRY_DAYS_MAX)
    assert isinstance(rule, rules.Cashback) and rule.expiry_days == EXPIRY_DAYS_MAX
    assert refusal(id="x1", kind="cashback", bp=1, expiry_days=EXPIRY_DAYS_MAX + 1) == \
        f"t.toml: campaign 'x1': expiry_days: input should be less than or equal to " \
        f"{EXPIRY_DAYS_MAX}"
