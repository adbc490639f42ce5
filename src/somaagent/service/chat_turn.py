"""A chat call's turn and outcome: what the attempts share, and what the client gets.

``Turn`` carries one request through its attempts (the events' decision tree, the
admission, the rate-limit hold); ``ChatOutcome`` is the answer and the accounting left to
run once it has been written ("answer first", see ``ChatService.complete``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from somaagent.domain.chat_request import ChatRequest
from somaagent.domain.identity import Caller, RequestContext
from somaagent.service.admission import Admission
from somaagent.service.rate_limits import RateHolds

__all__ = ["ChatOutcome", "ClientGone", "Publisher", "Turn"]


class Publisher(Protocol):
    def publish_many(self, records: list[tuple[str, bytes, bytes]]) -> bool: ...

    @property
    def spool_error(self) -> str | None: ...


class ClientGone(Exception):
    """The client left before its answer: the call ended without a further attempt."""


@dataclass
class ChatOutcome:
    """What the HTTP layer answers with, and what is left to do once the answer has left.

    ``ChatService.complete(..., answer_first=True)`` leaves the answered call's accounting
    (its events built, checked and spooled, its rate-limit hold settled, its metrics, the
    end of its admission) to :meth:`close`, which the HTTP layer awaits right after the
    answer is written: the client does not wait for it (see decisions.md, "Answer first").
    """

    body: dict[str, Any]
    headers: dict[str, str]
    # The answered call's events and metrics, not yet published (set by ``_answer``).
    accounting: Callable[[], None] | None = None
    after: Callable[[], Awaitable[None]] | None = None

    async def close(self) -> None:
        """Account for the call and end its admission; once (a no-op after)."""
        after, self.after = self.after, None
        if after is not None:
            await after()


@dataclass(slots=True)
class Turn:
    """One request on its way through its attempts: what accounting for it needs."""

    request: ChatRequest
    caller: Caller
    ctx: RequestContext
    tree: dict[str, Any]  # the events' decision tree (router, policy verdict, attempts)
    adm: Admission | None
    hold: RateHolds | None = None  # its place in its key's and tenant's rate limits

    @property
    def attempts(self) -> list[dict[str, Any]]:
        """The tree's ``attempts``: one entry per attempt, appended as they are made."""
        attempts: list[dict[str, Any]] = self.tree["attempts"]
        return attempts
