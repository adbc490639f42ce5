"""Budgets against the real Redis and PostgreSQL of the test stack (and a Redis of our own
that the restart tests stop and wipe). Every scenario runs in its own ``asyncio.run``."""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import uuid
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

import psycopg
import pytest
from redis.crc import key_slot

from somaagent.adapters.api_keys import ApiKeyStore
from somaagent.adapters.budget_store import BudgetStore, ChargeWriter
from somaagent.adapters.redis_budget import RedisBudgetCounters
from somaagent.domain.budgets import (
    Amounts,
    Budget,
    BudgetCreate,
    BudgetError,
    BudgetUnavailable,
    BudgetUpdate,
    UnknownBudget,
    counter_key,
    done_key,
    reservations_key,
    window_of,
)
from somaagent.entrypoints.cli_budgets import add_budgets
from somaagent.service.budgets import BudgetService, ReserveOutcome, UnknownReservation
from somaagent.settings import Settings
from somaagent.stack import Supervisor
from tests.conftest import private_stack

T = TypeVar("T")
SLOT = Amounts(300, 100_000, 0)  # worst case of one call: 300 tokens, 0.0001 USD
USD_LIMIT = Decimal("0.002")  # fits 20 worst cases
TOKEN_LIMIT = 6000  # also fits 20
NOTHING = Amounts()


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@pytest.fixture(scope="module")
def redis_url(stack: Settings) -> str:
    return stack.url("redis_url")


def tenant() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


@dataclass
class H:
    """One process's budget service on real Redis and PostgreSQL, with test shortcuts."""

    store: BudgetStore
    counters: RedisBudgetCounters
    writer: ChargeWriter
    service: BudgetService

    async def budget(self, t: str, window: str = "daily", zone: str = "UTC", **kw: Any) -> Budget:
        return await self.service.create(BudgetCreate(tenant=t, window=window, timezone=zone, **kw))  # type: ignore[arg-type]

    async def reserve(
        self, t: str, rid: str, *, persona: str = "support", amounts: Amounts = SLOT,
        deadline_s: float = 60, at: datetime | None = None,
    ) -> ReserveOutcome:  # fmt: skip
        return await self.service.reserve(
            tenant=t, persona=persona, amounts=amounts, reservation_id=rid,
            deadline_s=deadline_s, at=at,
        )  # fmt: skip

    async def settle(self, rid: str, tokens: int, usd: str = "0", gpu_ms: str = "0") -> None:
        await self.service.settle(
            rid, model_id="m", tokens=tokens, cost_usd=Decimal(usd), gpu_ms=Decimal(gpu_ms)
        )

    async def values(self, budget: Budget, at: datetime | None = None) -> tuple[Amounts, Amounts]:
        """(spent, reserved) of the budget's counter, read straight from Redis."""
        w = window_of(budget, at or datetime.now(UTC))
        v = await self.counters.client.hgetall(counter_key(budget.tenant, budget.budget_id, w.key))
        return (
            Amounts(int(v["st"]), int(v["sn"]), int(v["su"])),
            Amounts(int(v["rt"]), int(v["rn"]), int(v["ru"])),
        )

    async def flushall(self) -> None:
        await self.counters.client.flushall()
        await self.counters.client.script_flush()  # as after a restart: scripts reload


@asynccontextmanager
async def harness(
    dsn: str, redis_url: str, *, writer_interval_s: float = 0.05, **service: Any
) -> AsyncIterator[H]:
    store = BudgetStore(dsn)
    counters = RedisBudgetCounters(redis_url)
    writer = ChargeWriter(store, interval_s=writer_interval_s)
    h = H(store, counters, writer, BudgetService(store, counters, writer, **service))
    try:
        yield h
    finally:
        await h.service.aclose()
        await counters.aclose()
        await store.aclose()


def ledger(dsn: str, tenant: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT tokens, cost_usd, gpu_ms FROM budget_charges WHERE tenant = %s", (tenant,)
        ).fetchall()


async def two_budgets(h: H, t: str) -> tuple[Budget, Budget]:
    daily = await h.budget(t, "daily", "Asia/Kolkata", limit_usd=USD_LIMIT)
    monthly = await h.budget(
        t, "monthly", "America/New_York", persona="support", limit_tokens=TOKEN_LIMIT,
        on_exceed="deny",
    )  # fmt: skip
    return daily, monthly


