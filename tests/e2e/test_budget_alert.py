"""Budget alerts for real: real calls spend a tenant's budget, Prometheus scrapes the
gateway's ``soma_budget_remaining_ratio``, the shipped rules in ``alerts.yml`` fire and
Alertmanager posts them to a webhook.

The gateway runs in ``enforce`` mode on the session stack; the test's own Prometheus and
Alertmanager (rendered by ``soma up``'s code from ``infra/observability``, the production
rule files unchanged) scrape that gateway's port and post to a receiver in the test.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from somaagent.bootstrap import Container
from somaagent.domain.worst_case import prompt_token_bound
from somaagent.settings import Settings
from somaagent.stack import Supervisor
from tests.conftest import fresh_state, make_settings
from tests.e2e.alert_support import Webhook
from tests.e2e.budget_support import create_budget, gateway_url, make_keys, new_tenant
from tests.e2e.gateway_support import running_gateway
from tests.integration.telemetry_support import wait_until

MONITORING_PORT_BASE = 29800  # the test's own Prometheus + Alertmanager
MESSAGES = [{"role": "user", "content": "Count from 1 to 100, separated by commas."}]
MAX_TOKENS = 32
WORST_TOKENS = prompt_token_bound(MESSAGES) + MAX_TOKENS
LIMIT = 8 * WORST_TOKENS
PAYLOAD = {"model": "smollm2-135m-instruct", "messages": MESSAGES, "max_tokens": MAX_TOKENS}
PAYLOAD_FILE = Path("/tmp/budget_alert_payload.json")
EXHAUSTED_PAYLOAD_FILE = Path("/tmp/budget_exhausted_payload.json")


@pytest.fixture()
def webhook() -> Iterator[Webhook]:
    w = Webhook()
    yield w
    w.close()


def ratio_on_gateway(gw: Settings, tenant: str) -> float | None:
    """``soma_budget_remaining_ratio`` of ``tenant``'s tenant-wide daily budget, as exposed."""
    text = httpx.get(gateway_url(gw) + "/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "soma_budget_remaining_ratio" and s.labels == {
                "tenant": tenant,
                "persona": "-",
                "window": "daily",
            }:
                return float(s.value)
    return None


def call(client: httpx.Client, key: str) -> httpx.Response:
    return client.post(
        "/v1/chat/completions", json=PAYLOAD, headers={"Authorization": f"Bearer {key}"}
    )


def alert_of(body: bytes, alertname: str, tenant: str) -> dict[str, Any]:
    (alert,) = [
        a
        for a in json.loads(body)["alerts"]
        if a["labels"]["alertname"] == alertname and a["labels"]["tenant"] == tenant
    ]
    return alert  # type: ignore[no-any-return]


@pytest.fixture()
def monitored_gateway(
    pipeline: tuple[Container, dict[str, str]], webhook: Webhook
) -> Iterator[Settings]:
    """An ``enforce`` gateway that the test's own Prometheus scrapes (up when yielded)."""
    _worker, env = pipeline
    gw_env = {**env, "SOMA_POLICY_MODE": "enforce", "SOMA_BUDGET_CACHE_S": "0.2"}
    with running_gateway(gw_env) as gw:
        settings = make_settings(
            "budget-alert",
            MONITORING_PORT_BASE,
            SOMA_GATEWAY_PORT=str(gw.gateway_port),
            SOMA_ALERT_WEBHOOK_URL=webhook.url,
        )
        fresh_state(settings)
        monitoring = Supervisor(settings)
        monitoring.up(only=["alertmanager", "prometheus"])
        try:
            prom = settings.url("prometheus_url")
            query = f'up{{job="soma-gateway",instance="127.0.0.1:{gw.gateway_port}"}}'

            def scraped() -> bool:
                r = httpx.get(f"{prom}/api/v1/query", params={"query": query}, timeout=10)
                result = r.json()["data"]["result"]
                return bool(result) and result[0]["value"][1] == "1"

            assert wait_until(scraped, timeout_s=60), "Prometheus scrapes this gateway"
            yield gw
        finally:
            monitoring.down()


