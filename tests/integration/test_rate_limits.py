"""API keys' rate limits against the real Redis of the test stack. Two limiters (two
connections, as two gateway replicas have) share each key's limits; every scenario runs in
its own ``asyncio.run`` with a key id of its own."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import secrets
import socket
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest
import redis

from somaagent.adapters.redis_rate_limit import (
    RateLimitUnavailable,
    RedisRateLimiter,
    rate_keys,
)
from somaagent.domain.chat_request import ChatRequest, RequestError, parse_chat_request
from somaagent.domain.identity import Caller
from somaagent.domain.rate_limits import RateDecision, RateLimits
from somaagent.domain.routing import Concurrency
from somaagent.domain.worst_case import prompt_token_bound
from somaagent.service.rate_limits import RateGate
from somaagent.service.upstream_slots import UpstreamSlots
from somaagent.service.upstreams import within_quota
from somaagent.settings import Settings
from tests.unit.domain.routing._catalogs import local_catalog

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def new_key() -> str:
    return secrets.token_hex(8)


def hold() -> str:
    return secrets.token_hex(8)


@pytest.fixture(scope="module")
def url(stack: Settings) -> str:
    return stack.url("redis_url")


async def admit_all(
    limiters: list[RedisRateLimiter], key: str, limits: RateLimits, tokens: int, count: int
) -> list[RateDecision]:
    return list(
        await asyncio.gather(
            *(limiters[i % len(limiters)].admit(key, hold(), limits, tokens) for i in range(count))
        )
    )


def test_requests_per_minute_hold_exactly_across_two_replicas(url: str) -> None:
    key, limits = new_key(), RateLimits(rpm=7)

    async def scenario() -> list[RateDecision]:
        a, b = RedisRateLimiter(url), RedisRateLimiter(url)
        try:
            return await admit_all([a, b], key, limits, 0, 40)
        finally:
            await a.aclose()
            await b.aclose()

    decisions = run(scenario())
    admitted = [d for d in decisions if d.admitted]
    assert len(admitted) == 7
    assert sorted(d.requests_left for d in admitted) == list(range(7))  # type: ignore[type-var]
    refused = [d for d in decisions if not d.admitted]
    assert {d.status for d in refused} == {"requests"}
    assert all(0 < d.retry_ms <= 60_001 for d in refused)
    assert all(d.tokens_left is None for d in decisions)  # tokens are not limited


def test_the_window_slides_and_retry_after_is_when_a_request_fits_again(url: str) -> None:
    key, limits = new_key(), RateLimits(rpm=2)

    async def scenario() -> tuple[RateDecision, RateDecision]:
        limiter = RedisRateLimiter(url, window_s=2.0)
        try:
            for _ in range(2):
                assert (await limiter.admit(key, hold(), limits, 0)).admitted
            refused = await limiter.admit(key, hold(), limits, 0)
            await asyncio.sleep(refused.retry_ms / 1000)
            return refused, await limiter.admit(key, hold(), limits, 0)
        finally:
            await limiter.aclose()

    refused, again = run(scenario())
    assert refused.status == "requests" and 0 < refused.retry_ms <= 2001
    assert again.admitted and again.requests_left in (0, 1)  # 1: both left at that ms


def test_tokens_hold_the_worst_case_until_settled_to_what_was_used(url: str) -> None:
    key, limits = new_key(), RateLimits(tpm=1000)

    async def scenario() -> list[RateDecision]:
        a, b = RedisRateLimiter(url), RedisRateLimiter(url)
        first, out = hold(), []
        try:
            out.append(await a.admit(key, first, limits, 600))
            out.append(await b.admit(key, hold(), limits, 500))  # 600 held: refused
            assert await a.settle(key, first, 100)  # used 100 of its 600
            out.append(await b.admit(key, hold(), limits, 500))
            out.append(await b.admit(key, hold(), limits, 401))  # 100 + 500 held + 401
            return out
        finally:
            await a.aclose()
            await b.aclose()

    held, blocked, after, over = run(scenario())
    assert held.admitted and held.tokens_left == 400
    # Only a hold of a call in flight stands in the way: look again in a second.
    assert blocked.status == "tokens" and blocked.retry_ms == 1000 and blocked.tokens_left == 400
    assert after.admitted and after.tokens_left == 400  # 1000 - 100 used - 500 held
    assert over.status == "tokens" and over.tokens_left == 400


def test_settled_tokens_leave_the_window_at_their_settle_time(url: str) -> None:
    key, limits = new_key(), RateLimits(tpm=1000)

    async def scenario() -> tuple[RateDecision, RateDecision]:
        limiter = RedisRateLimiter(url, window_s=2.0)
        try:
            first = hold()
            assert (await limiter.admit(key, first, limits, 900)).admitted
            await limiter.settle(key, first, 800)
            refused = await limiter.admit(key, hold(), limits, 500)
            await asyncio.sleep(refused.retry_ms / 1000)
            return refused, await limiter.admit(key, hold(), limits, 500)
        finally:
            await limiter.aclose()

    refused, again = run(scenario())
    # Until the settled 800 leave: 2 s after the settle, less the time since then.
    assert refused.status == "tokens" and 0 < refused.retry_ms <= 2001
    assert again.admitted and again.tokens_left == 500


def test_a_request_larger_than_the_limit_is_too_large_and_counts_nothing(url: str) -> None:
    key, limits = new_key(), RateLimits(rpm=5, tpm=100)

    async def scenario() -> tuple[RateDecision, RateDecision]:
        limiter = RedisRateLimiter(url)
        try:
            big = await limiter.admit(key, hold(), limits, 101)
            return big, await limiter.admit(key, hold(), limits, 100)
        finally:
            await limiter.aclose()

    big, fits = run(scenario())
    assert big.status == "too_large" and big.tokens_left == 100 and big.requests_left == 5
    assert fits.admitted and fits.tokens_left == 0 and fits.requests_left == 4


def test_a_hold_never_settled_lapses_and_a_late_settle_still_counts(url: str) -> None:
    key, limits = new_key(), RateLimits(tpm=1000)

    async def scenario() -> tuple[RateDecision, bool, RateDecision]:
        limiter = RedisRateLimiter(url, hold_s=0.3)
        try:
            lost = hold()
            assert (await limiter.admit(key, lost, limits, 900)).admitted
            await asyncio.sleep(0.4)  # its gateway died: the hold lapses
            second = hold()
            after = await limiter.admit(key, second, limits, 900)
            late = await limiter.settle(key, lost, 50)  # it did end after all
            await limiter.settle(key, second, 0)
            return after, late, await limiter.admit(key, hold(), limits, 950)
        finally:
            await limiter.aclose()

    after, late, last = run(scenario())
    assert after.admitted and after.tokens_left == 100
    assert late is False
    assert last.admitted and last.tokens_left == 0  # 1000 - the late 50 - this 950


def test_tokens_per_minute_hold_exactly_under_concurrency(url: str) -> None:
    key, limits = new_key(), RateLimits(rpm=1000, tpm=10_000)

    async def scenario() -> list[RateDecision]:
        a, b = RedisRateLimiter(url), RedisRateLimiter(url)
        try:
            return await admit_all([a, b], key, limits, 300, 60)
        finally:
            await a.aclose()
            await b.aclose()

    decisions = run(scenario())
    admitted = [d for d in decisions if d.admitted]
    assert len(admitted) == 33  # 33 * 300 = 9,900 <= 10,000 < 34 * 300
    assert sorted(d.tokens_left for d in admitted)[0] == 100  # type: ignore[type-var]
    assert {d.status for d in decisions if not d.admitted} == {"tokens"}


def test_every_key_expires_once_idle(url: str) -> None:
    key, limits = new_key(), RateLimits(rpm=10, tpm=1000)

    async def scenario() -> None:
        limiter = RedisRateLimiter(url, window_s=2.0, hold_s=3.0)
        try:
            first = hold()
            assert (await limiter.admit(key, first, limits, 10)).admitted
            await limiter.settle(key, first, 5)
        finally:
            await limiter.aclose()

    run(scenario())
    inspect = redis.Redis.from_url(url)
    try:
        ttls = [inspect.pttl(k) for k in rate_keys(key)]
    finally:
        inspect.close()
    assert 0 < ttls[0] <= 2000  # the requests: one window
    # The settled calls and the amounts: a window and a hold lifetime. No hold is left open,
    # so its set is gone.
    assert 0 < ttls[1] <= 5000 and 0 < ttls[3] <= 5000
    assert ttls[2] == -2


def test_an_unreachable_redis_is_unavailable_not_unlimited() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed once the block ends: nobody listens there

    async def scenario() -> None:
        limiter = RedisRateLimiter(f"redis://127.0.0.1:{port}/0", timeout_s=0.5)
        try:
            await limiter.admit(new_key(), hold(), RateLimits(rpm=1), 0)
        finally:
            await limiter.aclose()

    with pytest.raises(RateLimitUnavailable, match="Redis unavailable"):
        run(scenario())


def chat_request(max_tokens: int) -> ChatRequest:
    return parse_chat_request(
        json.dumps(
            {"messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens}
        ).encode(),
        default_max_tokens=16,
        max_tokens_cap=4096,
    )


def test_the_gate_holds_a_call_until_its_accounting_settles_it(url: str) -> None:
    caller = Caller(new_key(), "acme", "p", "r", limits=RateLimits(rpm=10, tpm=200))
    request = chat_request(50)
    worst = prompt_token_bound(request.messages) + 50

    async def scenario() -> list[RateDecision]:
        limiter = RedisRateLimiter(url)
        gate = RateGate(limiter, unavailable=(RateLimitUnavailable,), close=limiter.aclose)
        try:
            first = await gate.admit(request, caller)
            assert first is not None and first.holds[0].decision.tokens_left == 200 - worst
            first.settle(7)  # what its attempts used
            first.release()  # a no-op once settled
            second = await gate.admit(request, caller)
            assert second is not None
            second.release()  # refused after admission (the policy): nothing used
            third = await gate.admit(request, caller)
            assert third is not None
            return [h.holds[0].decision for h in (first, second, third)]
        finally:
            await gate.aclose()

    first, second, third = run(scenario())
    assert second.tokens_left == 200 - 7 - worst
    assert third.tokens_left == 200 - 7 - worst and third.requests_left == 7
    uncounted = Caller(new_key(), "acme", "p", "r")  # a key without limits: nothing to ask
    assert run(RateGate(RedisRateLimiter(url), unavailable=()).admit(request, uncounted)) is None


def test_the_gate_refuses_clearly_and_waits_when_redis_is_away(url: str) -> None:
    request = chat_request(50)
    limited = Caller(new_key(), "acme", "p", "r", limits=RateLimits(rpm=1))
    refusals: list[str] = []

    async def twice() -> None:
        limiter = RedisRateLimiter(url)
        gate = RateGate(
            limiter,
            unavailable=(RateLimitUnavailable,),
            on_refused=lambda c, limit: refusals.append(limit),
            close=limiter.aclose,
        )
        try:
            assert await gate.admit(request, limited) is not None
            await gate.admit(request, limited)
        finally:
            await gate.aclose()

    with pytest.raises(RequestError) as over:
        run(twice())
    assert over.value.status == 429 and refusals == ["requests"]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def away() -> None:
        limiter = RedisRateLimiter(f"redis://127.0.0.1:{port}/0", timeout_s=0.5)
        gate = RateGate(limiter, unavailable=(RateLimitUnavailable,), close=limiter.aclose)
        try:
            await gate.admit(request, limited)
        finally:
            await gate.aclose()

    with pytest.raises(RequestError) as down:
        run(away())
    assert down.value.status == 503 and down.value.code == "rate_limit_unavailable"
    assert down.value.headers == {"retry-after": "1"}


def test_a_request_cancelled_while_redis_decides_leaves_no_hold(url: str) -> None:
    caller = Caller(new_key(), "acme", "p", "r", limits=RateLimits(tpm=1000))
    request = chat_request(50)
    worst = prompt_token_bound(request.messages) + 50

    async def scenario() -> tuple[bool, RateDecision]:
        limiter = RedisRateLimiter(url)
        gate = RateGate(limiter, unavailable=(RateLimitUnavailable,), close=limiter.aclose)
        try:
            await limiter.admit(new_key(), hold(), RateLimits(rpm=1), 0)  # connected
            task = asyncio.get_running_loop().create_task(gate.admit(request, caller))
            await asyncio.sleep(0)  # its script is on the wire, its reply not yet read
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await asyncio.sleep(0.2)  # the reply, then the release it causes
            after = await gate.admit(request, caller)
            assert after is not None
            return task.cancelled(), after.holds[0].decision
        finally:
            await gate.aclose()

    cancelled, after = run(scenario())
    assert cancelled
    assert after.tokens_left == 1000 - worst  # only its own hold: the cancelled one is gone


def test_a_model_quota_holds_an_attempt_gives_its_slot_back_when_full_and_fails_open(
    url: str,
) -> None:
    """``within_quota`` on the real Redis: admitted (the slot keeps a hold that settles to
    the tokens used), refused (the slot is given back, the attempt listed), and with Redis
    unreachable the attempt goes ahead unheld."""
    model = f"quota-{new_key()}"
    entry = local_catalog().entries[0]
    entry = dataclasses.replace(entry, model_id=model, rate_limits=RateLimits(rpm=1, tpm=10_000))
    slots = UpstreamSlots(Concurrency(max_in_flight=2, max_queued=0, max_wait_ms=1000))
    request = chat_request(50)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def scenario() -> tuple[list[Any], list[dict[str, Any]]]:
        results: list[Any] = []
        attempts: list[dict[str, Any]] = []
        for target in (url, url, f"redis://127.0.0.1:{port}/0"):
            limiter = RedisRateLimiter(target, timeout_s=0.5)
            gate = RateGate(limiter, unavailable=(RateLimitUnavailable,), close=limiter.aclose)
            try:
                slot = slots.try_take()
                assert slot is not None
                got = await within_quota(gate, entry, request, slot, attempts)
                results.append((got is slot, slot.quota is not None, slots.snapshot().in_flight))
                if got is not None:
                    got.settle(123)
                    got.release()
            finally:
                await gate.aclose()
        return results, attempts

    results, attempts = run(scenario())
    assert results == [(True, True, 1), (False, False, 0), (True, False, 1)]
    assert len(attempts) == 1 and attempts[0]["skipped"] == "rate_limited"
    assert attempts[0]["limit"] == "requests" and 0 < attempts[0]["retry_after_ms"] <= 60_000
    db = redis.Redis.from_url(url)
    tag = rate_keys(f"model:{model}")
    assert db.zcard(tag[2]) == 0  # the admitted attempt's hold was settled...
    assert int(db.hget(tag[3], "=") or 0) == 123  # ...to the tokens it used