# -- 200 concurrent calls, with and without a flush in the middle ---------------------------


@dataclass
class Calls:
    """Outcomes of simulated calls, and the most reservations held at once."""

    outcomes: list[ReserveOutcome] = field(default_factory=list)
    held: int = 0
    peak: int = 0


def random_actual(rng: random.Random) -> tuple[int, str, str]:
    """Actual usage <= the reserved worst case (all of it, one call in three), with 18-dp
    costs that round up in units."""
    gpu = str(Decimal(rng.randrange(0, 10**7)).scaleb(-4))
    if rng.random() < 1 / 3:
        return 300, "0.0001", gpu
    return rng.randint(0, 300), str(Decimal(rng.randrange(0, 10**14 + 1)).scaleb(-18)), gpu


async def call(
    h: H, t: str, rng: random.Random, calls: Calls, hook: Any = None, start_within_s: float = 0
) -> None:
    """One gateway call: reserve the worst case, "run" 50-100 ms, settle a random actual."""
    await asyncio.sleep(rng.random() * start_within_s)
    rid = f"r-{uuid.uuid4().hex}"
    outcome = await h.reserve(t, rid, deadline_s=30)
    calls.outcomes.append(outcome)
    if not outcome:
        return
    calls.held += 1
    calls.peak = max(calls.peak, calls.held)
    await asyncio.sleep(0.05 + rng.random() * 0.05)
    calls.held -= 1
    await h.settle(rid, *random_actual(rng))
    if hook is not None:
        await hook()


def check_no_overspend(dsn: str, t: str, values: list[tuple[Amounts, Amounts]]) -> None:
    rows = ledger(dsn, t)
    units = NOTHING
    for tokens, cost, gpu in rows:
        units = units + Amounts.of_charge(tokens, cost, gpu)
    assert sum(r[1] for r in rows) <= USD_LIMIT  # exact, from the ledger
    assert sum(r[0] for r in rows) <= TOKEN_LIMIT
    for spent, reserved in values:  # every charge counted once, rounded up per charge
        assert (spent, reserved) == (units, NOTHING)
    assert units.usd_nano <= 2_000_000 and units.tokens <= TOKEN_LIMIT


def check_refusals(calls: Calls, budgets: tuple[Budget, Budget]) -> None:
    assert calls.peak <= 20  # each hold is a worst case; the limits fit 20 of them
    refused = [o for o in calls.outcomes if not o]
    assert len(calls.outcomes) - len(refused) >= 20 and refused
    ids = {b.budget_id for b in budgets}
    for o in refused:
        assert o.exceeded and {e.budget.budget_id for e in o.exceeded} <= ids
        for e in o.exceeded:
            assert e.dimension in ("tokens", "usd") and e.remaining < e.requested
            assert e.limit == (TOKEN_LIMIT if e.dimension == "tokens" else 2_000_000)


def test_200_concurrent_reservations_never_overspend(dsn: str, redis_url: str) -> None:
    t = tenant()

    async def scenario() -> tuple[tuple[Budget, Budget], Calls, list[tuple[Amounts, Amounts]]]:
        async with harness(dsn, redis_url) as h:
            budgets = await two_budgets(h, t)
            calls = Calls()
            rng = random.Random(7)
            await h.service.state(t, "support")  # counters exist: the 200 start at once
            await asyncio.gather(*(call(h, t, rng, calls) for _ in range(200)))
            await h.writer.flush()
            return budgets, calls, [await h.values(b) for b in budgets]

    budgets, calls, values = run(scenario())
    assert len(calls.outcomes) == 200
    print(f"granted {sum(map(bool, calls.outcomes))}, at most {calls.peak} at once")
    check_refusals(calls, budgets)
    check_no_overspend(dsn, t, values)


