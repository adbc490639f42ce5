"""Parse and check an OpenAI ``POST /v1/chat/completions`` body (pure).

Only what the gateway must understand is interpreted; every other OpenAI parameter is passed
through to the upstream unchanged. Problems raise :class:`RequestError` carrying the HTTP
status and an OpenAI-style ``param``/``code``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

__all__ = ["ChatRequest", "RequestError", "parse_chat_request", "prompt_text"]

_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
MAX_MESSAGES = 2048


class RequestError(Exception):
    """A request the gateway refuses, with the status and OpenAI error fields to answer."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.kind = kind
        self.headers: dict[str, str] = dict(headers or {})
        self.extra: dict[str, Any] = dict(extra or {})

    def body(self) -> dict[str, Any]:
        """The OpenAI error object (plus any ``extra`` fields, e.g. an approval id)."""
        return {
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
                **self.extra,
            }
        }


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """The parts of a chat completion request the gateway acts on, plus the raw body."""

    body: dict[str, Any]
    model: str | None
    messages: tuple[dict[str, Any], ...]
    max_tokens: int
    stream: bool
    include_usage: bool
    temperature: float | None
    metadata: Mapping[str, Any]

    @property
    def prompt_hash(self) -> str:
        """sha256 of the canonical JSON of the messages (the prompt is never stored)."""
        return hashlib.sha256(msgspec.json.encode(list(self.messages))).hexdigest()

    @property
    def prompt_chars(self) -> int:
        return len(prompt_text(self.messages))

    @property
    def user_turns(self) -> int:
        return sum(1 for m in self.messages if m.get("role") == "user")

    def upstream_body(self, model: str, max_tokens: int | None = None) -> dict[str, Any]:
        """The body to send upstream: the client's, with our model name and limits."""
        body = {k: v for k, v in self.body.items() if k not in ("metadata", "user")}
        body["model"] = model
        body["max_tokens"] = max_tokens or self.max_tokens
        body.pop("max_completion_tokens", None)
        return body


def prompt_text(messages: Sequence[Mapping[str, Any]]) -> str:
    """All text content of the messages (string contents and text parts)."""
    parts: list[str] = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(
                p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
            )
    return "\n".join(parts)


def _check_messages(raw: Any) -> tuple[dict[str, Any], ...]:
    if not isinstance(raw, list):
        raise RequestError(400, "'messages' must be an array of message objects", param="messages")
    if not raw:
        raise RequestError(400, "'messages' must contain at least one message", param="messages")
    if len(raw) > MAX_MESSAGES:
        raise RequestError(400, f"at most {MAX_MESSAGES} messages per request", param="messages")
    for i, m in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise RequestError(400, f"{where} must be an object", param=where)
        role = m.get("role")
        if role not in _ROLES:
            raise RequestError(
                400, f"{where}.role must be one of {sorted(_ROLES)}, got {role!r}", param=where
            )
        content = m.get("content")
        if content is None and role not in ("assistant",):
            raise RequestError(400, f"{where}.content is required", param=f"{where}.content")
        if content is not None and not isinstance(content, str | list):
            raise RequestError(
                400, f"{where}.content must be a string or an array", param=f"{where}.content"
            )
    return tuple(raw)


def _int_field(body: Mapping[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(400, f"'{name}' must be an integer", param=name)
    return value


def _temperature(body: Mapping[str, Any]) -> float | None:
    value = body.get("temperature")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 2:
        raise RequestError(400, "'temperature' must be a number in [0, 2]", param="temperature")
    return float(value)


def _max_tokens(body: Mapping[str, Any], default: int, cap: int) -> int:
    value = _int_field(body, "max_completion_tokens")
    if value is None:
        value = _int_field(body, "max_tokens")
    if value is None:
        return default
    if value < 1:
        raise RequestError(400, f"'max_tokens' must be at least 1, got {value}", param="max_tokens")
    if value > cap:
        raise RequestError(
            400, f"'max_tokens' is {value}; this gateway allows at most {cap}", param="max_tokens"
        )
    return value


def parse_chat_request(raw: bytes, *, default_max_tokens: int, max_tokens_cap: int) -> ChatRequest:
    """Decode and check a request body; raise :class:`RequestError` on the first problem."""
    try:
        body = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise RequestError(400, f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise RequestError(400, "request body must be a JSON object")
    model = body.get("model")
    if model is not None and (not isinstance(model, str) or not model.strip()):
        raise RequestError(400, "'model' must be a non-empty string", param="model")
    messages = _check_messages(body.get("messages"))
    max_tokens = _int_field(body, "max_completion_tokens")
    if max_tokens is None:
        max_tokens = _int_field(body, "max_tokens")
    if max_tokens is None:
        max_tokens = default_max_tokens
    if max_tokens < 1:
        raise RequestError(
            400, f"'max_tokens' must be at least 1, got {max_tokens}", param="max_tokens"
        )
    if max_tokens > max_tokens_cap:
        raise RequestError(
            400,
            f"'max_tokens' is {max_tokens}; this gateway allows at most {max_tokens_cap}",
            param="max_tokens",
        )
    n = _int_field(body, "n")
    if n is not None and n != 1:
        raise RequestError(400, "only n=1 is supported", param="n")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError(400, "'stream' must be a boolean", param="stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise RequestError(400, "'stream_options' must be an object", param="stream_options")
    temperature = _temperature(body)
    metadata = body.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise RequestError(400, "'metadata' must be an object", param="metadata")
    return ChatRequest(
        body=body,
        model=model.strip() if isinstance(model, str) else None,
        messages=messages,
        max_tokens=max_tokens,
        stream=stream,
        include_usage=bool(options.get("include_usage")),
        temperature=temperature,
        metadata=metadata,
    )
