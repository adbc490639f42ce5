"""How an upstream's error answer maps onto ``UpstreamError`` (bodies as the servers send them)."""

from __future__ import annotations

import orjson

from somaagent.adapters.upstream._errors import UpstreamError, from_status

URL = "http://127.0.0.1:1/v1/chat/completions"

# llama-server (this build), a prompt of 2,030 tokens on a 1,024-token slot.
LLAMA = {
    "error": {
        "code": 400,
        "message": "request (2030 tokens) exceeds the available context size (1024 tokens),"
        " try increasing it",
        "type": "exceed_context_size_error",
        "n_prompt_tokens": 2030,
        "n_ctx": 1024,
    }
}
# OpenAI's documented answer.
OPENAI = {
    "error": {
        "message": "This model's maximum context length is 8192 tokens. However, your messages"
        " resulted in 9000 tokens.",
        "type": "invalid_request_error",
        "param": "messages",
        "code": "context_length_exceeded",
    }
}


def test_context_errors_are_recognised_from_type_code_or_message() -> None:
    llama = from_status(400, orjson.dumps(LLAMA), URL)
    assert (llama.code, llama.rejects_request, llama.exceeds_context) == (
        "exceed_context_size_error",
        True,
        True,
    )
    assert "exceeds the available context size (1024 tokens)" in llama.message
    openai = from_status(400, orjson.dumps(OPENAI), URL)
    assert (openai.code, openai.exceeds_context) == ("context_length_exceeded", True)
    vllm = from_status(400, b'{"message": "This model\'s maximum context length is 4096"}', URL)
    assert vllm.code is None and vllm.exceeds_context  # said in the body's text only


def test_other_errors_are_not_context_errors() -> None:
    bad = {"error": {"message": "invalid 'grammar'", "type": "invalid_request_error"}}
    rejected = from_status(400, orjson.dumps(bad), URL)
    assert rejected.rejects_request and not rejected.exceeds_context
    assert rejected.code == "invalid_request_error"
    # A busy or failing server is not a refusal of the request, whatever its body says.
    for status in (429, 500, 503):
        busy = from_status(status, orjson.dumps(OPENAI), URL)
        assert not busy.rejects_request and not busy.exceeds_context
    assert not UpstreamError("timeout", "maximum context length").exceeds_context
    assert from_status(400, b"not json", URL).code is None


def test_only_the_requests_own_faults_are_refusals() -> None:
    body = orjson.dumps({"error": {"message": "no", "type": "x"}})
    for status in (400, 413, 415, 422):
        assert from_status(status, body, URL).rejects_request, status
    # Our own key, account or configuration, or a pause: another upstream may serve it.
    for status in (401, 402, 403, 404, 407, 408, 409, 429):
        assert not from_status(status, body, URL).rejects_request, status