def test_flushall_in_the_middle_is_rebuilt_without_overspend(dsn: str, redis_url: str) -> None:
    """Redis is flushed while reservations are held and charges are both in PostgreSQL and
    still unwritten; 186 more calls then start and the first reserve rebuilds the counters.
    Each of those conditions is arranged, not left to timing (a loaded machine once ran all
    reserves before the flush)."""
    t = tenant()

    async def scenario() -> tuple[tuple[Budget, Budget], Calls, list[tuple[Amounts, Amounts]]]:
        async with harness(dsn, redis_url, writer_interval_s=3600) as h:
            budgets = await two_budgets(h, t)
            calls = Calls()
            settled = 0
            flushed_at: list[int] = []
            flushed = asyncio.Event()
            rng = random.Random(11)
            for _ in range(4):  # settled and written to PostgreSQL before the flush
                await call(h, t, rng, calls)
            await h.writer.flush()
            holder = f"{t}-holder"  # held across the flush, settled at the end
            assert await h.reserve(t, holder)

            async def after_settle() -> None:
                nonlocal settled
                settled += 1
                if settled == 4:  # these four are not written yet (the writer waits an hour)
                    assert h.writer.pending(t)
                    assert await h.counters.client.zcard(reservations_key(t)) > 0
                    flushed_at.append(len(calls.outcomes))
                    await h.flushall()
                    flushed.set()

            async def after_the_flush() -> None:
                await flushed.wait()
                await call(h, t, rng, calls, None, 0.6)

            first = [call(h, t, rng, calls, after_settle) for _ in range(10)]  # all fit
            await asyncio.gather(*first, *(after_the_flush() for _ in range(186)))
            # granted after the flush too (the reserve rebuilt the counters)
            assert flushed_at and any(calls.outcomes[flushed_at[0] :])
            await h.settle(holder, *random_actual(rng))
            states = await h.service.state(t, "support")  # rebuilds what is still missing
            await h.writer.flush()
            assert {s.budget.budget_id for s in states} == {b.budget_id for b in budgets}
            return budgets, calls, [await h.values(b) for b in budgets]

    budgets, calls, values = run(scenario())
    assert len(calls.outcomes) == 200
    check_refusals(calls, budgets)
    check_no_overspend(dsn, t, values)


# -- flushes, restarts, expiry, idempotency --------------------------------------------------


@pytest.mark.parametrize("writer", ["pending", "flushing", "written"])
def test_settle_after_a_flush_still_counts(dsn: str, redis_url: str, writer: str) -> None:
    """A settle while the counters are gone is counted by the rebuild, wherever its charge
    is then: unwritten (the writer's pending list), being written at that very moment, or in
    PostgreSQL. The writer only flushes when told, so each case happens every run."""
    t = tenant()

    async def scenario() -> None:
        async with harness(dsn, redis_url, writer_interval_s=3600) as h:
            budgets = await two_budgets(h, t)
            for rid in ("a", "b", "c"):
                assert await h.reserve(t, f"{t}-{rid}")
            await h.flushall()
            # a: settled while the counters are gone (skipped there, counted by the rebuild)
            await h.settle(f"{t}-a", 100, "0.00002", "5")
            if writer == "written":
                await h.writer.flush()
            # a reserve rebuilds: b and c are held again, a counted from the ledger or the
            # writer (with "flushing" the batch holding a is in flight when the reserve starts)
            flush = h.writer.flush() if writer == "flushing" else asyncio.sleep(0)
            _, d = await asyncio.gather(flush, h.reserve(t, f"{t}-d"))
            assert d
            assert bool(h.writer.pending(t)) == (writer == "pending")
            expected = (Amounts(100, 20_000, 5000), Amounts(900, 300_000, 0))
            assert [await h.values(b) for b in budgets] == [expected, expected]
            await h.settle(f"{t}-b", 7, "0.000000000000000001")
            await h.service.release(f"{t}-c")
            expected = (Amounts(107, 20_001, 5000), SLOT)
            assert [await h.values(b) for b in budgets] == [expected, expected]

    run(scenario())


def stop_redis(sup: Supervisor, *, wipe: bool) -> None:
    sup.down(only=["redis"])
    if wipe:
        shutil.rmtree(sup.settings.state_dir / "redis" / "appendonlydir")


