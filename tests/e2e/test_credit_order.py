"""Store credit is spent soonest-expiring first across the card's credit accounts (audit
#5): the network's credit that expires in 3 days goes before the café's own that expires in
30, though the café's comes first on equal expiry. Over TCP, through a plain purchase and a
partial approval (PA=1, 10), with a pending purchase's hold in between; `db check` after
(the fixture)."""

from __future__ import annotations

from protocol.fields import AmountType, ProcessingCode, ResponseCode
from protocol.values import AdditionalData
from switch import demo, ledger
from tests.e2e.support import blocks, merchant_id, network_id
from tests.e2e.test_pricing import CAFE, CREDIT, NONE, add, lots

CARD = 10  # a demo member with no store credit of its own


async def test_credit_that_expires_sooner_is_spent_first_whatever_its_issuer(env):
    await add(env, id="cafe-back", kind="cashback", bp=500, expiry_days=30, merchant=CAFE)
    await add(env, id="net-back", kind="cashback", bp=200, expiry_days=3, funder="network")
    card_id = await env.card_id(CARD)
    cafe = ledger.card_credit(card_id, merchant_id=await merchant_id(env, CAFE))
    network = ledger.card_credit(card_id, network_id=await network_id(env))
    assert (await lots(env, cafe), await lots(env, network)) == ([], [])
    pan = demo.demo_club_pan(CARD)
    async with await env.client("CAFE0001") as client:
        earned, p0 = await client.purchase(100_000, pan, demo.CARD_EXPIRY)
        assert blocks(earned)[(CREDIT, AmountType.CASHBACK.value)] == 7_000
        await client.confirm(p0, earned.message.rrn)
        assert [lot[:2] for lot in await lots(env, cafe) + await lots(env, network)] == [
            (5_000, 5_000), (2_000, 2_000)]
        # 1,500 of the network's 2,000 (which expires first), held until confirmed.
        first, p1 = await client.purchase(1_500, pan, demo.CARD_EXPIRY,
                                          processing_code=ProcessingCode.PURCHASE_STORE_CREDIT)
        assert first.code is ResponseCode.APPROVED, first
        # Half off store-credit purchases: 20,000 asked with PA, 5,500 approved (all that
        # is not held), 2,750 paid: the network's 500 not held, then 2,250 of the café's.
        await add(env, id="credit-half", kind="percent_discount", bp=5_000,
                  codes=[ProcessingCode.PURCHASE_STORE_CREDIT.value], merchant=CAFE)
        partial, p2 = await client.purchase(
            20_000, pan, demo.CARD_EXPIRY, processing_code=ProcessingCode.PURCHASE_STORE_CREDIT,
            additional_data=AdditionalData(partial_approval=True))
        assert partial.code is ResponseCode.PARTIAL_APPROVAL, partial
        assert blocks(partial)[(NONE, AmountType.PAYABLE.value)] == 2_750
        for response, prepared in ((first, p1), (partial, p2)):
            confirmed = await client.confirm(prepared, response.message.rrn)
            assert confirmed.code is ResponseCode.APPROVED
    assert [lot[:2] for lot in await lots(env, network)] == [(2_000, 0)]
    assert [lot[:2] for lot in await lots(env, cafe)] == [(5_000, 2_750)]
