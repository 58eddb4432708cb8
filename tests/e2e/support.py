"""Helpers shared by the end-to-end tests: terminals with chosen key state, re-signed and
hand-made messages, and read-only views of the database (row counts, balances, field 54).

Nothing here writes to the database except `set_status`, which the tests use to suspend or
block things the way an operator would.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from protocol import messages
from protocol.cardblock import CardData, encrypt_card_data
from protocol.dukpt import derive_initial_key
from protocol.mac import compute_mac
from protocol.spec import FORMATS, decode_fields, encode_fields
from simulator.client import TerminalClient
from simulator.terminal import Prepared, Response, Terminal
from switch import dbcheck, demo, keys, ledger
from tests.e2e.conftest import Env

P = TypeVar("P", bound=messages.Response)

# Tables whose rows are the switch's effects; a refused request must add to none of them.
EFFECT_TABLES = ("request_log", "txn", "ledger_transfer", "ledger_entry", "reversal_memo")


def make_terminal(env: Env, tid: str, *, counter: int = 0, last_stan: int = 0,
                  clock: Callable[[], datetime] | None = None) -> Terminal:
    """A terminal `tid` whose DUKPT counter and STAN sequence start where the test says."""
    store = keys.load(env.key_file)
    ik_id = bytes.fromhex(env.ik_ids[tid])
    initial_key = derive_initial_key(store.bdk(ik_id[:4].hex().upper()), ik_id)
    return Terminal.from_profile(tid, initial_key, ik_id, counter,
                                 clock=env.clock if clock is None else clock,
                                 last_stan=last_stan)


async def connect(env: Env, terminal: Terminal, port: int | None = None,
                  **options: float) -> TerminalClient:
    client = TerminalClient(terminal, **options)  # type: ignore[arg-type]
    return await client.connect("127.0.0.1", env.switch.port if port is None else port)


def resign(terminal: Terminal, prepared: Prepared[Any, P], card: CardData | None = None,
           **changes: Any) -> Prepared[Any, P]:
    """`prepared` sent again under the terminal's next KSN: same STAN and field 7 (unless
    `changes` say otherwise), field 62 re-encrypted for `card` when the request has one."""
    ksn, working = terminal.keys.next_ksn()
    request = dataclasses.replace(prepared.request, ksn=ksn.to_bytes(), **changes)
    if getattr(request, "card_data", None) is not None:
        assert card is not None, "a request with field 62 needs its card to re-encrypt"
        request = dataclasses.replace(request,
                                      card_data=encrypt_card_data(working.data_encrypt, card))
    unsigned = messages.encode(request)
    mac = compute_mac(working.mac_request, messages.mac_input(unsigned))
    return Prepared(request=dataclasses.replace(request, mac=mac),
                    raw=messages.with_mac(unsigned, mac), ksn=ksn, keys=working,
                    response_class=prepared.response_class)


def remac(raw: bytes, mac_key: bytes) -> bytes:
    """`raw` with a correct MAC under `mac_key` (for tampering behind a valid MAC)."""
    return messages.with_mac(raw, compute_mac(mac_key, messages.mac_input(raw)))


def without_field(prepared: Prepared[Any, Any], field: int) -> bytes:
    """The request's bytes with `field` left out, correctly MACed: decodes at the byte level
    but breaks the presence rules."""
    parsed = decode_fields(prepared.raw)
    fields = {n: v for n, v in parsed.fields.items() if n != field}
    return remac(encode_fields(parsed.mti, fields), prepared.keys.mac_request)


def flip_bit(raw: bytes, offset: int, bit: int = 0) -> bytes:
    data = bytearray(raw)
    data[offset] ^= 1 << bit
    return bytes(data)


def field_offset(raw: bytes, field: int) -> int:
    """Where the value of `field` starts in `raw` (after any length prefix)."""
    parsed = decode_fields(raw)
    return parsed.positions[field] + FORMATS[field].len_digits


async def raw_exchange(client: TerminalClient, body: bytes, timeout_s: float = 5.0) -> bytes:
    """Send one frame body as is and return the next frame that pairs with no request."""
    await client.send_message_bytes(body)
    return await client.next_unmatched_frame(timeout_s)


def decode_response(raw: bytes) -> messages.Response:
    message = messages.decode(raw)
    assert isinstance(message, (messages.NetworkResponse, messages.AuthResponse,
                                messages.ConfirmResponse, messages.ReversalResponse)), message
    return message


def blocks(response: Response[Any]) -> dict[tuple[str, str], int]:
    """Field 54 as {(account type, amount type): signed amount}."""
    out: dict[tuple[str, str], int] = {}
    for b in response.message.amounts:
        key = (b.account_type.value, b.amount_type.value)
        assert key not in out, f"amount block {key} repeated"
        out[key] = b.amount if b.sign.value == "C" else -b.amount
    return out


# -- database views ---------------------------------------------------------------------------


async def counts(env: Env) -> dict[str, int]:
    return {table: await env.count(table) for table in EFFECT_TABLES}


async def ksn_counter(env: Env, tid: str) -> int:
    value: int = await env.conn.fetchval(
        "SELECT ksn_counter_max FROM terminal WHERE tid = $1", tid)
    return value


async def all_balances(env: Env) -> dict[str, tuple[int, int, int, int]]:
    """Every ledger account's four totals, by key: equal snapshots mean no money moved.
    Accounts with all totals zero are left out (the switch creates accounts on first use)."""
    rows = await env.conn.fetch(
        """SELECT a.key, b.debits_pending, b.debits_posted, b.credits_pending, b.credits_posted
           FROM ledger_account a, LATERAL ledger_account_balance(a.id) b
           WHERE (b.debits_pending, b.debits_posted, b.credits_pending, b.credits_posted)
                 <> (0, 0, 0, 0)""")
    return {r["key"]: (r[1], r[2], r[3], r[4]) for r in rows}


async def net_balances(env: Env) -> dict[str, tuple[int, int, int]]:
    """Every account's (posted balance, pending debits, pending credits), accounts at zero
    left out: what a reversal must restore exactly (its entries add to the totals)."""
    rows = await env.conn.fetch(
        """SELECT a.key, b.credits_posted - b.debits_posted AS net, b.debits_pending,
                  b.credits_pending
           FROM ledger_account a, LATERAL ledger_account_balance(a.id) b
           WHERE (b.credits_posted - b.debits_posted, b.debits_pending, b.credits_pending)
                 <> (0, 0, 0)""")
    return {r["key"]: (r[1], r[2], r[3]) for r in rows}


async def net_under_ref(env: Env, ref: str) -> dict[int, int]:
    """Per account, the net of everything posted under `ref` (an RRN), zeros left out."""
    rows = await env.conn.fetch(
        """SELECT e.account_id, sum(e.amount) AS net FROM ledger_entry e
           JOIN ledger_transfer t ON t.id = e.transfer_id
           WHERE t.ref = $1 AND t.kind IN ('single', 'post')
           GROUP BY e.account_id HAVING sum(e.amount) <> 0""", ref)
    return {r[0]: r[1] for r in rows}


async def balance(env: Env, spec: ledger.AccountSpec) -> ledger.Balance:
    """An account's balance without creating it (zero when it does not exist yet)."""
    row = await env.conn.fetchrow(
        """SELECT b.debits_pending, b.debits_posted, b.credits_pending, b.credits_posted
           FROM ledger_account a, LATERAL ledger_account_balance(a.id) b
           WHERE a.key = $1""", spec.key)
    return ledger.Balance(0, 0, 0, 0) if row is None else ledger.Balance(**dict(row))