def test_redis_restart_with_lost_data(dsn: str, stack: Settings) -> None:
    """Redis stops and comes back empty; a settle made while it was down is retried after
    the rebuild already counted it (the counter's marker keeps it from counting twice)."""
    t = tenant()
    with private_stack("budgets-redis", stack.port_base + 1, ["redis"]) as sup:
        url = sup.settings.url("redis_url")

        async def scenario() -> tuple[Budget, Budget]:
            async with harness(dsn, url, retry_interval_s=3600) as h:  # retried by aclose
                budgets = await two_budgets(h, t)
                for rid in ("a", "b", "c"):
                    assert await h.reserve(t, f"{t}-{rid}")
                await asyncio.to_thread(stop_redis, sup, wipe=True)
                await h.settle(f"{t}-a", 50, "0.00001")  # no error: recorded, retried later
                with pytest.raises(BudgetUnavailable):
                    await h.reserve(t, f"{t}-x")
                await asyncio.to_thread(sup.up, only=["redis"])
                for s in await h.service.state(t, "support"):  # rebuilt: a spent, b, c held
                    assert (s.spent, s.reserved) == (Amounts(50, 10_000, 0), SLOT + SLOT)
                await h.settle(f"{t}-b", 10, "0.000002")
                await h.service.release(f"{t}-c")
                return budgets

        budgets = run(scenario())  # closing it retried a's settle against the rebuilt counters

        async def check() -> None:
            async with harness(dsn, url) as h:
                for b in budgets:
                    assert await h.values(b) == (Amounts(60, 12_000, 0), NOTHING)

        run(check())


def test_a_missed_settle_retried_on_an_empty_redis_is_counted_once(
    dsn: str, stack: Settings
) -> None:
    """Redis stops and comes back empty; the background retry of a settle made meanwhile runs
    before any rebuild (the counters are missing: it leaves only its done marker), then a
    reserve rebuilds them: the charge counts once, from the writer's unwritten charge."""
    t = tenant()
    with private_stack("budgets-redis", stack.port_base + 1, ["redis"]) as sup:
        url = sup.settings.url("redis_url")

        async def scenario() -> None:
            async with harness(dsn, url, retry_interval_s=0.05, writer_interval_s=3600) as h:
                budgets = await two_budgets(h, t)
                for rid in ("a", "b", "c"):
                    assert await h.reserve(t, f"{t}-{rid}")
                await asyncio.to_thread(stop_redis, sup, wipe=True)
                await h.settle(f"{t}-a", 100, "0.00002", "5")  # Redis down: retried later
                await asyncio.to_thread(sup.up, only=["redis"])
                client = h.counters.client
                for _ in range(200):  # the retry ran once its done marker exists
                    if await client.exists(done_key(t, f"{t}-a")):
                        break
                    await asyncio.sleep(0.05)
                else:
                    raise AssertionError("the settle was never retried")
                assert [k async for k in client.scan_iter(match=f"soma:{{{t}}}:bud:*")] == []
                assert await h.reserve(t, f"{t}-d")  # rebuilds: a spent, b, c (and d) held
                assert h.writer.pending(t)
                expected = (Amounts(100, 20_000, 5000), Amounts(900, 300_000, 0))
                assert [await h.values(b) for b in budgets] == [expected, expected]
                for b in budgets:
                    w = window_of(b, datetime.now(UTC))
                    fields = await client.hkeys(counter_key(t, b.budget_id, w.key))
                    assert not [f for f in fields if f.startswith("x:")]

        run(scenario())


def test_a_settle_missed_during_a_restart_is_retried_in_the_background(
    dsn: str, stack: Settings
) -> None:
    t = tenant()
    with private_stack("budgets-redis", stack.port_base + 1, ["redis"]) as sup:
        url = sup.settings.url("redis_url")

        async def scenario() -> None:
            async with harness(dsn, url, retry_interval_s=0.1) as h:
                budgets = await two_budgets(h, t)
                assert await h.reserve(t, f"{t}-a") and await h.reserve(t, f"{t}-b")
                await asyncio.to_thread(stop_redis, sup, wipe=False)  # its data persists
                await h.settle(f"{t}-a", 50, "0.00001")
                await asyncio.to_thread(sup.up, only=["redis"])
                await asyncio.sleep(0.5)  # the background retry tells Redis
                for b in budgets:
                    assert await h.values(b) == (Amounts(50, 10_000, 0), SLOT)

        run(scenario())


def test_an_expired_reservation_is_reaped_and_its_late_settle_counts(
    dsn: str, redis_url: str
) -> None:
    t = tenant()
    one = Amounts(100, 0, 0)

    async def scenario() -> None:
        async with harness(dsn, redis_url) as h:
            b = await h.budget(t, limit_tokens=100)
            assert await h.reserve(t, f"{t}-1", amounts=one, deadline_s=0.2)
            refused = await h.reserve(t, f"{t}-2", amounts=one)
            assert not refused and refused.exceeded[0].remaining == 0
            await asyncio.sleep(0.3)
            assert await h.reserve(t, f"{t}-3", amounts=one)
            assert await h.values(b) == (NOTHING, one)  # only the new one: the first was reaped
            await h.settle(f"{t}-1", 40)
            assert await h.values(b) == (Amounts(40, 0, 0), one)  # never lose spend

    run(scenario())


