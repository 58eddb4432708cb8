"""The demo campaigns do what their files say, priced by the engine (pure: the network and
merchant ids are filled in as storing them would)."""

from switch import demo, rules
from switch.engine import Effect
from tests.switch.campaign_cases import PC, member, price

NETWORK_ID = 1
MERCHANT_IDS = {"cafe-lale": 11, "hyper-setareh": 12, "barber-sadaf": 13}


def demo_rules() -> list[rules.Rule]:
    return [spec.model_copy(update={
        "network_id": NETWORK_ID,
        "merchant_id": None if spec.merchant is None else MERCHANT_IDS[spec.merchant],
    }).to_rule() for spec in demo.demo_campaigns()]


def at(merchant: str, **changes):
    """Priced at `merchant` with every budget untouched (as the caller reads it from the
    campaign table) and nothing granted today."""
    found = demo_rules()
    budgets = {r.id: r.budget for r in found if r.budget is not None}
    return price(found, network_id=NETWORK_ID, merchant_id=MERCHANT_IDS[merchant],
                 remaining_budget=budgets, **changes)


def test_the_melli_discount_stops_at_its_daily_limit():
    pan = demo.demo_bank_pan(0)
    pricing = at("cafe-lale", amount=100_000, code=PC.PURCHASE_SHAPARAK, bank_bin=pan[:6],
                 member=member(), granted_today={"bank-melli-10": 200_000})
    assert pricing.discount == 0


def test_cafe_tenth_visit_is_free_up_to_150000():
    assert at("cafe-lale", amount=120_000, member=member(visits_at_merchant=9)).payable == 0
    assert at("cafe-lale", amount=400_000,
              member=member(visits_at_merchant=19)).discount == 150_000
    assert at("cafe-lale", amount=120_000, member=member(visits_at_merchant=8)).discount == 0


def test_hypermarket_cashback_and_points_with_grocery_multiplier():
    pricing = at("hyper-setareh", amount=1_000_000, categories=("5411",))
    assert pricing.credit == 20_000  # 2 %
    [cashback] = [g for g in pricing.grants if g.effect is Effect.CASHBACK]
    assert cashback.expires_at is not None
    assert pricing.points == 200  # a point per 10,000 rial, doubled for groceries


def test_barber_welcome_ladder_then_every_fifth_visit():
    assert at("barber-sadaf", amount=1_000_000, member=member()).discount == 300_000
    assert at("barber-sadaf", amount=500_000,
              member=member(visits_at_merchant=2)).discount == 50_000
    assert at("barber-sadaf", amount=300_000,
              member=member(visits_at_merchant=4)).payable == 0


def test_melli_cards_get_ten_percent_paid_by_melli():
    pan = demo.demo_bank_pan(0)
    pricing = at("barber-sadaf", amount=1_000_000, code=PC.PURCHASE_SHAPARAK,
                 bank_bin=pan[:6], member=member(visits_at_merchant=7))
    assert pricing.discount_by_funder() == {rules.sponsor("melli"): 100_000}
    other = at("barber-sadaf", amount=1_000_000, code=PC.PURCHASE_SHAPARAK,
               bank_bin="610433", member=member(visits_at_merchant=7))
    assert other.discount == 0


def test_top_up_bonus_is_network_credit():
    pricing = at("cafe-lale", amount=2_000_000, code=PC.TOP_UP_CLUB)
    assert [(g.effect, g.funder, g.amount) for g in pricing.grants] == [
        (Effect.TOP_UP_BONUS, rules.NETWORK, 100_000)]
