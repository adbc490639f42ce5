"""API keys' and tenants' rate limits through two gateway replicas sharing one Redis,
against the real llama.cpp servers: the limits hold across the replicas exactly, a refusal
is an OpenAI 429 the SDKs understand, and the tokens limit counts what the calls really
used."""

from __future__ import annotations

import json
import re
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
import redis

from somaagent.adapters.api_keys import ApiKeyStore
from somaagent.adapters.redis_rate_limit import rate_keys
from somaagent.adapters.tenant_limits import TenantLimitStore
from somaagent.bootstrap import Container
from somaagent.domain.worst_case import prompt_token_bound
from somaagent.settings import Settings
from tests.e2e.gateway_support import running_gateway
from tests.e2e.test_chat_gateway import client, events_for
from tests.integration.telemetry_support import wait_until

MESSAGES = [{"role": "user", "content": "Say yes."}]


def ask(port: int, key: str, session: str, max_tokens: int = 2) -> httpx.Response:
    return httpx.post(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        json={"model": "smollm2-135m-instruct", "messages": MESSAGES, "max_tokens": max_tokens,
              "temperature": 0},
        headers={"authorization": f"Bearer {key}", "x-soma-session-id": session},
        timeout=120,
    )  # fmt: skip


def test_requests_per_minute_hold_exactly_across_two_replicas(
    stack: Settings, pipeline: tuple[Container, dict[str, str]]
) -> None:
    worker, env = pipeline
    with ApiKeyStore(stack.secret("postgres_dsn")) as keys:
        _id, key = keys.create(f"rl-{uuid.uuid4().hex[:8]}", "support", "user", rpm=5)
    session = f"rl-{uuid.uuid4().hex[:8]}"
    with running_gateway(env) as a, running_gateway(env) as b:
        ports = [a.gateway_port, b.gateway_port]
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda i: ask(ports[i % 2], key, session), range(14)))
        ok = [r for r in answers if r.status_code == 200]
        refused = [r for r in answers if r.status_code == 429]
        assert len(ok) == 5 and len(refused) == 9, [r.status_code for r in answers]
        assert sorted(r.headers["x-ratelimit-remaining-requests"] for r in ok) == list("01234")
        assert {r.headers["x-ratelimit-limit-requests"] for r in answers} == {"5"}
        for r in refused:
            error = r.json()["error"]
            assert error["code"] == "rate_limit_exceeded" and error["type"] == "rate_limit_error"
            assert "5 requests per minute" in error["message"]
            assert 1 <= int(r.headers["retry-after"]) <= 60
            assert 0 < int(r.headers["retry-after-ms"]) <= 60_001
            assert r.headers["x-ratelimit-remaining-requests"] == "0"
        # Through the SDK: its RateLimitError, with the headers it retries by.
        with client(b, key) as sdk, pytest.raises(openai.RateLimitError) as info:
            sdk.chat.completions.create(model="auto", messages=MESSAGES, max_tokens=2)  # type: ignore[arg-type]
        assert info.value.code == "rate_limit_exceeded"
        assert "retry-after-ms" in info.value.response.headers
        metrics = "".join(httpx.get(f"http://127.0.0.1:{p}/metrics", timeout=5).text for p in ports)
        counted = re.findall(r'soma_rate_limited_total\{limit="requests",tenant="rl-[^"]+"\} (\S+)',
                             metrics)  # fmt: skip
        assert sum(float(c) for c in counted) == 10
    # Only the admitted calls reached a model and left events.
    assert wait_until(lambda: len(events_for(worker, "slm_metrics", session)) >= 5)
    assert len(events_for(worker, "slm_metrics", session)) == 5


def test_tokens_per_minute_count_what_the_calls_used(
    stack: Settings, pipeline: tuple[Container, dict[str, str]]
) -> None:
    _worker, env = pipeline
    worst = prompt_token_bound(MESSAGES) + 8  # the hold of one call with max_tokens=8
    limit = 5 * worst
    with ApiKeyStore(stack.secret("postgres_dsn")) as keys:
        _id, key = keys.create(f"rl-{uuid.uuid4().hex[:8]}", "support", "user", tpm=limit)
    session = f"rl-{uuid.uuid4().hex[:8]}"
    with running_gateway(env) as gw:
        port = gw.gateway_port
        first = ask(port, key, session, max_tokens=8)
        assert first.status_code == 200, first.text
        assert first.headers["x-ratelimit-limit-tokens"] == str(limit)
        assert int(first.headers["x-ratelimit-remaining-tokens"]) == limit - worst
        used = first.json()["usage"]["total_tokens"]
        assert 0 < used < worst
        # Its hold was replaced by what it used: the next call sees exactly that.
        second = ask(port, key, session, max_tokens=8)
        assert second.status_code == 200, second.text
        assert int(second.headers["x-ratelimit-remaining-tokens"]) == limit - used - worst
        streamed = httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            json={"model": "smollm2-135m-instruct", "messages": MESSAGES, "max_tokens": 8,
                  "stream": True, "stream_options": {"include_usage": True}},
            headers={"authorization": f"Bearer {key}", "x-soma-session-id": session},
            timeout=120,
        )  # fmt: skip
        assert streamed.status_code == 200
        remaining = int(streamed.headers["x-ratelimit-remaining-tokens"])
        used_second = second.json()["usage"]["total_tokens"]
        assert remaining == limit - used - used_second - worst
        chunks = [json.loads(line[6:]) for line in streamed.text.splitlines()
                  if line.startswith("data: {")]  # fmt: skip
        used_streamed = next(c["usage"]["total_tokens"] for c in chunks if c.get("usage"))
        # The stream was settled to what it used before its last chunk was sent.
        fourth = ask(port, key, session, max_tokens=8)
        assert fourth.status_code == 200, fourth.text
        left = int(fourth.headers["x-ratelimit-remaining-tokens"])
        assert left == limit - used - used_second - used_streamed - worst
        # A call whose worst case alone is over the limit can never fit: 400, not 429.
        huge = ask(port, key, session, max_tokens=limit)
        assert huge.status_code == 400
        assert huge.json()["error"]["code"] == "request_too_large"
        assert "retry-after" not in huge.headers


