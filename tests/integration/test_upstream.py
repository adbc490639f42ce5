"""The upstream adapter against the real llama-servers of the session stack (no fakes).

Depends on: the ``stack`` fixture (primary SmolLM2-135M and escalation Qwen2.5-Coder-0.5B
llama-servers). Every async scenario runs in its own ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from collections.abc import Coroutine
from contextlib import aclosing
from typing import Any, TypeVar

import httpx
import pytest

from somaagent.adapters.upstream import (
    StreamAccumulator,
    StreamChunk,
    StreamSummary,
    UpstreamClient,
    UpstreamError,
    UpstreamResult,
    UsageCounter,
)
from somaagent.settings import Settings

T = TypeVar("T")

# Deterministic (temperature 0, fixed seed) chats whose output the tokenizer count must
# reproduce exactly: a bare user turn (SmolLM2's template injects its default system prompt),
# a system message, a multi-turn exchange with a system message, code, and non-English text.
PROMPTS: dict[str, list[dict[str, str]]] = {
    "user-only": [{"role": "user", "content": "Name three colors."}],
    "system": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Name three colors."},
    ],
    "multi-turn": [
        {"role": "system", "content": "You are a helpful math tutor."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "2+2 is 4."},
        {"role": "user", "content": "And what is that times three? Answer in one sentence."},
    ],
    "code": [{"role": "user", "content": "Write a python function that reverses a string."}],
    "translate": [{"role": "user", "content": "Translate to French: good morning, my friend."}],
}
STORY = [{"role": "user", "content": "Write a long story about a dragon."}]


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def endpoint(stack: Settings, tier: str) -> tuple[str, str]:
    """Base URL and model name of the primary or escalation llama-server."""
    return stack.url(f"{tier}_model_url"), str(getattr(stack, f"{tier}_model_name"))


def chat_body(model: str, messages: list[dict[str, str]], max_tokens: int = 24) -> dict[str, Any]:
    return {
        "model": model,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0,
        "seed": 42,
    }


async def collect(
    client: UpstreamClient, body: dict[str, Any], *, timeout_s: float = 60, **options: Any
) -> tuple[list[StreamChunk], StreamSummary]:
    events = [event async for event in client.stream(body, timeout_s=timeout_s, **options)]
    summary = events.pop()
    assert isinstance(summary, StreamSummary)
    assert all(isinstance(event, StreamChunk) for event in events)
    return [event for event in events if isinstance(event, StreamChunk)], summary


def text_of(result: UpstreamResult) -> str:
    return str(result.body["choices"][0]["message"]["content"])


def metric(base_url: str, name: str) -> float:
    root = base_url.removesuffix("/v1")
    text = httpx.get(f"{root}/metrics", timeout=5, trust_env=False).text
    found = re.search(rf"^llamacpp:{name} (\S+)$", text, re.MULTILINE)
    assert found, f"llama-server exposes no {name}"
    return float(found.group(1))


def wait_idle(base_url: str) -> None:
    deadline = time.monotonic() + 10
    while metric(base_url, "requests_processing") > 0:
        assert time.monotonic() < deadline, "llama-server still processing after 10 s"
        time.sleep(0.05)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_chat_returns_content_usage_and_compute_time(stack: Settings) -> None:
    url, model = endpoint(stack, "primary")

    async def scenario() -> UpstreamResult:
        async with UpstreamClient(url) as client:
            return await client.chat(chat_body(model, PROMPTS["system"], 16), timeout_s=60)

    result = run(scenario())
    assert text_of(result).strip()
    assert result.usage is not None
    assert (result.usage.source, result.usage.method) == ("reported", "usage")
    assert result.usage.prompt_tokens > 0
    assert 0 < result.usage.completion_tokens <= 16
    m = result.measurements
    assert m.model == model
    assert m.finish_reason in ("stop", "length")
    assert m.compute_ms is not None and 0 < m.compute_ms <= m.latency_ms
    assert m.cached_tokens is not None and m.cached_tokens <= result.usage.prompt_tokens
    assert m.queue_delay_ms is None and m.time_to_first_token_ms is None


def test_stream_forwards_chunks_and_the_usage_the_client_asked_for(stack: Settings) -> None:
    url, model = endpoint(stack, "primary")
    body = chat_body(model, PROMPTS["code"], 16) | {"stream_options": {"include_usage": True}}

    async def scenario() -> tuple[list[StreamChunk], StreamSummary]:
        async with UpstreamClient(url) as client:
            return await collect(client, body)

    chunks, summary = run(scenario())
    assert summary.client_requested_usage and summary.completed and not summary.interrupted
    usage_chunks = [chunk for chunk in chunks if chunk.usage_only]
    assert usage_chunks == [chunks[-1]]
    reported = chunks[-1].data["usage"]
    timings = chunks[-1].data["timings"]
    assert summary.usage is not None and summary.usage.method == "usage"
    assert summary.usage.prompt_tokens == reported["prompt_tokens"]
    assert summary.usage.completion_tokens == reported["completion_tokens"] == 16
    # llama-server's timings are the counters usage is built from (used when usage is absent).
    assert reported["prompt_tokens"] == timings["prompt_n"] + timings["cache_n"]
    assert reported["completion_tokens"] == timings["predicted_n"]
    assert all(chunk.sse() == b"data: " + chunk.raw + b"\n\n" for chunk in chunks)
    assert summary.content_deltas == 16
    m = summary.measurements
    assert m.time_to_first_token_ms is not None and 0 < m.time_to_first_token_ms < m.latency_ms
    assert m.compute_ms is not None and m.compute_ms > 0
    assert (m.model, m.finish_reason) == (model, "length")


def test_stream_requests_usage_upstream_even_when_the_client_did_not(stack: Settings) -> None:
    url, model = endpoint(stack, "primary")
    body = chat_body(model, PROMPTS["system"], 8)
    sent = dict(body)

    async def scenario() -> tuple[list[StreamChunk], StreamSummary]:
        async with UpstreamClient(url) as client:
            return await collect(client, body)

    chunks, summary = run(scenario())
    assert body == sent  # the caller's body is not modified
    assert not summary.client_requested_usage
    assert chunks[-1].usage_only  # the gateway drops this one for this client
    assert summary.usage is not None and summary.usage.method == "usage"
    assert summary.usage.completion_tokens == 8


@pytest.mark.parametrize("tier", ["primary", "escalation"])
@pytest.mark.parametrize("prompt", sorted(PROMPTS))
def test_counted_usage_equals_reported_usage(stack: Settings, tier: str, prompt: str) -> None:
    """An upstream that omits usage in streams: llama-server does when include_usage is not
    requested. Our tokenizer count must reproduce the server's own numbers exactly."""
    url, model = endpoint(stack, tier)
    body = chat_body(model, PROMPTS[prompt])

    async def scenario() -> None:
        async with UpstreamClient(url) as client:
            counter = UsageCounter(client)
            result = await client.chat(body, timeout_s=60)
            assert result.usage is not None
            counted = await counter.count(body, result.choices)
            assert counted.source == "counted"
            assert (counted.prompt_tokens, counted.completion_tokens) == (
                result.usage.prompt_tokens,
                result.usage.completion_tokens,
            )

            chunks, summary = await collect(client, body, request_usage=False)
            assert not any("usage" in chunk.data for chunk in chunks)
            # What is left of the server's report: its timings counters, same generation.
            assert summary.usage is not None and summary.usage.method == "timings"
            counted = await counter.count(body, summary.choices)
            assert (counted.prompt_tokens, counted.completion_tokens) == (
                summary.usage.prompt_tokens,
                summary.usage.completion_tokens,
            )
            if summary.completion_text == text_of(result):
                # Same generation streamed and not streamed: same token counts.
                assert summary.usage.total_tokens == result.usage.total_tokens
            else:  # Qwen 0.5B at temperature 0 can differ after a prompt-cache hit
                assert tier == "escalation", "SmolLM2 at temperature 0 must be deterministic"

    run(scenario())


