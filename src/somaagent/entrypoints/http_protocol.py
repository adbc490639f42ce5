"""uvicorn's httptools protocol, with a response's head and first body bytes in one write.

uvicorn writes the status line and headers as soon as the app sends
``http.response.start``, and the body in a second ``transport.write`` when it sends
``http.response.body``. With ``TCP_NODELAY`` (set by the event loop) that is two system
calls and two TCP segments per answer, and a client that reads the head first wakes up
twice. Here the head waits for the next write of the same connection, or for the end of the
current turn of the event loop (``call_soon``) when no body follows at once, and both leave
together. Nothing is reordered or dropped: ``close`` and ``write_eof`` send a held head
first, ``abort`` discards it with the connection.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["GatewayHttpProtocol", "JoinedHeadTransport"]


def _is_head(data: bytes) -> bool:
    return data[:5] == b"HTTP/" and data[-4:] == b"\r\n\r\n"


class JoinedHeadTransport:
    """A transport whose response heads leave with the write after them (see module)."""

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held + data)
        elif _is_head(data):
            self._held = data
            self._loop.call_soon(self._release)
        else:
            self._transport.write(data)

    def _release(self) -> None:
        held = self._held
        if held is not None:
            self._held = None
            if not self._transport.is_closing():
                self._transport.write(held)

    def close(self) -> None:
        self._release()
        self._transport.close()

    def write_eof(self) -> None:
        self._release()
        self._transport.write_eof()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:  # everything else is the transport's own
        return getattr(self._transport, name)


class GatewayHttpProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` writing through a :class:`JoinedHeadTransport`."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        # Flow control keeps the real transport (pause/resume reading); every write and
        # close of the request cycles goes through the joining one.
        self.transport = JoinedHeadTransport(self.transport, self.loop)  # type: ignore[assignment]
