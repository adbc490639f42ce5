"""``GET /v1/telemetry/tokens`` through a gateway with its own telemetry worker.

A module of its own: the gateway's worker opens its own chDB path, and chDB allows one per
process at a time (the other e2e modules hold the ``pipeline`` fixture's).
"""

from __future__ import annotations

from decimal import Decimal

import httpx

from somaagent.settings import Settings
from tests.e2e.budget_support import gateway_url, make_keys, new_tenant
from tests.e2e.gateway_support import running_gateway
from tests.e2e.test_budgets_gateway import PAYLOAD
from tests.integration.telemetry_support import isolated_env, wait_until


def test_token_usage_api_sums_the_tenants_calls(stack: Settings) -> None:
    """``GET /v1/telemetry/tokens`` from the hourly aggregates of a gateway's own worker."""
    tenant = new_tenant("tok")
    (key,) = make_keys(stack, tenant, ("support", "user"))
    env = isolated_env(stack, SOMA_POLICY_MODE="enforce")
    with running_gateway(env, worker=True) as gw:
        answers = [
            httpx.post(
                gateway_url(gw) + "/v1/chat/completions",
                json=PAYLOAD,
                headers={"Authorization": f"Bearer {key}"},
                timeout=120,
            ).json()
            for _ in range(3)
        ]
        expected = sum(a["usage"]["total_tokens"] for a in answers)

        def report() -> dict[str, object]:
            r = httpx.get(
                gateway_url(gw) + "/v1/telemetry/tokens?group_by=model,persona",
                headers={"Authorization": f"Bearer {key}"},
                timeout=30,
            )
            assert r.status_code == 200, r.text
            body: dict[str, object] = r.json()
            return body

        assert wait_until(lambda: (report()["totals"] or {})["calls"] == 3, timeout_s=60)  # type: ignore[index]
        body = report()
        assert body["tenant"] == tenant
        totals = body["totals"]
        assert isinstance(totals, dict) and totals["total_tokens"] == expected
        assert Decimal(totals["cost_usd"]) > 0
        assert body["data"] == [{"model": "smollm2-135m-instruct", "persona": "support", **totals}]