def test_settle_and_release_are_idempotent(dsn: str, redis_url: str) -> None:
    t = tenant()

    async def scenario() -> None:
        async with harness(dsn, redis_url) as h:
            b = await h.budget(t, "monthly", limit_tokens=10_000)
            rid = f"{t}-r"
            assert await h.reserve(t, rid)
            with pytest.raises(BudgetError, match="used already"):
                await h.reserve(t, rid)
            await h.settle(rid, 120)
            await h.settle(rid, 120)
            await h.service.release(rid)
            await h.writer.flush()
            assert await h.values(b) == (Amounts(120, 0, 0), NOTHING)
            assert len(ledger(dsn, t)) == 1
            # the scripts themselves: a repeated settle finds the done marker and does nothing
            key = counter_key(t, b.budget_id, window_of(b, datetime.now(UTC)).key)
            assert await h.counters.settle(t, rid, [key], Amounts(5, 0, 0)) == "duplicate"
            assert await h.counters.release(t, rid, [key]) == "duplicate"
            assert await h.values(b) == (Amounts(120, 0, 0), NOTHING)
            with pytest.raises(UnknownReservation):
                await h.settle("never-made", 1)
            assert await h.reserve(t, f"{t}-s")
            with pytest.raises(BudgetError, match="18 decimal places"):
                await h.settle(f"{t}-s", 1, "1e-19")

    run(scenario())


def test_counters_beyond_two_to_the_53_stay_exact(dsn: str, redis_url: str) -> None:
    """The scripts never do arithmetic in Lua's doubles (exact only below 2^53): a counter
    past 2^60 is still held, released and spent to the unit (Redis's 64-bit HINCRBY)."""
    t = tenant()
    big = 2**60

    async def scenario() -> None:
        async with harness(dsn, redis_url) as h:
            b = await h.budget(t, "monthly", limit_usd=USD_LIMIT)  # tokens unlimited
            assert await h.reserve(t, f"{t}-0")
            await h.settle(f"{t}-0", 0)
            key = counter_key(t, b.budget_id, window_of(b, datetime.now(UTC)).key)
            await h.counters.client.hset(key, mapping={"st": big + 1, "rt": big + 3})
            assert await h.reserve(t, f"{t}-1")
            assert await h.values(b) == (Amounts(big + 1, 0, 0), Amounts(big + 303, 100_000, 0))
            await h.settle(f"{t}-1", 250, "0.00005")
            assert await h.values(b) == (Amounts(big + 251, 50_000, 0), Amounts(big + 3, 0, 0))
            await h.counters.client.hset(key, mapping={"st": 7, "rt": 0})
            assert await h.reserve(t, f"{t}-2")
            await h.settle(f"{t}-2", 11, "0.000001")
            assert await h.values(b) == (Amounts(18, 51_000, 0), NOTHING)

    run(scenario())


def test_refused_reservation_still_settles_in_permissive_mode(dsn: str, redis_url: str) -> None:
    t = tenant()

    async def scenario() -> None:
        async with harness(dsn, redis_url) as h:
            b = await h.budget(t, limit_tokens=100)
            outcome = await h.reserve(t, f"{t}-1")
            assert not outcome and outcome.exceeded[0].budget == b
            await h.settle(f"{t}-1", 250)
            assert await h.values(b) == (Amounts(250, 0, 0), NOTHING)  # the overspend counts

    run(scenario())


