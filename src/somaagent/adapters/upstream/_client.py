"""An aiohttp client for one OpenAI-compatible upstream (llama-server, vLLM, TGI, ...)."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import aclosing
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from somaagent.adapters.upstream._accumulator import StreamAccumulator
from somaagent.adapters.upstream._errors import UpstreamError, from_exception, from_status
from somaagent.adapters.upstream._http1 import Http1Pool
from somaagent.adapters.upstream._http1_stream import Http1Stream, open_stream
from somaagent.adapters.upstream._sse import SseDecoder
from somaagent.adapters.upstream._types import (
    Measurements,
    StreamChunk,
    StreamEvent,
    UpstreamResult,
    cached_tokens,
    compute_ms,
    reported_usage,
)

__all__ = ["UpstreamClient", "client_requested_usage", "root_url", "stream_body"]

_DONE = b"[DONE]"


def root_url(base_url: str) -> str:
    """The server root of an OpenAI base URL (``http://h:p/v1`` -> ``http://h:p``)."""
    base = base_url.rstrip("/")
    return base.removesuffix("/v1")


def client_requested_usage(body: Mapping[str, Any]) -> bool:
    """Whether the caller's own request asked for the trailing usage chunk."""
    options = body.get("stream_options")
    return isinstance(options, Mapping) and options.get("include_usage") is True


def stream_body(body: Mapping[str, Any], *, request_usage: bool = True) -> dict[str, Any]:
    """The body sent upstream for a stream: ``stream`` on and, unless told not to,
    ``stream_options.include_usage`` merged in (the caller's body is not modified)."""
    sent = dict(body)
    sent["stream"] = True
    if request_usage:
        options = body.get("stream_options")
        merged = dict(options) if isinstance(options, Mapping) else {}
        merged["include_usage"] = True
        sent["stream_options"] = merged
    return sent


def _plain_body(body: Mapping[str, Any]) -> dict[str, Any]:
    sent = {key: value for key, value in body.items() if key != "stream_options"}
    sent["stream"] = False
    return sent


def _json_object(raw: bytes, url: str) -> dict[str, Any]:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise UpstreamError("protocol", f"{url}: answer is not JSON: {raw[:80]!r}") from None
    if not isinstance(data, dict):
        raise UpstreamError("protocol", f"{url}: answer is not a JSON object")
    return data


def _stream_chunk(payload: bytes, url: str, more: bool = False) -> StreamChunk:
    data = _json_object(payload, url)
    error = data.get("error")
    if error is not None:  # llama-server and vLLM report failures midway as an error chunk
        status = error.get("code") if isinstance(error, dict) else None
        raise from_status(status if isinstance(status, int) else 500, payload, url)
    return StreamChunk(payload, data, more)


class UpstreamClient:
    """Chat completions against one OpenAI-compatible base URL (``.../v1``).

    One pooled keep-alive ``aiohttp.ClientSession``, created on first use inside the running
    event loop (nothing connects at construction); :meth:`close` (or ``async with``) ends it.
    Every failure is an :class:`UpstreamError`. Use the client from one event loop only.

    Idle connections are kept ``keepalive_s`` (default 4 s: llama-server and uvicorn close
    idle ones after 5 s, and reusing a connection the server is closing fails the request).
    Streams are sent with ``Connection: close`` unless ``reuse_stream_connections``:
    llama-server closes the connection after every stream without announcing it, and the
    next request on the pooled connection failed ("Server disconnected", "Can not write
    request body"). A new loopback/LAN connection per stream costs far less than one token;
    on plain http it is a lean one (``_http1_stream``), as non-streamed calls use the lean
    keep-alive pool (``_http1``); aiohttp serves https and reused stream connections.
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        max_connections: int = 256,
        keepalive_s: float = 4.0,
        reuse_stream_connections: bool = False,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.root_url = root_url(base_url)
        parts = urlsplit(self.base_url)
        self._origin = f"{parts.scheme}://{parts.netloc}"  # the lean pool's host
        self._chat_url = f"{self.base_url}/chat/completions"
        self._api_key = api_key
        self._max_connections = max_connections
        self._keepalive_s = keepalive_s
        self._reuse_stream_connections = reuse_stream_connections
        self._session: aiohttp.ClientSession | None = None
        self._pool: Http1Pool | None = None
        self._closed = False

    async def __aenter__(self) -> UpstreamClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the pooled connections; the client cannot be used afterwards."""
        self._closed = True
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _plain_http(self, url: str) -> bool:
        """Whether ``url`` is plain http on the base URL's host (what the lean clients
        speak); ``RuntimeError`` once the client is closed."""
        if self._closed:
            raise RuntimeError("UpstreamClient is closed")
        return url.startswith(self._origin + "/") and url.startswith("http://")

    def _lean(self, url: str) -> tuple[Http1Pool, str] | None:
        """The lean keep-alive pool and the request target for ``url`` when it is plain
        http on the base URL's host (every non-streamed call of the hot path), else
        ``None`` (aiohttp)."""
        if not self._plain_http(url):
            return None
        if self._pool is None:
            self._pool = Http1Pool(
                self._origin, max_connections=self._max_connections, keepalive_s=self._keepalive_s
            )
        return self._pool, url[len(self._origin) :]

    def _session_now(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RuntimeError("UpstreamClient is closed")
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections, keepalive_timeout=self._keepalive_s
            )
            self._session = aiohttp.ClientSession(connector=connector, trust_env=False)
        return self._session

    def _headers(self, traceparent: str | None, *, accept: str) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": accept}
        if traceparent:
            headers["traceparent"] = traceparent
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return headers

    def _stream_headers(self, traceparent: str | None) -> dict[str, str]:
        headers = self._headers(traceparent, accept="text/event-stream")
        if not self._reuse_stream_connections:
            headers["Connection"] = "close"
        return headers

    async def post_json(
        self,
        url: str,
        payload: Mapping[str, Any],
        *,
        timeout_s: float,
        traceparent: str | None = None,
    ) -> dict[str, Any]:
        """POST ``payload`` to ``url`` (absolute) and return the JSON object it answers."""
        data, _ = await self._post(url, payload, timeout_s=timeout_s, traceparent=traceparent)
        return data

    async def _post(
        self,
        url: str,
        payload: Mapping[str, Any],
        *,
        timeout_s: float,
        traceparent: str | None,
    ) -> tuple[dict[str, Any], int]:
        data = orjson.dumps(payload)
        headers = self._headers(traceparent, accept="application/json")
        lean = self._lean(url)
        if lean is not None:
            pool, target = lean
            status, raw = await pool.post(url, target, data, headers, timeout_s)
        else:
            try:
                async with self._session_now().post(
                    url,
                    data=data,
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=timeout_s),
                ) as response:
                    raw = await response.read()
                    status = response.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise from_exception(exc, url) from None
        if status >= 400:
            raise from_status(status, raw, url)
        return _json_object(raw, url), status

    async def chat(
        self,
        body: Mapping[str, Any],
        *,
        timeout_s: float,
        traceparent: str | None = None,
    ) -> UpstreamResult:
        """Non-streamed ``POST {base}/chat/completions``; ``timeout_s`` bounds the whole call."""
        started = time.perf_counter()
        data, status = await self._post(
            self._chat_url, _plain_body(body), timeout_s=timeout_s, traceparent=traceparent
        )
        latency_ms = (time.perf_counter() - started) * 1000.0
        usage, timings = data.get("usage"), data.get("timings")
        choices = data.get("choices")
        first = choices[0] if isinstance(choices, list) and choices else None
        finish = first.get("finish_reason") if isinstance(first, dict) else None
        model = data.get("model")
        return UpstreamResult(
            status=status,
            body=data,
            usage=reported_usage(usage, timings),
            measurements=Measurements(
                latency_ms=latency_ms,
                time_to_first_token_ms=None,
                queue_delay_ms=None,
                compute_ms=compute_ms(timings),
                cached_tokens=cached_tokens(usage, timings),
                finish_reason=finish if isinstance(finish, str) else None,
                model=model if isinstance(model, str) else None,
            ),
        )

    async def stream(
        self,
        body: Mapping[str, Any],
        *,
        timeout_s: float,
        traceparent: str | None = None,
        accumulator: StreamAccumulator | None = None,
        request_usage: bool = True,
    ) -> AsyncGenerator[StreamEvent, None]:
        """Streamed chat completion: yield each SSE chunk as it arrives, then a summary.

        The upstream is always asked for ``stream_options.include_usage`` (unless
        ``request_usage=False``); ``StreamSummary.client_requested_usage`` says whether the
        caller's body asked, so the gateway can drop :attr:`StreamChunk.usage_only` chunks.
        ``timeout_s`` bounds connecting and each wait for data, not the whole stream.
        Closing the generator or cancelling its task closes the upstream response, which
        makes the upstream stop generating; ``accumulator`` (owned by the caller) then holds
        the partial output with ``interrupted=True``. ``[DONE]`` is not yielded.
        """
        acc = accumulator if accumulator is not None else StreamAccumulator()
        acc.client_requested_usage = client_requested_usage(body)
        url = self._chat_url
        data = orjson.dumps(stream_body(body, request_usage=request_usage))
        headers = self._stream_headers(traceparent)
        response: aiohttp.ClientResponse | None = None
        lean: Http1Stream | None = None
        acc.start()
        try:
            pieces: AsyncIterator[bytes]
            if self._plain_http(url) and not self._reuse_stream_connections:
                lean = await open_stream(url, data, headers, timeout_s)
                if lean.status >= 400:
                    raise from_status(lean.status, await _whole(lean, timeout_s, url), url)
                pieces = _lean_pieces(lean, timeout_s, url)
            else:
                timeout = aiohttp.ClientTimeout(
                    total=None, connect=timeout_s, sock_connect=timeout_s, sock_read=timeout_s
                )
                response = await self._session_now().post(
                    url, data=data, headers=headers, timeout=timeout
                )
                if response.status >= 400:
                    raise from_status(response.status, await response.read(), url)
                pieces = response.content.iter_any()
            async with aclosing(_payloads(pieces, acc, url)) as payloads:
                async for payload, more in payloads:
                    chunk = _stream_chunk(payload, url, more)
                    acc.observe(chunk.data)
                    yield chunk
            acc.end(completed=True)
        except UpstreamError as error:
            acc.end(error=error)
            raise
        except (aiohttp.ClientError, TimeoutError) as exc:
            failure = from_exception(exc, url)
            acc.end(error=failure)
            raise failure from None
        except BaseException:  # GeneratorExit or CancelledError: the consumer went away
            acc.end()
            raise
        finally:
            if lean is not None:
                lean.abort()  # asked to close at the end anyway; mid-answer it stops the upstream
                acc.upstream_closed = not acc.completed
            if response is not None:
                if acc.completed:
                    response.release()
                else:
                    response.close()
                    acc.upstream_closed = not acc.completed
        yield acc.summary()


