"""Prompts too long for a model's context window, against the real llama.cpp servers: a clear
400 when no model can take them, the next model with a larger window when one can, and the
upstream's circuit never opened by them."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from somaagent.bootstrap import Container
from somaagent.settings import Settings
from somaagent.stack import Supervisor
from tests.conftest import private_stack
from tests.e2e.gateway_support import PRIMARY, REPLICA, catalog_with_replica, running_gateway
from tests.e2e.test_chat_gateway import client, events_for
from tests.e2e.test_chat_signals import developer_key, streamed
from tests.integration.telemetry_support import wait_until


def asking(session: str, words: int, **extra: Any) -> dict[str, Any]:
    return {
        "model": "auto",
        "messages": [{"role": "user", "content": "word " * words + "Say hi."}],
        "max_tokens": 4,
        "temperature": 0,
        "extra_headers": {"X-Soma-Session-Id": session},
        **extra,
    }


def test_too_long_for_every_model_is_a_400_and_never_opens_the_circuit(
    pipeline: tuple[Container, dict[str, str]],
) -> None:
    worker, env = pipeline
    session = f"ctx-{uuid.uuid4().hex[:8]}"
    with running_gateway(env) as gw, client(gw) as sdk:
        for n in range(7):  # the breaker opens after 5 consecutive failures
            with pytest.raises(openai.BadRequestError) as refused:
                if n % 2:
                    sdk.chat.completions.create(**asking(session, 9000), stream=True)
                else:
                    sdk.chat.completions.create(**asking(session, 9000))
            error = refused.value.response.json()["error"]
            assert (error["code"], error["param"]) == ("context_length_exceeded", "messages")
            assert f"context window of {PRIMARY} (8192 tokens)" in error["message"]
        answered = sdk.chat.completions.with_raw_response.create(**asking(session, 5))
        assert answered.headers["x-soma-model"] == PRIMARY  # its circuit is still closed
    assert wait_until(lambda: len(events_for(worker, "slm_metrics", session)) == 8)
    rows = events_for(worker, "slm_metrics", session)
    assert [r["status"] for r in rows] == ["error"] * 7 + ["ok"]
    assert all(str(r["error_code"]).startswith("upstream_http") for r in rows[:7])


@pytest.fixture()
def small_primary() -> Iterator[Supervisor]:
    """A primary llama-server of this test's own that serves a 512-token window."""
    with private_stack("context", 27500, ["model-primary"], SOMA_MODEL_CONTEXT="512") as sup:
        yield sup


def test_too_long_for_one_model_goes_to_one_with_a_larger_window(
    stack: Settings, small_primary: Supervisor, pipeline: tuple[Container, dict[str, str]]
) -> None:
    worker, env = pipeline
    path = small_primary.settings.state_dir / "catalog.yaml"
    url = small_primary.settings.url("primary_model_url")
    catalog_with_replica(stack, path, url, context_window=512)
    session = f"ctx-fb-{uuid.uuid4().hex[:8]}"
    with running_gateway({**env, "SOMA_CATALOG_FILE": str(path)}) as gw, client(gw) as sdk:
        short = sdk.chat.completions.with_raw_response.create(**asking(session, 5))
        assert short.headers["x-soma-model"] == PRIMARY
        long = sdk.chat.completions.with_raw_response.create(**asking(session, 700))
        assert long.headers["x-soma-model"] == REPLICA
        assert long.parse().choices[0].finish_reason in ("stop", "length")
        with sdk.chat.completions.with_streaming_response.create(
            **asking(session, 700), stream=True
        ) as streamed:
            assert streamed.headers["x-soma-model"] == REPLICA
            finishes = [c.choices[0].finish_reason for c in streamed.parse() if c.choices]
            assert finishes[-1] in ("stop", "length")
    assert wait_until(lambda: len(events_for(worker, "slm_metrics", session)) == 5)
    rows = events_for(worker, "slm_metrics", session)
    assert [(r["model_id"], r["status"]) for r in rows] == [
        (PRIMARY, "ok"),
        (PRIMARY, "error"),
        (REPLICA, "ok"),
        (PRIMARY, "error"),
        (REPLICA, "ok"),
    ]
    for answered in (rows[2], rows[4]):
        tree = json.loads(str(answered["decision_tree"]))
        assert [a["model_id"] for a in tree["attempts"]] == [PRIMARY, REPLICA]
        assert tree["attempts"][0]["status"] == 400


@pytest.fixture()
def small_escalation() -> Iterator[Supervisor]:
    """An escalation llama-server of this test's own that serves a 512-token window."""
    with private_stack("context-esc", 27600, ["model-escalation"], SOMA_MODEL_CONTEXT="512") as s:
        yield s


def test_a_deferred_answer_is_relayed_when_the_escalation_model_refuses_the_request(
    stack: Settings, small_escalation: Supervisor, pipeline: tuple[Container, dict[str, str]]
) -> None:
    worker, env = pipeline
    session = f"ctx-defer-{uuid.uuid4().hex[:8]}"
    small = {
        "ESCALATION_ENABLED": "true",
        "SOMA_ESCALATION_MODEL_URL": small_escalation.settings.url("escalation_model_url"),
    }
    defer = asking(session, 700, extra_body={"grammar": 'root ::= "defer"'})
    with running_gateway({**env, **small}) as gw, client(gw, developer_key(stack)) as sdk:
        plain = sdk.chat.completions.with_raw_response.create(**defer)
        assert plain.headers["x-soma-model"] == PRIMARY
        assert plain.parse().choices[0].message.content == "defer"
        text, headers = streamed(sdk, defer)
        assert (headers["x-soma-model"], text) == (PRIMARY, "defer")
    assert wait_until(lambda: len(events_for(worker, "escalation_metrics", session)) == 2)
    assert {r["outcome"] for r in events_for(worker, "escalation_metrics", session)} == {"error"}
    assert wait_until(lambda: len(events_for(worker, "slm_metrics", session)) == 2)
    for row in events_for(worker, "slm_metrics", session):
        tree = json.loads(str(row["decision_tree"]))
        assert tree["escalation_failed"] is True
        assert [a.get("status") for a in tree["attempts"]] == ["ok", 400]
