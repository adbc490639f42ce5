"""Budgets that hold, through the gateway, against the real models, Redis, Postgres and OPA.

Every test runs a gateway in ``enforce`` mode (the ENTERPRISE behaviour) on the session
stack; each uses its own tenant so budgets and counters never meet.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal

import httpx
import pytest
import redis

from somaagent.bootstrap import Container
from somaagent.domain.budgets import reservations_key
from somaagent.domain.worst_case import prompt_token_bound
from somaagent.settings import Settings
from somaagent.stack import Supervisor
from tests.e2e.budget_support import (
    charged,
    concurrent_calls,
    create_budget,
    gateway_url,
    make_keys,
    new_tenant,
)
from tests.e2e.gateway_support import running_gateway
from tests.integration.telemetry_support import wait_until

MESSAGES = [{"role": "user", "content": "Say hi."}]
MAX_TOKENS = 8
WORST_TOKENS = prompt_token_bound(MESSAGES) + MAX_TOKENS
PAYLOAD = {
    "model": "smollm2-135m-instruct",
    "messages": MESSAGES,
    "max_tokens": MAX_TOKENS,
    "temperature": 0,
}


def enforce(env: dict[str, str]) -> dict[str, str]:
    return {**env, "SOMA_POLICY_MODE": "enforce", "SOMA_BUDGET_CACHE_S": "0.2"}


def summary(gw: Settings, key: str) -> dict[str, object]:
    r = httpx.get(
        gateway_url(gw) + "/v1/budget/summary",
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    body: dict[str, object] = r.json()
    return body


def check_no_overspend(stack: Settings, tenant: str, limit: int, ok: list[dict]) -> int:  # type: ignore[type-arg]
    used = sum(b["usage"]["total_tokens"] for b in ok)
    # the gateway writes charges in batches every ~50 ms
    assert wait_until(lambda: charged(stack, tenant)[2] >= len(ok), timeout_s=10)
    tokens, _usd, rows = charged(stack, tenant)
    assert rows == len(ok), "every answered call is one charge in the Postgres ledger"
    assert tokens == used, "the ledger holds exactly the tokens the calls used"
    assert used <= limit, f"overspend: {used} tokens against a limit of {limit}"
    for b in ok:  # the reservation bound held for every real prompt
        assert b["usage"]["prompt_tokens"] <= prompt_token_bound(MESSAGES)
    return used


def test_200_concurrent_requests_never_overspend(
    stack: Settings, pipeline: tuple[Container, dict[str, str]]
) -> None:
    _worker, env = pipeline
    tenant = new_tenant("conc")
    operator, user = make_keys(stack, tenant, ("ops", "admin"), ("support", "user"))
    limit = 20 * WORST_TOKENS
    with running_gateway(enforce(env)) as gw:
        create_budget(
            gw,
            operator,
            window="daily",
            timezone="Europe/Paris",
            limit_tokens=limit,
            on_exceed="pause",
        )
        result = asyncio.run(concurrent_calls(gw, user, PAYLOAD, 200))
        unexpected = [
            (s, b)
            for s, b in zip(result.statuses, result.bodies, strict=True)
            if s not in (200, 429)
        ]
        assert not unexpected, unexpected[:3]
        refused = [b for s, b in zip(result.statuses, result.bodies, strict=True) if s == 429]
        assert refused, "a budget that fits about 20 calls must refuse some of 200"
        assert {b["error"]["code"] for b in refused} <= {"budget_paused", "budget_exceeded"}
        assert any(b["error"]["code"] == "budget_paused" for b in refused)
        used = check_no_overspend(stack, tenant, limit, result.ok())
        assert len(result.ok()) >= 20
        data = summary(gw, user)["data"]
        assert isinstance(data, list) and len(data) == 1
        assert data[0]["spent"]["tokens"] == used
        assert data[0]["reserved"]["tokens"] == 0


def test_redis_flushed_and_restarted_mid_run_still_no_overspend(
    stack: Settings, stack_supervisor: Supervisor, pipeline: tuple[Container, dict[str, str]]
) -> None:
    _worker, env = pipeline
    tenant = new_tenant("flush")
    operator, user = make_keys(stack, tenant, ("ops", "admin"), ("support", "user"))
    limit = 20 * WORST_TOKENS
    supervisor = stack_supervisor

    async def flush_and_restart() -> None:
        def work() -> None:
            r = redis.Redis.from_url(stack.url("redis_url"))
            r.flushall()
            r.close()
            supervisor.down(only=["redis"])
            supervisor.up(only=["redis"])

        await asyncio.to_thread(work)

    with running_gateway(enforce(env)) as gw:
        create_budget(
            gw,
            operator,
            window="monthly",
            timezone="America/New_York",
            limit_tokens=limit,
            on_exceed="deny",
        )
        result = asyncio.run(
            concurrent_calls(gw, user, PAYLOAD, 200, midway=flush_and_restart, midway_after=5)
        )
        assert set(result.statuses) <= {200, 403, 429, 503}, set(result.statuses)
        check_no_overspend(stack, tenant, limit, result.ok())
        # after the run the rebuilt counter equals the exact ledger
        tokens, _usd, _rows = charged(stack, tenant)
        data = summary(gw, user)["data"]
        assert isinstance(data, list)
        assert data[0]["spent"]["tokens"] == tokens
        # and the budget keeps holding: more calls cannot push it over
        more = asyncio.run(concurrent_calls(gw, user, PAYLOAD, 40))
        check_no_overspend(stack, tenant, limit, result.ok() + more.ok())


def test_a_wide_budget_funds_calls_from_allotments_and_ends_exact(
    stack: Settings, pipeline: tuple[Container, dict[str, str]]
) -> None:
    """A budget whose 1/16 holds many calls: the gateway holds allotments in Redis, no
    call its own reservation; once they close, the counter is the ledger, to the token."""
    _worker, env = pipeline
    tenant = new_tenant("allot")
    operator, user = make_keys(stack, tenant, ("ops", "admin"), ("support", "user"))
    r = redis.Redis.from_url(stack.url("redis_url"), decode_responses=True)
    held: list[list[str]] = []

    async def look() -> None:  # while the other calls are in flight
        held.append(await asyncio.to_thread(r.zrange, reservations_key(tenant), 0, -1))

    with running_gateway(enforce(env)) as gw:
        budget = create_budget(
            gw,
            operator,
            window="daily",
            timezone="UTC",
            limit_tokens=16 * 64 * WORST_TOKENS,
            on_exceed="deny",
        )
        result = asyncio.run(concurrent_calls(gw, user, PAYLOAD, 12, midway=look, midway_after=1))
        assert result.statuses == [200] * 12
        assert held and held[0] and all(rid.startswith("allot:") for rid in held[0]), held
        (counter,) = r.keys(f"soma:{{{tenant}}}:bud:{budget['id']}:*")
        used = sum(b["usage"]["total_tokens"] for b in result.ok())
        # Closed 0.5 s after opening (the setting's default): spent is then exact.
        assert wait_until(lambda: r.hget(counter, "rt") == "0", timeout_s=10)
        assert wait_until(lambda: charged(stack, tenant)[2] == 12, timeout_s=10)
        assert int(r.hget(counter, "st") or -1) == used == charged(stack, tenant)[0]
        assert r.zcard(reservations_key(tenant)) == 0
    r.close()


@pytest.mark.parametrize("on_exceed", ["pause", "deny"])
def test_exhausted_budget_verdicts(
    stack: Settings, pipeline: tuple[Container, dict[str, str]], on_exceed: str
) -> None:
    _worker, env = pipeline
    tenant = new_tenant(on_exceed)
    operator, user = make_keys(stack, tenant, ("ops", "admin"), ("support", "user"))
    with running_gateway(enforce(env)) as gw:
        create_budget(
            gw,
            operator,
            persona="support",
            window="daily",
            timezone="UTC",
            limit_tokens=WORST_TOKENS - 1,
            on_exceed=on_exceed,
        )
        r = httpx.post(
            gateway_url(gw) + "/v1/chat/completions",
            json=PAYLOAD,
            headers={"Authorization": f"Bearer {user}"},
            timeout=60,
        )
        error = r.json()["error"]
        if on_exceed == "pause":
            assert r.status_code == 429 and error["code"] == "budget_paused"
            assert int(r.headers["retry-after"]) >= 1
        else:
            assert r.status_code == 403 and error["code"] == "policy_denied"
        assert f"tokens worst case {WORST_TOKENS}" in error["message"]
        # the operator, another persona, has no persona budget: allowed
        ok = httpx.post(
            gateway_url(gw) + "/v1/chat/completions",
            json=PAYLOAD,
            headers={"Authorization": f"Bearer {operator}"},
            timeout=60,
        )
        assert ok.status_code == 200, ok.text
        assert ok.headers["x-soma-policy-verdict"] == "allow"


def test_tenant_cannot_read_another_tenants_figures(
    stack: Settings, pipeline: tuple[Container, dict[str, str]]
) -> None:
    _worker, env = pipeline
    a, b = new_tenant("ta"), new_tenant("tb")
    (key_a,) = make_keys(stack, a, ("ops", "admin"))
    (key_b,) = make_keys(stack, b, ("ops", "admin"))
    with running_gateway(enforce(env)) as gw:
        budget_b = create_budget(gw, key_b, window="daily", timezone="UTC", limit_usd="1.00")
        url = gateway_url(gw)
        auth = {"Authorization": f"Bearer {key_a}"}
        for path in (
            f"/v1/budget/summary?tenant={b}",
            f"/v1/telemetry/tokens?tenant={b}",
            f"/v1/budgets?tenant={b}",
            f"/v1/approvals?tenant={b}",
        ):
            r = httpx.get(url + path, headers=auth, timeout=30)
            assert r.status_code == 403, (path, r.text)
            assert b in r.json()["error"]["message"]
        r = httpx.get(url + f"/v1/budgets/{budget_b['id']}", headers=auth, timeout=30)
        assert r.status_code == 404
        r = httpx.delete(url + f"/v1/budgets/{budget_b['id']}", headers=auth, timeout=30)
        assert r.status_code == 404
        own = httpx.get(url + "/v1/budget/summary", headers=auth, timeout=30)
        assert own.status_code == 200 and own.json()["data"] == []


def test_bad_budgets_are_400_and_nothing_is_written(
    stack: Settings, pipeline: tuple[Container, dict[str, str]]
) -> None:
    _worker, env = pipeline
    tenant = new_tenant("bad")
    operator, user = make_keys(stack, tenant, ("ops", "admin"), ("support", "user"))
    with running_gateway(enforce(env)) as gw:
        url = gateway_url(gw) + "/v1/budgets"
        auth = {"Authorization": f"Bearer {operator}"}
        cases = [
            ({"window": "daily", "timezone": "UTC", "limit_usd": "-1"}, "limit_usd"),
            ({"window": "daily", "timezone": "UTC"}, "limit"),
            ({"window": "daily", "timezone": "Mars/Olympus", "limit_tokens": 5}, "Mars/Olympus"),
            ({"window": "weekly", "timezone": "UTC", "limit_tokens": 5}, "window"),
            ({"window": "daily", "timezone": "UTC", "limit_usd": 0.1}, "decimal string"),
        ]
        for body, fragment in cases:
            r = httpx.post(url, json=body, headers=auth, timeout=30)
            assert r.status_code == 400, (body, r.text)
            assert fragment in r.json()["error"]["message"], r.text
        listed = httpx.get(url, headers=auth, timeout=30).json()["data"]
        assert listed == []
        r = httpx.post(
            url,
            json={"window": "daily", "timezone": "UTC", "limit_tokens": 5},
            headers={"Authorization": f"Bearer {user}"},
            timeout=30,
        )
        assert r.status_code == 403, "a user key cannot create budgets"
        assert Decimal(0) == charged(stack, tenant)[1]
