"""Rate-limit admission of one chat request, and the settle of its token hold.

A caller whose key has no limits costs nothing here (no Redis call). For one that has, the
request is admitted or refused before its budget reservation and policy verdict, so a
refused request spends nothing else; an admitted one keeps a :class:`RateHold` that the
request's accounting settles to the tokens all its attempts used (``ChatService.account``)
and that is released (settled to 0) when the request ends without being accounted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol

from somaagent.domain.chat_request import ChatRequest, RequestError
from somaagent.domain.identity import Caller
from somaagent.domain.randomness import random_bits
from somaagent.domain.rate_limits import RateDecision, RateLimits, rate_headers, rate_refusal
from somaagent.domain.routing import ModelEntry
from somaagent.domain.worst_case import prompt_token_bound

__all__ = ["RateGate", "RateHold", "RateLimiterPort"]

log = logging.getLogger("somaagent.rate_limits")


class RateLimiterPort(Protocol):
    async def admit(
        self, key_id: str, hold_id: str, limits: RateLimits, tokens: int
    ) -> RateDecision: ...

    def settle(self, key_id: str, hold_id: str, tokens: int) -> Awaitable[bool]: ...


@dataclass
class RateHold:
    """An admitted request's place in its key's limits, until it is settled once."""

    gate: RateGate
    key_id: str
    hold_id: str
    limits: RateLimits
    decision: RateDecision
    settled: bool = False

    @property
    def headers(self) -> dict[str, str]:
        """The ``x-ratelimit-*`` headers of the answer."""
        return rate_headers(self.limits, self.decision)

    def settle(self, tokens: int) -> None:
        """Count the tokens the request used in place of its hold (once; later calls are
        no-ops). Returns at once: the settle is written in the background."""
        if self.settled:
            return
        self.settled = True
        if self.limits.tpm is None:
            return  # only the request was counted, at its admission
        self.gate.in_background(self.key_id, self.hold_id, tokens)

    def release(self) -> None:
        """Settle to 0 tokens if nothing settled it (a request refused after admission)."""
        self.settle(0)


@dataclass
class RateGate:
    """Check callers' rate limits (see the module docstring)."""

    limiter: RateLimiterPort
    unavailable: tuple[type[Exception], ...]
    on_refused: Callable[[Caller, str], None] | None = None
    on_model_refused: Callable[[str, str], None] | None = None  # (model id, limit)
    close: Callable[[], Awaitable[None]] | None = None
    background: set[asyncio.Task[None]] = field(default_factory=set)

    async def admit(self, request: ChatRequest, caller: Caller) -> RateHold | None:
        """The request's hold; None when its key has no limits. Raises ``RequestError``:
        429 (a limit is reached, with ``Retry-After``), 400 (its worst case exceeds the
        tokens limit by itself), 503 (Redis is unreachable: the limits hold, so the request
        waits)."""
        limits = caller.limits
        if limits is None:
            return None
        tokens = (
            prompt_token_bound(request.messages) + request.max_tokens
            if limits.tpm is not None
            else 0
        )
        hold_id = f"{random_bits(64):016x}"
        pending = asyncio.ensure_future(self.limiter.admit(caller.key_id, hold_id, limits, tokens))
        try:
            decision = await asyncio.shield(pending)
        except asyncio.CancelledError:
            # The request was cancelled (its client left) while Redis decided: a hold it
            # was given is released, instead of lapsing only after the hold lifetime.
            pending.add_done_callback(partial(self._abandoned, caller.key_id, hold_id, limits))
            raise
        except self.unavailable as exc:
            raise RequestError(
                503,
                f"cannot check this API key's rate limits right now: {exc}",
                code="rate_limit_unavailable",
                kind="server_error",
                headers={"retry-after": "1"},
            ) from None
        if decision.admitted:
            return RateHold(self, caller.key_id, hold_id, limits, decision)
        if self.on_refused is not None:
            self.on_refused(caller, decision.status)
        raise rate_refusal(limits, decision, tokens)

    async def admit_model(self, entry: ModelEntry, request: ChatRequest) -> RateHold | RateDecision:
        """A hold on ``entry``'s own limits (its provider's quota, shared by every gateway
        through Redis) for one attempt, or the decision that refused it. Raises one of
        ``unavailable`` when Redis cannot be reached."""
        limits = entry.rate_limits
        assert limits is not None
        tokens = (
            prompt_token_bound(request.messages) + request.max_tokens
            if limits.tpm is not None
            else 0
        )
        scope, hold_id = f"model:{entry.model_id}", f"{random_bits(64):016x}"
        pending = asyncio.ensure_future(self.limiter.admit(scope, hold_id, limits, tokens))
        try:
            decision = await asyncio.shield(pending)
        except asyncio.CancelledError:
            pending.add_done_callback(partial(self._abandoned, scope, hold_id, limits))
            raise
        if decision.admitted:
            return RateHold(self, scope, hold_id, limits, decision)
        if self.on_model_refused is not None:
            self.on_model_refused(entry.model_id, decision.status)
        return decision

    def _abandoned(
        self, key_id: str, hold_id: str, limits: RateLimits, pending: asyncio.Future[RateDecision]
    ) -> None:
        if pending.cancelled() or pending.exception() is not None:
            return
        decision = pending.result()
        if decision.admitted:
            RateHold(self, key_id, hold_id, limits, decision).release()

    def in_background(self, key_id: str, hold_id: str, tokens: int) -> None:
        """Send the settle now (it goes out ahead of any later admission on the connection)
        and wait for its reply in a task."""
        work = self.limiter.settle(key_id, hold_id, tokens)
        task = asyncio.get_running_loop().create_task(self._settle(work, key_id, tokens))
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    @staticmethod
    async def _settle(work: Awaitable[bool], key_id: str, tokens: int) -> None:
        try:
            await work
        except Exception as exc:  # its hold lapses after the hold lifetime instead
            log.warning("rate-limit settle of key %s (%d tokens) failed: %s", key_id, tokens, exc)

    async def aclose(self) -> None:
        """Wait for the settles under way, then close the limiter's connection."""
        if self.background:
            await asyncio.gather(*self.background, return_exceptions=True)
        if self.close is not None:
            await self.close()
