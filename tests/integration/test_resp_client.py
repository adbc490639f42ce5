"""The lean auto-pipelined Redis client (``adapters.resp``) against the stack's real Redis."""

from __future__ import annotations

import asyncio
import random
import socket
import string
import time
import uuid
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest
import uvloop

from somaagent.adapters.resp import (
    RespClient,
    RespError,
    RespUnavailable,
    Script,
    _encode,
    _encode_py,
)
from somaagent.settings import Settings

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@pytest.fixture(scope="module")
def redis_url(stack: Settings) -> str:
    return stack.url("redis_url")


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_concurrent_calls_share_one_connection_and_get_their_own_replies(
    redis_url: str, loop: str
) -> None:
    async def scenario() -> None:
        client = RespClient(redis_url)
        key = f"resp-test:{uuid.uuid4().hex}"
        try:
            replies = await asyncio.gather(*(client.execute("INCR", key) for _ in range(500)))
            assert sorted(replies) == list(range(1, 501))
            assert replies == list(range(1, 501))  # FIFO: the n-th call sees the n-th value
            clients = await client.execute("CLIENT", "LIST")
            assert clients.count("cmd=") >= 1
            ids = {await client.execute("CLIENT", "ID") for _ in range(3)}
            assert len(ids) == 1  # one connection for everything
            assert await client.execute("GET", key) == "500"
            assert await client.execute("GET", f"{key}:missing") is None
        finally:
            await client.execute("DEL", key)
            await client.aclose()

    (uvloop.run if loop == "uvloop" else asyncio.run)(scenario())  # the gateway runs uvloop


def test_an_error_reply_fails_only_its_own_call(redis_url: str) -> None:
    async def scenario() -> None:
        client = RespClient(redis_url)
        key = f"resp-test:{uuid.uuid4().hex}"
        try:
            await client.execute("SET", key, "not a number")
            results = await asyncio.gather(
                client.execute("PING"),
                client.execute("INCR", key),
                client.execute("ECHO", "after"),
                return_exceptions=True,
            )
            assert results[0] == "PONG"
            assert isinstance(results[1], RespError)
            assert "not an integer" in str(results[1])
            assert results[2] == "after"
            many = client.many([("PING",), ("INCR", key), ("PING",)])
            with pytest.raises(RespError):
                await many
            assert await client.execute("PING") == "PONG"  # still in step
        finally:
            await client.execute("DEL", key)
            await client.aclose()

    run(scenario())


def test_scripts_are_loaded_again_after_a_script_flush(redis_url: str) -> None:
    script = Script.of(f"-- {uuid.uuid4().hex}\nreturn {{KEYS[1], ARGV[1], 42}}")

    async def scenario() -> None:
        client = RespClient(redis_url)
        try:
            assert await client.run_script(script, ["k"], ["v"]) == ["k", "v", 42]
            await client.execute("SCRIPT", "FLUSH")
            assert await client.run_script(script, ["k2"], ["v2"]) == ["k2", "v2", 42]
            exists = await client.execute("SCRIPT", "EXISTS", script.sha)
            assert exists == [1]
        finally:
            await client.aclose()

    run(scenario())


def test_a_server_that_stops_answering_fails_pending_calls_then_recovers(redis_url: str) -> None:
    async def scenario() -> None:
        client = RespClient(redis_url, timeout_s=0.3)
        admin = RespClient(redis_url)
        try:
            assert await client.execute("PING") == "PONG"
            await admin.execute("CLIENT", "PAUSE", "1500", "ALL")
            started = time.monotonic()
            results = await asyncio.gather(
                *(client.execute("PING") for _ in range(5)), return_exceptions=True
            )
            waited = time.monotonic() - started
            assert all(isinstance(r, RespUnavailable) for r in results), results
            assert "did not answer" in str(results[0])
            assert 0.3 <= waited < 1.2
            await asyncio.sleep(1.5)  # the pause is over
            assert await client.execute("PING") == "PONG"  # reconnected
        finally:
            await admin.execute("CLIENT", "UNPAUSE")
            await client.aclose()
            await admin.aclose()

    run(scenario())


def test_a_killed_connection_is_replaced_on_the_next_call(redis_url: str) -> None:
    async def scenario() -> None:
        client = RespClient(redis_url)
        admin = RespClient(redis_url)
        try:
            first = await client.execute("CLIENT", "ID")
            assert await admin.execute("CLIENT", "KILL", "ID", str(first)) == 1
            await asyncio.sleep(0.1)  # the close reaches the client's loop
            second = await client.execute("CLIENT", "ID")
            assert second != first
            assert await client.execute("PING") == "PONG"
        finally:
            await client.aclose()
            await admin.aclose()

    run(scenario())


def test_nothing_listening_is_unavailable_with_the_address() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there

    async def scenario() -> None:
        client = RespClient(f"redis://127.0.0.1:{port}/0", timeout_s=0.5)
        with pytest.raises(RespUnavailable, match=f"127.0.0.1:{port}"):
            await client.execute("PING")
        await client.aclose()

    run(scenario())


