"""The running gateway reports every dependency healthy, with its latency."""

from __future__ import annotations

import httpx

from somaagent.settings import Settings

COMPONENTS = {
    "kafka",
    "redis",
    "postgres",
    "vault",
    "prometheus",
    "alertmanager",
    "model-primary",
    "model-escalation",
    "clickhouse",  # LOCAL: chDB inside the gateway process, owned by the in-process worker
    "spool",  # the publisher's write-ahead spool takes writes
}


def test_healthz_reports_every_component_healthy(stack: Settings) -> None:
    response = httpx.get(f"http://{stack.bind_host}:{stack.gateway_port}/healthz", timeout=15)
    body = response.json()
    assert response.status_code == 200, body
    assert body["status"] == "ok"
    assert set(body["components"]) == COMPONENTS
    for name, component in body["components"].items():
        assert component["healthy"] is True, (name, component)
        assert component["latency_ms"] > 0
        assert component["detail"]


def test_metrics_expose_dependency_health(stack: Settings) -> None:
    base = f"http://{stack.bind_host}:{stack.gateway_port}"
    httpx.get(base + "/healthz", timeout=15)
    text = httpx.get(base + "/metrics", timeout=5).text
    assert 'soma_dependency_up{component="redis"} 1.0' in text