async def merchant_id(env: Env, code: str) -> int:
    value: int = await env.conn.fetchval("SELECT id FROM merchant WHERE code = $1", code)
    return value


async def network_id(env: Env) -> int:
    value: int = await env.conn.fetchval(
        "SELECT id FROM store_network WHERE code = $1", demo.NETWORK_CODE)
    return value


async def payable(env: Env, merchant_code: str) -> int:
    """What the network owes the merchant, posted (credit-normal)."""
    return (await balance(env, ledger.merchant_payable(await merchant_id(env, merchant_code)))
            ).ledger


async def fee_income(env: Env) -> int:
    return (await balance(env, ledger.fee_income(await network_id(env)))).ledger


async def cafe_credit(env: Env, card_index: int) -> ledger.Balance:
    card_id = await env.card_id(card_index)
    return await balance(env, ledger.card_credit(
        card_id, merchant_id=await merchant_id(env, "cafe-lale")))


async def network_credit(env: Env, card_index: int) -> ledger.Balance:
    card_id = await env.card_id(card_index)
    return await balance(env, ledger.card_credit(card_id, network_id=await network_id(env)))


async def txn_rows(env: Env) -> list[dict[str, Any]]:
    rows = await env.conn.fetch(
        "SELECT id, stan, kind, state, void_reason, rrn, amount_rial FROM txn ORDER BY id")
    return [dict(r) for r in rows]


async def lock_waiters(env: Env) -> int:
    """How many other sessions on the test's database wait for a lock now (row, advisory):
    a test holding a lock polls this until the requests it races have caught up."""
    waiting: int = await env.conn.fetchval(
        """SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'
           AND datname = current_database() AND pid <> pg_backend_pid()""")
    return waiting


async def write_past_triggers(env: Env, sql: str, *args: Any) -> None:
    """Run `sql` with triggers off (append-only tables, the lot trigger), as a corruption of
    stored rows would be, so that a test can show which `db check` invariant names it."""
    async with env.conn.transaction():
        await env.conn.execute("SET LOCAL session_replication_role = replica")
        await env.conn.execute(sql, *args)


async def failed_checks(env: Env) -> set[str]:
    """The names of the `db check` invariants that do not hold."""
    return {o.check.name for o in await dbcheck.run_checks(env.conn) if not o.ok}