def test_url_database_is_selected(redis_url: str) -> None:
    base = redis_url.rsplit("/", 1)[0] if redis_url.count("/") > 2 else redis_url

    async def scenario() -> None:
        key = f"resp-test:{uuid.uuid4().hex}"
        db5 = RespClient(f"{base}/5")
        db0 = RespClient(f"{base}/0")
        try:
            await db5.execute("SET", key, "five")
            assert await db5.execute("GET", key) == "five"
            assert await db0.execute("GET", key) is None
        finally:
            await db5.execute("DEL", key)
            await db5.aclose()
            await db0.aclose()

    run(scenario())


def test_closed_client_refuses_calls(redis_url: str) -> None:
    async def scenario() -> None:
        client = RespClient(redis_url)
        assert await client.execute("PING") == "PONG"
        await client.aclose()
        with pytest.raises(RespUnavailable, match="closed"):
            await client.execute("PING")

    run(scenario())


def test_a_server_that_does_not_speak_resp_fails_the_call_at_once() -> None:
    async def scenario() -> None:
        handled = asyncio.Event()

        async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(100)
            writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")  # e.g. a web server on that port
            await writer.drain()
            await reader.read()  # until the client hangs up
            writer.close()
            await writer.wait_closed()
            handled.set()

        server = await asyncio.start_server(garbage, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = RespClient(f"redis://127.0.0.1:{port}/0", timeout_s=3)
        started = time.monotonic()
        with pytest.raises(RespUnavailable, match="invalid reply"):
            await client.execute("PING")
        assert time.monotonic() - started < 1  # not the watchdog's timeout
        await client.aclose()
        await handled.wait()
        server.close()
        await server.wait_closed()

    run(scenario())


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_deferred_script_leaves_with_the_next_command_in_order(redis_url: str, loop: str) -> None:
    async def scenario() -> None:
        client, observer = RespClient(redis_url), RespClient(redis_url)
        key = f"resp-test:{uuid.uuid4().hex}"
        append = Script.of("return redis.call('APPEND', KEYS[1], ARGV[1])")
        try:
            # connected and the script known: submit_script queues at once
            await client.execute("SCRIPT", "LOAD", append.source)
            first = client.submit_script(append, [key], ["a"], defer_s=30.0)
            second = client.submit_script(append, [key], ["b"], defer_s=30.0)
            await asyncio.sleep(0.2)
            assert await observer.execute("GET", key) is None  # still waiting for company
            # The next command takes both along, ahead of itself.
            assert await client.execute("APPEND", key, "c") == 3
            assert await first == 1
            assert await second == 2
            assert await observer.execute("GET", key) == "abc"
            # Alone, a deferred command leaves when its time is up.
            alone = client.submit_script(append, [key], ["d"], defer_s=0.05)
            assert await asyncio.wait_for(alone, 5) == 4
            assert await observer.execute("GET", key) == "abcd"
        finally:
            await client.execute("DEL", key)
            await client.aclose()
            await observer.aclose()

    (uvloop.run if loop == "uvloop" else asyncio.run)(scenario())


def test_a_deferred_script_fails_with_its_connection(redis_url: str) -> None:
    async def scenario() -> None:
        client = RespClient(redis_url)
        key = f"resp-test:{uuid.uuid4().hex}"
        script = Script.of("return redis.call('INCR', KEYS[1])")
        try:
            await client.execute("SCRIPT", "LOAD", script.source)
            waiting = client.submit_script(script, [key], [], defer_s=30.0)
            await client.aclose()
            with pytest.raises(RespUnavailable):
                await waiting
        finally:
            other = RespClient(redis_url)
            assert await other.execute("GET", key) is None  # it never left
            await other.aclose()

    run(scenario())


def test_commands_are_packed_as_the_python_encoder_packs_them() -> None:
    """hiredis's C packer and the Python fallback give the same bytes for every argument
    type the budget scripts send (str, bytes, int), and the fallback takes the rest."""
    rng = random.Random(20261202)
    alphabet = string.printable + "é€😀"
    for _ in range(5_000):
        args: list[Any] = []
        for _ in range(rng.randint(1, 12)):
            kind = rng.random()
            if kind < 0.3:
                args.append(rng.randint(-(10**15), 10**15))
            elif kind < 0.65:
                args.append("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))))
            else:
                args.append(rng.randbytes(rng.randint(0, 30)))
        assert _encode(tuple(args)) == _encode_py(tuple(args))
    assert _encode(("SET", "k", True)) == _encode_py(("SET", "k", True))  # no C path for bool


def test_unusual_arguments_round_trip_through_redis(redis_url: str) -> None:
    async def scenario() -> None:
        client = RespClient(redis_url)
        key = f"resp-test:{uuid.uuid4().hex}"
        value = "é€😀 \r\n$3\r\n*1 " + "x" * 600
        try:
            assert await client.execute("SET", key, value) == "OK"
            assert await client.execute("GET", key) == value
            assert await client.execute("SET", key, b"\x00\xff".decode("latin-1")) == "OK"
            assert await client.execute("STRLEN", key) == 3  # U+0000 and U+00FF in UTF-8
            assert await client.execute("SET", key, -(10**15)) == "OK"
            assert await client.execute("INCRBY", key, 10**15) == 0
        finally:
            await client.execute("DEL", key)
            await client.aclose()

    run(scenario())