def test_a_settle_that_does_not_wait_is_seen_by_the_next_operation(
    dsn: str, redis_url: str
) -> None:
    """``settle(wait=False)`` returns before Redis is told; the next read or reservation of
    this process goes out after it on the same connection, and closing the service waits
    for what is still in flight."""
    t = tenant()

    async def scenario() -> None:
        async with harness(dsn, redis_url) as h:
            b = await h.budget(t, "monthly", limit_tokens=10_000)
            for i in range(50):
                assert await h.reserve(t, f"{t}-{i}")
                await h.service.settle(
                    f"{t}-{i}", model_id="m", tokens=7, cost_usd=Decimal(0),
                    gpu_ms=Decimal(0), wait=False,
                )  # fmt: skip
                state = (await h.service.state(t, "support"))[0]
                assert (state.spent, state.reserved) == (Amounts(7 * (i + 1), 0, 0), NOTHING)
            assert await h.reserve(t, f"{t}-last")
            await h.service.settle(
                f"{t}-last", model_id="m", tokens=5, cost_usd=Decimal(0), gpu_ms=Decimal(0),
                wait=False,
            )  # fmt: skip
        # the harness closed the service right after the last settle was handed over
        async with harness(dsn, redis_url) as h2:
            assert await h2.values(b) == (Amounts(355, 0, 0), NOTHING)
        assert sorted(r[0] for r in ledger(dsn, t)) == [5] + [7] * 50

    run(scenario())


def test_a_reservation_reports_the_state_it_found(dsn: str, redis_url: str) -> None:
    """The reserve script returns each counter as it read it, before its own hold: the same
    values a separate read at that moment gives (the gateway's policy input uses them)."""
    t = tenant()

    async def scenario() -> None:
        async with harness(dsn, redis_url) as h:
            daily, monthly = await two_budgets(h, t)
            first = await h.reserve(t, f"{t}-1")
            assert first and [s.budget for s in first.states] == [daily, monthly]
            assert all((s.spent, s.reserved) == (NOTHING, NOTHING) for s in first.states)
            second = await h.reserve(t, f"{t}-2")
            assert [(s.spent, s.reserved) for s in second.states] == [(NOTHING, SLOT)] * 2
            await h.settle(f"{t}-1", 120, "0.00005")
            third = await h.reserve(t, f"{t}-3")
            spent = Amounts.of_charge(120, Decimal("0.00005"), Decimal(0))
            assert [(s.spent, s.reserved) for s in third.states] == [(spent, SLOT)] * 2
            assert [(s.spent, s.reserved) for s in third.states] != [
                (s.spent, s.reserved) for s in await h.service.state(t, "support")
            ]  # the state now includes the third hold; the outcome's is from before it
            big = Amounts(1, 10**7, 0)  # 0.01 USD: over the daily limit
            refused = await h.reserve(t, f"{t}-4", amounts=big)
            assert not refused and refused.exceeded[0].budget == daily
            now = await h.service.state(t, "support")
            assert [(s.spent, s.reserved) for s in refused.states] == [
                (s.spent, s.reserved) for s in now
            ]
            assert [s.limits for s in refused.states] == [s.limits for s in now]
            assert (
                refused.exceeded[0].remaining
                == daily.limits().remaining(now[0].spent + now[0].reserved).usd_nano
            )

    run(scenario())


def test_tenants_never_touch_each_others_counters(dsn: str, redis_url: str) -> None:
    a = tenant()
    b = f"{a}:b"  # shares a's name as a prefix

    async def snapshot(h: H, name: str) -> dict[str, Any]:
        client = h.counters.client
        out: dict[str, Any] = {}
        async for k in client.scan_iter(match=f"soma:{{{name}}}:*"):
            kind = await client.type(k)
            out[k] = await (client.hgetall(k) if kind == "hash" else client.zrange(k, 0, -1))
        return out

    async def scenario() -> None:
        async with harness(dsn, redis_url) as h:
            await h.budget(a, limit_tokens=600)
            budget_b = await h.budget(b, limit_tokens=600)
            assert await h.reserve(a, f"{a}-1", deadline_s=0.1)
            assert await h.reserve(a, f"{a}-2")
            before = await snapshot(h, a)
            assert len({key_slot(k.encode()) for k in before}) == 1  # one Redis Cluster slot
            await asyncio.sleep(0.2)  # a-1 expired: only a's own reserve may reap it
            for i in range(3):
                if await h.reserve(b, f"{b}-{i}"):
                    await h.settle(f"{b}-{i}", 300)
            await h.service.reset(budget_b.budget_id, actor="ops", reason="test")
            await h.service.rebuild(b)
            assert await snapshot(h, a) == before

    run(scenario())


# -- windows, reset, CRUD, cache -------------------------------------------------------------


