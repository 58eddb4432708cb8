"""A small store network and transactions recorded the way the switch records them: a
txn row, the hold of its money posted under its RRN, then its fee and funded discounts as
transfers under the same RRN (what switch_post_txn and the pricing postings write)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg

from settlement.calendar import TEHRAN
from switch import ledger

HOLD_TIMEOUT = timedelta(minutes=2)


def sheba(n: int) -> str:
    bban = f"{n:022d}"
    check = 98 - int(bban + "182700") % 97
    return f"IR{check:02d}{bban}"


def tehran(year: int, month: int, day: int, hour: int, minute: int = 0) -> datetime:
    """A Gregorian date and a Tehran wall-clock time, as an aware UTC instant."""
    return datetime(year, month, day, hour, minute, tzinfo=TEHRAN).astimezone(UTC)


@dataclass(frozen=True)
class Network:
    network_id: int
    cafe: int
    hyper: int
    barber: int
    terminals: dict[int, int]
    card: int      # a member's club card, funded
    card2: int


class Book:
    """Records transactions; RRNs and STANs are drawn from counters."""

    def __init__(self, conn: asyncpg.Connection, net: Network) -> None:
        self.conn = conn
        self.net = net
        self._seq = itertools.count(1)

    async def acct(self, spec: ledger.AccountSpec) -> int:
        return await ledger.account_id(self.conn, spec)

    async def _txn(self, kind: str, merchant: int, amount: int, at: datetime, card: int | None,
                   original: int | None = None) -> tuple[int, str]:
        n = next(self._seq)
        rrn = f"{900000000000 + n:012d}"
        txn_id: int = await self.conn.fetchval(
            """INSERT INTO txn (terminal_id, stan, transmission_f7, transmitted_at,
                   processing_code, kind, amount_rial, rrn, state, card_id, merchant_id,
                   created_at, confirmed_at, original_txn_id)
               VALUES ($1, $2, to_char($3 AT TIME ZONE 'UTC', 'MMDDHH24MISS'), $3, '000000',
                       $4, $5, $6, 'CONFIRMED', $7, $8, $3, $3, $9) RETURNING id""",
            self.net.terminals[merchant], f"{n % 1_000_000:06d}", at, kind, amount, rrn,
            card, merchant, original)
        return txn_id, rrn

    async def _move(self, rrn: str, code: str, debit: int, credit: int, amount: int,
                    at: datetime) -> None:
        held = await ledger.hold(self.conn, ledger.Unit.IRR, code, debit=debit, credit=credit,
                                 amount=amount, timeout_at=at + HOLD_TIMEOUT, ref=rrn)
        assert held.ok and held.transfer_id is not None, held
        assert (await ledger.post(self.conn, held.transfer_id, at)).ok

    async def _transfer(self, rrn: str, code: str, debit: int, credit: int, amount: int) -> None:
        if amount:
            result = await ledger.transfer(self.conn, ledger.Unit.IRR, code,
                                           [(debit, amount), (credit, -amount)], rrn)
            assert result.ok, result

    async def _fee(self, rrn: str, code: str, merchant: int, fee: int) -> None:
        await self._transfer(rrn, code, await self.acct(ledger.merchant_payable(merchant)),
                             await self.acct(ledger.fee_income(self.net.network_id)), fee)

    async def _discount(self, rrn: str, merchant: int, amount: int, sponsor: str | None) -> None:
        funder = (ledger.discount_funding(sponsor=sponsor) if sponsor
                  else ledger.discount_funding(network_id=self.net.network_id))
        await self._transfer(rrn, "discount", await self.acct(funder),
                             await self.acct(ledger.merchant_payable(merchant)), amount)

    async def club_purchase(self, merchant: int, payable: int, fee: int, at: datetime, *,
                            card: int | None = None, discount: int = 0,
                            sponsor: str | None = None) -> int:
        """The customer pays `payable` from the card; a funded discount tops it up."""
        card = card or self.net.card
        txn_id, rrn = await self._txn("club_purchase", merchant, payable + discount, at, card)
        await self._move(rrn, "club_purchase", await self.acct(ledger.card_rial(card)),
                         await self.acct(ledger.merchant_payable(merchant)), payable, at)
        await self._fee(rrn, "club_purchase_fee", merchant, fee)
        await self._discount(rrn, merchant, discount, sponsor)
        return txn_id

    async def bank_purchase(self, merchant: int, amount: int, fee: int, at: datetime, *,
                            discount: int = 0, sponsor: str | None = None) -> int:
        """Paid at the bank (Shaparak): only the fee and a funded discount move here."""
        txn_id, rrn = await self._txn("bank_purchase", merchant, amount, at, None)
        await self._fee(rrn, "bank_purchase_fee", merchant, fee)
        await self._discount(rrn, merchant, discount, sponsor)
        return txn_id

    async def refund(self, original: int, amount: int, fee_back: int, at: datetime) -> int:
        row = await self.conn.fetchrow("SELECT merchant_id, card_id FROM txn WHERE id = $1",
                                       original)
        assert row is not None
        merchant, card = row["merchant_id"], row["card_id"]
        txn_id, rrn = await self._txn("refund", merchant, amount, at, card, original)
        await self.conn.execute(
            "UPDATE txn SET refunded_rial = refunded_rial + $2 WHERE id = $1", original, amount)
        await self._move(rrn, "refund", await self.acct(ledger.merchant_payable(merchant)),
                         await self.acct(ledger.card_rial(card)), amount, at)
        await self._transfer(rrn, "refund_fee", await self.acct(ledger.fee_income(
            self.net.network_id)), await self.acct(ledger.merchant_payable(merchant)), fee_back)
        return txn_id

    async def topup(self, merchant: int, amount: int, at: datetime) -> int:
        """Cash the merchant collected: the card is credited, the merchant owes it."""
        txn_id, rrn = await self._txn("topup", merchant, amount, at, self.net.card)
        await self._move(rrn, "topup", await self.acct(ledger.merchant_payable(merchant)),
                         await self.acct(ledger.card_rial(self.net.card)), amount, at)
        return txn_id

    async def grant_credit(self, amount: int, *, issuer_merchant: int | None = None) -> None:
        """Store credit on the card, from one store or (by default) the network."""
        owner = ({"merchant_id": issuer_merchant} if issuer_merchant
                 else {"network_id": self.net.network_id})
        await self._transfer("gift", "gift_credit", await self.acct(ledger.credit_issued(**owner)),
                             await self.acct(ledger.card_credit(self.net.card, **owner)), amount)

    async def credit_purchase(self, merchant: int, amount: int, fee: int, at: datetime, *,
                              issuer_merchant: int | None = None) -> int:
        owner = ({"merchant_id": issuer_merchant} if issuer_merchant
                 else {"network_id": self.net.network_id})
        txn_id, rrn = await self._txn("credit_purchase", merchant, amount, at, self.net.card)
        await self._move(rrn, "credit_purchase",
                         await self.acct(ledger.card_credit(self.net.card, **owner)),
                         await self.acct(ledger.credit_issued(**owner)), amount, at)
        await self._fee(rrn, "credit_purchase_fee", merchant, fee)
        return txn_id


async def make_network(conn: asyncpg.Connection, *, funded_rial: int = 10_000_000) -> Network:
    """Network 'tehran' with a café, a hypermarket and a barber, one terminal each, and a
    member with two funded club cards."""
    network_id = await conn.fetchval(
        """INSERT INTO store_network (code, name, club_bin) VALUES ('tehran', 'Tehran club',
           '990100') RETURNING id""")
    await conn.execute("INSERT INTO bdk (id, label) VALUES ('0000ABCD', 'test')")
    merchants = {}
    terminals = {}
    for n, (code, name) in enumerate((("cafe", "Cafe Naderi"), ("hyper", "Hyper Star"),
                                      ("barber", "Barber Ali")), start=1):
        merchant_id = await conn.fetchval(
            """INSERT INTO merchant (network_id, code, name, trade, sheba)
               VALUES ($1, $2, $3, $2, $4) RETURNING id""", network_id, code, name, sheba(n))
        merchants[code] = merchant_id
        terminals[merchant_id] = await conn.fetchval(
            """INSERT INTO terminal (tid, merchant_id, bdk_id, derivation_id)
               VALUES ($1, $2, '0000ABCD', $3) RETURNING id""",
            f"T000000{n}", merchant_id, f"0000000{n}")
    member = await conn.fetchval(
        """INSERT INTO member (network_id, first_name, last_name, mobile)
           VALUES ($1, 'Sara', 'Ahmadi', '09120000001') RETURNING id""", network_id)
    cards = []
    for n in (1, 2):
        card_id = await conn.fetchval(
            """INSERT INTO card (network_id, member_id, pan_hash, pan_bin, pan_last4, expiry)
               VALUES ($1, $2, $3, '990100', $4, '3012') RETURNING id""",
            network_id, member, bytes([n]) * 32, f"{n:04d}")
        bank = await ledger.account_id(conn, ledger.settlement_bank(network_id))
        rial = await ledger.account_id(conn, ledger.card_rial(card_id))
        result = await ledger.transfer(conn, ledger.Unit.IRR, "topup_online",
                                       [(bank, funded_rial), (rial, -funded_rial)])
        assert result.ok
        cards.append(card_id)
    return Network(network_id, merchants["cafe"], merchants["hyper"], merchants["barber"],
                   terminals, cards[0], cards[1])
