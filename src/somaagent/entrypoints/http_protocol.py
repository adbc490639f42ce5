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
from collections.abc import Callable
from functools import partial
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["GatewayHttpProtocol", "JoinedHeadTransport", "client_gone", "on_disconnect"]


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
    """``HttpToolsProtocol`` writing through a :class:`JoinedHeadTransport`, and telling a
    request's handler when its client leaves (:func:`on_disconnect`)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        # Flow control keeps the real transport (pause/resume reading); every write and
        # close of the request cycles goes through the joining one.
        self.transport = JoinedHeadTransport(self.transport, self.loop)  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        cycle = self.cycle
        super().connection_lost(exc)
        if cycle is not None and cycle.disconnected:
            hook = getattr(cycle, _HOOK, None)
            if hook is not None:
                setattr(cycle, _HOOK, None)
                hook()


_HOOK = "soma_on_disconnect"


def on_disconnect(receive: Any, callback: Callable[[], None]) -> Callable[[], None] | None:
    """Have ``callback`` called (once, from the event loop) when the client of the request
    whose ASGI ``receive`` this is leaves before its response is complete: at once if it
    already has. Returns the function that stops the watch; None when the request is not
    served by :class:`GatewayHttpProtocol` (then watch ``receive`` for ``http.disconnect``).

    No task per request: the protocol's ``connection_lost`` calls the hook it finds on
    the request's cycle (uvicorn's ``RequestResponseCycle``, whose ``receive`` this is).
    """
    cycle = getattr(receive, "__self__", None)
    if cycle is None or not isinstance(getattr(cycle, "transport", None), JoinedHeadTransport):
        return None
    if cycle.disconnected:
        callback()
        return _nothing
    setattr(cycle, _HOOK, callback)
    return partial(setattr, cycle, _HOOK, None)


def _nothing() -> None:
    return None


def client_gone(receive: Any) -> Callable[[], bool] | None:
    """A check, without waiting, of whether the client of the request whose ASGI
    ``receive`` this is has left (uvicorn's request cycles keep a ``disconnected`` flag);
    None when the server does not say."""
    cycle = getattr(receive, "__self__", None)
    if not isinstance(getattr(cycle, "disconnected", None), bool):
        return None
    return partial(getattr, cycle, "disconnected")