def test_a_new_calendar_window_starts_from_zero(dsn: str, redis_url: str) -> None:
    t = tenant()
    sunday = datetime(2026, 3, 9, 3, 59, tzinfo=UTC)  # 23:59 on Sunday in New York (EDT)
    monday = sunday + timedelta(minutes=2)

    async def scenario() -> None:
        async with harness(dsn, redis_url) as h:
            daily = await h.budget(t, "daily", "America/New_York", limit_tokens=500)
            monthly = await h.budget(t, "monthly", limit_tokens=10_000)
            assert await h.reserve(t, f"{t}-sun", at=sunday)
            await h.settle(f"{t}-sun", 300)
            assert not await h.reserve(t, f"{t}-x", at=sunday)
            assert await h.reserve(t, f"{t}-mon", at=monday)
            by_id = {s.budget.budget_id: s for s in await h.service.state(t, "p", at=monday)}
            today = by_id[daily.budget_id]
            assert today.window.key == "2026-03-09" and (today.spent, today.reserved) == (
                NOTHING,
                SLOT,
            )
            assert by_id[monthly.budget_id].spent == Amounts(300, 0, 0)  # same month: shared
            assert await h.values(daily, sunday) == (Amounts(300, 0, 0), NOTHING)

    run(scenario())


def test_a_manual_reset_is_audited_and_survives_a_rebuild(dsn: str, redis_url: str) -> None:
    t = tenant()
    costs = ["0.000012345678901234", "0.000000000000000001"]

    async def scenario() -> Budget:
        async with harness(dsn, redis_url) as h:
            b = await h.budget(t, "daily", "Europe/Paris", limit_usd=USD_LIMIT)
            for i, cost in enumerate(costs):
                assert await h.reserve(t, f"{t}-{i}")
                await h.settle(f"{t}-{i}", 10, cost, "1.5")
            assert await h.reserve(t, f"{t}-open")
            with pytest.raises(BudgetError, match="reason"):
                await h.service.reset(b.budget_id, actor="alice", reason="")
            record = await h.service.reset(b.budget_id, actor="alice", reason="refund agreed")
            assert (record.actor, record.reason, record.tenant) == ("alice", "refund agreed", t)
            assert record.spent_before_usd == sum(map(Decimal, costs))
            assert record.spent_before_tokens == 20 and record.spent_before_gpu_ms == 3
            assert await h.values(b) == (NOTHING, SLOT)
            await h.flushall()
            [s] = await h.service.state(t, "p")  # rebuilt: nothing settled since the reset
            assert (s.spent, s.reserved) == (NOTHING, SLOT)
            await h.settle(f"{t}-open", 1, "0.000001")
            [s] = await h.service.state(t, "p")
            assert (s.spent, s.reserved) == (Amounts(1, 1000, 0), NOTHING)
            [summary] = await h.service.summary(t)
            assert summary.exact and summary.spent_usd == Decimal("0.000001")
            assert summary.counted_since == record.reset_at
            assert summary.remaining_usd == USD_LIMIT - Decimal("0.000001")
            return b

    b = run(scenario())
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT actor, reason, spent_before_usd FROM budget_resets WHERE budget_id = %s",
            (b.budget_id,),
        ).fetchall()
    assert rows == [("alice", "refund agreed", sum(map(Decimal, costs)))]


