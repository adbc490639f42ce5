"""The gateway's HTTP protocol: a response's head leaves with its body, in one segment.

Real loopback TCP connections on the real event loops (asyncio and uvloop); the number of
segments a socket sent is read from the kernel (``TCP_INFO``).
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest
import uvicorn
import uvloop
from uvicorn.server import ServerState

from somaagent.entrypoints.http_protocol import (
    GatewayHttpProtocol,
    JoinedHeadTransport,
    client_gone,
    on_disconnect,
)

HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n"
BODY = b'{"ok":true}'
# struct tcp_info (linux/tcp.h): tcpi_segs_out follows the two u64 byte counters
_SEGS_OUT = struct.Struct("=I")
_SEGS_OUT_OFFSET = 136


def segments_sent(transport: asyncio.Transport) -> int:
    sock = transport.get_extra_info("socket")
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    return int(_SEGS_OUT.unpack_from(info, _SEGS_OUT_OFFSET)[0])


class _Server(asyncio.Protocol):
    def __init__(self, made: asyncio.Future[asyncio.Transport]) -> None:
        self.made = made

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.made.set_result(transport)  # type: ignore[arg-type]


Scenario = Callable[[JoinedHeadTransport, asyncio.StreamReader, asyncio.Transport], Awaitable[None]]


def run(scenario: Scenario, loop_factory: Callable[[], asyncio.AbstractEventLoop]) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        made: asyncio.Future[asyncio.Transport] = loop.create_future()
        server = await loop.create_server(lambda: _Server(made), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        raw = await made
        try:
            await scenario(JoinedHeadTransport(raw, loop), reader, raw)
        finally:
            writer.close()
            raw.abort()
            server.close()
            await server.wait_closed()

    run_on(loop_factory, main())


def run_on(
    loop_factory: Callable[[], asyncio.AbstractEventLoop], main: Coroutine[Any, Any, None]
) -> None:
    loop = loop_factory()
    try:
        loop.run_until_complete(main)
    finally:
        loop.close()


LOOPS = [
    pytest.param(asyncio.new_event_loop, id="asyncio"),
    pytest.param(uvloop.new_event_loop, id="uvloop"),
]


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("loop_factory", LOOPS)
def test_head_and_body_leave_in_one_segment(
    loop_factory: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    async def scenario(
        t: JoinedHeadTransport, reader: asyncio.StreamReader, raw: asyncio.Transport
    ) -> None:
        for _ in range(3):  # keep-alive: every response of the connection
            before = segments_sent(raw)
            t.write(HEAD)
            t.write(BODY)
            assert await reader.readexactly(len(HEAD) + len(BODY)) == HEAD + BODY
            await _settle()
            assert segments_sent(raw) - before == 1

    run(scenario, loop_factory)


@pytest.mark.parametrize("loop_factory", LOOPS)
def test_a_head_alone_leaves_on_the_next_turn_of_the_loop(
    loop_factory: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    async def scenario(
        t: JoinedHeadTransport, reader: asyncio.StreamReader, raw: asyncio.Transport
    ) -> None:
        t.write(HEAD)  # e.g. a stream's headers, its first chunk not ready yet
        assert await asyncio.wait_for(reader.readexactly(len(HEAD)), 2) == HEAD
        t.write(b"data: 1\n\n")  # later writes go straight out
        assert await asyncio.wait_for(reader.readexactly(9), 2) == b"data: 1\n\n"

    run(scenario, loop_factory)


@pytest.mark.parametrize("loop_factory", LOOPS)
def test_close_and_eof_send_a_held_head_first_and_abort_drops_it(
    loop_factory: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    async def closing(
        t: JoinedHeadTransport, reader: asyncio.StreamReader, raw: asyncio.Transport
    ) -> None:
        t.write(HEAD)
        t.close()
        assert await asyncio.wait_for(reader.read(), 2) == HEAD  # then end of stream
        assert t.is_closing()  # the rest is the real transport's

    async def aborting(
        t: JoinedHeadTransport, reader: asyncio.StreamReader, raw: asyncio.Transport
    ) -> None:
        t.write(HEAD)
        t.abort()
        try:
            got = await asyncio.wait_for(reader.read(), 2)
        except ConnectionResetError:
            got = b""
        assert got == b""  # the held head went with the connection

    async def ending(
        t: JoinedHeadTransport, reader: asyncio.StreamReader, raw: asyncio.Transport
    ) -> None:
        t.write(HEAD)
        t.write_eof()
        assert await asyncio.wait_for(reader.read(), 2) == HEAD  # then end of stream

    run(closing, loop_factory)
    run(ending, loop_factory)
    run(aborting, loop_factory)


@pytest.mark.parametrize("loop_factory", LOOPS)
def test_a_body_that_looks_like_a_head_is_still_sent_in_order(
    loop_factory: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    async def scenario(
        t: JoinedHeadTransport, reader: asyncio.StreamReader, raw: asyncio.Transport
    ) -> None:
        t.write(HEAD)
        t.write(BODY)
        t.write(HEAD)  # held one turn, then sent: nothing reordered or lost
        t.write(b"tail")
        want = HEAD + BODY + HEAD + b"tail"
        assert await asyncio.wait_for(reader.readexactly(len(want)), 2) == want

    run(scenario, loop_factory)


def _serve_watching(events: list[str]) -> Callable[..., Awaitable[None]]:
    """An ASGI app whose request waits for its client, watched by ``on_disconnect``."""

    async def app(scope: dict[str, object], receive: Callable[..., object], send: object) -> None:
        if scope["type"] != "http":
            return
        left = asyncio.Event()
        gone = client_gone(receive)
        stop = on_disconnect(receive, lambda: (events.append("left"), left.set()))
        assert gone is not None and stop is not None
        events.append(f"watching, gone={gone()}")
        await asyncio.wait_for(left.wait(), 5)
        events.append(f"gone={gone()}")  # (the handler's own errors would only be logged)

    return app


@pytest.mark.parametrize("loop_factory", LOOPS)
def test_the_protocol_tells_the_handler_when_its_client_leaves(
    loop_factory: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    events: list[str] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        config = uvicorn.Config(_serve_watching(events), log_level="warning", lifespan="off")
        config.load()
        state = ServerState()
        server = await loop.create_server(
            lambda: GatewayHttpProtocol(config=config, server_state=state, app_state={}),
            "127.0.0.1",
            0,
        )
        port = server.sockets[0].getsockname()[1]
        try:
            _reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nhost: test\r\n\r\n")
            for _ in range(100):
                if events:
                    break
                await asyncio.sleep(0.01)
            assert events == ["watching, gone=False"]
            writer.close()
            for _ in range(100):
                if len(events) == 3:
                    break
                await asyncio.sleep(0.01)
            assert events == ["watching, gone=False", "left", "gone=True"]
            for task in state.tasks:
                await task  # the handler ended as its client left
        finally:
            server.close()
            await server.wait_closed()

    run_on(loop_factory, main())


def test_other_servers_requests_are_not_watched() -> None:
    async def receive() -> dict[str, object]:
        return {"type": "http.disconnect"}

    assert on_disconnect(receive, lambda: None) is None
    assert client_gone(receive) is None
