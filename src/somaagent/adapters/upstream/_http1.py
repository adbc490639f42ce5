"""A lean HTTP/1.1 keep-alive client for the non-streamed JSON POSTs of the hot path.

Each connection is an asyncio protocol with an ``httptools`` response parser; idle ones are
pooled per client and reused for ``keepalive_s``. A request is one ``write`` of head and
body; the answer is read whole (at most ``max_body`` bytes). That is all a chat completion
needs, at a fraction of aiohttp's per-request cost. Streams: ``_http1_stream``.

Answers must be delimited by ``Content-Length`` or chunked encoding (as llama-server, vLLM
and TGI send them); one delimited only by the server closing the connection fails as
``connect``. Failures raise ``UpstreamError``: ``connect`` (refused, reset, closed before a complete
answer), ``timeout`` (no complete answer within the call's ``timeout_s``, connecting
included) and ``protocol`` (not HTTP, or an answer over ``max_body``).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import cast
from urllib.parse import urlsplit

import httptools

from somaagent.adapters.upstream._errors import UpstreamError

__all__ = ["Http1Pool", "ParsedProtocol", "post_head"]


def post_head(authority: bytes, path: str, length: int, headers: dict[str, str]) -> bytes:
    """The head of ``POST path`` to ``authority`` with a body of ``length`` bytes."""
    lines = [f"POST {path} HTTP/1.1".encode(), b"Host: " + authority]
    lines += [f"{k}: {v}".encode() for k, v in headers.items()]
    lines.append(b"Content-Length: %d" % length)
    return b"\r\n".join(lines) + b"\r\n\r\n"


class ParsedProtocol(asyncio.Protocol):
    """A connection whose received bytes feed an httptools response parser (``parser``);
    a subclass says in ``_fail`` what an unparseable answer does."""

    transport: asyncio.Transport | None
    parser: httptools.HttpResponseParser

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError("protocol", f"not an HTTP answer: {exc}"))

    def _fail(self, error: UpstreamError) -> None:
        raise NotImplementedError


class _Conn(ParsedProtocol):
    def __init__(self, max_body: int) -> None:
        self.transport: asyncio.Transport | None = None
        self.max_body = max_body
        self.future: asyncio.Future[tuple[int, bytes]] | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.body: list[bytes] = []
        self.size = 0
        self.keep_alive = False
        self.idle_since = 0.0

    # protocol ---------------------------------------------------------------------------
    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        reason = f"{type(exc).__name__}: {exc}" if exc else "closed by the server"
        self._fail(UpstreamError("connect", f"connection lost before the answer ({reason})"))

    # parser callbacks ----------------------------------------------------------------------
    def on_body(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.max_body:
            self._fail(UpstreamError("protocol", f"answer over {self.max_body} bytes"))
            return
        self.body.append(chunk)

    def on_message_complete(self) -> None:
        future = self.future
        if future is None or future.done():
            return
        self.keep_alive = self.parser.should_keep_alive()
        future.set_result((self.parser.get_status_code(), b"".join(self.body)))

    # ------------------------------------------------------------------------------------
    def _fail(self, error: UpstreamError) -> None:
        self.keep_alive = False
        future = self.future
        if future is not None and not future.done():
            future.set_exception(error)
        if self.transport is not None:
            self.transport.abort()

    def start(self, raw: bytes) -> asyncio.Future[tuple[int, bytes]]:
        assert self.transport is not None
        self.future = asyncio.get_running_loop().create_future()
        self.body = []
        self.size = 0
        self.keep_alive = False
        self.transport.write(raw)
        return self.future


class Http1Pool:
    """Keep-alive connections to the host of ``base_url`` (``http://`` only)."""

    def __init__(
        self,
        base_url: str,
        *,
        max_connections: int = 256,
        keepalive_s: float = 4.0,
        max_body: int = 64 * 1024 * 1024,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http":
            raise ValueError(f"the lean client speaks plain http only, not {parts.scheme!r}")
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self._authority = parts.netloc.encode()
        self._idle: deque[_Conn] = deque()
        self._slots = asyncio.Semaphore(max_connections)
        self._keepalive_s = keepalive_s
        self._max_body = max_body
        self._open: set[_Conn] = set()
        self._closed = False

    async def _connection(self, url: str) -> _Conn:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()  # the most recently used: least likely to be closed
            if conn.transport is not None and now - conn.idle_since < self._keepalive_s:
                return conn
            self._drop(conn)
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(
                lambda: _Conn(self._max_body), self.host, self.port
            )
        except OSError as exc:
            raise UpstreamError(
                "connect", f"{url}: cannot connect ({exc.strerror or exc})"
            ) from None
        self._open.add(conn)
        return conn

    def _drop(self, conn: _Conn) -> None:
        self._open.discard(conn)
        if conn.transport is not None:
            conn.transport.abort()

    async def post(
        self, url: str, path: str, body: bytes, headers: dict[str, str], timeout_s: float
    ) -> tuple[int, bytes]:
        """POST ``body`` to ``path``; the status and the whole answer body."""
        if self._closed:
            raise RuntimeError("the upstream client is closed")
        async with self._slots:
            conn: _Conn | None = None
            try:
                async with asyncio.timeout(timeout_s):
                    conn = await self._connection(url)
                    status, answer = await conn.start(
                        post_head(self._authority, path, len(body), headers) + body
                    )
            except TimeoutError:
                if conn is not None:
                    self._drop(conn)
                raise UpstreamError("timeout", f"{url}: no answer in {timeout_s} s") from None
            except UpstreamError as exc:
                if conn is not None:
                    self._drop(conn)
                if exc.message.startswith(url):
                    raise
                raise UpstreamError(exc.kind, f"{url}: {exc.message}") from None
            except BaseException:  # cancelled: the connection is mid-answer, not reusable
                if conn is not None:
                    self._drop(conn)
                raise
            if conn.keep_alive and conn.transport is not None and not self._closed:
                conn.idle_since = time.monotonic()
                self._idle.append(conn)
            else:
                self._drop(conn)
            return status, answer

    def close(self) -> None:
        """Close every connection; later calls raise ``RuntimeError``."""
        self._closed = True
        for conn in list(self._open):
            self._drop(conn)
        self._idle.clear()
