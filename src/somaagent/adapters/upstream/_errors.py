"""The one exception an upstream call raises, and how low-level failures map onto it."""

from __future__ import annotations

from typing import Literal

import aiohttp
import orjson

__all__ = ["ErrorKind", "UpstreamError"]

ErrorKind = Literal["connect", "timeout", "http", "protocol"]

_MAX_MESSAGE = 300


class UpstreamError(Exception):
    """A call to an OpenAI-compatible upstream failed; ``str(error)`` is one line.

    ``kind`` says how:

    - ``connect``: no connection could be made or it broke before an answer (refused, reset).
    - ``timeout``: connecting, the answer, or (streams) the next chunk took longer than allowed.
    - ``http``: the upstream answered 4xx/5xx (``status`` holds the code), or sent an error
      object in the middle of a stream (``status`` from that object, when it has one).
    - ``protocol``: the answer is not the OpenAI wire format (not JSON, a stream cut short).
    """

    def __init__(self, kind: ErrorKind, message: str, *, status: int | None = None) -> None:
        self.kind: ErrorKind = kind
        self.status = status
        self.message = one_line(message)
        super().__init__(self.message)

    @property
    def rejects_request(self) -> bool:
        """A 4xx about the request itself (not 408/409/429): another model would refuse too."""
        return (
            self.kind == "http"
            and self.status is not None
            and 400 <= self.status < 500
            and self.status not in (408, 409, 429)
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
    return UpstreamError("http", f"{url} answered {status}: {error_message(raw)}", status=status)


def error_message(raw: bytes) -> str:
    """The ``error.message`` of an OpenAI-style error body, else the start of the body."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw[:200].decode("utf-8", "replace") or "(empty body)"
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])
    if isinstance(error, str):
        return error
    return raw[:200].decode("utf-8", "replace")
