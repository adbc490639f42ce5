"""A lean HTTP/1.1 connection for one streamed POST (an SSE chat completion).

A stream gets a connection of its own, asked to close when the answer ends (llama-server
closes the connection after a stream without announcing it, so one is never reused; see
``UpstreamClient``). The answer's body is handed over as it arrives, every piece read since
the consumer last asked in one ``bytes`` (so chunks that came together stay together);
closing the stream aborts the connection, which makes the upstream stop generating.

Failures raise ``UpstreamError``: ``connect`` (refused, reset, closed before the end of the
answer), ``timeout`` (connecting, or a wait for the head or the next data, over the
stream's ``timeout_s``) and ``protocol`` (not HTTP).
"""

from __future__ import annotations

import asyncio
from collections import deque
from urllib.parse import urlsplit

import httptools

from somaagent.adapters.upstream._errors import UpstreamError
from somaagent.adapters.upstream._http1 import ParsedProtocol, post_head

__all__ = ["Http1Stream", "open_stream"]


class Http1Stream(ParsedProtocol):
    """One streamed answer: ``status`` once the head is in, then ``read`` until None."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self._head = asyncio.get_running_loop().create_future()
        self._pieces: deque[bytes] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._delimited = False  # Content-Length or chunked: else the answer ends at EOF
        self.ended = False
        self.error: UpstreamError | None = None

    # protocol (connection_made, data_received: ParsedProtocol) -------------------------
    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.ended:
            return
        if exc is None and self._head.done() and not self._delimited:
            self.on_message_complete()  # an answer delimited by the end of the connection
            return
        reason = f"{type(exc).__name__}: {exc}" if exc else "closed by the server"
        self._fail(
            UpstreamError("connect", f"connection lost before the end of the answer ({reason})")
        )

    # parser callbacks ----------------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.lower()
        if key == b"content-length" or (
            key == b"transfer-encoding" and b"chunked" in value.lower()
        ):
            self._delimited = True

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        if not self._head.done():
            self._head.set_result(None)

    def on_body(self, chunk: bytes) -> None:
        self._pieces.append(chunk)
        self._wake()

    def on_message_complete(self) -> None:
        self.ended = True
        self._wake()

    # ------------------------------------------------------------------------------------
    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: UpstreamError) -> None:
        if self.error is None and not self.ended:
            self.error = error
        if not self._head.done():
            self._head.set_exception(error)
        self._wake()
        self.abort()

    async def _wait(self, what: asyncio.Future[None], timeout_s: float) -> None:
        try:
            async with asyncio.timeout(timeout_s):
                await what
        except TimeoutError:
            raise UpstreamError("timeout", f"no data in {timeout_s} s") from None

    async def head(self, timeout_s: float) -> int:
        """The answer's status, once its head has arrived."""
        await self._wait(self._head, timeout_s)
        return self.status

    async def read(self, timeout_s: float) -> bytes | None:
        """Every body byte that arrived since the last call (waiting for some), or None at
        the end of the answer."""
        while not self._pieces:
            if self.error is not None:
                raise self.error
            if self.ended:
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._wait(self._waiter, timeout_s)
            finally:
                self._waiter = None
        pieces = self._pieces
        data = pieces.popleft() if len(pieces) == 1 else b"".join(pieces)
        pieces.clear()
        return data

    def abort(self) -> None:
        """Drop the connection at once (the upstream sees the client go away)."""
        transport, self.transport = self.transport, None
        if transport is not None:
            transport.abort()


async def open_stream(
    url: str, body: bytes, headers: dict[str, str], timeout_s: float
) -> Http1Stream:
    """Connect to ``url``'s host, send the POST and wait for the answer's head."""
    parts = urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    raw = post_head(parts.netloc.encode(), target, len(body), headers) + body
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout_s):
            _, stream = await loop.create_connection(
                Http1Stream, parts.hostname or "127.0.0.1", parts.port or 80
            )
    except TimeoutError:
        raise UpstreamError("timeout", f"{url}: cannot connect in {timeout_s} s") from None
    except OSError as exc:
        raise UpstreamError("connect", f"{url}: cannot connect ({exc.strerror or exc})") from None
    assert stream.transport is not None
    stream.transport.write(raw)
    try:
        await stream.head(timeout_s)
    except UpstreamError as exc:
        stream.abort()
        raise UpstreamError(exc.kind, f"{url}: {exc.message}") from None
    except BaseException:
        stream.abort()
        raise
    return stream
