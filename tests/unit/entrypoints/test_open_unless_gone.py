"""``open_unless_gone``: a stream's opening races the client's disconnect (real asyncio)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from starlette.requests import ClientDisconnect

from somaagent.entrypoints.http_chat import open_unless_gone


class Client:
    """The ASGI ``receive`` of a request whose body was read: it answers only when the
    client leaves."""

    def __init__(self) -> None:
        self.left = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        await self.left.wait()
        return {"type": "http.disconnect"}


class Body:
    def __init__(self) -> None:
        self.closed = False

    async def aclose(self) -> None:
        self.closed = True


async def _opening(delay_s: float, body: Body, log: list[str]) -> tuple[dict[str, str], Any]:
    try:
        await asyncio.sleep(delay_s)
    except asyncio.CancelledError:
        log.append("cancelled")
        raise
    log.append("opened")
    return {"x-soma-model": "m"}, body


def test_an_opening_that_wins_is_returned_and_the_watch_ends() -> None:
    async def run() -> None:
        client, body, log = Client(), Body(), []
        before = len(asyncio.all_tasks())
        headers, got = await open_unless_gone(_opening(0.01, body, log), client.receive)  # type: ignore[arg-type]
        assert headers == {"x-soma-model": "m"} and got is body and not body.closed
        await asyncio.sleep(0)  # the cancelled watch finishes
        assert len(asyncio.all_tasks()) == before and log == ["opened"]

    asyncio.run(run())


def test_a_client_that_leaves_first_cancels_the_opening() -> None:
    async def run() -> None:
        client, body, log = Client(), Body(), []
        asyncio.get_running_loop().call_later(0.01, client.left.set)
        with pytest.raises(ClientDisconnect):
            await open_unless_gone(_opening(10, body, log), client.receive)  # type: ignore[arg-type]
        assert log == ["cancelled"] and not body.closed

    asyncio.run(run())


def test_an_opening_that_ends_as_the_client_leaves_has_its_body_closed() -> None:
    async def opening(client: Client, body: Body) -> tuple[dict[str, str], Any]:
        client.left.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:  # it had its answer's head as the cancel came
            return {}, body
        raise AssertionError("not cancelled")

    async def run() -> None:
        client, body = Client(), Body()
        with pytest.raises(ClientDisconnect):
            await open_unless_gone(opening(client, body), client.receive)  # type: ignore[arg-type]
        assert body.closed

    asyncio.run(run())


def test_errors_of_the_opening_reach_the_handler() -> None:
    async def failing() -> tuple[dict[str, str], Any]:
        await asyncio.sleep(0)
        raise LookupError("every upstream failed")

    async def run() -> None:
        with pytest.raises(LookupError, match="every upstream failed"):
            await open_unless_gone(failing(), Client().receive)  # type: ignore[arg-type]

    asyncio.run(run())
