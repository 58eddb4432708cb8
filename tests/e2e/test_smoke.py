from protocol.fields import ResponseCode
from switch import demo


async def test_sign_on_and_club_purchase_two_phases(env):
    client = await env.client("CAFE0001")
    async with client:
        assert (await client.sign_on()).code is ResponseCode.APPROVED
        before = await env.card_balance(1)
        response, prepared = await client.purchase(50_000, demo.demo_club_pan(1),
                                                   demo.CARD_EXPIRY)
        assert response.code is ResponseCode.APPROVED, response
        held = await env.card_balance(1)
        assert held.available == before.available - 50_000
        assert held.ledger == before.ledger
        confirmed = await client.confirm(prepared, response.message.rrn)
        assert confirmed.code is ResponseCode.APPROVED
        after = await env.card_balance(1)
        assert after.ledger == before.ledger - 50_000
        assert after.available == after.ledger