def test_a_stream_cut_short_counts_the_tokens_it_produced(
    stack: Settings, pipeline: tuple[Container, dict[str, str]]
) -> None:
    worker, env = pipeline
    counting = [{"role": "user", "content": "Count from 1 to 200."}]
    limit = 10_000
    with ApiKeyStore(stack.secret("postgres_dsn")) as keys:
        _id, key = keys.create(f"rl-{uuid.uuid4().hex[:8]}", "support", "user", tpm=limit)
    session = f"rl-cut-{uuid.uuid4().hex[:8]}"
    headers = {"authorization": f"Bearer {key}", "x-soma-session-id": session}
    with running_gateway(env) as gw:
        url = f"http://127.0.0.1:{gw.gateway_port}/v1/chat/completions"
        body = {"messages": counting, "max_tokens": 200, "stream": True}
        with httpx.stream("POST", url, json=body, headers=headers, timeout=60) as response:
            assert response.status_code == 200
            seen = 0
            for line in response.iter_lines():
                seen += line.startswith("data: {")
                if seen >= 3:
                    break  # leave mid-stream: the gateway closes the upstream request
        assert wait_until(lambda: len(events_for(worker, "slm_metrics", session)) == 1)
        call = events_for(worker, "slm_metrics", session)[0]
        assert call["status"] == "interrupted"
        produced = int(call["input_tokens"]) + int(call["output_tokens"])  # type: ignore[call-overload]
        after = ask(gw.gateway_port, key, session, max_tokens=8)
        assert after.status_code == 200, after.text
        worst = prompt_token_bound(MESSAGES) + 8
        # Its hold (bound + 200) was replaced by what it had produced when it was cut.
        assert int(after.headers["x-ratelimit-remaining-tokens"]) == limit - produced - worst


def test_a_tenants_keys_share_its_limits_across_two_replicas(
    stack: Settings, pipeline: tuple[Container, dict[str, str]]
) -> None:
    worker, env = pipeline
    tenant = f"rlt-{uuid.uuid4().hex[:8]}"
    with ApiKeyStore(stack.secret("postgres_dsn")) as keys:
        keys_of_tenant = [keys.create(tenant, "support", "user", rpm=10)[1] for _ in range(3)]
        _other_id, other = keys.create(f"rlo-{uuid.uuid4().hex[:8]}", "support", "user")
    TenantLimitStore(stack.secret("postgres_dsn")).set(tenant, rpm=4)
    session = f"rlt-{uuid.uuid4().hex[:8]}"
    with running_gateway(env) as a, running_gateway(env) as b:
        ports = [a.gateway_port, b.gateway_port]
        with ThreadPoolExecutor(6) as pool:
            answers = list(
                pool.map(lambda i: ask(ports[i % 2], keys_of_tenant[i % 3], session), range(9))
            )
        ok = [r for r in answers if r.status_code == 200]
        refused = [r for r in answers if r.status_code == 429]
        assert len(ok) == 4 and len(refused) == 5, [r.status_code for r in answers]
        # The tenant's limit is the tighter one: the headers show it.
        assert sorted(r.headers["x-ratelimit-remaining-requests"] for r in ok) == list("0123")
        assert {r.headers["x-ratelimit-limit-requests"] for r in answers} == {"4"}
        for r in refused:
            error = r.json()["error"]
            assert error["code"] == "rate_limit_exceeded"
            assert error["message"].startswith(f"rate limit reached for tenant {tenant}: 4 ")
        assert ask(ports[0], other, session).status_code == 200  # another tenant: not limited
        metrics = "".join(httpx.get(f"http://127.0.0.1:{p}/metrics", timeout=5).text for p in ports)
        series = rf'soma_rate_limited_total\{{limit="tenant_requests",tenant="{tenant}"\}}'
        counted = re.findall(series + r" (\S+)", metrics)
        assert sum(float(c) for c in counted) == 5
    # The refused calls were withdrawn from their keys' windows: each key counts only its
    # admitted calls (4 over three keys), not the 9 it was asked for.
    rl = redis.Redis.from_url(stack.url("redis_url"))
    try:
        with ApiKeyStore(stack.secret("postgres_dsn")) as keys:
            ids = [k.key_id for k in keys.list(tenant)]
        assert sum(rl.zcard(rate_keys(i)[0]) for i in ids) == 4
        assert rl.zcard(rate_keys(f"tenant:{tenant}")[0]) == 4
    finally:
        rl.close()
    assert wait_until(lambda: len(events_for(worker, "slm_metrics", session)) >= 5)
    assert len(events_for(worker, "slm_metrics", session)) == 5  # 4 of the tenant + 1 other