def received(webhook: Webhook, alertname: str, tenant: str) -> tuple[bytes, dict[str, Any], float]:
    """Wait (bounded) for ``alertname`` firing for ``tenant``: the body, the alert, the wait."""
    since = time.monotonic()

    def firing() -> list[tuple[bytes, dict[str, Any]]]:
        return webhook.firing_bodies(alertname, tenant=tenant)

    assert wait_until(lambda: bool(firing()), timeout_s=120), [
        json.loads(b)["commonLabels"] for b in webhook.bodies
    ]
    waited = time.monotonic() - since
    body = firing()[0][0]  # the first body posted with it
    return body, alert_of(body, alertname, tenant), waited


def test_budget_alerts_reach_the_webhook_with_the_tenant(
    stack: Settings, monitored_gateway: Settings, webhook: Webhook
) -> None:
    gw = monitored_gateway
    tenant = new_tenant("alert")
    operator, user = make_keys(stack, tenant, ("ops", "admin"), ("support", "user"))
    budget = create_budget(
        gw, operator, window="daily", timezone="UTC", limit_tokens=LIMIT, on_exceed="pause"
    )
    used = 0
    with httpx.Client(base_url=gateway_url(gw), timeout=120) as client:
        # every call fits while more than 20% (> 1.6 worst cases) is left
        while 5 * used < 4 * LIMIT:
            r = call(client, user)
            assert r.status_code == 200, r.text
            used += r.json()["usage"]["total_tokens"]
        # the gauge the alert reads: exactly what the calls used, on this gateway
        assert ratio_on_gateway(gw, tenant) == pytest.approx((LIMIT - used) / LIMIT)
        body80, alert, at80_after_s = received(webhook, "BudgetAt80Percent", tenant)
        assert alert["labels"]["persona"] == "-"
        assert alert["labels"]["window"] == "daily"
        assert alert["labels"]["severity"] == "warning"
        assert alert["labels"]["job"] == "soma-gateway"
        summary = alert["annotations"]["summary"]
        assert summary == f"Tenant {tenant} has used 80% of its daily budget"
        PAYLOAD_FILE.write_bytes(body80)

        # spend on until the gateway refuses: the budget holds
        for _ in range(10):
            r = call(client, user)
            if r.status_code != 200:
                break
            used += r.json()["usage"]["total_tokens"]
        assert r.status_code == 429 and r.json()["error"]["code"] == "budget_paused", r.text
        assert used <= LIMIT
        # what is left cannot cover the cheapest call any more: exhausted in practice
        left = ratio_on_gateway(gw, tenant)
        assert left == 0.0
        assert LIMIT - used < WORST_TOKENS
    body100, exhausted, exhausted_after_s = received(webhook, "BudgetExhausted", tenant)
    assert exhausted["labels"]["severity"] == "page"
    assert exhausted["annotations"]["summary"] == f"Tenant {tenant} has exhausted its daily budget"
    EXHAUSTED_PAYLOAD_FILE.write_bytes(body100)
    # the operator raises the limit: calls run again
    with httpx.Client(base_url=gateway_url(gw), timeout=120) as client:
        raised = client.patch(
            f"/v1/budgets/{budget['id']}",
            json={"limit_tokens": 2 * LIMIT},
            headers={"Authorization": f"Bearer {operator}"},
        )
        assert raised.status_code == 200 and raised.json()["limit_tokens"] == 2 * LIMIT
        assert call(client, user).status_code == 200
    print(
        json.dumps(
            {
                "tenant": tenant,
                "limit_tokens": LIMIT,
                "worst_case_tokens_per_call": WORST_TOKENS,
                "used_tokens": used,
                "ratio_left_when_refused": left,
                "budget_at_80_received_after_s": round(at80_after_s, 1),
                "budget_exhausted_received_after_s": round(exhausted_after_s, 1),
            }
        )
    )
    print("BudgetAt80Percent, as Alertmanager posted it:")
    print(body80.decode())
    print("BudgetExhausted, as Alertmanager posted it:")
    print(body100.decode())