def test_closing_the_stream_aborts_upstream_and_keeps_the_partial_count(
    stack: Settings,
) -> None:
    url, model = endpoint(stack, "primary")
    body = chat_body(model, STORY, 32)
    accumulator = StreamAccumulator()
    wait_idle(url)
    decoded_before = metric(url, "n_decode_total")

    async def scenario() -> tuple[int, Any]:
        async with UpstreamClient(url) as client:
            seen = 0
            async with aclosing(
                client.stream(body, timeout_s=60, accumulator=accumulator)
            ) as events:
                async for event in events:
                    assert isinstance(event, StreamChunk)
                    if event.data["choices"] and event.data["choices"][0]["delta"].get("content"):
                        seen += 1
                    if seen == 3:
                        break
            usage = await UsageCounter(client).usage_for_stream(body, accumulator.summary())
            prompt = await UsageCounter(client).count_prompt(body)
            return prompt, usage

    prompt_tokens, usage = run(scenario())
    summary = accumulator.summary()
    assert summary.interrupted and not summary.completed and accumulator.upstream_closed
    assert summary.content_deltas == 3 and summary.completion_text
    assert summary.usage is None  # the upstream never got to report
    assert (usage.source, usage.prompt_tokens) == ("counted", prompt_tokens)
    assert 0 < usage.completion_tokens < 32
    # The upstream stopped generating: a full answer would have decoded 32 more tokens.
    wait_idle(url)
    assert metric(url, "n_decode_total") - decoded_before < 32


def test_cancelling_the_consumer_task_interrupts_the_stream(stack: Settings) -> None:
    url, model = endpoint(stack, "escalation")
    body = chat_body(model, STORY, 32)
    accumulator = StreamAccumulator()

    async def scenario() -> None:
        async with UpstreamClient(url) as client:
            first = asyncio.Event()

            async def consume() -> None:
                async for event in client.stream(body, timeout_s=60, accumulator=accumulator):
                    if isinstance(event, StreamChunk) and accumulator.content_deltas:
                        first.set()

            task = asyncio.create_task(consume())
            await asyncio.wait_for(first.wait(), 30)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    run(scenario())
    summary = accumulator.summary()
    assert summary.interrupted and accumulator.upstream_closed
    assert 0 < summary.content_deltas < 32
    wait_idle(url)


