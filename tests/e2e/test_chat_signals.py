"""The primary's explicit ``defer`` signal escalates a call, streamed or not.

The real SmolLM2 server is made to answer ``defer`` by a GBNF grammar in the request
(llama.cpp's constrained decoding: the model's own tokens, limited to that text). The
gateway passes the grammar through, so the escalation model (Qwen2.5-Coder, for the
developer persona) answers under it too: the test is about who was called and what was
recorded, not what the bigger model says.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import httpx
import pytest
from openai import OpenAI

from somaagent.adapters.api_keys import ApiKeyStore
from somaagent.bootstrap import Container
from somaagent.settings import Settings
from tests.e2e.gateway_support import free_port, open_chat, running_gateway
from tests.e2e.test_chat_gateway import client, events_for
from tests.integration.telemetry_support import wait_until

PRIMARY = "smollm2-135m-instruct"
ESCALATION = "qwen2.5-coder-0.5b-instruct"


def ask(session: str, grammar: str) -> dict[str, Any]:
    return {
        "model": "auto",
        "messages": [{"role": "user", "content": "Hello there."}],
        "max_tokens": 8,
        "temperature": 0,
        "extra_body": {"grammar": grammar},
        "extra_headers": {"X-Soma-Session-Id": session},
    }


def developer_key(stack: Settings) -> str:
    keys = ApiKeyStore(stack.secret("postgres_dsn"))
    try:
        return keys.create("acme", "developer", "developer")[1]
    finally:
        keys.close()


def streamed(sdk: OpenAI, kwargs: dict[str, Any]) -> tuple[str, dict[str, str]]:
    with sdk.chat.completions.with_streaming_response.create(stream=True, **kwargs) as raw:
        text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
        return text, dict(raw.headers)


def test_a_defer_answer_escalates_streamed_and_not(
    stack: Settings, pipeline: tuple[Container, dict[str, str]]
) -> None:
    worker, env = pipeline
    key = developer_key(stack)
    session = f"defer-{uuid.uuid4().hex[:8]}"
    with running_gateway({**env, "ESCALATION_ENABLED": "true"}) as gw, client(gw, key) as sdk:
        plain = sdk.chat.completions.with_raw_response.create(**ask(session, 'root ::= "defer"'))
        assert plain.headers["x-soma-model"] == ESCALATION
        assert plain.headers["x-soma-escalated"] == "true"
        assert plain.parse().choices[0].message.content == "defer"
        text, headers = streamed(sdk, ask(session, 'root ::= "defer"'))
        assert headers["x-soma-model"] == ESCALATION and headers["x-soma-escalated"] == "true"
        assert text == "defer"
        # Starts like a signal and is not one: relayed from the primary, unchanged.
        text, headers = streamed(sdk, ask(session, 'root ::= "deferred payment"'))
        assert headers["x-soma-model"] == PRIMARY and text == "deferred payment"

    assert wait_until(lambda: len(events_for(worker, "escalation_metrics", session)) == 2)
    assert wait_until(lambda: len(events_for(worker, "slm_metrics", session)) == 3)
    primary = events_for(worker, "slm_metrics", session)
    assert [(r["status"], r["streamed"]) for r in primary] == [
        ("fallback", False),
        ("fallback", True),
        ("ok", True),
    ]
    assert all(int(r["output_tokens"]) > 0 for r in primary)  # type: ignore[call-overload]
    for row in events_for(worker, "escalation_metrics", session):
        assert row["decision_reason"] == "slm_defer" and row["outcome"] == "success"
        tree = json.loads(str(row["decision_tree"]))
        assert tree["upstream_signal"] == {"model_id": PRIMARY, "signal": "defer"}
        assert [a["model_id"] for a in tree["attempts"]] == [PRIMARY, ESCALATION]
    assert wait_until(lambda: len(events_for(worker, "conversation_metrics", session)) == 3)


def test_when_no_escalation_model_answers_the_primarys_own_answer_is_relayed(
    stack: Settings, pipeline: tuple[Container, dict[str, str]]
) -> None:
    worker, env = pipeline
    key = developer_key(stack)
    session = f"defer-down-{uuid.uuid4().hex[:8]}"
    dead_url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    dead = {"ESCALATION_ENABLED": "true", "SOMA_ESCALATION_MODEL_URL": dead_url}
    with running_gateway({**env, **dead}) as gw, client(gw, key) as sdk:
        plain = sdk.chat.completions.with_raw_response.create(**ask(session, 'root ::= "defer"'))
        assert plain.headers["x-soma-model"] == PRIMARY
        assert plain.parse().choices[0].message.content == "defer"
        text, headers = streamed(sdk, ask(session, 'root ::= "defer"'))
        assert headers["x-soma-model"] == PRIMARY and text == "defer"

    assert wait_until(lambda: len(events_for(worker, "slm_metrics", session)) == 2)
    for row in events_for(worker, "slm_metrics", session):
        assert row["status"] == "ok" and int(row["output_tokens"]) > 0  # type: ignore[call-overload]
        tree = json.loads(str(row["decision_tree"]))
        assert tree["escalation_failed"] is True
        assert tree["upstream_signal"] == {"model_id": PRIMARY, "signal": "defer"}
    # Each attempt at the dead escalation endpoint is an event of its own.
    assert wait_until(lambda: len(events_for(worker, "escalation_metrics", session)) >= 1)
    outcomes = {r["outcome"] for r in events_for(worker, "escalation_metrics", session)}
    assert outcomes == {"error"}
    assert wait_until(lambda: len(events_for(worker, "conversation_metrics", session)) == 2)


DOTS = 900  # within a slot's context (4,096 over 4 slots), several seconds of decoding


def _processing(stack: Settings, tier: str = "primary") -> float:
    """llama-server's own count of requests it is generating for (its ``/metrics``)."""
    text = httpx.get(f"http://127.0.0.1:{stack.port(f'{tier}_model_port')}/metrics").text
    for line in text.splitlines():
        if line.startswith("llamacpp:requests_processing"):
            return float(line.split()[-1])
    raise AssertionError("llama-server reports no requests_processing")


