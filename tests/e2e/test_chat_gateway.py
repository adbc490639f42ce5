"""The gateway through the official openai SDK, against the real llama.cpp servers."""

from __future__ import annotations

import json
import re
import time
import uuid

import httpx
import openai
import pytest
from openai import OpenAI

from somaagent.adapters.api_keys import ApiKeyStore
from somaagent.bootstrap import Container
from somaagent.settings import Settings
from tests.e2e.gateway_support import running_gateway
from tests.integration.telemetry_support import wait_until

COMPLEX = (
    "Step by step, analyze and refactor this architecture: design a multi-step migration plan, "
    "prove each step is safe, and explain the trade-offs.\n```python\n"
    + "\n".join(f"def f{i}(x):\n    return x * {i}" for i in range(20))
    + "\n```\nWhat are the risks? Which step first? How do we roll back? Why?"
)


def client(settings: Settings, key: str = "local") -> OpenAI:
    return OpenAI(
        base_url=f"http://127.0.0.1:{settings.gateway_port}/v1",
        api_key=key,
        timeout=120,
        max_retries=0,
    )


def events_for(worker: Container, table: str, session: str) -> list[dict[str, object]]:
    assert worker.worker is not None
    store = worker.worker.store
    return store.query(
        f"SELECT * FROM {store.database}.{table} WHERE session_id = '{session}'"
        " ORDER BY occurred_at SETTINGS output_format_json_quote_64bit_integers=0,"
        " output_format_json_quote_decimals=1"
    )


def test_non_streaming_and_streaming_record_the_same_tokens(
    pipeline: tuple[Container, dict[str, str]],
) -> None:
    worker, env = pipeline
    session = f"e2e-{uuid.uuid4().hex[:8]}"
    with running_gateway(env) as gw, client(gw) as sdk:
        kwargs = dict(
            model="smollm2-135m-instruct",
            messages=[
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Name three colours."},
            ],
            max_tokens=24,
            temperature=0,
            seed=7,
            extra_headers={"X-Soma-Session-Id": session},
        )
        raw = sdk.chat.completions.with_raw_response.create(**kwargs)  # type: ignore[call-overload]
        reply = raw.parse()
        assert reply.choices[0].message.content
        assert raw.headers["x-soma-model"] == "smollm2-135m-instruct"
        assert raw.headers["x-soma-tier"] == "primary"
        assert raw.headers["x-soma-escalated"] == "false"
        assert float(raw.headers["x-soma-cost"]) > 0
        request_id = raw.headers["x-request-id"]  # the SDK's ``_request_id``: the events' span
        assert re.fullmatch(r"req_[0-9a-f]{16}", request_id) and reply._request_id == request_id
        chunks = list(
            sdk.chat.completions.create(  # type: ignore[call-overload]
                stream=True, stream_options={"include_usage": True}, **kwargs
            )
        )
        usage = chunks[-1].usage
        assert usage is not None and not chunks[-1].choices
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == reply.choices[0].message.content
        assert reply.usage is not None
        assert (usage.prompt_tokens, usage.completion_tokens) == (
            reply.usage.prompt_tokens,
            reply.usage.completion_tokens,
        )
        with sdk.chat.completions.with_streaming_response.create(stream=True, **kwargs) as live:  # type: ignore[call-overload]
            plain = list(live.parse())
            streamed_id = live.headers["x-request-id"]
        assert all(c.usage is None for c in plain)
        assert streamed_id.startswith("req_") and streamed_id != request_id

    assert wait_until(lambda: len(events_for(worker, "slm_metrics", session)) == 3)
    rows = events_for(worker, "slm_metrics", session)
    assert {(r["input_tokens"], r["output_tokens"]) for r in rows} == {
        (reply.usage.prompt_tokens, reply.usage.completion_tokens)
    }
    assert [r["streamed"] for r in rows] == [False, True, True]
    assert rows[0]["span_id"] == request_id.removeprefix("req_")
    assert rows[2]["span_id"] == streamed_id.removeprefix("req_")
    for r in rows:
        tree = json.loads(str(r["decision_tree"]))
        assert tree["attempts"][0]["status"] == "ok"
        assert r["status"] == "ok" and r["gpu_ms"] > 0 and r["prompt_hash"]
    assert wait_until(lambda: len(events_for(worker, "conversation_metrics", session)) == 3)


