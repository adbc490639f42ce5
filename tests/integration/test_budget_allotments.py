"""Allotments (``service.budget_allotments``) against the real Redis and PostgreSQL of the
test stack: calls reserved in memory from a hold in Redis, closed to the exact spend, the
limits still held across two processes, and reset and rebuild with an allotment open."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
import time
import uuid
from decimal import Decimal

import pytest

from somaagent.domain.budgets import Amounts, Budget, BudgetUpdate, done_key, reservations_key
from somaagent.settings import Settings
from tests.integration.test_budget_reservations import (
    NOTHING,
    Calls,
    H,
    call,
    harness,
    ledger,
    run,
    tenant,
)

WIDE_TOKENS = 300 * 16 * 64  # 1/16 of it holds 64 worst cases: allotments of 8 fit
WIDE_USD = Decimal("1")


@pytest.fixture(scope="module")
def redis_url(stack: Settings) -> str:
    return stack.url("redis_url")


def units(tokens: int, usd: str) -> Amounts:
    return Amounts.of_charge(tokens, Decimal(usd), Decimal(0))


async def holds(h: H, t: str) -> list[str]:
    """The reservation ids Redis holds for tenant ``t``."""
    return list(await h.counters.client.zrange(reservations_key(t), 0, -1))


async def values_become(
    h: H, budget: Budget, expected: tuple[Amounts, Amounts], timeout_s: float = 5.0
) -> tuple[Amounts, Amounts]:
    """The counter's (spent, reserved), once they equal ``expected`` or ``timeout_s`` ends."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = await h.values(budget)
        if got == expected or time.monotonic() > deadline:
            return got
        await asyncio.sleep(0.05)


def test_calls_are_reserved_from_one_allotment_and_closed_to_the_exact_spend(
    dsn: str, redis_url: str
) -> None:
    t = tenant()
    actuals = [(300, "0.0001"), (0, "0"), (17, "0.000000000000000001"), (250, "0.00005")]
    actuals *= 2

    async def scenario() -> None:
        async with harness(dsn, redis_url, allotment_calls=20, allotment_s=1) as h:
            b = await h.budget(t, limit_tokens=WIDE_TOKENS, limit_usd=WIDE_USD)
            await h.service.state(t, "support")
            rids = [f"r-{i}-{uuid.uuid4().hex[:8]}" for i in range(8)]
            outcomes = [await h.reserve(t, rid) for rid in rids]
            assert all(outcomes)
            held = await holds(h, t)
            assert len(held) == 1 and held[0].startswith("allot:")  # one hold for all 8
            assert await h.values(b) == (NOTHING, Amounts(6000, 2_000_000, 0))
            # Each call sees the counter as its own reservation would have found it.
            assert [o.states[0].reserved.tokens for o in outcomes] == [300 * i for i in range(8)]
            for rid, (tokens, usd) in zip(rids, actuals, strict=True):
                await h.settle(rid, tokens, usd)
            spent = NOTHING
            for tokens, usd in actuals:
                spent = spent + units(tokens, usd)
            # Spent rises when the allotment closes, 1 s after it opened.
            assert await values_become(h, b, (spent, NOTHING)) == (spent, NOTHING)
            assert await holds(h, t) == []
            assert await h.counters.client.exists(done_key(t, held[0])) == 1
            await h.writer.flush()
            assert len(ledger(dsn, t)) == 8  # every call's exact charge, none for the hold

    run(scenario())


def test_the_next_allotment_opens_at_half_and_takes_over_when_the_first_is_full(
    dsn: str, redis_url: str
) -> None:
    t = tenant()

    async def scenario() -> None:
        async with harness(dsn, redis_url, allotment_calls=4, allotment_s=5) as h:
            b = await h.budget(t, limit_tokens=WIDE_TOKENS)
            await h.service.state(t, "support")
            rids = [f"r-{i}-{uuid.uuid4().hex[:8]}" for i in range(5)]
            for rid in rids[:2]:  # half of the first: the spare opens in the background
                assert await h.reserve(t, rid)
            deadline = time.monotonic() + 5
            while len(await holds(h, t)) < 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            assert await h.values(b) == (NOTHING, Amounts(2400, 800_000, 0))
            for rid in rids[2:]:  # two more from the first, the fifth from the spare
                assert await h.reserve(t, rid)
            assert len(await holds(h, t)) == 2
            for rid in rids[:4]:  # the first drained: it closes with its last call
                await h.settle(rid, 100, "0.00001")
            expected = (Amounts(400, 40_000, 0), Amounts(1200, 400_000, 0))
            assert await values_become(h, b, expected) == expected
            assert len(await holds(h, t)) == 1

    run(scenario())


