"""The lean keep-alive HTTP/1.1 client of non-streamed upstream calls, against a real TCP
server whose every answer (well-formed or not) is written here byte for byte."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from somaagent.adapters.upstream import UpstreamError
from somaagent.adapters.upstream._http1 import Http1Pool

OK = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"ok":true}'


HANGUP = b"\0hang up"  # an answer ending so is written, then the connection closed


class Server:
    """Reads one request head + body at a time and answers with ``answer(n)``."""

    def __init__(self, answer: Callable[[int], bytes | None]) -> None:
        self.answer = answer
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                body = await reader.readexactly(length)
                self.requests.append(head + body)
                out = self.answer(len(self.requests))
                if out is None:  # hang up without answering
                    break
                writer.write(out.removesuffix(HANGUP))
                await writer.drain()
                if b"Connection: close" in out or out.endswith(HANGUP):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()


def run(
    answer: Callable[[int], bytes | None], body: Callable[[str, Http1Pool], Awaitable[Any]]
) -> Any:
    async def scenario() -> Any:
        server = Server(answer)
        async with server as url:
            pool = Http1Pool(url, keepalive_s=0.5)
            try:
                return server, await body(url, pool)
            finally:
                pool.close()

    return asyncio.run(scenario())


def post(pool: Http1Pool, url: str, timeout_s: float = 2.0) -> Awaitable[tuple[int, bytes]]:
    return pool.post(
        url + "/v1/x", "/v1/x", b'{"a":1}', {"Content-Type": "application/json"}, timeout_s
    )


def test_keep_alive_connections_are_reused_and_the_request_is_well_formed() -> None:
    async def body(url: str, pool: Http1Pool) -> list[tuple[int, bytes]]:
        return [await post(pool, url) for _ in range(5)]

    server, answers = run(lambda n: OK, body)
    assert answers == [(200, b'{"ok":true}')] * 5
    assert server.connections == 1
    first = server.requests[0]
    assert first.startswith(b"POST /v1/x HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b'Content-Length: 7\r\n\r\n{"a":1}' in first


def test_concurrent_calls_open_their_own_connections() -> None:
    async def body(url: str, pool: Http1Pool) -> list[tuple[int, bytes]]:
        return list(await asyncio.gather(*(post(pool, url) for _ in range(8))))

    server, answers = run(lambda n: OK, body)
    assert len(answers) == 8 and server.connections == 8


def test_idle_connections_expire_and_close_answers_are_not_reused() -> None:
    close = OK.replace(b"Content-Length", b"Connection: close\r\nContent-Length")

    async def body(url: str, pool: Http1Pool) -> None:
        await post(pool, url)
        await asyncio.sleep(0.6)  # past keepalive_s
        await post(pool, url)
        await post(pool, url)  # answered with Connection: close
        await post(pool, url)

    server, _ = run(lambda n: close if n == 3 else OK, body)
    assert server.connections == 3


def test_chunked_answers_and_error_statuses_are_read_whole() -> None:
    chunked = (
        b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'5\r\n{"a":\r\n3\r\n42}\r\n0\r\n\r\n'
    )

    async def body(url: str, pool: Http1Pool) -> tuple[int, bytes]:
        return await post(pool, url)

    _, answer = run(lambda n: chunked, body)
    assert answer == (503, b'{"a":42}')


@pytest.mark.parametrize(
    ("answer", "kind", "text"),
    [
        (None, "connect", "connection lost before the answer"),
        (
            b'HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{"cut' + HANGUP,
            "connect",
            "connection lost",
        ),
        (b"SSH-2.0-OpenSSH\r\n\r\n", "protocol", "not an HTTP answer"),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999\r\n\r\n" + b"x" * 70_000,
            "protocol",
            "over",
        ),
    ],
)
def test_broken_answers_are_upstream_errors(answer: bytes | None, kind: str, text: str) -> None:
    async def body(url: str, pool: Http1Pool) -> UpstreamError:
        pool._max_body = 65_536  # noqa: SLF001 - a small limit for the oversize case
        with pytest.raises(UpstreamError) as caught:
            await post(pool, url)
        return caught.value

    _, error = run(lambda n: answer, body)
    assert error.kind == kind
    assert text in str(error)
    assert str(error).startswith("http://127.0.0.1:")


def test_no_answer_in_time_is_a_timeout_and_the_connection_is_not_reused() -> None:
    async def body(url: str, pool: Http1Pool) -> tuple[int, bytes]:
        with pytest.raises(UpstreamError) as caught:
            await post(pool, url, timeout_s=0.2)
        assert caught.value.kind == "timeout"
        return await post(pool, url)

    slow = b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n"  # the body never comes
    server, answer = run(lambda n: slow if n == 1 else OK, body)
    assert answer == (200, b'{"ok":true}')
    assert server.connections == 2


def test_nothing_listening_is_a_connect_error() -> None:
    async def scenario() -> UpstreamError:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        pool = Http1Pool(f"http://127.0.0.1:{port}")
        with pytest.raises(UpstreamError) as caught:
            await post(pool, f"http://127.0.0.1:{port}")
        pool.close()
        return caught.value

    error = asyncio.run(scenario())
    assert error.kind == "connect" and "cannot connect" in str(error)