def test_requests_after_a_stream_do_not_reuse_a_dead_connection(stack: Settings) -> None:
    """llama-server closes a connection after each stream without announcing it."""
    url, model = endpoint(stack, "primary")
    body = chat_body(model, PROMPTS["system"], 4)

    async def scenario() -> None:
        async with UpstreamClient(url) as client:
            for _ in range(3):
                await client.chat(body, timeout_s=60)
                await collect(client, body)
                await UsageCounter(client).count_prompt(body)

    run(scenario())


def test_connection_refused_is_a_connect_error() -> None:
    async def scenario() -> list[UpstreamError]:
        errors = []
        async with UpstreamClient(f"http://127.0.0.1:{closed_port()}/v1") as client:
            body = chat_body("any", PROMPTS["system"], 4)
            with pytest.raises(UpstreamError) as chat_error:
                await client.chat(body, timeout_s=5)
            errors.append(chat_error.value)
            accumulator = StreamAccumulator()
            with pytest.raises(UpstreamError) as stream_error:
                await collect(client, body, accumulator=accumulator)
            errors.append(stream_error.value)
            assert accumulator.error is stream_error.value and not accumulator.interrupted
        return errors

    for error in run(scenario()):
        assert (error.kind, error.status) == ("connect", None)
        assert "\n" not in str(error) and "cannot connect" in str(error)


def test_upstream_4xx_is_an_http_error_with_its_status(stack: Settings) -> None:
    url, model = endpoint(stack, "primary")
    body = {"model": model, "messages": "not a list", "max_tokens": 4}

    async def scenario() -> list[UpstreamError]:
        errors = []
        async with UpstreamClient(url) as client:
            with pytest.raises(UpstreamError) as chat_error:
                await client.chat(body, timeout_s=10)
            errors.append(chat_error.value)
            with pytest.raises(UpstreamError) as stream_error:
                await collect(client, body)
            errors.append(stream_error.value)
        return errors

    for error in run(scenario()):
        assert (error.kind, error.status) == ("http", 400)
        assert "messages" in str(error) and "\n" not in str(error)


def test_slow_upstream_is_a_timeout_error(stack: Settings) -> None:
    url, model = endpoint(stack, "escalation")
    body = chat_body(model, STORY, 32)

    async def scenario() -> list[UpstreamError]:
        errors = []
        async with UpstreamClient(url) as client:
            with pytest.raises(UpstreamError) as chat_error:
                await client.chat(body, timeout_s=0.2)
            errors.append(chat_error.value)
            with pytest.raises(UpstreamError) as stream_error:
                await collect(client, body, timeout_s=0.01)
            errors.append(stream_error.value)
        return errors

    for error in run(scenario()):
        assert (error.kind, error.status) == ("timeout", None)
    wait_idle(url)


def _burst_stream() -> bytes:
    """A whole SSE answer (three content chunks, the usage chunk, ``[DONE]``)."""
    pieces = [{"choices": [{"index": 0, "delta": {"content": w}}]} for w in ("a", "b", "c")]
    pieces[-1]["choices"][0]["finish_reason"] = "stop"
    usage = {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}
    events = [*pieces, {"choices": [], "usage": usage}]
    body = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
    return body + b"data: [DONE]\n\n"


def _serve_once(body: bytes, *, length: bool) -> Any:
    """A one-answer server: the whole SSE answer in one write, then close (``length``:
    with Content-Length, else delimited by the end of the connection)."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        size = re.search(rb"(?i)content-length: *(\d+)", head)
        assert size is not None
        await reader.readexactly(int(size.group(1)))
        delimit = b"content-length: %d\r\n" % len(body) if length else b""
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n"
            + delimit
            + b"\r\n"
            + body
        )
        await writer.drain()
        writer.close()

    return answer


@pytest.mark.parametrize("length", [True, False], ids=["content-length", "until-close"])
def test_chunks_of_one_network_read_say_that_more_follow_at_once(length: bool) -> None:
    """An upstream that writes a whole stream at once (a fast server, or a burst of tokens):
    chunks of the same read but the last are marked ``more``, so the gateway relays them in
    one write; the last never is, so no chunk waits for another. An answer delimited by the
    end of the connection (neither Content-Length nor chunked) ends there, not as an error."""
    body = _burst_stream()

    async def scenario() -> list[StreamChunk]:
        server = await asyncio.start_server(_serve_once(body, length=length), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            async with UpstreamClient(f"http://127.0.0.1:{port}/v1") as client:
                chunks, summary = await collect(client, chat_body("m", PROMPTS["system"], 3))
        finally:
            server.close()
            await server.wait_closed()
        assert summary.completed and summary.usage is not None and summary.error is None
        return chunks

    chunks = run(scenario())
    assert [c.raw for c in chunks] == [line[6:] for line in body.split(b"\n\n")[:4]]
    assert chunks[-1].more is False and any(c.more for c in chunks)