def test_near_the_limit_calls_fall_back_to_exact_reservations(dsn: str, redis_url: str) -> None:
    """32 worst cases fit; allotments (capped at 1/16 of the limit) hold 2 each, the next
    one opening after the first call of each, and the 33rd call is refused with what
    remains, as without allotments."""
    t = tenant()

    async def scenario() -> None:
        async with harness(dsn, redis_url, allotment_calls=8, allotment_s=5) as h:
            b = await h.budget(t, limit_tokens=300 * 32)
            await h.service.state(t, "support")
            outcomes = [await h.reserve(t, f"r-{i}-{t}") for i in range(33)]
            assert all(outcomes[:32]) and not outcomes[32]
            (exceeded,) = outcomes[32].exceeded
            assert (exceeded.dimension, exceeded.remaining, exceeded.requested) == (
                "tokens",
                0,
                300,
            )
            assert await h.values(b) == (NOTHING, Amounts(9600, 32 * 100_000, 0))
            assert all(rid.startswith("allot:") for rid in await holds(h, t))

    run(scenario())


def test_two_processes_with_allotments_never_hold_more_than_the_limit(
    dsn: str, redis_url: str
) -> None:
    """Two budget services (two gateways) start 30 calls each at once against a budget that
    fits 40 worst cases: at most 40 run, and the counter ends at the ledger's exact units."""
    t = tenant()
    limit = 300 * 40

    async def scenario() -> tuple[Calls, Budget, tuple[Amounts, Amounts]]:
        async with (
            harness(dsn, redis_url, allotment_calls=8, allotment_s=0.3) as a,
            harness(dsn, redis_url, allotment_calls=8, allotment_s=0.3) as b,
        ):
            budget = await a.budget(t, limit_tokens=limit)
            await a.service.state(t, "support")
            calls = Calls()
            rng = random.Random(5)
            await asyncio.gather(*(call(h, t, rng, calls) for h in (a, b) for _ in range(30)))
            await a.writer.flush()
            await b.writer.flush()
            spent = NOTHING
            for tokens, cost, gpu in ledger(dsn, t):
                spent = spent + Amounts.of_charge(tokens, cost, gpu)
            return calls, budget, await values_become(a, budget, (spent, NOTHING))

    calls, _budget, (spent, reserved) = run(scenario())
    granted = sum(map(bool, calls.outcomes))
    print(f"granted {granted} of 60, at most {calls.peak} at once")
    # Each process's slack: the unused room of its current and its spare allotment.
    assert calls.peak <= 40 and 34 <= granted <= 40
    assert reserved == NOTHING and spent.tokens <= limit
    assert spent == sum((Amounts.of_charge(tk, c, g) for tk, c, g in ledger(dsn, t)), start=NOTHING)


def test_a_reset_forgives_what_the_open_allotment_owed(dsn: str, redis_url: str) -> None:
    t = tenant()

    async def scenario() -> None:
        async with harness(dsn, redis_url, allotment_calls=16, allotment_s=5) as h:
            b = await h.budget(t, limit_tokens=WIDE_TOKENS, limit_usd=WIDE_USD)
            await h.service.state(t, "support")
            for i in range(3):  # settled before the reset: owed, not in the counter yet
                assert await h.reserve(t, f"a-{i}-{t}")
                await h.settle(f"a-{i}-{t}", 100, "0.00001")
            assert await h.reserve(t, f"inflight-{t}")  # held across the reset
            await h.service.reset(b.budget_id, actor="test", reason="allotment open")
            await h.settle(f"inflight-{t}", 50, "0.000005")  # counts: settled after it
            expected = (Amounts(50, 5_000, 0), NOTHING)
            assert await values_become(h, b, expected) == expected

    run(scenario())


def test_a_rebuild_counts_the_allotment_hold_and_not_its_calls_twice(
    dsn: str, redis_url: str
) -> None:
    t = tenant()

    async def scenario() -> None:
        async with harness(
            dsn, redis_url, writer_interval_s=3600, allotment_calls=8, allotment_s=5
        ) as h:
            b = await h.budget(t, limit_tokens=WIDE_TOKENS)
            await h.service.state(t, "support")
            assert await h.reserve(t, f"done-{t}")
            assert await h.reserve(t, f"running-{t}")
            await h.settle(f"done-{t}", 100, "0.00001")  # owed by the allotment, unwritten
            await h.flushall()
            report = await h.service.rebuild(t)
            assert report.rebuilt == 1
            # Rebuilt: the charge from the ledger (pending here), the allotment's hold back.
            assert await h.values(b) == (Amounts(100, 10_000, 0), Amounts(2400, 800_000, 0))
            assert not await h.reserve(t, f"late-{t}", amounts=Amounts(WIDE_TOKENS, 0, 0))
            await h.settle(f"running-{t}", 70, "0.000007")
            expected = (Amounts(170, 17_000, 0), NOTHING)
            assert await values_become(h, b, expected) == expected

    run(scenario())