def test_a_client_that_leaves_while_the_head_is_held_cancels_the_upstream(
    stack: Settings, pipeline: tuple[Container, dict[str, str]]
) -> None:
    """With escalation on, an answer of punctuation only could still become a signal, so
    the gateway holds the stream's head back; here it is ``DOTS`` dots (``ignore_eos``). The
    client leaves after a second: the primary's generation stops at once and the dots it
    produced are accounted as an interrupt."""
    worker, env = pipeline
    session = f"head-cut-{uuid.uuid4().hex[:8]}"
    body = {
        "model": PRIMARY,
        "messages": [{"role": "user", "content": "Hello there."}],
        "max_tokens": DOTS,
        "temperature": 0,
        "grammar": "root ::= [.]+",
        "ignore_eos": True,
        "stream": True,
    }
    with running_gateway({**env, "ESCALATION_ENABLED": "true"}) as gw:
        with open_chat(gw.gateway_port, body, session) as sock:
            assert wait_until(lambda: _processing(stack) >= 1, timeout_s=10)
            time.sleep(1.0)
            sock.settimeout(0)
            with pytest.raises(BlockingIOError):
                sock.recv(1)  # nothing of the answer has left yet: its head is held
        left = time.monotonic()
        assert wait_until(lambda: _processing(stack) == 0, timeout_s=10, step_s=0.05)
        stopped_s = time.monotonic() - left
    assert wait_until(lambda: len(events_for(worker, "conversation_metrics", session)) == 1)
    conv = events_for(worker, "conversation_metrics", session)[0]
    assert conv["interrupt_count"] == 1 and conv["status"] == "interrupted"
    assert wait_until(lambda: len(events_for(worker, "slm_metrics", session)) == 1)
    call = events_for(worker, "slm_metrics", session)[0]
    assert call["status"] == "interrupted" and call["streamed"]
    produced = int(call["output_tokens"])  # type: ignore[call-overload]
    assert 0 < produced < DOTS
    tree = json.loads(str(call["decision_tree"]))
    assert tree["attempts"] == [{"model_id": PRIMARY, "status": "interrupted"}]
    # The generation stopped with the client, not at the answer's end: at the rate it
    # produced its dots, the rest would have taken far longer than it took to stop.
    rate = produced / (float(call["latency_ms"]) / 1000)  # type: ignore[arg-type]
    assert stopped_s < (DOTS - produced) / rate


def test_a_client_that_leaves_before_the_escalation_answers_is_accounted_for_both(
    stack: Settings, pipeline: tuple[Container, dict[str, str]]
) -> None:
    """The primary answers ``defer``; the escalation model, given a long prompt, is still
    reading it when the client leaves. The primary's answer is accounted (``fallback``),
    the escalation's attempt as interrupted (its prompt counted), the turn as one
    interrupt after one requeue."""
    worker, env = pipeline
    key = developer_key(stack)
    session = f"defer-cut-{uuid.uuid4().hex[:8]}"
    filler = " ".join(f"item {i} is on the list." for i in range(80))  # ~750 tokens
    body = {
        "model": "auto",
        "messages": [{"role": "user", "content": f"{filler} Hello there."}],
        "max_tokens": 8,
        "temperature": 0,
        "grammar": 'root ::= "defer"',
        "stream": True,
    }
    with running_gateway({**env, "ESCALATION_ENABLED": "true"}) as gw:
        with open_chat(gw.gateway_port, body, session, key) as _sock:
            assert wait_until(lambda: _processing(stack, "escalation") >= 1, 20, 0.02)
    assert wait_until(lambda: len(events_for(worker, "conversation_metrics", session)) == 1)
    conv = events_for(worker, "conversation_metrics", session)[0]
    assert conv["status"] == "interrupted" and conv["interrupt_count"] == 1
    assert conv["requeue_count"] == 1
    assert wait_until(lambda: len(events_for(worker, "escalation_metrics", session)) == 1)
    escalated = events_for(worker, "escalation_metrics", session)[0]
    assert escalated["outcome"] != "success" and escalated["decision_reason"] == "slm_defer"
    assert int(escalated["input_tokens"]) > 500  # type: ignore[call-overload]
    tree = json.loads(str(escalated["decision_tree"]))
    assert tree["attempts"][-1] == {"model_id": ESCALATION, "status": "interrupted"}
    assert wait_until(lambda: len(events_for(worker, "slm_metrics", session)) == 1)
    primary = events_for(worker, "slm_metrics", session)[0]
    assert primary["status"] == "fallback" and int(primary["output_tokens"]) > 0  # type: ignore[call-overload]
