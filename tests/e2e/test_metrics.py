"""Metrics end to end: a known sequence over real TCP moves exactly the expected series, read
from the live /metrics endpoint over HTTP and parsed with prometheus_client's parser.

The registry is process-wide and tests run one after another, so the difference between a
scrape before and a scrape after a sequence is exactly what that sequence did.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import asyncpg
import pytest
from prometheus_client import REGISTRY

from protocol.fields import Mti, ProcessingCode, ResponseCode
from switch import demo, metrics, sweeper
from tests import promscrape
from tests.e2e.conftest import Env
from tests.e2e.support import connect, flip_bit, make_terminal
from tests.promscrape import Labels, Samples

PC = ProcessingCode
RC = ResponseCode
EXP = demo.CARD_EXPIRY
PAN = demo.demo_club_pan(1)
pytestmark = pytest.mark.serve_metrics


async def scrape(env: Env) -> Samples:
    return await promscrape.scrape(env.switch.metrics_port)


def counter_deltas(before: Samples, after: Samples) -> dict[tuple[str, Labels], float]:
    """Non-zero moves of counters and histogram counts (not sums, buckets or gauges)."""
    deltas = {}
    for key, value in after.items():
        name = key[0]
        if name.endswith(("_total", "_count")):
            delta = value - before.get(key, 0.0)
            if delta:
                deltas[key] = delta
    return deltas


def msg(mti: Mti, pc: PC | None, code: RC) -> tuple[str, Labels]:
    return ("loyalty_messages_total", (("mti", mti.value), ("processing_code",
                                                              pc.value if pc else ""),
                                       ("response_code", code.value)))


def latency_count(phase: str) -> tuple[str, Labels]:
    return ("loyalty_request_duration_seconds_count", (("phase", phase),))


def gauge(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def assert_histograms_consistent(before: Samples, after: Samples) -> None:
    """For every phase: cumulative buckets never decrease along `le`, +Inf equals the count,
    and the sum grew exactly when the count did."""
    for phase in metrics.PHASES:
        buckets = sorted(
            ((float(dict(labels)["le"]), after[(name, labels)] - before.get((name, labels), 0))
             for name, labels in after
             if name == "loyalty_request_duration_seconds_bucket"
             and dict(labels)["phase"] == phase),
            key=lambda b: b[0])
        assert [le for le, _ in buckets] == [*metrics.LATENCY_BUCKETS_S, math.inf]
        moves = [n for _, n in buckets]
        assert moves == sorted(moves), (phase, buckets)
        count = latency_count(phase)
        count_delta = after[count] - before.get(count, 0)
        assert moves[-1] == count_delta
        sum_key = ("loyalty_request_duration_seconds_sum", (("phase", phase),))
        assert (after[sum_key] > before.get(sum_key, 0)) == (count_delta > 0)


async def tick(env: Env, pending_max: int = 100_000) -> int | None:
    assert env.switch.pool is not None
    limits = dataclasses.replace(env.limits, pending_max=pending_max)
    return await sweeper.guarded_tick(env.switch.pool, env.clock(), limits)


async def test_sign_on_purchase_confirm_and_bad_mac_move_exactly_their_series(
        env: Env) -> None:
    terminal = make_terminal(env, "CAFE0001")
    before = await scrape(env)
    async with await connect(env, terminal) as client:
        assert (await client.sign_on()).code is RC.APPROVED
        response, prepared = await client.purchase(50_000, PAN, EXP)
        assert response.code is RC.APPROVED
        await tick(env)
        held = await scrape(env)
        assert gauge(held, "loyalty_holds_pending") == 1
        rrn = response.message.rrn
        assert rrn is not None
        assert (await client.confirm(prepared, rrn)).code is RC.APPROVED
        bad = terminal.auth(PC.PURCHASE_CLUB, 10_000, PAN, EXP)
        bad_raw = flip_bit(bad.raw, len(bad.raw) - 1, 7)
        refused = await client.send(type(bad)(bad.request, bad_raw, bad.ksn, bad.keys,
                                              bad.response_class))
        assert refused.code is RC.SECURITY_VIOLATION
        await tick(env)
        after = await scrape(env)
        opened = (gauge(after, "loyalty_connections_open")
                  - gauge(before, "loyalty_connections_open"))
        assert opened == 1
    assert counter_deltas(before, after) == {
        msg(Mti.NETWORK_REQUEST, None, RC.APPROVED): 1,
        msg(Mti.AUTH_REQUEST, PC.PURCHASE_CLUB, RC.APPROVED): 1,
        msg(Mti.CONFIRM_ADVICE, PC.PURCHASE_CLUB, RC.APPROVED): 1,
        msg(Mti.AUTH_REQUEST, PC.PURCHASE_CLUB, RC.SECURITY_VIOLATION): 1,
        ("loyalty_security_failures_total", (("kind", "bad_mac"),)): 1,
        latency_count("network"): 1,
        latency_count("request"): 2,
        latency_count("confirm"): 1,
    }
    assert_histograms_consistent(before, after)
    assert gauge(after, "loyalty_holds_pending") == 0
    assert gauge(after, "loyalty_requests_in_flight") == 0
    assert gauge(after, "loyalty_db_up") == 1
    assert gauge(after, "loyalty_db_pool_waiting") == 0
    assert gauge(after, "loyalty_db_pool_size_max") == env.settings.db_pool_size_max
    assert gauge(after, "loyalty_db_pool_connections", state="in_use") == 0
    assert gauge(after, "loyalty_db_pool_connections", state="idle") >= 1


async def test_expired_hold_and_the_pending_count_at_its_bound(env: Env) -> None:
    async with await connect(env, make_terminal(env, "CAFE0001")) as client:
        for card in (1, 2):
            response, _ = await client.purchase(20_000, demo.demo_club_pan(card), EXP)
            assert response.code is RC.APPROVED
    await tick(env, pending_max=1)  # two pending, counted up to the bound
    at_bound = await scrape(env)
    assert gauge(at_bound, "loyalty_holds_pending") == 1
    await tick(env, pending_max=2)
    assert gauge(await scrape(env), "loyalty_holds_pending") == 2
    env.clock.advance(seconds=env.settings.hold_timeout_s + 1)
    assert await tick(env) == 2
    after = await scrape(env)
    assert counter_deltas(at_bound, after) == {("loyalty_holds_expired_total", ()): 2}
    assert gauge(after, "loyalty_holds_pending") == 0


async def test_a_lost_database_counts_as_database_errors(env: Env, admin_url: str) -> None:
    """With the switch's connections killed and the database closed to new ones, every
    request is a 91 counted as one `unavailable` database error; then service resumes."""
    name = await env.conn.fetchval("SELECT current_database()")
    before = await scrape(env)
    admin = await asyncpg.connect(admin_url)
    async with await connect(env, make_terminal(env, "CAFE0001")) as client:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        try:
            # The timeout argument makes the call wait until the backends have gone.
            await admin.execute(
                "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
                "WHERE datname = $1 AND pid <> $2", name, env.conn.get_server_pid())
            for _ in range(2):
                assert (await client.sign_on()).code is RC.SWITCH_UNAVAILABLE
        finally:
            await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            await admin.close()
        assert (await client.sign_on()).code is RC.APPROVED
    deltas = counter_deltas(before, await scrape(env))
    assert deltas[("loyalty_db_errors_total", (("kind", "unavailable"),))] == 2
    assert deltas[msg(Mti.NETWORK_REQUEST, None, RC.SWITCH_UNAVAILABLE)] == 2


async def test_a_failed_sweep_reports_the_database_down(env: Env) -> None:
    pool = await asyncpg.create_pool(env.url, min_size=1, max_size=1)
    await pool.close()
    assert await sweeper.guarded_tick(pool, env.clock(), env.limits) is None
    assert gauge(await scrape(env), "loyalty_db_up") == 0
    await tick(env)
    assert gauge(await scrape(env), "loyalty_db_up") == 1


# Label names that would carry a card, a terminal or a transaction (unbounded, or worse).
FORBIDDEN_LABELS = {"pan", "card", "stan", "rrn", "tid", "terminal", "ksn", "merchant",
                    "member", "amount", "peer", "host", "ip"}
CLOSED_LABEL_VALUES: Mapping[str, set[str]] = {
    "mti": {m.value for m in Mti},
    "processing_code": {p.value for p in PC} | {""},
    "response_code": {c.value for c in RC},
    "phase": set(metrics.PHASES),
    "state": {"in_use", "idle"},
    "le": {str(b) for b in metrics.LATENCY_BUCKETS_S} | {"+Inf"},
}
REASONS = {"total", "per_ip", "shutdown", "frame_timeout", "idle_timeout", "write_timeout",
           "framing", "handler_error", "length", "not_a_request", "undecodable"}
KINDS = metrics.SECURITY_KINDS | {"other"} | set(metrics.DB_ERROR_KINDS)


async def test_no_metric_label_can_carry_a_card_terminal_or_transaction(env: Env) -> None:
    async with await connect(env, make_terminal(env, "CAFE0001")) as client:
        await client.sign_on()
        await client.purchase(30_000, PAN, EXP)
    metrics.count_security_failure("some new kind")  # an unknown kind is counted as other
    closed = {**CLOSED_LABEL_VALUES, "reason": REASONS, "kind": KINDS}
    seen = 0
    for family in REGISTRY.collect():
        if not family.name.startswith("loyalty_"):
            continue
        for sample in family.samples:
            assert not set(sample.labels) & FORBIDDEN_LABELS, sample
            for name, value in sample.labels.items():
                assert name in closed, f"{sample.name}: label {name} has no closed set"
                assert value in closed[name], f"{sample.name}: {name}={value!r}"
                seen += 1
    assert seen > 0
    other = REGISTRY.get_sample_value("loyalty_security_failures_total", {"kind": "other"})
    assert other is not None and other >= 1