async def _payloads(
    pieces: AsyncIterator[bytes], acc: StreamAccumulator, url: str
) -> AsyncGenerator[tuple[bytes, bool], None]:
    """The SSE payloads of a chunk stream up to ``[DONE]``, each with whether another one
    of the same network read follows it; what follows ``[DONE]`` is drained."""
    decoder = SseDecoder()
    done = False
    async for piece in pieces:
        try:
            payloads = decoder.feed(piece)
        except ValueError as exc:
            raise UpstreamError("protocol", f"{url}: {exc}") from None
        kept, done = _before_done(payloads, done)
        for pair in kept:
            yield pair
    kept, done = _before_done(decoder.finish(), done)
    for pair in kept:
        yield pair
    if not done and not acc.finished_choices:
        raise UpstreamError("protocol", f"{url}: stream ended before [DONE] or a finish reason")


async def _lean_pieces(stream: Http1Stream, timeout_s: float, url: str) -> AsyncIterator[bytes]:
    """What ``stream`` reads, piece by piece, until the end of the answer."""
    while True:
        try:
            piece = await stream.read(timeout_s)
        except UpstreamError as exc:
            raise UpstreamError(exc.kind, f"{url}: {exc.message}") from None
        if piece is None:
            return
        yield piece


async def _whole(stream: Http1Stream, timeout_s: float, url: str, limit: int = 1 << 20) -> bytes:
    """The body of an error answer (its first ``limit`` bytes)."""
    parts: list[bytes] = []
    size = 0
    async for piece in _lean_pieces(stream, timeout_s, url):
        parts.append(piece)
        size += len(piece)
        if size >= limit:
            break
    return b"".join(parts)[:limit]


def _before_done(payloads: list[bytes], done: bool) -> tuple[list[tuple[bytes, bool]], bool]:
    """The payloads of one read before ``[DONE]`` (none once it was seen), each with
    whether another of them follows it, and whether ``[DONE]`` has been seen."""
    if done:
        return [], True
    seen = _DONE in payloads
    if seen:
        payloads = payloads[: payloads.index(_DONE)]
    last = len(payloads) - 1
    return [(payload, i < last) for i, payload in enumerate(payloads)], seen
