"""Alerts for real: stop the telemetry worker and TelemetryWorkerDown reaches a webhook."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from somaagent.settings import Settings
from somaagent.stack import Supervisor
from tests.conftest import ROOT, fresh_state, make_settings
from tests.e2e.alert_support import Webhook
from tests.e2e.gateway_support import free_port
from tests.integration.telemetry_support import isolated_env, wait_until


@pytest.fixture()
def receiver() -> Iterator[Webhook]:
    r = Webhook()
    yield r
    r.close()


def test_worker_down_alert_reaches_the_webhook(stack: Settings, receiver: Webhook) -> None:
    metrics_port = free_port()
    # Prometheus + Alertmanager of this test, scraping the worker's /metrics as soma-worker.
    settings = make_settings(
        "alerts", 27600, SOMA_GATEWAY_PORT=str(metrics_port), SOMA_ALERT_WEBHOOK_URL=receiver.url
    )
    fresh_state(settings)
    monitoring = Supervisor(settings)
    monitoring.up(only=["alertmanager", "prometheus"])
    env = {**isolated_env(stack), "SOMA_WORKER_METRICS_PORT": str(metrics_port)}
    worker = subprocess.Popen(
        [sys.executable, "-m", "somaagent.entrypoints.cli", "worker"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        prom = settings.url("prometheus_url")

        def worker_up() -> bool:
            r = httpx.get(f"{prom}/api/v1/query", params={"query": 'up{job="soma-worker"}'})
            result = r.json()["data"]["result"]
            return bool(result) and result[0]["value"][1] == "1"

        assert wait_until(worker_up, timeout_s=60)
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=10)
        stopped = time.monotonic()
        assert wait_until(lambda: bool(receiver.firing("TelemetryWorkerDown")), timeout_s=150)
        waited = time.monotonic() - stopped
        assert waited >= 55  # `for: 1m`: not before a minute of failed scrapes
        alert = receiver.firing("TelemetryWorkerDown")[0]
        assert alert["labels"]["severity"] == "page"
        assert alert["annotations"]["summary"]
        print(json.dumps({"received_after_s": round(waited, 1), "alert": alert}, indent=1))
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(timeout=10)
        monitoring.down()