def test_escalation_by_flag_and_persona(
    stack: Settings, pipeline: tuple[Container, dict[str, str]]
) -> None:
    _worker, env = pipeline
    keys = ApiKeyStore(stack.secret("postgres_dsn"))
    _id, dev_key = keys.create("acme", "developer", "developer")
    _id, support_key = keys.create("acme", "support", "user")
    keys.close()
    ask = dict(
        model="auto", messages=[{"role": "user", "content": COMPLEX}], max_tokens=8, temperature=0.7
    )
    with (
        running_gateway({**env, "ESCALATION_ENABLED": "true"}) as gw,
        client(gw, dev_key) as dev_sdk,
        client(gw, support_key) as support_sdk,
    ):
        dev = dev_sdk.chat.completions.with_raw_response.create(**ask)  # type: ignore[call-overload]
        assert dev.headers["x-soma-model"] == "qwen2.5-coder-0.5b-instruct"
        assert dev.headers["x-soma-escalated"] == "true"
        support = support_sdk.chat.completions.with_raw_response.create(**ask)  # type: ignore[call-overload]
        assert support.headers["x-soma-model"] == "smollm2-135m-instruct"
        models = {m.id for m in support_sdk.models.list()}
        assert "qwen2.5-coder-0.5b-instruct" not in models
        # models.retrieve: a model the persona may not use does not exist for it.
        coder = dev_sdk.models.retrieve("qwen2.5-coder-0.5b-instruct")
        assert coder.id == "qwen2.5-coder-0.5b-instruct" and coder.object == "model"
        with pytest.raises(openai.NotFoundError) as hidden:
            support_sdk.models.retrieve("qwen2.5-coder-0.5b-instruct")
        assert hidden.value.code == "model_not_found"
        assert "does not exist" in hidden.value.message
    with running_gateway(env) as gw, client(gw, dev_key) as dev_sdk:  # no ESCALATION_ENABLED
        off = dev_sdk.chat.completions.with_raw_response.create(**ask)  # type: ignore[call-overload]
        assert off.headers["x-soma-model"] == "smollm2-135m-instruct"


def test_client_disconnect_is_recorded_as_an_interrupt(
    pipeline: tuple[Container, dict[str, str]],
) -> None:
    worker, env = pipeline
    session = f"cut-{uuid.uuid4().hex[:8]}"
    with running_gateway(env) as gw:
        url = f"http://127.0.0.1:{gw.gateway_port}/v1/chat/completions"
        body = {
            "messages": [{"role": "user", "content": "Count from 1 to 200."}],
            "max_tokens": 200,
            "stream": True,
        }
        with httpx.stream(
            "POST", url, json=body, headers={"X-Soma-Session-Id": session}, timeout=60
        ) as response:
            seen = 0
            for line in response.iter_lines():
                if line.startswith("data: {"):
                    seen += 1
                if seen >= 3:
                    break  # leave mid-stream: the connection is closed
        time.sleep(1)
    assert wait_until(lambda: len(events_for(worker, "conversation_metrics", session)) == 1)
    conv = events_for(worker, "conversation_metrics", session)[0]
    assert conv["interrupt_count"] == 1 and conv["status"] == "interrupted"
    assert wait_until(lambda: len(events_for(worker, "slm_metrics", session)) == 1)
    call = events_for(worker, "slm_metrics", session)[0]
    assert call["status"] == "interrupted"
    assert 0 < int(call["output_tokens"]) < 200  # type: ignore[call-overload]


def test_bad_requests_get_openai_style_4xx(stack: Settings) -> None:
    url = f"http://127.0.0.1:{stack.gateway_port}/v1/chat/completions"
    msg = [{"role": "user", "content": "hi"}]
    cases = [
        (b"{broken", "application/json", 400, "not valid JSON"),
        (json.dumps({"model": "nope", "messages": msg}).encode(), "application/json", 404, "nope"),
        (json.dumps({"messages": []}).encode(), "application/json", 400, "at least one"),
        (
            json.dumps({"messages": msg, "max_tokens": -3}).encode(),
            "application/json",
            400,
            "at least 1",
        ),
        (
            json.dumps({"messages": msg, "max_tokens": 10**9}).encode(),
            "application/json",
            400,
            "at most",
        ),
        (json.dumps({"messages": msg}).encode(), "text/plain", 415, "content-type"),
        (b'{"messages": [], "pad": "' + b"x" * (2 << 20) + b'"}', "application/json", 413, "over"),
    ]
    for body, ctype, status, needle in cases:
        r = httpx.post(url, content=body, headers={"content-type": ctype}, timeout=30)
        assert r.status_code == status, (needle, r.text[:200])
        err = r.json()["error"]
        assert needle in err["message"] and err["type"]
    bad_key = httpx.post(
        url, json={"messages": msg}, headers={"authorization": "Bearer sk-soma-nope-nope"}
    )
    assert bad_key.status_code == 401