def test_a_lowered_limit_drains_the_allotment_and_holds_for_the_next_calls(
    dsn: str, redis_url: str
) -> None:
    t = tenant()

    async def scenario() -> None:
        async with harness(dsn, redis_url, allotment_calls=8, allotment_s=5) as h:
            b = await h.budget(t, limit_tokens=WIDE_TOKENS)
            await h.service.state(t, "support")
            for i in range(2):
                assert await h.reserve(t, f"a-{i}-{t}")
            # 200 spent once these settle: 600 more tokens, two worst cases, remain.
            await h.service.update(b.budget_id, BudgetUpdate(limit_tokens=800))
            for i in range(2):  # the drained allotment closes with its last call
                await h.settle(f"a-{i}-{t}", 100, "0")
            expected = (Amounts(200, 0, 0), NOTHING)
            assert await values_become(h, b, expected) == expected
            outcomes = [await h.reserve(t, f"b-{i}-{t}") for i in range(3)]
            assert [bool(o) for o in outcomes] == [True, True, False]
            assert [e.remaining for e in outcomes[2].exceeded] == [0]
            assert not any(rid.startswith("allot:") for rid in await holds(h, t))

    run(scenario())


def test_the_first_call_of_a_window_rebuilds_its_counter_and_opens_an_allotment(
    dsn: str, redis_url: str
) -> None:
    t = tenant()

    async def scenario() -> None:
        async with harness(dsn, redis_url, allotment_calls=8, allotment_s=5) as h:
            b = await h.budget(t, limit_tokens=WIDE_TOKENS)  # no counter in Redis yet
            outcomes = await asyncio.gather(*(h.reserve(t, f"r-{i}-{t}") for i in range(3)))
            assert all(outcomes)
            held = await holds(h, t)
            assert len(held) == 1 and held[0].startswith("allot:"), held
            assert await h.values(b) == (NOTHING, Amounts(2400, 800_000, 0))

    run(scenario())


CRASHING_GATEWAY = """
import asyncio, sys
from decimal import Decimal
from somaagent.adapters.budget_store import BudgetStore, ChargeWriter
from somaagent.adapters.redis_budget import RedisBudgetCounters
from somaagent.domain.budgets import Amounts
from somaagent.service.budgets import BudgetService

async def main(dsn, url, t):
    store = BudgetStore(dsn)
    writer = ChargeWriter(store)
    s = BudgetService(store, RedisBudgetCounters(url), writer, allotment_calls=8)
    for i in range(3):
        assert await s.reserve(
            tenant=t, persona="support", amounts=Amounts(300, 100_000, 0),
            reservation_id=f"c-{i}", deadline_s=0.5,
        )
    for i in range(2):
        await s.settle(f"c-{i}", model_id="m", tokens=100, cost_usd=Decimal("0.00001"),
                       gpu_ms=Decimal(0))
    await writer.flush()
    print("ready", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main(*sys.argv[1:]))
"""


def test_a_gateway_killed_with_an_allotment_open_leaves_its_whole_hold_spent(
    dsn: str, redis_url: str
) -> None:
    """SIGKILL while an allotment funds a call: past its deadline the reaper turns the whole
    hold into spent, so the counter never shows less than the dead gateway's calls used."""
    t = tenant()

    async def scenario() -> None:
        async with harness(dsn, redis_url) as h:  # the surviving gateway, per-call
            b = await h.budget(t, limit_tokens=WIDE_TOKENS)
            await h.service.state(t, "support")
            child = subprocess.Popen(
                [sys.executable, "-c", CRASHING_GATEWAY, dsn, redis_url, t],
                stdout=subprocess.PIPE,
                text=True,
            )
            try:
                assert child.stdout is not None
                line = await asyncio.wait_for(asyncio.to_thread(child.stdout.readline), 60)
                assert line.strip() == "ready"
                (allot,) = await holds(h, t)
                assert allot.startswith("allot:")
            finally:
                child.kill()
                child.wait()
                if child.stdout is not None:
                    child.stdout.close()
            assert await h.values(b) == (NOTHING, Amounts(2400, 800_000, 0))
            assert len(ledger(dsn, t)) == 2  # 200 tokens, 20,000 nano-USD settled
            deadline = time.monotonic() + 15  # its deadline: 0.5 s + 0.5 s + 2 s margins
            while allot in await holds(h, t) and time.monotonic() < deadline:
                rid = f"probe-{uuid.uuid4().hex[:8]}"
                assert await h.reserve(t, rid)  # reaps what has expired
                await h.service.release(rid)
                await asyncio.sleep(0.2)
            assert await h.values(b) == (Amounts(2400, 800_000, 0), NOTHING)
            assert await h.counters.client.exists(done_key(t, allot)) == 1

    run(scenario())
