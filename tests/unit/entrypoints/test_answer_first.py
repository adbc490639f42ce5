"""Answer first: a call's accounting runs once its answer is written.

``FastJSONResponse(after=...)`` writes the head and the body, then awaits ``after``: the
call's events are built and spooled while the client reads. ``ChatOutcome.close`` runs
the accounting once, however often it is called. A stream's ``EventStream`` ends the
response with the body's last chunk and closes the body (which publishes the events) only
then.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import msgspec
import pytest

from somaagent.entrypoints.http_chat import EventStream, FastJSONResponse
from somaagent.service.chat import ChatOutcome


class Wire:
    """The ASGI ``send`` of a connection: what was written, in order; optionally broken."""

    def __init__(self, log: list[str], *, broken: bool = False) -> None:
        self.log, self.broken = log, broken
        self.messages: list[dict[str, Any]] = []

    async def send(self, message: dict[str, Any]) -> None:
        if self.broken:
            raise OSError("connection reset")
        self.messages.append(message)
        self.log.append(message["type"])


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


def _respond(wire: Wire, after: Any) -> None:
    response = FastJSONResponse({"id": "chatcmpl-1"}, headers={"x-soma-cost": "0"}, after=after)
    asyncio.run(response({"type": "http"}, _receive, wire.send))  # type: ignore[arg-type]


def test_accounting_runs_after_the_whole_answer_is_written() -> None:
    log: list[str] = []

    async def after() -> None:
        log.append("accounted")

    wire = Wire(log)
    _respond(wire, after)
    assert log == ["http.response.start", "http.response.body", "accounted"]
    assert msgspec.json.decode(wire.messages[1]["body"]) == {"id": "chatcmpl-1"}
    assert (b"x-soma-cost", b"0") in wire.messages[0]["headers"]


def test_accounting_runs_when_the_answer_cannot_be_written() -> None:
    log: list[str] = []

    async def after() -> None:
        log.append("accounted")

    with pytest.raises(OSError):
        _respond(Wire(log, broken=True), after)
    assert log == ["accounted"]


def test_a_failing_accounting_is_logged_and_the_answer_stands(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log: list[str] = []

    async def after() -> None:
        raise ValueError("a bug in the accounting")

    with caplog.at_level(logging.ERROR, logger="somaagent.gateway"):
        _respond(Wire(log), after)
    assert log == ["http.response.start", "http.response.body"]
    assert "accounting for an answered call failed" in caplog.text
    assert "a bug in the accounting" in caplog.text


def test_an_outcome_is_closed_once() -> None:
    runs: list[int] = []

    async def after() -> None:
        runs.append(1)

    outcome = ChatOutcome({}, {}, after=after)

    async def twice() -> None:
        await outcome.close()
        await outcome.close()

    asyncio.run(twice())
    assert runs == [1]


class Body:
    """A stream body as ``StreamBody`` behaves: chunks, ``last`` once the final one is out,
    and ``aclose`` (where the real one publishes the call's events)."""

    def __init__(self, chunks: list[bytes], log: list[str], *, flags_last: bool) -> None:
        self.chunks, self.log, self.flags_last = list(chunks), log, flags_last
        self.last = False

    def __aiter__(self) -> Body:
        return self

    async def __anext__(self) -> bytes:
        if not self.chunks:
            raise StopAsyncIteration
        chunk = self.chunks.pop(0)
        self.last = self.flags_last and not self.chunks
        return chunk

    async def aclose(self) -> None:
        self.log.append("closed")


async def _waiting_receive() -> dict[str, Any]:
    await asyncio.sleep(3600)  # the client stays until the response is over
    return {"type": "http.disconnect"}


@pytest.mark.parametrize("flags_last", [True, False])
def test_a_stream_ends_with_its_last_chunk_then_closes_the_body(flags_last: bool) -> None:
    log: list[str] = []
    wire = Wire(log)
    body = Body([b"data: 1\n\n", b"data: [DONE]\n\n"], log, flags_last=flags_last)
    response = EventStream(body, {"x-soma-model": "m"})  # type: ignore[arg-type]
    asyncio.run(response({"type": "http"}, _waiting_receive, wire.send))  # type: ignore[arg-type]
    bodies = [(m["body"], m["more_body"]) for m in wire.messages[1:]]
    if flags_last:  # one write carries the end of the response with [DONE]
        assert bodies == [(b"data: 1\n\n", True), (b"data: [DONE]\n\n", False)]
    else:  # a body that cannot tell: an empty message ends it, as before
        assert bodies == [(b"data: 1\n\n", True), (b"data: [DONE]\n\n", True), (b"", False)]
    assert log[-1] == "closed" and log.count("closed") == 1
    assert log.index("closed") == len(wire.messages)  # after every write
