"""The one exception an upstream call raises, and how low-level failures map onto it."""

from __future__ import annotations

from typing import Literal

import aiohttp
import orjson

__all__ = ["ErrorKind", "UpstreamError"]

ErrorKind = Literal["connect", "timeout", "http", "protocol"]

_MAX_MESSAGE = 300
# Statuses that blame the request's own content (size, syntax, values).
_REQUEST_FAULTS = frozenset({400, 411, 413, 414, 415, 422, 431})
# How upstreams say "the prompt and max_tokens do not fit my context window": llama-server's
# error type, OpenAI's error code; vLLM says it in the message only.
_CONTEXT_CODES = frozenset({"exceed_context_size_error", "context_length_exceeded"})
_CONTEXT_WORDS = ("maximum context length", "exceeds the available context size")


class UpstreamError(Exception):
    """A call to an OpenAI-compatible upstream failed; ``str(error)`` is one line.

    ``kind`` says how:

    - ``connect``: no connection could be made or it broke before an answer (refused, reset).
    - ``timeout``: connecting, the answer, or (streams) the next chunk took longer than allowed.
    - ``http``: the upstream answered 4xx/5xx (``status`` holds the code), or sent an error
      object in the middle of a stream (``status`` from that object, when it has one).
    - ``protocol``: the answer is not the OpenAI wire format (not JSON, a stream cut short).
    """

    def __init__(
        self, kind: ErrorKind, message: str, *, status: int | None = None, code: str | None = None
    ) -> None:
        self.kind: ErrorKind = kind
        self.status = status
        self.code = code  # the upstream's own error code or type, when it gave one
        self.message = one_line(message)
        super().__init__(self.message)

    @property
    def rejects_request(self) -> bool:
        """A 4xx about the request itself: another model would refuse it too, and the
        upstream is healthy. Not 401/402/403/404/407 (the gateway's own credentials, account
        or configuration: another upstream may serve) nor 408/409/429 (they pass)."""
        return self.kind == "http" and self.status in _REQUEST_FAULTS

    @property
    def exceeds_context(self) -> bool:
        """The request's prompt and ``max_tokens`` do not fit this model's context window
        (a model with a larger one may take it)."""
        return self.rejects_request and (
            self.code in _CONTEXT_CODES or any(w in self.message for w in _CONTEXT_WORDS)
        )

    def __repr__(self) -> str:
        return (
            f"UpstreamError(kind={self.kind!r}, status={self.status!r}, message={self.message!r})"
        )


def one_line(text: str) -> str:
    """Collapse whitespace and cut to a length that fits a log line."""
    flat = " ".join(text.split())
    return flat if len(flat) <= _MAX_MESSAGE else flat[: _MAX_MESSAGE - 1] + "…"


def from_exception(exc: BaseException, url: str) -> UpstreamError:
    """Translate an aiohttp/asyncio failure into an :class:`UpstreamError`."""
    if isinstance(exc, TimeoutError):  # aiohttp's ServerTimeoutError is a TimeoutError too
        return UpstreamError("timeout", f"{url}: no answer in time ({type(exc).__name__})")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return UpstreamError("connect", f"{url}: cannot connect ({exc.os_error.strerror or exc})")
    if isinstance(exc, aiohttp.ClientOSError | aiohttp.ServerDisconnectedError):
        return UpstreamError("connect", f"{url}: connection lost ({type(exc).__name__}: {exc})")
    return UpstreamError("protocol", f"{url}: {type(exc).__name__}: {exc}")


def from_status(status: int, raw: bytes, url: str) -> UpstreamError:
    """An :class:`UpstreamError` for a 4xx/5xx answer, quoting the upstream's own message."""
    message, code = error_fields(raw)
    return UpstreamError("http", f"{url} answered {status}: {message}", status=status, code=code)


def error_fields(raw: bytes) -> tuple[str, str | None]:
    """The message of an OpenAI-style error body (else the start of the body) and its
    ``error.code`` if that is a string, else its ``error.type``."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw[:200].decode("utf-8", "replace") or "(empty body)", None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        code = error.get("code")
        kind = error.get("type")
        found = code if isinstance(code, str) else kind if isinstance(kind, str) else None
        return str(error["message"]), found
    if isinstance(error, str):
        return error, None
    return raw[:200].decode("utf-8", "replace"), None