def count_budgets(dsn: str, t: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM budgets WHERE tenant = %s", (t,)).fetchone()
    assert row is not None
    return int(row[0])


def test_crud_and_its_errors_write_nothing_half(dsn: str, redis_url: str) -> None:
    t = tenant()

    async def scenario() -> None:
        async with harness(dsn, redis_url, cache_ttl_s=60) as h:
            b = await h.budget(t, limit_tokens=5)
            assert await h.service.get(b.budget_id) == b and await h.service.list(t) == [b]
            with pytest.raises(BudgetError, match="already has a daily budget"):
                await h.budget(t, "daily", "Europe/Paris", limit_tokens=9)
            for bad in ({"limit_tokens": -1}, {}, {"limit_tokens": 1, "zone": "Nowhere/Land"}):
                with pytest.raises(BudgetError):
                    await h.budget(t, "monthly", **bad)
            assert count_budgets(dsn, t) == 1
            assert await h.service.applicable(t, "p") == [b]
            with pytest.raises(BudgetError, match="at least one limit"):
                await h.service.update(b.budget_id, BudgetUpdate(limit_tokens=None))
            assert await h.service.get(b.budget_id) == b  # unchanged
            change = BudgetUpdate(limit_usd=Decimal("2.5"), on_exceed="pause")
            updated = await h.service.update(b.budget_id, change)
            assert await h.service.applicable(t, "p") == [updated]  # this process's cache
            unknown = "ffffffffffffffff"
            for op in (
                h.service.get(unknown),
                h.service.delete(unknown),
                h.service.update(unknown, BudgetUpdate(limit_tokens=1)),
                h.service.reset(unknown, actor="a", reason="r"),
                h.service.get("not-an-id"),
            ):
                with pytest.raises(UnknownBudget):
                    await op
            assert await h.service.delete(b.budget_id) == updated
            assert await h.service.applicable(t, "p") == [] and count_budgets(dsn, t) == 0

    run(scenario())


def test_the_budget_cache_lives_its_ttl_then_follows_the_database(dsn: str, redis_url: str) -> None:
    t = tenant()

    async def scenario() -> None:
        async with harness(dsn, redis_url, cache_ttl_s=0.3) as h, harness(dsn, redis_url) as other:
            b = await other.budget(t, limit_tokens=5)
            assert await h.service.applicable(t, "p") == [b]
            await other.service.delete(b.budget_id)  # another process: h learns within its TTL
            assert await h.service.applicable(t, "p") == [b]
            await asyncio.sleep(0.35)
            assert await h.service.applicable(t, "p") == []

    run(scenario())


# -- CLI -------------------------------------------------------------------------------------


async def flush_redis(url: str) -> None:
    counters = RedisBudgetCounters(url)
    try:
        await counters.client.flushall()
    finally:
        await counters.aclose()


def cli(settings: Settings, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="soma")
    add_budgets(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["budgets", *argv])
    code: int = args.func(settings, args)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_budgets(stack: Settings, dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    t = tenant()
    code, _, err = cli(stack, capsys, "create", "--tenant", t, "--window", "daily", "--tz", "UTC",
                       "--tokens", "5")  # fmt: skip
    assert code == 1 and f"unknown tenant '{t}'" in err, "no API key names this tenant yet"
    keys = ApiKeyStore(dsn)
    keys.create(t, "support", "user")
    keys.close()
    daily = ["create", "--tenant", t, "--window", "daily"]
    code, out, _ = cli(
        stack, capsys, *daily[:3], "--persona", "support", "--window", "monthly",
        "--tz", "Europe/Paris", "--usd", "12.5", "--tokens", "1000", "--on-exceed", "pause",
        "--json",
    )  # fmt: skip
    created = json.loads(out)
    bid = created["budget_id"]
    assert code == 0 and created["limit_usd"] == "12.5" and created["persona"] == "support"
    for args, error in (
        (["--tz", "Europe/Paris", "--usd", "-1"], "limit_usd must not be negative"),
        (["--tz", "Moon/Base", "--usd", "1"], "unknown time zone"),
        (["--tz", "UTC"], "at least one limit"),
    ):
        code, _, err = cli(stack, capsys, *daily, *args)
        assert code == 1 and error in err
    code, out, _ = cli(stack, capsys, "list", "--tenant", t, "--json")
    assert code == 0 and [b["budget_id"] for b in json.loads(out)] == [bid]
    code, out, _ = cli(
        stack, capsys, "update", bid, "--tokens", "none", "--gpu-hours", "3", "--json"
    )
    updated = json.loads(out)
    assert code == 0 and updated["limit_tokens"] is None and updated["limit_gpu_hours"] == "3"
    code, out, _ = cli(stack, capsys, "show", bid, "--json")
    shown = json.loads(out)
    assert shown["budget"]["budget_id"] == bid and shown["summary"]["spent_usd"] == "0"
    assert "remaining" in cli(stack, capsys, "show", bid)[1]
    run(flush_redis(stack.url("redis_url")))
    assert "1 of 1 counters rebuilt" in cli(stack, capsys, "rebuild", "--tenant", t)[1]
    [counter] = json.loads(cli(stack, capsys, "rebuild", "--tenant", t, "--json")[1])
    assert counter["rebuilt"] is False and counter["budget_id"] == bid
    code, out, _ = cli(stack, capsys, "reset", bid, "--actor", "ops", "--reason", "fix", "--json")
    assert code == 0 and json.loads(out)["actor"] == "ops"
    assert "deleted" in cli(stack, capsys, "delete", bid)[1]
    code, _, err = cli(stack, capsys, "show", bid)
    assert code == 1 and "no budget" in err
    assert cli(stack, capsys, "delete", "nope")[0] == 1
