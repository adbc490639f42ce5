"""A tenant's rate limits, shared by all its keys, against the real Redis of the test stack.

Each request counts in its key's scope and its tenant's (``tenant:<tenant>``); one that a
scope refuses is withdrawn from the other. Every scenario has a tenant and keys of its own.
"""

from __future__ import annotations

import asyncio
import secrets

import pytest
import redis

from somaagent.adapters.redis_rate_limit import (
    RateLimitUnavailable,
    RedisRateLimiter,
    rate_keys,
)
from somaagent.domain.chat_request import ChatRequest, RequestError
from somaagent.domain.identity import Caller
from somaagent.domain.rate_limits import RateLimits
from somaagent.service.rate_limits import RateGate, RateHolds
from somaagent.settings import Settings
from tests.integration.test_rate_limits import chat_request


@pytest.fixture(scope="module")
def url(stack: Settings) -> str:
    return stack.url("redis_url")


def callers(n: int, key: RateLimits | None, tenant: RateLimits | None) -> tuple[str, list[Caller]]:
    name = f"t-{secrets.token_hex(6)}"
    return name, [
        Caller(secrets.token_hex(8), name, "p", "r", limits=key, tenant_limits=tenant)
        for _ in range(n)
    ]


def counted(url: str, scope: str) -> tuple[int, int]:
    """(requests in the window, tokens held + settled) of one scope, read from Redis."""
    requests, _, _, amounts = rate_keys(scope)
    client = redis.Redis.from_url(url)
    try:
        settled, held = client.hmget(amounts, "=", "+")
        return client.zcard(requests), int(settled or 0) + int(held or 0)
    finally:
        client.close()


def admit_in_turn(
    url: str, who: list[Caller], request: ChatRequest, count: int
) -> tuple[list[RateHolds | RequestError], list[str]]:
    """``count`` requests, the callers in turn, through one gate; the refusals' labels."""
    refusals: list[str] = []

    async def scenario() -> list[RateHolds | RequestError]:
        limiter = RedisRateLimiter(url)
        gate = RateGate(
            limiter,
            unavailable=(RateLimitUnavailable,),
            on_refused=lambda c, limit: refusals.append(limit),
            close=limiter.aclose,
        )
        out: list[RateHolds | RequestError] = []
        try:
            for i in range(count):
                try:
                    holds = await gate.admit(request, who[i % len(who)])
                    assert holds is not None
                    out.append(holds)
                except RequestError as exc:
                    out.append(exc)
            await asyncio.sleep(0.1)  # the withdrawals, sent in the background
            return out
        finally:
            await gate.aclose()

    return asyncio.run(scenario()), refusals


def test_keys_of_one_tenant_share_its_limit(url: str) -> None:
    tenant, (a, b) = callers(2, RateLimits(rpm=10), RateLimits(rpm=3))
    out, refusals = admit_in_turn(url, [a, b], chat_request(20), 5)
    assert [isinstance(o, RateHolds) for o in out] == [True, True, True, False, False]
    refused = out[3]
    assert isinstance(refused, RequestError) and refused.status == 429
    assert refused.message.startswith(f"rate limit reached for tenant {tenant}: 3 requests")
    assert refused.headers["x-ratelimit-limit-requests"] == "3"
    assert 55_000 <= int(refused.headers["retry-after-ms"]) <= 60_000
    assert refusals == ["tenant_requests", "tenant_requests"]
    # The tenant counted three; each key only what it was admitted for (the refused two
    # were withdrawn from the keys' windows).
    assert counted(url, f"tenant:{tenant}")[0] == 3
    assert counted(url, a.key_id)[0] == 2 and counted(url, b.key_id)[0] == 1


def test_a_request_its_key_refuses_does_not_count_for_the_tenant(url: str) -> None:
    tenant, (a,) = callers(1, RateLimits(rpm=1), RateLimits(rpm=10, tpm=10_000))
    out, refusals = admit_in_turn(url, [a], chat_request(20), 3)
    assert [isinstance(o, RateHolds) for o in out] == [True, False, False]
    refused = out[1]
    assert isinstance(refused, RequestError)
    assert refused.message.startswith("rate limit reached for this API key: 1 requests")
    assert refusals == ["requests", "requests"]
    requests, tokens = counted(url, f"tenant:{tenant}")
    admitted = out[0]
    assert isinstance(admitted, RateHolds)
    worst = 10_000 - (admitted.holds[1].decision.tokens_left or 0)
    assert (requests, tokens) == (1, worst)  # only the admitted one, and only its hold


def test_headers_show_the_tightest_scope_and_a_settle_reaches_both(url: str) -> None:
    tenant, (a,) = callers(1, RateLimits(rpm=10, tpm=5_000), RateLimits(rpm=4, tpm=90_000))
    out, _ = admit_in_turn(url, [a], chat_request(20), 1)
    holds = out[0]
    assert isinstance(holds, RateHolds)
    assert holds.headers["x-ratelimit-limit-requests"] == "4"  # the tenant's: 3 left
    assert holds.headers["x-ratelimit-remaining-requests"] == "3"
    assert holds.headers["x-ratelimit-limit-tokens"] == "5000"  # the key's is tighter
    worst = 5_000 - int(holds.headers["x-ratelimit-remaining-tokens"])

    async def settle() -> None:
        limiter = RedisRateLimiter(url)
        gate = RateGate(limiter, unavailable=(RateLimitUnavailable,), close=limiter.aclose)
        try:
            for hold in holds.holds:
                hold.gate = gate
            holds.settle(7)
            holds.settle(99)  # once
        finally:
            await gate.aclose()

    assert counted(url, a.key_id)[1] == worst and counted(url, f"tenant:{tenant}")[1] == worst
    asyncio.run(settle())
    assert counted(url, a.key_id) == (1, 7) and counted(url, f"tenant:{tenant}") == (1, 7)


def test_a_request_too_large_for_the_tenant_is_a_400_naming_it(url: str) -> None:
    tenant, (a,) = callers(1, RateLimits(rpm=10), RateLimits(tpm=50))
    out, refusals = admit_in_turn(url, [a], chat_request(200), 1)
    refused = out[0]
    assert isinstance(refused, RequestError) and refused.status == 400
    assert refused.code == "request_too_large"
    assert f"more than tenant {tenant}'s limit of 50 tokens per minute" in refused.message
    assert refusals == ["tenant_too_large"]
    assert counted(url, a.key_id)[0] == 0  # withdrawn from the key's window
