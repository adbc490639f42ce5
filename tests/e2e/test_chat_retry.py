"""A primary that is not up yet: the gateway tries it again until it answers.

The primary llama-server of this test's own is started only after the request has
reached the gateway: the first tries are refused (nothing listens yet) or answered 503
while the model loads, and a later try is answered by the real model. With no other
candidate (escalation and the SLM tier off), only the retries can answer the request.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime

import httpx
import pytest
import yaml

from somaagent.bootstrap import Container
from somaagent.stack import Supervisor
from tests.conftest import fresh_state, make_settings
from tests.e2e.gateway_support import free_port, open_chat, packaged_catalog, running_gateway
from tests.e2e.test_chat_gateway import client, events_for
from tests.integration.telemetry_support import wait_until


@pytest.fixture()
def late_primary() -> Iterator[Supervisor]:
    """A primary llama-server of this test's own, not started yet (the test starts it)."""
    settings = make_settings("retry", 27400)
    fresh_state(settings)
    supervisor = Supervisor(settings)
    try:
        yield supervisor
    finally:
        supervisor.down()


def test_an_upstream_that_comes_up_late_answers_through_retries(
    late_primary: Supervisor, pipeline: tuple[Container, dict[str, str]]
) -> None:
    worker, env = pipeline
    catalog = packaged_catalog()
    primary = next(m for m in catalog["models"] if m["tier"] == "primary")
    primary["base_url"] = late_primary.settings.url("primary_model_url")
    late_primary.settings.state_dir.mkdir(parents=True, exist_ok=True)
    path = late_primary.settings.state_dir / "catalog.yaml"
    path.write_text(yaml.safe_dump(catalog, sort_keys=False))
    session = f"retry-{uuid.uuid4().hex[:8]}"
    retries = {
        "SOMA_CATALOG_FILE": str(path),
        "SOMA_UPSTREAM_RETRIES": "4",  # 0.25 + 0.5 + 1 + 2 s: under the breaker's 5 failures
        "SOMA_UPSTREAM_RETRY_BACKOFF_MS": "250",
    }
    with running_gateway({**env, **retries}) as gw, client(gw) as sdk:
        starter = threading.Timer(0.1, lambda: late_primary.up(only=["model-primary"]))
        began = time.monotonic()
        starter.start()
        try:
            answer = sdk.chat.completions.with_raw_response.create(  # type: ignore[call-overload]
                model="auto",
                messages=[{"role": "user", "content": "Say hi."}],
                max_tokens=8,
                extra_headers={"X-Soma-Session-Id": session},
            )
        finally:
            starter.join()
        assert answer.headers["x-soma-model"] == primary["model_id"]
        assert answer.parse().choices[0].message.content
        assert time.monotonic() - began < 10

    assert wait_until(
        lambda: any(r["status"] == "ok" for r in events_for(worker, "slm_metrics", session))
    )
    rows = events_for(worker, "slm_metrics", session)
    failed = [r for r in rows if r["status"] == "error"]
    assert failed and len(rows) == len(failed) + 1
    assert all(
        str(r["error_code"]).startswith(("upstream_connect", "upstream_http")) for r in failed
    )
    tree = json.loads(str(rows[-1]["decision_tree"]))
    attempts = tree["attempts"]
    assert [a["model_id"] for a in attempts] == [primary["model_id"]] * len(rows)
    assert all(a.get("retried") is True for a in attempts[:-1]) and attempts[-1]["status"] == "ok"
    assert wait_until(lambda: len(events_for(worker, "conversation_metrics", session)) == 1)
    conv = events_for(worker, "conversation_metrics", session)[0]
    assert int(conv["requeue_count"]) == len(failed)  # type: ignore[call-overload]


def dead_primary() -> dict[str, str]:
    """The only primary at a port where nothing listens, tried 3 more times 2 s apart."""
    return {
        "SOMA_PRIMARY_MODEL_URL": f"http://127.0.0.1:{free_port()}/v1",
        "SOMA_UPSTREAM_RETRIES": "3",
        "SOMA_UPSTREAM_RETRY_BACKOFF_MS": "2000",
    }


def test_a_client_that_leaves_during_the_back_off_ends_the_retries(
    pipeline: tuple[Container, dict[str, str]],
) -> None:
    """The only primary is down and the retries wait 2 s each: a streamed request whose
    client leaves during the first wait is not tried again, and its turn is recorded as
    interrupted at once, with the one failed try (not, seconds later, as failed)."""
    worker, env = pipeline
    session = f"retry-cut-{uuid.uuid4().hex[:8]}"
    dead = dead_primary()
    body = {"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8, "stream": True}
    with running_gateway({**env, **dead}) as gw:
        with open_chat(gw.gateway_port, body, session):
            time.sleep(0.5)  # the first try was refused; the first back-off runs
    assert wait_until(lambda: len(events_for(worker, "conversation_metrics", session)) == 1)
    conv = events_for(worker, "conversation_metrics", session)[0]
    assert conv["status"] == "interrupted" and conv["interrupt_count"] == 1
    assert conv["requeue_count"] == 1  # the refused try, which was to be tried again
    # Each topic has its own batches: the call's event may land after the turn's.
    assert wait_until(lambda: len(events_for(worker, "slm_metrics", session)) == 1)
    rows = events_for(worker, "slm_metrics", session)
    assert [(r["status"], r["error_code"]) for r in rows] == [("error", "upstream_connect")]
    tree = json.loads(str(rows[0]["decision_tree"]))
    assert [a.get("error") for a in tree["attempts"]] == ["connect"]
    # Recorded as the client left, not after the 2 s back-off (let alone all three).
    waited = _at(conv["occurred_at"]) - _at(rows[0]["occurred_at"])
    assert waited.total_seconds() < 1.5


def _at(value: object) -> datetime:
    return datetime.fromisoformat(str(value))


def test_a_non_streamed_call_whose_client_left_is_not_tried_again(
    pipeline: tuple[Container, dict[str, str]],
) -> None:
    """The same dead primary, the call not streamed: its client gives up after half a
    second. The back-off under way runs out, but no further try is made for a client that
    has gone (three were allowed), and the turn is recorded as interrupted, with the one
    refused try."""
    worker, env = pipeline
    session = f"retry-gone-{uuid.uuid4().hex[:8]}"
    dead = dead_primary()
    body = {"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8}
    with running_gateway({**env, **dead}) as gw:
        url = f"http://127.0.0.1:{gw.gateway_port}/v1/chat/completions"
        with pytest.raises(httpx.ReadTimeout):  # the client's own timeout closes the connection
            httpx.post(url, json=body, headers={"X-Soma-Session-Id": session}, timeout=0.5)
        assert wait_until(lambda: len(events_for(worker, "conversation_metrics", session)) == 1)
    conv = events_for(worker, "conversation_metrics", session)[0]
    assert conv["status"] == "interrupted" and conv["interrupt_count"] == 1
    assert conv["requeue_count"] == 1
    # The turn's event left with its calls' events (one publish): they are all there.
    assert wait_until(lambda: len(events_for(worker, "slm_metrics", session)) >= 1)
    rows = events_for(worker, "slm_metrics", session)
    assert [(r["status"], r["error_code"]) for r in rows] == [("error", "upstream_connect")]
