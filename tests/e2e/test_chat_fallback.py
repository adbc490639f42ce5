"""Fallback: the primary upstream is stopped mid-test and the next candidate answers."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest

from somaagent.bootstrap import Container
from somaagent.settings import Settings
from somaagent.stack import Supervisor
from tests.conftest import private_stack
from tests.e2e.gateway_support import catalog_with_replica, running_gateway
from tests.e2e.test_chat_gateway import client, events_for
from tests.integration.telemetry_support import wait_until


@pytest.fixture()
def own_primary() -> Iterator[Supervisor]:
    """A primary llama-server of this test's own, which it may stop."""
    with private_stack("fallback", 27300, ["model-primary"]) as supervisor:
        yield supervisor


def test_primary_stopped_mid_test_falls_back_to_the_replica(
    stack: Settings, own_primary: Supervisor, pipeline: tuple[Container, dict[str, str]]
) -> None:
    worker, env = pipeline
    path = own_primary.settings.state_dir / "catalog.yaml"
    catalog_with_replica(stack, path, own_primary.settings.url("primary_model_url"))
    session = f"fb-{uuid.uuid4().hex[:8]}"
    ask = dict(
        model="auto",
        messages=[{"role": "user", "content": "Say hi."}],
        max_tokens=8,
        extra_headers={"X-Soma-Session-Id": session},
    )
    with running_gateway({**env, "SOMA_CATALOG_FILE": str(path)}) as gw, client(gw) as sdk:
        first = sdk.chat.completions.with_raw_response.create(**ask)  # type: ignore[call-overload]
        assert first.headers["x-soma-model"] == "smollm2-135m-instruct"
        own_primary.down(only=["model-primary"])
        second = sdk.chat.completions.with_raw_response.create(**ask)  # type: ignore[call-overload]
        assert second.headers["x-soma-model"] == "smollm2-135m-instruct-replica"
        assert second.parse().choices[0].message.content

    # The stopped primary is tried once more (SOMA_UPSTREAM_RETRIES, default 1), then the
    # replica answers.
    assert wait_until(lambda: len(events_for(worker, "slm_metrics", session)) == 4)
    rows = events_for(worker, "slm_metrics", session)
    assert [r["status"] for r in rows].count("error") == 2
    for failed in (r for r in rows if r["status"] == "error"):
        assert failed["model_id"] == "smollm2-135m-instruct"
        assert str(failed["error_code"]).startswith("upstream_connect")
    answered = rows[-1]
    tree = json.loads(str(answered["decision_tree"]))
    assert [a.get("status") or a.get("error") for a in tree["attempts"]] == [
        "connect",
        "connect",
        "ok",
    ]
    assert [a.get("retried", False) for a in tree["attempts"]] == [True, False, False]
    conv = events_for(worker, "conversation_metrics", session)
    assert wait_until(lambda: len(events_for(worker, "conversation_metrics", session)) == 2)
    conv = events_for(worker, "conversation_metrics", session)
    assert sorted(int(c["requeue_count"]) for c in conv) == [0, 2]  # type: ignore[call-overload]
